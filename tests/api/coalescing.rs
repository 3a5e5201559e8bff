//! Request coalescing: concurrent identical misses make one upstream call.

use std::time::Duration;

use futures_util::future::join_all;
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{CHAT_ANSWER, CHAT_BODY, client, eventually, spawn_app, spawn_proxy, x_cache};
use crate::metrics::{sample, scrape};
use crate::sse_upstream::{EVENTS, Script, SseUpstream};

#[tokio::test]
async fn fifty_concurrent_identical_requests_make_one_upstream_call() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(CHAT_ANSWER, "application/json")
                .set_delay(Duration::from_millis(500)),
        )
        .expect(1)
        .mount(&app.upstream)
        .await;

    let responses =
        join_all((0..50).map(|_| app.post_json("/v1/chat/completions", "sk-a", CHAT_BODY))).await;
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for res in responses {
        assert_eq!(res.status(), 200);
        *seen.entry(x_cache(&res).to_owned()).or_default() += 1;
        assert_eq!(res.text().await.unwrap(), CHAT_ANSWER);
    }
    assert_eq!(seen.get("MISS"), Some(&1), "{seen:?}");
    let coalesced = seen.get("COALESCED").copied().unwrap_or(0);
    assert_eq!(
        coalesced + seen.get("HIT").copied().unwrap_or(0),
        49,
        "{seen:?}"
    );
    assert!(coalesced >= 1, "{seen:?}");
    let stats = app.stats(None).await;
    assert_eq!(stats["cache"]["coalesced"], coalesced);
    assert_eq!(stats["cache"]["in_flight"], 0);
    // /metrics counts them under their own label.
    let text = scrape(&app.address).await;
    let series = r#"proxy_requests_total{cache="coalesced",status_class="2xx"}"#;
    assert_eq!(sample(&text, series), Some(coalesced as f64), "{text}");
}

#[tokio::test]
async fn followers_of_a_failed_upstream_answer_get_the_same_status() {
    let app = spawn_app(&[]).await;
    let error =
        r#"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(503)
                .set_body_raw(error, "application/json")
                .set_delay(Duration::from_millis(300)),
        )
        .expect(1)
        .mount(&app.upstream)
        .await;
    let responses =
        join_all((0..10).map(|_| app.post_json("/v1/chat/completions", "sk-a", CHAT_BODY))).await;
    for res in responses {
        assert_eq!(res.status(), 503);
        assert_eq!(res.text().await.unwrap(), error);
    }
    assert_eq!(app.stats(None).await["cache"]["stores"], 0);
}

