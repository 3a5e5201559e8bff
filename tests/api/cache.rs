//! Cache behaviour: what is stored, how it is keyed, how it ends.

use std::time::Duration;

use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{CHAT_ANSWER, CHAT_BODY, eventually, spawn_app, x_cache};

fn chat_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(CHAT_ANSWER, "application/json")
}

#[tokio::test]
async fn identical_requests_are_served_from_cache() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(chat_ok().insert_header("openai-processing-ms", "42"))
        .expect(1)
        .mount(&app.upstream)
        .await;

    let first = app
        .post_json("/v1/chat/completions", "sk-a", CHAT_BODY)
        .await;
    assert_eq!(first.status(), 200);
    assert_eq!(x_cache(&first), "MISS");
    assert!(first.headers().get("x-cache-timestamp").is_none());
    let first_type = first.headers()["content-type"].clone();
    let first_body = first.bytes().await.unwrap();

    let second = app
        .post_json("/v1/chat/completions", "sk-a", CHAT_BODY)
        .await;
    assert_eq!(second.status(), 200);
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(second.headers()["content-type"], first_type);
    assert_eq!(second.headers()["openai-processing-ms"], "42");
    assert_eq!(second.headers()["age"], "0");
    let stamp = second.headers()["x-cache-timestamp"]
        .to_str()
        .unwrap()
        .to_owned();
    humantime::parse_rfc3339(&stamp).expect("X-Cache-Timestamp is RFC 3339");
    assert!(
        second.headers()["x-proxy"]
            .to_str()
            .unwrap()
            .starts_with("openai-cache-proxy/")
    );
    assert_eq!(second.bytes().await.unwrap(), first_body);
    assert_eq!(app.upstream_calls().await, 1);
}

