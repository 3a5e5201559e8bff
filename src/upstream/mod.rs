//! Everything about talking to the upstream API.

mod client;
mod connector;
mod counted;

pub use client::{build_client, tls_config, upstream_error};
