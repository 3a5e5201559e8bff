//! Request coalescing: at most one upstream call per cache key at a time. Every concurrent
//! identical miss reads the same response, live, chunk by chunk, from a shared buffer that
//! one driver task fills from the upstream.
//!
//! Memory: while the response may still be stored (up to the per-entry limit) every chunk is
//! kept, for the cache entry and for late joiners. Past that limit the flight stops taking
//! joiners, forgets chunks every reader has passed, and reads the upstream only while the
//! slowest reader is less than `READ_AHEAD` bytes behind.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::{Notify, watch};

use super::{CacheKey, CachedResponse};

/// How far the driver may read ahead of the slowest reader once nothing is recorded.
const READ_AHEAD: usize = 1024 * 1024;

/// The response head every reader of a flight answers with.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: StatusCode,
    /// End-to-end headers of the upstream response.
    pub headers: HeaderMap,
    pub content_length: Option<u64>,
}

/// How a flight ended, as its readers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The upstream body arrived whole.
    Complete,
    /// The upstream answered, then the body broke off (or every reader left).
    Broken,
    /// The upstream never answered (connect failure, timeout): followers retry on their own.
    NoResponse,
}

#[derive(Default)]
struct State {
    head: Option<Arc<Head>>,
    /// Chunks from absolute index `base` on.
    chunks: VecDeque<Bytes>,
    base: usize,
    /// Bytes received so far.
    total: u64,
    /// Bytes currently held in `chunks`.
    held: usize,
    /// Every chunk is kept (the response can still be stored).
    recording: bool,
    end: Option<End>,
    /// Next chunk index of each live reader, by slot; `None` for a slot whose reader left.
    positions: Vec<Option<usize>>,
    /// The driver waits for a reader to make room (`Flight::room_to_read`).
    driver_waits: bool,
    /// The leader waits for the upstream's answer, not yet reading the flight (counted
    /// among the flight's clients).
    leader_waits: bool,
}

impl State {
    /// Whether any reader may be waiting for news. Decided under the lock that publishes the
    /// news: a reader that registers after it is released finds the news when it looks.
    fn has_readers(&self) -> bool {
        self.positions.iter().any(Option::is_some)
    }
}

/// One upstream call shared by every reader.
pub struct Flight {
    state: Mutex<State>,
    /// Bumped whenever the head, a chunk or the end arrives, if anyone reads the flight: a
    /// bump wakes through eight locks, and a leader that answers whole has no reader of its
    /// own. Readers hold receivers, so `closed()` tells the driver that nobody is listening
    /// any more.
    changed: watch::Sender<u64>,
    /// Readers advanced or left while the driver waits for read-ahead room.
    progress: Notify,
}