/// An upstream (or a cache in front of it) may send headers the proxy sets on a hit itself:
/// the hit carries one of each, the proxy's, and the upstream's other headers as they came.
#[tokio::test]
async fn a_hit_carries_its_own_cache_headers_once_whatever_the_upstream_sent() {
    let app = spawn_app(&[]).await;
    let theirs = [
        ("age", "77"),
        ("x-cache", "HIT from cdn"),
        ("x-cache-timestamp", "1999-01-01T00:00:00Z"),
        ("cache-status", "cdn; hit"),
        ("x-cache-key", "feedfacefeedface"),
        ("x-proxy", "someone-else/1.0"),
        ("x-request-id", "req_from_upstream"),
    ];
    let mut answer = chat_ok().insert_header("openai-processing-ms", "42");
    for (name, value) in theirs {
        answer = answer.insert_header(name, value);
    }
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(answer)
        .expect(1)
        .mount(&app.upstream)
        .await;

    let miss = app
        .post_json("/v1/chat/completions", "sk-a", CHAT_BODY)
        .await;
    assert_eq!(x_cache(&miss), "MISS");
    let hit = app
        .post_json("/v1/chat/completions", "sk-a", CHAT_BODY)
        .await;
    assert_eq!(x_cache(&hit), "HIT");

    for (name, value) in theirs {
        let all: Vec<_> = hit.headers().get_all(name).iter().collect();
        assert_eq!(all.len(), 1, "{name}: {all:?}");
        assert_ne!(all[0], value, "{name} is the proxy's");
    }
    assert_eq!(hit.headers()["age"], "0");
    assert!(
        hit.headers()["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("openai-cache-proxy; hit; ttl=")
    );
    assert_eq!(
        hit.headers()["x-cache-key"],
        miss.headers()["x-cache-key"].to_str().unwrap()
    );
    assert_eq!(
        hit.headers()["x-proxy"],
        miss.headers()["x-proxy"].to_str().unwrap()
    );
    assert_ne!(
        hit.headers()["x-request-id"],
        miss.headers()["x-request-id"]
    );
    assert_eq!(hit.headers()["openai-processing-ms"], "42");
}

#[tokio::test]
async fn different_api_keys_never_share_an_entry() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer sk-a"))
        .respond_with(chat_ok().set_body_raw(r#"{"for":"a"}"#, "application/json"))
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer sk-b"))
        .respond_with(chat_ok().set_body_raw(r#"{"for":"b"}"#, "application/json"))
        .mount(&app.upstream)
        .await;

    let a = app
        .post_json("/v1/chat/completions", "sk-a", CHAT_BODY)
        .await;
    assert_eq!(x_cache(&a), "MISS");
    let b = app
        .post_json("/v1/chat/completions", "sk-b", CHAT_BODY)
        .await;
    assert_eq!(x_cache(&b), "MISS");
    assert_eq!(b.text().await.unwrap(), r#"{"for":"b"}"#);
    let a2 = app
        .post_json("/v1/chat/completions", "sk-a", CHAT_BODY)
        .await;
    assert_eq!(x_cache(&a2), "HIT");
    assert_eq!(a2.text().await.unwrap(), r#"{"for":"a"}"#);
    assert_eq!(app.upstream_calls().await, 2);
}

#[tokio::test]
async fn different_accept_encodings_get_separate_entries_and_bytes_pass_verbatim() {
    let app = spawn_app(&[]).await;
    // Not real gzip: the proxy must neither decode nor re-encode what the upstream sends.
    let opaque = vec![0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad, 0xbe, 0xef];
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(header("accept-encoding", "gzip"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(opaque.clone(), "application/json")
                .insert_header("content-encoding", "gzip"),
        )
        .mount(&app.upstream)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(header("accept-encoding", "identity"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(r#"{"data":[]}"#, "application/json"))
        .mount(&app.upstream)
        .await;

    let get = |enc: &'static str| {
        app.client
            .get(app.url("/v1/models"))
            .header("accept-encoding", enc)
            .send()
    };
    let gz = get("gzip").await.unwrap();
    assert_eq!(x_cache(&gz), "MISS");
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    assert_eq!(gz.bytes().await.unwrap().as_ref(), opaque.as_slice());

    let plain = get("identity").await.unwrap();
    assert_eq!(
        x_cache(&plain),
        "MISS",
        "a gzip entry must not serve an identity client"
    );
    assert!(plain.headers().get("content-encoding").is_none());
    assert_eq!(plain.text().await.unwrap(), r#"{"data":[]}"#);

    let gz2 = get("gzip").await.unwrap();
    assert_eq!(x_cache(&gz2), "HIT");
    assert_eq!(gz2.headers()["content-encoding"], "gzip");
    assert_eq!(gz2.bytes().await.unwrap().as_ref(), opaque.as_slice());
    assert_eq!(app.upstream_calls().await, 2);
}

#[tokio::test]
async fn non_cacheable_requests_bypass_the_cache() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(chat_ok())
        .expect(4)
        .mount(&app.upstream)
        .await;

    for _ in 0..2 {
        let res = app.post_json("/v1/files", "sk-a", "{}").await;
        assert_eq!(res.status(), 200);
        assert_eq!(x_cache(&res), "BYPASS");
        assert_eq!(
            res.headers()["cache-status"],
            "openai-cache-proxy; fwd=bypass; detail=not_cacheable_endpoint"
        );
        assert!(res.headers().get("x-cache-key").is_none());
    }
    // A cacheable endpoint, but the client forbids storing.
    for _ in 0..2 {
        let res = app
            .client
            .post(app.url("/v1/embeddings"))
            .header("cache-control", "no-store")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(x_cache(&res), "BYPASS");
        assert_eq!(
            res.headers()["cache-status"],
            "openai-cache-proxy; fwd=request; detail=no-store"
        );
    }
    let stats = app.stats(None).await;
    assert_eq!(stats["cache"]["bypasses"], 4);
    assert_eq!(stats["cache"]["stores"], 0);
}

#[tokio::test]
async fn upstream_errors_pass_through_untouched_and_are_never_cached() {
    for status in [400u16, 401, 429, 500, 503] {
        let app = spawn_app(&[]).await;
        let body = format!(
            r#"{{"error":{{"message":"upstream says {status}","type":"x","param":null,"code":null}}}}"#
        );
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(status)
                    .set_body_raw(body.clone(), "application/json")
                    .insert_header("retry-after", "7"),
            )
            .expect(2)
            .mount(&app.upstream)
            .await;
        for _ in 0..2 {
            let res = app
                .post_json("/v1/chat/completions", "sk-a", CHAT_BODY)
                .await;
            assert_eq!(res.status(), status);
            assert_eq!(x_cache(&res), "MISS");
            assert_eq!(res.headers()["retry-after"], "7");
            assert_eq!(res.text().await.unwrap(), body);
        }
        assert_eq!(app.stats(None).await["cache"]["stores"], 0);
    }
}

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    let app = spawn_app(&[("CACHE_TTL", "300ms")]).await;
    Mock::given(method("POST"))
        .respond_with(chat_ok())
        .mount(&app.upstream)
        .await;
    let first = app.post_json("/v1/embeddings", "sk-a", "{}").await;
    assert_eq!(x_cache(&first), "MISS");
    // Within the TTL it hits at least once; after it, it misses again.
    eventually(Duration::from_secs(10), "the entry to expire", || async {
        let res = app.post_json("/v1/embeddings", "sk-a", "{}").await;
        let miss = x_cache(&res) == "MISS";
        // Read the whole answer: a MISS is stored before its last byte reaches the client.
        res.bytes().await.unwrap();
        miss.then_some(())
    })
    .await;
    let stats = app.stats(None).await;
    assert!(stats["cache"]["stores"].as_u64().unwrap() >= 2, "{stats}");
}

#[tokio::test]
async fn the_cache_stays_within_its_byte_bound() {
    let app = spawn_app(&[("MAX_CACHE_SIZE", "1")]).await;
    let big = "x".repeat(100 * 1024);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(big.clone(), "application/json"))
        .mount(&app.upstream)
        .await;
    // 40 distinct 100 KiB answers: four times the 1 MiB capacity.
    for i in 0..40 {
        let res = app
            .post_json("/v1/embeddings", "sk-a", &format!(r#"{{"i":{i}}}"#))
            .await;
        assert_eq!(x_cache(&res), "MISS");
        assert_eq!(res.bytes().await.unwrap().len(), big.len());
    }
    let stats = app.stats(None).await;
    let cache = &stats["cache"];
    let size = cache["size_bytes"].as_u64().unwrap();
    let max = cache["max_size_bytes"].as_u64().unwrap();
    assert_eq!(max, 1024 * 1024);
    assert!(size <= max, "size {size} > max {max}");
    assert!(size > max / 2, "the cache is used, not emptied: {stats}");
    assert_eq!(cache["stores"], 40);
    assert!(cache["evictions"].as_u64().unwrap() >= 30, "{stats}");
    assert!(cache["item_count"].as_u64().unwrap() <= 10, "{stats}");
    // The newest entry was admitted (LRU), so repeating it is a hit.
    let again = app.post_json("/v1/embeddings", "sk-a", r#"{"i":39}"#).await;
    assert_eq!(x_cache(&again), "HIT");
}

#[tokio::test]
async fn responses_over_the_entry_limit_are_served_but_not_stored() {
    let app = spawn_app(&[("MAX_ENTRY_SIZE_BYTES", "1000")]).await;
    let big = "y".repeat(5000);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(big.clone(), "application/json"))
        .expect(2)
        .mount(&app.upstream)
        .await;
    for _ in 0..2 {
        let res = app.post_json("/v1/embeddings", "sk-a", "{}").await;
        assert_eq!(x_cache(&res), "MISS");
        assert_eq!(res.text().await.unwrap(), big);
    }
}

#[tokio::test]
async fn set_cookie_is_not_replayed_from_the_cache() {
    let app = spawn_app(&[]).await;
    Mock::given(method("GET"))
        .respond_with(chat_ok().insert_header("set-cookie", "session=abc"))
        .mount(&app.upstream)
        .await;
    let first = app.client.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(first.headers()["set-cookie"], "session=abc");
    let hit = app.client.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(x_cache(&hit), "HIT");
    assert!(hit.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn reordered_json_hits_the_same_entry_and_is_forwarded_verbatim() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(chat_ok())
        .expect(1)
        .mount(&app.upstream)
        .await;
    let first_body =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"temperature":0}"#;
    let reordered = "{ \"temperature\": 0,\n  \"messages\": [ {\"content\": \"hi\", \"role\": \"user\"} ],\n  \"model\": \"gpt-4o-mini\" }";
    let miss = app
        .post_json("/v1/chat/completions", "sk-a", first_body)
        .await;
    assert_eq!(x_cache(&miss), "MISS");
    let hit = app
        .post_json("/v1/chat/completions", "sk-a", reordered)
        .await;
    assert_eq!(x_cache(&hit), "HIT");
    assert_eq!(miss.headers()["x-cache-key"], hit.headers()["x-cache-key"]);
    assert_eq!(hit.headers()["x-cache-key"].len(), 16);
    // The proxy never rewrites what it sends: the upstream got the client's exact bytes.
    let received = app.upstream.received_requests().await.unwrap();
    assert_eq!(received[0].body, first_body.as_bytes());
}

#[tokio::test]
async fn invalid_json_is_keyed_and_forwarded_as_raw_bytes() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(chat_ok())
        .expect(2)
        .mount(&app.upstream)
        .await;
    for body in ["{not json", "{not  json"] {
        let res = app.post_json("/v1/embeddings", "sk-a", body).await;
        assert_eq!(
            x_cache(&res),
            "MISS",
            "spacing matters when the body is not JSON"
        );
    }
    let received = app.upstream.received_requests().await.unwrap();
    assert_eq!(received[1].body, b"{not  json");
}

#[tokio::test]
async fn no_cache_skips_the_lookup_and_refreshes_the_entry() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(chat_ok().set_body_raw(r#"{"v":1}"#, "application/json"))
        .up_to_n_times(1)
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .respond_with(chat_ok().set_body_raw(r#"{"v":2}"#, "application/json"))
        .mount(&app.upstream)
        .await;
    let first = app.post_json("/v1/embeddings", "sk-a", "{}").await;
    assert_eq!(
        first.headers()["cache-status"],
        "openai-cache-proxy; fwd=miss; stored"
    );
    let fresh = app
        .client
        .post(app.url("/v1/embeddings"))
        .bearer_auth("sk-a")
        .header("content-type", "application/json")
        .header("cache-control", "no-cache")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(x_cache(&fresh), "MISS");
    assert_eq!(
        fresh.headers()["cache-status"],
        "openai-cache-proxy; fwd=request; stored"
    );
    assert_eq!(fresh.text().await.unwrap(), r#"{"v":2}"#);
    // The refreshed answer replaced the stored one.
    let hit = app.post_json("/v1/embeddings", "sk-a", "{}").await;
    assert_eq!(x_cache(&hit), "HIT");
    let status = hit.headers()["cache-status"].to_str().unwrap().to_owned();
    assert!(
        status.starts_with("openai-cache-proxy; hit; ttl="),
        "{status}"
    );
    let ttl: u64 = status.rsplit('=').next().unwrap().parse().unwrap();
    assert!((299..=300).contains(&ttl), "{status}");
    assert_eq!(hit.text().await.unwrap(), r#"{"v":2}"#);
    assert_eq!(app.upstream_calls().await, 2);
}

#[tokio::test]
async fn max_age_serves_only_young_enough_entries() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .respond_with(chat_ok())
        .mount(&app.upstream)
        .await;
    let with_max_age = |secs: &'static str| {
        app.client
            .post(app.url("/v1/embeddings"))
            .bearer_auth("sk-a")
            .header("content-type", "application/json")
            .header("cache-control", format!("max-age={secs}"))
            .body("{}")
            .send()
    };
    assert_eq!(x_cache(&with_max_age("60").await.unwrap()), "MISS");
    assert_eq!(x_cache(&with_max_age("60").await.unwrap()), "HIT");
    // Once the entry is a second old, max-age=0 refuses it and refreshes it.
    let stale = eventually(Duration::from_secs(5), "the entry to age", || async {
        let res = with_max_age("0").await.unwrap();
        (x_cache(&res) == "MISS").then_some(res)
    })
    .await;
    assert_eq!(
        stale.headers()["cache-status"],
        "openai-cache-proxy; fwd=stale; stored"
    );
    assert_eq!(app.upstream_calls().await, 2);
}

#[tokio::test]
async fn repeated_bytes_hit_through_the_alias_index_without_crossing_callers() {
    let app = spawn_app(&[]).await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer sk-a"))
        .respond_with(chat_ok().set_body_raw(r#"{"for":"a"}"#, "application/json"))
        .mount(&app.upstream)
        .await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer sk-b"))
        .respond_with(chat_ok().set_body_raw(r#"{"for":"b"}"#, "application/json"))
        .mount(&app.upstream)
        .await;
    let spaced = "{ \"temperature\": 0, \"model\": \"gpt-4o-mini\" }";
    let compact = r#"{"model":"gpt-4o-mini","temperature":0}"#;
    let send = |key: &'static str, body: &'static str| {
        let app = &app;
        async move {
            let res = app.post_json("/v1/chat/completions", key, body).await;
            let status = x_cache(&res).to_owned();
            (status, res.text().await.unwrap())
        }
    };
    let a = || (String::from("HIT"), String::from(r#"{"for":"a"}"#));

    assert_eq!(send("sk-a", spaced).await.0, "MISS");
    assert_eq!(app.stats(None).await["cache"]["alias_count"], 0);
    // The first hit parses the body and remembers its key; later ones find it by its bytes.
    assert_eq!(send("sk-a", spaced).await, a());
    assert_eq!(app.stats(None).await["cache"]["alias_count"], 1);
    assert_eq!(send("sk-a", spaced).await, a());
    assert_eq!(send("sk-a", compact).await, a());
    assert_eq!(send("sk-a", compact).await, a());
    assert_eq!(app.stats(None).await["cache"]["alias_count"], 2);
    // The same bytes from another caller are another request: a miss, with its own answer.
    let b = send("sk-b", spaced).await;
    assert_eq!(b, (String::from("MISS"), String::from(r#"{"for":"b"}"#)));
    assert_eq!(app.upstream_calls().await, 2);

    let stats = app.stats(None).await;
    let size = stats["cache"]["size_bytes"].as_u64().unwrap();
    assert!(size <= stats["cache"]["max_size_bytes"].as_u64().unwrap());
    let res = app.client.delete(app.url("/cache")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.stats(None).await["cache"]["alias_count"], 0);
    assert_eq!(send("sk-a", spaced).await.0, "MISS");
}

/// A `no-cache` request never hits, so its bytes are remembered when it is forwarded: a repeat
/// skips the JSON parse, and a plain request with the same bytes hits through the alias.
#[tokio::test]
async fn a_no_cache_request_remembers_its_bytes() {
    let app = spawn_app(&[]).await;
    app.answer_posts().await;
    let body = r#"{ "temperature": 0, "model": "gpt-4o-mini" }"#;
    let refresh = || {
        app.client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth("sk-a")
            .header("content-type", "application/json")
            .header("cache-control", "no-cache")
            .body(body)
            .send()
    };

    assert_eq!(x_cache(&refresh().await.unwrap()), "MISS");
    assert_eq!(app.stats(None).await["cache"]["alias_count"], 1);
    assert_eq!(x_cache(&refresh().await.unwrap()), "MISS");
    assert_eq!(app.stats(None).await["cache"]["alias_count"], 1);
    assert_eq!(app.upstream_calls().await, 2);
    let plain = app.post_json("/v1/chat/completions", "sk-a", body).await;
    assert_eq!(x_cache(&plain), "HIT");
    // Its key is the canonical form's: the compact body is the same request.
    let compact = r#"{"model":"gpt-4o-mini","temperature":0}"#;
    let compact = app.post_json("/v1/chat/completions", "sk-a", compact).await;
    assert_eq!(x_cache(&compact), "HIT");
    assert_eq!(app.upstream_calls().await, 2);
}

/// The alias index is bounded by its share of MAX_CACHE_SIZE (1/32, at 256 bytes an alias:
/// 128 for 1 MiB), however many distinct requests hit, and what it holds still answers.
#[tokio::test]
async fn the_alias_index_stays_within_its_share_of_the_cache() {
    let app = spawn_app(&[("MAX_CACHE_SIZE", "1")]).await;
    app.answer_posts().await;
    for i in 0..400 {
        let body = format!(r#"{{"model":"gpt-4o-mini","n":{i}}}"#);
        assert_eq!(
            x_cache(&app.post_json("/v1/embeddings", "sk-a", &body).await),
            "MISS"
        );
        assert_eq!(
            x_cache(&app.post_json("/v1/embeddings", "sk-a", &body).await),
            "HIT"
        );
    }
    let stats = app.stats(None).await;
    let aliases = stats["cache"]["alias_count"].as_u64().unwrap();
    assert!((1..=128).contains(&aliases), "{stats}");
    let size = stats["cache"]["size_bytes"].as_u64().unwrap();
    assert!(
        size <= stats["cache"]["max_size_bytes"].as_u64().unwrap(),
        "{stats}"
    );
    // The last request to hit is a hit again.
    let last = r#"{"model":"gpt-4o-mini","n":399}"#;
    assert_eq!(
        x_cache(&app.post_json("/v1/embeddings", "sk-a", last).await),
        "HIT"
    );
    assert_eq!(app.upstream_calls().await, 400);
}
