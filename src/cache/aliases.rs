//! The alias index: exact-bytes digest ([`super::KeyHasher::exact`]) to cache key, for
//! requests that hit at least once or came with `no-cache`, so that a repeat costs one hash
//! of the body as sent instead of a JSON parse. Every hit looks its bytes up here first.
//!
//! Two levels. The index proper is one `quick_cache` that every worker shares, so that a
//! request repeated on any worker finds its key, within one bound for the whole process. In
//! front of it each worker thread keeps the aliases it used lately at hand, in a small
//! `quick_cache` of its own (a `ThreadLocal`): a hit found there touches nothing another
//! worker writes. The shared index's lookup is a shard read lock, a write to a cache line that
//! every worker's hits write in turn. On two cores, A/B runs put what that costs at 0–3% of
//! the CPU per request, at the noise (`tests/bench/HISTORY.md`); more cores share the line
//! more.
//!
//! An alias never goes stale (the key of a request's bytes never changes), so neither level
//! needs a TTL, weights or an eviction listener, and the levels need not agree. Each worker's
//! own is behind a mutex that only its thread takes on the hit path; `/stats` and
//! `DELETE /cache` take every thread's in turn.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;
use foldhash::fast::RandomState;
use quick_cache::UnitWeighter;
use quick_cache::sync::Cache as SharedIndex;
use quick_cache::unsync::Cache as OwnIndex;
use thread_local::ThreadLocal;

use super::CacheKey;

/// Aliases each worker keeps at hand, at most (fewer in a small cache, see [`Aliases::new`]).
const AT_HAND: u64 = 64;

type Own = OwnIndex<CacheKey, CacheKey, UnitWeighter, RandomState>;

pub struct Aliases {
    shared: SharedIndex<CacheKey, CacheKey, UnitWeighter, RandomState>,
    // Padded: two threads' indexes (their mutexes) never share a cache line.
    at_hand: ThreadLocal<CachePadded<Mutex<Own>>>,
    at_hand_max: u64,
}

impl Aliases {
    /// At most `max` aliases in all, for `threads` worker threads: each keeps up to
    /// [`AT_HAND`] of them, no more than a quarter of `max` between them, and the shared
    /// index holds the rest.
    pub fn new(max: u64, threads: usize) -> Self {
        let threads = u64::try_from(threads.max(1)).unwrap_or(u64::MAX);
        let at_hand_max = AT_HAND.min(max / 4 / threads);
        let shared_max = (max - at_hand_max * threads).max(1);
        Self {
            // Sized for the first thousand aliases and grown as they come: sized for the
            // bound, the index of a large cache would take its memory at start-up.
            shared: SharedIndex::with(
                usize::try_from(shared_max.min(1024)).unwrap_or(1024),
                shared_max,
                UnitWeighter,
                RandomState::default(),
                Default::default(),
            ),
            at_hand: ThreadLocal::new(),
            at_hand_max,
        }
    }

    /// The cache key remembered for these exact request bytes.
    pub fn get(&self, exact: &CacheKey) -> Option<CacheKey> {
        let mut own = self.own();
        if let Some(key) = own.as_ref().and_then(|own| own.get(exact).copied()) {
            return Some(key);
        }
        let key = self.shared.get(exact)?;
        if let Some(own) = &mut own {
            own.insert(*exact, key);
        }
        Some(key)
    }

    /// Remembers that the request with digest `exact` has the cache key `key`.
    pub fn insert(&self, exact: CacheKey, key: CacheKey) {
        self.shared.insert(exact, key);
        if let Some(mut own) = self.own() {
            own.insert(exact, key);
        }
    }

    /// Aliases in the shared index (each worker's are copies of some of these).
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// Aliases in all: the shared index's and every worker's copies, for the memory they take.
    pub fn held(&self) -> usize {
        self.len() + self.at_hand.iter().map(|i| lock(i).len()).sum::<usize>()
    }

    /// Forgets every alias, the workers' copies too.
    pub fn clear(&self) {
        self.shared.clear();
        for own in self.at_hand.iter() {
            lock(own).clear();
        }
    }

    /// This thread's aliases at hand; `None` when a cache this small keeps none.
    fn own(&self) -> Option<MutexGuard<'_, Own>> {
        if self.at_hand_max == 0 {
            return None;
        }
        Some(lock(self.at_hand.get_or(|| {
            let max = self.at_hand_max;
            CachePadded::new(Mutex::new(Own::with(
                usize::try_from(max).unwrap_or(0),
                max,
                UnitWeighter,
                RandomState::default(),
                Default::default(),
            )))
        })))
    }
}

/// An index whose thread panicked while holding it is still a correct index: an alias is
/// written whole or not at all.
fn lock(own: &Mutex<Own>) -> MutexGuard<'_, Own> {
    own.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u16) -> CacheKey {
        CacheKey::compute(
            "POST",
            "/v1/embeddings",
            &Default::default(),
            &n.to_be_bytes(),
        )
    }

    #[test]
    fn a_worker_finds_the_aliases_another_remembered_and_keeps_them_at_hand() {
        let aliases = Aliases::new(1000, 2);
        assert_eq!(aliases.at_hand_max, AT_HAND);
        aliases.insert(key(0), key(1000));
        assert_eq!(aliases.get(&key(0)), Some(key(1000)));
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(
                    aliases.get(&key(0)),
                    Some(key(1000)),
                    "from the shared index"
                );
                assert_eq!(aliases.get(&key(1)), None);
            });
        });
        // One alias, held by the shared index and each of the two threads.
        assert_eq!((aliases.len(), aliases.held()), (1, 3));
        aliases.clear();
        assert_eq!((aliases.len(), aliases.held()), (0, 0));
        assert_eq!(aliases.get(&key(0)), None);
    }

    #[test]
    fn all_of_them_stay_within_the_bound() {
        let aliases = Aliases::new(100, 2);
        // A quarter of 100 between two threads: 12 each, 76 shared.
        assert_eq!(aliases.at_hand_max, 12);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for n in 0..500 {
                        aliases.insert(key(n), key(n + 1000));
                        assert_eq!(aliases.get(&key(n)), Some(key(n + 1000)));
                    }
                });
            }
        });
        assert!(aliases.held() <= 100, "{}", aliases.held());
        assert_eq!(aliases.get(&key(499)), Some(key(1499)));
        // Too many workers to spare any (a quarter of 128 is under one each at 64): none at
        // hand, and the shared index still answers.
        let spread = Aliases::new(128, 64);
        assert_eq!(spread.at_hand_max, 0);
        spread.insert(key(0), key(1000));
        assert_eq!((spread.get(&key(0)), spread.held()), (Some(key(1000)), 1));
    }
}