impl Flight {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                recording: true,
                leader_waits: true,
                ..State::default()
            }),
            changed: watch::channel(0).0,
            progress: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes every reader waiting for news (`wake`: `State::has_readers`, read under the
    /// lock that published it).
    fn bump(&self, wake: bool) {
        if wake {
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// The leader's reader, for an answer it relays through the flight (from then on the
    /// leader is counted as a reader, not as waiting).
    pub fn leader_reader(self: &Arc<Self>) -> Reader {
        self.add_reader(true)
    }

    /// A new reader that starts at the first chunk.
    pub fn reader(self: &Arc<Self>) -> Reader {
        self.add_reader(false)
    }

    fn add_reader(self: &Arc<Self>, leader: bool) -> Reader {
        // Subscribed before it is registered: a publisher that sees it registered (under the
        // lock) bumps a version it is sure to see.
        let changed = self.changed.subscribe();
        let mut st = self.lock();
        if leader {
            st.leader_waits = false;
        }
        let base = st.base;
        st.positions.push(Some(base));
        let slot = st.positions.len() - 1;
        Reader {
            flight: self.clone(),
            slot,
            next: st.base,
            changed,
            done: false,
        }
    }

    /// Still recording, and not failed: a new identical request may read this response.
    fn joinable(&self) -> bool {
        let st = self.lock();
        st.recording && matches!(st.end, None | Some(End::Complete))
    }

    /// Publishes the response head.
    pub fn set_head(&self, head: Arc<Head>) {
        let wake = {
            let mut st = self.lock();
            st.head = Some(head);
            st.has_readers()
        };
        self.bump(wake);
    }

    /// Appends a chunk. Returns false once the body outgrew `record_limit` (nothing more is
    /// recorded from then on).
    pub fn push(&self, chunk: Bytes, record_limit: u64) -> bool {
        let (recording, wake) = {
            let mut st = self.lock();
            st.total += chunk.len() as u64;
            st.held += chunk.len();
            st.chunks.push_back(chunk);
            if st.recording && st.total > record_limit {
                st.recording = false;
            }
            if !st.recording {
                trim(&mut st);
            }
            (st.recording, st.has_readers())
        };
        self.bump(wake);
        recording
    }

    /// The whole body so far followed by `last` (not yet published), if every chunk is still
    /// held and the result fits `limit`.
    pub fn recorded_body(&self, last: Option<&Bytes>, limit: u64) -> Option<Bytes> {
        let st = self.lock();
        let len = st.held + last.map_or(0, Bytes::len);
        if !st.recording || st.base != 0 || len as u64 > limit {
            return None;
        }
        let mut body = bytes::BytesMut::with_capacity(len);
        for c in st.chunks.iter().chain(last) {
            body.extend_from_slice(c);
        }
        Some(body.freeze())
    }

    /// Publishes a whole answer at once (its head, all of its body, and how it ended) to
    /// every reader, with one wake-up instead of one for each part.
    pub fn publish_whole(&self, head: Arc<Head>, body: Bytes, end: End) {
        let wake = {
            let mut st = self.lock();
            st.head = Some(head);
            if !body.is_empty() {
                st.total += body.len() as u64;
                st.held += body.len();
                st.chunks.push_back(body);
            }
            // Nothing more comes: chunks every reader has passed need not be kept.
            st.recording = false;
            trim(&mut st);
            st.end.get_or_insert(end);
            st.leader_waits = false;
            st.has_readers()
        };
        self.bump(wake);
    }

    pub fn finish(&self, end: End) {
        let wake = {
            let mut st = self.lock();
            st.end.get_or_insert(end);
            st.leader_waits = false;
            st.has_readers()
        };
        self.bump(wake);
    }

    /// Resolves when every reader has gone.
    pub async fn abandoned(&self) {
        self.changed.closed().await;
    }

    /// Waits until the slowest reader is less than `READ_AHEAD` bytes behind (only relevant
    /// once recording stopped; while recording everything is kept anyway).
    pub async fn room_to_read(&self) {
        loop {
            // Created before the look: a `notify_waiters` after it wakes this one.
            let notified = self.progress.notified();
            {
                let mut st = self.lock();
                if st.recording || st.held < READ_AHEAD {
                    return;
                }
                st.driver_waits = true;
            }
            notified.await;
        }
    }
}

/// Drops chunks every live reader has already passed.
fn trim(st: &mut State) {
    let slowest = st.positions.iter().flatten().min().copied();
    let upto = slowest.unwrap_or(st.base + st.chunks.len());
    while st.base < upto {
        match st.chunks.pop_front() {
            Some(c) => {
                st.held -= c.len();
                st.base += 1;
            }
            None => break,
        }
    }
}

/// One client's view of a flight: the head, then the body from the first chunk on.
pub struct Reader {
    flight: Arc<Flight>,
    slot: usize,
    next: usize,
    changed: watch::Receiver<u64>,
    done: bool,
}

impl Reader {
    /// The response head, or how the flight ended without one.
    pub async fn head(&mut self) -> Result<Arc<Head>, End> {
        loop {
            self.changed.borrow_and_update();
            {
                let st = self.flight.lock();
                if let Some(head) = &st.head {
                    return Ok(head.clone());
                }
                if let Some(end) = st.end {
                    return Err(end);
                }
            }
            if self.changed.changed().await.is_err() {
                return Err(End::NoResponse);
            }
        }
    }

    /// The next body chunk; `None` at the end, `Some(Err)` if the body broke off.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        loop {
            self.changed.borrow_and_update();
            {
                let mut st = self.flight.lock();
                if self.next < st.base + st.chunks.len() {
                    let chunk = st.chunks[self.next - st.base].clone();
                    self.next += 1;
                    st.positions[self.slot] = Some(self.next);
                    if !st.recording {
                        trim(&mut st);
                    }
                    let driver_waits = std::mem::take(&mut st.driver_waits);
                    drop(st);
                    if driver_waits {
                        self.flight.progress.notify_waiters();
                    }
                    return Some(Ok(chunk));
                }
                match st.end {
                    Some(End::Complete) => {
                        self.done = true;
                        return None;
                    }
                    Some(_) => {
                        self.done = true;
                        return Some(Err(broken_off()));
                    }
                    None => {}
                }
            }
            if self.changed.changed().await.is_err() {
                self.done = true;
                return Some(Err(broken_off()));
            }
        }
    }

    /// The body as a stream, for an actix response.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::unfold(
            self,
            |mut r| async move { r.next_chunk().await.map(|c| (c, r)) },
        )
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut st = self.flight.lock();
        st.positions[self.slot] = None;
        if !st.recording {
            trim(&mut st);
        }
        let driver_waits = std::mem::take(&mut st.driver_waits);
        drop(st);
        if driver_waits {
            self.flight.progress.notify_waiters();
        }
    }
}

