//! The one list of routes.

mod fill;
mod ops;
mod proxy;
mod sibling;

use actix_web::middleware::from_fn;
use actix_web::web;

use crate::middleware::rate_limit;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(ops::health))
        .route("/stats", web::get().to(ops::stats))
        .route("/metrics", web::get().to(ops::metrics))
        .route("/cache", web::delete().to(ops::clear_cache))
        .service(
            web::scope("/v1")
                .wrap(from_fn(rate_limit))
                .default_service(web::to(proxy::forward)),
        );
}
