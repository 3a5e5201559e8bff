//! The outbound proxy settings: PROXY_URL (or, opted in, HTTP(S)_PROXY) and NO_PROXY.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use percent_encoding::percent_decode_str;
use secrecy::SecretString;
use url::Url;

use super::ConfigError;

/// An outbound proxy, parsed from a URL that may carry credentials. Only the redacted form
/// is ever shown; the credentials exist solely as a ready `Proxy-Authorization` value.
#[derive(Clone)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    basic_auth: Option<SecretString>,
    redacted: String,
}

impl ProxyUrl {
    /// The URL with any user name and password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// `Basic <base64(user:password)>` (percent-decoded), if the URL had credentials.
    pub fn basic_auth(&self) -> Option<&SecretString> {
        self.basic_auth.as_ref()
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// NO_PROXY: `*` for every host, otherwise domains (matching themselves and their
/// subdomains, with or without a leading dot) and IP addresses (matching exactly).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    all: bool,
    domains: Vec<String>,
    ips: Vec<IpAddr>,
}

impl NoProxy {
    pub fn parse(list: &str) -> Self {
        let mut out = Self::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                out.all = true;
            } else if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                out.ips.push(ip);
            } else {
                // A port in an entry (`host:443`) is ignored: the host decides.
                let host = entry.split(':').next().unwrap_or(entry);
                out.domains
                    .push(host.trim_start_matches('.').to_ascii_lowercase());
            }
        }
        out
    }

    /// Should `host` (a name or an IP literal, possibly bracketed) bypass the proxy?
    pub fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_matches(['[', ']']);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.ips.contains(&ip);
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.domains.iter().any(|d| {
            host == *d
                || (host.len() > d.len()
                    && host.ends_with(d.as_str())
                    && host.as_bytes()[host.len() - d.len() - 1] == b'.')
        })
    }
}

/// PROXY_URL and NO_PROXY, or, only when PROXY_FROM_ENV=true and PROXY_URL is unset, the
/// conventional HTTPS_PROXY/HTTP_PROXY (by upstream scheme) and NO_PROXY/no_proxy.
pub(super) fn choose_proxy(
    proxy_url: Option<String>,
    no_proxy: Option<String>,
    from_env: bool,
    upstream: &Url,
    env: &HashMap<String, String>,
) -> Result<(Option<ProxyUrl>, NoProxy), ConfigError> {
    let lookup = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| env.get(*n).filter(|v| !v.is_empty()).cloned())
    };
    if let Some(url) = proxy_url {
        let no_proxy = no_proxy.as_deref().map(NoProxy::parse).unwrap_or_default();
        return Ok((Some(parse_proxy("PROXY_URL", &url)?), no_proxy));
    }
    if !from_env {
        return Ok((
            None,
            no_proxy.as_deref().map(NoProxy::parse).unwrap_or_default(),
        ));
    }
    let names: &[&'static str] = if upstream.scheme() == "https" {
        &["HTTPS_PROXY", "https_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy"]
    };
    let proxy = match names
        .iter()
        .find(|n| env.get(**n).is_some_and(|v| !v.is_empty()))
    {
        Some(name) => Some(parse_proxy(name, &env[*name])?),
        None => None,
    };
    let no_proxy = no_proxy
        .or_else(|| lookup(&["no_proxy"]))
        .as_deref()
        .map(NoProxy::parse)
        .unwrap_or_default();
    Ok((proxy, no_proxy))
}

fn parse_proxy(variable: &'static str, s: &str) -> Result<ProxyUrl, ConfigError> {
    let expected = "must be an http:// proxy URL such as http://user:password@host:3128";
    let url = Url::parse(s.trim());
    let redacted = match &url {
        Ok(u) => redact(u),
        // Unparseable input may still hold a password: show nothing of it.
        Err(_) => String::from("(unparseable, not shown)"),
    };
    let bad = |expected: &str| ConfigError {
        variable,
        expected: expected.to_owned(),
        value: Some(redacted.clone()),
    };
    let url = url.map_err(|_| bad(expected))?;
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        Some(host) => host.to_string(),
        None => return Err(bad(expected)),
    };
    if url.scheme() != "http" {
        return Err(bad(expected));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(bad("must not carry a path or query (http://host:port)"));
    }
    let basic_auth = if url.username().is_empty() && url.password().is_none() {
        None
    } else {
        let decode = |s: &str| percent_decode_str(s).decode_utf8().map(|c| c.into_owned());
        let user = decode(url.username()).map_err(|_| bad("must have UTF-8 credentials"))?;
        let pass = decode(url.password().unwrap_or_default())
            .map_err(|_| bad("must have UTF-8 credentials"))?;
        let token = BASE64.encode(format!("{user}:{pass}"));
        Some(SecretString::from(format!("Basic {token}")))
    };
    Ok(ProxyUrl {
        host,
        port: url.port_or_known_default().unwrap_or(80),
        basic_auth,
        redacted,
    })
}

