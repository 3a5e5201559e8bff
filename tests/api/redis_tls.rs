//! `rediss://`: the shared tier over TLS to a real redis-server (TLS only, password required)
//! whose certificate comes from a CA made at test time, standalone and as a Cluster.

use crate::helpers::CHAT_BODY;
use crate::instances::{Backend, Instance, calls, upstream};
use crate::shared::share_and_clear;
use crate::tls_upstream::TestCa;

/// In the secret scan's list (`.ci/secret-scan`): found in any log, it fails `make test`.
const PASSWORD: &str = "hunter2-over-tls";

#[tokio::test]
async fn over_tls_a_miss_on_one_instance_is_a_hit_on_another_and_a_clear_reaches_both() {
    let ca = TestCa::new();
    share_and_clear(Backend::single_tls(&ca, PASSWORD).await).await;
}

#[tokio::test]
async fn with_a_cluster_over_tls_a_miss_on_one_instance_is_a_hit_on_another_and_a_clear_reaches_both()
 {
    let ca = TestCa::new();
    share_and_clear(Backend::cluster_tls(&ca, PASSWORD).await).await;
}

#[tokio::test]
async fn an_untrusted_redis_certificate_is_refused_and_the_proxy_answers_without_it() {
    let ca = TestCa::new();
    let redis = Backend::single_tls(&ca, PASSWORD).await;
    let url = redis.vars()[0].1.clone();
    let other_ca = TestCa::new();
    let other = other_ca.pem_path().display().to_string();
    let upstream = upstream().await;
    // Trusting only the built-in roots, and trusting only another CA.
    for trust in [vec![], vec![("REDIS_CA_FILE", other.as_str())]] {
        let mut vars = vec![("REDIS_URL", url.as_str())];
        vars.extend(trust);
        let proxy = Instance::spawn(&upstream, &vars);
        proxy.until_redis("degraded").await;
        let before = calls(&upstream).await;
        assert_eq!(proxy.post(CHAT_BODY).await.1, "MISS");
        let (status, cache, _) = proxy.post(CHAT_BODY).await;
        assert_eq!((status, cache.as_str()), (200, "HIT"), "from L1");
        assert_eq!(calls(&upstream).await, before + 1);

        let stats = proxy.stats().await;
        assert!(stats["redis"]["errors"].as_u64().unwrap() > 0, "{stats}");
        assert_eq!(stats["redis"]["l2_hits"], 0, "{stats}");
        assert_eq!(stats["redis"]["state"], "degraded", "{stats}");
        assert!(
            stats["redis"]["url"]
                .as_str()
                .unwrap()
                .starts_with("rediss://***@127.0.0.1:"),
            "{stats}"
        );
        let metrics = proxy.text("/metrics").await;
        let health = proxy.text("/health").await;
        for shown in [stats.to_string(), metrics, health] {
            assert!(!shown.contains(PASSWORD), "password shown: {shown}");
        }
    }
    assert!(
        redis.keys("ocp:v1:*").is_empty(),
        "nothing reached the untrusted Redis"
    );
}
