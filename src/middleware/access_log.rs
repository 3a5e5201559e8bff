//! One structured log line per request, the request id, and the headers every response carries.

use std::cell::Cell;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderValue;
use actix_web::http::{Method, Uri};
use actix_web::middleware::Next;
use actix_web::{Error, HttpRequest, web};
use bytes::Bytes;
use uuid::Uuid;

use crate::cache::{CacheKey, CacheStatus, NoCacheReason, ShortKey};
use crate::client_idle::Watch;
use crate::client_ip::client_ip;
use crate::headers::{PROXY_ID, X_PROXY, X_REQUEST_ID};
use crate::startup::AppState;

/// What the proxy handler did, left in the connection's [`ConnNotes`] for this log line.
#[derive(Debug, Clone, Copy)]
pub struct RequestOutcome {
    pub cache: CacheStatus,
    pub reason: Option<NoCacheReason>,
    pub upstream_status: Option<u16>,
    /// Time to the upstream's response head, when this request called it.
    pub upstream_ms: Option<f64>,
    pub key: Option<CacheKey>,
}

/// What the access log and the handlers tell each other about a connection's request in
/// progress: the client address (for the rate limiter) and what the proxy handler did (for
/// the log line and the counters).
///
/// One per connection, added when it is accepted (`on_connect` in startup.rs), rather than
/// in each request's extensions: actix gives every request a new extensions table, so an
/// insert allocated the table and a box for the value on every request, about 500
/// instructions of a HIT (callgrind). HTTP/1.1 serves a connection's requests one at a
/// time (this server speaks no HTTP/2), and the access log empties the notes before each
/// request and takes them after it, so nothing written for one request is read for another.
///
/// The notes also carry the connection's [`Watch`]: the access log tells it when a request
/// starts and when its response has ended, for CLIENT_IDLE_TIMEOUT.
#[derive(Clone)]
pub struct ConnNotes(Rc<Notes>);

struct Notes {
    client_ip: Cell<Option<IpAddr>>,
    outcome: Cell<Option<RequestOutcome>>,
    idle: Option<Rc<Watch>>,
}

impl ConnNotes {
    /// Notes for a newly accepted connection, watched for idleness if `idle` is given.
    pub fn new(idle: Option<Rc<Watch>>) -> Self {
        Self(Rc::new(Notes {
            client_ip: Cell::new(None),
            outcome: Cell::new(None),
            idle,
        }))
    }

    /// The client address the access log decided for this request (TCP peer unless behind
    /// TRUSTED_PROXIES), when the rate limiter needs it.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.0.client_ip.get()
    }

    /// Records what the proxy handler did with this request.
    pub fn set_outcome(&self, outcome: RequestOutcome) {
        self.0.outcome.set(Some(outcome));
    }

    /// Changes the outcome recorded for this request, if there is one.
    pub fn update_outcome(&self, change: impl FnOnce(&mut RequestOutcome)) {
        if let Some(mut o) = self.0.outcome.get() {
            change(&mut o);
            self.0.outcome.set(Some(o));
        }
    }

    fn start(&self, client_ip: Option<IpAddr>) {
        self.0.client_ip.set(client_ip);
        self.0.outcome.set(None);
        if let Some(idle) = &self.0.idle {
            idle.request_started();
        }
    }

    fn finish(&self) -> Option<RequestOutcome> {
        self.0.client_ip.set(None);
        self.0.outcome.take()
    }
}

pub async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    // Nothing is gathered for a line the filter (RUST_LOG) would drop.
    let logged = tracing::enabled!(tracing::Level::INFO).then(|| Logged {
        started: Instant::now(),
        method: req.method().clone(),
        // The URI shares the request's buffer; only its path is logged (a query string may
        // carry anything a client chose to put there).
        uri: req.uri().clone(),
    });
    let state = app_state(req.request());
    let ip = client_ip(
        req.peer_addr(),
        req.headers(),
        &state.config.trusted_proxies,
    );
    let notes = req.conn_data::<ConnNotes>().cloned();
    if let Some(notes) = &notes {
        // The address for the rate limiter only.
        notes.start(state.limiter.is_some().then_some(ip));
    }
    let mut request_id = incoming_request_id(&req).or_else(new_request_id);
    let api = crate::routes::is_api(req.path());

    // Ends the request for the connection's idle watch when the response body is done
    // with, or when this future is, if no response comes of it.
    let in_flight = InFlight(notes);
    let res = next.call(req).await;
    let outcome = in_flight.0.as_ref().and_then(ConnNotes::finish);
    let mut res = res?;

    let status = res.status().as_u16();
    if api {
        app_state(res.request())
            .metrics
            .record_request(outcome.map(|o| o.cache), status);
    }
    let headers = res.headers_mut();
    let proxy_id = HeaderValue::from_static(PROXY_ID);
    // The response's own value, if any, makes way for ours. A hit has none (an entry never
    // holds these, see `CachedResponse::stored_at`), so it is spared the search.
    let request_id_header = match &logged {
        Some(_) => request_id.clone(),
        None => request_id.take(),
    };
    if outcome.is_some_and(|o| o.cache == CacheStatus::Hit) {
        headers.append(X_PROXY.clone(), proxy_id);
        if let Some(v) = request_id_header {
            headers.append(X_REQUEST_ID.clone(), v);
        }
    } else {
        headers.insert(X_PROXY.clone(), proxy_id);
        if let Some(v) = request_id_header {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
    let line = logged.map(|l| {
        Box::new(LogLine {
            started: l.started,
            request_id,
            ip,
            method: l.method,
            uri: l.uri,
            status,
            outcome,
        })
    });
    Ok(res.map_body(|_, body| LoggedBody {
        body,
        bytes: 0,
        ended: false,
        line,
        _in_flight: in_flight,
    }))
}

/// A connection's request, in progress until this is dropped: with the response body, or
/// with the access log's future when there is no response.
struct InFlight(Option<ConnNotes>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(idle) = self.0.as_ref().and_then(|n| n.0.idle.as_ref()) {
            idle.request_ended();
        }
    }
}

