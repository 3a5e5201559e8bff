//! Client connections that wait too long for their next request are closed
//! (CLIENT_IDLE_TIMEOUT).
//!
//! actix-web's own keep-alive timer is not used (`KeepAlive::Os` in startup.rs), for two
//! reasons:
//! - it covers only a connection with nothing at all in its buffer. actix times out the
//!   head of a connection's *first* request (`client_request_timeout`, 5 s, answered 408),
//!   but a client that sent part of a later request's head and then stopped kept its
//!   connection, and the worker's state for it, for good;
//! - it is armed after every response and disarmed by the next request's first bytes,
//!   each time through tokio's timer wheel: about 1,700 instructions of a cache hit
//!   (callgrind, `tests/bench/callgrind_hit.sh`'s loop).
//!
//! Instead each worker looks at its connections once a second. The access log marks a
//! request's start and the end of its response ([`Watch`]); a connection that had neither
//! and no request in progress for CLIENT_IDLE_TIMEOUT is shut down, so actix reads the end
//! of the stream and drops it. It is closed between CLIENT_IDLE_TIMEOUT and a second more
//! after its last response (or its accept). A request in progress, however long its body
//! takes to arrive or its response to stream, is never cut by this.

use std::cell::{Cell, RefCell};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::rc::{Rc, Weak};
use std::time::Duration;

/// How often a worker looks at its connections.
const TICK: Duration = Duration::from_secs(1);

/// One connection's comings and goings, shared with the access log through its notes.
pub struct Watch {
    /// A second descriptor of the connection's socket, kept to shut it down. A duplicate
    /// rather than the number of actix's own: that number could be reused by another
    /// socket once actix has closed its descriptor, and this one cannot.
    socket: std::net::TcpStream,
    busy: Cell<bool>,
    /// Changes with every request start and response end.
    events: Cell<u32>,
}

impl Watch {
    /// The connection's next request has arrived (its head is complete).
    pub fn request_started(&self) {
        self.busy.set(true);
        self.events.set(self.events.get().wrapping_add(1));
    }

    /// Its response has been sent, abandoned or never made.
    pub fn request_ended(&self) {
        self.busy.set(false);
        self.events.set(self.events.get().wrapping_add(1));
    }
}

/// A worker's connections, as its sweep last saw them.
struct Watched {
    conn: Weak<Watch>,
    events: u32,
    quiet_ticks: u64,
}

thread_local! {
    /// This worker's connections; `None` until its first one (which starts its sweep).
    static WATCHED: RefCell<Option<Vec<Watched>>> = const { RefCell::new(None) };
}

/// Starts watching a newly accepted connection on this worker, to be closed after `timeout`
/// (whole seconds) without a request. `None` if its socket cannot be duplicated (no
/// descriptor left): that connection is then closed only by its client.
pub fn watch(tcp: &tokio::net::TcpStream, timeout: Duration) -> Option<Rc<Watch>> {
    let socket = match tcp.as_fd().try_clone_to_owned() {
        Ok(fd) => std::net::TcpStream::from(fd),
        Err(e) => {
            tracing::warn!(error = %e, "client connection not watched for idleness");
            return None;
        }
    };
    let watch = Rc::new(Watch {
        socket,
        busy: Cell::new(false),
        events: Cell::new(0),
    });
    WATCHED.with(|watched| {
        let mut watched = watched.borrow_mut();
        let list = watched.get_or_insert_with(|| {
            actix_web::rt::spawn(sweep(timeout.as_secs()));
            Vec::new()
        });
        list.push(Watched {
            conn: Rc::downgrade(&watch),
            // Unlike any count the connection has: its first tick counts as activity, so it
            // gets the whole timeout from its accept too.
            events: u32::MAX,
            quiet_ticks: 0,
        });
    });
    Some(watch)
}

/// Once a second: forgets closed connections and shuts down those quiet for `limit` ticks.
/// A connection whose last event came between two ticks is seen quiet from the second, so
/// it is closed after `limit` to `limit + 1` seconds.
async fn sweep(limit: u64) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        WATCHED.with(|watched| {
            let mut watched = watched.borrow_mut();
            let Some(list) = watched.as_mut() else { return };
            list.retain_mut(|w| {
                let Some(conn) = w.conn.upgrade() else {
                    return false;
                };
                let events = conn.events.get();
                if conn.busy.get() || events != w.events {
                    w.events = events;
                    w.quiet_ticks = 0;
                    return true;
                }
                w.quiet_ticks += 1;
                if w.quiet_ticks < limit {
                    return true;
                }
                // actix reads the end of the stream and drops the connection; a client that
                // had sent part of a request gets no answer. Failing here means the socket
                // is already shut down or reset, which ends the connection anyway.
                if let Err(e) = conn.socket.shutdown(Shutdown::Both) {
                    tracing::debug!(error = %e, "idle client connection already gone");
                }
                false
            });
        });
    }
}
