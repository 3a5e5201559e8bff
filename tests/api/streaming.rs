//! Streams: passed through as they arrive, stored only when complete, replayed faithfully.

use std::time::Duration;

use crate::helpers::{client, spawn_proxy, x_cache};
use crate::sse_upstream::{BINARY, EVENTS, Script, SseUpstream, large_stream, read_all};

const STREAM_BODY: &str = r#"{"model":"m","stream":true,"messages":[]}"#;

async fn stream_request(address: &str) -> reqwest::Response {
    stream_request_as(address, "sk-a").await
}

async fn stream_request_as(address: &str, api_key: &str) -> reqwest::Response {
    client()
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(api_key)
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

#[tokio::test]
async fn a_stored_stream_for_one_api_key_is_a_miss_for_another() {
    let upstream = SseUpstream::start(|_| Script::Complete).await;
    let address = spawn_proxy(&upstream.url, &[]);
    for (key, expected) in [("sk-a", "MISS"), ("sk-a", "HIT"), ("sk-b", "MISS")] {
        let res = stream_request_as(&address, key).await;
        assert_eq!(x_cache(&res), expected, "{key}");
        assert_eq!(read_text(res).await.unwrap(), EVENTS.concat(), "{key}");
    }
    assert_eq!(upstream.calls(), 2, "one upstream call per API key");
}

#[tokio::test]
async fn a_stream_larger_than_the_entry_limit_is_passed_through_whole_and_not_stored() {
    let events = large_stream(200);
    let whole = events.concat();
    assert!(whole.len() > 4 * 2000 && whole.ends_with("data: [DONE]\n\n"));
    let upstream = SseUpstream::start(|_| Script::Large(200)).await;
    let address = spawn_proxy(&upstream.url, &[("MAX_ENTRY_SIZE_BYTES", "2000")]);
    for _ in 0..2 {
        let res = stream_request(&address).await;
        assert_eq!(x_cache(&res), "MISS");
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        let got = read_text(res).await.unwrap();
        assert!(
            got == whole,
            "not byte-identical: {} bytes, {}",
            got.len(),
            whole.len()
        );
    }
    assert_eq!(upstream.calls(), 2, "nothing was stored");
    // The control: under the default limit the same stream is stored.
    let roomy = spawn_proxy(&upstream.url, &[]);
    for expected in ["MISS", "HIT"] {
        let res = stream_request(&roomy).await;
        assert_eq!(x_cache(&res), expected);
        assert_eq!(read_text(res).await.unwrap().len(), whole.len());
    }
}

#[tokio::test]
async fn a_complete_stream_with_a_status_other_than_200_is_passed_through_but_not_stored() {
    for status in [202u16, 429, 500] {
        let upstream = SseUpstream::start(move |_| Script::Status(status)).await;
        let address = spawn_proxy(&upstream.url, &[]);
        for _ in 0..2 {
            let res = stream_request(&address).await;
            assert_eq!(res.status(), status);
            assert_eq!(x_cache(&res), "MISS", "{status}");
            assert_eq!(read_text(res).await.unwrap(), EVENTS.concat(), "{status}");
        }
        assert_eq!(upstream.calls(), 2, "{status}: nothing was stored");
    }
    // The control: the same stream under 200 is stored.
    let upstream = SseUpstream::start(|_| Script::Status(200)).await;
    let address = spawn_proxy(&upstream.url, &[]);
    for expected in ["MISS", "HIT"] {
        let res = stream_request(&address).await;
        assert_eq!(x_cache(&res), expected);
        assert_eq!(read_text(res).await.unwrap(), EVENTS.concat());
    }
}

#[tokio::test]
async fn a_chunked_body_that_cannot_prove_its_end_is_passed_through_but_never_stored() {
    // Neither JSON nor an event stream, and no length: a cut-off copy would look complete.
    let upstream = SseUpstream::start(|_| Script::ChunkedBinary).await;
    let address = spawn_proxy(&upstream.url, &[]);
    for _ in 0..2 {
        let res = client()
            .get(format!("{address}/v1/files/file-1/content"))
            .send()
            .await
            .unwrap();
        assert_eq!(x_cache(&res), "MISS");
        let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
        assert!(!status.contains("stored"), "{status}");
        assert_eq!(read_all(res).await.unwrap(), BINARY.concat().as_bytes());
    }
    assert_eq!(upstream.calls(), 2, "nothing was stored");
}
