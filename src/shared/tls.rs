//! `rediss://`: TLS to Redis through redis-rs's rustls support, and which CAs it trusts.
//!
//! redis-rs builds its own `rustls::ClientConfig` for every TLS connection, with
//! `ClientConfig::builder()`: it cannot be handed ours. That call takes the process-default
//! crypto provider, and when none is installed rustls installs the one its crate features
//! name. This build compiles in ring alone (no aws-lc-rs anywhere in the graph, see the test
//! below), so that always resolves to ring; the proxy itself installs no provider, and the
//! upstream client keeps passing ring explicitly.
//!
//! Trust: the Mozilla roots compiled in (feature `tls-rustls-webpki-roots`, so the system
//! store is never read), or with REDIS_CA_FILE exactly the CAs in it. redis-rs takes one root
//! store, so the file replaces the built-in roots for Redis rather than adding to them, which
//! is why it is a variable of its own and not EXTRA_CA_FILE (which adds to them for the
//! upstream).

use redis::{Client, IntoConnectionInfo, RedisResult, TlsCertificates};

/// A client for one `redis://` or `rediss://` URL; with `ca_pem`, TLS trusts only those CAs.
pub fn client(url: &str, ca_pem: Option<&[u8]>) -> RedisResult<Client> {
    match ca_pem {
        Some(pem) => Client::build_with_tls(url.into_connection_info()?, certificates(pem)),
        None => Client::open(url),
    }
}

/// REDIS_CA_FILE's certificates as redis-rs takes them (no client certificate).
pub fn certificates(pem: &[u8]) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    /// redis-rs calls `ClientConfig::builder()`, which panics unless rustls can name one
    /// provider from its crate features: a dependency that turned on rustls's `aws_lc_rs`
    /// (or `custom-provider`) would break every rediss:// connection. The test build has
    /// every feature the release build has (dev-dependencies only add), so this catches it.
    #[test]
    fn rustls_resolves_ring_as_its_provider_from_crate_features() {
        let built = std::panic::catch_unwind(rustls::ClientConfig::builder);
        assert!(
            built.is_ok(),
            "rustls cannot pick a provider: is aws-lc-rs linked?"
        );
        let provider = rustls::crypto::CryptoProvider::get_default().expect("installed");
        let ring = rustls::crypto::ring::default_provider();
        let names = |p: &rustls::crypto::CryptoProvider| {
            p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>()
        };
        assert_eq!(names(provider), names(&ring));
    }
}