#[tokio::test]
async fn followers_retry_once_when_the_leader_got_no_answer() {
    // Connection 0 is closed without an answer once released; later ones answer.
    let upstream = SseUpstream::first_then_complete(Script::CloseAfterRelease).await;
    let address = spawn_proxy(&upstream.url, &[]);
    let http = client();
    let send = || {
        let req = http
            .post(format!("{address}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(r#"{"stream":true}"#);
        tokio::spawn(async move { req.send().await.unwrap() })
    };
    let requests: Vec<_> = (0..5).map(|_| send()).collect();
    // All five wait on one flight: the leader's call to connection 0.
    eventually(
        Duration::from_secs(10),
        "five clients on one flight",
        || async {
            let stats = client().get(format!("{address}/stats")).send().await.ok()?;
            let stats: serde_json::Value = stats.json().await.ok()?;
            (stats["cache"]["in_flight_clients"] == 5).then_some(())
        },
    )
    .await;
    upstream.release();

    let mut statuses = Vec::new();
    for r in requests {
        let res = r.await.unwrap();
        let status = res.status().as_u16();
        if status == 200 {
            assert_eq!(res.text().await.unwrap(), EVENTS.concat());
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 502], "only the leader fails");
    assert_eq!(
        upstream.calls(),
        2,
        "the four retried together: one more call"
    );
}

#[tokio::test]
async fn stream_followers_get_the_prefix_then_follow_live() {
    let upstream = SseUpstream::start(|_| Script::HoldAfterFirst).await;
    let address = spawn_proxy(&upstream.url, &[]);
    let http = client();
    let send = || {
        http.post(format!("{address}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(r#"{"stream":true}"#)
            .send()
    };
    let mut leader = send().await.unwrap();
    assert_eq!(leader.chunk().await.unwrap().unwrap(), EVENTS[0]);
    // The upstream is holding the rest: the follower gets the prefix right away.
    let mut follower = send().await.unwrap();
    assert_eq!(x_cache(&follower), "COALESCED");
    assert_eq!(follower.chunk().await.unwrap().unwrap(), EVENTS[0]);

    // The leader leaves; the follower keeps the upstream call alive and gets the rest.
    drop(leader);
    upstream.release();
    let mut rest = Vec::new();
    while let Some(c) = follower.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(String::from_utf8(rest).unwrap(), EVENTS[1..].concat());
    assert_eq!(upstream.calls(), 1);
    // And the completed stream was stored.
    let hit = send().await.unwrap();
    assert_eq!(x_cache(&hit), "HIT");
}

#[tokio::test]
async fn different_requests_are_never_coalesced() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(CHAT_ANSWER, "application/json")
                .set_delay(Duration::from_millis(200)),
        )
        .expect(4)
        .mount(&app.upstream)
        .await;
    let reqs = [
        ("sk-a", CHAT_BODY),
        ("sk-b", CHAT_BODY),
        ("sk-a", "{}"),
        ("sk-b", "{}"),
    ];
    let responses = join_all(
        reqs.iter()
            .map(|(k, b)| app.post_json("/v1/chat/completions", k, b)),
    )
    .await;
    for res in responses {
        assert_eq!(x_cache(&res), "MISS");
    }
}

#[tokio::test]
async fn streams_for_different_api_keys_are_never_shared() {
    let upstream = SseUpstream::start(|_| Script::HoldAfterFirst).await;
    let address = spawn_proxy(&upstream.url, &[]);
    let http = client();
    let send = |key: &str| {
        http.post(format!("{address}/v1/chat/completions"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(r#"{"stream":true}"#)
            .send()
    };
    let mut a = send("sk-a").await.unwrap();
    let mut b = send("sk-b").await.unwrap();
    assert_eq!((x_cache(&a), x_cache(&b)), ("MISS", "MISS"));
    assert_ne!(a.headers()["x-cache-key"], b.headers()["x-cache-key"]);
    assert_eq!(a.chunk().await.unwrap().unwrap(), EVENTS[0]);
    assert_eq!(b.chunk().await.unwrap().unwrap(), EVENTS[0]);
    assert_eq!(upstream.calls(), 2, "one upstream call per API key");
    upstream.release();
}

#[tokio::test]
async fn followers_are_not_stranded_when_the_leader_goes_away_before_the_answer() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(CHAT_ANSWER, "application/json")
                .set_delay(Duration::from_millis(800)),
        )
        .mount(&app.upstream)
        .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let leader = tokio::spawn(
        impatient
            .post(app.url("/v1/chat/completions"))
            .bearer_auth("sk-a")
            .header("content-type", "application/json")
            .body(CHAT_BODY)
            .send(),
    );
    eventually(Duration::from_secs(5), "the leader's flight", || async {
        (app.stats(None).await["cache"]["in_flight_clients"] == 1).then_some(())
    })
    .await;
    let follower = tokio::time::timeout(
        Duration::from_secs(10),
        app.post_json("/v1/chat/completions", "sk-a", CHAT_BODY),
    );
    let (leader, follower) = tokio::join!(leader, follower);
    assert!(leader.unwrap().is_err(), "the leader gave up");
    // Whether or not the proxy noticed the leader leaving, the follower gets an answer.
    let follower = follower.expect("the follower is not stranded");
    assert_eq!(follower.status(), 200);
    assert_eq!(follower.text().await.unwrap(), CHAT_ANSWER);
}
