//! Several instances sharing one Redis: the L2 cache, cross-instance clears, one rate limit,
//! and Redis failures that never make the proxy worse.

use std::time::Duration;

use crate::helpers::{CHAT_ANSWER, CHAT_BODY, eventually};
use crate::instances::{Backend, Instance, calls, upstream};

#[tokio::test]
async fn a_miss_on_one_instance_is_a_hit_on_another_and_a_clear_reaches_both() {
    share_and_clear(Backend::single().await).await;
}

#[tokio::test]
async fn with_a_cluster_a_miss_on_one_instance_is_a_hit_on_another_and_a_clear_reaches_both() {
    share_and_clear(Backend::cluster().await).await;
}

pub async fn share_and_clear(redis: Backend) {
    let upstream = upstream().await;
    let a = Instance::start(&upstream, &redis, &[]).await;
    let b = Instance::start(&upstream, &redis, &[]).await;

    let miss = a.post(CHAT_BODY).await;
    assert_eq!((miss.0, miss.1.as_str()), (200, "MISS"));
    let hit = b.post(CHAT_BODY).await;
    assert_eq!(
        (hit.0, hit.1.as_str()),
        (200, "HIT"),
        "B finds A's answer in Redis"
    );
    assert_eq!(hit.2, miss.2, "byte-identical");
    assert_eq!(calls(&upstream).await, 1);
    let stats = b.stats().await;
    assert_eq!(stats["redis"]["l2_hits"], 1, "{stats}");
    assert_eq!(stats["cache"]["item_count"], 1, "the L2 hit filled B's L1");
    // B now answers from its own memory.
    assert_eq!(b.post(CHAT_BODY).await.1, "HIT");
    assert_eq!(b.stats().await["redis"]["l2_hits"], 1);

    // More entries, so that on a Cluster they spread over its primaries.
    for n in 0..20 {
        assert_eq!(a.post(&format!(r#"{{"n":{n}}}"#)).await.1, "MISS");
    }
    assert_eq!(redis.entries("ocp:v1:").len(), 21);

    // A clear on A empties Redis and, through pub/sub, B's L1: the next request anywhere misses.
    let res = a
        .http
        .delete(format!("{}/cache", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["shared_cleared"], 21, "{body}");
    assert_eq!(redis.entries("ocp:v1:").len(), 0);
    eventually(Duration::from_secs(10), "B's L1 to be dropped", || async {
        (b.stats().await["cache"]["item_count"] == 0).then_some(())
    })
    .await;
    assert_eq!(b.post(CHAT_BODY).await.1, "MISS");
    assert_eq!(calls(&upstream).await, 22);
}

#[tokio::test]
async fn one_rate_limit_holds_across_instances() {
    one_rate_limit(Backend::single().await).await;
}

#[tokio::test]
async fn with_a_cluster_one_rate_limit_holds_across_instances() {
    one_rate_limit(Backend::cluster().await).await;
}

async fn one_rate_limit(redis: Backend) {
    let upstream = upstream().await;
    let shared = [("RATE_LIMIT", "5"), ("RATE_LIMIT_BACKEND", "redis")];
    let a = Instance::start(&upstream, &redis, &shared).await;
    let b = Instance::start(&upstream, &redis, &shared).await;
    let mut allowed = 0;
    let mut refused = 0;
    for i in 0..12 {
        let instance = if i % 2 == 0 { &a } else { &b };
        match instance.post(&format!(r#"{{"n":{i}}}"#)).await.0 {
            200 => allowed += 1,
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    // Each instance alone would let 5 through: together they let 5, not 10.
    assert_eq!((allowed, refused), (5, 7));
    let limited = a.stats().await["rate_limited_total"].as_u64().unwrap()
        + b.stats().await["rate_limited_total"].as_u64().unwrap();
    assert_eq!(limited, 7);
}

#[tokio::test]
async fn without_redis_both_instances_keep_answering_and_use_it_again_when_it_returns() {
    let mut redis = Backend::single().await;
    let upstream = upstream().await;
    let a = Instance::start(&upstream, &redis, &[]).await;
    let b = Instance::start(&upstream, &redis, &[]).await;
    assert_eq!(a.post(r#"{"n":1}"#).await.1, "MISS");

    let Backend::Single(server) = &mut redis else {
        unreachable!("a single server")
    };
    server.stop();
    // Hits from L1, misses from the upstream, never a 5xx.
    for _ in 0..3 {
        assert_eq!(
            a.post(r#"{"n":1}"#).await,
            (200, "HIT".into(), CHAT_ANSWER.into())
        );
    }
    for n in 2..6 {
        let (status, cache, body) = b.post(&format!(r#"{{"n":{n}}}"#)).await;
        assert_eq!(
            (status, cache.as_str(), body.as_str()),
            (200, "MISS", CHAT_ANSWER)
        );
    }
    a.until_redis("degraded").await;
    b.until_redis("degraded").await;
    assert!(b.stats().await["redis"]["errors"].as_u64().unwrap() >= 1);

    server.restart().await;
    // Without restarting the proxies: a new answer stored by A is found by B in Redis.
    eventually(
        Duration::from_secs(30),
        "the shared tier to be used again",
        || async {
            let n = rand_n();
            let stored = a.post(&format!(r#"{{"again":{n}}}"#)).await;
            assert_eq!(stored.0, 200);
            let (status, cache, _) = b.post(&format!(r#"{{"again":{n}}}"#)).await;
            assert_eq!(status, 200);
            (cache == "HIT").then_some(())
        },
    )
    .await;
}

/// A different body each attempt.
fn rand_n() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn a_corrupt_value_in_redis_is_a_miss_not_a_crash() {
    corrupt_values(Backend::single().await).await;
}

#[tokio::test]
async fn with_a_cluster_a_corrupt_value_in_redis_is_a_miss_not_a_crash() {
    corrupt_values(Backend::cluster().await).await;
}

async fn corrupt_values(redis: Backend) {
    let upstream = upstream().await;
    let a = Instance::start(&upstream, &redis, &[]).await;
    let b = Instance::start(&upstream, &redis, &[]).await;
    assert_eq!(a.post(CHAT_BODY).await.1, "MISS");

    let keys = redis.entries("ocp:v1:");
    assert_eq!(keys.len(), 1);
    let (server, key) = &keys[0];
    assert_eq!(key.len(), "ocp:v1:".len() + 64, "prefix + SHA-256 in hex");
    // The key's own server: on a Cluster, the primary that owns its slot.
    let mut conn = server.connection();
    let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
    assert!(
        ttl > 0 && ttl <= 300_000,
        "stored with the entry's TTL (PX): {ttl}"
    );
    for garbage in [&b"OCP1\x00\xc8truncated"[..], b"{\"not\":\"ours\"}"] {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(garbage)
            .query(&mut conn)
            .unwrap();
        let before = calls(&upstream).await;
        let (status, cache, body) = b.post(CHAT_BODY).await;
        assert_eq!(
            (status, cache.as_str(), body.as_str()),
            (200, "MISS", CHAT_ANSWER)
        );
        assert_eq!(calls(&upstream).await, before + 1);
        // B stored its own answer; clear its L1 for the next round.
        b.http
            .delete(format!("{}/cache", b.base))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(b.stats().await["redis"]["undecodable_values"], 2);
}

#[tokio::test]
async fn a_custom_key_prefix_names_every_key_and_keeps_two_caches_apart() {
    let redis = Backend::single().await;
    let upstream = upstream().await;
    let team_a = [
        ("CACHE_KEY_PREFIX", "team-a:"),
        ("RATE_LIMIT", "100"),
        ("RATE_LIMIT_BACKEND", "redis"),
    ];
    let a = Instance::start(&upstream, &redis, &team_a).await;
    let b = Instance::start(&upstream, &redis, &team_a).await;
    let other = Instance::start(&upstream, &redis, &[("CACHE_KEY_PREFIX", "team-b:")]).await;

    assert_eq!(a.post(CHAT_BODY).await.1, "MISS");
    // Besides these, only a coalescing lock being released: every key is under team-a:.
    let all: Vec<String> = redis.keys("*").into_iter().map(|(_, k)| k).collect();
    assert!(all.iter().all(|k| k.starts_with("team-a:")), "{all:?}");
    assert_eq!(redis.entries("team-a:").len(), 1, "{all:?}");
    let buckets: Vec<String> = redis
        .keys("team-a:rl:*")
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    assert_eq!(
        buckets,
        ["team-a:rl:127.0.0.1"],
        "the bucket, under the same prefix"
    );
    assert_eq!(b.post(CHAT_BODY).await.1, "HIT", "same prefix, same cache");
    assert_eq!(
        other.post(CHAT_BODY).await.1,
        "MISS",
        "another prefix, another cache"
    );
    assert_eq!(redis.entries("team-b:").len(), 1);

    // A clear under team-a: leaves team-b's entry in Redis and its instance's L1.
    assert_eq!(a.clear().await["shared_cleared"], 1);
    eventually(Duration::from_secs(10), "B's L1 to be dropped", || async {
        (b.stats().await["cache"]["item_count"] == 0).then_some(())
    })
    .await;
    assert_eq!(redis.entries("team-b:").len(), 1);
    assert_eq!(other.stats().await["cache"]["item_count"], 1);
    assert_eq!(other.post(CHAT_BODY).await.1, "HIT");
}
