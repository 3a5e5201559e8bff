//! The response cache: what is stored, when a request or response may use it, and how hits look.

mod aliases;
mod canonical;
mod flight;
mod key;
mod policy;
mod store;

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use actix_web::http::StatusCode;
use actix_web::http::header::{AGE, HeaderName, HeaderValue};
use bytes::Bytes;

use crate::headers::{
    CACHE_STATUS, X_CACHE, X_CACHE_KEY, X_CACHE_TIMESTAMP, X_PROXY, X_REQUEST_ID,
};
use crate::savings::{ModelSavings, Savings, TokenUsage};

pub use flight::{End, Flight, Flights, Head, Reader, Role, broken_off};
pub use key::{CacheKey, KEY_HEADERS, KeyHasher, ShortKey};
pub use policy::{BodyKind, Directives, NoCacheReason, request_policy, response_policy};
pub use store::CacheStore;

/// A complete upstream response as it was received, replayed byte for byte on a hit.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    pub status: StatusCode,
    /// End-to-end headers minus `Set-Cookie` and `Content-Length` (recomputed on replay), in
    /// arrival order. A plain list: a `HeaderMap` costs ~200 bytes per name even when empty.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub stored_at: SystemTime,
    /// `stored_at` as the RFC 3339 `X-Cache-Timestamp` value, formatted once at store time.
    pub timestamp: HeaderValue,
    /// Model and token usage the answer reported, for the savings ledger: read from the body
    /// on the entry's first hit (see [`Tokens`]), then kept.
    usage: OnceLock<Option<TokenUsage>>,
    /// The ledger's counters for that model, looked up on the first hit that counts.
    counters: OnceLock<Arc<ModelSavings>>,
    event_stream: bool,
}

/// The headers every hit gets from the proxy (`replay`, `access_log`), never stored with an
/// entry: so a hit adds them without looking for one to replace.
static SET_ON_HIT: [&HeaderName; 7] = [
    &AGE,
    &X_CACHE,
    &X_CACHE_TIMESTAMP,
    &CACHE_STATUS,
    &X_CACHE_KEY,
    &X_PROXY,
    &X_REQUEST_ID,
];

/// Where an entry's token usage comes from.
#[derive(Debug, Clone)]
pub enum Tokens {
    /// Already read: a body without a length, parsed to check that it is complete, or an
    /// entry from the shared tier.
    Known(Option<TokenUsage>),
    /// Read from the body on the first hit (an event stream when `event_stream`). Only hits
    /// need it, and a forwarded answer is then not held up by a parse of its whole body.
    OnFirstHit { event_stream: bool },
}

impl CachedResponse {
    pub fn new(
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        tokens: Tokens,
    ) -> Self {
        Self::stored_at(status, headers, body, tokens, SystemTime::now())
    }

    /// An entry stored at `stored_at` (one read back from the shared tier keeps its age).
    pub fn stored_at(
        status: StatusCode,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        tokens: Tokens,
        stored_at: SystemTime,
    ) -> Self {
        let (usage, event_stream) = match tokens {
            Tokens::Known(usage) => (OnceLock::from(usage), false),
            Tokens::OnFirstHit { event_stream } => (OnceLock::new(), event_stream),
        };
        let stamp = humantime::format_rfc3339_seconds(stored_at).to_string();
        headers.retain(|(name, _)| !SET_ON_HIT.contains(&name));
        Self {
            status,
            headers,
            body,
            stored_at,
            timestamp: HeaderValue::try_from(stamp).expect("RFC 3339 is a valid header value"),
            usage,
            counters: OnceLock::new(),
            event_stream,
        }
    }

    /// The model and token usage this answer reported, if any.
    pub fn usage(&self) -> Option<&TokenUsage> {
        self.usage
            .get_or_init(|| TokenUsage::of_response(&self.body, self.event_stream))
            .as_ref()
    }

    /// Adds what this hit spared to the ledger, if the answer reported its usage.
    pub fn count_savings(&self, savings: &Savings) {
        if let Some(usage) = self.usage() {
            self.counters
                .get_or_init(|| savings.counters(&usage.model))
                .add(usage);
        }
    }
}

impl CachedResponse {
    /// Bytes this entry costs in memory, so that MAX_CACHE_SIZE bounds memory and not just
    /// bodies: the body, each header (its bytes plus ~100 bytes of name, value and list
    /// slot), ~400 bytes for the entry itself (this struct, its `Arc`, the key and
    /// moka's bookkeeping for it), and the model name's allocation once usage is read.
    pub fn weight(&self) -> u64 {
        const PER_HEADER: usize = 100;
        const PER_ENTRY: usize = 400;
        // Room for a model name read on the first hit: OpenAI's, fine-tunes included, are
        // shorter than this.
        const MODEL_NAME: usize = 64;
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + PER_HEADER)
            .sum();
        let usage = match self.usage.get() {
            Some(known) => known.as_ref().map_or(0, |u| u.model.len() + 48),
            None => MODEL_NAME + 48,
        };
        (self.body.len() + headers + usage + PER_ENTRY) as u64
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
    /// An identical request was already in flight; this one read its response.
    Coalesced,
    /// The cache was not used for this request (see `NoCacheReason`).
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Coalesced => "COALESCED",
            Self::Bypass => "BYPASS",
        }
    }
}

impl CachedResponse {
    /// Seconds since the entry was stored.
    pub fn age_secs(&self) -> u64 {
        SystemTime::now()
            .duration_since(self.stored_at)
            .unwrap_or_default()
            .as_secs()
    }
}

