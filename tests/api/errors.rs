//! The proxy's own errors: right status, OpenAI-style JSON, safe messages.

use std::time::Duration;

use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{
    CHAT_BODY, assert_openai_error, client, closed_port, raw_request, spawn_app, spawn_proxy,
};

#[tokio::test]
async fn a_closed_upstream_port_gives_502() {
    let upstream = format!("http://127.0.0.1:{}", closed_port());
    let address = spawn_proxy(&upstream, &[]);
    for path in ["/v1/chat/completions", "/v1/files"] {
        let res = client()
            .post(format!("{address}{path}"))
            .bearer_auth("sk-secret-key")
            .body(CHAT_BODY)
            .send()
            .await
            .unwrap();
        let body = assert_openai_error(res, 502, "upstream_unavailable").await;
        let text = body.to_string();
        assert!(
            !text.contains("127.0.0.1") && !text.contains("sk-secret-key"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_slow_upstream_gives_504_after_the_request_timeout() {
    let app = spawn_app(&[("REQUEST_TIMEOUT", "200ms")]).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(30)))
        .mount(&app.upstream)
        .await;
    for path in ["/v1/chat/completions", "/v1/files"] {
        let res = app.post_json(path, "sk-a", CHAT_BODY).await;
        assert_openai_error(res, 504, "upstream_timeout").await;
    }
}

#[tokio::test]
async fn an_oversized_cacheable_body_gets_413_and_never_reaches_the_upstream() {
    let app = spawn_app(&[("MAX_BODY_SIZE_BYTES", "1000")]).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&app.upstream)
        .await;
    let big = "z".repeat(2000);
    let res = app.post_json("/v1/chat/completions", "sk-a", &big).await;
    assert_openai_error(res, 413, "payload_too_large").await;

    // Without Content-Length (chunked), the limit holds while reading.
    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok("a".repeat(600)), Ok("b".repeat(600))];
    let res = app
        .client
        .post(app.url("/v1/embeddings"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_openai_error(res, 413, "payload_too_large").await;
    assert_eq!(app.upstream_calls().await, 0);
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let app = spawn_app(&[]).await;
    for path in [
        "/",
        "/v2/models",
        "/stats/extra",
        "/v1x/models",
        "//v1/models",
        "/health/",
        "//health",
    ] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_openai_error(res, 404, "not_found").await;
    }
    // An operator route with another method is no route either.
    use reqwest::Method;
    for (method, path) in [
        (Method::POST, "/health"),
        (Method::GET, "/cache"),
        (Method::PUT, "/stats"),
    ] {
        let res = app
            .client
            .request(method, app.url(path))
            .send()
            .await
            .unwrap();
        assert_openai_error(res, 404, "not_found").await;
    }
    assert_eq!(app.upstream_calls().await, 0);
}

#[tokio::test]
async fn a_404_echoes_neither_the_path_nor_the_query_string() {
    let app = spawn_app(&[]).await;
    let res = app
        .client
        .get(app.url("/sk-in-path/x?api_key=secret-in-query"))
        .send()
        .await
        .unwrap();
    let text = assert_openai_error(res, 404, "not_found").await.to_string();
    assert!(
        !text.contains("sk-in-path") && !text.contains("secret-in-query"),
        "{text}"
    );
}

#[tokio::test]
async fn dot_segments_cannot_climb_out_of_v1() {
    let app = spawn_app(&[]).await;
    // Sent raw: HTTP client libraries normalise these paths before sending.
    for path in [
        "/v1/../stats",
        "/v1/%2e%2e/stats",
        "/v1/%2E%2E/cache",
        "/v1/models/%2e%2e/%2e%2e/admin",
        "/v1/./models",
        "/v1/models%2F..%2F..%2Fstats",
        "/v1/models%2f%2e%2e%2fcache",
    ] {
        let (status, body) = raw_request(&app.address, "GET", path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("invalid_request"), "{path}: {body}");
    }
    assert_eq!(app.upstream_calls().await, 0);
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_gets_408_and_nothing_goes_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(&[("REQUEST_TIMEOUT", "300ms")]).await;
    let host = app.address.trim_start_matches("http://");
    // Part of the body, or none of it, after the head.
    for sent in ["{\"model\":", ""] {
        let mut sock = tokio::net::TcpStream::connect(host).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{sent}"
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed without an answer");
                reply.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("the proxy answers a stalled body");
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 408"), "sent {sent:?}: {reply}");
    }
    assert_eq!(app.upstream_calls().await, 0);
}

#[tokio::test]
async fn a_body_that_arrives_in_pieces_within_the_request_timeout_goes_upstream_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The body comes after the head, in two parts: the proxy waits for it under
    // REQUEST_TIMEOUT (the path a body takes when it was not there with the head).
    let app = spawn_app(&[("REQUEST_TIMEOUT", "10s")]).await;
    app.answer_posts().await;
    let host = app.address.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(host).await.unwrap();
    let (first, second) = CHAT_BODY.split_at(CHAT_BODY.len() / 2);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        CHAT_BODY.len()
    );
    for part in [head.as_str(), first, second] {
        sock.write_all(part.as_bytes()).await.unwrap();
        sock.flush().await.unwrap();
        // A slow client: the proxy has read what there is and waits for more.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut reply))
        .await
        .expect("the proxy answers")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("x-cache: MISS"), "{reply}");
    let received = app.upstream.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, CHAT_BODY.as_bytes());
}

#[tokio::test]
async fn an_oversized_header_block_is_refused_before_the_upstream() {
    let app = spawn_app(&[]).await;
    let big = "x".repeat(200 * 1024);
    let res = app
        .client
        .get(app.url("/v1/models"))
        .header("x-big", big)
        .send()
        .await;
    // actix answers a header block over its 128 KiB buffer with 431.
    assert_eq!(res.expect("the proxy answers").status(), 431);
    let ok = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(ok.status(), 200, "the proxy keeps serving");
    assert_eq!(app.upstream_calls().await, 0);
}
