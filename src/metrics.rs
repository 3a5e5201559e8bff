//! Process-wide counters, shared by all workers and reported by `/stats`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::CacheStatus;

/// Monotonic counters. Cheap to bump from any worker (relaxed atomics).
#[derive(Debug, Default)]
pub struct Metrics {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub bypasses: AtomicU64,
    /// Requests answered by reading an identical in-flight request's response.
    pub coalesced: AtomicU64,
    pub stores: AtomicU64,
    /// Entries removed to stay under MAX_CACHE_SIZE.
    pub evictions: AtomicU64,
    /// Entries removed because CACHE_TTL passed.
    pub expirations: AtomicU64,
    pub rate_limited: AtomicU64,
    pub upstream_errors: AtomicU64,
}

impl Metrics {
    pub fn record(&self, status: CacheStatus) {
        let counter = match status {
            CacheStatus::Hit => &self.hits,
            CacheStatus::Miss => &self.misses,
            CacheStatus::Coalesced => &self.coalesced,
            CacheStatus::Bypass => &self.bypasses,
        };
        bump(counter);
    }

    /// hits / (hits + misses); bypasses are not cache decisions. 0 before any lookup.
    pub fn hit_ratio(&self) -> f64 {
        let hits = get(&self.hits) as f64;
        let lookups = hits + get(&self.misses) as f64;
        if lookups == 0.0 { 0.0 } else { hits / lookups }
    }
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
