//! Streamed responses reach the client as the upstream sends them, never buffered whole.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::helpers::{client, spawn_proxy, x_cache};

const EVENT_1: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
const EVENT_2: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";

/// An SSE upstream that sends the first event, then holds the rest until `release` fires.
/// Returns its URL and the sender that releases the rest of the stream.
async fn held_sse_upstream() -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (release, released) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed early");
            head.extend_from_slice(&buf[..n]);
        }
        let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
        let start = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        sock.write_all(format!("{start}{}", chunk(EVENT_1)).as_bytes())
            .await
            .unwrap();
        let _ = released.await;
        let rest = format!("{}{}0\r\n\r\n", chunk(EVENT_2), chunk(DONE));
        sock.write_all(rest.as_bytes()).await.unwrap();
        sock.flush().await.unwrap();
    });
    (url, release)
}

#[tokio::test]
async fn an_event_stream_reaches_the_client_before_the_upstream_finishes() {
    let (upstream, release) = held_sse_upstream().await;
    let address = spawn_proxy(&upstream, &[]);
    let mut res = client()
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth("sk-a")
        .body(r#"{"model":"m","stream":true,"messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(x_cache(&res), "MISS");

    // The upstream has not sent event 2 yet: event 1 must already be here.
    let first = res.chunk().await.unwrap().expect("a first chunk");
    assert_eq!(first, EVENT_1);
    release.send(()).unwrap();

    let mut rest = Vec::new();
    while let Some(c) = res.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(String::from_utf8(rest).unwrap(), format!("{EVENT_2}{DONE}"));
}
