//! `/metrics` (Prometheus) and the savings ledger in `/stats`: the same counters, both views.

use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use std::time::Duration;

use crate::helpers::{TestApp, client, eventually, exchange, spawn_app, spawn_proxy, x_cache};
use crate::sse_upstream::{EVENTS, Script, SseUpstream, read_all};

/// A chat answer reporting its model and token usage.
const PRICED_ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1200,"completion_tokens":800,"total_tokens":2000}}"#;

/// A stream whose last event before `[DONE]` carries usage (`stream_options.include_usage`).
const USAGE_STREAM: &str = "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15}}\n\n\
data: [DONE]\n\n";

async fn metrics_text(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(app.url("/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// The OpenMetrics text of the proxy at `address` (no admin token).
pub async fn scrape(address: &str) -> String {
    let res = client()
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

/// The value of the sample line that starts with `series` (name and labels), if any.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

async fn send(app: &TestApp, path: &str, body: &str) -> String {
    let res = app.post_json(path, "sk-a", body).await;
    let status = x_cache(&res).to_owned();
    res.bytes().await.unwrap();
    status
}

#[tokio::test]
async fn metrics_and_stats_count_the_same_requests() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(PRICED_ANSWER, "application/json"))
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404).set_body_raw("{}", "application/json"))
        .mount(&app.upstream)
        .await;
    assert_eq!(send(&app, "/v1/chat/completions", "{}").await, "MISS");
    assert_eq!(send(&app, "/v1/chat/completions", "{}").await, "HIT");
    assert_eq!(send(&app, "/v1/chat/completions", "{}").await, "HIT");
    let res = app
        .client
        .get(app.url("/v1/models/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    res.bytes().await.unwrap();

    let res = metrics_text(&app, None).await;
    assert_eq!(res.status(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = res.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let hits = r#"proxy_requests_total{cache="hit",status_class="2xx"}"#;
    assert_eq!(sample(&text, hits), Some(2.0), "{text}");
    let misses = r#"proxy_requests_total{cache="miss",status_class="2xx"}"#;
    assert_eq!(sample(&text, misses), Some(1.0));
    // A GET is cacheable too; its 404 is a miss that was not stored.
    let miss_404 = r#"proxy_requests_total{cache="miss",status_class="4xx"}"#;
    assert_eq!(sample(&text, miss_404), Some(1.0));
    // Two upstream calls timed: the miss and the GET.
    assert_eq!(
        sample(&text, "proxy_upstream_request_duration_seconds_count"),
        Some(2.0)
    );
    assert_eq!(sample(&text, "proxy_cache_entries"), Some(1.0));
    assert_eq!(sample(&text, "proxy_cache_stores_total"), Some(1.0));
    assert!(sample(&text, "proxy_cache_size_bytes").unwrap() > PRICED_ANSWER.len() as f64);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        sample(
            &text,
            &format!(r#"proxy_build_info{{version="{version}"}}"#)
        ),
        Some(1.0)
    );
    // One upstream connection was opened and is still pooled.
    assert!(
        sample(&text, "proxy_upstream_open_connections").unwrap() >= 1.0,
        "{text}"
    );
    let tokens = r#"proxy_tokens_saved_total{model="gpt-4o-mini-2024-07-18",kind="completion"}"#;
    assert_eq!(sample(&text, tokens), Some(1600.0));

    // /stats reads the very same counters.
    let stats = app.stats(None).await;
    assert_eq!(stats["cache"]["hits"], 2);
    assert_eq!(stats["cache"]["misses"], 2);
    assert_eq!(stats["savings"]["total_tokens"], 4000);
}

#[tokio::test]
async fn the_ledger_adds_up_tokens_and_dollars_per_model_for_json_and_streams() {
    let app = spawn_app(&[("PRICE_TABLE", "gpt-4o-mini=0.15/0.60,gpt-4o=2.50/10.00")]).await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(PRICED_ANSWER, "application/json"))
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(USAGE_STREAM, "text/event-stream"))
        .mount(&app.upstream)
        .await;
    for expected in ["MISS", "HIT", "HIT", "HIT"] {
        assert_eq!(
            send(&app, "/v1/chat/completions", r#"{"n":1}"#).await,
            expected
        );
    }
    for expected in ["MISS", "HIT"] {
        assert_eq!(
            send(&app, "/v1/completions", r#"{"stream":true}"#).await,
            expected
        );
    }

    let s = app.stats(None).await["savings"].clone();
    assert_eq!(s["requests_served_from_cache"], 4);
    assert_eq!(s["upstream_calls_avoided"], 4);
    assert_eq!(s["prompt_tokens"], 3 * 1200 + 10);
    assert_eq!(s["completion_tokens"], 3 * 800 + 5);
    assert_eq!(s["total_tokens"], 3 * 2000 + 15);
    let mini = &s["by_model"]["gpt-4o-mini-2024-07-18"];
    assert_eq!(mini["hits"], 3);
    // Priced as gpt-4o-mini (a dated snapshot): 3 × (1200 × 0.15 + 800 × 0.60) / 1e6.
    let mini_usd = 3.0 * (1200.0 * 0.15 + 800.0 * 0.60) / 1e6;
    assert!(
        (mini["usd"].as_f64().unwrap() - mini_usd).abs() < 1e-12,
        "{s}"
    );
    let streamed = &s["by_model"]["gpt-4o"];
    assert_eq!(
        (streamed["hits"].as_u64(), streamed["total_tokens"].as_u64()),
        (Some(1), Some(15))
    );
    let stream_usd = (10.0 * 2.5 + 5.0 * 10.0) / 1e6;
    let total = s["usd"].as_f64().unwrap();
    assert!((total - mini_usd - stream_usd).abs() < 1e-12, "{s}");

    let text = metrics_text(&app, None).await.text().await.unwrap();
    let usd = sample(&text, r#"proxy_usd_saved_total{model="gpt-4o"}"#).unwrap();
    assert!((usd - stream_usd).abs() < 1e-12, "{text}");
}

#[tokio::test]
async fn without_a_price_table_dollars_are_null_and_answers_without_usage_count_only_as_hits() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(r#"{"ok":true}"#, "application/json"))
        .mount(&app.upstream)
        .await;
    for expected in ["MISS", "HIT"] {
        assert_eq!(send(&app, "/v1/embeddings", "{}").await, expected);
    }
    let s = app.stats(None).await["savings"].clone();
    assert_eq!(s["requests_served_from_cache"], 1);
    assert_eq!(s["total_tokens"], 0);
    assert!(s["usd"].is_null());
    assert_eq!(s["by_model"], serde_json::json!({}));
}

#[tokio::test]
async fn metrics_need_the_admin_token_when_one_is_set() {
    let app = spawn_app(&[("ADMIN_TOKEN", "s3cret-admin")]).await;
    assert_eq!(metrics_text(&app, None).await.status(), 401);
    assert_eq!(metrics_text(&app, Some("wrong")).await.status(), 401);
    let res = metrics_text(&app, Some("s3cret-admin")).await;
    assert_eq!(res.status(), 200);
    assert!(!res.text().await.unwrap().contains("s3cret-admin"));
}

#[tokio::test]
async fn evictions_are_counted_on_metrics_as_in_stats() {
    let app = spawn_app(&[("MAX_CACHE_SIZE", "1")]).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw("e".repeat(100 * 1024), "application/json"),
        )
        .mount(&app.upstream)
        .await;
    // 20 distinct 100 KiB answers: twice the 1 MiB capacity.
    for i in 0..20 {
        assert_eq!(
            send(&app, "/v1/embeddings", &format!(r#"{{"i":{i}}}"#)).await,
            "MISS"
        );
    }
    let text = metrics_text(&app, None).await.text().await.unwrap();
    let evictions = sample(&text, "proxy_cache_evictions_total").expect("an evictions sample");
    assert!(evictions >= 10.0, "{text}");
    assert_eq!(
        app.stats(None).await["cache"]["evictions"].as_f64(),
        Some(evictions)
    );
}

#[tokio::test]
async fn rate_limited_requests_are_counted_on_metrics_as_in_stats() {
    let app = spawn_app(&[("RATE_LIMIT", "1")]).await;
    app.answer_posts().await;
    for _ in 0..3 {
        send(&app, "/v1/embeddings", "{}").await;
    }
    let text = metrics_text(&app, None).await.text().await.unwrap();
    assert_eq!(
        sample(&text, "proxy_rate_limited_requests_total"),
        Some(2.0),
        "{text}"
    );
    // Refused before any cache decision.
    let refused = r#"proxy_requests_total{cache="none",status_class="4xx"}"#;
    assert_eq!(sample(&text, refused), Some(2.0), "{text}");
    assert_eq!(app.stats(None).await["rate_limited_total"], 2);
}

#[tokio::test]
async fn open_upstream_connections_go_back_down_when_they_close() {
    // The upstream answers with `connection: close` (so the proxy closes it after the body)
    // and holds its stream until released.
    let upstream = SseUpstream::start(|_| Script::HoldAfterFirst).await;
    let address = spawn_proxy(&upstream.url, &[]);
    let open = |text: &str| sample(text, "proxy_upstream_open_connections");
    assert_eq!(open(&scrape(&address).await), Some(0.0));
    let mut res = client()
        .post(format!("{address}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.chunk().await.unwrap().unwrap(), EVENTS[0]);
    assert_eq!(open(&scrape(&address).await), Some(1.0), "one held stream");
    upstream.release();
    assert_eq!(
        read_all(res).await.unwrap(),
        EVENTS[1..].concat().as_bytes()
    );
    eventually(
        Duration::from_secs(10),
        "the gauge to fall to 0",
        || async { (open(&scrape(&address).await) == Some(0.0)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn requests_on_one_connection_are_each_counted_with_their_own_outcome() {
    // What the handler did is left in the connection's notes for the access log, so a
    // request that gets no cache decision must not be counted with the one before it.
    let app = spawn_app(&[]).await;
    app.answer_posts().await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&host).await.unwrap();
    let post = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer sk-a\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        )
    };
    let (status, head) = exchange(&mut sock, &post("/v1/embeddings")).await;
    assert_eq!(status, 200);
    assert!(head.contains("x-cache: MISS"), "{head}");
    let (status, head) = exchange(&mut sock, &post("/v1/embeddings")).await;
    assert_eq!(status, 200);
    assert!(head.contains("x-cache: HIT"), "{head}");
    // Refused before any cache decision, on the same connection (without a body to leave
    // unread, so the connection stays open).
    let refused = format!("GET /v1/./models HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let (status, head) = exchange(&mut sock, &refused).await;
    assert_eq!(status, 400);
    assert!(!head.contains("x-cache"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let (status, head) = exchange(&mut sock, &post("/v1/embeddings")).await;
    assert_eq!(status, 200);
    assert!(head.contains("x-cache: HIT"), "{head}");

    let text = metrics_text(&app, None).await.text().await.unwrap();
    let count = |cache: &str, class: &str| {
        sample(
            &text,
            &format!(r#"proxy_requests_total{{cache="{cache}",status_class="{class}"}}"#),
        )
    };
    assert_eq!(count("miss", "2xx"), Some(1.0), "{text}");
    assert_eq!(count("hit", "2xx"), Some(2.0), "{text}");
    assert_eq!(count("none", "4xx"), Some(1.0), "{text}");
    assert_eq!(count("hit", "4xx"), Some(0.0), "{text}");
    assert_eq!(app.upstream_calls().await, 1);
}
