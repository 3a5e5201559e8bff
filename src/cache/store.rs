//! `CacheStore`: one byte-bounded, TTL-bounded moka cache shared by every worker.

use std::sync::Arc;

use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;

use super::{CacheKey, CachedResponse};
use crate::metrics::{Metrics, bump};

/// Cheap to clone: clones share the same entries.
#[derive(Clone)]
pub struct CacheStore {
    cache: Cache<CacheKey, Arc<CachedResponse>>,
    max_entry_bytes: u64,
    metrics: Arc<Metrics>,
}

impl CacheStore {
    /// A cache holding at most `capacity_bytes` of responses (see `CachedResponse::weight`),
    /// each for at most `ttl`, and none larger than `max_entry_bytes`.
    pub fn new(
        capacity_bytes: u64,
        max_entry_bytes: u64,
        ttl: std::time::Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let listener_metrics = metrics.clone();
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_k, v: &Arc<CachedResponse>| u32::try_from(v.weight()).unwrap_or(u32::MAX))
            .time_to_live(ttl)
            // LRU admits every new entry; the default TinyLFU refuses brand-new keys once the
            // cache is full of entries read a few times, so fresh answers would never be cached.
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |_k, _v, cause| match cause {
                RemovalCause::Size => bump(&listener_metrics.evictions),
                RemovalCause::Expired => bump(&listener_metrics.expirations),
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build();
        Self {
            cache,
            max_entry_bytes,
            metrics,
        }
    }

    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
    }

    pub async fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        self.cache.get(key).await
    }

    /// Stores `value` unless it is larger than the per-entry limit. Returns whether it did.
    pub async fn insert(&self, key: CacheKey, value: CachedResponse) -> bool {
        if value.weight() > self.max_entry_bytes {
            return false;
        }
        self.cache.insert(key, Arc::new(value)).await;
        bump(&self.metrics.stores);
        true
    }

    /// Drops every entry; returns how many there were.
    pub async fn clear(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        let n = self.cache.entry_count();
        self.cache.invalidate_all();
        self.cache.run_pending_tasks().await;
        n
    }

    /// (entries, weighted bytes) after applying pending evictions and expirations, which moka
    /// otherwise reports lazily.
    pub async fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks().await;
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}
