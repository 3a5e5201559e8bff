//! The awc client used for upstream calls: TLS, timeouts, and error mapping.

use std::sync::Arc;

use awc::error::{ConnectError, SendRequestError};
use rustls::ClientConfig;

use super::connector::{TunnelError, UpstreamConnector};
use super::counted::OpenConnections;
use crate::config::Config;
use crate::errors::ProxyError;

/// TLS settings shared by every worker: rustls with ring set explicitly (no process-global
/// provider), the Mozilla roots from webpki-roots, plus EXTRA_CA_FILE's certificates.
pub fn tls_config(config: &Config) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Validated at start-up; a certificate rustls cannot use as an anchor is skipped.
    roots.add_parsable_certificates(config.extra_ca_certs.iter().cloned());
    let tls =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(tls)
}

/// One client per worker (`awc::Client` is not `Send`). Timeouts come from `Config`, never
/// from awc's 5 s defaults; redirects are passed to the client, not followed. The connect
/// timeout bounds TCP connect plus any proxy CONNECT exchange; TLS has its own of equal length.
pub fn build_client(config: &Config, tls: Arc<ClientConfig>, open: OpenConnections) -> awc::Client {
    let connector = awc::Connector::new()
        .connector(UpstreamConnector::new(
            config.proxy_url.as_ref(),
            &config.no_proxy,
            open,
        ))
        .rustls_0_23(tls)
        .timeout(config.connect_timeout)
        .handshake_timeout(config.connect_timeout);
    awc::Client::builder()
        .connector(connector)
        .timeout(config.request_timeout)
        .disable_redirects()
        .finish()
}

/// Maps a failed upstream call to the error the client sees: 504 for timeouts, 502 with the
/// reason (proxy unreachable or refusing the tunnel, TLS verification) otherwise.
pub fn upstream_error(err: &SendRequestError, config: &Config) -> ProxyError {
    match err {
        SendRequestError::Timeout => ProxyError::UpstreamTimeout(config.request_timeout),
        SendRequestError::Connect(ConnectError::Timeout) => {
            ProxyError::UpstreamTimeout(config.connect_timeout)
        }
        SendRequestError::Connect(ConnectError::Io(io)) => {
            let inner = io.get_ref();
            if let Some(tunnel) = inner.and_then(|e| e.downcast_ref::<TunnelError>()) {
                match tunnel {
                    TunnelError::ProxyUnreachable(_) => ProxyError::OutboundProxyUnavailable,
                    TunnelError::Rejected(status) => ProxyError::OutboundProxyRejected(*status),
                    TunnelError::BadReply => ProxyError::OutboundProxyUnavailable,
                }
            } else if let Some(tls) = inner.and_then(|e| e.downcast_ref::<rustls::Error>()) {
                match tls {
                    rustls::Error::InvalidCertificate(_) => ProxyError::UpstreamTlsVerification,
                    _ => ProxyError::UpstreamTlsHandshake,
                }
            } else {
                ProxyError::UpstreamUnavailable
            }
        }
        _ => ProxyError::UpstreamUnavailable,
    }
}
