//! REDIS_URL and the settings of the shared tier (README: "Running several instances").

use std::time::Duration;

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
}

pub struct RedisVars {
    pub url: Option<String>,
    pub cluster: Option<String>,
    pub key_prefix: Option<String>,
    pub timeout: Duration,
    pub rate_limit_backend: Option<String>,
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
    let Some(raw) = vars.url else {
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
    let key_prefix = vars.key_prefix.unwrap_or_else(|| "ocp:v1:".into());
    // Clears SCAN for the prefix followed by a fixed pattern: the prefix must match itself.
    if key_prefix.is_empty() || key_prefix.contains(['*', '?', '[', ']', '\\', ' ']) {
        return Err(err(
            "CACHE_KEY_PREFIX",
            "must be non-empty, without spaces or glob characters (* ? [ ] \\)",
            &key_prefix,
        ));
    }
    Ok(Some(RedisConfig {
        url: SecretString::from(raw),
        cluster,
        redacted,
        key_prefix,
        timeout: vars.timeout,
        shared_rate_limit,
    }))
}

/// One `redis://` URL with its credentials replaced by `***`; an error never shows the value
/// (it may hold a password).
fn redact(raw: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError {
        variable: "REDIS_URL",
        expected: "must be a URL such as redis://host:6379/0 (rediss:// is not built in)".into(),
        value: None,
    };
    let url = Url::parse(raw).map_err(|_| bad())?;
    if url.scheme() != "redis" || url.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    let mut redacted = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        let hidden = redacted.set_username("***").is_ok() && redacted.set_password(None).is_ok();
        if !hidden {
            return Ok("redis://***".into());
        }
    }
    Ok(redacted.to_string())
}
