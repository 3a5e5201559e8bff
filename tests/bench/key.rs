//! Micro-benchmarks (criterion) for the cache key and the hit lookup: `cargo bench --bench key`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use openai_cache_proxy::cache::{CacheKey, CacheStore, CachedResponse, Tokens};
use openai_cache_proxy::metrics::Metrics;
use openai_cache_proxy::savings::{PriceTable, Savings};

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        HeaderName::from_static("authorization"),
        HeaderValue::from_static("Bearer sk-bench"),
    );
    h.insert(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("application/json"),
    );
    h
}

/// A chat request of about `size` bytes whose messages carry the bulk.
fn json_body(size: usize) -> Vec<u8> {
    let filler = "lorem ipsum dolor sit amet ".repeat(size / 27 + 1);
    let body = format!(
        r#"{{"model":"gpt-4o-mini","temperature":0,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        &filler[..size.saturating_sub(80).max(1)]
    );
    body.into_bytes()
}

fn key_derivation(c: &mut Criterion) {
    let h = headers();
    let mut group = c.benchmark_group("cache_key");
    for size in [1024, 100 * 1024, 1024 * 1024] {
        let json = json_body(size);
        // The same bytes made invalid JSON: the key then hashes the raw body (no canonical form).
        let mut raw = json.clone();
        raw[0] = b'x';
        group.throughput(Throughput::Bytes(json.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("canonical_json", size),
            &json,
            |b, body| b.iter(|| CacheKey::compute("POST", "/v1/chat/completions", &h, body)),
        );
        group.bench_with_input(BenchmarkId::new("raw_bytes", size), &raw, |b, body| {
            b.iter(|| CacheKey::compute("POST", "/v1/chat/completions", &h, body))
        });
    }
    group.finish();
}

fn hit_lookup(c: &mut Criterion) {
    let store = CacheStore::new(
        64 * 1024 * 1024,
        1024 * 1024,
        Duration::from_secs(3600),
        1,
        Arc::new(Metrics::new(Savings::new(PriceTable::default()))),
    );
    let keys: Vec<CacheKey> = (0..10_000)
        .map(|i| {
            CacheKey::compute(
                "POST",
                "/v1/embeddings",
                &headers(),
                format!("{{\"i\":{i}}}").as_bytes(),
            )
        })
        .collect();
    for k in &keys {
        let entry = CachedResponse::new(
            StatusCode::OK,
            Vec::new(),
            Bytes::from_static(&[b'x'; 1400]),
            Tokens::Known(None),
        );
        store.insert(*k, Arc::new(entry));
    }
    let mut i = 0;
    c.bench_function("hit_lookup_10k_entries", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            store.get(&keys[i]).expect("present")
        })
    });
}

criterion_group!(benches, key_derivation, hit_lookup);
criterion_main!(benches);
