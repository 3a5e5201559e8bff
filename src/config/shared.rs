//! REDIS_URL and the settings of the shared tier (README: "Running several instances").

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::SecretString;
use url::Url;

use super::{ConfigError, err};

/// The shared tier's settings; present only when REDIS_URL is set.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// May carry a password: never logged or shown; see `redacted`.
    pub url: SecretString,
    /// `redis://host:port/db` with any credentials replaced by `***` (each node's, for a
    /// Cluster).
    pub redacted: String,
    /// REDIS_CLUSTER=true: `url` lists some nodes of a Redis Cluster.
    pub cluster: bool,
    pub key_prefix: String,
    pub timeout: Duration,
    /// RATE_LIMIT_BACKEND=redis: one bucket per client across all instances.
    pub shared_rate_limit: bool,
    /// `rediss://`: TLS to every node, certificates and names checked.
    pub tls: bool,
    /// REDIS_CA_FILE's PEM text: with TLS, the only CAs trusted for Redis (instead of the
    /// compiled-in Mozilla roots).
    pub ca_pem: Option<Vec<u8>>,
    /// REDIS_COALESCE_WAIT: how long a miss waits for a sibling already calling the upstream
    /// for the same key; zero turns cross-instance coalescing off.
    pub coalesce_wait: Duration,
}

pub struct RedisVars {
    pub url: Option<String>,
    pub cluster: Option<String>,
    pub key_prefix: Option<String>,
    pub timeout: Duration,
    pub rate_limit_backend: Option<String>,
    pub ca_file: Option<String>,
    pub coalesce_wait: Option<String>,
}

pub fn parse(vars: RedisVars) -> Result<Option<RedisConfig>, ConfigError> {
    let shared_rate_limit = match vars.rate_limit_backend.as_deref().map(str::trim) {
        None | Some("local") => false,
        Some("redis") => true,
        Some(other) => return Err(err("RATE_LIMIT_BACKEND", "must be local or redis", other)),
    };
    let cluster = match vars.cluster.as_deref().map(str::trim) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => return Err(err("REDIS_CLUSTER", "must be true or false", other)),
    };
    let coalesce_wait = match vars.coalesce_wait {
        None => Duration::from_secs(5),
        Some(s) => humantime::parse_duration(s.trim()).map_err(|_| {
            err(
                "REDIS_COALESCE_WAIT",
                "must be a duration such as 5s or 500ms (0s turns it off)",
                &s,
            )
        })?,
    };
    let key_prefix = vars.key_prefix.unwrap_or_else(|| "ocp:v1:".into());
    // Clears SCAN for the prefix followed by a fixed pattern: the prefix must match itself.
    if key_prefix.is_empty() || key_prefix.contains(['*', '?', '[', ']', '\\', ' ']) {
        return Err(err(
            "CACHE_KEY_PREFIX",
            "must be non-empty, without spaces or glob characters (* ? [ ] \\)",
            &key_prefix,
        ));
    }
    let Some(raw) = vars.url else {
        if let Some(path) = vars.ca_file {
            return Err(err(
                "REDIS_CA_FILE",
                "must be unset when REDIS_URL is",
                &path,
            ));
        }
        if shared_rate_limit {
            return Err(err(
                "RATE_LIMIT_BACKEND",
                "must be local when REDIS_URL is unset",
                "redis",
            ));
        }
        return Ok(None);
    };
    let raw = raw.trim().to_owned();
    let urls: Vec<&str> = raw.split(',').map(str::trim).collect();
    if urls.len() > 1 && !cluster {
        return Err(ConfigError {
            variable: "REDIS_URL",
            expected: "must be one URL unless REDIS_CLUSTER=true (then a comma-separated list of cluster nodes)".into(),
            value: None,
        });
    }
    let redacted = urls
        .iter()
        .map(|u| redact(u))
        .collect::<Result<Vec<_>, _>>()?
        .join(",");
    let tls = urls[0].starts_with("rediss://");
    if urls.iter().any(|u| u.starts_with("rediss://") != tls) {
        return Err(ConfigError {
            variable: "REDIS_URL",
            expected: "must list cluster nodes with one scheme: all redis:// or all rediss://"
                .into(),
            value: None,
        });
    }
    let ca_pem = match vars.ca_file {
        None => None,
        Some(path) if !tls => {
            return Err(err(
                "REDIS_CA_FILE",
                "must be unset unless REDIS_URL is rediss:// (TLS)",
                &path,
            ));
        }
        Some(path) => Some(load_ca_pem(&path)?),
    };
    Ok(Some(RedisConfig {
        url: SecretString::from(raw),
        cluster,
        redacted,
        key_prefix,
        timeout: vars.timeout,
        shared_rate_limit,
        tls,
        ca_pem,
        coalesce_wait,
    }))
}

