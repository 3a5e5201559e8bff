//! Runtime configuration: read once from the environment, validated, then shared read-only.

mod proxy;
mod shared;

use proxy::choose_proxy;
pub use proxy::{NoProxy, ProxyUrl};
pub use shared::RedisConfig;
use shared::RedisVars;

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::savings::PriceTable;

const MB: u64 = 1024 * 1024;

/// The whole configuration. Every field maps to one upper-case environment variable.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    /// Upstream base URL without a trailing slash; request paths are appended to it.
    pub openai_api_url: Url,
    /// Outbound HTTP proxy: PROXY_URL, or with PROXY_FROM_ENV=true the usual HTTP(S)_PROXY.
    pub proxy_url: Option<ProxyUrl>,
    /// Upstream hosts reached directly even when a proxy is set.
    pub no_proxy: NoProxy,
    /// Extra trust anchors from EXTRA_CA_FILE, added to the compiled-in Mozilla roots.
    pub extra_ca_certs: Vec<CertificateDer<'static>>,
    /// Requests per minute per client IP; burst is the same number; 0 disables limiting.
    pub rate_limit: u32,
    pub cache_ttl: Duration,
    pub request_timeout: Duration,
    /// Longest silence allowed between two chunks of an upstream body.
    pub upstream_idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// How long a client connection may wait for its next request before it is closed
    /// (whole seconds; see `client_idle`).
    pub client_idle_timeout: Duration,
    /// Worker threads serving requests; `None`: one per available CPU (actix's default).
    pub workers: Option<NonZeroUsize>,
    /// Cache capacity in bytes (MAX_CACHE_SIZE is given in MB).
    pub max_cache_size_bytes: u64,
    /// Largest single response that is stored; never more than the cache capacity.
    pub max_entry_size_bytes: u64,
    pub max_body_size_bytes: u64,
    pub admin_token: Option<SecretString>,
    pub trusted_proxies: Vec<IpNet>,
    pub log_format: LogFormat,
    /// USD per million tokens by model (PRICE_TABLE); empty when unset.
    pub price_table: PriceTable,
    /// The shared (Redis) tier, when REDIS_URL is set.
    pub redis: Option<RedisConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// A configuration error: names the variable, what was expected and (for non-secrets) the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {variable} {expected}{}", value_suffix(.value))]
pub struct ConfigError {
    pub variable: &'static str,
    pub expected: String,
    /// `None` for secrets, whose value must never be printed.
    pub value: Option<String>,
}

fn value_suffix(value: &Option<String>) -> String {
    match value {
        Some(v) => format!(", got {v:?}"),
        None => String::new(),
    }
}

/// Every variable as text; envy maps `RATE_LIMIT` to `rate_limit`. Parsing is ours so that
/// each error names its variable the same way.
#[derive(Deserialize, Default)]
struct RawConfig {
    host: Option<String>,
    port: Option<String>,
    openai_api_url: Option<String>,
    proxy_url: Option<String>,
    rate_limit: Option<String>,
    cache_ttl: Option<String>,
    request_timeout: Option<String>,
    upstream_idle_timeout: Option<String>,
    connect_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    client_idle_timeout: Option<String>,
    workers: Option<String>,
    max_cache_size: Option<String>,
    max_entry_size_bytes: Option<String>,
    max_body_size_bytes: Option<String>,
    admin_token: Option<String>,
    trusted_proxies: Option<String>,
    log_format: Option<String>,
    no_proxy: Option<String>,
    extra_ca_file: Option<String>,
    proxy_from_env: Option<String>,
    price_table: Option<String>,
    redis_url: Option<String>,
    redis_cluster: Option<String>,
    cache_key_prefix: Option<String>,
    redis_timeout: Option<String>,
    rate_limit_backend: Option<String>,
    redis_ca_file: Option<String>,
    redis_coalesce_wait: Option<String>,
}

