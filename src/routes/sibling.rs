//! A cacheable miss that another instance is already fetching: wait for its answer in the
//! shared tier rather than call the upstream too (README: "Running several instances").

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use crate::cache::{CacheKey, CachedResponse};
use crate::shared::{Claim, LockGuard};
use crate::startup::AppState;

pub enum Sibling {
    /// A sibling's answer, now in this instance's L1 too.
    Answered(Arc<CachedResponse>),
    /// This instance fetches it; siblings wait until the guard is dropped.
    Locked(LockGuard),
    /// Fetch it without telling anyone: no Redis, coalescing off, a stream, Redis failing,
    /// or a sibling that did not answer in time.
    Alone,
}

/// Claims `key` for this instance's flight, or waits for the sibling that holds it. While
/// waiting, this instance's own followers of the flight wait too; when the answer comes the
/// leader ends the flight unanswered and they find it in L1.
pub async fn wait_or_lock(key: CacheKey, body: &Bytes, state: &AppState) -> Sibling {
    let (Some(tier), Some(redis)) = (&state.shared, &state.config.redis) else {
        return Sibling::Alone;
    };
    // A stream's client wants its first bytes now, not the whole answer later.
    if redis.coalesce_wait.is_zero() || asks_for_stream(body) {
        return Sibling::Alone;
    }
    match tier.claim(key, redis.coalesce_wait).await {
        // A sibling stores its answer before it releases the lock, so one that stored and
        // released after this instance's look in Redis missed left the answer there: look once
        // more before calling the upstream (dropping the guard releases the lock).
        Claim::Ours(guard) => match tier.get_again(key).await {
            Some(entry) => Sibling::Answered(state.cache.fill(key, entry)),
            None => Sibling::Locked(guard),
        },
        Claim::Unknown => Sibling::Alone,
        Claim::Sibling => match tier.await_sibling(key, redis.coalesce_wait).await {
            Some(entry) => Sibling::Answered(state.cache.fill(key, entry)),
            None => Sibling::Alone,
        },
    }
}

/// `"stream": true` at the top of a JSON body.
fn asks_for_stream(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Flag {
        #[serde(default)]
        stream: bool,
    }
    serde_json::from_slice::<Flag>(body).is_ok_and(|f| f.stream)
}
