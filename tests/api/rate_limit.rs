//! Per-client-IP token bucket.

use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{TestApp, assert_openai_error, spawn_app, x_cache};

async fn mount_ok(app: &TestApp) {
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{}"))
        .mount(&app.upstream)
        .await;
}

async fn get(app: &TestApp, xff: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(app.url("/v1/models"));
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn over_the_limit_gets_429_with_retry_after() {
    let app = spawn_app(&[("RATE_LIMIT", "2")]).await;
    mount_ok(&app).await;

    let first = get(&app, None).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
    // A cache hit spends a token too.
    let second = get(&app, None).await;
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(second.headers()["x-ratelimit-remaining"], "0");

    let third = get(&app, None).await;
    let retry: u64 = third.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(third.headers()["x-ratelimit-remaining"], "0");
    let body = assert_openai_error(third, 429, "rate_limit_exceeded").await;
    assert_eq!(body["error"]["type"], "rate_limit_exceeded");

    // Health and stats are never limited, and a path outside /v1 is a 404 whatever the
    // bucket holds.
    for _ in 0..5 {
        let res = app.client.get(app.url("/health")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let res = app.client.get(app.url("/v2/models")).send().await.unwrap();
        assert!(res.headers().get("x-ratelimit-limit").is_none());
        assert_openai_error(res, 404, "not_found").await;
    }
    let stats = app.stats(None).await;
    assert_eq!(stats["rate_limited_total"], 1);
    assert_eq!(stats["rate_limit"], 2);
    assert_eq!(app.upstream_calls().await, 1);
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let app = spawn_app(&[("RATE_LIMIT", "1")]).await;
    mount_ok(&app).await;
    assert_eq!(get(&app, Some("198.51.100.1")).await.status(), 200);
    // A new spoofed address does not buy a new bucket.
    assert_eq!(get(&app, Some("198.51.100.2")).await.status(), 429);
}

#[tokio::test]
async fn x_forwarded_for_from_a_trusted_peer_names_the_client() {
    let app = spawn_app(&[("RATE_LIMIT", "1"), ("TRUSTED_PROXIES", "127.0.0.0/8")]).await;
    mount_ok(&app).await;
    assert_eq!(get(&app, Some("198.51.100.1")).await.status(), 200);
    assert_eq!(get(&app, Some("198.51.100.2")).await.status(), 200);
    assert_eq!(get(&app, Some("198.51.100.1")).await.status(), 429);
    // Only the right-most untrusted entry counts: a spoofed left part is ignored.
    assert_eq!(
        get(&app, Some("203.0.113.50, 198.51.100.2")).await.status(),
        429
    );
}

#[tokio::test]
async fn zero_disables_rate_limiting() {
    let app = spawn_app(&[("RATE_LIMIT", "0")]).await;
    mount_ok(&app).await;
    for _ in 0..20 {
        let res = get(&app, None).await;
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("x-ratelimit-limit").is_none());
    }
}
