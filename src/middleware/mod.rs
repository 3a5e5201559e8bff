//! Request middleware, each a plain `from_fn` async function.

mod access_log;
mod rate_limit;

pub use access_log::{ConnNotes, RequestOutcome, access_log};
pub use rate_limit::{Limiter, new_limiter, prune_idle, rate_limit};
