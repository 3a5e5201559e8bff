//! The awc client used for upstream calls: TLS, timeouts, and error mapping.

use std::sync::Arc;

use awc::error::{ConnectError, SendRequestError};
use rustls::ClientConfig;

use crate::config::Config;
use crate::errors::ProxyError;

/// TLS settings shared by every worker: rustls with ring set explicitly (no process-global
/// provider) and the Mozilla roots from webpki-roots.
pub fn tls_config() -> Arc<ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(config)
}

/// One client per worker (`awc::Client` is not `Send`). Timeouts come from `Config`, never
/// from awc's 5 s defaults; redirects are passed to the client, not followed.
pub fn build_client(config: &Config, tls: Arc<ClientConfig>) -> awc::Client {
    let connector = awc::Connector::new()
        .rustls_0_23(tls)
        .timeout(config.connect_timeout)
        .handshake_timeout(config.connect_timeout);
    awc::Client::builder()
        .connector(connector)
        .timeout(config.request_timeout)
        .disable_redirects()
        .finish()
}

/// Maps a failed upstream call to the error the client sees: 504 for timeouts, 502 otherwise.
pub fn upstream_error(err: &SendRequestError, config: &Config) -> ProxyError {
    match err {
        SendRequestError::Timeout => ProxyError::UpstreamTimeout(config.request_timeout),
        SendRequestError::Connect(ConnectError::Timeout) => {
            ProxyError::UpstreamTimeout(config.connect_timeout)
        }
        _ => ProxyError::UpstreamUnavailable,
    }
}