/// `http://user:pw@host:3128` → `http://***@host:3128`.
fn redact(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    let port = url
        .port_or_known_default()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let creds = if url.username().is_empty() && url.password().is_none() {
        ""
    } else {
        "***@"
    };
    format!("{}://{creds}{host}{port}", url.scheme())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn proxy_errors_never_show_the_password() {
        let e = parse(&[("PROXY_URL", "ftp://bob:hunter2@x:21")]).unwrap_err();
        assert_eq!(e.variable, "PROXY_URL");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("ftp://***@x:21"), "{e}");
    }

    #[test]
    fn proxy_url_is_shown_redacted() {
        let c = parse(&[("PROXY_URL", "http://bob:hunter2@proxy:3128")]).unwrap();
        let p = c.proxy_url.unwrap();
        assert_eq!(p.redacted(), "http://***@proxy:3128");
        assert_eq!(format!("{p:?}"), "http://***@proxy:3128");
    }

    #[test]
    fn proxy_credentials_are_percent_decoded_into_basic_auth() {
        use secrecy::ExposeSecret;
        let c = parse(&[("PROXY_URL", "http://us%40er:p%3Ass%20w@proxy:3128")]).unwrap();
        let p = c.proxy_url.unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy", 3128));
        // base64("us@er:p:ss w")
        assert_eq!(
            p.basic_auth().unwrap().expose_secret(),
            "Basic dXNAZXI6cDpzcyB3"
        );
        let anon = parse(&[("PROXY_URL", "http://[::1]:8888")])
            .unwrap()
            .proxy_url
            .unwrap();
        assert!(anon.basic_auth().is_none());
        assert_eq!(anon.host, "[::1]");
    }

    #[test]
    fn no_proxy_matches_domains_by_suffix_and_ips_exactly() {
        let n = NoProxy::parse("example.com, .internal.net,10.1.2.3,[::1],host:8080");
        assert!(n.matches("example.com"));
        assert!(n.matches("api.example.com"));
        assert!(n.matches("API.Example.COM."));
        assert!(!n.matches("badexample.com"));
        assert!(n.matches("internal.net") && n.matches("a.b.internal.net"));
        assert!(n.matches("10.1.2.3") && !n.matches("10.1.2.30"));
        assert!(n.matches("[::1]") && n.matches("::1"));
        assert!(n.matches("host") && !n.matches("otherhost"));
        assert!(!n.matches("api.openai.com"));
        assert!(NoProxy::parse("*").matches("anything.at.all"));
        assert!(!NoProxy::parse("").matches("x"));
    }

    #[test]
    fn standard_proxy_variables_are_ignored_unless_asked_for() {
        let env = [
            ("HTTPS_PROXY", "http://corp:3128"),
            ("http_proxy", "http://plain:3128"),
            ("no_proxy", "internal"),
        ];
        let c = parse(&env).unwrap();
        assert!(c.proxy_url.is_none());
        assert!(!c.no_proxy.matches("internal"));

        let mut with = env.to_vec();
        with.push(("PROXY_FROM_ENV", "true"));
        let c = parse(&with).unwrap();
        assert_eq!(
            c.proxy_url.unwrap().host,
            "corp",
            "https upstream uses HTTPS_PROXY"
        );
        assert!(c.no_proxy.matches("a.internal"));

        with.push(("OPENAI_API_URL", "http://local:9000"));
        let c = parse(&with).unwrap();
        assert_eq!(
            c.proxy_url.unwrap().host,
            "plain",
            "http upstream uses http_proxy"
        );

        with.push(("PROXY_URL", "http://explicit:1"));
        assert_eq!(parse(&with).unwrap().proxy_url.unwrap().host, "explicit");
    }

    #[test]
    fn a_bad_conventional_proxy_variable_is_named() {
        let e = parse(&[("PROXY_FROM_ENV", "true"), ("HTTPS_PROXY", "ftp://u:pw@x")]).unwrap_err();
        assert_eq!(e.variable, "HTTPS_PROXY");
        assert!(!e.to_string().contains("pw"));
    }
}
