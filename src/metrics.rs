//! Process-wide counters, shared by all workers. `/stats` and `/metrics` read the very same
//! atomics: every counter here is a `prometheus-client` metric registered once, and the JSON
//! view reads its value back.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::cache::CacheStatus;
use crate::per_thread::PerThread;
use crate::savings::Savings;
use crate::shared::RedisCounters;

/// What a `/v1` request got from the cache; `none` when it was answered before any cache
/// decision (rate limited, malformed, too large).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CacheLabel {
    hit,
    miss,
    coalesced,
    bypass,
    none,
}

impl From<Option<CacheStatus>> for CacheLabel {
    fn from(status: Option<CacheStatus>) -> Self {
        match status {
            Some(CacheStatus::Hit) => Self::hit,
            Some(CacheStatus::Miss) => Self::miss,
            Some(CacheStatus::Coalesced) => Self::coalesced,
            Some(CacheStatus::Bypass) => Self::bypass,
            None => Self::none,
        }
    }
}

const CACHE_LABELS: [CacheLabel; 5] = [
    CacheLabel::hit,
    CacheLabel::miss,
    CacheLabel::coalesced,
    CacheLabel::bypass,
    CacheLabel::none,
];

/// `2xx` … `5xx`; anything else (1xx) is counted as `other`.
const STATUS_CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "other"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    cache: CacheLabel,
    status_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// `[cache label][status class]`: the family's members, held so a request costs one add
    /// (to its thread's own share, see [`PerThread`]).
    requests: [[Counter<u64, PerThread>; 5]; 5],
    pub stores: Counter,
    /// Entries removed to stay under MAX_CACHE_SIZE.
    pub evictions: Counter,
    /// Entries removed because CACHE_TTL passed.
    pub expirations: Counter,
    pub rate_limited: Counter,
    pub upstream_errors: Counter,
    /// Time from sending a request upstream to its response head.
    pub upstream_duration: Histogram,
    /// Upstream TCP connections open now (pooled ones included).
    pub upstream_connections: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Set from the cache and the limiter when metrics are scraped.
    pub cache_entries: Gauge,
    pub cache_bytes: Gauge,
    pub in_flight: Gauge,
    pub tracked_clients: Gauge,
    pub savings: Savings,
    pub redis: RedisCounters,
}

impl Metrics {
    pub fn new(savings: Savings) -> Self {
        let mut registry = Registry::with_prefix("proxy");
        let family = Family::<RequestLabels, Counter<u64, PerThread>>::default();
        let requests = CACHE_LABELS.map(|cache| {
            STATUS_CLASSES.map(|status_class| {
                family.get_or_create_owned(&RequestLabels {
                    cache,
                    status_class,
                })
            })
        });
        registry.register(
            "requests",
            "Requests to /v1, by cache outcome and response status class",
            family,
        );
        let m = Self {
            registry: Registry::default(),
            requests,
            stores: Counter::default(),
            evictions: Counter::default(),
            expirations: Counter::default(),
            rate_limited: Counter::default(),
            upstream_errors: Counter::default(),
            upstream_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            upstream_connections: Gauge::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            in_flight: Gauge::default(),
            tracked_clients: Gauge::default(),
            savings,
            redis: RedisCounters::default(),
        };
        let r = &mut registry;
        r.register(
            "cache_stores",
            "Responses stored in the cache",
            m.stores.clone(),
        );
        r.register(
            "cache_evictions",
            "Entries evicted to stay within MAX_CACHE_SIZE",
            m.evictions.clone(),
        );
        r.register(
            "cache_expirations",
            "Entries dropped because CACHE_TTL passed",
            m.expirations.clone(),
        );
        r.register(
            "rate_limited_requests",
            "Requests refused with 429 by the per-client rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "upstream_errors",
            "Requests that got no answer from the upstream (connect, TLS, timeout)",
            m.upstream_errors.clone(),
        );
        r.register_with_unit(
            "upstream_request_duration",
            "Time from sending a request upstream to receiving its response head",
            Unit::Seconds,
            m.upstream_duration.clone(),
        );
        r.register(
            "upstream_open_connections",
            "Upstream TCP connections open now, idle pooled ones included",
            m.upstream_connections.clone(),
        );
        r.register(
            "cache_entries",
            "Responses in the cache",
            m.cache_entries.clone(),
        );
        r.register_with_unit(
            "cache_size",
            "Weighted size of the cache (responses, bookkeeping and alias index)",
            Unit::Bytes,
            m.cache_bytes.clone(),
        );
        r.register(
            "in_flight_requests",
            "Distinct cacheable requests being fetched from the upstream now",
            m.in_flight.clone(),
        );
        r.register(
            "rate_limit_tracked_clients",
            "Client addresses the rate limiter holds state for",
            m.tracked_clients.clone(),
        );
        m.savings.register(r);
        r.register(
            "cache_l2_hits",
            "Lookups answered by the shared (Redis) tier after an L1 miss",
            m.redis.l2_hits.clone(),
        );
        r.register(
            "cache_l2_misses",
            "Lookups the shared (Redis) tier could not answer",
            m.redis.l2_misses.clone(),
        );
        r.register(
            "redis_errors",
            "Redis calls that failed or timed out (REDIS_TIMEOUT), or were skipped while disconnected",
            m.redis.errors.clone(),
        );
        r.register(
            "redis_undecodable_values",
            "Values under the cache prefix in Redis that were not ours; served as misses",
            m.redis.undecodable.clone(),
        );
        r.register(
            "redis_sibling_waits",
            "Misses that waited for another instance's upstream call instead of making their own",
            m.redis.sibling_waits.clone(),
        );
        r.register(
            "build",
            "Build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Self { registry, ..m }
    }

    /// Counts one finished `/v1` request.
    pub fn record_request(&self, cache: Option<CacheStatus>, status: u16) {
        let class = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            500..=599 => 3,
            _ => 4,
        };
        self.requests[CacheLabel::from(cache) as usize][class].inc();
    }

    /// Requests with this cache outcome, over all status classes.
    pub fn requests(&self, cache: CacheStatus) -> u64 {
        self.requests[CacheLabel::from(Some(cache)) as usize]
            .iter()
            .map(Counter::get)
            .sum()
    }

    /// hits / (hits + misses); bypasses are not cache decisions. 0 before any lookup.
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.requests(CacheStatus::Hit) as f64;
        let lookups = hits + self.requests(CacheStatus::Miss) as f64;
        if lookups == 0.0 { 0.0 } else { hits / lookups }
    }

    /// The OpenMetrics text of every metric (gauges as last set).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

pub fn bump(counter: &Counter<u64, AtomicU64>) {
    counter.inc();
}
