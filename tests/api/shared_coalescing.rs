//! Cross-instance coalescing: a miss that another instance is already fetching waits for its
//! answer in Redis instead of calling the upstream too; bounded, and never worse than a
//! call of its own.

use std::time::Duration;

use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{CHAT_ANSWER, CHAT_BODY, eventually};
use crate::instances::{Backend, Instance, calls, upstream};
use crate::redis_relay::RedisRelay;

/// An upstream that answers `status` after `delay`, so that two requests overlap.
async fn slow_upstream(status: u16, delay: Duration) -> MockServer {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(status)
                .set_body_raw(CHAT_ANSWER, "application/json")
                .set_delay(delay),
        )
        .mount(&upstream)
        .await;
    upstream
}

async fn sibling_waits(instances: [&Instance; 2]) -> u64 {
    let mut waits = 0;
    for instance in instances {
        waits += instance.stats().await["redis"]["sibling_waits"]
            .as_u64()
            .unwrap();
    }
    waits
}

#[tokio::test]
async fn the_same_miss_on_two_instances_at_once_calls_the_upstream_once() {
    one_call_for_two(Backend::single().await).await;
}

#[tokio::test]
async fn with_a_cluster_the_same_miss_on_two_instances_at_once_calls_the_upstream_once() {
    one_call_for_two(Backend::cluster().await).await;
}

async fn one_call_for_two(redis: Backend) {
    let upstream = slow_upstream(200, Duration::from_millis(800)).await;
    let a = Instance::start(&upstream, &redis, &[]).await;
    let b = Instance::start(&upstream, &redis, &[]).await;
    let (from_a, from_b) = tokio::join!(a.post(CHAT_BODY), b.post(CHAT_BODY));
    assert_eq!((from_a.0, from_b.0), (200, 200));
    assert_eq!(
        (from_a.2.as_str(), from_b.2.as_str()),
        (CHAT_ANSWER, CHAT_ANSWER)
    );
    let mut caches = [from_a.1, from_b.1];
    caches.sort();
    assert_eq!(
        caches,
        ["HIT", "MISS"],
        "one fetched, the other waited for it"
    );
    assert_eq!(calls(&upstream).await, 1);
    assert_eq!(sibling_waits([&a, &b]).await, 1);
    // The waiter keeps the answer in its own L1 too.
    assert_eq!(a.post(CHAT_BODY).await.1, "HIT");
    assert_eq!(b.post(CHAT_BODY).await.1, "HIT");
    assert_eq!(calls(&upstream).await, 1);
}

#[tokio::test]
async fn a_sibling_whose_answer_cannot_be_stored_lets_the_waiter_call_the_upstream() {
    let redis = Backend::single().await;
    let upstream = slow_upstream(500, Duration::from_millis(500)).await;
    let a = Instance::start(&upstream, &redis, &[]).await;
    let b = Instance::start(&upstream, &redis, &[]).await;
    let (from_a, from_b) = tokio::join!(a.post(CHAT_BODY), b.post(CHAT_BODY));
    assert_eq!(
        (from_a.0, from_b.0),
        (500, 500),
        "passed through, never cached"
    );
    assert_eq!(calls(&upstream).await, 2);
    assert_eq!(sibling_waits([&a, &b]).await, 1);
}

#[tokio::test]
async fn a_waiter_gives_up_after_redis_coalesce_wait_and_streams_never_wait() {
    let redis = Backend::single().await;
    let upstream = slow_upstream(200, Duration::from_secs(2)).await;
    let short = [("REDIS_COALESCE_WAIT", "100ms")];
    let a = Instance::start(&upstream, &redis, &short).await;
    let b = Instance::start(&upstream, &redis, &short).await;
    let (from_a, from_b) = tokio::join!(a.post(CHAT_BODY), b.post(CHAT_BODY));
    assert_eq!((from_a.1.as_str(), from_b.1.as_str()), ("MISS", "MISS"));
    assert_eq!(
        calls(&upstream).await,
        2,
        "the waiter called the upstream itself"
    );
    assert_eq!(sibling_waits([&a, &b]).await, 1);

    let stream = r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#;
    let (from_a, from_b) = tokio::join!(a.post(stream), b.post(stream));
    assert_eq!((from_a.0, from_b.0), (200, 200));
    assert_eq!(calls(&upstream).await, 4);
    assert_eq!(sibling_waits([&a, &b]).await, 1, "no stream waited");
}

#[tokio::test]
async fn a_miss_that_takes_the_lock_just_after_a_sibling_stored_the_answer_uses_it() {
    let redis = Backend::single().await;
    let Backend::Single(server) = &redis else {
        unreachable!()
    };
    // Instance A's Redis calls go through a relay that holds its first lock claim back.
    let relay = RedisRelay::start(server.port, |command| {
        command[0] == "SET" && command.iter().any(|arg| arg == "NX")
    })
    .await;
    let upstream = upstream().await;
    let url = relay.url();
    // Held for as long as the test needs, not given up on.
    let a = Instance::start_with(&upstream, &[("REDIS_URL", &url), ("REDIS_TIMEOUT", "30s")]).await;
    let b = Instance::start(&upstream, &redis, &[]).await;

    // A misses in L1 and in Redis, and is about to claim the key's lock.
    let from_a = tokio::spawn(async move { a.post(CHAT_BODY).await });
    relay.holding().await;
    // Meanwhile B makes the call, stores the answer and releases the lock.
    assert_eq!(b.post(CHAT_BODY).await.1, "MISS");
    assert_eq!(calls(&upstream).await, 1);
    eventually(Duration::from_secs(10), "B's lock released", || async {
        redis.keys("*lock:*").is_empty().then_some(())
    })
    .await;
    // A gets the lock, which is free now, and finds B's answer.
    relay.release();
    let (status, cache, body) = from_a.await.unwrap();
    assert_eq!(
        (status, cache.as_str(), body.as_str()),
        (200, "HIT", CHAT_ANSWER)
    );
    assert_eq!(calls(&upstream).await, 1, "no second upstream call");
}
