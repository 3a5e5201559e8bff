//! Per-client-IP token bucket (governor GCRA), one limiter for the whole process.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, web};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::access_log::ConnNotes;
use crate::client_ip::client_ip;
use crate::errors::ProxyError;
use crate::headers::{RATE_LIMIT_LIMIT, RATE_LIMIT_REMAINING};
use crate::metrics::bump;
use crate::shared::Decision;
use crate::startup::AppState;

pub type Limiter<C = DefaultClock> =
    RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, StateInformationMiddleware>;

/// `per_minute` requests per minute with a burst of the same size; `None` when 0 (disabled).
pub fn new_limiter(per_minute: u32) -> Option<Arc<Limiter>> {
    let n = NonZeroU32::new(per_minute)?;
    Some(Arc::new(
        RateLimiter::dashmap(Quota::per_minute(n)).with_middleware::<StateInformationMiddleware>(),
    ))
}

/// Forgets clients idle long enough that their bucket is full again, then returns the memory.
/// An active client's state is kept, so pruning never refills a bucket early.
/// Stops when the limiter is dropped.
pub async fn prune_idle(limiter: Weak<Limiter>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}

/// Admits or refuses a `/v1/*` request before anything else happens (cache hits included).
pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered")
        .clone();
    let limiter = state
        .limiter
        .as_ref()
        .filter(|_| crate::routes::is_api(req.path()));
    let Some(limiter) = limiter else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    // Decided once per request by the access log middleware.
    let ip = req
        .conn_data::<ConnNotes>()
        .and_then(ConnNotes::client_ip)
        .unwrap_or_else(|| {
            client_ip(
                req.peer_addr(),
                req.headers(),
                &state.config.trusted_proxies,
            )
        });
    let limit = state.config.rate_limit;
    // One bucket across all instances when RATE_LIMIT_BACKEND=redis; this instance's own
    // whenever Redis cannot decide in time.
    let shared = match (&state.shared, &state.config.redis) {
        (Some(tier), Some(redis)) if redis.shared_rate_limit => tier.rate_limit(ip, limit).await,
        _ => None,
    };
    let local = || {
        limiter
            .check_key(&ip)
            .map(|snapshot| u64::from(snapshot.remaining_burst_capacity()))
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    };
    let decision = match shared {
        Some(Decision::Allowed { remaining }) => Ok(remaining),
        Some(Decision::Refused { retry_after }) => Err(retry_after),
        None => local(),
    };
    match decision {
        Ok(remaining) => {
            let mut res = next.call(req).await?;
            let h = res.headers_mut();
            h.insert(RATE_LIMIT_LIMIT.clone(), limit.into());
            h.insert(RATE_LIMIT_REMAINING.clone(), remaining.into());
            Ok(res.map_into_left_body())
        }
        Err(retry_after) => {
            bump(&state.metrics.rate_limited);
            let err = ProxyError::RateLimited { retry_after, limit };
            Ok(req.error_response(err).map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn pruning_keeps_an_active_clients_bucket() {
        let clock = FakeRelativeClock::default();
        let limiter: Limiter<FakeRelativeClock> = RateLimiter::dashmap_with_clock(
            Quota::per_minute(NonZeroU32::new(2).unwrap()),
            clock.clone(),
        )
        .with_middleware::<StateInformationMiddleware>();
        let active: IpAddr = "192.0.2.1".parse().unwrap();
        let idle: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.check_key(&idle).is_ok());
        clock.advance(Duration::from_secs(61));
        assert!(limiter.check_key(&active).is_ok());
        assert!(limiter.check_key(&active).is_ok());
        assert!(limiter.check_key(&active).is_err(), "burst of 2 is spent");

        limiter.retain_recent();
        limiter.shrink_to_fit();

        assert_eq!(limiter.len(), 1, "the idle client is forgotten");
        assert!(
            limiter.check_key(&active).is_err(),
            "the active bucket was not reset"
        );
    }
}
