//! Forwarding: URLs, headers and bodies reach the upstream as they should.

use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{CHAT_ANSWER, client, spawn_app, spawn_proxy, x_cache};

#[tokio::test]
async fn every_method_is_forwarded_with_path_and_query() {
    let app = spawn_app(&[]).await;
    Mock::given(path("/v1/files/file-1"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&app.upstream)
        .await;
    for m in ["GET", "POST", "DELETE", "PUT", "PATCH"] {
        let res = app
            .client
            .request(
                m.parse().unwrap(),
                app.url("/v1/files/file-1?limit=2&order=asc"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{m}");
    }
    let received = app.upstream.received_requests().await.unwrap();
    assert_eq!(received.len(), 5);
    for r in &received {
        assert_eq!(r.url.path(), "/v1/files/file-1");
        assert_eq!(r.url.query(), Some("limit=2&order=asc"));
    }
    let methods: Vec<String> = received.iter().map(|r| r.method.to_string()).collect();
    assert_eq!(methods, ["GET", "POST", "DELETE", "PUT", "PATCH"]);
}

#[tokio::test]
async fn a_path_prefix_in_the_upstream_url_is_joined_correctly() {
    let upstream = wiremock::MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/openai/v1/models"))
        .and(query_param("after", "x y"))
        .respond_with(ResponseTemplate::new(200).set_body_string("prefixed"))
        .expect(1)
        .mount(&upstream)
        .await;
    // A trailing slash on the configured URL must not produce a double slash.
    let address = spawn_proxy(&format!("{}/openai/", upstream.uri()), &[]);
    let res = client()
        .get(format!("{address}/v1/models?after=x%20y"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "prefixed");
}

#[tokio::test]
async fn client_headers_are_forwarded_minus_hop_by_hop_ones() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(CHAT_ANSWER, "application/json")
                .insert_header("x-upstream-only", "kept")
                .insert_header("keep-alive", "timeout=99")
                .insert_header("proxy-authenticate", "Basic"),
        )
        .mount(&app.upstream)
        .await;
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth("sk-a")
        .header("openai-organization", "org-1")
        .header("x-custom", "yes")
        .header("connection", "x-hop")
        .header("x-hop", "drop me")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("te", "trailers")
        .header("x-forwarded-for", "192.0.2.1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-upstream-only"], "kept");
    assert!(res.headers().get("proxy-authenticate").is_none());
    assert!(res.headers().get("keep-alive").is_none());

    let received = &app.upstream.received_requests().await.unwrap()[0];
    let h = &received.headers;
    assert_eq!(h["authorization"], "Bearer sk-a");
    assert_eq!(h["openai-organization"], "org-1");
    assert_eq!(h["x-custom"], "yes");
    for dropped in ["x-hop", "proxy-authorization", "te"] {
        assert!(h.get(dropped).is_none(), "{dropped} was forwarded");
    }
    let upstream_host = app.upstream.address().to_string();
    assert_eq!(
        h["host"],
        upstream_host.as_str(),
        "Host names the upstream, not the proxy"
    );
    assert_eq!(h["x-forwarded-for"], "192.0.2.1, 127.0.0.1");
    assert_eq!(received.body, b"{}");
}

#[tokio::test]
async fn each_request_of_a_keep_alive_connection_names_this_hop_in_x_forwarded_for() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(CHAT_ANSWER, "application/json"))
        .mount(&app.upstream)
        .await;
    // One client, so one connection: the hop's address is formatted when it opens.
    for (i, prior) in [None, Some("198.51.100.4"), None].into_iter().enumerate() {
        let mut req = app
            .client
            .post(app.url("/v1/embeddings"))
            .header("cache-control", "no-store")
            .body(format!("{{\"n\":{i}}}"));
        if let Some(prior) = prior {
            req = req.header("x-forwarded-for", prior);
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
    }
    let received = app.upstream.received_requests().await.unwrap();
    let xff: Vec<&str> = received
        .iter()
        .map(|r| r.headers["x-forwarded-for"].to_str().unwrap())
        .collect();
    assert_eq!(xff, ["127.0.0.1", "198.51.100.4, 127.0.0.1", "127.0.0.1"]);
}

#[tokio::test]
async fn a_large_non_cacheable_upload_is_streamed_to_the_upstream_intact() {
    // The buffering limit is tiny: the 50 MB upload only works if it is streamed.
    let app = spawn_app(&[("MAX_BODY_SIZE_BYTES", "1024")]).await;
    Mock::given(method("POST"))
        .and(path("/v1/files"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"id":"file-1"}"#))
        .expect(1)
        .mount(&app.upstream)
        .await;
    let upload: Vec<u8> = (0..50 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let res = app
        .client
        .post(app.url("/v1/files"))
        .header("content-type", "application/octet-stream")
        .body(upload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(x_cache(&res), "BYPASS");
    let received = &app.upstream.received_requests().await.unwrap()[0];
    assert_eq!(
        received.headers["content-length"],
        upload.len().to_string().as_str()
    );
    assert!(received.body == upload, "the upload arrived altered");
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app(&[]).await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&app.upstream)
        .await;
    let res = app
        .client
        .get(app.url("/v1/models"))
        .header("x-request-id", "req-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-abc.123");
    // Without one, each request gets a fresh random (v4) UUID.
    let mut generated = Vec::new();
    for _ in 0..2 {
        let res = app.client.get(app.url("/health")).send().await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        let uuid = uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(uuid.get_version_num(), 4, "{id}");
        assert_eq!(id, uuid.hyphenated().to_string(), "lower-case, hyphenated");
        generated.push(id);
    }
    assert_ne!(generated[0], generated[1]);
}
