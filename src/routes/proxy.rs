//! `/v1/*`: policy → key → lookup → coalesce → forward → store, with `X-Cache` and
//! `Cache-Status` on every answer.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::cache::{
    CacheKey, CacheStatus, CachedResponse, End, Flight, Forward, Head, KeyHasher, NoCacheReason,
    Reader, Role, age_header, broken_off, cache_status_header, forwarded_cache_status,
    hit_cache_status, request_policy, response_policy,
};
use crate::config::Config;
use crate::errors::ProxyError;
use crate::gather::Gathered;
use crate::headers::{
    CACHE_STATUS, PeerHop, X_CACHE, X_CACHE_KEY, X_CACHE_TIMESTAMP, X_FORWARDED_FOR, end_to_end,
};
use crate::metrics::bump;
use crate::middleware::{ConnNotes, RequestOutcome};
use crate::startup::AppState;
use crate::upstream::upstream_error;

use super::fill;
use super::sibling::{self, Sibling};
use crate::shared::LockGuard;

type UpstreamResponse = awc::ClientResponse;

pub async fn forward(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ProxyError> {
    // The app's default service: anything the other routes did not take comes here.
    if !super::is_api(req.path()) {
        return Err(ProxyError::NotFound);
    }
    // Borrowed from the request rather than extracted: an extractor clones the handle, two
    // atomic operations on a counter that every worker's requests touch.
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered");
    // Looked up only for a request that goes upstream (a hit needs no client).
    let client = || {
        req.app_data::<web::Data<awc::Client>>()
            .expect("each worker registers its client")
    };
    reject_dot_segments(req.path())?;
    let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    // Worked out only for a request that goes upstream.
    let url = || {
        state.upstream.join(req.uri()).map_err(|_| {
            ProxyError::InvalidRequest("The request path cannot be joined to the upstream URL")
        })
    };

    let directives = match request_policy(req.method(), req.path(), req.headers()) {
        Ok(d) => d,
        Err(reason) => {
            let upstream = build_upstream_request(client(), &req, url()?);
            let (res, took) = send_streaming(upstream, &req, payload, state).await?;
            return Ok(relay(&req, res, reason, took, state));
        }
    };

    let body = read_limited(&req, payload, &state.config).await?;
    // A request whose exact bytes hit before (or came with `no-cache`) skips the JSON parse:
    // its key is remembered.
    let hasher = KeyHasher::new(req.method().as_str(), path_and_query, req.headers());
    let exact = hasher.exact(&body);
    let (key, remembered) = match state.cache.alias(&exact) {
        Some(key) => (key, true),
        None => (hasher.canonical(&body), false),
    };
    // A `no-cache` request never hits, yet it refreshes an entry its client asks for again:
    // remembered now, a repeat skips the JSON parse too.
    if !directives.lookup && !remembered {
        state.cache.remember_alias(exact, key);
    }
    let mut forward = if directives.lookup {
        Forward::Miss
    } else {
        Forward::Request
    };
    // Identical misses share one upstream call. A follower whose leader got no answer at all
    // tries once more on its own (looking in the cache again, then perhaps leading a flight).
    let mut retried = false;
    let fresh = |hit: &CachedResponse| directives.max_age.is_none_or(|max| hit.age_secs() <= max);
    // An answer from either tier: these bytes' key is remembered, and the entry replayed.
    let hit_reply = |hit: &CachedResponse| {
        if !remembered {
            state.cache.remember_alias(exact, key);
        }
        replay(&req, hit, key, state)
    };
    loop {
        if directives.lookup
            && let Some(hit) = state.cache.get(&key)
        {
            if fresh(&hit) {
                return Ok(hit_reply(&hit));
            }
            forward = Forward::Stale;
        } else if directives.lookup
            && !retried
            && state.shared.is_some()
            && let Some(hit) = Box::pin(shared_lookup(key, state)).await
            && fresh(&hit)
        {
            return Ok(hit_reply(&hit));
        }
        let role = if directives.lookup {
            state
                .flights
                .join(key, || state.cache.get(&key).filter(|hit| fresh(hit)))
        } else {
            state.flights.lead(key)
        };
        match role {
            Role::Cached(hit) => return Ok(hit_reply(&hit)),
            Role::Leader(flight) => {
                // Armed from here: returning early, or being dropped while Redis is asked (a
                // client that resets its connection cancels this handler), ends the flight, or
                // its followers and every identical request after them would wait for an
                // answer nobody fetches.
                let unanswered = Unanswered::new(state, key, flight);
                let mut lock = None;
                if directives.lookup && !retried && state.shared.is_some() {
                    match Box::pin(sibling::wait_or_lock(key, &body, state)).await {
                        // `unanswered` ends the flight: its followers retry and hit L1.
                        Sibling::Answered(hit) => return Ok(hit_reply(&hit)),
                        Sibling::Locked(guard) => lock = Some(guard),
                        Sibling::Alone => {}
                    }
                }
                let upstream = build_upstream_request(client(), &req, url()?);
                // Boxed: the call's state (1.8 KB) would otherwise be part of this handler's
                // future, which actix moves into a box of its own on every request, hits too.
                let lead = lead(&req, upstream, body, unanswered, key, forward, lock, state);
                return Box::pin(lead).await;
            }
            Role::Follower(mut reader) => match reader.head().await {
                Ok(head) => {
                    let out = respond(&req, &head, CacheStatus::Coalesced, forward, Ok(()), key);
                    return Ok(with_body(out, &head, reader));
                }
                Err(End::NoResponse) if !retried => retried = true,
                Err(_) => return Err(ProxyError::UpstreamUnavailable),
            },
        }
    }
}

/// The shared tier's entry for `key`, copied into this instance's L1 (for what is left of
/// its TTL) so the next hit here stays local.
async fn shared_lookup(key: CacheKey, state: &AppState) -> Option<Arc<CachedResponse>> {
    let entry = state.shared.as_ref()?.get(key).await?;
    Some(state.cache.fill(key, entry))
}

/// Calls the upstream for a flight and answers the leader. A small known-length answer is read
/// whole here, stored and handed to the followers (`fill::settle`); any other body is fed to
/// the flight (and through it every follower) by a spawned driver, which stores it when it
/// completes. `lock` (siblings wait for this answer) is held until the store.
#[allow(clippy::too_many_arguments)]
async fn lead(
    req: &HttpRequest,
    upstream: awc::ClientRequest,
    body: Bytes,
    // Until the driver takes over, failing or being dropped (the client went away) must
    // release the followers, or they would wait for a head that never comes.
    mut unanswered: Unanswered<'_>,
    key: CacheKey,
    forward: Forward,
    lock: Option<LockGuard>,
    state: &web::Data<AppState>,
) -> Result<HttpResponse, ProxyError> {
    let flight = Arc::clone(unanswered.flight());
    let started = Instant::now();
    let mut res = upstream
        .send_body(body)
        .await
        .map_err(|e| failed(&e, state))?;
    let took = started.elapsed();
    state.metrics.upstream_duration.observe(took.as_secs_f64());
    let head = Arc::new(Head {
        status: res.status(),
        headers: end_to_end(res.headers())
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
        content_length: content_length(res.headers()),
    });
    let storable = response_policy(res.status(), res.headers());
    let mut out = respond(req, &head, CacheStatus::Miss, forward, storable, key);
    upstream_took(req, took);
    if let Some(len) = fill::whole_length(&head).filter(|_| has_body(head.status)) {
        let idle = state.config.upstream_idle_timeout;
        let body = fill::read_whole(&mut res, len, idle).await;
        drop(res);
        fill::settle(&flight, key, storable.is_ok(), &head, &body, state).await;
        unanswered.answered();
        return Ok(match body {
            Ok(body) => out.body(body),
            // What arrived, then the break: the client sees the head and the body end short,
            // as it would have seen it relayed. actix drops unsent bytes when a body fails, so
            // the failure waits one turn (`yield_now`): the head and the part are written first.
            Err(partial) => {
                let broken = futures_util::stream::iter([Ok(partial)]).chain(
                    futures_util::stream::once(async {
                        tokio::task::yield_now().await;
                        Err(broken_off())
                    }),
                );
                out.body(SizedStream::new(len, Box::pin(broken)))
            }
        });
    }
    // Taken before the head is out, so the driver sees a reader until this one is done.
    let reader = flight.leader_reader();
    flight.set_head(Arc::clone(&head));
    actix_web::rt::spawn(fill::drive(
        flight,
        res,
        key,
        storable.is_ok(),
        Arc::clone(&head),
        state.clone(),
        lock,
    ));
    unanswered.answered();
    Ok(with_body(out, &head, reader))
}

/// A leader's flight, ended as `NoResponse` (its followers retry on their own) when dropped
/// before [`Unanswered::answered`].
struct Unanswered<'a> {
    state: &'a AppState,
    key: CacheKey,
    flight: Option<Arc<Flight>>,
}

