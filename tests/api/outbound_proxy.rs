//! PROXY_URL: upstream traffic through a real tinyproxy, with TLS end to end.

use std::time::Duration;

use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    CHAT_BODY, assert_openai_error, client, closed_port, eventually, spawn_proxy, x_cache,
};
use crate::tinyproxy::{PROXY_PASSWORD, PROXY_USER, Tinyproxy};
use crate::tls_upstream::{SSE_EVENTS, TestCa, start_tls_upstream, start_tls_upstream_named};

async fn post(address: &str, body: &str) -> reqwest::Response {
    client()
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth("sk-through-proxy")
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request reaches the proxy")
}

#[tokio::test]
async fn https_traffic_goes_through_the_proxy_and_reuses_the_tunnel() {
    let ca = TestCa::new();
    let upstream = start_tls_upstream(&ca);
    let tinyproxy = Tinyproxy::start(true).await;
    let proxy_url = tinyproxy.url(Some((PROXY_USER, PROXY_PASSWORD)));
    let ca_file = ca.pem_path();
    let address = spawn_proxy(
        &upstream.url,
        &[
            ("PROXY_URL", &proxy_url),
            ("EXTRA_CA_FILE", ca_file.to_str().unwrap()),
        ],
    );

    let miss = post(&address, CHAT_BODY).await;
    assert_eq!(miss.status(), 200);
    assert_eq!(x_cache(&miss), "MISS");
    let miss_body = miss.text().await.unwrap();
    assert!(miss_body.contains("gpt-4o-mini"), "{miss_body}");
    let hit = post(&address, CHAT_BODY).await;
    assert_eq!(x_cache(&hit), "HIT");
    assert_eq!(hit.text().await.unwrap(), miss_body);
    let other = post(&address, r#"{"model":"other"}"#).await;
    assert_eq!(x_cache(&other), "MISS");

    assert_eq!(upstream.calls(), 2);
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer sk-through-proxy")
    );
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/chat/completions");
    let port = upstream.url.rsplit(':').next().unwrap();
    let connects = eventually(Duration::from_secs(5), "tinyproxy's log", || async {
        let c = tinyproxy.connects();
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(
        connects,
        [format!("CONNECT localhost:{port} HTTP/1.1")],
        "two upstream calls, one tunnel"
    );
}

#[tokio::test]
async fn a_plain_http_upstream_is_tunnelled_too() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{}"))
        .expect(1)
        .mount(&upstream)
        .await;
    let tinyproxy = Tinyproxy::start(false).await;
    let address = spawn_proxy(&upstream.uri(), &[("PROXY_URL", &tinyproxy.url(None))]);
    let res = client()
        .get(format!("{address}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let expected = format!("CONNECT {} HTTP/1.1", upstream.address());
    eventually(Duration::from_secs(5), "the CONNECT line", || async {
        tinyproxy.connects().contains(&expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_stream_flows_through_the_proxy() {
    let ca = TestCa::new();
    let upstream = start_tls_upstream(&ca);
    let tinyproxy = Tinyproxy::start(false).await;
    let ca_file = ca.pem_path();
    let address = spawn_proxy(
        &upstream.url,
        &[
            ("PROXY_URL", &tinyproxy.url(None)),
            ("EXTRA_CA_FILE", ca_file.to_str().unwrap()),
        ],
    );
    let mut res = post(&address, r#"{"model":"m","stream":true}"#).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut got = Vec::new();
    while let Some(chunk) = res.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8(got).unwrap(), SSE_EVENTS.concat());
    assert_eq!(tinyproxy.connects().len(), 1);
}

#[tokio::test]
async fn a_closed_proxy_port_gives_502() {
    let upstream = MockServer::start().await;
    let proxy_url = format!(
        "http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{}",
        closed_port()
    );
    let address = spawn_proxy(&upstream.uri(), &[("PROXY_URL", &proxy_url)]);
    let res = post(&address, CHAT_BODY).await;
    let body = assert_openai_error(res, 502, "outbound_proxy_unavailable").await;
    assert!(!body.to_string().contains(PROXY_PASSWORD));
    assert_eq!(upstream.received_requests().await.unwrap().len(), 0);
}

#[tokio::test]
async fn a_wrong_proxy_password_gives_502_naming_the_proxys_status() {
    let upstream = MockServer::start().await;
    let tinyproxy = Tinyproxy::start(true).await;
    for (creds, status) in [(Some((PROXY_USER, "wrong-password")), "401"), (None, "407")] {
        let address = spawn_proxy(&upstream.uri(), &[("PROXY_URL", &tinyproxy.url(creds))]);
        let res = post(&address, CHAT_BODY).await;
        let body = assert_openai_error(res, 502, "outbound_proxy_rejected").await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("rejected the tunnel") && message.contains(status),
            "{message}"
        );
        assert!(!message.contains("wrong-password"), "{message}");
    }
    assert_eq!(upstream.received_requests().await.unwrap().len(), 0);
}

#[tokio::test]
async fn a_proxy_that_forbids_the_tunnel_gives_502_naming_403() {
    let upstream = MockServer::start().await;
    // tinyproxy serves only another address, so it answers our CONNECT with 403.
    let tinyproxy = Tinyproxy::start_allowing(false, "10.255.255.1").await;
    let address = spawn_proxy(&upstream.uri(), &[("PROXY_URL", &tinyproxy.url(None))]);
    let res = post(&address, CHAT_BODY).await;
    let body = assert_openai_error(res, 502, "outbound_proxy_rejected").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("rejected the tunnel") && message.contains("403"),
        "{message}"
    );
    assert_eq!(upstream.received_requests().await.unwrap().len(), 0);
}

#[tokio::test]
async fn a_trusted_certificate_for_another_name_gives_502() {
    let ca = TestCa::new();
    // Signed by the trusted CA, but for another host than the one the proxy connects to.
    let upstream = start_tls_upstream_named(&ca, &["upstream.example"]);
    let tinyproxy = Tinyproxy::start(false).await;
    let ca_file = ca.pem_path();
    let ca_file = ca_file.to_str().unwrap();
    let proxy_url = tinyproxy.url(None);
    for vars in [
        vec![("EXTRA_CA_FILE", ca_file)],
        vec![
            ("EXTRA_CA_FILE", ca_file),
            ("PROXY_URL", proxy_url.as_str()),
        ],
    ] {
        let address = spawn_proxy(&upstream.url, &vars);
        let res = post(&address, CHAT_BODY).await;
        assert_openai_error(res, 502, "upstream_tls_verification_failed").await;
    }
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn a_silent_proxy_gives_504_after_the_connect_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accept connections and never answer.
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            open.push(sock);
        }
    });
    let upstream = MockServer::start().await;
    let address = spawn_proxy(
        &upstream.uri(),
        &[
            ("PROXY_URL", &format!("http://127.0.0.1:{port}")),
            ("CONNECT_TIMEOUT", "300ms"),
        ],
    );
    let res = post(&address, CHAT_BODY).await;
    assert_openai_error(res, 504, "upstream_timeout").await;
    held.abort();
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_gives_502() {
    let ca = TestCa::new();
    let upstream = start_tls_upstream(&ca);
    let tinyproxy = Tinyproxy::start(false).await;
    // Another CA is trusted, not the one that signed the upstream's certificate.
    let other_ca = TestCa::new();
    let other_file = other_ca.pem_path();
    for extra in [None, Some(other_file.to_str().unwrap())] {
        let mut vars = vec![("PROXY_URL", tinyproxy.url(None))];
        if let Some(f) = extra {
            vars.push(("EXTRA_CA_FILE", f.to_owned()));
        }
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let address = spawn_proxy(&upstream.url, &vars);
        let res = post(&address, CHAT_BODY).await;
        let body = assert_openai_error(res, 502, "upstream_tls_verification_failed").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("TLS verification")
        );
    }
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn a_no_proxy_match_goes_direct() {
    let upstream = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{}"))
        .expect(2)
        .mount(&upstream)
        .await;
    let tinyproxy = Tinyproxy::start(false).await;
    for no_proxy in ["127.0.0.1", "*"] {
        let address = spawn_proxy(
            &upstream.uri(),
            &[("PROXY_URL", &tinyproxy.url(None)), ("NO_PROXY", no_proxy)],
        );
        let res = client()
            .get(format!("{address}/v1/models"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    assert!(
        tinyproxy.connects().is_empty(),
        "{:?}",
        tinyproxy.connects()
    );
}
