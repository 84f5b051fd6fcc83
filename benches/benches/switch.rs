//! Per-message costs of the switch's own work: BIN routing in a table of 100,000 ranges,
//! the idempotency key, the card-number hash, card sealing, Luhn.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use switch::checks::luhn;
use switch::crypto::{Purpose, Vault, card_plaintext};
use switch::engine::request_key;
use switch::routing::{Route, RouteTable};

/// Ranges in the routing benchmark (the figure).
const ROUTES: usize = 100_000;

fn routes() -> Vec<Route> {
    // Disjoint 8-digit BIN ranges spread over the 4xxxxxxx-5xxxxxxx space, plus broad
    // 1-digit ranges underneath so lookups also exercise the nesting.
    let mut v: Vec<Route> = (0..ROUTES as u64)
        .map(|i| {
            let low = 40_000_000 + i * 150;
            Route {
                low: low.to_string(),
                high: (low + 99).to_string(),
                bank_id: format!("bank-{}", i % 8),
                priority: 0,
            }
        })
        .collect();
    v.push(Route {
        low: "4".into(),
        high: "5".into(),
        bank_id: "default".into(),
        priority: 0,
    });
    v
}

fn bench(c: &mut Criterion) {
    let table = RouteTable::build(&routes()).expect("valid routes");
    let pans: Vec<String> = (0..1024u64)
        .map(|i| format!("{}{:08}", 40_000_000 + (i * 7919 % 15_000_000), i))
        .collect();
    let mut i = 0usize;
    c.bench_function("routing_lookup_100k_ranges", |b| {
        b.iter(|| {
            i = (i + 1) % pans.len();
            black_box(table.lookup(black_box(pans[i].as_bytes())))
        })
    });
    c.bench_function("idempotency_key", |b| {
        b.iter(|| {
            black_box(request_key(
                black_box("MERCHANT0000001"),
                black_box(b"TERM0001"),
                black_box(b"000123"),
                black_box(b"1126065301"),
                codec::Mti::FINANCIAL_REPEAT,
            ))
        })
    });
    let vault = Vault::new(&[7u8; 32], &[9u8; 32]).expect("keys");
    c.bench_function("pan_hash_hmac_sha256", |b| {
        b.iter(|| black_box(vault.pan_hash(black_box(b"4111111111111111"))))
    });
    let card = card_plaintext(b"4111111111111111", b"3012");
    c.bench_function("card_seal_aes_gcm", |b| {
        b.iter(|| black_box(vault.seal(Purpose::Card, black_box(&card))))
    });
    c.bench_function("luhn", |b| {
        b.iter(|| black_box(luhn(black_box(b"4111111111111111"))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
