//! The bench's STACK floor: the least a proxy built on this project's stack (actix-web serving,
//! awc calling the upstream, jemalloc) does for a request it cannot answer itself. It reads the
//! client's body, sends it with Authorization and Content-Type to `UPSTREAM`, reads the whole
//! answer (a cache has to, to store it) and returns it with its status and Content-Type. No
//! cache, key, middleware, logging or timeouts: what the proxy adds over this is its own code.

use actix_web::http::header::{AUTHORIZATION, CONTENT_TYPE};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The upstream's origin (`http://127.0.0.1:PORT`), the request's path appended.
struct Upstream(String);

async fn forward(
    req: HttpRequest,
    body: web::Bytes,
    client: web::Data<awc::Client>,
    upstream: web::Data<Upstream>,
) -> HttpResponse {
    let mut outbound = client.request(req.method().clone(), format!("{}{}", upstream.0, req.uri()));
    for name in [AUTHORIZATION, CONTENT_TYPE] {
        if let Some(value) = req.headers().get(&name) {
            outbound = outbound.insert_header((name, value.clone()));
        }
    }
    let mut answer = match outbound.send_body(body).await {
        Ok(answer) => answer,
        Err(err) => return HttpResponse::BadGateway().body(err.to_string()),
    };
    let bytes = match answer.body().limit(64 << 20).await {
        Ok(bytes) => bytes,
        Err(err) => return HttpResponse::BadGateway().body(err.to_string()),
    };
    let mut response = HttpResponse::build(answer.status());
    if let Some(value) = answer.headers().get(CONTENT_TYPE) {
        response.insert_header((CONTENT_TYPE, value.clone()));
    }
    response.body(bytes)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .expect("PORT must be set")
        .parse()
        .expect("PORT must be a port number");
    let upstream = web::Data::new(Upstream(
        std::env::var("UPSTREAM").expect("UPSTREAM must be set (http://host:port)"),
    ));
    HttpServer::new(move || {
        // One client per worker, as the proxy has (awc::Client is not Send).
        App::new()
            .app_data(web::Data::new(awc::Client::default()))
            .app_data(upstream.clone())
            .default_service(web::to(forward))
    })
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
