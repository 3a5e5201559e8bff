//! `DELETE /cache` with a shared tier: it removes cache entries and nothing else, and every
//! instance drops its L1 even when Redis could not be cleared.

use std::time::Duration;

use crate::helpers::{CHAT_BODY, eventually};
use crate::instances::{Backend, Instance, upstream};
use crate::redis_server::RedisServer;

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
    assert!(redis.entries("ocp:v1:").is_empty(), "no entry is left");
    assert_eq!(redis.keys("ocp:v1:rl:*").len(), 1, "the bucket survives");
    assert_eq!(
        redis.keys("other-app:*").len(),
        1,
        "a key outside the prefix survives"
    );
    // The client already used its 2 requests: a clear must not give it a fresh allowance.
    assert_eq!(a.post(r#"{"n":3}"#).await.0, 429);
}

#[tokio::test]
async fn a_clear_that_redis_refuses_still_tells_every_instance_to_drop_its_l1() {
    let server = RedisServer::start().await;
    // A user that may do everything but SCAN: every clear step fails, PUBLISH works.
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "proxy",
                "on",
                ">hunter2-acl",
                "~*",
                "&*",
                "+@all",
                "-scan",
            ][..],
        )
        .query(&mut server.connection())
        .unwrap();
    let url = format!("redis://proxy:hunter2-acl@127.0.0.1:{}/0", server.port);
    let upstream = upstream().await;
    let a = Instance::start_with(&upstream, &[("REDIS_URL", &url)]).await;
    let b = Instance::start_with(&upstream, &[("REDIS_URL", &url)]).await;
    assert_eq!(a.post(CHAT_BODY).await.1, "MISS");
    assert_eq!(b.post(CHAT_BODY).await.1, "HIT");
    assert_eq!(b.stats().await["cache"]["item_count"], 1, "B's L1 holds it");

    let body = a.clear().await;
    assert_eq!(body["shared_complete"], false, "{body}");
    assert_eq!(body["shared_notified"], true, "{body}");
    assert!(!body.to_string().contains("hunter2"), "{body}");
    eventually(Duration::from_secs(10), "B's L1 to be dropped", || async {
        (b.stats().await["cache"]["item_count"] == 0).then_some(())
    })
    .await;
    let stats = a.stats().await;
    assert!(stats["redis"]["errors"].as_u64().unwrap() >= 1, "{stats}");
    assert!(!stats.to_string().contains("hunter2"), "{stats}");
}

#[tokio::test]
async fn a_clear_outlasts_a_redis_slower_than_redis_timeout() {
    let server = RedisServer::start().await;
    let upstream = upstream().await;
    let a = Instance::start_with(
        &upstream,
        &[("REDIS_URL", &server.url()), ("REDIS_TIMEOUT", "50ms")],
    )
    .await;
    // Entry-shaped keys for several SCAN batches.
    let mut conn = server.connection();
    let mut plant = redis::pipe();
    for n in 0..2500u32 {
        plant
            .cmd("SET")
            .arg(format!("ocp:v1:{n:064x}"))
            .arg("x")
            .ignore();
    }
    let _: () = plant.query(&mut conn).unwrap();
    // Redis holds every command for 300 ms, six times REDIS_TIMEOUT: a clear bounded by
    // REDIS_TIMEOUT per step would give up.
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "300", "ALL"][..])
        .query(&mut conn)
        .unwrap();
    let body = a.clear().await;
    assert_eq!(body["shared_complete"], true, "{body}");
    assert_eq!(body["shared_cleared"], 2500, "{body}");
    let left: Vec<String> = redis::cmd("KEYS").arg("ocp:v1:*").query(&mut conn).unwrap();
    assert!(left.is_empty(), "{} left", left.len());
}
