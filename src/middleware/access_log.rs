//! One structured log line per request, the request id, and the headers every response carries.

use std::net::IpAddr;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};
use tracing_actix_web::RequestId;

use crate::cache::{CacheKey, CacheStatus, NoCacheReason};
use crate::client_ip::client_ip;
use crate::headers::{PROXY_ID, X_PROXY, X_REQUEST_ID};
use crate::startup::AppState;

/// What the proxy handler did, left in the response extensions for this log line.
#[derive(Debug, Clone, Copy)]
pub struct RequestOutcome {
    pub cache: CacheStatus,
    pub reason: Option<NoCacheReason>,
    pub upstream_status: Option<u16>,
    pub key: Option<CacheKey>,
}

/// The client address as decided once per request (TCP peer unless behind TRUSTED_PROXIES).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

pub async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered");
    let ip = client_ip(
        req.peer_addr(),
        req.headers(),
        &state.config.trusted_proxies,
    );
    req.extensions_mut().insert(ClientIp(ip));
    let request_id = incoming_request_id(&req).unwrap_or_else(|| {
        req.extensions()
            .get::<RequestId>()
            .map(ToString::to_string)
            .unwrap_or_default()
    });
    let method = req.method().clone();
    // The path only: a query string may carry anything a client chose to put there.
    let path = req.path().to_owned();

    let mut res = next.call(req).await?;

    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let outcome = res.response().extensions().get::<RequestOutcome>().copied();
    let headers = res.headers_mut();
    headers.insert(
        HeaderName::from_static(X_PROXY),
        HeaderValue::from_static(PROXY_ID),
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(HeaderName::from_static(X_REQUEST_ID), v);
    }
    tracing::info!(
        request_id = %request_id,
        client_ip = %ip,
        method = %method,
        path = %path,
        status = res.status().as_u16(),
        cache = outcome.map(|o| o.cache.as_str()),
        no_cache_reason = outcome.and_then(|o| o.reason).map(NoCacheReason::as_str),
        upstream_status = outcome.and_then(|o| o.upstream_status),
        key = outcome.and_then(|o| o.key).map(CacheKey::short),
        latency_ms = (latency_ms * 1000.0).round() / 1000.0,
        "request"
    );
    Ok(res)
}

/// A client-supplied `X-Request-Id`, if it is short and harmless enough to echo and log.
fn incoming_request_id(req: &ServiceRequest) -> Option<String> {
    let v = req.headers().get(X_REQUEST_ID)?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| v.to_owned())
}
