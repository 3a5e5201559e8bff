//! A circuit breaker for Redis: after [`FAILURES_TO_OPEN`] failed calls in a row, Redis is
//! skipped for [`COOLDOWN`]; then one call at a time is let through to probe it (half-open).
//! The probe's success closes the breaker; its failure opens it for another cooldown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FAILURES_TO_OPEN: u32 = 3;
pub const COOLDOWN: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    /// Open (or half-open with a probe out) until then; `None` when closed.
    open_until: Option<Instant>,
}

impl Breaker {
    /// Whether a call may go to Redis now: always while closed; never while open; once the
    /// cooldown is over, to exactly one caller, the probe. Letting it through rearms the
    /// cooldown, so the others keep skipping Redis until the probe reports, and a probe that
    /// never reports (its caller went away) is replaced one cooldown later.
    pub fn allows(&self) -> bool {
        self.allows_at(Instant::now())
    }

    fn allows_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        match state.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) => {
                state.open_until = Some(now + COOLDOWN);
                true
            }
        }
    }

    /// Redis is not answering now (open), or the last calls failed.
    pub fn degraded(&self) -> bool {
        let state = self.state.lock().expect("breaker lock");
        state.failures > 0
    }

    pub fn success(&self) {
        let mut state = self.state.lock().expect("breaker lock");
        state.failures = 0;
        state.open_until = None;
    }

    /// Returns true when this failure opened the breaker (it was closed before).
    pub fn failure(&self) -> bool {
        self.failure_at(Instant::now())
    }

    fn failure_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        state.failures = state.failures.saturating_add(1);
        if state.failures >= FAILURES_TO_OPEN {
            let opened = state.open_until.is_none();
            state.open_until = Some(now + COOLDOWN);
            return opened;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_repeated_failures_and_closes_on_success() {
        let b = Breaker::default();
        assert!(b.allows() && !b.degraded());
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.allows() && b.degraded());
        assert!(b.failure(), "the third failure opens it");
        assert!(!b.allows());
        b.success();
        assert!(b.allows() && !b.degraded());
    }

    #[test]
    fn after_the_cooldown_one_probe_at_a_time_goes_through() {
        let b = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..FAILURES_TO_OPEN {
            b.failure_at(t0);
        }
        assert!(!b.allows_at(t0 + COOLDOWN / 2), "open");
        let after = t0 + COOLDOWN;
        assert!(b.allows_at(after), "the probe");
        assert!(
            !b.allows_at(after),
            "a second caller while the probe is out"
        );
        assert!(!b.allows_at(after + COOLDOWN / 2));

        // The probe fails: open again for a whole cooldown, then one more probe.
        assert!(
            !b.failure_at(after),
            "already open: not reported as opening"
        );
        assert!(!b.allows_at(after + COOLDOWN / 2));
        assert!(b.allows_at(after + COOLDOWN));
        assert!(!b.allows_at(after + COOLDOWN));

        // This probe succeeds: closed, everyone goes through.
        b.success();
        assert!(b.allows_at(after + COOLDOWN) && b.allows_at(after + COOLDOWN));
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_a_cooldown() {
        let b = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..FAILURES_TO_OPEN {
            b.failure_at(t0);
        }
        assert!(
            b.allows_at(t0 + COOLDOWN),
            "a probe, whose caller then goes away"
        );
        assert!(!b.allows_at(t0 + COOLDOWN + COOLDOWN / 2));
        assert!(b.allows_at(t0 + COOLDOWN * 2), "the next probe");
    }
}
