//! Header names this proxy sets, and the hop-by-hop filter used on both legs.

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};

// Ready-made names, built at compile time: a hit inserts five of them, and
// `HeaderName::from_static` called per answer checks the name against the table of standard
// headers and each of its characters every time.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub static X_CACHE_TIMESTAMP: HeaderName = HeaderName::from_static("x-cache-timestamp");
pub static X_CACHE_KEY: HeaderName = HeaderName::from_static("x-cache-key");
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
pub static X_PROXY: HeaderName = HeaderName::from_static("x-proxy");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static RATE_LIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub static RATE_LIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

/// This hop's entry for `X-Forwarded-For`: the peer's address, formatted once per connection
/// (`on_connect` in startup.rs) instead of on every forwarded request of a keep-alive one.
#[derive(Clone)]
pub struct PeerHop(pub HeaderValue);

impl PeerHop {
    pub fn new(peer: std::net::IpAddr) -> Self {
        let text = peer.to_canonical().to_string();
        Self(HeaderValue::try_from(text).expect("an IP address is a valid header value"))
    }
}

/// `X-Proxy` value on every response.
pub const PROXY_ID: &str = concat!("openai-cache-proxy/", env!("CARGO_PKG_VERSION"));

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus `Host`,
/// which awc sets from the upstream URL. `Expect` is answered by our own server and
/// `Content-Length` is recomputed for the body we actually send.
const ALWAYS_DROPPED: &[HeaderName] = &[
    header::CONNECTION,
    header::HOST,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::EXPECT,
    header::CONTENT_LENGTH,
];

/// The headers of `headers` that may be forwarded to the other leg: everything except
/// hop-by-hop headers (`Connection` and the names it lists, `Keep-Alive`, `Proxy-*`, `TE`,
/// `Trailer`, `Transfer-Encoding`, `Upgrade`), `Host`, `Expect` and `Content-Length`.
pub fn end_to_end(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    headers.iter().filter(move |(name, _)| {
        let n = name.as_str();
        !(ALWAYS_DROPPED.contains(name)
            || n == "keep-alive"
            || n.starts_with("proxy-")
            || listed.iter().any(|l| l == n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped_and_the_rest_kept() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic abc"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("host", "localhost:8080"),
            ("expect", "100-continue"),
            ("content-length", "12"),
            ("x-secret-hop", "1"),
            ("authorization", "Bearer sk-test"),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("openai-organization", "org-1"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut kept: Vec<&str> = end_to_end(&h).map(|(n, _)| n.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            [
                "authorization",
                "content-encoding",
                "content-type",
                "openai-organization"
            ]
        );
    }
}