impl<'a> Unanswered<'a> {
    fn new(state: &'a AppState, key: CacheKey, flight: Arc<Flight>) -> Self {
        Self {
            state,
            key,
            flight: Some(flight),
        }
    }

    fn flight(&self) -> &Arc<Flight> {
        self.flight.as_ref().expect("armed until answered")
    }

    /// The flight is answered (or handed to its driver): dropping this no longer ends it.
    fn answered(&mut self) {
        self.flight = None;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(flight) = self.flight.take() {
            self.state.flights.close(&self.key, &flight);
            flight.finish(End::NoResponse);
        }
    }
}

/// A request for the upstream carrying the client's end-to-end headers, with this hop
/// appended to `X-Forwarded-For`. Bytes pass through verbatim (no decompression).
fn build_upstream_request(
    client: &awc::Client,
    req: &HttpRequest,
    url: actix_web::http::Uri,
) -> awc::ClientRequest {
    let mut upstream = client.request(req.method().clone(), url).no_decompress();
    for (name, value) in end_to_end(req.headers()) {
        if *name != X_FORWARDED_FOR {
            upstream = upstream.append_header((name.clone(), value.clone()));
        }
    }
    let hop = match req.conn_data::<PeerHop>() {
        Some(hop) => hop.clone(),
        None => match req.peer_addr() {
            Some(peer) => PeerHop::new(peer.ip()),
            None => return upstream,
        },
    };
    let prior: Vec<&str> = req
        .headers()
        .get_all(&X_FORWARDED_FOR)
        .filter_map(|v| v.to_str().ok())
        .collect();
    let xff = if prior.is_empty() {
        hop.0
    } else {
        let hop = hop.0.to_str().expect("an IP address is ASCII");
        HeaderValue::try_from(format!("{}, {hop}", prior.join(", ")))
            .expect("visible ASCII joined with ', ' is a valid header value")
    };
    upstream.insert_header((X_FORWARDED_FOR.clone(), xff))
}

