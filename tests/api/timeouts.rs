//! REQUEST_TIMEOUT and CONNECT_TIMEOUT are ours, not awc's 5 s defaults: answers that take
//! longer than 5 s succeed when the setting allows them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{CHAT_ANSWER, CHAT_BODY, assert_openai_error, client, spawn_app, spawn_proxy};

/// Longer than any of awc's 5 s defaults.
const PAST_AWC_DEFAULT: Duration = Duration::from_millis(5500);

#[tokio::test]
async fn an_upstream_answering_after_five_and_a_half_seconds_succeeds_with_a_ten_second_request_timeout()
 {
    let app = spawn_app(&[("REQUEST_TIMEOUT", "10s")]).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(CHAT_ANSWER, "application/json")
                .set_delay(PAST_AWC_DEFAULT),
        )
        .expect(2)
        .mount(&app.upstream)
        .await;
    // A cacheable request (buffered body) and a bypassed one (streamed body), side by side.
    let (cached, bypassed) = tokio::join!(
        app.post_json("/v1/chat/completions", "sk-a", CHAT_BODY),
        app.post_json("/v1/files", "sk-a", CHAT_BODY),
    );
    for res in [cached, bypassed] {
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), CHAT_ANSWER);
    }
}

/// An HTTP proxy that waits `delay` before answering each CONNECT, then tunnels.
struct SlowConnectProxy {
    url: String,
    tunnels: Arc<AtomicUsize>,
}

impl SlowConnectProxy {
    async fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let tunnels = Arc::new(AtomicUsize::new(0));
        let count = tunnels.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(tunnel(sock, delay, count.clone()));
            }
        });
        Self { url, tunnels }
    }
}

async fn tunnel(mut client: TcpStream, delay: Duration, tunnels: Arc<AtomicUsize>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head
        .strip_prefix("CONNECT ")
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a CONNECT request")
        .to_owned();
    // The scripted slowness: the proxy's reply, not TCP, is what takes long.
    tokio::time::sleep(delay).await;
    let Ok(mut upstream) = TcpStream::connect(&target).await else {
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    tunnels.fetch_add(1, Ordering::SeqCst);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[tokio::test]
async fn a_proxy_answering_connect_after_five_and_a_half_seconds_succeeds_with_a_ten_second_connect_timeout()
 {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("{}", "application/json"))
        .expect(1)
        .mount(&upstream)
        .await;
    let proxy = SlowConnectProxy::start(PAST_AWC_DEFAULT).await;
    let patient = spawn_proxy(
        &upstream.uri(),
        &[("PROXY_URL", &proxy.url), ("CONNECT_TIMEOUT", "10s")],
    );
    // The control: the same proxy is too slow for a short CONNECT_TIMEOUT, so the delay is
    // in the part of the connection that CONNECT_TIMEOUT bounds.
    let hasty = spawn_proxy(
        &upstream.uri(),
        &[("PROXY_URL", &proxy.url), ("CONNECT_TIMEOUT", "1s")],
    );
    let http = client();
    let (ok, too_slow) = tokio::join!(
        http.get(format!("{patient}/v1/models")).send(),
        http.get(format!("{hasty}/v1/models")).send(),
    );
    let ok = ok.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "{}");
    assert_openai_error(too_slow.unwrap(), 504, "upstream_timeout").await;
    assert!(
        proxy.tunnels.load(Ordering::SeqCst) >= 1,
        "went through the proxy"
    );
}
