//! Per-message costs of the codec on the merchant contract's purchase request, against a
//! hand-written indexer for that one profile that checks lengths but not contents (the
//! least any correct decoder must do), so decode reads as a multiple of that floor.

use std::hint::black_box;

use bytes::Bytes;
use codec::{MacKey, MessageBuilder, Mti, builtin};
use criterion::{Criterion, criterion_group, criterion_main};

/// The contract's vector "purchase request" (codec/tests/data/merchant-h2h-v1.json).
const PURCHASE_REQUEST_HEX: &str = "303230307224000000C1800131363431313131313131313131313131313130303030303030303030303030303130303031313236303635333031303030303033333031325445524D303030314D45524348414E54303030303030313031354F523031304F524445522D313030313834300D958B7C1FCB396D";
/// The vectors' MAC key.
const MAC_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// Bytes of the DE64 MAC that ends the purchase request.
const MAC_LEN_BYTES: usize = 8;

/// The purchase request's elements but the MAC, as an integrator's host would set them.
const PURCHASE_ELEMENTS: [(u8, &str); 10] = [
    (2, "4111111111111111"),
    (3, "000000"),
    (4, "000000001000"),
    (7, "1126065301"),
    (11, "000003"),
    (14, "3012"),
    (41, "TERM0001"),
    (42, "MERCHANT0000001"),
    (48, "OR010ORDER-1001"),
    (49, "840"),
];

fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
        .collect()
}

/// How the merchant profile lays out an element, for the baseline.
#[derive(Clone, Copy)]
enum Layout {
    Undefined,
    Fixed(u16),
    /// Prefix digits and maximum length.
    Var(u8, u16),
}

/// The merchant profile's elements, by number, for the baseline.
const BASELINE_LAYOUT: [Layout; 129] = {
    let mut t = [Layout::Undefined; 129];
    t[2] = Layout::Var(2, 19);
    t[3] = Layout::Fixed(6);
    t[4] = Layout::Fixed(12);
    t[7] = Layout::Fixed(10);
    t[11] = Layout::Fixed(6);
    t[12] = Layout::Fixed(6);
    t[13] = Layout::Fixed(4);
    t[14] = Layout::Fixed(4);
    t[22] = Layout::Fixed(3);
    t[25] = Layout::Fixed(2);
    t[37] = Layout::Fixed(12);
    t[38] = Layout::Fixed(6);
    t[39] = Layout::Fixed(2);
    t[41] = Layout::Fixed(8);
    t[42] = Layout::Fixed(15);
    t[48] = Layout::Var(3, 999);
    t[49] = Layout::Fixed(3);
    t[54] = Layout::Var(3, 120);
    t[64] = Layout::Fixed(8);
    t[70] = Layout::Fixed(3);
    t[90] = Layout::Fixed(42);
    t[128] = Layout::Fixed(8);
    t
};

/// The floor: one pass that finds where every element lies and checks lengths only.
fn baseline_index(buf: &[u8], spans: &mut [(u16, u16); 129]) -> Option<()> {
    let mti = buf.get(..4)?;
    if !mti.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut bitmap = [u64::from_be_bytes(buf.get(4..12)?.try_into().ok()?), 0];
    let mut pos = 12;
    if bitmap[0] >> 63 == 1 {
        bitmap[1] = u64::from_be_bytes(buf.get(12..20)?.try_into().ok()?);
        bitmap[0] &= !(1 << 63);
        pos = 20;
    }
    for (word, base) in [(0usize, 0usize), (1, 64)] {
        let mut bits = bitmap[word];
        while bits != 0 {
            let lz = bits.leading_zeros() as usize;
            bits &= !(1u64 << (63 - lz));
            let n = base + lz + 1;
            let (start, len) = match BASELINE_LAYOUT[n] {
                Layout::Undefined => return None,
                Layout::Fixed(len) => (pos, usize::from(len)),
                Layout::Var(digits, max) => {
                    let p = buf.get(pos..pos + usize::from(digits))?;
                    let mut len = 0usize;
                    for &c in p {
                        if !c.is_ascii_digit() {
                            return None;
                        }
                        len = len * 10 + usize::from(c - b'0');
                    }
                    if len > usize::from(max) {
                        return None;
                    }
                    (pos + usize::from(digits), len)
                }
            };
            if start + len > buf.len() {
                return None;
            }
            spans[n] = (start as u16, len as u16);
            pos = start + len;
        }
    }
    (pos == buf.len()).then_some(())
}

fn bench(c: &mut Criterion) {
    let d = builtin::merchant();
    let wire = Bytes::from(unhex(PURCHASE_REQUEST_HEX));
    let key = MacKey::from_hex(MAC_KEY_HEX).expect("key");
    let covered = &wire[..wire.len() - MAC_LEN_BYTES];

    // Fail loudly rather than time the wrong thing.
    let decoded = d.decode(wire.clone()).expect("vector decodes");
    let mut spans = [(0u16, 0u16); 129];
    assert!(baseline_index(&wire, &mut spans).is_some());
    let build = || {
        let mut b = MessageBuilder::new(d, Mti::FINANCIAL_REQUEST);
        for (n, v) in &PURCHASE_ELEMENTS {
            b.set_str(*n, v);
        }
        b
    };
    assert_eq!(build().encode_with_mac(&key).expect("encodes"), wire);
    assert_eq!(decoded.get_str(2).as_deref(), Some(PURCHASE_ELEMENTS[0].1));

    let mut g = c.benchmark_group("purchase request");
    g.bench_function("decode", |b| {
        b.iter(|| black_box(d.decode(black_box(wire.clone()))))
    });
    g.bench_function("baseline index (lengths only)", |b| {
        b.iter(|| {
            let mut spans = [(0u16, 0u16); 129];
            black_box(baseline_index(black_box(&wire), &mut spans));
            black_box(spans)
        })
    });
    let ready = build();
    g.bench_function("encode", |b| {
        b.iter(|| black_box(black_box(&ready).encode()))
    });
    g.bench_function("encode with MAC", |b| {
        b.iter(|| black_box(black_box(&ready).encode_with_mac(&key)))
    });
    g.bench_function("build and encode (set 10 elements)", |b| {
        b.iter(|| black_box(black_box(build()).encode()))
    });
    g.bench_function("MAC compute", |b| {
        b.iter(|| black_box(key.compute(black_box(covered))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
