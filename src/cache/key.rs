//! `CacheKey`: SHA-256 over a length-prefixed encoding of everything that selects a response.
//!
//! The encoding must give the same key for the same request on every machine and every
//! version that keeps `DOMAIN`, so a shared (Redis) tier can use it; change `DOMAIN` whenever
//! the encoding changes. Each part is length-prefixed so that no two different requests can
//! encode to the same bytes. A JSON body is hashed in canonical form (object keys sorted, no
//! insignificant whitespace, values as parsed), so key order and spacing do not split
//! entries; anything else is hashed as raw bytes. The body sent upstream is never rewritten.

use std::fmt;

use actix_web::http::header::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

use super::canonical::canonical_json;

/// Version tag hashed first; bump it when the encoding below changes.
const DOMAIN: &[u8] = b"openai-cache-proxy/key/v2";

/// Request headers that select a different response, hashed in this fixed order.
/// `Authorization` (the caller's API key) keeps callers apart; it is hashed, never stored.
/// `Accept-Encoding` keeps a gzip body away from a client that asked for identity.
/// Ready-made names: looking a header up by `&str` parses the name each time.
pub static KEY_HEADERS: [HeaderName; 6] = [
    HeaderName::from_static("authorization"),
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    HeaderName::from_static("content-type"),
    HeaderName::from_static("accept"),
    HeaderName::from_static("accept-encoding"),
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CacheKey([u8; 32]);

/// A digest's first eight bytes are already uniform: the maps keyed by it (the cache, the
/// alias index, the flights) mix one word through their seeded hasher instead of 32 bytes.
/// Equal keys have equal first words, as `Hash` requires of `Eq`.
impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (word, _) = self.0.split_first_chunk::<8>().expect("32 bytes");
        state.write_u64(u64::from_ne_bytes(*word));
    }
}

impl CacheKey {
    pub fn compute(method: &str, path_and_query: &str, headers: &HeaderMap, body: &[u8]) -> Self {
        KeyHasher::new(method, path_and_query, headers).canonical(body)
    }

    /// Full hex form.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// First 16 hex digits (the `X-Cache-Key` header), without allocating.
    pub fn prefix_hex(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        hex::encode_to_slice(&self.0[..8], &mut out).expect("8 bytes make 16 hex digits");
        out
    }

    /// First 12 hex digits, enough to correlate log lines; reveals nothing useful.
    pub fn short(self) -> ShortKey {
        let mut hex = [0; 12];
        hex::encode_to_slice(&self.0[..6], &mut hex).expect("12 digits for 6 bytes");
        ShortKey(hex)
    }
}

/// A key's first 12 hex digits, kept on the stack (one is logged with every request).
#[derive(Clone, Copy)]
pub struct ShortKey([u8; 12]);

impl ShortKey {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits")
    }
}

impl fmt::Display for ShortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.short())
    }
}

/// Everything of a request but its body, hashed once; the body then goes in either as sent
/// ([`KeyHasher::exact`]) or canonical ([`KeyHasher::canonical`]).
#[derive(Clone)]
pub struct KeyHasher(Sha256);

impl KeyHasher {
    pub fn new(method: &str, path_and_query: &str, headers: &HeaderMap) -> Self {
        // The encoding is gathered first and hashed in one update: a few hundred bytes, and
        // one call instead of some thirty small ones. (A `SmallVec` on the stack instead was
        // 12-15% slower for a 1 KB body in `cargo bench --bench key`: its appends cost more
        // than the allocation they save.)
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(DOMAIN);
        put(&mut buf, method.as_bytes());
        put(&mut buf, path_and_query.as_bytes());
        for name in &KEY_HEADERS {
            let values = headers.get_all(name);
            buf.extend_from_slice(&(values.len() as u64).to_be_bytes());
            for v in values {
                put(&mut buf, v.as_bytes());
            }
        }
        let mut h = Sha256::new();
        h.update(&buf);
        Self(h)
    }

    /// The cache key: a JSON body in canonical form (parsed, keys sorted), anything else raw.
    pub fn canonical(self, body: &[u8]) -> CacheKey {
        let mut h = self.0;
        match canonical_json(body) {
            Some(json) => {
                part(&mut h, b"json");
                part(&mut h, &json);
            }
            None => {
                part(&mut h, b"raw");
                part(&mut h, body);
            }
        }
        CacheKey(h.finalize().into())
    }

