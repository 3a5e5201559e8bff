//! `Application`: binds the listener, builds the shared state once, and runs the server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::{Extensions, HttpService, Request};
use actix_server::Server;
use actix_service::{IntoServiceFactory, ServiceFactoryExt, map_config};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Response, Service, ServiceFactory};
use actix_web::http::KeepAlive;
use actix_web::middleware::from_fn;
use actix_web::rt::net::TcpStream;
use actix_web::{App, web};
use tracing_actix_web::TracingLogger;

use crate::cache::{CacheStore, Flights};
use crate::client_idle;
use crate::config::Config;
use crate::drain;
use crate::headers::PeerHop;
use crate::metrics::Metrics;
use crate::middleware::{ConnNotes, Limiter, access_log, new_limiter, prune_idle};
use crate::routes;
use crate::savings::Savings;
use crate::shared::SharedTier;
use crate::telemetry::RequestSpan;
use crate::upstream::{UpstreamBase, build_client, tls_config};

/// How often idle rate-limit buckets are forgotten.
const LIMITER_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Process-wide state, built once and shared by every worker (never one per worker:
/// that would split the hit rate and multiply per-IP limits by the worker count).
pub struct AppState {
    pub config: Arc<Config>,
    pub cache: CacheStore,
    /// Upstream calls in progress for cacheable misses, shared by identical requests.
    pub flights: Flights,
    pub limiter: Option<Arc<Limiter>>,
    pub metrics: Arc<Metrics>,
    /// The Redis tier (L2 cache, shared clears and rate limit), when REDIS_URL is set.
    pub shared: Option<Arc<SharedTier>>,
    /// OPENAI_API_URL; request paths are appended to it.
    pub upstream: UpstreamBase,
    pub started_at: Instant,
}

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Binds HOST:PORT (port 0 picks a free one) and prepares the server.
    pub fn build(config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen_addr())?;
        let port = listener.local_addr()?.port();
        let metrics = Arc::new(Metrics::new(Savings::new(config.price_table.clone())));
        let limiter = new_limiter(config.rate_limit);
        if let Some(limiter) = &limiter {
            tokio::spawn(prune_idle(Arc::downgrade(limiter), LIMITER_PRUNE_EVERY));
        }
        let shared = match &config.redis {
            None => None,
            Some(redis) => Some(Arc::new(
                SharedTier::new(redis, metrics.redis.clone())
                    .map_err(|e| std::io::Error::other(format!("REDIS_URL: {e}")))?,
            )),
        };
        let state = web::Data::new(AppState {
            shared: shared.clone(),
            cache: CacheStore::new(
                config.max_cache_size_bytes,
                config.max_entry_size_bytes,
                config.cache_ttl,
                config.worker_threads(),
                metrics.clone(),
            ),
            flights: Flights::default(),
            limiter,
            metrics,
            upstream: UpstreamBase::new(&config.openai_api_url),
            started_at: Instant::now(),
            config: Arc::new(config),
        });
        if let Some(tier) = shared {
            let l1 = state.cache.clone();
            let follower = tier.clone();
            tokio::spawn(async move { tier.connect().await });
            tokio::spawn(async move { follower.follow_clears(l1).await });
        }
        let tls = tls_config(&state.config);
        tracing::info!(
            port,
            upstream = state.upstream.as_str(),
            proxy = state.config.proxy_url.as_ref().map(|p| p.redacted()),
            "openai-cache-proxy listening"
        );
        let config = Arc::clone(&state.config);
        let rate_limited = state.limiter.is_some();
        let app = move || {
            let client = build_client(
                &state.config,
                tls.clone(),
                state.metrics.upstream_connections.clone(),
            );
            App::new()
                .app_data(state.clone())
                .app_data(web::Data::new(client))
                .configure(|cfg| routes::configure(cfg, rate_limited))
                .wrap(from_fn(access_log))
        };
        // tracing-actix-web's layer gives each request its span. Without spans (JSON lines)
        // it would only wrap the request and its body in an empty span and draw a request id
        // that the access log draws itself: 1,031 instructions of a HIT (callgrind). An app
        // built without the layer has another type, hence two servers with one set-up; a
        // layer that is there but turned off (`Condition`) still cost a HIT 690.
        let server = if crate::telemetry::request_spans() {
            let app = move || app().wrap(TracingLogger::<RequestSpan>::new());
            serve(app, listener, &config)?
        } else {
            serve(app, listener, &config)?
        };
        Ok(Self { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/SIGINT, then stops accepting and lets in-flight requests finish
    /// for up to SHUTDOWN_TIMEOUT.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        tokio::spawn(async move {
            let signal = stop_signal().await;
            tracing::info!(
                signal,
                "stopping: no new connections, draining in-flight requests"
            );
            handle.stop(true).await;
        });
        self.server.await
    }
}

/// Serves `app` on `listener`, whichever middleware it has: actix-web's `HttpServer` set-up
/// (actix-server's workers, actix-http's HTTP/1 service) with two differences. Connections
/// hear of a graceful shutdown from their worker (src/drain.rs) rather than from a lock they
/// all share, and idle ones are closed by `client_idle` rather than by a timer per request.
fn serve<F, I, S, B>(app: F, listener: TcpListener, config: &Config) -> std::io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let mut builder = Server::build();
    let shutdown = builder.graceful_shutdown_signal();
    // The same count the cache sizes each worker's aliases at hand for.
    builder = builder.workers(config.worker_threads());
    let addr = listener.local_addr()?;
    let client_idle_timeout = config.client_idle_timeout;
    Ok(builder
        .listen("openai-cache-proxy", listener, move || {
            let shutdown = shutdown.clone();
            let app = app()
                .into_factory()
                .map_err(|err| err.into().error_response());
            HttpService::build()
                // No keep-alive timer of actix's: idle client connections are closed by
                // `client_idle` (CLIENT_IDLE_TIMEOUT), which also covers a request head sent
                // in part. A first head still has 5 s (`client_request_timeout`, 408), and a
                // closing connection 1 s to be shut down: HttpServer's defaults.
                .keep_alive(KeepAlive::Os)
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(addr)
                .graceful_shutdown_signal(move || drain::signal(&shutdown))
                .on_connect_ext(move |tcp: &TcpStream, data: &mut Extensions| {
                    let idle = client_idle::watch(tcp, client_idle_timeout);
                    data.insert(ConnNotes::new(idle));
                    // A streamed or forwarded response goes out as a head and then body
                    // chunks; with Nagle's algorithm each chunk after the head waits for the
                    // client's delayed ACK (~40 ms on Linux), which `make bench` showed on
                    // every keep-alive miss.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                    if let Ok(peer) = tcp.peer_addr() {
                        data.insert(PeerHop::new(peer.ip()));
                    }
                })
                // The app sees no host or address of the server's: HttpServer's would only
                // name the listener where a request has no Host header.
                .finish(map_config(app, |_| AppConfig::default()))
                .tcp()
        })?
        .shutdown_timeout(config.shutdown_timeout.as_secs().max(1))
        // actix treats SIGINT as a forced stop; we drain on both (see run_until_stopped).
        .disable_signals()
        .run())
}

/// Waits for SIGTERM or SIGINT (Ctrl-C) and names the one that came.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
