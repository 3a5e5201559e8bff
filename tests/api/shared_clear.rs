//! `DELETE /cache` with a shared tier: it removes cache entries and nothing else, and every
//! instance drops its L1 even when Redis could not be cleared.

use crate::instances::{Backend, Instance, upstream};

#[tokio::test]
async fn a_clear_removes_cache_entries_but_not_rate_limit_buckets_or_other_keys() {
    clear_only_entries(Backend::single().await).await;
}

#[tokio::test]
async fn with_a_cluster_a_clear_removes_cache_entries_but_not_rate_limit_buckets_or_other_keys() {
    clear_only_entries(Backend::cluster().await).await;
}

async fn clear_only_entries(redis: Backend) {
    let upstream = upstream().await;
    let limited = [("RATE_LIMIT", "2"), ("RATE_LIMIT_BACKEND", "redis")];
    let a = Instance::start(&upstream, &redis, &limited).await;
    // Another application's key in the same database: a FLUSHDB would take it too.
    redis.plant("other-app:session", "keep me");
    assert_eq!(a.post(r#"{"n":1}"#).await.0, 200);
    assert_eq!(a.post(r#"{"n":2}"#).await.0, 200);
    assert_eq!(redis.keys("ocp:v1:rl:*").len(), 1, "one client's bucket");

    let body = a.clear().await;
    assert_eq!(
        body["shared_cleared"], 2,
        "the two entries, nothing else: {body}"
    );
    assert_eq!(redis.keys("ocp:v1:*").len(), 1, "only the bucket is left");
    assert_eq!(redis.keys("ocp:v1:rl:*").len(), 1, "the bucket survives");
    assert_eq!(
        redis.keys("other-app:*").len(),
        1,
        "a key outside the prefix survives"
    );
    // The client already used its 2 requests: a clear must not give it a fresh allowance.
    assert_eq!(a.post(r#"{"n":3}"#).await.0, 429);
}
