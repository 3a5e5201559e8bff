//! `/v1/*`: policy → key → lookup → forward → store, with `X-Cache` on every answer.

use std::time::SystemTime;

use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use bytes::Bytes;

use crate::cache::{
    CacheKey, CacheStatus, CachedResponse, NoCacheReason, request_policy, response_policy,
};
use crate::errors::ProxyError;
use crate::headers::{X_CACHE, X_CACHE_TIMESTAMP, X_FORWARDED_FOR, end_to_end};
use crate::metrics::bump;
use crate::middleware::RequestOutcome;
use crate::startup::AppState;
use crate::upstream::{recording_stream, upstream_error};

type UpstreamResponse = awc::ClientResponse;

pub async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, ProxyError> {
    reject_dot_segments(req.path())?;
    let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let url = format!("{}{}", state.upstream_base, path_and_query);
    let upstream = build_upstream_request(&client, &req, &url);

    if let Err(reason) = request_policy(req.method(), req.path(), req.headers()) {
        let res = send_streaming(upstream, &req, payload, &state).await?;
        return Ok(relay(res, None, CacheStatus::Bypass, Some(reason), &state));
    }

    let body = read_limited(&req, payload, state.config.max_body_size_bytes).await?;
    let key = CacheKey::compute(req.method().as_str(), path_and_query, req.headers(), &body);
    if let Some(hit) = state.cache.get(&key).await {
        return Ok(replay(&hit, key, &state));
    }
    let res = upstream
        .send_body(body)
        .await
        .map_err(|e| failed(&e, &state))?;
    match response_policy(res.status(), res.headers()) {
        Ok(()) => store_and_relay(res, key, &state).await,
        Err(reason @ NoCacheReason::Streaming) => Ok(relay(
            res,
            Some(key),
            CacheStatus::Bypass,
            Some(reason),
            &state,
        )),
        Err(reason) => Ok(relay(
            res,
            Some(key),
            CacheStatus::Miss,
            Some(reason),
            &state,
        )),
    }
}

/// A request for the upstream carrying the client's end-to-end headers, with this hop
/// appended to `X-Forwarded-For`. Bytes pass through verbatim (no decompression).
fn build_upstream_request(
    client: &awc::Client,
    req: &HttpRequest,
    url: &str,
) -> awc::ClientRequest {
    let mut upstream = client.request(req.method().clone(), url).no_decompress();
    for (name, value) in end_to_end(req.headers()) {
        if name != X_FORWARDED_FOR {
            upstream = upstream.append_header((name.clone(), value.clone()));
        }
    }
    if let Some(peer) = req.peer_addr() {
        let prior: Vec<&str> = req
            .headers()
            .get_all(X_FORWARDED_FOR)
            .filter_map(|v| v.to_str().ok())
            .collect();
        let peer = peer.ip().to_canonical().to_string();
        let xff = if prior.is_empty() {
            peer
        } else {
            format!("{}, {peer}", prior.join(", "))
        };
        upstream = upstream.insert_header((X_FORWARDED_FOR, xff));
    }
    upstream
}

/// Sends a non-cacheable request, streaming the client's body up without buffering it.
async fn send_streaming(
    upstream: awc::ClientRequest,
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<UpstreamResponse, ProxyError> {
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    let sent = match length {
        // Keep a known length so the upstream sees Content-Length, not chunked encoding.
        Some(n) if n > 0 => upstream.send_body(SizedStream::new(n, payload)).await,
        None if chunked => upstream.send_stream(payload).await,
        _ => upstream.send().await,
    };
    sent.map_err(|e| failed(&e, state))
}

fn failed(err: &awc::error::SendRequestError, state: &AppState) -> ProxyError {
    tracing::warn!(error = %err, "upstream request failed");
    bump(&state.metrics.upstream_errors);
    upstream_error(err, &state.config)
}

/// Buffers a cacheable request body for hashing, refusing more than `limit` bytes.
async fn read_limited(
    req: &HttpRequest,
    payload: web::Payload,
    limit: u64,
) -> Result<Bytes, ProxyError> {
    let too_large = ProxyError::PayloadTooLarge { limit };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(_)) => Err(ProxyError::InvalidRequest(
            "The request body could not be read",
        )),
        Err(_) => Err(too_large),
    }
}

