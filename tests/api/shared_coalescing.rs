//! Cross-instance coalescing: a miss that another instance is already fetching waits for its
//! answer in Redis instead of calling the upstream too; bounded, and never worse than a
//! call of its own.

use std::time::Duration;

use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{CHAT_ANSWER, CHAT_BODY};
use crate::instances::{Backend, Instance, calls};

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
