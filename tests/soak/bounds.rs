//! The resource bounds the soak phases assert (README, `make soak` row): open fds and RSS of
//! the proxy between two points of a phase.

use crate::Proc;

/// Open fds may grow by at most this many between two points of a phase: connection pools
/// settle within a few, a leak of one per request or stream shows at once.
pub const MAX_FD_GROWTH: usize = 50;

/// One kibibyte-based figure in MiB, for messages.
fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

/// Checks that open fds grew by at most [`MAX_FD_GROWTH`] from `before` to `after`.
/// Missing figures fail when the proxy is watched (PROXY_PID set).
pub fn fds_within(
    proc: &Proc,
    what: &str,
    before: Option<usize>,
    after: Option<usize>,
) -> Result<(), String> {
    match (before, after) {
        (Some(b), Some(a)) if a > b + MAX_FD_GROWTH => Err(format!(
            "{what}: open fds grew from {b} to {a} (limit +{MAX_FD_GROWTH})"
        )),
        (Some(_), Some(_)) => Ok(()),
        _ if proc.watched() => Err(format!("{what}: open fds could not be read")),
        _ => Ok(()),
    }
}

/// Checks that RSS at `after` is at most `before` × (1 + `fraction`) + `slack_kb`.
/// Missing figures fail when the proxy is watched (PROXY_PID set).
pub fn rss_within(
    proc: &Proc,
    what: &str,
    before: Option<u64>,
    after: Option<u64>,
    fraction: f64,
    slack_kb: u64,
) -> Result<(), String> {
    match (before, after) {
        (Some(b), Some(a)) => {
            let limit = (b as f64 * (1.0 + fraction)) as u64 + slack_kb;
            if a > limit {
                Err(format!(
                    "{what}: RSS {} -> {} (limit {} = +{:.0}% + {})",
                    mib(b),
                    mib(a),
                    mib(limit),
                    fraction * 100.0,
                    mib(slack_kb)
                ))
            } else {
                Ok(())
            }
        }
        _ if proc.watched() => Err(format!("{what}: RSS could not be read")),
        _ => Ok(()),
    }
}
