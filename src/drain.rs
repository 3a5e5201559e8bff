//! Each worker's part of a graceful shutdown: its connections learn that the server is
//! stopping, so an idle one closes at once and a busy one after its current response
//! (actix-http's dispatcher does both when its shutdown signal fires).
//!
//! actix-web's `HttpServer` gives every connection a future on the server's one shutdown
//! channel, and actix-http polls that future each time it polls the connection. Polling it
//! takes the channel's lock (tokio's `Notify` waiter list), one lock for every connection
//! of every worker: a lock in every request's path, its cache line passed between cores.
//! So the server is assembled in startup.rs without `HttpServer`, and a connection's signal
//! is its worker's instead: one task per worker waits on the server's channel, and a
//! connection's poll looks at a flag of its own worker's and nothing else.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use actix_server::GracefulShutdownSignal;
use slab::Slab;

/// A worker's shutdown state.
#[derive(Default)]
struct Worker {
    stopping: Cell<bool>,
    /// The connections waiting to hear of it.
    waiting: RefCell<Slab<Waker>>,
}

impl Worker {
    fn stop(&self) {
        self.stopping.set(true);
        let waiting = std::mem::take(&mut *self.waiting.borrow_mut());
        for (_, waker) in waiting {
            waker.wake();
        }
    }
}

thread_local! {
    /// This worker's state; `None` until its first connection (which starts its task).
    static WORKER: RefCell<Option<Rc<Worker>>> = const { RefCell::new(None) };
}

/// A new connection's shutdown signal (actix-http's `graceful_shutdown_signal`): ready once
/// `server` starts a graceful shutdown. Called on the connection's worker thread.
pub fn signal(server: &GracefulShutdownSignal) -> Stopping {
    let worker = WORKER.with_borrow_mut(|worker| {
        worker
            .get_or_insert_with(|| {
                let worker = Rc::new(Worker::default());
                let (server, stopping) = (server.clone(), worker.clone());
                actix_web::rt::spawn(async move {
                    server.notified().await;
                    stopping.stop();
                });
                worker
            })
            .clone()
    });
    Stopping { worker, slot: None }
}

/// One connection's view of its worker's shutdown.
pub struct Stopping {
    worker: Rc<Worker>,
    /// Where its waker is kept, once it has been polled.
    slot: Option<usize>,
}

impl Future for Stopping {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.worker.stopping.get() {
            return Poll::Ready(());
        }
        let this = &mut *self;
        let mut waiting = this.worker.waiting.borrow_mut();
        match this.slot {
            // A connection is polled by its own task, so its waker rarely changes.
            Some(slot) => {
                let waker = &mut waiting[slot];
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
            }
            None => this.slot = Some(waiting.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Stopping {
    fn drop(&mut self) {
        // Once the worker is stopping its wakers are gone (woken), and the slots with them.
        if let Some(slot) = self.slot
            && !self.worker.stopping.get()
        {
            self.worker.waiting.borrow_mut().remove(slot);
        }
    }
}
