//! The shared rate limit: one GCRA token bucket per client, in Redis, across all instances.

use std::net::IpAddr;
use std::time::Duration;

use super::SharedTier;

/// The token bucket as a GCRA ("theoretical arrival time") in one atomic script: KEYS[1] the
/// client's key, ARGV[1] the emission interval in ms, ARGV[2] the burst. Returns
/// {allowed 0/1, remaining, retry after ms}. Uses the server's clock, so instances agree.
pub(super) const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local used = new_tat - now
local limit = interval * burst
if used > limit then
  return {0, 0, used - limit}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil(used)))
return {1, math.floor((limit - used) / interval), 0}
";

/// What the shared limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed { remaining: u64 },
    Refused { retry_after: Duration },
}

impl SharedTier {
    /// One request from `ip` against the shared bucket: `per_minute` with a burst of the same
    /// size. `None` when Redis could not decide (the caller uses its local limiter).
    pub async fn rate_limit(&self, ip: IpAddr, per_minute: u32) -> Option<Decision> {
        let interval_ms = 60_000.0 / f64::from(per_minute.max(1));
        let key = format!("{}rl:{ip}", self.prefix);
        let (allowed, remaining, retry_ms): (u64, u64, u64) = self
            .bounded(self.timeout, |mut conn| {
                let mut invocation = self.gcra.key(key);
                invocation.arg(interval_ms).arg(per_minute);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Some(if allowed == 1 {
            Decision::Allowed { remaining }
        } else {
            Decision::Refused {
                retry_after: Duration::from_millis(retry_ms),
            }
        })
    }
}
