//! Filling a flight from the upstream body, and storing the response once it is complete.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderValue};
use actix_web::web;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::cache::{BodyKind, CacheKey, CachedResponse, End, Flight, Head, Tokens};
use crate::gather::Gathered;
use crate::savings::TokenUsage;
use crate::shared::LockGuard;
use crate::startup::AppState;

/// Reads the upstream body into the flight until it ends or every reader has left (which
/// drops, and so cancels, the upstream request). Stores a complete, storable response before
/// any reader can see it end, so the next identical request is a hit.
pub async fn drive(
    flight: Arc<Flight>,
    mut res: awc::ClientResponse,
    key: CacheKey,
    storable: bool,
    head: Arc<Head>,
    state: web::Data<AppState>,
    // Released (siblings stop waiting) when this returns, after any store.
    _lock: Option<LockGuard>,
) {
    let limit = if storable {
        state.cache.max_entry_bytes()
    } else {
        0
    };
    let kind = BodyKind::of(&head.headers);
    let is_event_stream = kind == BodyKind::EventStream;
    let is_json = kind == BodyKind::Json;
    let idle = state.config.upstream_idle_timeout;
    let mut received = 0u64;
    let end = loop {
        let next = tokio::select! {
            _ = flight.abandoned() => break End::Broken,
            next = async {
                flight.room_to_read().await;
                tokio::time::timeout(idle, res.next()).await
            } => next,
        };
        let Ok(next) = next else {
            tracing::warn!(idle = ?idle, "upstream body went silent");
            break End::Broken;
        };
        match next {
            Some(Ok(chunk)) => {
                received += chunk.len() as u64;
                // With a known length the client sees the end with this chunk: store first,
                // and let awc see the body's end so the connection goes back to the pool.
                if head.content_length == Some(received) {
                    if storable && let Some(body) = flight.recorded_body(Some(&chunk), limit) {
                        let tokens = Tokens::OnFirstHit {
                            event_stream: is_event_stream,
                        };
                        store(&state, key, &head, body, tokens).await;
                    }
                    let _ = tokio::time::timeout(idle, res.next()).await;
                    drop(res);
                    flight.push(chunk, limit);
                    state.flights.close(&key, &flight);
                    flight.finish(End::Complete);
                    return;
                }
                if !flight.push(chunk, limit) {
                    // Too big to store: nobody new may join; readers stream it through.
                    state.flights.close(&key, &flight);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "upstream body broke off");
                break End::Broken;
            }
            None if head.content_length.is_some_and(|n| n != received) => break End::Broken,
            // awc also ends a chunked body cut off by EOF this way, so completeness is checked
            // from the content: `[DONE]` for streams, well-formed JSON for JSON (any other
            // body without a length is not storable: `response_policy`).
            None => {
                let body = if storable {
                    flight.recorded_body(None, limit)
                } else {
                    None
                };
                // Complete, with the token usage it reports (read here, once, for the ledger).
                let checked = body.and_then(|b| {
                    let usage = if is_event_stream {
                        if !b.trim_ascii_end().ends_with(b"data: [DONE]") {
                            return None;
                        }
                        TokenUsage::of_response(&b, true)
                    } else if is_json {
                        TokenUsage::of_json(&b).ok()?
                    } else {
                        None
                    };
                    Some((b, Tokens::Known(usage)))
                });
                if let Some((body, tokens)) = checked {
                    store(&state, key, &head, body, tokens).await;
                }
                break End::Complete;
            }
        }
    };
    state.flights.close(&key, &flight);
    flight.finish(end);
}

/// A known-length body up to this size is read whole before the client is answered, and
/// answered in one write with its head. Any answer that is not an event stream is useless to
/// its client until complete, so this costs no latency that matters, and saves the flight's
/// driver task and a write per miss; streams and larger bodies go through [`drive`].
const WHOLE_BODY_BYTES: u64 = 256 * 1024;

/// The body length, when `head` announces one small enough to read whole (and is not an
/// event stream, which is relayed as it comes).
pub fn whole_length(head: &Head) -> Option<u64> {
    let len = head.content_length.filter(|&n| n <= WHOLE_BODY_BYTES)?;
    (BodyKind::of(&head.headers) != BodyKind::EventStream).then_some(len)
}

/// Reads a body of `len` bytes whole, each chunk within `idle`. `Err` holds what arrived
/// before it broke off (too short, silent, or failed).
pub async fn read_whole(
    res: &mut awc::ClientResponse,
    len: u64,
    idle: Duration,
) -> Result<Bytes, Bytes> {
    let expected = usize::try_from(len).unwrap_or(0);
    let mut body = Gathered::default();
    while (body.len() as u64) < len {
        let chunk = match tokio::time::timeout(idle, res.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            failed => {
                match failed {
                    Err(_) => tracing::warn!(idle = ?idle, "upstream body went silent"),
                    Ok(Some(Err(e))) => tracing::warn!(error = %e, "upstream body broke off"),
                    _ => tracing::warn!("upstream body shorter than its content-length"),
                }
                return Err(body.into_bytes());
            }
        };
        body.push(chunk, expected);
    }
    // Let awc see the body's end, so the connection goes back to its pool.
    let _ = tokio::time::timeout(idle, res.next()).await;
    Ok(body.into_bytes())
}

/// Ends a flight whose body was read whole: stores it when it may be stored, then hands it
/// (or the part that arrived before it broke off) to every follower.
pub async fn settle(
    flight: &Arc<Flight>,
    key: CacheKey,
    storable: bool,
    head: &Arc<Head>,
    body: &Result<Bytes, Bytes>,
    state: &AppState,
) {
    let (bytes, end) = match body {
        Ok(body) => {
            if storable && body.len() as u64 <= state.cache.max_entry_bytes() {
                // A copy of its own: `body` is usually a slice of the HTTP client's read
                // buffer, whose whole allocation (kilobytes) would live as long as the entry
                // (MISS-unique in `make bench` showed 300 MB of RSS for a 64 MB cache).
                let stored = Bytes::copy_from_slice(body);
                let tokens = Tokens::OnFirstHit {
                    event_stream: false,
                };
                store(state, key, head, stored, tokens).await;
            }
            (body, End::Complete)
        }
        Err(partial) => (partial, End::Broken),
    };
    state.flights.close(&key, flight);
    flight.publish_whole(Arc::clone(head), bytes.clone(), end);
}

async fn store(state: &AppState, key: CacheKey, head: &Head, body: Bytes, tokens: Tokens) {
    // Copy names and values out of the HTTP client's read buffer: a header value shares that
    // buffer's allocation, and would keep all of it alive for as long as the entry lives.
    // (Names are their own allocations already: actix-http copies each into a lower-case one.)
    let headers = head
        .headers
        .iter()
        .filter(|(n, _)| **n != header::SET_COOKIE)
        .map(|(name, value)| {
            let value = HeaderValue::from_bytes(value.as_bytes()).expect("valid value");
            (name.clone(), value)
        })
        .collect();
    let entry = Arc::new(CachedResponse::new(head.status, headers, body, tokens));
    // This instance's cache first: a leader's client that resets its connection while the
    // shared tier is written cancels this (with the handler), and the answer must not go with
    // it; the leader's followers then retry and hit.
    let stored = state.cache.insert(key, Arc::clone(&entry));
    // Then the shared tier (bounded by REDIS_TIMEOUT), before anyone is answered: a sibling
    // asked right after this answer ends finds it there.
    if let Some(tier) = &state.shared
        && stored
    {
        tier.put(key, &entry, state.config.cache_ttl).await;
    }
}
