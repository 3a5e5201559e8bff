//! Everything about talking to the upstream API.

mod client;
mod connector;
mod counted;
mod url;

pub use client::{build_client, tls_config, upstream_error};
pub use url::UpstreamBase;
