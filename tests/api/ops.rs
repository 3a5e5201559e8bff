//! Operator endpoints: /health, /stats, DELETE /cache, and the admin token.

use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{CHAT_ANSWER, CHAT_BODY, assert_openai_error, spawn_app, x_cache};

#[tokio::test]
async fn health_reports_healthy() {
    let app = spawn_app(&[]).await;
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["service"], "openai-cache-proxy");
    assert!(body["timestamp"].as_u64().unwrap() > 1_700_000_000);
}

#[tokio::test]
async fn stats_report_cache_and_config_without_secrets() {
    let app = spawn_app(&[
        ("PROXY_URL", "http://bob:hunter2@proxy.internal:3128"),
        ("NO_PROXY", "127.0.0.1"),
        ("CACHE_TTL", "10m"),
        ("MAX_CACHE_SIZE", "7"),
    ])
    .await;
    // Give the stats something to count (NO_PROXY sends the mock's traffic direct).
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(CHAT_ANSWER, "application/json"))
        .mount(&app.upstream)
        .await;
    // Each answer read to its end, so the first is stored before the second asks.
    for path in ["/v1/chat/completions", "/v1/chat/completions"] {
        let res = app.post_json(path, "sk-a", CHAT_BODY).await;
        res.bytes().await.unwrap();
    }
    app.post_json("/v1/files", "sk-a", "{}").await;

    let res = app.client.get(app.url("/stats")).send().await.unwrap();
    let text = res.text().await.unwrap();
    assert!(!text.contains("hunter2") && !text.contains("bob"), "{text}");
    let stats: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cache = &stats["cache"];
    assert_eq!(cache["item_count"], 1);
    assert!(cache["size_bytes"].as_u64().unwrap() >= CHAT_ANSWER.len() as u64);
    assert_eq!(cache["max_size_bytes"], 7 * 1024 * 1024);
    assert_eq!(cache["ttl"], "10m");
    assert_eq!(cache["hits"], 1);
    assert_eq!(cache["misses"], 1);
    assert_eq!(cache["bypasses"], 1);
    assert_eq!(cache["stores"], 1);
    assert_eq!(cache["evictions"], 0);
    assert_eq!(cache["hit_ratio"], 0.5);
    assert_eq!(stats["rate_limit"], 0);
    assert_eq!(stats["rate_limited_total"], 0);
    assert_eq!(stats["openai_url"], app.upstream.uri());
    assert_eq!(stats["proxy_url"], "http://***@proxy.internal:3128");
    assert!(stats["uptime_seconds"].is_u64());
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn deleting_the_cache_makes_the_next_request_a_miss() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(CHAT_ANSWER, "application/json"))
        .expect(2)
        .mount(&app.upstream)
        .await;
    assert_eq!(
        x_cache(
            &app.post_json("/v1/chat/completions", "sk-a", CHAT_BODY)
                .await
        ),
        "MISS"
    );
    assert_eq!(
        x_cache(
            &app.post_json("/v1/chat/completions", "sk-a", CHAT_BODY)
                .await
        ),
        "HIT"
    );

    let res = app.client.delete(app.url("/cache")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["message"], "Cache cleared successfully");
    assert_eq!(body["cleared"], 1);

    assert_eq!(
        x_cache(
            &app.post_json("/v1/chat/completions", "sk-a", CHAT_BODY)
                .await
        ),
        "MISS"
    );
    assert_eq!(app.stats(None).await["cache"]["item_count"], 1);
}

#[tokio::test]
async fn admin_endpoints_require_the_token_when_set() {
    let token = "admin-token-0123456789";
    let app = spawn_app(&[("ADMIN_TOKEN", token)]).await;
    let same_length_wrong = "admin-token-0123456780";
    assert_eq!(same_length_wrong.len(), token.len());

    for (auth, expect) in [
        (None, 401u16),
        (Some("Bearer wrong"), 401),
        (
            Some(format!("Bearer {same_length_wrong}").leak() as &str),
            401,
        ),
        (Some(format!("Basic {token}").leak() as &str), 401),
        (Some(format!("Bearer {token}").leak() as &str), 200),
    ] {
        for (m, path) in [("GET", "/stats"), ("DELETE", "/cache")] {
            let mut req = app.client.request(m.parse().unwrap(), app.url(path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let res = req.send().await.unwrap();
            if expect == 401 {
                let body = assert_openai_error(res, 401, "invalid_admin_token").await;
                assert!(!body.to_string().contains(token));
            } else {
                assert_eq!(res.status(), 200, "{m} {path}");
            }
        }
    }
    // Health stays open.
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}
