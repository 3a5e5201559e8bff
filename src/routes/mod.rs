//! The one list of routes.

mod fill;
mod ops;
mod proxy;
mod sibling;

use actix_web::middleware::{Condition, from_fn};
use actix_web::web;

use crate::middleware::rate_limit;

/// `rate_limited`: RATE_LIMIT is not 0. Without it the `/v1` scope has no limiter layer at
/// all, so a request pays nothing for it.
pub fn configure(cfg: &mut web::ServiceConfig, rate_limited: bool) {
    cfg.route("/health", web::get().to(ops::health))
        .route("/stats", web::get().to(ops::stats))
        .route("/metrics", web::get().to(ops::metrics))
        .route("/cache", web::delete().to(ops::clear_cache))
        .service(
            web::scope("/v1")
                .wrap(Condition::new(rate_limited, from_fn(rate_limit)))
                .default_service(web::to(proxy::forward)),
        );
}