/// The error that ends a response whose upstream body broke off.
pub fn broken_off() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the upstream response broke off",
    )
}

/// What `Flights::join` made of a request.
pub enum Role {
    /// No identical request is in flight: call the upstream and drive the flight. The leader
    /// takes a reader of its own (`Flight::leader_reader`) only if it relays the answer
    /// through the flight; one that answers whole hands it to any followers at once.
    Leader(Arc<Flight>),
    /// An identical request is in flight: read its response.
    Follower(Reader),
    /// No flight, but the cache has the answer: an identical flight stored it and closed
    /// after this request looked in the cache and before it came here.
    Cached(Arc<CachedResponse>),
}

/// The flights in progress, shared by every worker.
#[derive(Default)]
pub struct Flights {
    /// foldhash, as for the cache (store.rs): the keys are SHA-256 digests.
    map: DashMap<CacheKey, Arc<Flight>, foldhash::fast::RandomState>,
}

impl Flights {
    /// Follows `key`'s flight, or else leads a new one unless `cached` (a look in the cache,
    /// made while no flight for `key` can start or close) finds the answer.
    ///
    /// A flight stores its answer before it closes (`fill`), so a request that missed the
    /// cache just before an identical flight closed finds the answer here instead of calling
    /// the upstream once more.
    pub fn join(
        &self,
        key: CacheKey,
        cached: impl FnOnce() -> Option<Arc<CachedResponse>>,
    ) -> Role {
        let entry = self.map.entry(key);
        if let Entry::Occupied(e) = &entry
            && e.get().joinable()
        {
            return Role::Follower(e.get().reader());
        }
        if let Some(hit) = cached() {
            return Role::Cached(hit);
        }
        // None in flight, or one that takes no joiners any more: this one replaces it.
        let flight = Flight::new();
        entry.insert(flight.clone());
        Role::Leader(flight)
    }

    /// Always starts a new flight (a client that asked for a fresh answer with `no-cache`
    /// does not join one that started before it); later identical requests may follow it.
    pub fn lead(&self, key: CacheKey) -> Role {
        let flight = Flight::new();
        self.map.insert(key, flight.clone());
        Role::Leader(flight)
    }

    /// Stops new requests from joining `flight` (it ended, or outgrew the entry limit).
    pub fn close(&self, key: &CacheKey, flight: &Arc<Flight>) {
        self.map.remove_if(key, |_, f| Arc::ptr_eq(f, flight));
    }

