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
    /// The client sent `Cache-Control: no-cache`/`no-store` or `Pragma: no-cache`.
    ClientOptOut,
    /// Only 200 and 201 are stored; the upstream's errors always pass through fresh.
    Status,
    /// An event stream (stored by a later version, passed through untouched here).
    Streaming,
    /// The upstream said `Cache-Control: no-store`.
    UpstreamNoStore,
    /// The body is larger than the per-entry limit.
    TooLarge,
}

impl NoCacheReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotCacheableEndpoint => "not_cacheable_endpoint",
            Self::ClientOptOut => "client_opt_out",
            Self::Status => "status",
            Self::Streaming => "streaming",
            Self::UpstreamNoStore => "upstream_no_store",
            Self::TooLarge => "too_large",
        }
    }
}

/// May this request be answered from, and stored into, the cache?
pub fn request_policy(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), NoCacheReason> {
    let endpoint_ok = (method == Method::GET && path.starts_with("/v1/"))
        || (method == Method::POST && CACHEABLE_POSTS.contains(&path));
    if !endpoint_ok {
        return Err(NoCacheReason::NotCacheableEndpoint);
    }
    let opted_out = has_directive(headers, &header::CACHE_CONTROL, &["no-cache", "no-store"])
        || has_directive(headers, &header::PRAGMA, &["no-cache"]);
    if opted_out {
        return Err(NoCacheReason::ClientOptOut);
    }
    Ok(())
}

/// May this upstream response (head only) be stored?
pub fn response_policy(status: StatusCode, headers: &HeaderMap) -> Result<(), NoCacheReason> {
    if !matches!(status, StatusCode::OK | StatusCode::CREATED) {
        return Err(NoCacheReason::Status);
    }
    let is_event_stream = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
    if is_event_stream {
        return Err(NoCacheReason::Streaming);
    }
    if has_directive(headers, &header::CACHE_CONTROL, &["no-store"]) {
        return Err(NoCacheReason::UpstreamNoStore);
    }
    Ok(())
}

fn has_directive(headers: &HeaderMap, name: &header::HeaderName, wanted: &[&str]) -> bool {
    headers
        .get_all(name)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            d.split('=')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .any(|d| wanted.contains(&d.as_str()))
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
        assert_eq!(request_policy(&Method::GET, "/v1/models", &none), Ok(()));
        assert_eq!(
            request_policy(&Method::POST, "/v1/chat/completions", &none),
            Ok(())
        );
        assert_eq!(
            request_policy(&Method::POST, "/v1/embeddings", &none),
            Ok(())
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
    fn client_cache_control_bypasses() {
        for h in [
            headers(&[("cache-control", "no-cache")]),
            headers(&[("cache-control", "max-age=0, No-Store")]),
            headers(&[("pragma", "no-cache")]),
        ] {
            assert_eq!(
                request_policy(&Method::POST, "/v1/embeddings", &h),
                Err(NoCacheReason::ClientOptOut)
            );
        }
        let h = headers(&[("cache-control", "max-age=60")]);
        assert_eq!(request_policy(&Method::POST, "/v1/embeddings", &h), Ok(()));
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
        assert_eq!(
            response_policy(StatusCode::OK, &sse),
            Err(NoCacheReason::Streaming)
        );
        let no_store = headers(&[("cache-control", "no-store")]);
        assert_eq!(
            response_policy(StatusCode::OK, &no_store),
            Err(NoCacheReason::UpstreamNoStore)
        );
    }
}