    /// A digest of the body exactly as sent, without parsing it: the name under which the
    /// alias index remembers the canonical key of a request seen before. Tagged apart from
    /// both encodings of [`KeyHasher::canonical`], so it never equals a cache key.
    pub fn exact(&self, body: &[u8]) -> CacheKey {
        let mut h = self.0.clone();
        part(&mut h, b"exact");
        part(&mut h, body);
        CacheKey(h.finalize().into())
    }
}

fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn part(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    pub(super) fn key(pairs: &[(&'static str, &'static str)], path: &str, body: &[u8]) -> CacheKey {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        CacheKey::compute("POST", path, &h, body)
    }

    #[test]
    fn keys_that_share_their_first_word_are_still_apart() {
        // The hash reads only the first eight bytes; equality reads all 32.
        let a = CacheKey([7; 32]);
        let mut bytes = [7; 32];
        bytes[31] = 8;
        let b = CacheKey(bytes);
        let mut map = std::collections::HashMap::new();
        map.insert(a, "a");
        map.insert(b, "b");
        assert_eq!((map.len(), map[&a], map[&b]), (2, "a", "b"));
    }

    #[test]
    fn pinned_vectors_never_change() {
        // Computed independently (Python hashlib and json.dumps(sort_keys=True,
        // separators=(',', ':'), ensure_ascii=False) over the same encoding). If this fails,
        // the encoding changed: bump DOMAIN, then update the vectors.
        assert_eq!(
            key(&[], "/v1/embeddings", b"").to_hex(),
            "05f25208e722f70fe2f68fff837f795d555cb815be444775bd1ef914e4da3955"
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
            "754c6b3b7358515aa05675d03c8b9bf8c91c214e10b7b8c4424b67b4a29932d1"
        );
        assert_eq!(
            key(
                &[("authorization", "Bearer sk-a")],
                "/v1/chat/completions",
                r#"{ "z": [3, {"b": "é", "a": null}], "a": true }"#.as_bytes()
            )
            .to_hex(),
            "2bf6185629229e0c2e438eaff5d30f4944719667c93a2bdf9191ed3829a0f60f"
        );
    }

    #[test]
    fn exact_digests_follow_the_bytes_and_never_equal_a_key() {
        let h = HeaderMap::new();
        let hasher = KeyHasher::new("POST", "/v1/embeddings", &h);
        let (a, b) = (&br#"{"a":1,"b":2}"#[..], &br#"{"b":2,"a":1}"#[..]);
        assert_eq!(hasher.exact(a), hasher.exact(a));
        assert_ne!(hasher.exact(a), hasher.exact(b));
        assert_eq!(hasher.clone().canonical(a), hasher.clone().canonical(b));
        for body in [a, b, b"not json", b""] {
            assert_ne!(hasher.exact(body), hasher.clone().canonical(body));
        }
    }

    #[test]
    fn json_objects_are_canonicalised_with_sorted_keys() {
        // Fails if a dependency turns on serde_json's `preserve_order`.
        let v: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"d":2,"c":3}}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"a":{"c":3,"d":2},"b":1}"#
        );
        let p = "/v1/chat/completions";
        assert_eq!(
            key(&[], p, br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#),
            key(&[], p, b"{\n  \"messages\" : [ {\"content\":\"hi\", \"role\":\"user\"} ],\n  \"model\":\"m\"\n}")
        );
        // Array order, value types and string contents still matter.
        assert_ne!(
            key(&[], p, br#"{"a":[1,2]}"#),
            key(&[], p, br#"{"a":[2,1]}"#)
        );
        assert_ne!(key(&[], p, br#"{"a":1}"#), key(&[], p, br#"{"a":"1"}"#));
        assert_ne!(key(&[], p, br#"{"a":1}"#), key(&[], p, br#"{"a":1.0}"#));
        assert_ne!(key(&[], p, br#"{"a":"x "}"#), key(&[], p, br#"{"a":"x"}"#));
        // Invalid JSON is hashed raw, so its spacing matters.
        assert_ne!(key(&[], p, b"{not json"), key(&[], p, b"{not  json"));
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

#[cfg(test)]
mod properties;