/// The shared state, borrowed from the request (a clone of the handle would be two atomic
/// operations on a counter that every worker's requests touch).
fn app_state(req: &HttpRequest) -> &AppState {
    req.app_data::<web::Data<AppState>>()
        .expect("AppState is registered")
}

/// What the log line needs from the request, taken before the request is handed on.
struct Logged {
    started: Instant,
    method: Method,
    uri: Uri,
}

/// This request's log line, written when its body has been sent (or abandoned).
struct LogLine {
    started: Instant,
    request_id: Option<HeaderValue>,
    ip: IpAddr,
    method: Method,
    uri: Uri,
    status: u16,
    outcome: Option<RequestOutcome>,
}

impl LogLine {
    fn write(self, bytes_out: u64, complete: bool) {
        let o = self.outcome;
        let ms = |d: f64| (d * 1000.0).round() / 1000.0;
        tracing::info!(
            request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default(),
            client_ip = %self.ip,
            method = %self.method,
            path = self.uri.path(),
            status = self.status,
            cache = o.map(|o| o.cache.as_str()),
            no_cache_reason = o.and_then(|o| o.reason).map(NoCacheReason::as_str),
            upstream_status = o.and_then(|o| o.upstream_status),
            upstream_latency_ms = o.and_then(|o| o.upstream_ms).map(ms),
            key = o.and_then(|o| o.key).map(CacheKey::short).as_ref().map(ShortKey::as_str),
            bytes_out,
            complete,
            latency_ms = ms(self.started.elapsed().as_secs_f64() * 1000.0),
            "request"
        );
    }
}

pin_project_lite::pin_project! {
    /// The response body, counted on its way out; the log line goes when it ends or is
    /// dropped (a client that left mid-stream: `complete` is false).
    struct LoggedBody<B> {
        #[pin]
        body: B,
        bytes: u64,
        ended: bool,
        // Boxed: the line is some 200 bytes, and the response carrying this body is moved
        // several times on its way out, with the line or without it (`RUST_LOG=warn`). Boxed,
        // a HIT costs 757 instructions fewer at warn and 655 fewer at info, its allocation
        // included (callgrind).
        line: Option<Box<LogLine>>,
        // Dropped with the body: actix drops a response's body once it is sent (or the
        // client has gone).
        _in_flight: InFlight,
    }

    impl<B> PinnedDrop for LoggedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(line) = this.line.take() {
                line.write(*this.bytes, *this.ended);
            }
        }
    }
}

impl<B: MessageBody> MessageBody for LoggedBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        let next = this.body.poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(chunk))) => *this.bytes += chunk.len() as u64,
            Poll::Ready(None) => {
                *this.ended = true;
                if let Some(line) = this.line.take() {
                    line.write(*this.bytes, true);
                }
            }
            _ => {}
        }
        next
    }
}

/// A fresh request id: a random (v4) UUID, as tracing-actix-web draws.
fn new_request_id() -> Option<HeaderValue> {
    let mut buf = Uuid::encode_buffer();
    HeaderValue::from_str(Uuid::new_v4().hyphenated().encode_lower(&mut buf)).ok()
}

/// A client-supplied `X-Request-Id`, if it is short and harmless enough to echo and log.
fn incoming_request_id(req: &ServiceRequest) -> Option<HeaderValue> {
    let v = req.headers().get(&X_REQUEST_ID)?;
    let b = v.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
    ok.then(|| v.clone())
}
