//! Log output: JSON or human-readable lines, level from RUST_LOG (default `info`).

use std::io::BufWriter;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{ConfigError, LogFormat};
use crate::json_lines::JsonLines;

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

/// Lines that may wait for the writer thread before a request that logs waits for room.
const LINES_IN_FLIGHT: usize = 1024;

/// Standard output, written by a thread of its own. A worker that logs a line only formats it
/// and hands it over: it never takes stdout's lock or makes a `write` per line (with a line per
/// request, those two cost the default `RUST_LOG=info` about 30% of its cache hits per second).
/// The writer thread writes whatever has queued up in one `write`. Nothing is dropped: when the
/// reader of stdout falls behind and LINES_IN_FLIGHT lines wait, logging waits too, as a direct
/// write to a full pipe would. 1,024 access log lines (about 350 KB) are milliseconds of
/// logging at full speed; 8,192 held the same throughput and added 0.9 MB to the idle RSS.
/// Keep the guard until the end of `main`: dropping it writes out what is still queued.
pub fn stdout_writer() -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LINES_IN_FLIGHT)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stdout()))
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
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    if result.is_ok() {
        // JSON lines carry no span fields, so there a request span would be built for nothing.
        REQUEST_SPANS.store(format == LogFormat::Pretty, Ordering::Relaxed);
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

/// Whether log lines show the request span (`pretty` prefixes a request's `warn` lines with
/// its method and path). JSON lines do not, and building the span anyway (registering it,
/// formatting its fields, entering it at every poll) cost about 8% of the hits per second at
/// `RUST_LOG=info`, where it is enabled (1.09x with it left out): in JSON it is left out.
static REQUEST_SPANS: AtomicBool = AtomicBool::new(true);

/// Whether requests get a span: tracing-actix-web's layer is there only then (see `startup`).
pub fn request_spans() -> bool {
    REQUEST_SPANS.load(Ordering::Relaxed)
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