/// Sends a non-cacheable request, streaming the client's body up without buffering it.
async fn send_streaming(
    upstream: awc::ClientRequest,
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<(UpstreamResponse, Duration), ProxyError> {
    let started = Instant::now();
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    let sent = match content_length(req.headers()) {
        // Keep a known length so the upstream sees Content-Length, not chunked encoding.
        Some(n) if n > 0 => upstream.send_body(SizedStream::new(n, payload)).await,
        None if chunked => upstream.send_stream(payload).await,
        _ => upstream.send().await,
    };
    let res = sent.map_err(|e| failed(&e, state))?;
    let took = started.elapsed();
    state.metrics.upstream_duration.observe(took.as_secs_f64());
    Ok((res, took))
}

fn failed(err: &awc::error::SendRequestError, state: &AppState) -> ProxyError {
    tracing::warn!(error = %err, "upstream request failed");
    bump(&state.metrics.upstream_errors);
    upstream_error(err, &state.config)
}

/// Buffers a cacheable request body for hashing, refusing more than MAX_BODY_SIZE_BYTES and
/// a client that takes longer than REQUEST_TIMEOUT to send it (nothing goes upstream then).
async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    config: &Config,
) -> Result<Bytes, ProxyError> {
    let limit = config.max_body_size_bytes;
    let too_large = ProxyError::PayloadTooLarge { limit };
    let expected = content_length(req.headers());
    if expected.is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    let expected = expected.map_or(0, |n| usize::try_from(n).unwrap_or(0));
    // Not `Payload::to_bytes_limited`, which copies every body into a new 32 KB buffer: a
    // body that arrives in one chunk (the usual case) is kept as it came.
    let read = async move {
        let mut body = Gathered::default();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|_| ProxyError::InvalidRequest("The request body could not be read"))?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large);
            }
            body.push(chunk, expected);
        }
        Ok(body.into_bytes())
    };
    // actix calls the handler as soon as it has a request's head, before it decodes the body
    // that came in the same read, so the first poll always waits; it polls again once it has
    // fed that body in. The timer is armed only if the body is still not all there then: a
    // body that came with its head (nearly every request) costs no timer registration and
    // removal (with its clock reads, ~0.3 µs of a hit's 5 µs of user CPU in `perf`).
    // `once_more` makes sure of that second poll whatever the dispatcher does.
    let mut read = std::pin::pin!(read);
    if let Poll::Ready(body) = futures_util::poll!(read.as_mut()) {
        return body;
    }
    once_more().await;
    if let Poll::Ready(body) = futures_util::poll!(read.as_mut()) {
        return body;
    }
    // Still on its way: from here the client has REQUEST_TIMEOUT to send the rest.
    tokio::time::timeout(config.request_timeout, read)
        .await
        .map_err(|_| ProxyError::RequestTimeout(config.request_timeout))?
}

