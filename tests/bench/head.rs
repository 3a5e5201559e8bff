//! A response head read from a file, for the bench targets that send the proxy's head without
//! doing the proxy's work (CEILING-HEAD in `upstream.rs`, STACK-CACHE-HEAD in `forwarder.rs`).

use actix_web::HttpResponseBuilder;
use actix_web::http::header::{HeaderName, HeaderValue};

/// Header lines to add to an answer.
pub type Head = Vec<(HeaderName, HeaderValue)>;

/// The head in the file named by the environment variable `var`, empty when it is unset.
/// Panics on a file that cannot be read or a line that is not a header: a bench target with a
/// wrong head would measure something else.
pub fn from_env(var: &str) -> Head {
    std::env::var(var).map_or_else(|_| Vec::new(), |path| read(var, &path))
}

/// Reads `name: value` lines (a response head without its status line, as curl dumps it).
fn read(var: &str, path: &str) -> Head {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{var} {path}: {e}"));
    text.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("{var} {path}: not a header line: {line}"));
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .unwrap_or_else(|e| panic!("{var} {path}: header name {name:?}: {e}"));
            let value = HeaderValue::from_str(value.trim())
                .unwrap_or_else(|e| panic!("{var} {path}: value of {name}: {e}"));
            (name, value)
        })
        .collect()
}

/// Appends every header of `head` to `response`.
pub fn append(response: &mut HttpResponseBuilder, head: &Head) {
    for (name, value) in head {
        response.append_header((name.clone(), value.clone()));
    }
}
