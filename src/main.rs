//! Entry point: read the environment, start logging, serve until SIGTERM/SIGINT.

use std::process::ExitCode;

use openai_cache_proxy::{Application, Config, telemetry};

#[actix_web::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = match telemetry::env_filter(rust_log.as_deref(), "info") {
        Ok(f) => f,
        Err(e) => return fail(&e),
    };
    telemetry::init(config.log_format, filter, std::io::stdout);

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
