//! REDIS_TIMEOUT: a Redis that takes connections but never answers costs each request at most
//! that long, and the proxy answers as it would without Redis (L1, upstream, local limiter);
//! and a client that leaves while Redis keeps its request waiting takes nothing with it.

use crate::helpers::{CHAT_ANSWER, CHAT_BODY, eventually};
use crate::instances::{Instance, calls, upstream};
use crate::silent_redis::SilentRedis;
use std::time::Duration;
use wiremock::MockServer;

#[tokio::test]
async fn a_redis_that_accepts_connections_and_never_answers_leaves_the_proxy_answering() {
    silent_redis(false).await;
}

#[tokio::test]
async fn a_redis_that_stops_answering_once_connected_is_given_up_after_redis_timeout() {
    silent_redis(true).await;
}

async fn silent_redis(handshake: bool) {
    let redis = SilentRedis::start(handshake).await;
    let url = redis.url();
    let upstream = upstream().await;
    let proxy = Instance::spawn(
        &upstream,
        &[
            ("REDIS_URL", &url),
            ("REDIS_TIMEOUT", "50ms"),
            ("RATE_LIMIT", "2"),
            ("RATE_LIMIT_BACKEND", "redis"),
        ],
    );
    if handshake {
        // Connected and nothing failed yet: the next calls really go to the silent server.
        eventually(
            Duration::from_secs(10),
            "the connection to open",
            || async { (proxy.stats().await["redis"]["state"] == "ok").then_some(()) },
        )
        .await;
    }

    let miss = proxy.post(CHAT_BODY).await;
    assert_eq!(miss, (200, "MISS".into(), CHAT_ANSWER.into()));
    let hit = proxy.post(CHAT_BODY).await;
    assert_eq!(hit, (200, "HIT".into(), CHAT_ANSWER.into()));
    assert_eq!(calls(&upstream).await, 1);
    // RATE_LIMIT=2 with Redis unable to decide: this instance's own limiter refuses the third.
    assert_eq!(proxy.post(r#"{"n":3}"#).await.0, 429);
    assert_eq!(calls(&upstream).await, 1);

    let health: serde_json::Value = serde_json::from_str(&proxy.text("/health").await).unwrap();
    assert_eq!(health["redis"], "degraded", "{health}");
    let stats = proxy.stats().await;
    assert!(stats["redis"]["errors"].as_u64().unwrap() > 0, "{stats}");
    let metrics = proxy.text("/metrics").await;
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("proxy_redis_errors_total "))
        .expect("proxy_redis_errors_total is exported")
        .parse()
        .unwrap();
    assert!(errors > 0.0, "{metrics}");
    if handshake {
        // The rate limit, the L2 lookup and the store were each sent and given up on.
        let unanswered = redis.unanswered();
        for name in ["EVALSHA", "GET", "SET"] {
            assert!(
                unanswered.iter().any(|c| c == name),
                "{name}: {unanswered:?}"
            );
        }
    }
}

/// A client that resets its connection while its miss waits for Redis to grant the
/// cross-instance claim must not leave that miss's flight behind: the next identical request
/// would join it and wait for an answer nobody fetches.
#[tokio::test]
async fn a_client_that_leaves_while_its_miss_claims_the_key_leaves_no_flight_behind() {
    // Never answers the claim (`SET ... NX`).
    let redis = SilentRedis::answering(finds_nothing).await;
    let upstream = upstream().await;
    let proxy = behind(&redis, &upstream, "1s").await;

    let leaver = send_and_wait(&proxy, || redis.unanswered().iter().any(|c| c == "SET")).await;
    assert_eq!(proxy.stats().await["cache"]["in_flight"], 1);
    // Gone while the claim is pending; without the fix the next request follows its flight.
    let next = reset_and_repeat(&proxy, leaver).await;
    assert_eq!(next, (200, "MISS".into(), CHAT_ANSWER.into()));
    // The leaver's handler was cancelled before it went upstream: the one call is the next's.
    assert_eq!(calls(&upstream).await, 1);
    let stats = proxy.stats().await;
    assert_eq!(stats["cache"]["in_flight"], 0, "{stats}");
    assert_eq!(stats["cache"]["in_flight_clients"], 0, "{stats}");
}

/// An answer that came whole is this instance's before the shared tier is written: a client
/// that resets its connection while that write is pending does not take the answer with it,
/// and the next identical request is a HIT, not a second upstream call.
#[tokio::test]
async fn a_client_that_leaves_while_its_answer_is_written_to_redis_leaves_it_stored() {
    // Grants the claim (`SET ... NX`); never answers the store (a plain SET).
    let redis = SilentRedis::answering(|command| {
        let claim = command[0] == "SET" && command.iter().any(|a| a.eq_ignore_ascii_case("NX"));
        if claim {
            Some(b"+OK\r\n")
        } else {
            finds_nothing(command)
        }
    })
    .await;
    let upstream = upstream().await;
    let proxy = behind(&redis, &upstream, "2s").await;

    let leaver = send_and_wait(&proxy, || redis.unanswered().iter().any(|c| c == "SET")).await;
    assert_eq!(calls(&upstream).await, 1);
    let next = reset_and_repeat(&proxy, leaver).await;
    assert_eq!(next, (200, "HIT".into(), CHAT_ANSWER.into()));
    assert_eq!(calls(&upstream).await, 1);
}

/// A Redis reply that lets the proxy connect (CLIENT, PING) and finds no entry (GET), and
/// answers nothing else.
fn finds_nothing(command: &[String]) -> Option<&'static [u8]> {
    match command[0].as_str() {
        "CLIENT" => Some(b"+OK\r\n"),
        "PING" => Some(b"+PONG\r\n"),
        "GET" => Some(b"$-1\r\n"),
        _ => None,
    }
}

/// A proxy in front of `upstream` using `redis` with this REDIS_TIMEOUT, once Redis is ok.
async fn behind(redis: &SilentRedis, upstream: &MockServer, timeout: &str) -> Instance {
    let url = redis.url();
    Instance::start_with(upstream, &[("REDIS_URL", &url), ("REDIS_TIMEOUT", timeout)]).await
}

/// Sends `CHAT_BODY` as `Instance::post` would (the same headers of the key, so the same
/// key) on a connection of its own, and returns that connection, unread, once `until` holds.
async fn send_and_wait(proxy: &Instance, until: impl Fn() -> bool) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let host = proxy.base.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&host).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer sk-shared\r\nAccept: */*\r\nContent-Length: {}\r\n\r\n{CHAT_BODY}",
        CHAT_BODY.len()
    );
    sock.write_all(request.as_bytes()).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the awaited Redis command",
        || async { until().then_some(()) },
    )
    .await;
    sock
}

/// Ends `leaver`'s connection with a TCP reset (SO_LINGER 0), then sends the same request
/// again: its answer, which must come within 20 s.
async fn reset_and_repeat(
    proxy: &Instance,
    leaver: tokio::net::TcpStream,
) -> (u16, String, String) {
    leaver.set_zero_linger().unwrap();
    drop(leaver);
    tokio::time::timeout(Duration::from_secs(20), proxy.post(CHAT_BODY))
        .await
        .expect("the next identical request is answered, not left waiting")
}
