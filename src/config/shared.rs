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
    /// `redis://host:port/db` with any credentials replaced by `***`.
    pub redacted: String,
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
    match vars.cluster.as_deref().map(str::trim) {
        None | Some("false") | Some("0") => {}
        Some("true") | Some("1") => {
            return Err(ConfigError {
                variable: "REDIS_CLUSTER",
                expected: "must be false: Redis Cluster is not supported yet (use one Redis server, or a Sentinel-managed primary behind one address)".into(),
                value: None,
            });
        }
        Some(other) => return Err(err("REDIS_CLUSTER", "must be true or false", other)),
    }
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
    let expected = "must be a URL such as redis://host:6379/0 (rediss:// is not built in)";
    let url = Url::parse(&raw).map_err(|_| ConfigError {
        variable: "REDIS_URL",
        expected: expected.into(),
        value: None,
    })?;
    // The value may hold a password: errors never show it.
    if url.scheme() != "redis" || url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError {
            variable: "REDIS_URL",
            expected: expected.into(),
            value: None,
        });
    }
    let mut redacted = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        let hidden = redacted.set_username("***").is_ok() && redacted.set_password(None).is_ok();
        if !hidden {
            redacted = Url::parse("redis://***").expect("a valid URL");
        }
    }
    let key_prefix = vars.key_prefix.unwrap_or_else(|| "ocp:v1:".into());
    if key_prefix.is_empty() || key_prefix.contains(['*', '?', '[', ']', ' ']) {
        return Err(err(
            "CACHE_KEY_PREFIX",
            "must be non-empty, without spaces or glob characters (* ? [ ])",
            &key_prefix,
        ));
    }
    Ok(Some(RedisConfig {
        url: SecretString::from(raw),
        redacted: redacted.to_string(),
        key_prefix,
        timeout: vars.timeout,
        shared_rate_limit,
    }))
}
