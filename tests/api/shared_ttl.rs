//! An entry's lifetime across instances: it lives CACHE_TTL from when it was first stored,
//! wherever it is read, and its age says so.

use std::time::Duration;

use crate::helpers::{CHAT_BODY, eventually};
use crate::instances::{Backend, Instance, calls, upstream};

#[tokio::test]
async fn an_l2_hit_keeps_the_original_store_time_and_expires_with_the_original() {
    let redis = Backend::single().await;
    let upstream = upstream().await;
    let ttl = [("CACHE_TTL", "4s")];
    let a = Instance::start(&upstream, &redis, &ttl).await;
    let b = Instance::start(&upstream, &redis, &ttl).await;
    assert_eq!(a.post(CHAT_BODY).await.1, "MISS");
    let (_, a_hit, _) = a.post_with_headers(CHAT_BODY).await;
    assert_eq!(a_hit["x-cache"], "HIT");

    let keys = redis.entries("ocp:v1:");
    let (server, key) = &keys[0];
    let pttl = || -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query(&mut server.connection())
            .unwrap()
    };
    // Half the TTL gone, by Redis's own clock of the original's expiry.
    eventually(Duration::from_secs(10), "half the TTL to pass", || async {
        (pttl() <= 2000).then_some(())
    })
    .await;

    let (status, b_hit, _) = b.post_with_headers(CHAT_BODY).await;
    assert_eq!((status, &b_hit["x-cache"]), (200, &"HIT".parse().unwrap()));
    assert_eq!(b.stats().await["redis"]["l2_hits"], 1);
    assert_eq!(
        b_hit["x-cache-timestamp"], a_hit["x-cache-timestamp"],
        "stored once, at A"
    );
    let age: u64 = b_hit["age"].to_str().unwrap().parse().unwrap();
    assert!(
        age >= 2,
        "the age counts from A's store, not B's copy: {age}"
    );
    // B's copy now answers from its own L1.
    assert_eq!(b.post(CHAT_BODY).await.1, "HIT");
    assert_eq!(b.stats().await["redis"]["l2_hits"], 1);

    // Gone from Redis means gone from B too: the copy had what was left of the TTL, not a
    // fresh one (which would keep it two seconds more).
    eventually(
        Duration::from_secs(10),
        "the original to expire",
        || async { (pttl() == -2).then_some(()) },
    )
    .await;
    assert_eq!(b.post(CHAT_BODY).await.1, "MISS");
    assert_eq!(calls(&upstream).await, 2);
}
