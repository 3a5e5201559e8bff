//! Cacheability: the one place that decides whether a request or response may use the cache.

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::{Method, StatusCode};

/// POST endpoints whose answers are a pure function of the request.
const CACHEABLE_POSTS: &[&str] = &["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// Why a request or response did not use the cache (logged at debug level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCacheReason {
    /// Method and path are not in the cacheable set.
    NotCacheableEndpoint,
    /// The client sent `Cache-Control: no-store`.
    ClientNoStore,
    /// Only 200 and 201 are stored; the upstream's errors always pass through fresh.
    Status,
    /// The upstream said `Cache-Control: no-store`.
    UpstreamNoStore,
    /// The body is larger than the per-entry limit.
    TooLarge,
    /// No Content-Length, and neither JSON nor an event stream: nothing shows that such a
    /// body arrived whole (awc ends a chunked body cut off by EOF as if it were complete).
    UnverifiableEnd,
}

impl NoCacheReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotCacheableEndpoint => "not_cacheable_endpoint",
            Self::ClientNoStore => "client_no_store",
            Self::Status => "status",
            Self::UpstreamNoStore => "upstream_no_store",
            Self::TooLarge => "too_large",
            Self::UnverifiableEnd => "unverifiable_end",
        }
    }
}

/// What a cacheable request allows (RFC 9111 §5.2.1 request directives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Directives {
    /// False for `no-cache` (or `Pragma: no-cache`): forward, then store the fresh answer.
    pub lookup: bool,
    /// `max-age=N`: a stored entry may answer only if at most N seconds old.
    pub max_age: Option<u64>,
}

/// May this request use the cache, and how? `Err` means bypass it entirely.
pub fn request_policy(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Directives, NoCacheReason> {
    let endpoint_ok = (method == Method::GET && path.starts_with("/v1/"))
        || (method == Method::POST && CACHEABLE_POSTS.contains(&path));
    if !endpoint_ok {
        return Err(NoCacheReason::NotCacheableEndpoint);
    }
    let mut d = Directives {
        lookup: true,
        max_age: None,
    };
    for (name, value) in directives(headers, &header::CACHE_CONTROL) {
        match name.as_str() {
            "no-store" => return Err(NoCacheReason::ClientNoStore),
            "no-cache" => d.lookup = false,
            // An unparseable max-age is treated as 0 (RFC 9111 §1.2.2).
            "max-age" => {
                let secs = value
                    .and_then(|v| v.trim_matches('"').parse().ok())
                    .unwrap_or(0);
                d.max_age = Some(d.max_age.map_or(secs, |m: u64| m.min(secs)));
            }
            _ => {}
        }
    }
    if directives(headers, &header::PRAGMA).any(|(n, _)| n == "no-cache") {
        d.lookup = false;
    }
    Ok(d)
}

/// May this upstream response (head only) be stored?
pub fn response_policy(status: StatusCode, headers: &HeaderMap) -> Result<(), NoCacheReason> {
    if !matches!(status, StatusCode::OK | StatusCode::CREATED) {
        return Err(NoCacheReason::Status);
    }
    if has_directive(headers, &header::CACHE_CONTROL, &["no-store"]) {
        return Err(NoCacheReason::UpstreamNoStore);
    }
    // Without a length, only content that proves its own end may be stored: a stream's final
    // `data: [DONE]`, or JSON that parses (both checked when the body ends).
    if !headers.contains_key(header::CONTENT_LENGTH) && BodyKind::of(headers) == BodyKind::Other {
        return Err(NoCacheReason::UnverifiableEnd);
    }
    Ok(())
}

/// What a response body is, by its `Content-Type`: it decides how the body is relayed and
/// how its completeness is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `text/event-stream`: relayed as it comes; complete with its final `data: [DONE]`.
    EventStream,
    /// `application/json`: complete when it parses.
    Json,
    Other,
}

impl BodyKind {
    pub fn of(headers: &HeaderMap) -> Self {
        let Some(ct) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        else {
            return Self::Other;
        };
        let ct = ct.trim_start().to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            Self::EventStream
        } else if ct.starts_with("application/json") {
            Self::Json
        } else {
            Self::Other
        }
    }
}

