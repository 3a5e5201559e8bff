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
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisFuture, Value};

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

/// Where Redis is: one server, or a Cluster given by some of its nodes.
enum Target {
    Single(redis::Client),
    Cluster {
        client: Box<ClusterClient>,
        /// The seed URLs, for pub/sub and for clearing each primary on its own.
        seeds: Vec<String>,
    },
}

/// A connection to either; both reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

pub struct SharedTier {
    target: Target,
    conn: Mutex<Option<Conn>>,
    prefix: String,
    timeout: Duration,
    breaker: Breaker,
    gcra: redis::Script,
    pub counters: RedisCounters,
}

impl SharedTier {
    /// A tier for `url`, or with `cluster` for the comma-separated seed nodes in it (not
    /// connected yet: see [`SharedTier::connect`]).
    pub fn new(
        url: &str,
        cluster: bool,
        prefix: String,
        timeout: Duration,
        counters: RedisCounters,
    ) -> redis::RedisResult<Self> {
        let target = if cluster {
            let seeds: Vec<String> = url.split(',').map(|u| u.trim().to_owned()).collect();
            let client = ClusterClient::builder(seeds.clone())
                .connection_timeout(timeout.max(Duration::from_millis(500)))
                .response_timeout(timeout)
                .retries(1)
                .build()?;
            Target::Cluster {
                client: Box::new(client),
                seeds,
            }
        } else {
            Target::Single(redis::Client::open(url)?)
        };
        Ok(Self {
            target,
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
            let connected = match &self.target {
                Target::Single(client) => {
                    ConnectionManager::new_with_config(client.clone(), config.clone())
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

    /// Drops this instance's L1 whenever any instance clears the cache. Reconnects forever.
    pub async fn follow_clears(&self, l1: CacheStore) {
        let channel = self.channel();
        // A Cluster broadcasts PUBLISH to every node: any one will do; try them in turn.
        let clients: Vec<redis::Client> = match &self.target {
            Target::Single(client) => vec![client.clone()],
            Target::Cluster { seeds, .. } => seeds
                .iter()
                .filter_map(|s| redis::Client::open(s.as_str()).ok())
                .collect(),
        };
        for client in clients.iter().cycle() {
            match client.get_async_pubsub().await {
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
        let removed = match &self.target {
            Target::Single(_) => {
                let conn = self.conn.lock().expect("redis lock").clone()?;
                self.clear_node(conn).await?
            }
            // SCAN sees one node's keys: clear each primary through its own connection.
            Target::Cluster { seeds, .. } => {
                let mut removed = 0;
                for node in self.primaries(seeds).await? {
                    let client = redis::Client::open(node.as_str()).ok()?;
                    let conn = self
                        .bounded(self.timeout, |_| async move {
                            client.get_multiplexed_async_connection().await
                        })
                        .await?;
                    removed += self.clear_node(conn).await?;
                }
                removed
            }
        };
        let _: Option<u64> = self
            .call(redis::cmd("PUBLISH").arg(self.channel()).arg("clear"))
            .await;
        Some(removed)
    }

    /// SCAN + UNLINK of the prefix's keys on one server, in batches.
    async fn clear_node<C: ConnectionLike + Clone>(&self, conn: C) -> Option<u64> {
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
            let mut c = conn.clone();
            let (next, keys): (u64, Vec<String>) = self
                .bounded(
                    self.timeout,
                    |_| async move { scan.query_async(&mut c).await },
                )
                .await?;
            if !keys.is_empty() {
                // One UNLINK per key, pipelined: on a Cluster node, a multi-key UNLINK of keys
                // in different hash slots is refused (CROSSSLOT).
                let mut unlink = redis::pipe();
                for key in &keys {
                    unlink.cmd("UNLINK").arg(key);
                }
                let mut c = conn.clone();
                let gone: Vec<u64> = self
                    .bounded(
                        self.timeout,
                        |_| async move { unlink.query_async(&mut c).await },
                    )
                    .await?;
                removed += gone.iter().sum::<u64>();
            }
            cursor = next;
            if cursor == 0 {
                return Some(removed);
            }
        }
    }

    /// URLs of the Cluster's primaries (from CLUSTER NODES), with the seeds' credentials.
    async fn primaries(&self, seeds: &[String]) -> Option<Vec<String>> {
        let nodes: String = self
            .call(&redis::cmd("CLUSTER").arg("NODES").to_owned())
            .await?;
        let seed = url::Url::parse(seeds.first()?).ok()?;
        let urls = nodes
            .lines()
            .filter(|line| {
                let flags = line.split(' ').nth(2).unwrap_or_default();
                flags.split(',').any(|f| f == "master") && !flags.contains("fail")
            })
            .filter_map(|line| {
                // `<id> <ip>:<port>@<bus-port>[,<hostname>] <flags> ...`
                let addr = line.split(' ').nth(1)?.split('@').next()?;
                let (host, port) = addr.rsplit_once(':')?;
                let mut url = seed.clone();
                url.set_host(Some(host.trim_start_matches('[').trim_end_matches(']')))
                    .ok()?;
                url.set_port(Some(port.parse().ok()?)).ok()?;
                Some(url.to_string())
            })
            .collect();
        Some(urls)
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
