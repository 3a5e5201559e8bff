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
/// Names and values are kept for the life of the process and made `from_static`, so adding
/// them to an answer copies no bytes and counts no references: the least that sending them
/// costs.
fn read(var: &str, path: &str) -> Head {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{var} {path}: {e}"));
    text.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("{var} {path}: not a header line: {line}"));
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim();
            // Checked here, so that `from_static` below cannot panic.
            HeaderName::from_bytes(name.as_bytes())
                .unwrap_or_else(|e| panic!("{var} {path}: header name {name:?}: {e}"));
            HeaderValue::from_str(value)
                .unwrap_or_else(|e| panic!("{var} {path}: value of {name}: {e}"));
            (
                HeaderName::from_static(Box::leak(name.into_boxed_str())),
                HeaderValue::from_static(Box::leak(value.to_owned().into_boxed_str())),
            )
        })
        .collect()
}

/// Appends every header of `head` to `response`.
pub fn append(response: &mut HttpResponseBuilder, head: &Head) {
    for (name, value) in head {
        response.append_header((name.clone(), value.clone()));
    }
}
