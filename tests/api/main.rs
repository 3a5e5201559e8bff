//! All black-box API tests, linked into one binary.

mod cache;
mod coalescing;
mod config;
mod errors;
mod faults;
mod helpers;
mod instances;
mod logging;
mod metrics;
mod ops;
mod outbound_proxy;
mod proxy;
mod rate_limit;
mod redis_server;
mod redis_timeout;
mod redis_tls;
mod sdk;
mod shared;
mod shared_clear;
mod shared_coalescing;
mod shared_ttl;
mod silent_redis;
mod sse_upstream;
mod streaming;
mod tinyproxy;
mod tls_upstream;
