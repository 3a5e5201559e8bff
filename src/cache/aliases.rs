//! The alias index: exact-bytes digest ([`super::KeyHasher::exact`]) to cache key, for
//! requests that hit at least once or came with `no-cache`, so that a repeat costs one hash
//! of the body as sent instead of a JSON parse. Every hit looks its bytes up here first.
//!
//! Each worker thread keeps an index of its own (a `quick_cache` LRU in a `ThreadLocal`),
//! bounded by its share of the whole. A shared index made every hit take a read lock that
//! both workers write, passing its cache line between them: one index per worker was 3–6%
//! more hits per second on two cores (`tests/bench/HISTORY.md`). What it costs is one JSON
//! parse per worker for a request that repeats, where a shared index parsed it once.
//!
//! An alias never goes stale (the key of a request's bytes never changes), so the indexes
//! need no TTL, no weights and no eviction listener, and need not agree with each other.
//! Each is behind a mutex that only its own thread takes on the hit path (no other thread's
//! writes to wait for); `/stats` and `DELETE /cache` take every thread's in turn.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;
use foldhash::fast::RandomState;
use quick_cache::UnitWeighter;
use quick_cache::unsync::Cache;
use thread_local::ThreadLocal;

use super::CacheKey;

type Index = Cache<CacheKey, CacheKey, UnitWeighter, RandomState>;

pub struct Aliases {
    // Padded: two threads' indexes (their mutexes) never share a cache line.
    per_thread: ThreadLocal<CachePadded<Mutex<Index>>>,
    /// Aliases each thread's index holds at most.
    per_thread_max: u64,
}

impl Aliases {
    /// At most `max` aliases in all, for `threads` threads answering requests.
    pub fn new(max: u64, threads: usize) -> Self {
        let threads = u64::try_from(threads.max(1)).unwrap_or(u64::MAX);
        Self {
            per_thread: ThreadLocal::new(),
            per_thread_max: (max / threads).max(1),
        }
    }

    /// The cache key remembered for these exact request bytes on this thread.
    pub fn get(&self, exact: &CacheKey) -> Option<CacheKey> {
        self.mine().get(exact).copied()
    }

    /// Remembers, on this thread, that the request with digest `exact` has the cache key `key`.
    pub fn insert(&self, exact: CacheKey, key: CacheKey) {
        self.mine().insert(exact, key);
    }

    /// Aliases held by every thread.
    pub fn len(&self) -> usize {
        self.per_thread.iter().map(|i| lock(i).len()).sum()
    }

    /// Forgets every thread's aliases.
    pub fn clear(&self) {
        for index in self.per_thread.iter() {
            lock(index).clear();
        }
    }

    fn mine(&self) -> MutexGuard<'_, Index> {
        lock(self.per_thread.get_or(|| {
            // Sized for the first thousand aliases and grown as they come: sized for the
            // bound, a large cache's indexes would take their memory at start-up.
            let max = self.per_thread_max;
            CachePadded::new(Mutex::new(Index::with(
                usize::try_from(max.min(1024)).unwrap_or(1024),
                max,
                UnitWeighter,
                RandomState::default(),
                Default::default(),
            )))
        }))
    }
}

/// An index whose thread panicked while holding it is still a correct index: an alias is
/// written whole or not at all.
fn lock(index: &Mutex<Index>) -> MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CacheKey {
        CacheKey::compute("POST", "/v1/embeddings", &Default::default(), &[n])
    }

    #[test]
    fn each_thread_remembers_its_own_aliases_within_its_share() {
        let aliases = Aliases::new(8, 2);
        aliases.insert(key(0), key(100));
        assert_eq!(aliases.get(&key(0)), Some(key(100)));
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(aliases.get(&key(0)), None, "another thread's alias");
                for n in 1..=20 {
                    aliases.insert(key(n), key(n + 100));
                }
                assert_eq!(aliases.get(&key(20)), Some(key(120)));
            });
        });
        // Four a thread: this one's single alias and the other's last four.
        assert_eq!(aliases.len(), 1 + 4);
        assert_eq!(aliases.get(&key(0)), Some(key(100)));
        aliases.clear();
        assert_eq!((aliases.len(), aliases.get(&key(0))), (0, None));
    }
}
