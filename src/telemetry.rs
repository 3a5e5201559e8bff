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
    if result.is_ok() {
        log_panics();
    }
}

/// A panic is our bug: log it at `error` (actix restarts the worker), then let the default
/// hook print it as usual.
fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(panic = %info, "bug: a worker thread panicked");
        default(info);
    }));
}

/// The per-request span. Unlike tracing-actix-web's default it records neither the query
/// string nor a client IP taken from `X-Forwarded-For`, and it logs no second error line:
/// the access log middleware writes the one line per request.
pub struct RequestSpan;

impl tracing_actix_web::RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        tracing::info_span!("request", method = %request.method(), path = %request.path())
    }

    fn on_request_end<B: actix_web::body::MessageBody>(
        _span: tracing::Span,
        _outcome: &Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
    ) {
    }
}