    /// Flights in progress.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Clients currently waiting on or reading a flight that still takes joiners.
    pub fn clients(&self) -> usize {
        self.map
            .iter()
            .map(|f| {
                let st = f.lock();
                st.positions.iter().flatten().count() + usize::from(st.leader_waits)
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cache::{CacheStore, Tokens};
    use crate::metrics::Metrics;
    use crate::savings::{PriceTable, Savings};

    fn key(n: u8) -> CacheKey {
        CacheKey::compute("GET", &format!("/v1/{n}"), &HeaderMap::new(), b"")
    }

    /// Joins `key`'s flight, which must be new, with nothing in the cache: its leader's flight.
    fn lead(flights: &Flights, key: CacheKey) -> Arc<Flight> {
        match flights.join(key, || None) {
            Role::Leader(flight) => flight,
            _ => panic!("expected to lead"),
        }
    }

    /// Joins `key`'s flight, which must be in progress: a follower's reader.
    fn follow(flights: &Flights, key: CacheKey) -> Reader {
        match flights.join(key, || panic!("a follower does not look in the cache")) {
            Role::Follower(reader) => reader,
            _ => panic!("expected to follow"),
        }
    }

    fn head() -> Arc<Head> {
        Arc::new(Head {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            content_length: None,
        })
    }

    #[actix_web::test]
    async fn followers_share_the_leaders_response_from_the_first_byte() {
        let flights = Flights::default();
        let flight = lead(&flights, key(1));
        let mut leader = flight.leader_reader();
        flight.set_head(head());
        flight.push(Bytes::from_static(b"a"), 100);
        // A follower that joins late still gets the whole body.
        let mut follower = follow(&flights, key(1));
        flight.push(Bytes::from_static(b"b"), 100);
        flight.finish(End::Complete);
        for r in [&mut leader, &mut follower] {
            assert_eq!(r.head().await.unwrap().status, StatusCode::OK);
            assert_eq!(r.next_chunk().await.unwrap().unwrap(), "a");
            assert_eq!(r.next_chunk().await.unwrap().unwrap(), "b");
            assert!(r.next_chunk().await.is_none());
        }
        assert_eq!(flight.recorded_body(None, 100).unwrap(), "ab");
        let last = Bytes::from_static(b"c");
        assert_eq!(flight.recorded_body(Some(&last), 100).unwrap(), "abc");
        assert!(flight.recorded_body(Some(&last), 2).is_none());
        flights.close(&key(1), &flight);
        assert!(matches!(flights.join(key(1), || None), Role::Leader(..)));
    }

    #[actix_web::test]
    async fn past_the_record_limit_nobody_joins_and_read_chunks_are_freed() {
        let flights = Flights::default();
        let flight = lead(&flights, key(2));
        let mut leader = flight.leader_reader();
        assert!(flight.push(Bytes::from_static(b"12345"), 8));
        assert!(!flight.push(Bytes::from_static(b"67890"), 8));
        assert!(
            matches!(flights.join(key(2), || None), Role::Leader(..)),
            "no joining a big one"
        );
        assert_eq!(leader.next_chunk().await.unwrap().unwrap(), "12345");
        assert_eq!(leader.next_chunk().await.unwrap().unwrap(), "67890");
        assert_eq!(
            flight.lock().held,
            0,
            "chunks every reader passed are dropped"
        );
        assert!(flight.recorded_body(None, 100).is_none());
    }

    #[test]
    fn a_request_that_missed_as_an_identical_flight_closed_gets_the_stored_answer() {
        let store = CacheStore::new(
            1 << 20,
            1 << 16,
            Duration::from_secs(60),
            1,
            Arc::new(Metrics::new(Savings::new(PriceTable::default()))),
        );
        let flights = Flights::default();
        let flight = lead(&flights, key(4));
        // A second request looks in the cache while the flight is still out: a miss.
        assert!(store.get(&key(4)).is_none());
        // Before it joins, the flight stores its answer and closes (in that order, `fill`).
        let answer = Arc::new(CachedResponse::new(
            StatusCode::OK,
            Vec::new(),
            Bytes::from_static(b"{}"),
            Tokens::OnFirstHit {
                event_stream: false,
            },
        ));
        assert!(store.insert(key(4), Arc::clone(&answer)));
        flights.close(&key(4), &flight);
        // Joining, it finds the answer instead of leading a second upstream call.
        match flights.join(key(4), || store.get(&key(4))) {
            Role::Cached(hit) => assert!(Arc::ptr_eq(&hit, &answer)),
            _ => panic!("expected the stored answer"),
        }
        assert!(flights.is_empty(), "no flight was started");
        // What the look turns down (a stale answer, say) still leads a flight.
        assert!(matches!(flights.join(key(4), || None), Role::Leader(..)));
    }

    #[actix_web::test]
    async fn a_flight_without_an_answer_tells_followers_to_retry() {
        let flights = Flights::default();
        let flight = lead(&flights, key(3));
        let _leader = flight.leader_reader();
        let mut follower = follow(&flights, key(3));
        flight.finish(End::NoResponse);
        assert_eq!(follower.head().await.unwrap_err(), End::NoResponse);
    }

    #[actix_web::test]
    async fn a_broken_body_is_an_error_for_readers() {
        let flights = Flights::default();
        let flight = lead(&flights, key(4));
        let mut leader = flight.leader_reader();
        flight.set_head(head());
        flight.push(Bytes::from_static(b"partial"), 100);
        flight.finish(End::Broken);
        assert!(leader.next_chunk().await.unwrap().is_ok());
        assert!(leader.next_chunk().await.unwrap().is_err());
        assert!(leader.next_chunk().await.is_none());
    }

    #[actix_web::test]
    async fn the_driver_learns_when_every_reader_left() {
        let flights = Flights::default();
        let flight = lead(&flights, key(5));
        let leader = flight.leader_reader();
        let follower = follow(&flights, key(5));
        drop(leader);
        drop(follower);
        tokio::time::timeout(std::time::Duration::from_secs(5), flight.abandoned())
            .await
            .expect("abandonment is noticed");
    }

    #[actix_web::test]
    async fn a_follower_waiting_for_the_head_is_woken_by_a_whole_answer() {
        let flights = Flights::default();
        let flight = lead(&flights, key(6));
        let mut follower = follow(&flights, key(6));
        let waiting = tokio::spawn(async move {
            let head = follower.head().await;
            (
                head,
                follower.next_chunk().await,
                follower.next_chunk().await,
            )
        });
        // The follower is parked on the flight before the answer comes.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        flights.close(&key(6), &flight);
        flight.publish_whole(head(), Bytes::from_static(b"whole"), End::Complete);
        let (head, first, last) = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the follower is woken")
            .unwrap();
        assert_eq!(head.unwrap().status, StatusCode::OK);
        assert_eq!(first.unwrap().unwrap(), "whole");
        assert!(last.is_none());
    }

    #[actix_web::test]
    async fn the_leader_counts_as_a_client_until_it_reads_or_the_flight_ends() {
        let flights = Flights::default();
        let whole = lead(&flights, key(7));
        let _follower = follow(&flights, key(7));
        assert_eq!(flights.clients(), 2, "the waiting leader and its follower");
        let relayed = lead(&flights, key(8));
        assert_eq!(flights.clients(), 3);
        let _reader = relayed.leader_reader();
        assert_eq!(flights.clients(), 3, "a leader that reads is counted once");
        whole.publish_whole(head(), Bytes::new(), End::Complete);
        assert_eq!(
            flights.clients(),
            2,
            "the follower, and the relaying leader"
        );
    }

    /// Past the entry limit the driver reads ahead of the slowest reader by at most
    /// `READ_AHEAD` bytes; a reader that moves on, or leaves, lets it read again.
    #[actix_web::test]
    async fn the_driver_waits_for_room_until_a_reader_moves_on_or_leaves() {
        let flights = Flights::default();
        let flight = lead(&flights, key(10));
        let mut leader = flight.leader_reader();
        let follower = follow(&flights, key(10));
        flight.set_head(head());
        assert!(!flight.push(Bytes::from(vec![b'x'; READ_AHEAD]), 0));
        let within = std::time::Duration::from_secs(5);
        let mut room = std::pin::pin!(flight.room_to_read());
        assert!(futures_util::poll!(room.as_mut()).is_pending(), "no room");
        // The leader moves on; the follower still holds the chunk.
        assert_eq!(
            leader.next_chunk().await.unwrap().unwrap().len(),
            READ_AHEAD
        );
        assert!(
            futures_util::poll!(room.as_mut()).is_pending(),
            "still no room"
        );
        drop(follower);
        tokio::time::timeout(within, room)
            .await
            .expect("the follower leaving wakes the driver");

        assert!(!flight.push(Bytes::from(vec![b'y'; READ_AHEAD]), 0));
        let mut room = std::pin::pin!(flight.room_to_read());
        assert!(futures_util::poll!(room.as_mut()).is_pending(), "no room");
        let reading = tokio::spawn(async move { leader.next_chunk().await.map(|c| c.unwrap()) });
        tokio::time::timeout(within, room)
            .await
            .expect("the leader moving on wakes the driver");
        assert_eq!(reading.await.unwrap().unwrap().len(), READ_AHEAD);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the chunk boundaries and whenever a follower joins, every reader
            /// gets the upstream bytes unchanged, and the recorded entry is those bytes.
            #[test]
            fn any_chunking_is_relayed_and_recorded_byte_identical(
                chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..24),
                join_at in 0usize..24,
            ) {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let flights = Flights::default();
                    let flight = lead(&flights, key(9));
                    let mut leader = flight.leader_reader();
                    flight.set_head(head());
                    let mut follower = None;
                    for (i, c) in chunks.iter().enumerate() {
                        if i == join_at {
                            follower = Some(flight.reader());
                        }
                        flight.push(Bytes::from(c.clone()), u64::MAX);
                    }
                    flight.finish(End::Complete);
                    let expected: Vec<u8> = chunks.concat();
                    prop_assert_eq!(flight.recorded_body(None, u64::MAX).unwrap().to_vec(), expected.clone());
                    for r in [Some(&mut leader), follower.as_mut()].into_iter().flatten() {
                        let mut got = Vec::new();
                        while let Some(c) = r.next_chunk().await {
                            got.extend_from_slice(&c.unwrap());
                        }
                        prop_assert_eq!(&got, &expected);
                    }
                    Ok(())
                })?;
            }
        }
    }
}
