//! openai-cache-proxy: a caching proxy for the OpenAI API.

pub mod cache;
mod client_idle;
mod client_ip;
pub mod config;
mod drain;
pub mod errors;
mod gather;
pub mod headers;
pub mod healthcheck;
mod json_lines;
pub mod metrics;
mod middleware;
pub mod per_thread;
mod routes;
pub mod savings;
pub mod shared;
pub mod startup;
pub mod telemetry;
mod upstream;

pub use config::{Config, ConfigError};
pub use errors::ProxyError;
pub use startup::Application;
