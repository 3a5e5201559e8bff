//! Proxy instances sharing one Redis (a single server or a Cluster), for the shared-tier
//! tests.

use std::time::Duration;

use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{CHAT_ANSWER, client, eventually, spawn_proxy};
use crate::redis_server::{RedisCluster, RedisServer};
use crate::tls_upstream::TestCa;

/// Where the shared tier lives: one server, or a three-primary Cluster.
pub enum Backend {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    pub async fn single() -> Self {
        Self::Single(RedisServer::start().await)
    }

    pub async fn cluster() -> Self {
        Self::Cluster(RedisCluster::start().await)
    }

    /// TLS only, with a password, its certificate signed by `ca`.
    pub async fn single_tls(ca: &TestCa, password: &str) -> Self {
        Self::Single(RedisServer::start_tls(ca, password).await)
    }

    pub async fn cluster_tls(ca: &TestCa, password: &str) -> Self {
        Self::Cluster(RedisCluster::start_tls(ca, password).await)
    }

    /// What a proxy needs to use it: REDIS_URL, and REDIS_CLUSTER or REDIS_CA_FILE as fits.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Single(r) => r.vars(),
            Self::Cluster(c) => c.vars(),
        }
    }

    pub fn servers(&self) -> Vec<&RedisServer> {
        match self {
            Self::Single(r) => vec![r],
            Self::Cluster(c) => c.nodes.iter().collect(),
        }
    }

    /// Sets `key` on the server that owns it (on a Cluster, the others answer MOVED).
    pub fn plant(&self, key: &str, value: &str) {
        let owned = self.servers().into_iter().any(|server| {
            let mut conn = server.connection();
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query::<()>(&mut conn)
                .is_ok()
        });
        assert!(owned, "no server took {key}");
    }

    /// The cache entries under `prefix` (the prefix and 64 hex digits), with their servers;
    /// not the rate-limit buckets, nor a coalescing lock still being released.
    pub fn entries(&self, prefix: &str) -> Vec<(&RedisServer, String)> {
        self.keys(&format!("{prefix}{}", "[0-9a-f]".repeat(64)))
    }

    /// Every key matching `pattern`, with the server that holds it.
    pub fn keys(&self, pattern: &str) -> Vec<(&RedisServer, String)> {
        let mut all = Vec::new();
        for server in self.servers() {
            let mut conn = server.connection();
            let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap();
            all.extend(keys.into_iter().map(|k| (server, k)));
        }
        all
    }
}

pub struct Instance {
    pub base: String,
    pub http: reqwest::Client,
}

impl Instance {
    /// A proxy in front of `upstream` sharing `redis`; returns once it reports Redis ok.
    pub async fn start(upstream: &MockServer, redis: &Backend, extra: &[(&str, &str)]) -> Self {
        let shared = redis.vars();
        let mut vars: Vec<(&str, &str)> = shared.iter().map(|(k, v)| (*k, v.as_str())).collect();
        vars.extend_from_slice(extra);
        Self::start_with(upstream, &vars).await
    }

    /// A proxy in front of `upstream` with `vars` (REDIS_URL among them; REDIS_TIMEOUT 2 s
    /// unless given); returns once it reports Redis ok.
    pub async fn start_with(upstream: &MockServer, vars: &[(&str, &str)]) -> Self {
        let me = Self::spawn(upstream, vars);
        me.until_redis("ok").await;
        me
    }

    /// A proxy as [`Instance::start_with`], without waiting for Redis.
    pub fn spawn(upstream: &MockServer, vars: &[(&str, &str)]) -> Self {
        let mut all = vars.to_vec();
        if !all.iter().any(|(k, _)| *k == "REDIS_TIMEOUT") {
            all.push(("REDIS_TIMEOUT", "2s"));
        }
        Self {
            base: spawn_proxy(&upstream.uri(), &all),
            http: client(),
        }
    }

    pub async fn until_redis(&self, state: &str) {
        eventually(
            Duration::from_secs(20),
            &format!("redis {state}"),
            || async {
                let health: serde_json::Value = self
                    .http
                    .get(format!("{}/health", self.base))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (health["redis"] == state).then_some(())
            },
        )
        .await;
    }

    /// POSTs `body`; returns (status, X-Cache, body).
    pub async fn post(&self, body: &str) -> (u16, String, String) {
        let (status, headers, body) = self.post_with_headers(body).await;
        let cache = headers
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, cache, body)
    }

    /// POSTs `body`; returns (status, headers, body), the body read to its end.
    pub async fn post_with_headers(&self, body: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let res = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth("sk-shared")
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, headers, res.text().await.unwrap())
    }

    /// `DELETE /cache`; returns its JSON answer.
    pub async fn clear(&self) -> serde_json::Value {
        let res = self
            .http
            .delete(format!("{}/cache", self.base))
            .send()
            .await;
        let res = res.unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// GET `path`; asserts 200 and returns the body.
    pub async fn text(&self, path: &str) -> String {
        let res = self.http.get(format!("{}{path}", self.base)).send().await;
        let res = res.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        res.text().await.unwrap()
    }

    pub async fn stats(&self) -> serde_json::Value {
        let res = self.http.get(format!("{}/stats", self.base)).send().await;
        res.unwrap().json().await.unwrap()
    }
}

pub async fn upstream() -> MockServer {
    let upstream = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(CHAT_ANSWER, "application/json"))
        .mount(&upstream)
        .await;
    upstream
}

pub async fn calls(upstream: &MockServer) -> usize {
    upstream.received_requests().await.unwrap().len()
}
