//! The value of a cache entry in Redis: a compact, versioned binary encoding of a
//! [`CachedResponse`], decoded defensively (anything corrupt, truncated or foreign is `None`).
//!
//! Layout (integers big-endian): `OCP1` · status u16 · stored_at ms since the Unix epoch u64 ·
//! header count u16 · per header: name length u16, name, value length u32, value · usage flag
//! u8 (0 or 1) · if 1: model length u16, model, prompt u64, completion u64, total u64 · body
//! length u32 · body. Nothing may follow.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use bytes::{BufMut, Bytes};

use crate::cache::{CachedResponse, Tokens};
use crate::savings::TokenUsage;

const MAGIC: &[u8; 4] = b"OCP1";

/// How far ahead of this instance's clock another instance's may be.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

pub fn encode(entry: &CachedResponse) -> Vec<u8> {
    let headers: usize = entry
        .headers
        .iter()
        .map(|(n, v)| 6 + n.as_str().len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(64 + headers + entry.body.len());
    out.put_slice(MAGIC);
    out.put_u16(entry.status.as_u16());
    let stored_ms = entry
        .stored_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    out.put_u64(u64::try_from(stored_ms).unwrap_or(u64::MAX));
    out.put_u16(u16::try_from(entry.headers.len()).unwrap_or(u16::MAX));
    for (name, value) in entry.headers.iter().take(u16::MAX as usize) {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    match entry.usage() {
        Some(u) if u.model.len() <= u16::MAX as usize => {
            out.put_u8(1);
            out.put_u16(u.model.len() as u16);
            out.put_slice(u.model.as_bytes());
            out.put_u64(u.prompt);
            out.put_u64(u.completion);
            out.put_u64(u.total);
        }
        _ => out.put_u8(0),
    }
    out.put_u32(u32::try_from(entry.body.len()).unwrap_or(u32::MAX));
    out.put_slice(&entry.body);
    out
}

/// A reader that fails (returns `None`) instead of reading past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

pub fn decode(value: &[u8]) -> Option<CachedResponse> {
    let mut r = Reader(value);
    if r.take(4)? != MAGIC {
        return None;
    }
    let status = StatusCode::from_u16(r.u16()?).ok()?;
    let stored_at = UNIX_EPOCH.checked_add(Duration::from_millis(r.u64()?))?;
    // Stored in the future (beyond clock skew between instances) is not an entry of ours;
    // such a date may not even print as RFC 3339.
    if stored_at > SystemTime::now() + MAX_CLOCK_SKEW {
        return None;
    }
    let count = r.u16()? as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = r.u16()? as usize;
        let name = HeaderName::from_bytes(r.take(n)?).ok()?;
        let n = r.u32()? as usize;
        let value = HeaderValue::from_bytes(r.take(n)?).ok()?;
        headers.push((name, value));
    }
    let usage = match r.u8()? {
        0 => None,
        1 => {
            let n = r.u16()? as usize;
            let model = std::str::from_utf8(r.take(n)?).ok()?;
            Some(TokenUsage {
                model: model.into(),
                prompt: r.u64()?,
                completion: r.u64()?,
                total: r.u64()?,
            })
        }
        _ => return None,
    };
    let n = r.u32()? as usize;
    let body = Bytes::copy_from_slice(r.take(n)?);
    if !r.0.is_empty() {
        return None;
    }
    Some(CachedResponse::stored_at(
        status,
        headers,
        body,
        Tokens::Known(usage),
        stored_at,
    ))
}

/// Milliseconds an entry stored at `stored_at` has left of `ttl` (0 when it is due).
pub fn ttl_left(stored_at: SystemTime, ttl: Duration) -> Duration {
    ttl.saturating_sub(stored_at.elapsed().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> CachedResponse {
        CachedResponse::new(
            StatusCode::OK,
            vec![
                (
                    HeaderName::from_static("content-type"),
                    HeaderValue::from_static("application/json"),
                ),
                (
                    HeaderName::from_static("openai-processing-ms"),
                    HeaderValue::from_static("42"),
                ),
            ],
            Bytes::from_static(br#"{"ok":true}"#),
            Tokens::Known(Some(TokenUsage {
                model: "gpt-4o-mini".into(),
                prompt: 3,
                completion: 4,
                total: 7,
            })),
        )
    }

    #[test]
    fn round_trips_every_field() {
        let e = sample();
        let d = decode(&encode(&e)).expect("decodes");
        assert_eq!(d.status, e.status);
        assert_eq!(d.headers, e.headers);
        assert_eq!(d.body, e.body);
        assert_eq!(d.usage(), e.usage());
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(ms(d.stored_at), ms(e.stored_at));
        assert_eq!(d.timestamp, e.timestamp);
    }

    #[test]
    fn every_truncation_and_trailing_garbage_is_rejected() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
        assert!(decode(b"OCP2").is_none());
        assert!(decode(br#"{"status":200}"#).is_none());
    }

    proptest! {
        /// Arbitrary bytes, and arbitrary corruptions of a real value, never panic.
        #[test]
        fn arbitrary_values_never_panic(noise in prop::collection::vec(any::<u8>(), 0..512),
                                        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
            let _ = decode(&noise);
            let mut bytes = encode(&sample());
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] = b;
            }
            let _ = decode(&bytes);
        }
    }
}