/// The variables this program reads, in README order. A test checks each is documented.
pub const VARIABLES: &[&str] = &[
    "PORT",
    "HOST",
    "OPENAI_API_URL",
    "PROXY_URL",
    "NO_PROXY",
    "PROXY_FROM_ENV",
    "EXTRA_CA_FILE",
    "RATE_LIMIT",
    "CACHE_TTL",
    "REQUEST_TIMEOUT",
    "UPSTREAM_IDLE_TIMEOUT",
    "CONNECT_TIMEOUT",
    "MAX_CACHE_SIZE",
    "MAX_ENTRY_SIZE_BYTES",
    "MAX_BODY_SIZE_BYTES",
    "ADMIN_TOKEN",
    "TRUSTED_PROXIES",
    "LOG_FORMAT",
    "SHUTDOWN_TIMEOUT",
    "CLIENT_IDLE_TIMEOUT",
    "WORKERS",
    "PRICE_TABLE",
    "REDIS_URL",
    "REDIS_CLUSTER",
    "CACHE_KEY_PREFIX",
    "REDIS_TIMEOUT",
    "RATE_LIMIT_BACKEND",
    "REDIS_CA_FILE",
    "REDIS_COALESCE_WAIT",
];

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads and validates the given variables (tests use this instead of the process env).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let all: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // Only our exact upper-case names go to envy (it lower-cases keys, so `http_proxy` and
        // `HTTP_PROXY` would otherwise collide). An empty value means unset (as `docker run -e
        // VAR=` gives), except for ADMIN_TOKEN, where it is refused rather than silently
        // opening the admin endpoints.
        let ours = all
            .iter()
            .filter(|(k, v)| {
                VARIABLES.contains(&k.as_str()) && (!v.is_empty() || *k == "ADMIN_TOKEN")
            })
            .map(|(k, v)| (k.clone(), v.clone()));
        let raw: RawConfig = envy::from_iter(ours).map_err(|e| ConfigError {
            variable: "environment",
            expected: format!("could not be read: {e}"),
            value: None,
        })?;
        raw.validate(&all)
    }

    /// Socket address to listen on.
    pub fn listen_addr(&self) -> (IpAddr, u16) {
        (self.host, self.port)
    }

    /// Worker threads the server runs: WORKERS, or one per available CPU as actix-server
    /// counts them by default.
    pub fn worker_threads(&self) -> usize {
        self.workers.map_or_else(
            || std::thread::available_parallelism().map_or(2, NonZeroUsize::get),
            NonZeroUsize::get,
        )
    }
}

impl RawConfig {
    fn validate(self, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let proxy_from_env = match self.proxy_from_env.as_deref().map(str::trim) {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => return Err(err("PROXY_FROM_ENV", "must be true or false", other)),
        };
        let openai_api_url = parse_upstream(self.openai_api_url)?;
        let (proxy_url, no_proxy) = choose_proxy(
            self.proxy_url,
            self.no_proxy,
            proxy_from_env,
            &openai_api_url,
            env,
        )?;
        let max_cache_size_mb = parse_num::<u64>(
            "MAX_CACHE_SIZE",
            self.max_cache_size,
            100,
            "must be a whole number of megabytes, at least 1",
        )?;
        if max_cache_size_mb == 0 {
            return Err(err(
                "MAX_CACHE_SIZE",
                "must be a whole number of megabytes, at least 1",
                "0",
            ));
        }
        let max_cache_size_bytes = max_cache_size_mb.checked_mul(MB).ok_or_else(|| {
            err(
                "MAX_CACHE_SIZE",
                "is too large",
                &max_cache_size_mb.to_string(),
            )
        })?;
        let max_entry_size_bytes = parse_positive(
            "MAX_ENTRY_SIZE_BYTES",
            self.max_entry_size_bytes,
            10 * MB,
            "must be a positive whole number of bytes",
        )?
        .min(max_cache_size_bytes);

        Ok(Config {
            host: parse_num(
                "HOST",
                self.host,
                IpAddr::from([0, 0, 0, 0]),
                "must be an IP address to listen on (e.g. 0.0.0.0 or ::)",
            )?,
            port: parse_num("PORT", self.port, 8080, "must be a port number 0-65535")?,
            openai_api_url,
            proxy_url,
            no_proxy,
            extra_ca_certs: self
                .extra_ca_file
                .map(load_ca_file)
                .transpose()?
                .unwrap_or_default(),
            rate_limit: parse_num(
                "RATE_LIMIT",
                self.rate_limit,
                60,
                "must be a whole number of requests per minute (0 disables)",
            )?,
            cache_ttl: parse_duration("CACHE_TTL", self.cache_ttl, Duration::from_secs(300))?,
            request_timeout: parse_duration(
                "REQUEST_TIMEOUT",
                self.request_timeout,
                Duration::from_secs(30),
            )?,
            upstream_idle_timeout: parse_duration(
                "UPSTREAM_IDLE_TIMEOUT",
                self.upstream_idle_timeout,
                Duration::from_secs(60),
            )?,
            connect_timeout: parse_duration(
                "CONNECT_TIMEOUT",
                self.connect_timeout,
                Duration::from_secs(5),
            )?,
            shutdown_timeout: parse_duration(
                "SHUTDOWN_TIMEOUT",
                self.shutdown_timeout,
                Duration::from_secs(30),
            )?,
            client_idle_timeout: parse_client_idle(self.client_idle_timeout)?,
            workers: self
                .workers
                .map(|s| {
                    s.trim()
                        .parse()
                        .map_err(|_| err("WORKERS", "must be a whole number of threads, at least 1", &s))
                })
                .transpose()?,
            max_cache_size_bytes,
            max_entry_size_bytes,
            max_body_size_bytes: parse_positive(
                "MAX_BODY_SIZE_BYTES",
                self.max_body_size_bytes,
                10 * MB,
                "must be a positive whole number of bytes",
            )?,
            admin_token: parse_admin_token(self.admin_token)?,
            trusted_proxies: parse_trusted(self.trusted_proxies)?,
            log_format: match self.log_format.as_deref().map(str::trim) {
                None | Some("json") => LogFormat::Json,
                Some("pretty") => LogFormat::Pretty,
                Some(other) => return Err(err("LOG_FORMAT", "must be json or pretty", other)),
            },
            redis: shared::parse(RedisVars {
                url: self.redis_url,
                cluster: self.redis_cluster,
                key_prefix: self.cache_key_prefix,
                timeout: parse_duration(
                    "REDIS_TIMEOUT",
                    self.redis_timeout,
                    Duration::from_millis(50),
                )?,
                rate_limit_backend: self.rate_limit_backend,
                ca_file: self.redis_ca_file,
                coalesce_wait: self.redis_coalesce_wait,
            })?,
            price_table: match self.price_table {
                None => PriceTable::default(),
                Some(s) => PriceTable::parse(&s).map_err(|why| ConfigError {
                    variable: "PRICE_TABLE",
                    expected: format!(
                        "must look like gpt-4o=2.50/10.00,gpt-4o-mini=0.15/0.60 (USD per million input/output tokens): {why}"
                    ),
                    value: Some(s.clone()),
                })?,
            },
        })
    }
}

