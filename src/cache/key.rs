//! `CacheKey`: SHA-256 over a length-prefixed encoding of everything that selects a response.
//!
//! The encoding must give the same key for the same request on every machine and every
//! version that keeps `DOMAIN`, so a shared (Redis) tier can use it; change `DOMAIN` whenever
//! the encoding changes. Each part is length-prefixed so that no two different requests can
//! encode to the same bytes.

use std::fmt;

use actix_web::http::header::HeaderMap;
use sha2::{Digest, Sha256};

/// Version tag hashed first; bump it when the encoding below changes.
const DOMAIN: &[u8] = b"openai-cache-proxy/key/v1";

/// Request headers that select a different response, hashed in this fixed order.
/// `Authorization` (the caller's API key) keeps callers apart; it is hashed, never stored.
/// `Accept-Encoding` keeps a gzip body away from a client that asked for identity.
pub const KEY_HEADERS: &[&str] = &[
    "authorization",
    "openai-organization",
    "openai-project",
    "content-type",
    "accept",
    "accept-encoding",
];

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    pub fn compute(method: &str, path_and_query: &str, headers: &HeaderMap, body: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        part(&mut h, method.as_bytes());
        part(&mut h, path_and_query.as_bytes());
        for name in KEY_HEADERS {
            let values: Vec<&[u8]> = headers.get_all(*name).map(|v| v.as_bytes()).collect();
            h.update((values.len() as u64).to_be_bytes());
            for v in values {
                part(&mut h, v);
            }
        }
        part(&mut h, body);
        Self(h.finalize().into())
    }

    /// Full hex form.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// First 12 hex digits, enough to correlate log lines; reveals nothing useful.
    pub fn short(self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.short())
    }
}

fn part(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn key(pairs: &[(&'static str, &'static str)], path: &str, body: &[u8]) -> CacheKey {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        CacheKey::compute("POST", path, &h, body)
    }

    #[test]
    fn pinned_vectors_never_change() {
        // Computed independently (Python hashlib over the same encoding). If this fails, the
        // encoding changed: bump DOMAIN, then update the vectors.
        assert_eq!(
            key(&[], "/v1/embeddings", b"").to_hex(),
            "6c50709ba3bb628dbb5c5304add042f9aef18b827351e0e2ab73560e87beb7c5"
        );
        assert_eq!(
            key(
                &[
                    ("authorization", "Bearer sk-a"),
                    ("content-type", "application/json")
                ],
                "/v1/chat/completions",
                br#"{"model":"gpt-4o-mini","messages":[]}"#
            )
            .to_hex(),
            "ae72fd4e1204d61cedbd88467bd41958318b081064b88b700b6cbe7725fe9dea"
        );
    }

    #[test]
    fn every_part_selects_a_different_key() {
        let base = key(&[("authorization", "Bearer a")], "/v1/embeddings", b"x");
        assert_ne!(
            base,
            key(&[("authorization", "Bearer b")], "/v1/embeddings", b"x")
        );
        assert_ne!(
            base,
            key(&[("authorization", "Bearer a")], "/v1/embeddings?q=1", b"x")
        );
        assert_ne!(
            base,
            key(&[("authorization", "Bearer a")], "/v1/embeddings", b"y")
        );
        assert_ne!(
            base,
            key(
                &[("authorization", "Bearer a"), ("accept-encoding", "gzip")],
                "/v1/embeddings",
                b"x"
            )
        );
        // Headers outside the allow-list do not split entries.
        assert_eq!(
            base,
            key(
                &[("authorization", "Bearer a"), ("user-agent", "sdk")],
                "/v1/embeddings",
                b"x"
            )
        );
    }

    #[test]
    fn length_prefixes_keep_boundaries_apart() {
        assert_ne!(key(&[], "/v1/a", b"bc"), key(&[], "/v1/ab", b"c"));
        // A header value cannot impersonate the next header either.
        assert_ne!(
            key(
                &[("openai-organization", "o"), ("openai-project", "p")],
                "/v1/x",
                b""
            ),
            key(&[("openai-organization", "op")], "/v1/x", b"")
        );
    }
}
