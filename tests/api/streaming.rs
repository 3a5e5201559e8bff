//! Streams: passed through as they arrive, stored only when complete, replayed faithfully.

use std::time::Duration;

use crate::helpers::{client, spawn_proxy, x_cache};
use crate::sse_upstream::{EVENTS, Script, SseUpstream, read_all};

const STREAM_BODY: &str = r#"{"model":"m","stream":true,"messages":[]}"#;

async fn stream_request(address: &str) -> reqwest::Response {
    client()
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth("sk-a")
        .header("content-type", "application/json")
        .body(STREAM_BODY)
        .send()
        .await
        .unwrap()
}

async fn read_text(res: reqwest::Response) -> Result<String, reqwest::Error> {
    read_all(res).await.map(|b| String::from_utf8(b).unwrap())
}

#[tokio::test]
async fn an_event_stream_reaches_the_client_before_the_upstream_finishes() {
    let upstream = SseUpstream::start(|_| Script::HoldAfterFirst).await;
    let address = spawn_proxy(&upstream.url, &[]);
    let mut res = stream_request(&address).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(x_cache(&res), "MISS");

    // The upstream has not sent event 2 yet: event 1 must already be here.
    let first = res.chunk().await.unwrap().expect("a first chunk");
    assert_eq!(first, EVENTS[0]);
    upstream.release();
    assert_eq!(read_text(res).await.unwrap(), EVENTS[1..].concat());
}

#[tokio::test]
async fn a_complete_stream_is_stored_and_replayed_byte_identical() {
    let upstream = SseUpstream::start(|_| Script::Complete).await;
    let address = spawn_proxy(&upstream.url, &[]);
    let miss = stream_request(&address).await;
    assert_eq!(x_cache(&miss), "MISS");
    let original = read_text(miss).await.unwrap();
    assert_eq!(original, EVENTS.concat());

    let hit = stream_request(&address).await;
    assert_eq!(x_cache(&hit), "HIT");
    assert_eq!(hit.headers()["content-type"], "text/event-stream");
    assert_eq!(read_text(hit).await.unwrap(), original);
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test]
async fn incomplete_streams_are_passed_through_but_not_stored() {
    for script in [Script::NoDone, Script::CutMidChunk] {
        let upstream = SseUpstream::start(move |_| script).await;
        let address = spawn_proxy(&upstream.url, &[]);
        for _ in 0..2 {
            let res = stream_request(&address).await;
            assert_eq!(x_cache(&res), "MISS", "{script:?}");
            let body = read_text(res).await;
            match script {
                Script::NoDone => assert_eq!(body.unwrap(), EVENTS[..2].concat()),
                // awc reports a chunked body cut by EOF as a clean end, so the client may
                // see a truncated body rather than an error; either way not the whole stream.
                _ => assert!(
                    body.as_deref()
                        .map_or(true, |b| b.len() < EVENTS.concat().len()),
                    "{body:?}"
                ),
            }
        }
        assert_eq!(upstream.calls(), 2, "{script:?}: nothing was stored");
    }
}

#[tokio::test]
async fn a_client_leaving_mid_stream_cancels_the_upstream_request() {
    // Connection 0 streams slowly (5 s in all); later ones answer at once.
    let upstream = SseUpstream::first_then_complete(Script::Slow).await;
    let address = spawn_proxy(&upstream.url, &[]);
    let mut res = stream_request(&address).await;
    assert_eq!(res.chunk().await.unwrap().unwrap(), EVENTS[0]);
    drop(res);
    // actix notices the client is gone at its next write; the upstream then sees its own
    // connection closed long before its 5 s stream would have ended.
    tokio::time::timeout(Duration::from_secs(4), upstream.closed_early.notified())
        .await
        .expect("the upstream connection is closed when the only client leaves");
    // Nothing was stored: the next request goes upstream again.
    let again = stream_request(&address).await;
    assert_eq!(x_cache(&again), "MISS");
    assert_eq!(read_text(again).await.unwrap(), EVENTS.concat());
}
