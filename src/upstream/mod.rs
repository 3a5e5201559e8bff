//! Everything about talking to the upstream API.

mod client;
mod connector;

pub use client::{build_client, tls_config, upstream_error};
