//! Cross-instance clears: SCAN + UNLINK of the cache's keys, and pub/sub so that every
//! instance drops its L1.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionLike;

use super::SharedTier;
use super::conn::Target;
use crate::cache::CacheStore;

impl SharedTier {
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

    /// Deletes every cache entry under the prefix without blocking Redis (SCAN + UNLINK in batches),
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

    /// SCAN + UNLINK of the cache entries on one server, in batches.
    async fn clear_node<C: ConnectionLike + Clone>(&self, conn: C) -> Option<u64> {
        let pattern = self.entry_pattern();
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

    /// What SCAN matches: this prefix's cache entries and nothing else. An entry's key is the
    /// prefix (free of glob characters, see CACHE_KEY_PREFIX) and 64 lower-case hex digits;
    /// the rate-limit buckets (`<prefix>rl:<ip>`) and other keys under or outside the prefix
    /// never match, so a clear leaves every client's limit where it was.
    fn entry_pattern(&self) -> String {
        format!("{}{}", self.prefix, "[0-9a-f]".repeat(64))
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
}