fn err(variable: &'static str, expected: &str, value: &str) -> ConfigError {
    ConfigError {
        variable,
        expected: expected.to_owned(),
        value: Some(value.to_owned()),
    }
}

fn parse_num<T: std::str::FromStr>(
    variable: &'static str,
    raw: Option<String>,
    default: T,
    expected: &str,
) -> Result<T, ConfigError> {
    match raw {
        None => Ok(default),
        Some(s) => s.trim().parse().map_err(|_| err(variable, expected, &s)),
    }
}

fn parse_positive(
    variable: &'static str,
    raw: Option<String>,
    default: u64,
    expected: &str,
) -> Result<u64, ConfigError> {
    match parse_num(variable, raw, default, expected)? {
        0 => Err(err(variable, expected, "0")),
        n => Ok(n),
    }
}

fn parse_duration(
    variable: &'static str,
    raw: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let expected = "must be a positive duration such as 30s, 5m or 1h30m";
    let Some(s) = raw else { return Ok(default) };
    match humantime::parse_duration(s.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(err(variable, expected, &s)),
    }
}

/// CLIENT_IDLE_TIMEOUT: whole seconds, since connections are looked at once a second.
fn parse_client_idle(raw: Option<String>) -> Result<Duration, ConfigError> {
    const VAR: &str = "CLIENT_IDLE_TIMEOUT";
    let d = parse_duration(VAR, raw.clone(), Duration::from_secs(5))?;
    if d.subsec_nanos() != 0 {
        let expected = "must be a whole number of seconds such as 5s, 75s or 2m";
        return Err(err(VAR, expected, raw.as_deref().unwrap_or_default()));
    }
    Ok(d)
}

fn parse_upstream(raw: Option<String>) -> Result<Url, ConfigError> {
    const VAR: &str = "OPENAI_API_URL";
    let expected = "must be an absolute http:// or https:// URL such as https://api.openai.com";
    let Some(s) = raw else {
        return Ok(Url::parse("https://api.openai.com").expect("the default upstream URL parses"));
    };
    let mut url = Url::parse(s.trim()).map_err(|_| err(VAR, expected, &s))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(err(VAR, expected, &s));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(err(
            VAR,
            "must not carry a query, fragment or credentials",
            &s,
        ));
    }
    let trimmed = url.path().trim_end_matches('/').to_owned();
    url.set_path(&trimmed);
    Ok(url)
}

/// Reads every PEM certificate in EXTRA_CA_FILE; a file with none is an error.
fn load_ca_file(path: String) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    const VAR: &str = "EXTRA_CA_FILE";
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|_| err(VAR, "must name a readable PEM file", &path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| err(VAR, "must contain valid PEM certificates", &path))?;
    if certs.is_empty() {
        return Err(err(
            VAR,
            "must contain at least one PEM certificate (-----BEGIN CERTIFICATE-----)",
            &path,
        ));
    }
    Ok(certs)
}

