//! The bench's STACK floor: the least a proxy built on this project's stack (actix-web serving,
//! awc calling the upstream, jemalloc) does for a request it cannot answer itself. It reads the
//! client's body, sends it with Authorization and Content-Type to `UPSTREAM`, reads the whole
//! answer (a cache has to, to store it) and returns it with its status and Content-Type. No
//! cache, key, middleware, logging or timeouts: what the proxy adds over this is its own code.
//!
//! With `CACHE_MB` set it is STACK-CACHE: the same plus the least a cache on this stack does,
//! with the proxy's cache crate set up as the proxy sets it up (moka's sync cache, LRU, bounded
//! in bytes, foldhash), except for one TTL for all entries and no eviction listener: the
//! proxy's own exact-bytes key (`KeyHasher::exact`: SHA-256 over the method, the URI, its key
//! headers and the body as sent), a lookup unless the
//! request says `Cache-Control: no-cache`, and a 200 stored (its body copied out of the
//! client's read buffer, as the proxy does) before it is answered; `X-Cache: HIT` or `MISS`.
//! No canonical JSON, coalescing, alias index, eviction counts, token usage, metrics, logging
//! or timeouts. What the proxy adds over STACK-CACHE is what it does beyond the least a cache
//! must do.
//!
//! With `HIT_HEAD_FROM` and `MISS_HEAD_FROM` too (files of `name: value` lines) it is
//! STACK-CACHE-HEAD: a HIT also carries the headers of the first file, a MISS those of the
//! second. `run.sh` fills them from the proxy's own HIT and forward heads, all but X-Cache and
//! what actix sets itself, so STACK-CACHE-HEAD sends the head the proxy must send (issues 2 and
//! 4: X-Proxy, Cache-Status, X-Cache-Key, X-Request-Id, and on a hit Age and X-Cache-Timestamp)
//! as fixed bytes, without working any of it out: the least a cache on this stack does with
//! that head.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue,
};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use moka::policy::EvictionPolicy;
use openai_cache_proxy::cache::{CacheKey, KeyHasher};

#[path = "head.rs"]
mod head;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The upstream's origin (`http://127.0.0.1:PORT`), the request's path appended.
struct Upstream(String);

struct Entry {
    content_type: Option<HeaderValue>,
    body: web::Bytes,
}

/// STACK-CACHE-HEAD's extra headers on a HIT (`HIT_HEAD_FROM`) and on a MISS or a forward
/// (`MISS_HEAD_FROM`); empty otherwise.
static HIT_HEAD: LazyLock<head::Head> = LazyLock::new(|| head::from_env("HIT_HEAD_FROM"));
static MISS_HEAD: LazyLock<head::Head> = LazyLock::new(|| head::from_env("MISS_HEAD_FROM"));

type Cache = moka::sync::Cache<CacheKey, Arc<Entry>, foldhash::fast::RandomState>;

fn key_of(req: &HttpRequest, body: &[u8]) -> CacheKey {
    let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    KeyHasher::new(req.method().as_str(), path_and_query, req.headers()).exact(body)
}

/// An answer with `status`, `body` and, when given, its Content-Type and `X-Cache` with the
/// head that goes with it (STACK-CACHE, STACK-CACHE-HEAD).
fn respond(
    status: StatusCode,
    content_type: Option<&HeaderValue>,
    body: web::Bytes,
    x_cache: Option<(&'static str, &head::Head)>,
) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if let Some(value) = content_type {
        response.insert_header((CONTENT_TYPE, value.clone()));
    }
    if let Some((value, extra)) = x_cache {
        response.insert_header((HeaderName::from_static("x-cache"), value));
        head::append(&mut response, extra);
    }
    response.body(body)
}

async fn forward(
    req: HttpRequest,
    body: web::Bytes,
    client: web::Data<awc::Client>,
    upstream: web::Data<Upstream>,
) -> HttpResponse {
    // STACK-CACHE only; STACK does no more than look for the cache and not find it.
    let cached = req
        .app_data::<web::Data<Cache>>()
        .map(|cache| (cache, key_of(&req, &body)));
    if let Some((cache, key)) = &cached
        && !req
            .headers()
            .get(CACHE_CONTROL)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
        && let Some(hit) = cache.get(key)
    {
        let body = hit.body.clone();
        return respond(
            StatusCode::OK,
            hit.content_type.as_ref(),
            body,
            Some(("HIT", &HIT_HEAD)),
        );
    }
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
    let content_type = answer.headers().get(CONTENT_TYPE);
    let Some((cache, key)) = cached else {
        return respond(answer.status(), content_type, bytes, None);
    };
    if answer.status() == StatusCode::OK {
        let entry = Entry {
            content_type: content_type
                .map(|v| HeaderValue::from_bytes(v.as_bytes()).expect("valid")),
            body: web::Bytes::copy_from_slice(&bytes),
        };
        cache.insert(key, Arc::new(entry));
    }
    respond(
        answer.status(),
        content_type,
        bytes,
        Some(("MISS", &MISS_HEAD)),
    )
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
    // A bad head file stops it here, not in a worker.
    LazyLock::force(&HIT_HEAD);
    LazyLock::force(&MISS_HEAD);
    let cache = std::env::var("CACHE_MB").ok().map(|mb| {
        let mb: u64 = mb.parse().expect("CACHE_MB must be a whole number of MiB");
        let cache: Cache = moka::sync::Cache::builder()
            .max_capacity(mb << 20)
            // The body, its Content-Type, and the 400 bytes the proxy counts for an entry's
            // bookkeeping (`CachedResponse::weight`).
            .weigher(|_, e: &Arc<Entry>| {
                let content_type = e.content_type.as_ref().map_or(0, HeaderValue::len);
                u32::try_from(e.body.len() + content_type + 400).unwrap_or(u32::MAX)
            })
            .eviction_policy(EvictionPolicy::lru())
            .time_to_live(Duration::from_secs(3600))
            .build_with_hasher(foldhash::fast::RandomState::default());
        web::Data::new(cache)
    });
    HttpServer::new(move || {
        // One client per worker, as the proxy has (awc::Client is not Send).
        let app = App::new()
            .app_data(web::Data::new(awc::Client::default()))
            .app_data(upstream.clone());
        match &cache {
            Some(cache) => app.app_data(cache.clone()),
            None => app,
        }
        .default_service(web::to(forward))
    })
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
