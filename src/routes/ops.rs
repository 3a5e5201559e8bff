//! Operator endpoints: `GET /health`, `GET /stats`, `GET /metrics`, `DELETE /cache`.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::cache::CacheStatus;
use crate::errors::ProxyError;
use crate::metrics::Metrics;
use crate::shared::SharedTier;
use crate::startup::AppState;

/// Always 200 while the process serves: without Redis the proxy still answers (from L1 and
/// the upstream), so a Redis outage shows as `"redis":"degraded"`, not as unhealthy. With
/// Redis configured, each call PINGs it (bounded by REDIS_TIMEOUT; skipped while the circuit
/// breaker is open).
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut body = json!({
        "status": "healthy",
        "service": "openai-cache-proxy",
        "timestamp": now,
    });
    if let Some(tier) = &state.shared {
        let ok = tier.ping().await;
        body["redis"] = if ok { "ok" } else { "degraded" }.into();
    }
    HttpResponse::Ok().json(body)
}

fn redis_state(tier: &SharedTier) -> &'static str {
    if tier.degraded() { "degraded" } else { "ok" }
}

pub async fn stats(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ProxyError> {
    authorize(&req, &state)?;
    let m = &state.metrics;
    let usage = state.cache.usage();
    let config = &state.config;
    Ok(HttpResponse::Ok().json(json!({
        "cache": {
            "item_count": usage.entries,
            "alias_count": usage.aliases,
            "size_bytes": usage.bytes,
            "max_size_bytes": config.max_cache_size_bytes,
            "max_entry_size_bytes": state.cache.max_entry_bytes(),
            "ttl": humantime::format_duration(config.cache_ttl).to_string(),
            "hits": m.requests(CacheStatus::Hit),
            "misses": m.requests(CacheStatus::Miss),
            "bypasses": m.requests(CacheStatus::Bypass),
            "coalesced": m.requests(CacheStatus::Coalesced),
            "in_flight": state.flights.len(),
            "in_flight_clients": state.flights.clients(),
            "stores": m.stores.get(),
            "evictions": m.evictions.get(),
            "expirations": m.expirations.get(),
            "hit_ratio": m.hit_ratio(),
        },
        "savings": savings(m),
        "redis": state.shared.as_ref().zip(config.redis.as_ref()).map(|(tier, redis)| json!({
            "url": redis.redacted,
            "state": redis_state(tier),
            "key_prefix": redis.key_prefix,
            "l2_hits": tier.counters.l2_hits.get(),
            "l2_misses": tier.counters.l2_misses.get(),
            "errors": tier.counters.errors.get(),
            "undecodable_values": tier.counters.undecodable.get(),
            "sibling_waits": tier.counters.sibling_waits.get(),
            "coalesce_wait": humantime::format_duration(redis.coalesce_wait).to_string(),
            "shared_rate_limit": redis.shared_rate_limit,
        })),
        "rate_limit": config.rate_limit,
        "rate_limited_total": m.rate_limited.get(),
        "rate_limit_tracked_clients": state.limiter.as_ref().map_or(0, |l| l.len()),
        "upstream_errors_total": m.upstream_errors.get(),
        "openai_url": state.upstream.as_str(),
        "proxy_url": config.proxy_url.as_ref().map(|p| p.redacted()),
        "uptime_seconds": state.started_at.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

/// What the cache spared the upstream since start: overall and per model. Dollars only with
/// a PRICE_TABLE, and only for the models it prices.
fn savings(m: &Metrics) -> serde_json::Value {
    let hits = m.requests(CacheStatus::Hit);
    let (mut prompt, mut completion, mut total, mut usd) = (0, 0, 0, 0.0);
    let mut by_model = serde_json::Map::new();
    for (model, s) in m.savings.by_model() {
        prompt += s.prompt.get();
        completion += s.completion.get();
        total += s.total.get();
        let model_usd = s.usd.as_ref().map(|(c, _)| c.get());
        usd += model_usd.unwrap_or(0.0);
        by_model.insert(
            model.to_string(),
            json!({
                "hits": s.requests.get(),
                "prompt_tokens": s.prompt.get(),
                "completion_tokens": s.completion.get(),
                "total_tokens": s.total.get(),
                "usd": model_usd,
            }),
        );
    }
    json!({
        "requests_served_from_cache": hits,
        "upstream_calls_avoided": hits + m.requests(CacheStatus::Coalesced),
        "hit_ratio": m.hit_ratio(),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "usd": m.savings.priced().then_some(usd),
        "by_model": by_model,
    })
}

/// Prometheus metrics in the OpenMetrics text format; the same counters as `/stats`.
pub async fn metrics(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ProxyError> {
    authorize(&req, &state)?;
    let m = &state.metrics;
    let usage = state.cache.usage();
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    m.cache_entries.set(gauge(usage.entries));
    m.cache_bytes.set(gauge(usage.bytes));
    m.in_flight.set(gauge(state.flights.len() as u64));
    m.tracked_clients
        .set(gauge(state.limiter.as_ref().map_or(0, |l| l.len()) as u64));
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(m.encode()))
}

pub async fn clear_cache(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ProxyError> {
    authorize(&req, &state)?;
    let cleared = state.cache.clear();
    let mut body = json!({
        "message": "Cache cleared successfully",
        "cleared": cleared,
    });
    // The shared tier's keys, and (by pub/sub) every other instance's L1.
    if let Some(tier) = &state.shared {
        let shared = tier.clear().await;
        if !shared.complete {
            tracing::warn!(
                removed = shared.removed,
                "cache cleared here, but redis could not be cleared completely"
            );
        }
        body["shared_cleared"] = shared.removed.into();
        body["shared_complete"] = shared.complete.into();
        body["shared_notified"] = shared.published.into();
    }
    tracing::info!(cleared, "cache cleared");
    Ok(HttpResponse::Ok().json(body))
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
