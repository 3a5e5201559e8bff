//! The shared tier: Redis as the L2 cache behind every instance's in-memory L1, a
//! cross-instance cache clear (SCAN + UNLINK, and pub/sub to drop every L1), and an atomic
//! GCRA rate limit. Redis can never make the proxy worse: every call is bounded by
//! REDIS_TIMEOUT, failures open a circuit breaker, and every caller falls back to what it
//! would do without Redis.
//!
//! Client: the `redis` crate (redis-rs, the most used Rust client, with an auto-reconnecting
//! `ConnectionManager` and server-side script support).

mod breaker;
pub mod codec;

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use breaker::Breaker;

use crate::cache::{CacheKey, CacheStore, CachedResponse};

/// The token bucket as a GCRA ("theoretical arrival time") in one atomic script: KEYS[1] the
/// client's key, ARGV[1] the emission interval in ms, ARGV[2] the burst. Returns
/// {allowed 0/1, remaining, retry after ms}. Uses the server's clock, so instances agree.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local used = new_tat - now
local limit = interval * burst
if used > limit then
  return {0, 0, used - limit}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil(used)))
return {1, math.floor((limit - used) / interval), 0}
";

/// What the shared limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed { remaining: u64 },
    Refused { retry_after: Duration },
}

/// Counters of the shared tier, exported by `/metrics` and read by `/stats`.
#[derive(Debug, Clone, Default)]
pub struct RedisCounters {
    pub l2_hits: Counter,
    pub l2_misses: Counter,
    pub errors: Counter,
    /// Values that were present but not ours (corrupt, truncated, foreign): served as misses.
    pub undecodable: Counter,
}

pub struct SharedTier {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
    breaker: Breaker,
    gcra: redis::Script,
    pub counters: RedisCounters,
}

impl SharedTier {
    /// A tier for `url` (not connected yet: see [`SharedTier::connect`]).
    pub fn new(
        url: &str,
        prefix: String,
        timeout: Duration,
        counters: RedisCounters,
    ) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: Mutex::new(None),
            prefix,
            timeout,
            breaker: Breaker::default(),
            gcra: redis::Script::new(GCRA),
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
            match ConnectionManager::new_with_config(self.client.clone(), config.clone()).await {
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

    /// Drops this instance's L1 whenever any instance clears the cache. Reconnects forever.
    pub async fn follow_clears(&self, l1: CacheStore) {
        let channel = self.channel();
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        let mut messages = pubsub.on_message();
                        while messages.next().await.is_some() {
                            let dropped = l1.clear().await;
                            tracing::info!(dropped, "cache cleared by another instance");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "redis subscribe failed"),
                },
                Err(e) => tracing::debug!(error = %e, "redis pub/sub unreachable"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
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
        F: FnOnce(ConnectionManager) -> Fut,
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
        let value: Option<Vec<u8>> = self.call(redis::cmd("GET").arg(self.key(key))).await?;
        let Some(value) = value else {
            self.counters.l2_misses.inc();
            return None;
        };
        match codec::decode(&value) {
            Some(entry) => {
                self.counters.l2_hits.inc();
                Some(entry)
            }
            None => {
                self.counters.undecodable.inc();
                self.counters.l2_misses.inc();
                tracing::warn!(key = %key.short(), "undecodable value in redis; treated as a miss");
                None
            }
        }
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

    /// Deletes every key under the prefix without blocking Redis (SCAN + UNLINK in batches),
    /// then tells every instance to drop its L1. Returns how many keys went, or `None` if
    /// Redis could not be reached.
    pub async fn clear(&self) -> Option<u64> {
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .to_owned();
            let (next, keys): (u64, Vec<String>) = self.call(&scan).await?;
            if !keys.is_empty() {
                let n: u64 = self.call(redis::cmd("UNLINK").arg(&keys)).await?;
                removed += n;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let _: Option<u64> = self
            .call(redis::cmd("PUBLISH").arg(self.channel()).arg("clear"))
            .await;
        Some(removed)
    }

    /// One request from `ip` against the shared bucket: `per_minute` with a burst of the same
    /// size. `None` when Redis could not decide (the caller uses its local limiter).
    pub async fn rate_limit(&self, ip: IpAddr, per_minute: u32) -> Option<Decision> {
        let interval_ms = 60_000.0 / f64::from(per_minute.max(1));
        let key = format!("{}rl:{ip}", self.prefix);
        let (allowed, remaining, retry_ms): (u64, u64, u64) = self
            .bounded(self.timeout, |mut conn| {
                let mut invocation = self.gcra.key(key);
                invocation.arg(interval_ms).arg(per_minute);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Some(if allowed == 1 {
            Decision::Allowed { remaining }
        } else {
            Decision::Refused {
                retry_after: Duration::from_millis(retry_ms),
            }
        })
    }
}
