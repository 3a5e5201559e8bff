//! A circuit breaker for Redis: after [`FAILURES_TO_OPEN`] failed calls in a row, Redis is
//! skipped for [`COOLDOWN`]; then one call is let through to probe it again.

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
    open_until: Option<Instant>,
}

impl Breaker {
    /// Whether a call may go to Redis now. While open, `false`; once the cooldown is over,
    /// calls go through again (a failure reopens it at once, a success closes it).
    pub fn allows(&self) -> bool {
        let state = self.state.lock().expect("breaker lock");
        state.open_until.is_none_or(|until| Instant::now() >= until)
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

    /// Returns true when this failure opened the breaker.
    pub fn failure(&self) -> bool {
        let mut state = self.state.lock().expect("breaker lock");
        state.failures = state.failures.saturating_add(1);
        if state.failures >= FAILURES_TO_OPEN {
            let opened = state.open_until.is_none_or(|u| Instant::now() >= u);
            state.open_until = Some(Instant::now() + COOLDOWN);
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
}
