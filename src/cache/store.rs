//! `CacheStore`: one byte-bounded, TTL-bounded moka cache shared by every worker, and the
//! alias index that lets a repeated request skip canonicalising its JSON body
//! ([`super::aliases`]).
//!
//! The cache is moka's `sync` cache, called from async handlers: no call waits for anything
//! but a short per-key lock, so nothing is gained from `future::Cache`, whose every `get` and
//! `insert` also drives async housekeeping machinery. Measured with callgrind on a full cache
//! taking new keys (one miss and one insert each): 10,600 instructions per key with
//! `future::Cache` and SipHash, 7,600 with `sync::Cache` and foldhash.

use std::sync::Arc;

use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use moka::Expiry;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::aliases::Aliases;
use super::{CacheKey, CachedResponse};
use crate::metrics::{Metrics, bump};

/// What one alias is counted as in memory: two 32-byte keys plus the index's per-entry
/// bookkeeping, with room to spare.
const ALIAS_WEIGHT: u64 = 256;

struct UntilStale(Duration);

impl Expiry<CacheKey, Arc<CachedResponse>> for UntilStale {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedResponse>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(
            self.0
                .saturating_sub(value.stored_at.elapsed().unwrap_or_default()),
        )
    }

    fn expire_after_update(
        &self,
        key: &CacheKey,
        value: &Arc<CachedResponse>,
        updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

/// Cheap to clone: clones share the same entries.
#[derive(Clone)]
pub struct CacheStore {
    /// Keys are SHA-256 digests, so foldhash (seeded per process, so nobody can aim keys at
    /// one bucket) spreads them as well as the standard library's SipHash, for less work on
    /// every lookup, insert and rehash.
    cache: Cache<CacheKey, Arc<CachedResponse>, RandomState>,
    /// Exact-bytes digest to cache key: a shared index, and each worker's recently used
    /// aliases at hand. A stale alias is harmless (the key of a request never changes), so
    /// it only needs a bound: 1/32 of the cache's bytes, taken from the entries' share.
    aliases: Arc<Aliases>,
    max_entry_bytes: u64,
    metrics: Arc<Metrics>,
}

impl CacheStore {
    /// A cache holding at most `capacity_bytes` of responses (see `CachedResponse::weight`),
    /// each for at most `ttl`, and none larger than `max_entry_bytes`, for `threads` worker
    /// threads (each keeps some aliases at hand, within the alias index's share).
    pub fn new(
        capacity_bytes: u64,
        max_entry_bytes: u64,
        ttl: std::time::Duration,
        threads: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let listener_metrics = metrics.clone();
        let alias_bytes = capacity_bytes / 32;
        let max_aliases = (alias_bytes / ALIAS_WEIGHT).max(1);
        let aliases = Arc::new(Aliases::new(max_aliases, threads));
        let cache = Cache::builder()
            .max_capacity(capacity_bytes - alias_bytes)
            .weigher(|_k, v: &Arc<CachedResponse>| u32::try_from(v.weight()).unwrap_or(u32::MAX))
            // Each entry lives CACHE_TTL from when it was first stored, anywhere: one read
            // back from the shared tier keeps only what is left of it.
            .expire_after(UntilStale(ttl))
            // LRU admits every new entry; the default TinyLFU refuses brand-new keys once the
            // cache is full of entries read a few times, so fresh answers would never be cached.
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |_k, _v, cause| match cause {
                RemovalCause::Size => bump(&listener_metrics.evictions),
                RemovalCause::Expired => bump(&listener_metrics.expirations),
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build_with_hasher(RandomState::default());
        Self {
            cache,
            aliases,
            max_entry_bytes,
            metrics,
        }
    }

    pub fn max_entry_bytes(&self) -> u64 {
        self.max_entry_bytes
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        self.cache.get(key)
    }

    /// The cache key remembered for these exact request bytes, if they hit before or came
    /// with `no-cache`.
    pub fn alias(&self, exact: &CacheKey) -> Option<CacheKey> {
        self.aliases.get(exact)
    }

    /// Remembers that the request with digest `exact` has the cache key `key`.
    pub fn remember_alias(&self, exact: CacheKey, key: CacheKey) {
        self.aliases.insert(exact, key);
    }

    /// Stores `value` unless it is larger than the per-entry limit. Returns whether it did.
    pub fn insert(&self, key: CacheKey, value: Arc<CachedResponse>) -> bool {
        let stored = self.put(key, value);
        if stored {
            bump(&self.metrics.stores);
        }
        stored
    }

    /// Puts an entry read from the shared tier into this instance's cache (not counted as a
    /// store: it was stored once, elsewhere) and returns it.
    pub fn fill(&self, key: CacheKey, value: CachedResponse) -> Arc<CachedResponse> {
        let value = Arc::new(value);
        self.put(key, Arc::clone(&value));
        value
    }

    /// Puts `value` into the cache unless it is larger than the per-entry limit.
    fn put(&self, key: CacheKey, value: Arc<CachedResponse>) -> bool {
        if value.weight() > self.max_entry_bytes {
            return false;
        }
        self.cache.insert(key, value);
        true
    }

    /// Drops every entry; returns how many there were.
    pub fn clear(&self) -> u64 {
        self.cache.run_pending_tasks();
        let n = self.cache.entry_count();
        self.cache.invalidate_all();
        self.aliases.clear();
        self.cache.run_pending_tasks();
        n
    }

    /// Entries, aliases and weighted bytes after applying pending evictions and expirations,
    /// which moka otherwise reports lazily.
    /// The bytes include the aliases (the shared index's and each worker's copies), so they
    /// stay within the configured bound; `aliases` counts the shared index's.
    pub fn usage(&self) -> Usage {
        self.cache.run_pending_tasks();
        let held = self.aliases.held() as u64;
        Usage {
            entries: self.cache.entry_count(),
            aliases: self.aliases.len() as u64,
            bytes: self.cache.weighted_size() + held * ALIAS_WEIGHT,
        }
    }
}

/// What the cache holds now.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub entries: u64,
    pub aliases: u64,
    pub bytes: u64,
}