/// Why a cacheable request went to the upstream (RFC 9211 `fwd` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Nothing stored.
    Miss,
    /// The client said `no-cache`.
    Request,
    /// The stored entry was older than the client's `max-age`.
    Stale,
}

/// [`cache_status_header`] for a hit, built without the formatting machinery: it is on the
/// hit path.
pub fn hit_cache_status(ttl_left: u64) -> HeaderValue {
    const PREFIX: &[u8] = b"openai-cache-proxy; hit; ttl=";
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(ttl_left).as_bytes();
    // Assembled on the stack and copied once into the value (20 digits at most).
    let mut value = [0u8; PREFIX.len() + 20];
    value[..PREFIX.len()].copy_from_slice(PREFIX);
    value[PREFIX.len()..][..digits.len()].copy_from_slice(digits);
    HeaderValue::from_bytes(&value[..PREFIX.len() + digits.len()]).expect("ASCII text and digits")
}

/// The `Age` value. `HeaderValue::from(u64)` goes through `fmt::Write` into a growable buffer
/// (357 instructions per hit under callgrind); this formats on the stack and copies once.
pub fn age_header(age: u64) -> HeaderValue {
    HeaderValue::from_str(itoa::Buffer::new().format(age)).expect("digits")
}

/// [`cache_status_header`] for a forwarded (MISS) or shared (COALESCED) answer: one of a few
/// fixed values, so a ready-made one instead of a formatted string on every forward.
pub fn forwarded_cache_status(status: CacheStatus, forward: Forward, stored: bool) -> HeaderValue {
    let value = match (status, forward, stored) {
        (CacheStatus::Coalesced, Forward::Miss, _) => "openai-cache-proxy; fwd=miss; collapsed",
        (CacheStatus::Coalesced, Forward::Request, _) => {
            "openai-cache-proxy; fwd=request; collapsed"
        }
        (CacheStatus::Coalesced, Forward::Stale, _) => "openai-cache-proxy; fwd=stale; collapsed",
        (_, Forward::Miss, true) => "openai-cache-proxy; fwd=miss; stored",
        (_, Forward::Request, true) => "openai-cache-proxy; fwd=request; stored",
        (_, Forward::Stale, true) => "openai-cache-proxy; fwd=stale; stored",
        (_, Forward::Miss, false) => "openai-cache-proxy; fwd=miss",
        (_, Forward::Request, false) => "openai-cache-proxy; fwd=request",
        (_, Forward::Stale, false) => "openai-cache-proxy; fwd=stale",
    };
    HeaderValue::from_static(value)
}

/// The `Cache-Status` header value (RFC 9211) for a response.
pub fn cache_status_header(
    status: CacheStatus,
    forward: Forward,
    stored: bool,
    ttl_left: Option<u64>,
    reason: Option<NoCacheReason>,
) -> String {
    const NAME: &str = "openai-cache-proxy";
    let fwd = match forward {
        Forward::Miss => "miss",
        Forward::Request => "request",
        Forward::Stale => "stale",
    };
    match status {
        CacheStatus::Hit => format!("{NAME}; hit; ttl={}", ttl_left.unwrap_or(0)),
        CacheStatus::Miss if stored => format!("{NAME}; fwd={fwd}; stored"),
        CacheStatus::Miss => format!("{NAME}; fwd={fwd}"),
        CacheStatus::Coalesced => format!("{NAME}; fwd={fwd}; collapsed"),
        CacheStatus::Bypass => match reason {
            Some(NoCacheReason::ClientNoStore) => format!("{NAME}; fwd=request; detail=no-store"),
            Some(r) => format!("{NAME}; fwd=bypass; detail={}", r.as_str()),
            None => format!("{NAME}; fwd=bypass"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hit_status_matches_the_general_form() {
        for ttl in [0, 7, 299, u64::MAX] {
            let general =
                cache_status_header(CacheStatus::Hit, Forward::Miss, false, Some(ttl), None);
            assert_eq!(hit_cache_status(ttl), general.as_str());
        }
    }

    #[test]
    fn the_forwarded_status_matches_the_general_form() {
        for status in [CacheStatus::Miss, CacheStatus::Coalesced] {
            for forward in [Forward::Miss, Forward::Request, Forward::Stale] {
                for stored in [false, true] {
                    let general = cache_status_header(status, forward, stored, None, None);
                    assert_eq!(
                        forwarded_cache_status(status, forward, stored),
                        general.as_str(),
                        "{status:?} {forward:?} stored={stored}"
                    );
                }
            }
        }
    }

    #[test]
    fn usage_is_read_from_the_body_on_first_use_and_kept() {
        let entry = |body: &'static [u8], event_stream| {
            CachedResponse::new(
                StatusCode::OK,
                Vec::new(),
                Bytes::from_static(body),
                Tokens::OnFirstHit { event_stream },
            )
        };
        let json = entry(
            br#"{"model":"m","usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            false,
        );
        let unread = json.weight();
        let usage = json.usage().expect("usage");
        assert_eq!(
            (&*usage.model, usage.prompt, usage.completion, usage.total),
            ("m", 3, 4, 7)
        );
        // The same value every time; the weight charged before reading covers what it holds.
        assert!(std::ptr::eq(usage, json.usage().expect("usage")));
        assert!(json.weight() <= unread);

        let stream = entry(
            b"data: {\"model\":\"s\",\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\ndata: [DONE]\n\n",
            true,
        );
        assert_eq!(stream.usage().map(|u| u.total), Some(3));
        assert!(entry(br#"{"object":"list"}"#, false).usage().is_none());
        assert!(entry(b"not json", false).usage().is_none());
    }
}
