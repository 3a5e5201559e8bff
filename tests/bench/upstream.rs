//! Bench upstream and ceiling: a fixed chat completion (JSON or SSE), a fixed ~32 KB embeddings
//! answer on `POST /v1/embeddings`, and `GET /count`.
//!
//! With `HEAD_FROM` (a file of `name: value` lines) it is CEILING-HEAD: every JSON answer also
//! carries those headers. `run.sh` fills the file from a proxy HIT's head, so this bare handler
//! answers with the proxy's response head as well as its body: what sending that head costs the
//! framework (and wrk, reading it) is then apart from what the proxy's own code costs.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpResponseBuilder, HttpServer, web};
use futures_util::stream::{self, Stream};

#[path = "head.rs"]
mod head;

/// Requests answered with [`BODY`], [`EMBEDDING`] or an event stream; `GET /count` itself is not counted.
static SERVED: AtomicU64 = AtomicU64::new(0);

/// A request body containing this (as the bench's compact JSON does) gets the event stream.
const STREAM_FLAG: &[u8] = br#""stream":true"#;

/// Content events per stream: the first goes out at once, each later one and `[DONE]` after
/// [`EVENT_GAP`], so a stream lasts about 100 ms and a buffering proxy shows in the TTFB.
const EVENTS: usize = 20;
const EVENT_GAP: Duration = Duration::from_millis(5);

/// About 1.4 KB, shaped like an OpenAI `chat.completion` object.
const BODY: &str = r#"{"id":"chatcmpl-bench0000000000000000000000001","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"A caching proxy sits between a client and an upstream API and remembers answers. When a request arrives, the proxy computes a key from the method, the path, a small list of headers and the canonical body. If the key is already in the cache and the entry is still fresh, the stored response is returned at once, without contacting the upstream. Otherwise the request is forwarded, and a successful, non-streaming answer is stored under that key with a time to live, so that the next identical request is served locally. This saves money and latency for repeated prompts, such as test suites, evaluations and retries. It must never mix up callers, so the API key is part of the key, hashed rather than stored, and errors from the upstream are always passed through unchanged and never cached.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":42,"completion_tokens":168,"total_tokens":210,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_bench000"}"#;

/// Dimensions of the embedding: text-embedding-3-large's 3072 gives an answer of about 32 KB.
const EMBEDDING_DIMS: usize = 3072;

/// An OpenAI `list` of one embedding, the same bytes in every run: the values come from a
/// fixed-seed xorshift, printed like OpenAI's (small, 7 decimals).
static EMBEDDING: LazyLock<web::Bytes> = LazyLock::new(|| {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut json =
        String::from(r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":["#);
    for i in 0..EMBEDDING_DIMS {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // 53 random bits to [0, 1), then to [-0.1, 0.1).
        let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
        let sep = if i == 0 { "" } else { "," };
        write!(json, "{sep}{:.7}", unit * 0.2 - 0.1).expect("writing to a String cannot fail");
    }
    json.push_str(
        r#"]}],"model":"text-embedding-3-large","usage":{"prompt_tokens":9,"total_tokens":9}}"#,
    );
    web::Bytes::from(json)
});

/// The extra headers of CEILING-HEAD (`HEAD_FROM`); empty otherwise.
static HEAD: LazyLock<head::Head> = LazyLock::new(|| head::from_env("HEAD_FROM"));

/// A 200 of JSON, with CEILING-HEAD's headers when there are any.
fn json_ok() -> HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response.content_type("application/json");
    head::append(&mut response, &HEAD);
    response
}

/// Reads the request body, like [`completion`], so the connection stays open.
async fn embeddings(_body: web::Bytes) -> HttpResponse {
    SERVED.fetch_add(1, Ordering::Relaxed);
    json_ok().body(EMBEDDING.clone())
}

/// Reads the request body, to spot [`STREAM_FLAG`] and because actix answers `Connection: close`
/// to a request whose body is left unread: a reconnect per request would make the ceiling too low.
async fn completion(body: web::Bytes) -> HttpResponse {
    SERVED.fetch_add(1, Ordering::Relaxed);
    if body.windows(STREAM_FLAG.len()).any(|w| w == STREAM_FLAG) {
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(events());
    }
    json_ok().body(BODY)
}

/// About 120 bytes per event, shaped like an OpenAI `chat.completion.chunk`; the same bytes
/// for every request, so a proxied stream can be compared with a direct one.
fn events() -> impl Stream<Item = Result<web::Bytes, Infallible>> {
    stream::unfold(0, |i| async move {
        if i > EVENTS {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(EVENT_GAP).await;
        }
        let data = if i < EVENTS {
            format!(
                concat!(
                    r#"{{"id":"chatcmpl-bench1","object":"chat.completion.chunk","#,
                    r#""choices":[{{"index":0,"delta":{{"content":"token {:02} "}}}}]}}"#,
                ),
                i
            )
        } else {
            "[DONE]".to_owned()
        };
        Some((Ok(web::Bytes::from(format!("data: {data}\n\n"))), i + 1))
    })
}

async fn count() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain")
        .body(SERVED.load(Ordering::Relaxed).to_string())
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .expect("PORT must be set")
        .parse()
        .expect("PORT must be a port number");
    LazyLock::force(&EMBEDDING);
    // A bad HEAD_FROM stops it here, not in a worker.
    LazyLock::force(&HEAD);
    HttpServer::new(|| {
        App::new()
            .route("/count", web::get().to(count))
            .route("/v1/embeddings", web::post().to(embeddings))
            .default_service(web::to(completion))
    })
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
