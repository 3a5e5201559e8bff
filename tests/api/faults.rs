//! Upstream faults: the client gets a clear failure and nothing partial is stored.

use crate::helpers::{assert_openai_error, client, closed_port, spawn_proxy, x_cache};
use crate::sse_upstream::{EVENTS, Script, SseUpstream, read_all};

async fn post(address: &str, path: &str) -> reqwest::Response {
    client()
        .post(format!("{address}{path}"))
        .header("content-type", "application/json")
        .body(r#"{"stream":true}"#)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_silent_upstream_body_is_cut_off_after_the_idle_timeout() {
    for path in ["/v1/chat/completions", "/v1/files"] {
        let upstream = SseUpstream::start(|_| Script::HoldAfterFirst).await;
        let address = spawn_proxy(&upstream.url, &[("UPSTREAM_IDLE_TIMEOUT", "300ms")]);
        for _ in 0..2 {
            let res = post(&address, path).await;
            assert_eq!(res.status(), 200);
            let body = read_all(res).await;
            // The client sees the first event, then the body breaks off.
            assert!(body.is_err(), "{path}: {body:?}");
        }
        assert_eq!(upstream.calls(), 2, "{path}: nothing was stored");
    }
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_an_error_and_not_stored() {
    let upstream = SseUpstream::start(|_| Script::ShortBody).await;
    let address = spawn_proxy(&upstream.url, &[]);
    for _ in 0..2 {
        let res = post(&address, "/v1/chat/completions").await;
        assert_eq!(x_cache(&res), "MISS");
        assert!(read_all(res).await.is_err());
    }
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn invalid_http_from_the_upstream_gives_502_and_the_proxy_keeps_serving() {
    let upstream = SseUpstream::start(|n| {
        if n < 2 {
            Script::Garbage
        } else {
            Script::Complete
        }
    })
    .await;
    let address = spawn_proxy(&upstream.url, &[]);
    for path in ["/v1/chat/completions", "/v1/files"] {
        let res = post(&address, path).await;
        assert_openai_error(res, 502, "upstream_unavailable").await;
    }
    assert_serves_whole_stream(&address).await;
}

/// The proxy answers the next request in full: it was not left broken by a fault.
async fn assert_serves_whole_stream(address: &str) {
    let res = post(address, "/v1/chat/completions").await;
    assert_eq!(res.status(), 200);
    assert_eq!(read_all(res).await.unwrap(), EVENTS.concat().as_bytes());
}

#[tokio::test]
async fn a_refused_connection_gives_502_and_the_proxy_serves_once_the_upstream_is_back() {
    let port = closed_port();
    let address = spawn_proxy(&format!("http://127.0.0.1:{port}"), &[]);
    let res = post(&address, "/v1/chat/completions").await;
    assert_openai_error(res, 502, "upstream_unavailable").await;
    let upstream = SseUpstream::start_on(port, |_| Script::Complete).await;
    assert_serves_whole_stream(&address).await;
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn a_reset_before_the_answer_gives_502_and_the_proxy_keeps_serving() {
    let upstream = SseUpstream::first_then_complete(Script::ResetBeforeHead).await;
    let address = spawn_proxy(&upstream.url, &[]);
    let res = post(&address, "/v1/chat/completions").await;
    assert_openai_error(res, 502, "upstream_unavailable").await;
    assert_serves_whole_stream(&address).await;
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test]
async fn a_reset_mid_body_breaks_the_answer_off_stores_nothing_and_the_proxy_keeps_serving() {
    for script in [Script::ResetMidJson, Script::ResetMidStream] {
        let upstream =
            SseUpstream::start(move |n| if n < 2 { script } else { Script::Complete }).await;
        let address = spawn_proxy(&upstream.url, &[]);
        for _ in 0..2 {
            // A small JSON answer is read whole before its head goes out, so its reset comes
            // first; a stream's head goes out at once, and the reset follows it.
            if script == Script::ResetMidJson {
                upstream.cut();
            }
            let res = post(&address, "/v1/chat/completions").await;
            assert_eq!(res.status(), 200, "{script:?}");
            assert_eq!(x_cache(&res), "MISS", "{script:?}: nothing was stored");
            if script == Script::ResetMidStream {
                upstream.cut();
            }
            let body = read_all(res).await;
            assert!(body.is_err(), "{script:?}: {body:?}");
        }
        assert_eq!(upstream.calls(), 2, "{script:?}");
        assert_serves_whole_stream(&address).await;
    }
}

#[tokio::test]
async fn a_connection_closed_before_any_answer_gives_502_and_the_proxy_keeps_serving() {
    let upstream = SseUpstream::first_then_complete(Script::CloseAfterRelease).await;
    upstream.release();
    let address = spawn_proxy(&upstream.url, &[]);
    let res = post(&address, "/v1/chat/completions").await;
    assert_openai_error(res, 502, "upstream_unavailable").await;
    let res = post(&address, "/v1/chat/completions").await;
    assert_eq!(res.status(), 200);
    assert_eq!(read_all(res).await.unwrap(), EVENTS.concat().as_bytes());
}