/// Reads a storable response whole when its length is known and small enough, stores it,
/// and answers with it; otherwise relays it while recording, storing it only if it ends
/// normally within the per-entry limit.
async fn store_and_relay(
    mut res: UpstreamResponse,
    key: CacheKey,
    state: &web::Data<AppState>,
) -> Result<HttpResponse, ProxyError> {
    let max = state.cache.max_entry_bytes();
    match content_length(&res) {
        Some(n) if n <= max => {
            // The client gets the upstream's headers as sent; the entry drops Set-Cookie.
            let mut out = respond(res.status(), end_to_end(res.headers()), CacheStatus::Miss);
            let read = res.body().limit(usize::try_from(max).unwrap_or(usize::MAX));
            let body = tokio::time::timeout(state.config.request_timeout, read)
                .await
                .map_err(|_| ProxyError::UpstreamTimeout(state.config.request_timeout))?
                .map_err(|e| {
                    tracing::warn!(error = %e, "upstream body failed");
                    ProxyError::UpstreamUnavailable
                })?;
            let entry = to_entry(&res, body);
            let upstream_status = entry.status.as_u16();
            let body = entry.body.clone();
            state.cache.insert(key, entry).await;
            outcome(
                &mut out,
                state,
                CacheStatus::Miss,
                None,
                Some(upstream_status),
                Some(key),
            );
            Ok(out.body(body))
        }
        Some(_) => Ok(relay(
            res,
            Some(key),
            CacheStatus::Miss,
            Some(NoCacheReason::TooLarge),
            state,
        )),
        None => {
            let mut out = respond(res.status(), end_to_end(res.headers()), CacheStatus::Miss);
            let head = to_entry(&res, Bytes::new());
            outcome(
                &mut out,
                state,
                CacheStatus::Miss,
                None,
                Some(head.status.as_u16()),
                Some(key),
            );
            let cache = state.cache.clone();
            let stream = recording_stream(res, max, move |body| {
                let entry = CachedResponse { body, ..head };
                async move {
                    cache.insert(key, entry).await;
                }
            });
            Ok(out.body(BodyStream::new(stream)))
        }
    }
}

/// Passes an upstream response through untouched, chunk by chunk.
fn relay(
    res: UpstreamResponse,
    key: Option<CacheKey>,
    status: CacheStatus,
    reason: Option<NoCacheReason>,
    state: &AppState,
) -> HttpResponse {
    let mut out = respond(res.status(), end_to_end(res.headers()), status);
    outcome(
        &mut out,
        state,
        status,
        reason,
        Some(res.status().as_u16()),
        key,
    );
    if let Some(reason) = reason {
        tracing::debug!(reason = reason.as_str(), "response not stored");
    }
    match content_length(&res) {
        Some(n) if has_body(res.status()) => out.body(SizedStream::new(n, res)),
        _ => out.body(BodyStream::new(res)),
    }
}

/// A cache hit, byte-identical to the stored response, with its age.
fn replay(hit: &CachedResponse, key: CacheKey, state: &AppState) -> HttpResponse {
    let mut out = respond(hit.status, &hit.headers, CacheStatus::Hit);
    let age = SystemTime::now()
        .duration_since(hit.stored_at)
        .unwrap_or_default()
        .as_secs();
    out.insert_header((header::AGE, age));
    out.insert_header((
        HeaderName::from_static(X_CACHE_TIMESTAMP),
        humantime::format_rfc3339_seconds(hit.stored_at).to_string(),
    ));
    outcome(&mut out, state, CacheStatus::Hit, None, None, Some(key));
    out.body(hit.body.clone())
}

fn respond<'a>(
    status: StatusCode,
    headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    cache: CacheStatus,
) -> HttpResponseBuilder {
    let mut out = HttpResponse::build(status);
    for (name, value) in headers {
        out.append_header((name.clone(), value.clone()));
    }
    out.insert_header((HeaderName::from_static(X_CACHE), cache.as_str()));
    out
}

/// Records what happened: the counters, and the fields of this request's log line.
fn outcome(
    out: &mut HttpResponseBuilder,
    state: &AppState,
    cache: CacheStatus,
    reason: Option<NoCacheReason>,
    upstream_status: Option<u16>,
    key: Option<CacheKey>,
) {
    state.metrics.record(cache);
    out.extensions_mut().insert(RequestOutcome {
        cache,
        reason,
        upstream_status,
        key,
    });
}

fn to_entry(res: &UpstreamResponse, body: Bytes) -> CachedResponse {
    let mut headers = HeaderMap::new();
    for (name, value) in end_to_end(res.headers()).filter(|(n, _)| *n != header::SET_COOKIE) {
        headers.append(name.clone(), value.clone());
    }
    CachedResponse {
        status: res.status(),
        headers,
        body,
        stored_at: SystemTime::now(),
    }
}

fn content_length(res: &UpstreamResponse) -> Option<u64> {
    res.headers()
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
    let lowered = path.to_ascii_lowercase().replace("%2e", ".");
    if lowered.split(['/', '\\']).any(|s| s == "." || s == "..") || lowered.contains("%2f..") {
        return Err(ProxyError::InvalidRequest(
            "Paths with '.' or '..' segments are not allowed",
        ));
    }
    Ok(())
}
