//! The client's IP address: the TCP peer, or, behind TRUSTED_PROXIES, the right-most
//! untrusted address in `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

use crate::headers::X_FORWARDED_FOR;

/// Walks `X-Forwarded-For` from the right only while the hop that added the entry is
/// trusted, so a client can prepend whatever it likes without effect (the same rule as
/// nginx's `real_ip_recursive`). With no trusted proxies the header is ignored entirely.
pub fn client_ip(peer: Option<SocketAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let mut current = peer
        .map(|p| p.ip().to_canonical())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    if trusted.is_empty() {
        return current;
    }
    let entries: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in entries.iter().rev() {
        if !trusted.iter().any(|net| net.contains(&current)) {
            break;
        }
        match entry.parse::<IpAddr>() {
            Ok(ip) => current = ip.to_canonical(),
            Err(_) => break,
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn xff(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static(v),
        );
        h
    }

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(s.parse().unwrap(), 1234))
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        let ip = client_ip(
            peer("203.0.113.9"),
            &xff("1.2.3.4"),
            &["10.0.0.0/8".parse().unwrap()],
        );
        assert_eq!(ip.to_string(), "203.0.113.9");
        let ip = client_ip(peer("10.0.0.1"), &xff("1.2.3.4"), &[]);
        assert_eq!(ip.to_string(), "10.0.0.1");
    }

    #[test]
    fn trusted_peer_yields_the_rightmost_untrusted_address() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        // The client spoofed 6.6.6.6; the trusted proxy appended the real 198.51.100.7.
        let ip = client_ip(
            peer("10.0.0.1"),
            &xff("6.6.6.6, 198.51.100.7, 10.0.0.2"),
            &trusted,
        );
        assert_eq!(ip.to_string(), "198.51.100.7");
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let ip = client_ip(peer("10.0.0.1"), &xff("1.1.1.1, not-an-ip"), &trusted);
        assert_eq!(ip.to_string(), "10.0.0.1");
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_ranges() {
        let trusted = ["127.0.0.0/8".parse().unwrap()];
        let ip = client_ip(peer("::ffff:127.0.0.1"), &xff("192.0.2.1"), &trusted);
        assert_eq!(ip.to_string(), "192.0.2.1");
    }
}
