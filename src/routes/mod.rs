//! The one list of routes.

mod fill;
mod ops;
mod proxy;
mod sibling;

use actix_service::ServiceFactoryExt;
use actix_web::dev::ServiceResponse;
use actix_web::middleware::from_fn;
use actix_web::{guard, web};

use crate::middleware::rate_limit;

/// The operator routes, and the app's default service for everything else: `/v1` requests
/// to the proxy, anything else a 404 (JSON).
///
/// The operator routes sit in one scope that `/v1` requests are turned away from by a guard,
/// so a request to the API is checked against one pattern instead of each of the four
/// routes' (about 700 instructions of a HIT, callgrind). The scope has no default service of
/// its own: a path it does not know gets the app's JSON 404.
///
/// The API is the default service rather than a `/v1` scope: the scope's prefix match
/// (capturing the path it consumed) and its boxed inner service cost a hit about 800
/// instructions. `rate_limited` (RATE_LIMIT is not 0) puts the limiter's layer in front of
/// it, which passes anything outside `/v1` through. Without it there is no layer at all
/// (a layer turned off by `Condition`, and the body type it adds, cost a HIT 476).
pub fn configure(cfg: &mut web::ServiceConfig, rate_limited: bool) {
    cfg.service(
        web::scope("")
            .guard(guard::fn_guard(|ctx| !is_api(ctx.head().uri.path())))
            .route("/health", web::get().to(ops::health))
            .route("/stats", web::get().to(ops::stats))
            .route("/metrics", web::get().to(ops::metrics))
            .route("/cache", web::delete().to(ops::clear_cache)),
    );
    if rate_limited {
        cfg.default_service(
            actix_service::apply(from_fn(rate_limit), web::to(proxy::forward))
                .map(ServiceResponse::map_into_boxed_body),
        );
    } else {
        cfg.default_service(web::to(proxy::forward));
    }
}

/// Whether `path` is the API this proxy forwards: `/v1` and everything under it.
pub fn is_api(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/v1"
}
