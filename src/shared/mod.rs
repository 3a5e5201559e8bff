//! The shared tier: Redis as the L2 cache behind every instance's in-memory L1, a
//! cross-instance cache clear (SCAN + UNLINK, and pub/sub to drop every L1), and an atomic
//! GCRA rate limit. Redis can never make the proxy worse: every call is bounded by
//! REDIS_TIMEOUT, failures open a circuit breaker, and every caller falls back to what it
//! would do without Redis.
//!
//! Client: the `redis` crate (redis-rs, the most used Rust client, with an auto-reconnecting
//! `ConnectionManager` and server-side script support).

mod breaker;
mod clear;
pub mod codec;
mod conn;
mod lock;
mod rate_limit;
mod tls;

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;

pub use breaker::Breaker;
pub use clear::{CLEAR_STEP_TIMEOUT, Cleared};
pub use lock::{Claim, LockGuard};
pub use rate_limit::Decision;

use secrecy::ExposeSecret;

use crate::cache::{CacheKey, CachedResponse};
use crate::config::RedisConfig;
use conn::{Conn, Target};

/// Counters of the shared tier, exported by `/metrics` and read by `/stats`.
#[derive(Debug, Clone, Default)]
pub struct RedisCounters {
    pub l2_hits: Counter,
    pub l2_misses: Counter,
    pub errors: Counter,
    /// Values that were present but not ours (corrupt, truncated, foreign): served as misses.
    pub undecodable: Counter,
    /// Misses that waited for another instance's upstream call (REDIS_COALESCE_WAIT).
    pub sibling_waits: Counter,
}

pub struct SharedTier {
    target: Target,
    conn: Mutex<Option<Conn>>,
    prefix: String,
    timeout: Duration,
    /// REDIS_CA_FILE, for the clients opened per node (clears, pub/sub).
    ca_pem: Option<Vec<u8>>,
    breaker: Breaker,
    gcra: redis::Script,
    /// Deletes a coalescing lock if it is still ours.
    release: redis::Script,
    pub counters: RedisCounters,
}

impl SharedTier {
    /// A tier for REDIS_URL (for a Cluster, the comma-separated seed nodes in it); not
    /// connected yet: see [`SharedTier::connect`].
    pub fn new(config: &RedisConfig, counters: RedisCounters) -> redis::RedisResult<Self> {
        let url = config.url.expose_secret();
        let timeout = config.timeout;
        let ca_pem = config.ca_pem.clone();
        let target = if config.cluster {
            let seeds: Vec<String> = url.split(',').map(|u| u.trim().to_owned()).collect();
            let mut builder = ClusterClient::builder(seeds.clone())
                .connection_timeout(timeout.max(Duration::from_millis(500)))
                .response_timeout(timeout)
                .retries(1);
            if let Some(pem) = &ca_pem {
                builder = builder.certs(tls::certificates(pem));
            }
            Target::Cluster {
                client: Box::new(builder.build()?),
                seeds,
            }
        } else {
            Target::Single(Box::new(tls::client(url, ca_pem.as_deref())?))
        };
        Ok(Self {
            target,
            conn: Mutex::new(None),
            prefix: config.key_prefix.clone(),
            timeout,
            ca_pem,
            breaker: Breaker::default(),
            gcra: redis::Script::new(rate_limit::GCRA),
            release: redis::Script::new(lock::RELEASE),
            counters,
        })
    }

    /// Connects, retrying every second until Redis answers; the connection manager then
    /// reconnects by itself. Meanwhile every call is skipped (and counted as an error).
    pub async fn connect(&self) {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        loop {
            let connected = match &self.target {
                Target::Single(client) => {
                    ConnectionManager::new_with_config((**client).clone(), config.clone())
                        .await
                        .map(Conn::Single)
                }
                Target::Cluster { client, .. } => {
                    client.get_async_connection().await.map(Conn::Cluster)
                }
            };
            match connected {
                Ok(conn) => {
                    *self.conn.lock().expect("redis lock") = Some(conn);
                    tracing::info!("connected to redis");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis unreachable; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Asks Redis (PING, within REDIS_TIMEOUT) whether it answers; `false` while the breaker
    /// is open or the connection is down.
    pub async fn ping(&self) -> bool {
        let pong: Option<String> = self.call(&redis::cmd("PING")).await;
        pong.is_some()
    }

    /// Redis is configured but not answering (or its last calls failed).
    pub fn degraded(&self) -> bool {
        self.breaker.degraded() || self.conn.lock().expect("redis lock").is_none()
    }

    fn key(&self, key: CacheKey) -> String {
        format!("{}{}", self.prefix, key.to_hex())
    }

    /// A client for one node's URL (a Cluster seed or primary).
    fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        tls::client(url, self.ca_pem.as_deref())
    }

    fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// Runs one command within REDIS_TIMEOUT, through the breaker. `None` when Redis was
    /// skipped or failed.
    async fn call<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        self.bounded(self.timeout, |mut conn| async move {
            cmd.query_async(&mut conn).await
        })
        .await
    }

    async fn bounded<T, F, Fut>(&self, limit: Duration, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allows() {
            return None;
        }
        let Some(conn) = self.conn.lock().expect("redis lock").clone() else {
            self.counters.errors.inc();
            return None;
        };
        match tokio::time::timeout(limit, f(conn)).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Some(v)
            }
            outcome => {
                self.counters.errors.inc();
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {limit:?}"),
                };
                if self.breaker.failure() {
                    tracing::warn!(error = %why, cooldown = ?breaker::COOLDOWN,
                        "redis failing; skipping it for the cooldown");
                } else {
                    tracing::debug!(error = %why, "redis call failed");
                }
                None
            }
        }
    }

    /// The L2 entry for `key`, if Redis has one and it decodes.
    pub async fn get(&self, key: CacheKey) -> Option<CachedResponse> {
        self.lookup(key, true).await
    }

    /// `key`'s entry, looked for once more after [`SharedTier::get`] missed: a hit is
    /// counted, but not another miss nor the same undecodable value again.
    pub async fn get_again(&self, key: CacheKey) -> Option<CachedResponse> {
        self.lookup(key, false).await
    }

    async fn lookup(&self, key: CacheKey, first: bool) -> Option<CachedResponse> {
        let value: Option<Vec<u8>> = self.call(redis::cmd("GET").arg(self.key(key))).await?;
        let decoded = value.as_deref().map(codec::decode);
        if let Some(Some(_)) = decoded {
            self.counters.l2_hits.inc();
        } else if first {
            self.counters.l2_misses.inc();
            if decoded.is_some() {
                self.counters.undecodable.inc();
                tracing::warn!(key = %key.short(), "undecodable value in redis; treated as a miss");
            }
        }
        decoded.flatten()
    }

    /// Stores `entry` for what is left of `ttl`.
    pub async fn put(&self, key: CacheKey, entry: &CachedResponse, ttl: Duration) {
        let left = codec::ttl_left(entry.stored_at, ttl).as_millis();
        if left == 0 {
            return;
        }
        let cmd = redis::cmd("SET")
            .arg(self.key(key))
            .arg(codec::encode(entry))
            .arg("PX")
            .arg(u64::try_from(left).unwrap_or(u64::MAX))
            .to_owned();
        let _: Option<()> = self.call(&cmd).await;
    }
}