/// Returns to the executor once, asking to be polled again straight away. Not
/// `tokio::task::yield_now`: that hands the waker to the scheduler, which wakes it only after
/// it has run out of ready tasks and polled its I/O driver (an `epoll_wait` per request).
async fn once_more() {
    let mut woken = false;
    std::future::poll_fn(|cx| {
        if woken {
            return Poll::Ready(());
        }
        woken = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Passes a bypassed upstream response through untouched, chunk by chunk.
fn relay(
    req: &HttpRequest,
    res: UpstreamResponse,
    reason: NoCacheReason,
    took: Duration,
    state: &AppState,
) -> HttpResponse {
    let status = res.status();
    let mut out = HttpResponse::build(status);
    for (name, value) in end_to_end(res.headers()) {
        out.append_header((name.clone(), value.clone()));
    }
    out.insert_header((X_CACHE.clone(), CacheStatus::Bypass.as_str()));
    out.insert_header((
        CACHE_STATUS.clone(),
        cache_status_header(
            CacheStatus::Bypass,
            Forward::Miss,
            false,
            None,
            Some(reason),
        ),
    ));
    outcome(req, CacheStatus::Bypass, Some(reason), Some(status), None);
    upstream_took(req, took);
    let length = content_length(res.headers());
    let body = Box::pin(idle_limited(res, state.config.upstream_idle_timeout));
    match length {
        Some(n) if has_body(status) => out.body(SizedStream::new(n, body)),
        _ => out.body(BodyStream::new(body)),
    }
}

/// The upstream body, ended with an error if it stays silent for longer than `idle`.
fn idle_limited(
    res: UpstreamResponse,
    idle: std::time::Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(Some(res), move |res| async move {
        let mut res = res?;
        match tokio::time::timeout(idle, res.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(res))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
            Ok(None) => None,
            Err(_) => {
                tracing::warn!(idle = ?idle, "upstream body went silent");
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream idle");
                Some((Err(e), None))
            }
        }
    })
}

/// A cache hit, byte-identical to the stored response, with its age.
///
/// This is the hot path: headers are appended as ready values, not parsed from strings.
fn replay(
    req: &HttpRequest,
    hit: &CachedResponse,
    key: CacheKey,
    state: &AppState,
) -> HttpResponse {
    let mut out = HttpResponse::build(hit.status);
    outcome(req, CacheStatus::Hit, None, None, Some(key));
    hit.count_savings(&state.metrics.savings);
    let mut res = out.body(hit.body.clone());
    let age = hit.age_secs();
    let ttl_left = state.config.cache_ttl.as_secs().saturating_sub(age);
    let headers = res.headers_mut();
    for (name, value) in &hit.headers {
        headers.append(name.clone(), value.clone());
    }
    // Appended, not inserted: an entry never holds these (`CachedResponse::stored_at`), and
    // an insert would look for one to replace.
    headers.append(header::AGE, age_header(age));
    headers.append(X_CACHE_TIMESTAMP.clone(), hit.timestamp.clone());
    headers.append(
        X_CACHE.clone(),
        HeaderValue::from_static(CacheStatus::Hit.as_str()),
    );
    headers.append(CACHE_STATUS.clone(), hit_cache_status(ttl_left));
    headers.append(X_CACHE_KEY.clone(), key_header(key));
    res
}

/// The head of a forwarded (MISS) or shared (COALESCED) response.
/// `storable` says whether a MISS qualifies for the cache, and if not why (for the log).
fn respond(
    req: &HttpRequest,
    head: &Head,
    cache: CacheStatus,
    forward: Forward,
    storable: Result<(), NoCacheReason>,
    key: CacheKey,
) -> HttpResponseBuilder {
    let mut out = HttpResponse::build(head.status);
    for (name, value) in &head.headers {
        out.append_header((name.clone(), value.clone()));
    }
    out.insert_header((X_CACHE.clone(), cache.as_str()));
    out.insert_header((
        CACHE_STATUS.clone(),
        forwarded_cache_status(cache, forward, storable.is_ok()),
    ));
    out.insert_header((X_CACHE_KEY.clone(), key_header(key)));
    let reason = storable.err();
    outcome(req, cache, reason, Some(head.status), Some(key));
    out
}

fn with_body(mut out: HttpResponseBuilder, head: &Head, reader: Reader) -> HttpResponse {
    let stream = reader.into_stream();
    match head.content_length {
        Some(n) if has_body(head.status) => out.body(SizedStream::new(n, Box::pin(stream))),
        _ => out.body(BodyStream::new(stream)),
    }
}

/// First 16 hex digits of the key: enough to see why two requests do or do not share an entry.
fn key_header(key: CacheKey) -> HeaderValue {
    HeaderValue::from_bytes(&key.prefix_hex()).expect("hex is a valid header value")
}

/// Adds the upstream's time to response head to this request's log line.
fn upstream_took(req: &HttpRequest, took: Duration) {
    if let Some(notes) = req.conn_data::<ConnNotes>() {
        notes.update_outcome(|o| o.upstream_ms = Some(took.as_secs_f64() * 1000.0));
    }
}

/// Records what happened, for this request's log line and counters (see `access_log`), in
/// its connection's notes (see [`ConnNotes`] for why not in the request's extensions).
fn outcome(
    req: &HttpRequest,
    cache: CacheStatus,
    reason: Option<NoCacheReason>,
    upstream_status: Option<StatusCode>,
    key: Option<CacheKey>,
) {
    if let Some(notes) = req.conn_data::<ConnNotes>() {
        notes.set_outcome(RequestOutcome {
            cache,
            reason,
            upstream_status: upstream_status.map(|s| s.as_u16()),
            upstream_ms: None,
            key,
        });
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Refuses `.`/`..` path segments, raw or percent-encoded, so no request can climb out of
/// `/v1` on the upstream or reach another route through normalisation.
fn reject_dot_segments(path: &str) -> Result<(), ProxyError> {
    // Most paths have neither a dot nor an escape: nothing to look at. memchr looks for the
    // two a vector at a time (a byte loop was 183 instructions of a HIT's 20-byte path).
    if memchr::memchr2(b'.', b'%', path.as_bytes()).is_none() {
        return Ok(());
    }
    let lowered = path.to_ascii_lowercase().replace("%2e", ".");
    if lowered.split(['/', '\\']).any(|s| s == "." || s == "..") || lowered.contains("%2f..") {
        return Err(ProxyError::InvalidRequest(
            "Paths with '.' or '..' segments are not allowed",
        ));
    }
    Ok(())
}
