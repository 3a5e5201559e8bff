//! Everything about talking to the upstream API.

mod client;
mod connector;
mod relay;

pub use client::{build_client, tls_config, upstream_error};
pub use relay::recording_stream;
