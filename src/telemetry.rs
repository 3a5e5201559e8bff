//! Log output: JSON or human-readable lines, level from RUST_LOG (default `info`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{ConfigError, LogFormat};

/// Parses RUST_LOG (or `default` when unset) into a filter, naming RUST_LOG on error.
pub fn env_filter(rust_log: Option<&str>, default: &str) -> Result<EnvFilter, ConfigError> {
    let directives = rust_log.unwrap_or(default);
    EnvFilter::builder()
        .parse(directives)
        .map_err(|_| ConfigError {
            variable: "RUST_LOG",
            expected: "must be a tracing filter such as info or openai_cache_proxy=debug".into(),
            value: Some(directives.to_owned()),
        })
}

/// Installs the global subscriber writing to `writer`. Call once per process.
pub fn init<W>(format: LogFormat, filter: EnvFilter, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
