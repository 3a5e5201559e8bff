//! CLIENT_IDLE_TIMEOUT: a client connection waiting for its next request is closed after it;
//! a connection with a request in progress is not, however long that request takes.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{client, exchange, spawn_proxy};
use crate::sse_upstream::{EVENTS, Script, SseUpstream, read_all};

const IDLE: [(&str, &str); 1] = [("CLIENT_IDLE_TIMEOUT", "1s")];

fn health(address: &str) -> String {
    let host = address.trim_start_matches("http://");
    format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

async fn connect(address: &str) -> TcpStream {
    TcpStream::connect(address.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Waits (at most 10 s) for the proxy to close `sock`; returns what it sent before closing.
async fn closed_by_the_proxy(sock: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut got))
        .await
        .expect("the proxy closes the connection")
        .expect("a clean close");
    got
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_client_idle_timeout() {
    let upstream = SseUpstream::start(|_| Script::Complete).await;
    let address = spawn_proxy(&upstream.url, &IDLE);
    let mut sock = connect(&address).await;
    assert_eq!(exchange(&mut sock, &health(&address)).await.0, 200);
    // Kept alive: a second request on the same connection is answered. The proxy counts the
    // timeout from that answer's end, which comes after the request is sent and before the
    // answer arrives here: timed from the send, a close after the timeout takes longer.
    let sent = Instant::now();
    assert_eq!(exchange(&mut sock, &health(&address)).await.0, 200);

    let after = closed_by_the_proxy(&mut sock).await;
    assert!(after.is_empty(), "{}", String::from_utf8_lossy(&after));
    // Not before the timeout, and after it rather than after actix's 5 s default.
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn a_request_head_sent_in_part_on_a_kept_alive_connection_is_closed() {
    // actix times out only a connection's first request head: without our watch, a client
    // that stopped half-way through a later one kept its connection for good.
    let upstream = SseUpstream::start(|_| Script::Complete).await;
    let address = spawn_proxy(&upstream.url, &IDLE);
    let mut sock = connect(&address).await;
    assert_eq!(exchange(&mut sock, &health(&address)).await.0, 200);
    sock.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .await
        .unwrap();

    let after = closed_by_the_proxy(&mut sock).await;
    assert!(after.is_empty(), "{}", String::from_utf8_lossy(&after));
    assert_eq!(upstream.calls(), 0, "nothing went upstream");
}

/// Opens a keep-alive connection, makes one request on it and waits for the proxy to close
/// it: by then the proxy has looked at its connections past CLIENT_IDLE_TIMEOUT.
async fn an_idle_connection_closed(address: &str) {
    let mut sock = connect(address).await;
    assert_eq!(exchange(&mut sock, &health(address)).await.0, 200);
    closed_by_the_proxy(&mut sock).await;
}

#[tokio::test]
async fn a_stream_held_longer_than_client_idle_timeout_is_not_cut() {
    let upstream = SseUpstream::start(|_| Script::HoldAfterFirst).await;
    let address = spawn_proxy(&upstream.url, &IDLE);
    let mut res = client()
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth("sk-a")
        .header("content-type", "application/json")
        .body(r#"{"model":"m","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.chunk().await.unwrap().expect("a first chunk"),
        EVENTS[0]
    );

    // The stream is silent while an idle connection opened after it is closed.
    an_idle_connection_closed(&address).await;
    upstream.release();
    let rest = read_all(res).await.expect("the stream is whole");
    assert_eq!(String::from_utf8(rest).unwrap(), EVENTS[1..].concat());
}

#[tokio::test]
async fn a_request_waiting_longer_than_client_idle_timeout_for_its_answer_gets_it() {
    let upstream = SseUpstream::start(|_| Script::CompleteAfterRelease).await;
    let address = spawn_proxy(&upstream.url, &IDLE);
    let waiting = tokio::spawn(
        client()
            .post(format!("{address}/v1/chat/completions"))
            .bearer_auth("sk-a")
            .header("content-type", "application/json")
            .body(r#"{"model":"m","stream":true,"messages":[]}"#)
            .send(),
    );

    an_idle_connection_closed(&address).await;
    assert!(
        !waiting.is_finished(),
        "answered before the upstream was let go"
    );
    upstream.release();
    let res = waiting.await.unwrap().expect("the answer arrives");
    assert_eq!(res.status(), 200);
    let body = read_all(res).await.unwrap();
    assert_eq!(String::from_utf8(body).unwrap(), EVENTS.concat());
}