/// `(lower-case name, value)` of each comma-separated directive in `name`'s values.
fn directives<'a>(
    headers: &'a HeaderMap,
    name: &header::HeaderName,
) -> impl Iterator<Item = (String, Option<&'a str>)> + 'a {
    headers
        .get_all(name)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            let (n, v) = match d.split_once('=') {
                Some((n, v)) => (n, Some(v.trim())),
                None => (d, None),
            };
            (n.trim().to_ascii_lowercase(), v)
        })
}

fn has_directive(headers: &HeaderMap, name: &header::HeaderName, wanted: &[&str]) -> bool {
    directives(headers, name).any(|(n, _)| wanted.contains(&n.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cacheable_endpoints() {
        let none = HeaderMap::new();
        let plain = Ok(Directives {
            lookup: true,
            max_age: None,
        });
        assert_eq!(request_policy(&Method::GET, "/v1/models", &none), plain);
        assert_eq!(
            request_policy(&Method::POST, "/v1/chat/completions", &none),
            plain
        );
        assert_eq!(
            request_policy(&Method::POST, "/v1/embeddings", &none),
            plain
        );
        for (m, p) in [
            (Method::POST, "/v1/files"),
            (Method::POST, "/v1/audio/transcriptions"),
            (Method::DELETE, "/v1/models/x"),
            (Method::POST, "/v1/chat/completions/extra"),
        ] {
            assert_eq!(
                request_policy(&m, p, &none),
                Err(NoCacheReason::NotCacheableEndpoint)
            );
        }
    }

    #[test]
    fn client_directives() {
        let post = |h: &HeaderMap| request_policy(&Method::POST, "/v1/embeddings", h);
        assert_eq!(
            post(&headers(&[("cache-control", "max-age=0, No-Store")])),
            Err(NoCacheReason::ClientNoStore)
        );
        for h in [
            headers(&[("cache-control", "no-cache")]),
            headers(&[("pragma", "no-cache")]),
        ] {
            assert!(!post(&h).unwrap().lookup);
        }
        let d = post(&headers(&[("cache-control", "max-age=60")])).unwrap();
        assert_eq!((d.lookup, d.max_age), (true, Some(60)));
        let d = post(&headers(&[
            ("cache-control", "max-age=60"),
            ("cache-control", "max-age=5"),
        ]))
        .unwrap();
        assert_eq!(d.max_age, Some(5), "the stricter of two wins");
        let d = post(&headers(&[("cache-control", "max-age=soon")])).unwrap();
        assert_eq!(d.max_age, Some(0));
    }

    #[test]
    fn only_complete_success_responses_are_stored() {
        let json = headers(&[("content-type", "application/json")]);
        assert_eq!(response_policy(StatusCode::OK, &json), Ok(()));
        assert_eq!(response_policy(StatusCode::CREATED, &json), Ok(()));
        for s in [
            StatusCode::NO_CONTENT,
            StatusCode::BAD_REQUEST,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::BAD_GATEWAY,
        ] {
            assert_eq!(response_policy(s, &json), Err(NoCacheReason::Status));
        }
        let sse = headers(&[("content-type", "text/event-stream; charset=utf-8")]);
        assert_eq!(response_policy(StatusCode::OK, &sse), Ok(()));
        let no_store = headers(&[("cache-control", "no-store")]);
        assert_eq!(
            response_policy(StatusCode::OK, &no_store),
            Err(NoCacheReason::UpstreamNoStore)
        );
        let chunked_binary = headers(&[("content-type", "application/octet-stream")]);
        assert_eq!(
            response_policy(StatusCode::OK, &chunked_binary),
            Err(NoCacheReason::UnverifiableEnd)
        );
        let sized_binary = headers(&[
            ("content-type", "application/octet-stream"),
            ("content-length", "5"),
        ]);
        assert_eq!(response_policy(StatusCode::OK, &sized_binary), Ok(()));
    }
}
