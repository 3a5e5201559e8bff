//! Entry point: read the environment, start logging, serve until SIGTERM/SIGINT.
//! `openai-cache-proxy healthcheck` instead asks a running proxy's `/health` (exit 0 or 1).

use std::process::ExitCode;

use openai_cache_proxy::{Application, Config, healthcheck, telemetry};

/// jemalloc instead of glibc malloc: less CPU per request, and freed memory goes back to the
/// system (a background thread purges pages left unused for jemalloc's decay time, 10 s by
/// default) instead of staying in glibc's per-thread arenas. Measured in the README.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[actix_web::main]
async fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    if let Some(other) = command.as_deref().filter(|c| *c != "healthcheck") {
        eprintln!(
            "openai-cache-proxy: unknown command {other:?}; usage: openai-cache-proxy [healthcheck]"
        );
        return ExitCode::from(2);
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        // Docker reserves exit code 2 for health checks: a broken environment is unhealthy.
        Err(e) if command.is_some() => {
            eprintln!("healthcheck: {e}");
            return ExitCode::from(1);
        }
        Err(e) => return fail(&e),
    };
    if command.is_some() {
        return healthcheck::run(&config).await;
    }
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = match telemetry::env_filter(rust_log.as_deref(), "info") {
        Ok(f) => f,
        Err(e) => return fail(&e),
    };
    // Held to the end: dropping it writes out the lines still queued.
    let (stdout, _flush_on_exit) = telemetry::stdout_writer();
    telemetry::init(config.log_format, filter, stdout);
    // Each client connection holds two descriptors (its socket, and the duplicate that
    // CLIENT_IDLE_TIMEOUT closes it by), so the soft limit, often 1,024, goes up to the hard
    // one, as Go's runtime and nginx's `worker_rlimit_nofile` do.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(open_files) => tracing::debug!(open_files, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }

    let app = match Application::build(config) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("openai-cache-proxy: cannot listen: {e}");
            return ExitCode::from(1);
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("openai-cache-proxy: server error: {e}");
            ExitCode::from(1)
        }
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("openai-cache-proxy: {e}");
    ExitCode::from(2)
}
