//! `UpstreamBase`: OPENAI_API_URL, and the upstream URL of each forwarded request (the
//! request's path and query appended to it).

use actix_web::http::Uri;
use actix_web::http::uri::{Authority, Parts, PathAndQuery, Scheme};

pub struct UpstreamBase {
    /// OPENAI_API_URL without a trailing slash.
    text: String,
    /// Its scheme and authority when it has no path (`https://api.openai.com`, the usual
    /// case): a request's upstream URL is then put together from parts, reusing the path the
    /// request line was parsed into, instead of joining two strings and parsing the result.
    origin: Option<(Scheme, Authority)>,
}

impl UpstreamBase {
    pub fn new(url: &url::Url) -> Self {
        let text = url.as_str().trim_end_matches('/').to_owned();
        let origin = Uri::try_from(text.as_str())
            .ok()
            .filter(|u| u.path() == "/" && u.query().is_none())
            .and_then(|u| Some((u.scheme()?.clone(), u.authority()?.clone())));
        Self { text, origin }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Where `request` (a request line's URI: path and query) goes upstream.
    pub fn join(&self, request: &Uri) -> Result<Uri, actix_web::http::uri::InvalidUri> {
        match &self.origin {
            Some((scheme, authority)) => {
                let mut parts = Parts::default();
                parts.scheme = Some(scheme.clone());
                parts.authority = Some(authority.clone());
                parts.path_and_query = Some(
                    request
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| PathAndQuery::from_static("/")),
                );
                Ok(Uri::from_parts(parts).expect("scheme, authority and path make a URI"))
            }
            None => {
                let path_and_query = request.path_and_query().map_or("/", PathAndQuery::as_str);
                Uri::try_from([self.text.as_str(), path_and_query].concat())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(base: &str, request: &str) -> String {
        let base = UpstreamBase::new(&url::Url::parse(base).unwrap());
        base.join(&request.parse().unwrap()).unwrap().to_string()
    }

    #[test]
    fn the_request_path_and_query_are_appended_to_the_base() {
        // Origin-only bases are put together from parts; bases with a path are joined as text.
        for (base, request, upstream) in [
            (
                "https://api.openai.com/",
                "/v1/chat/completions",
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                "http://127.0.0.1:9000",
                "/v1/models?limit=2&after=a%20b",
                "http://127.0.0.1:9000/v1/models?limit=2&after=a%20b",
            ),
            (
                "http://gateway:9000/openai",
                "/v1/embeddings?x=1",
                "http://gateway:9000/openai/v1/embeddings?x=1",
            ),
            (
                "http://[::1]:8080",
                "/v1/files",
                "http://[::1]:8080/v1/files",
            ),
        ] {
            assert_eq!(join(base, request), upstream, "{base} + {request}");
        }
    }

    #[test]
    fn only_a_base_without_a_path_is_kept_in_parts() {
        let origin = UpstreamBase::new(&url::Url::parse("https://api.openai.com").unwrap());
        assert!(origin.origin.is_some());
        assert_eq!(origin.as_str(), "https://api.openai.com");
        let prefixed = UpstreamBase::new(&url::Url::parse("http://h:1/openai").unwrap());
        assert!(prefixed.origin.is_none());
        assert_eq!(prefixed.as_str(), "http://h:1/openai");
    }
}
