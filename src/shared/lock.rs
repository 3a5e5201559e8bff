//! Cross-instance coalescing: the instance that misses first takes a short lock for the key
//! in Redis (`SET NX PX`); a sibling that misses the same key meanwhile waits, for at most
//! REDIS_COALESCE_WAIT, for the answer to appear in L2 instead of calling the upstream too.
//! Any doubt (Redis failing, the lock gone without an entry, the wait over) means calling
//! the upstream, as without Redis.

use std::sync::Arc;
use std::time::Duration;

use super::{SharedTier, codec};
use crate::cache::{CacheKey, CachedResponse};

/// How often a waiting sibling looks for the entry (and for the lock).
const POLL: Duration = Duration::from_millis(25);

/// Deletes the lock only if it still holds our token: after it expired, another instance
/// may hold a lock of its own under the same name.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What claiming a key's lock found.
pub enum Claim {
    /// This instance calls the upstream; others wait until the guard is dropped.
    Ours(LockGuard),
    /// Another instance is calling the upstream for this key.
    Sibling,
    /// Redis could not say: call the upstream.
    Unknown,
}

/// Holds a key's lock; dropping it releases the lock (in the background).
pub struct LockGuard {
    tier: Arc<SharedTier>,
    lock: String,
    token: String,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let tier = self.tier.clone();
        let lock = std::mem::take(&mut self.lock);
        let token = std::mem::take(&mut self.token);
        actix_web::rt::spawn(async move {
            let _: Option<u64> = tier
                .bounded(tier.timeout, |mut conn| {
                    let mut release = tier.release.key(lock);
                    release.arg(token);
                    async move { release.invoke_async(&mut conn).await }
                })
                .await;
        });
    }
}

impl SharedTier {
    fn lock_key(&self, key: CacheKey) -> String {
        format!("{}lock:{}", self.prefix, key.to_hex())
    }

    /// Tries to take `key`'s lock for `hold` (the longest a sibling would wait anyway).
    pub async fn claim(self: &Arc<Self>, key: CacheKey, hold: Duration) -> Claim {
        let lock = self.lock_key(key);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let cmd = redis::cmd("SET")
            .arg(&lock)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1))
            .to_owned();
        let taken: Option<Option<String>> = self.call(&cmd).await;
        match taken {
            Some(Some(_)) => Claim::Ours(LockGuard {
                tier: self.clone(),
                lock,
                token,
            }),
            Some(None) => Claim::Sibling,
            None => Claim::Unknown,
        }
    }

    /// Waits up to `wait` for the sibling holding `key`'s lock to store its answer. `None`
    /// when the wait is over, the lock went away without an entry (the answer was not
    /// storable, or the sibling failed), or Redis stopped answering.
    pub async fn await_sibling(&self, key: CacheKey, wait: Duration) -> Option<CachedResponse> {
        self.counters.sibling_waits.inc();
        let entry = self.key(key);
        let lock = self.lock_key(key);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::time::sleep_until((tokio::time::Instant::now() + POLL).min(deadline)).await;
            let value: Option<Vec<u8>> = self.call(redis::cmd("GET").arg(&entry)).await?;
            if let Some(found) = value.as_deref().and_then(codec::decode) {
                self.counters.l2_hits.inc();
                return Some(found);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            let held: bool = self.call(redis::cmd("EXISTS").arg(&lock)).await?;
            if !held {
                // Released just after storing: look once more.
                let value: Option<Vec<u8>> = self.call(redis::cmd("GET").arg(&entry)).await?;
                let found = value.as_deref().and_then(codec::decode)?;
                self.counters.l2_hits.inc();
                return Some(found);
            }
        }
    }
}
