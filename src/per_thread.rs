//! A counter that each thread adds to in a cache line of its own, summed when it is read.
//!
//! Every hit adds to the request counter and to its model's savings: five or six additions
//! per hit. In one shared `AtomicU64` each is a locked instruction on a cache line the other
//! worker wrote last, so the two workers pass those lines back and forth on every hit.
//! [`PerThread`] gives each thread its own line (`thread_local` finds it, `CachePadded`
//! keeps the neighbours off it), where an addition is a plain load and store: only the
//! owning thread ever writes it. Reading (`/stats`, `/metrics`) sums every thread's line.
//!
//! It plugs into `prometheus_client`'s [`Counter`](prometheus_client::metrics::counter::Counter)
//! as its atomic, like `AtomicU64` does, for `u64` (`Counter<u64, PerThread>`) and for `f64`
//! kept as bits (`Counter<f64, PerThread>`); one counter is only ever used as one of the two.
//! A thread's share outlives the thread: `thread_local` hands a finished thread's slot to the
//! next thread that gets its id, so nothing counted is lost.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_utils::CachePadded;
use prometheus_client::metrics::counter::Atomic;
use thread_local::ThreadLocal;

#[derive(Debug, Default)]
pub struct PerThread(ThreadLocal<CachePadded<AtomicU64>>);

impl PerThread {
    /// Sets this thread's slot to `add(its value)`, returning the value before. A load and a
    /// store, not a read-modify-write: no other thread writes this slot.
    fn update(&self, add: impl FnOnce(u64) -> u64) -> u64 {
        let slot = self.0.get_or_default();
        let before = slot.load(Relaxed);
        slot.store(add(before), Relaxed);
        before
    }

    fn slots(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().map(|slot| slot.load(Relaxed))
    }
}

/// `inc` and `inc_by` return this thread's share before the addition, not the total.
impl Atomic<u64> for PerThread {
    fn inc(&self) -> u64 {
        self.inc_by(1)
    }

    fn inc_by(&self, v: u64) -> u64 {
        self.update(|n| n.wrapping_add(v))
    }

    fn get(&self) -> u64 {
        self.slots().fold(0, u64::wrapping_add)
    }
}

/// `inc` and `inc_by` return this thread's share before the addition, not the total.
impl Atomic<f64> for PerThread {
    fn inc(&self) -> f64 {
        self.inc_by(1.0)
    }

    fn inc_by(&self, v: f64) -> f64 {
        f64::from_bits(self.update(|bits| (f64::from_bits(bits) + v).to_bits()))
    }

    fn get(&self) -> f64 {
        self.slots().map(f64::from_bits).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn every_threads_additions_are_in_the_sum() {
        let count = Counter::<u64, PerThread>::default();
        let usd = Counter::<f64, PerThread>::default();
        let threads = 4;
        // All alive at once, so each has a thread id (and a slot) of its own.
        let together = Arc::new(Barrier::new(threads));
        std::thread::scope(|s| {
            for t in 0..threads {
                let (count, usd, together) = (&count, &usd, Arc::clone(&together));
                s.spawn(move || {
                    together.wait();
                    for _ in 0..1000 {
                        count.inc();
                    }
                    count.inc_by(t as u64);
                    usd.inc_by(0.5);
                    together.wait();
                });
            }
        });
        assert_eq!(count.get(), 4000 + 1 + 2 + 3);
        assert!(
            count.inner().0.iter().count() >= threads,
            "a slot per thread"
        );
        assert_eq!(usd.get(), 2.0);
        // A thread started after those ended keeps adding to what they left.
        std::thread::spawn(move || {
            count.inc();
            usd.inc_by(0.25);
            assert_eq!((count.get(), usd.get()), (4007, 2.25));
        })
        .join()
        .unwrap();
    }
}
