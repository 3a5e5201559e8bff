//! `ProxyError`: every error this proxy itself produces, rendered as OpenAI-style JSON.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

/// Errors produced by the proxy (never the upstream's own errors, which pass through).
///
/// The rendered message is fixed and safe: it never contains a cause chain, URL, header or
/// configuration value.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // Caused by the client.
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("Request body is larger than the {limit} bytes this proxy buffers for caching")]
    PayloadTooLarge { limit: u64 },
    #[error("Rate limit exceeded: {limit} requests per minute per client")]
    RateLimited { retry_after: Duration, limit: u32 },
    #[error("The request body did not arrive within {0:?}")]
    RequestTimeout(Duration),
    #[error("Missing or invalid admin token")]
    Unauthorized,
    /// Fixed text: the path is the client's input and may carry a secret.
    #[error("Unknown path: this proxy serves /v1/* and its operations endpoints")]
    NotFound,
    // Caused by the upstream.
    #[error("The upstream API could not be reached")]
    UpstreamUnavailable,
    #[error("The upstream API did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("The outbound proxy could not be reached")]
    OutboundProxyUnavailable,
    #[error("The outbound proxy rejected the tunnel to the upstream API with status {0}")]
    OutboundProxyRejected(u16),
    #[error("TLS verification of the upstream API's certificate failed")]
    UpstreamTlsVerification,
    #[error("The TLS handshake with the upstream API failed")]
    UpstreamTlsHandshake,
    // Our own bug.
    #[error("Internal proxy error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ProxyError {
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::InvalidRequest(_) => ("invalid_request_error", "invalid_request"),
            Self::PayloadTooLarge { .. } => ("invalid_request_error", "payload_too_large"),
            Self::RequestTimeout(_) => ("invalid_request_error", "request_timeout"),
            Self::RateLimited { .. } => ("rate_limit_exceeded", "rate_limit_exceeded"),
            Self::Unauthorized => ("authentication_error", "invalid_admin_token"),
            Self::NotFound => ("invalid_request_error", "not_found"),
            Self::UpstreamUnavailable => ("upstream_error", "upstream_unavailable"),
            Self::UpstreamTimeout(_) => ("upstream_error", "upstream_timeout"),
            Self::OutboundProxyUnavailable => ("upstream_error", "outbound_proxy_unavailable"),
            Self::OutboundProxyRejected(_) => ("upstream_error", "outbound_proxy_rejected"),
            Self::UpstreamTlsVerification => ("upstream_error", "upstream_tls_verification_failed"),
            Self::UpstreamTlsHandshake => ("upstream_error", "upstream_tls_handshake_failed"),
            Self::Internal(_) => ("server_error", "internal_error"),
        }
    }
}

impl ResponseError for ProxyError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::UpstreamUnavailable
            | Self::OutboundProxyUnavailable
            | Self::OutboundProxyRejected(_)
            | Self::UpstreamTlsVerification
            | Self::UpstreamTlsHandshake => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (kind, code) = self.kind();
        let mut res = HttpResponse::build(self.status_code());
        match self {
            Self::RateLimited { retry_after, limit } => {
                // Retry-After is whole seconds (RFC 9110 §10.2.3); round up so a client that
                // obeys it is admitted.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                res.insert_header((header::RETRY_AFTER, secs.max(1)));
                res.insert_header((crate::headers::RATE_LIMIT_LIMIT.clone(), *limit));
                res.insert_header((crate::headers::RATE_LIMIT_REMAINING.clone(), 0));
            }
            Self::Unauthorized => {
                res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            _ => {}
        }
        res.json(json!({
            "error": {
                "message": self.to_string(),
                "type": kind,
                "param": null,
                "code": code,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_web::test]
    async fn errors_render_the_openai_shape() {
        let res = ProxyError::UpstreamTimeout(Duration::from_secs(30)).error_response();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = to_bytes(res.into_body()).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "upstream_timeout");
        assert_eq!(v["error"]["type"], "upstream_error");
        assert!(v["error"]["param"].is_null());
        assert!(v["error"]["message"].as_str().unwrap().contains("30s"));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let res = ProxyError::RateLimited {
            retry_after: Duration::from_millis(1500),
            limit: 60,
        }
        .error_response();
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "2");
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let e = ProxyError::Internal("secret detail sk-123".into());
        assert!(!e.to_string().contains("sk-123"));
    }
}
