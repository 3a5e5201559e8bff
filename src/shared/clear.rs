//! Cross-instance clears: SCAN + UNLINK of the cache's keys, and pub/sub so that every
//! instance drops its L1.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult};

use super::SharedTier;
use super::conn::Target;
use crate::cache::CacheStore;

/// Longest wait for one step of a clear (opening a connection, one SCAN, one pipelined
/// UNLINK of a batch, the PUBLISH), or REDIS_TIMEOUT if that is longer. A step costs
/// milliseconds on a healthy Redis; the hot path's 50 ms default would make a clear on a busy
/// one give up half-way. The whole clear has no bound: it takes one SCAN per batch.
pub const CLEAR_STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// Keys asked for per SCAN (a hint to Redis) and so at most about this many per UNLINK
/// pipeline.
const CLEAR_BATCH: u32 = 1000;

impl SharedTier {
    /// Drops this instance's L1 whenever any instance clears the cache. Reconnects forever.
    pub async fn follow_clears(&self, l1: CacheStore) {
        let channel = self.channel();
        // A Cluster broadcasts PUBLISH to every node: any one will do; try them in turn.
        let clients: Vec<redis::Client> = match &self.target {
            Target::Single(client) => vec![(**client).clone()],
            Target::Cluster { seeds, .. } => {
                seeds.iter().filter_map(|s| self.client(s).ok()).collect()
            }
        };
        for client in clients.iter().cycle() {
            match client.get_async_pubsub().await {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        let mut messages = pubsub.on_message();
                        while messages.next().await.is_some() {
                            let dropped = l1.clear();
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

    /// Deletes every cache entry without blocking Redis (SCAN + UNLINK in batches), then, in
    /// any case, tells every instance to drop its L1. Each step is bounded by
    /// [`CLEAR_STEP_TIMEOUT`] (or REDIS_TIMEOUT if longer), not by the hot path's
    /// REDIS_TIMEOUT, and runs on connections of its own, so that the circuit breaker and
    /// the proxy's connection state neither stop a clear nor are disturbed by it.
    pub async fn clear(&self) -> Cleared {
        let limit = self.timeout.max(CLEAR_STEP_TIMEOUT);
        let mut removed = 0;
        let removal = self.remove_entries(limit, &mut removed).await;
        if let Err(e) = &removal {
            self.counters.errors.inc();
            tracing::warn!(error = %e, removed, "redis clear did not finish");
        }
        let published = match self.publish_clear(limit).await {
            Ok(()) => true,
            Err(e) => {
                self.counters.errors.inc();
                tracing::warn!(error = %e, "could not tell the other instances to clear");
                false
            }
        };
        Cleared {
            removed,
            complete: removal.is_ok(),
            published,
        }
    }

    /// Removes the entries on every server that holds some, adding to `removed` as it goes.
    async fn remove_entries(&self, limit: Duration, removed: &mut u64) -> RedisResult<()> {
        match &self.target {
            Target::Single(client) => {
                let conn = admin_connection(client, limit).await?;
                self.clear_node(conn, limit, removed).await
            }
            // SCAN sees one node's keys: clear each primary through its own connection. A
            // primary that fails does not stop the others.
            Target::Cluster { seeds, .. } => {
                let mut first_error = None;
                for node in self.primaries(seeds, limit).await? {
                    let outcome = match self.client(&node) {
                        Ok(client) => match admin_connection(&client, limit).await {
                            Ok(conn) => self.clear_node(conn, limit, removed).await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    if let Err(e) = outcome {
                        first_error.get_or_insert(e);
                    }
                }
                first_error.map_or(Ok(()), Err)
            }
        }
    }

    /// PUBLISH on the invalidation channel. A Cluster forwards it to every node, so any one
    /// that answers will do.
    async fn publish_clear(&self, limit: Duration) -> RedisResult<()> {
        let clients = match &self.target {
            Target::Single(client) => vec![(**client).clone()],
            Target::Cluster { seeds, .. } => {
                seeds.iter().filter_map(|s| self.client(s).ok()).collect()
            }
        };
        let mut last = no_server();
        for client in clients {
            let publish = async {
                let mut conn = admin_connection(&client, limit).await?;
                let publish = redis::cmd("PUBLISH")
                    .arg(self.channel())
                    .arg("clear")
                    .to_owned();
                bounded_step(limit, publish.query_async::<u64>(&mut conn)).await
            };
            match publish.await {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// SCAN + UNLINK of the cache entries on one server, in batches.
    async fn clear_node(
        &self,
        mut conn: MultiplexedConnection,
        limit: Duration,
        removed: &mut u64,
    ) -> RedisResult<()> {
        let pattern = self.entry_pattern();
        let mut cursor: u64 = 0;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(CLEAR_BATCH)
                .to_owned();
            let (next, keys): (u64, Vec<String>) =
                bounded_step(limit, scan.query_async(&mut conn)).await?;
            if !keys.is_empty() {
                // One UNLINK per key, pipelined: on a Cluster node, a multi-key UNLINK of keys
                // in different hash slots is refused (CROSSSLOT).
                let mut unlink = redis::pipe();
                for key in &keys {
                    unlink.cmd("UNLINK").arg(key);
                }
                let gone: Vec<u64> = bounded_step(limit, unlink.query_async(&mut conn)).await?;
                *removed += gone.iter().sum::<u64>();
            }
            cursor = next;
            if cursor == 0 {
                return Ok(());
            }
        }
    }

    /// What SCAN matches: this prefix's cache entries and nothing else. An entry's key is the
    /// prefix (free of glob characters, see CACHE_KEY_PREFIX) and 64 lower-case hex digits;
    /// the rate-limit buckets (`<prefix>rl:<ip>`) and other keys under or outside the prefix
    /// never match, so a clear leaves every client's limit where it was.
    fn entry_pattern(&self) -> String {
        format!("{}{}", self.prefix, "[0-9a-f]".repeat(64))
    }

    /// URLs of the Cluster's primaries (from CLUSTER NODES of the first seed that answers),
    /// with the seeds' credentials and scheme.
    async fn primaries(&self, seeds: &[String], limit: Duration) -> RedisResult<Vec<String>> {
        let mut nodes = Err(no_server());
        for seed in seeds {
            nodes = async {
                let mut conn = admin_connection(&self.client(seed)?, limit).await?;
                let cmd = redis::cmd("CLUSTER").arg("NODES").to_owned();
                bounded_step(limit, cmd.query_async::<String>(&mut conn)).await
            }
            .await;
            if nodes.is_ok() {
                break;
            }
        }
        let nodes = nodes?;
        let seed = seeds
            .first()
            .and_then(|s| url::Url::parse(s).ok())
            .ok_or_else(no_server)?;
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
        Ok(urls)
    }
}

/// What a clear did.
#[derive(Debug, Clone, Copy)]
pub struct Cleared {
    /// Entries removed from Redis (so far, if it did not finish).
    pub removed: u64,
    /// Every server was scanned to the end.
    pub complete: bool,
    /// The other instances were told to drop their L1.
    pub published: bool,
}

/// A connection for one clear, with the clear's own bounds instead of the hot path's.
async fn admin_connection(
    client: &redis::Client,
    limit: Duration,
) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(limit))
        .set_response_timeout(Some(limit));
    bounded_step(
        limit,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
}

/// `step`, or a timeout error once `limit` has passed.
async fn bounded_step<T>(
    limit: Duration,
    step: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(limit, step).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {limit:?}"),
        )
        .into())
    })
}

fn no_server() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "no redis server answered"))
}
