//! Operator endpoints: `GET /health`, `GET /stats`, `DELETE /cache`.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::errors::ProxyError;
use crate::metrics::get;
use crate::startup::AppState;

pub async fn health() -> HttpResponse {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    HttpResponse::Ok().json(json!({
        "status": "healthy",
        "service": "openai-cache-proxy",
        "timestamp": now,
    }))
}

pub async fn stats(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ProxyError> {
    authorize(&req, &state)?;
    let m = &state.metrics;
    let usage = state.cache.usage().await;
    let config = &state.config;
    Ok(HttpResponse::Ok().json(json!({
        "cache": {
            "item_count": usage.entries,
            "alias_count": usage.aliases,
            "size_bytes": usage.bytes,
            "max_size_bytes": config.max_cache_size_bytes,
            "max_entry_size_bytes": state.cache.max_entry_bytes(),
            "ttl": humantime::format_duration(config.cache_ttl).to_string(),
            "hits": get(&m.hits),
            "misses": get(&m.misses),
            "bypasses": get(&m.bypasses),
            "coalesced": get(&m.coalesced),
            "in_flight": state.flights.len(),
            "in_flight_clients": state.flights.clients(),
            "stores": get(&m.stores),
            "evictions": get(&m.evictions),
            "expirations": get(&m.expirations),
            "hit_ratio": m.hit_ratio(),
        },
        "rate_limit": config.rate_limit,
        "rate_limited_total": get(&m.rate_limited),
        "rate_limit_tracked_clients": state.limiter.as_ref().map_or(0, |l| l.len()),
        "upstream_errors_total": get(&m.upstream_errors),
        "openai_url": state.upstream_base,
        "proxy_url": config.proxy_url.as_ref().map(|p| p.redacted()),
        "uptime_seconds": state.started_at.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

pub async fn clear_cache(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ProxyError> {
    authorize(&req, &state)?;
    let cleared = state.cache.clear().await;
    tracing::info!(cleared, "cache cleared");
    Ok(HttpResponse::Ok().json(json!({
        "message": "Cache cleared successfully",
        "cleared": cleared,
    })))
}

/// With ADMIN_TOKEN set, requires `Authorization: Bearer <token>`. Both sides are hashed
/// first so the constant-time comparison also hides the token's length.
fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), ProxyError> {
    let Some(token) = &state.config.admin_token else {
        return Ok(());
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let expected = Sha256::digest(token.expose_secret().as_bytes());
    let given = Sha256::digest(presented.as_bytes());
    if bool::from(expected.as_slice().ct_eq(given.as_slice())) {
        Ok(())
    } else {
        Err(ProxyError::Unauthorized)
    }
}