fn parse_admin_token(raw: Option<String>) -> Result<Option<SecretString>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Err(ConfigError {
            variable: "ADMIN_TOKEN",
            expected: "must not be empty (unset it to leave the admin endpoints open)".into(),
            value: None,
        }),
        Some(s) => Ok(Some(SecretString::from(s))),
    }
}

fn parse_trusted(raw: Option<String>) -> Result<Vec<IpNet>, ConfigError> {
    let Some(s) = raw else { return Ok(Vec::new()) };
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    err(
                        "TRUSTED_PROXIES",
                        "must be a comma-separated list of CIDRs or IPs such as 10.0.0.0/8,127.0.0.1",
                        p,
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_match_the_go_service() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert_eq!(c.openai_api_url.as_str(), "https://api.openai.com/");
        assert_eq!(c.rate_limit, 60);
        assert_eq!(c.cache_ttl, Duration::from_secs(300));
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.max_cache_size_bytes, 100 * MB);
        assert_eq!(c.max_body_size_bytes, 10_485_760);
        assert!(c.admin_token.is_none() && c.proxy_url.is_none());
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.workers, None, "actix's default: one per CPU");
        assert_eq!(
            c.client_idle_timeout,
            Duration::from_secs(5),
            "actix's keep-alive"
        );
        assert_eq!(
            parse(&[("WORKERS", "3")]).unwrap().workers,
            NonZeroUsize::new(3)
        );
    }

    #[test]
    fn upstream_path_prefix_loses_its_trailing_slash() {
        let c = parse(&[("OPENAI_API_URL", "http://h:9000/openai/")]).unwrap();
        assert_eq!(c.openai_api_url.path(), "/openai");
    }

    #[test]
    fn bad_values_name_the_variable_and_the_value() {
        for (var, value) in [
            ("WORKERS", "0"),
            ("WORKERS", "many"),
            ("RATE_LIMIT", "abc"),
            ("CACHE_TTL", "forever"),
            ("OPENAI_API_URL", "not-a-url"),
            ("MAX_CACHE_SIZE", "0"),
            ("TRUSTED_PROXIES", "10.0.0.0/33"),
            ("LOG_FORMAT", "xml"),
            ("CLIENT_IDLE_TIMEOUT", "0s"),
            ("CLIENT_IDLE_TIMEOUT", "500ms"),
            ("CLIENT_IDLE_TIMEOUT", "1s 500ms"),
        ] {
            let e = parse(&[(var, value)]).unwrap_err();
            assert_eq!(e.variable, var);
            assert!(e.to_string().contains(value), "{e}");
        }
    }

    #[test]
    fn entry_limit_never_exceeds_capacity() {
        let c = parse(&[
            ("MAX_CACHE_SIZE", "1"),
            ("MAX_ENTRY_SIZE_BYTES", "99999999"),
        ])
        .unwrap();
        assert_eq!(c.max_entry_size_bytes, MB);
    }

    #[test]
    fn trusted_proxies_accept_cidrs_and_bare_ips() {
        let c = parse(&[("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1,::1")]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 3);
    }

    #[test]
    fn every_variable_is_in_the_readme_table() {
        let readme = include_str!("../../README.md");
        let env_example = include_str!("../../.env.example");
        for var in VARIABLES {
            assert!(
                readme.contains(&format!("| `{var}` |")),
                "{var} not in README table"
            );
            assert!(
                env_example.contains(&format!("{var}=")),
                "{var} not in .env.example"
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(VARIABLES.to_vec()).prop_map(str::to_owned),
                prop::sample::select(vec!["HTTPS_PROXY", "http_proxy", "no_proxy", "port"])
                    .prop_map(str::to_owned),
                "[A-Za-z_]{1,12}",
            ]
        }

        proptest! {
            /// Any environment either parses or names one variable; it never panics.
            #[test]
            fn arbitrary_environments_never_panic(
                vars in prop::collection::vec((name(), "\\PC{0,24}"), 0..12),
                from_env in any::<bool>(),
            ) {
                let mut vars = vars;
                // EXTRA_CA_FILE names a file to read: keep it to paths that cannot block.
                vars.retain(|(k, v)| {
                    !["EXTRA_CA_FILE", "REDIS_CA_FILE"].contains(&k.as_str()) || !v.starts_with('/')
                });
                if from_env {
                    vars.push(("PROXY_FROM_ENV".into(), "true".into()));
                }
                if let Err(e) = Config::from_vars(vars.clone()) {
                    let known = VARIABLES.contains(&e.variable)
                        || ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "environment"]
                            .contains(&e.variable);
                    prop_assert!(known, "{e}");
                    prop_assert!(e.to_string().contains(e.variable));
                }
            }
        }
    }
}
