//! The response cache: what is stored, when a request or response may use it, and how hits look.

mod key;
mod policy;
mod store;

use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use bytes::Bytes;

pub use key::{CacheKey, KEY_HEADERS};
pub use policy::{NoCacheReason, request_policy, response_policy};
pub use store::CacheStore;

/// A complete upstream response as it was received, replayed byte for byte on a hit.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    pub status: StatusCode,
    /// End-to-end headers minus `Set-Cookie` and `Content-Length` (recomputed on replay).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored_at: SystemTime,
}

impl CachedResponse {
    /// Bytes this entry costs the cache: body, headers and a fixed overhead per entry.
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        (self.body.len() + headers + 64) as u64
    }
}

/// What the cache did for one request: the single source of the `X-Cache` value, the log
/// field and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache; the upstream was not contacted.
    Hit,
    /// Looked up, not found, forwarded; stored if the response qualified.
    Miss,
    /// The cache was not used for this request (see `NoCacheReason`).
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
        }
    }
}