/// One `redis://` or `rediss://` URL with its credentials replaced by `***`; an error never
/// shows the value (it may hold a password).
fn redact(raw: &str) -> Result<String, ConfigError> {
    let bad = |expected: &str| ConfigError {
        variable: "REDIS_URL",
        expected: expected.into(),
        value: None,
    };
    let shape = "must be a URL such as redis://host:6379/0 or rediss://host:6380/0 (TLS)";
    let url = Url::parse(raw).map_err(|_| bad(shape))?;
    if !["redis", "rediss"].contains(&url.scheme()) || url.host_str().is_none_or(str::is_empty) {
        return Err(bad(shape));
    }
    // redis-rs reads `#insecure` as "skip certificate checks"; we never do that.
    if url.fragment().is_some() {
        return Err(bad(
            "must not have a #fragment (#insecure, which would skip certificate checks, is not supported)",
        ));
    }
    let mut redacted = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        let hidden = redacted.set_username("***").is_ok() && redacted.set_password(None).is_ok();
        if !hidden {
            return Ok(format!("{}://***", url.scheme()));
        }
    }
    Ok(redacted.to_string())
}

/// REDIS_CA_FILE's text, once it has been checked to hold only CA certificates rustls can
/// use as trust anchors (redis-rs parses it again for every connection).
fn load_ca_pem(path: &str) -> Result<Vec<u8>, ConfigError> {
    const VAR: &str = "REDIS_CA_FILE";
    let pem = std::fs::read(path).map_err(|_| err(VAR, "must name a readable PEM file", path))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| err(VAR, "must contain valid PEM certificates", path))?;
    if certs.is_empty() {
        return Err(err(
            VAR,
            "must contain at least one PEM certificate (-----BEGIN CERTIFICATE-----)",
            path,
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    if certs.into_iter().any(|cert| roots.add(cert).is_err()) {
        return Err(err(
            VAR,
            "must contain CA certificates usable as trust anchors",
            path,
        ));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn rediss_urls_are_accepted_and_shown_without_credentials() {
        let c = parse(&[("REDIS_URL", "rediss://user:hunter2@cache.internal:6380/1")]).unwrap();
        let redis = c.redis.unwrap();
        assert!(redis.tls && redis.ca_pem.is_none());
        assert_eq!(redis.redacted, "rediss://***@cache.internal:6380/1");
        let c = parse(&[
            ("REDIS_URL", "rediss://:hunter2@a:1,rediss://:hunter2@b:2"),
            ("REDIS_CLUSTER", "true"),
        ])
        .unwrap();
        assert_eq!(
            c.redis.unwrap().redacted,
            "rediss://***@a:1,rediss://***@b:2"
        );
    }

    #[test]
    fn tls_settings_that_cannot_work_are_refused_without_showing_the_password() {
        for (vars, variable) in [
            (
                &[
                    ("REDIS_URL", "rediss://:hunter2@a:1,redis://:hunter2@b:2"),
                    ("REDIS_CLUSTER", "true"),
                ][..],
                "REDIS_URL",
            ),
            (
                &[("REDIS_URL", "rediss://:hunter2@a:1/0#insecure")][..],
                "REDIS_URL",
            ),
            (
                &[
                    ("REDIS_URL", "redis://:hunter2@a:1"),
                    ("REDIS_CA_FILE", "/etc/hostname"),
                ][..],
                "REDIS_CA_FILE",
            ),
            (&[("REDIS_CA_FILE", "/etc/hostname")][..], "REDIS_CA_FILE"),
            (
                &[
                    ("REDIS_URL", "rediss://:hunter2@a:1"),
                    ("REDIS_CA_FILE", "/etc/hostname"),
                ][..],
                "REDIS_CA_FILE",
            ),
        ] {
            let e = parse(vars).unwrap_err();
            assert_eq!(e.variable, variable, "{vars:?}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn a_bad_key_prefix_is_refused_even_without_redis() {
        for prefix in ["ocp *", "a*", "x[1]", "back\\slash"] {
            let e = parse(&[("CACHE_KEY_PREFIX", prefix)]).unwrap_err();
            assert_eq!(e.variable, "CACHE_KEY_PREFIX");
            // The value is shown quoted, with a backslash escaped.
            assert!(e.to_string().contains(&format!("{prefix:?}")), "{e}");
        }
    }
}
