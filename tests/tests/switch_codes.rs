//! Every response code the merchant contract lists for 0800 and 0200 purchases, each
//! provoked through a real switch process, and the contract's order of checks where
//! several refusals apply at once.

use std::time::Duration;

use bytes::Bytes;
use codec::card::luhn_complete;
use codec::{Message, OwnedMessage, builtin};
use system_tests::switchyard::{
    BankSim, Client, MERCHANT_ID, MerchantCreds, World, WorldOptions, count_mti, next_stan,
    order_ref, rc,
};

const VISA: &str = "4111111111111111";
const MASTERCARD: &str = "5500000000000004";

/// How many 0200s bank-a's simulator has received so far.
async fn purchases_seen(bank: &BankSim) -> u64 {
    count_mti(&bank.record().await, "0200")
}

/// A purchase with a fresh STAN and order reference.
fn fresh_purchase(c: &Client, amount: u64, pan: &str, tag: &str) -> OwnedMessage {
    let stan = next_stan();
    let order = order_ref(tag, &stan);
    c.purchase(&stan, amount, pan, &order)
}

/// Encodes without any MAC.
fn encode_plain(m: &OwnedMessage) -> Bytes {
    m.encode(builtin::merchant()).expect("encode")
}

fn has_mac(m: &Message) -> bool {
    m.has(64) || m.has(128)
}

/// Asserts an answer: its MTI, DE39, that DE11 matches the request, and a valid MAC.
fn assert_answer(c: &Client, r: &Message, mti: &str, code: &str, req: &OwnedMessage, what: &str) {
    assert_eq!(r.mti().as_str(), mti, "{what}: answer MTI");
    assert_eq!(rc(r), code, "{what}: DE39");
    assert_eq!(
        r.get(11).map(|v| v.into_owned()),
        req.fields.get(&11).cloned(),
        "{what}: DE11 echoed"
    );
    assert!(c.mac_ok(r), "{what}: the answer carries a valid MAC");
    assert!(!r.has(2), "{what}: DE2 is never echoed");
    for n in [3u8, 4, 7, 41, 42, 49, 70] {
        if let Some(v) = req.fields.get(&n) {
            assert_eq!(
                r.get(n).map(|v| v.into_owned()).as_ref(),
                Some(v),
                "{what}: DE{n} echoed"
            );
        }
    }
}

// Proves an unparseable message with a readable MTI is answered with its response MTI and
// DE39 30 echoing only the DE7/DE11/DE41/DE42 that could be read, with a MAC only when DE42
// was read, and that nothing reaches the bank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_answers_30_echoing_what_was_read() {
    let world = World::new("codes_30u", WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let before = purchases_seen(&world.banks[0]).await;

    // Truncated inside DE48: DE2..DE42 were readable.
    let req = fresh_purchase(&c, 1000, VISA, "F30A");
    let bytes = c.encode(&req);
    let or_at = bytes
        .windows(3)
        .position(|w| w == b"OR0")
        .expect("DE48 OR tag in the encoding");
    c.send_message_bytes(bytes.slice(..or_at + 2)).await;
    let r = c.recv().await;
    assert_eq!(r.mti().as_str(), "0210");
    assert_eq!(rc(&r), "30", "truncated purchase: DE39");
    for n in [7u8, 11, 41, 42] {
        assert_eq!(
            r.get(n).map(|v| v.into_owned()),
            req.fields.get(&n).cloned(),
            "truncated purchase: DE{n} echoed byte for byte"
        );
    }
    assert!(
        c.mac_ok(&r),
        "DE42 was readable and names a known merchant: the 30 answer carries its MAC"
    );
    let extra_first: Vec<u8> = r
        .fields()
        .filter(|n| ![7, 11, 39, 41, 42, 64, 128].contains(n))
        .collect();

    // Truncated inside DE14: DE7 and DE11 readable, DE41/DE42 not, so no MAC.
    let req = fresh_purchase(&c, 1000, VISA, "F30B");
    let bytes = c.encode(&req);
    // MTI 4 + bitmap 8 + DE2 (2+16) + DE3 6 + DE4 12 + DE7 10 + DE11 6 = 64: DE14 follows.
    assert_eq!(&bytes[64..68], b"3012", "layout of the test purchase");
    c.send_message_bytes(bytes.slice(..66)).await;
    let r = c.recv().await;
    assert_eq!(r.mti().as_str(), "0210");
    assert_eq!(rc(&r), "30", "purchase truncated in DE14: DE39");
    assert_eq!(
        r.get(7).map(|v| v.into_owned()),
        req.fields.get(&7).cloned()
    );
    assert_eq!(
        r.get(11).map(|v| v.into_owned()),
        req.fields.get(&11).cloned()
    );
    assert!(!r.has(41) && !r.has(42), "unread DE41/DE42 are left out");
    assert!(!has_mac(&r), "DE42 unread: the answer cannot be keyed");

    let extra_second: Vec<u8> = r
        .fields()
        .filter(|n| ![7, 11, 39, 64, 128].contains(n))
        .collect();
    assert_eq!(purchases_seen(&world.banks[0]).await, before);
    assert!(
        extra_first.is_empty() && extra_second.is_empty(),
        "an unparseable message's 30 echoes only the DE7/DE11/DE41/DE42 it could read \
         (contract 'Response codes', docs/merchant-protocol.md section 11); the answers also \
         had elements {extra_first:?} and {extra_second:?}"
    );
}

// Proves the other 30 paths: a missing required element, a bad DE48 and a MAC in the wrong
// element are answered 30 with a MAC, nothing reaches the bank, and the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_errors_answer_30() {
    let world = World::new("codes_30", WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let before = purchases_seen(&world.banks[0]).await;

    // A required element missing (each in turn), with a valid MAC.
    for missing in [2u8, 4, 14, 49, 48] {
        let mut req = fresh_purchase(&c, 1000, VISA, "F30C");
        req.fields.remove(&missing);
        let r = c.call(&req).await;
        assert_answer(&c, &r, "0210", "30", &req, &format!("DE{missing} missing"));
    }

    // DE48 without a usable OR.
    let long = "X".repeat(65);
    let bad48: Vec<(&str, String)> = vec![
        ("no OR tag", "RR003abc".to_string()),
        ("empty OR", "OR000".to_string()),
        ("OR over 64", format!("OR065{long}")),
        ("broken sub-element length", "OR9".to_string()),
    ];
    for (what, de48) in bad48 {
        let mut req = fresh_purchase(&c, 1000, VISA, "F30D");
        req.fields.insert(48, de48.into_bytes());
        let r = c.call(&req).await;
        assert_answer(&c, &r, "0210", "30", &req, what);
    }

    // MAC in DE64 of a message with a secondary bitmap (0800 carries DE70).
    let mut req = c.network(&next_stan(), "301");
    req.fields.insert(64, vec![0x5A; 8]);
    c.send_message_bytes(encode_plain(&req)).await;
    let r = c.recv().await;
    assert_answer(&c, &r, "0810", "30", &req, "0800 with its MAC in DE64");

    assert_eq!(
        purchases_seen(&world.banks[0]).await,
        before,
        "no format error reaches the bank"
    );
    // The connection survived every refusal.
    let req = fresh_purchase(&c, 1000, VISA, "F30F");
    let r = c.call(&req).await;
    assert_answer(
        &c,
        &r,
        "0210",
        "00",
        &req,
        "valid purchase after the refusals",
    );
}

// Proves 58 for an unknown merchant, answered without a MAC and ahead of the MAC check
// and of missing elements, and that an unparseable message beats an unknown merchant (30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_merchant_58_without_mac() {
    let world = World::new("codes_58u", WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let before = purchases_seen(&world.banks[0]).await;
    let stranger = MerchantCreds {
        id: "UNKNOWNMERCH001".into(),
        key_hex: "33".repeat(32),
    };
    let mut c = Client::connect(sw.merchant_addr, stranger).await;

    let req = fresh_purchase(&c, 1000, VISA, "U58A");
    let r = c.call(&req).await;
    assert_eq!(r.mti().as_str(), "0210");
    assert_eq!(rc(&r), "58", "unknown merchant");
    assert!(!has_mac(&r), "an unknown merchant's answer carries no MAC");
    assert_eq!(
        r.get(11).map(|v| v.into_owned()),
        req.fields.get(&11).cloned()
    );

    // No MAC and a missing element: the merchant check comes first.
    let mut req = fresh_purchase(&c, 1000, VISA, "U58B");
    req.fields.remove(&14);
    c.send_message_bytes(encode_plain(&req)).await;
    let r = c.recv().await;
    assert_eq!(
        rc(&r),
        "58",
        "unknown merchant before MAC and required elements"
    );
    assert!(!has_mac(&r));

    // Network management too.
    let req = c.network(&next_stan(), "301");
    let r = c.call(&req).await;
    assert_eq!(r.mti().as_str(), "0810");
    assert_eq!(rc(&r), "58", "0800 from an unknown merchant");
    assert!(!has_mac(&r));

    // Unparseable beats unknown merchant.
    let req = fresh_purchase(&c, 1000, VISA, "U58C");
    let bytes = c.encode(&req);
    c.send_message_bytes(bytes.slice(..66)).await;
    let r = c.recv().await;
    assert_eq!(rc(&r), "30", "unparseable before unknown merchant");

    assert_eq!(purchases_seen(&world.banks[0]).await, before);
}

// Proves a merchant disabled with `switchyard merchant disable` gets 58 (with a MAC, as it
// is known) once the running switch reloads, nothing is forwarded, and `enable` restores
// service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_merchant_58() {
    let world = World::new("codes_58d", WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let r = c.call(&fresh_purchase(&c, 1000, VISA, "D58A")).await;
    assert_eq!(rc(&r), "00", "enabled merchant is approved");

    world.admin(&["merchant", "disable", MERCHANT_ID]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let req = fresh_purchase(&c, 1000, VISA, "D58B");
        let r = c.call(&req).await;
        match rc(&r).as_str() {
            "58" => {
                assert_answer(&c, &r, "0210", "58", &req, "disabled merchant");
                break;
            }
            "00" => {}
            other => panic!("while the disable is being picked up: unexpected DE39 {other}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the switch never picked up the disabled merchant (reload_interval_ms = 500)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = purchases_seen(&world.banks[0]).await;
    let req = fresh_purchase(&c, 1000, VISA, "D58C");
    let r = c.call(&req).await;
    assert_answer(&c, &r, "0210", "58", &req, "disabled merchant, again");
    let req = c.network(&next_stan(), "301");
    let r = c.call(&req).await;
    assert_answer(&c, &r, "0810", "58", &req, "0800 of a disabled merchant");
    assert_eq!(
        purchases_seen(&world.banks[0]).await,
        before,
        "nothing forwarded"
    );

    world.admin(&["merchant", "enable", MERCHANT_ID]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.call(&fresh_purchase(&c, 1000, VISA, "D58D")).await;
        if rc(&r) == "00" {
            break;
        }
        assert_eq!(rc(&r), "58");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the re-enabled merchant was never served again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Proves 63 for a missing MAC and for a wrong one (answered with a valid MAC, nothing
// forwarded), and that the MAC check comes before required elements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mac_refusals_63() {
    let world = World::new("codes_63", WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let before = purchases_seen(&world.banks[0]).await;

    let req = fresh_purchase(&c, 1000, VISA, "M63A");
    c.send_message_bytes(encode_plain(&req)).await;
    let r = c.recv().await;
    assert_answer(&c, &r, "0210", "63", &req, "purchase without MAC");

    let req = fresh_purchase(&c, 1000, VISA, "M63B");
    let mut bytes = c.encode(&req).to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    c.send_message_bytes(Bytes::from(bytes)).await;
    let r = c.recv().await;
    assert_answer(&c, &r, "0210", "63", &req, "purchase with a wrong MAC");

    // A MAC made with another key.
    let other = MerchantCreds {
        id: MERCHANT_ID.into(),
        key_hex: "44".repeat(32),
    };
    let req = fresh_purchase(&c, 1000, VISA, "M63C");
    let bytes = req
        .encode_with_mac(builtin::merchant(), &other.key())
        .expect("encode");
    c.send_message_bytes(bytes).await;
    let r = c.recv().await;
    assert_answer(
        &c,
        &r,
        "0210",
        "63",
        &req,
        "purchase MAC'd with another key",
    );

    // Missing MAC and missing DE14: the MAC check first.
    let mut req = fresh_purchase(&c, 1000, VISA, "M63D");
    req.fields.remove(&14);
    c.send_message_bytes(encode_plain(&req)).await;
    let r = c.recv().await;
    assert_answer(&c, &r, "0210", "63", &req, "no MAC and no DE14");

    // 0800 without MAC.
    let req = c.network(&next_stan(), "301");
    c.send_message_bytes(encode_plain(&req)).await;
    let r = c.recv().await;
    assert_answer(&c, &r, "0810", "63", &req, "0800 without MAC");

    assert_eq!(
        purchases_seen(&world.banks[0]).await,
        before,
        "nothing forwarded"
    );
}

// Proves 14 (Luhn), 54 (expired), 13 (zero amount), 58 (currency not allowed) and 61 (over
// the per-transaction limit), pairwise in the contract's order (Luhn-bad and expired is 14,
// and so on), with nothing forwarded; the limit itself is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_checks_in_order() {
    let world = World::new("codes_biz", WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let before = purchases_seen(&world.banks[0]).await;
    let bad_luhn = "4111111111111112";

    struct Case {
        what: &'static str,
        pan: &'static str,
        expiry: &'static str,
        amount: u64,
        currency: &'static str,
        want: &'static str,
    }
    let cases = [
        Case {
            what: "Luhn",
            pan: bad_luhn,
            expiry: "3012",
            amount: 1000,
            currency: "840",
            want: "14",
        },
        Case {
            what: "Luhn and expired",
            pan: bad_luhn,
            expiry: "2001",
            amount: 0,
            currency: "392",
            want: "14",
        },
        Case {
            what: "expired",
            pan: VISA,
            expiry: "2001",
            amount: 1000,
            currency: "840",
            want: "54",
        },
        Case {
            what: "expired and zero amount",
            pan: VISA,
            expiry: "2001",
            amount: 0,
            currency: "392",
            want: "54",
        },
        Case {
            what: "zero amount",
            pan: VISA,
            expiry: "3012",
            amount: 0,
            currency: "840",
            want: "13",
        },
        Case {
            what: "zero amount and currency not allowed",
            pan: VISA,
            expiry: "3012",
            amount: 0,
            currency: "392",
            want: "13",
        },
        Case {
            what: "currency not allowed",
            pan: VISA,
            expiry: "3012",
            amount: 1000,
            currency: "392",
            want: "58",
        },
        Case {
            what: "currency not allowed and over the limit",
            pan: VISA,
            expiry: "3012",
            amount: 5_000_000,
            currency: "392",
            want: "58",
        },
        Case {
            what: "over the per-transaction limit",
            pan: VISA,
            expiry: "3012",
            amount: 1_000_001,
            currency: "840",
            want: "61",
        },
        Case {
            what: "over the limit, card without a route",
            pan: "340000000000009",
            expiry: "3012",
            amount: 1_000_001,
            currency: "840",
            want: "61",
        },
    ];
    for case in &cases {
        let mut req = fresh_purchase(&c, case.amount, case.pan, "BIZ");
        req.fields.insert(14, case.expiry.as_bytes().to_vec());
        req.fields.insert(49, case.currency.as_bytes().to_vec());
        let r = c.call(&req).await;
        assert_answer(&c, &r, "0210", case.want, &req, case.what);
        assert!(!r.has(38), "{}: no DE38 on a refusal", case.what);
    }
    assert_eq!(
        purchases_seen(&world.banks[0]).await,
        before,
        "no refused purchase reached the bank"
    );

    // Exactly the limit, in another allowed currency, is approved.
    let mut req = fresh_purchase(&c, 1_000_000, VISA, "BIZOK");
    req.fields.insert(49, b"978".to_vec());
    let r = c.call(&req).await;
    assert_answer(&c, &r, "0210", "00", &req, "amount at the limit");
}

// Proves 65: a merchant with rate 1/s and burst 2 firing 5 purchases at once gets some
// approved and the rest 65, and the refused ones never reach the bank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_65() {
    let world = World::new(
        "codes_65",
        WorldOptions {
            merchant_rate: 1,
            merchant_burst: 2,
            ..WorldOptions::default()
        },
    );
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let before = purchases_seen(&world.banks[0]).await;
    let reqs: Vec<OwnedMessage> = (0..5)
        .map(|_| fresh_purchase(&c, 1000, VISA, "R65"))
        .collect();
    for r in &reqs {
        c.send(r).await;
    }
    let mut approved: u64 = 0;
    let mut limited = 0;
    for _ in &reqs {
        let r = c.recv().await;
        assert!(c.mac_ok(&r));
        match rc(&r).as_str() {
            "00" => approved += 1,
            "65" => limited += 1,
            other => panic!("rate-limited burst: unexpected DE39 {other}"),
        }
    }
    assert!(
        limited >= 2,
        "5 at once with burst 2: at least 2 are 65 (got {limited})"
    );
    let after = purchases_seen(&world.banks[0]).await;
    assert_eq!(
        after - before,
        approved,
        "only the approved requests reached the bank"
    );
}

// Proves 94 for an order reference that was approved or is still pending (not forwarded),
// and that after a decline or a 91 the same order reference may be used again and is
// approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_reference_94() {
    // A long bank timeout keeps the pending purchase pending while the second one arrives.
    let world = World::new(
        "codes_94",
        WorldOptions {
            bank_timeout_ms: 5000,
            ..WorldOptions::default()
        },
    );
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;

    let order = order_ref("ORD94", &next_stan());
    let r = c.call(&c.purchase(&next_stan(), 1000, VISA, &order)).await;
    assert_eq!(rc(&r), "00");
    let before = purchases_seen(&world.banks[0]).await;
    let req = c.purchase(&next_stan(), 2000, VISA, &order);
    let r = c.call(&req).await;
    assert_answer(
        &c,
        &r,
        "0210",
        "94",
        &req,
        "same OR as an approved purchase",
    );
    assert_eq!(
        purchases_seen(&world.banks[0]).await,
        before,
        "94 not forwarded"
    );

    let order = order_ref("ORD94D", &next_stan());
    let r = c.call(&c.purchase(&next_stan(), 1051, VISA, &order)).await;
    assert_eq!(rc(&r), "51", "declined");
    let req = c.purchase(&next_stan(), 1000, VISA, &order);
    let r = c.call(&req).await;
    assert_answer(&c, &r, "0210", "00", &req, "same OR after a decline");

    // Still pending: the first (amount ending 91) is at the bank, which never answers it.
    let order = order_ref("ORD94P", &next_stan());
    let before = purchases_seen(&world.banks[0]).await;
    let first = c.purchase(&next_stan(), 1091, VISA, &order);
    c.send(&first).await;
    world.banks[0]
        .wait_record("the pending purchase", Duration::from_secs(30), |r| {
            count_mti(r, "0200") > before
        })
        .await;
    let second = c.purchase(&next_stan(), 1000, VISA, &order);
    c.send(&second).await;
    let second_stan = String::from_utf8(second.fields[&11].clone()).expect("digits");
    let first_stan = String::from_utf8(first.fields[&11].clone()).expect("digits");
    let (r2, others) = c.recv_stan(&second_stan).await;
    assert_answer(
        &c,
        &r2,
        "0210",
        "94",
        &second,
        "same OR while the first is pending",
    );
    let r1 = match others.into_iter().next() {
        Some(r) => r,
        None => c.recv_stan(&first_stan).await.0,
    };
    assert_eq!(r1.get_str(11).as_deref(), Some(first_stan.as_str()));
    assert!(
        rc(&r1) == "91",
        "the pending purchase timed out: 91, got {}",
        rc(&r1)
    );
    assert_eq!(
        purchases_seen(&world.banks[0]).await,
        before + 1,
        "the 94 was not forwarded"
    );
    let req = c.purchase(&next_stan(), 1000, VISA, &order);
    let r = c.call(&req).await;
    assert_answer(&c, &r, "0210", "00", &req, "same OR after the 91");
}

// Proves 92 for a card no route serves (3400...), not forwarded to any bank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_92() {
    let world = World::new("codes_92", WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let a = purchases_seen(&world.banks[0]).await;
    let b = purchases_seen(&world.banks[1]).await;
    let amex = luhn_complete("34000000000000");
    let req = fresh_purchase(&c, 1000, &amex, "N92");
    let r = c.call(&req).await;
    assert_answer(&c, &r, "0210", "92", &req, "card without a route");
    assert_eq!(purchases_seen(&world.banks[0]).await, a);
    assert_eq!(purchases_seen(&world.banks[1]).await, b);
}

// Proves 91 on a bank timeout (amount ending 91): the answer carries the RRN, the bank
// simulator receives a reversal of that RRN, a retransmission gets the same 91, and the
// same order reference may then be retried and approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_timeout_91_and_reversal() {
    let world = World::new("codes_91t", WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;

    let stan = next_stan();
    let order = order_ref("T91", &stan);
    let req = c.purchase(&stan, 1091, VISA, &order);
    let r = c.call(&req).await;
    assert_answer(&c, &r, "0210", "91", &req, "bank timeout");
    let rrn = r
        .get_str(37)
        .expect("a 91 after the bank timed out has an RRN")
        .into_owned();
    world.banks[0]
        .wait_record(
            "a reversal of the timed-out purchase",
            Duration::from_secs(20),
            |v| v["reversals"][rrn.as_str()].as_u64().unwrap_or(0) >= 1,
        )
        .await;

    let again = c.call(&req).await;
    assert_eq!(rc(&again), "91", "retransmission of the timed-out purchase");
    assert_eq!(again.get_str(37).as_deref(), Some(rrn.as_str()));

    let req = c.purchase(&next_stan(), 1000, VISA, &order);
    let r = c.call(&req).await;
    assert_answer(&c, &r, "0210", "00", &req, "same OR after a 91");
}

// Proves 91 when the bank is unreachable: its simulator is killed, the switch notices the
// link is gone and answers 91 without hanging, while the other bank still approves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_bank_91() {
    let mut world = World::new("codes_91u", WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    world.banks[0].process.kill();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let req = fresh_purchase(&c, 1000, VISA, "U91");
        let r = c.call(&req).await;
        match rc(&r).as_str() {
            "91" => {
                assert_answer(&c, &r, "0210", "91", &req, "bank down");
                break;
            }
            "00" => {}
            other => panic!("bank going down: unexpected DE39 {other}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the switch never noticed the bank was gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let req = fresh_purchase(&c, 1000, VISA, "U91B");
    let r = c.call(&req).await;
    assert_answer(&c, &r, "0210", "91", &req, "bank still down");
    let req = fresh_purchase(&c, 1000, MASTERCARD, "U91C");
    let r = c.call(&req).await;
    assert_answer(&c, &r, "0210", "00", &req, "the other bank still serves");
}

// Proves 0800 sign-on, echo and sign-off are answered 0810 00 with a MAC, echoing DE7,
// DE11, DE41, DE42 and DE70; an unknown DE70 is refused (not 00) and the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_management() {
    let world = World::new("codes_0800", WorldOptions::default());
    let sw = world.start_switch(1);
    let mut c = world.client(&sw).await;
    for code in ["001", "301", "002", "301"] {
        let req = c.network(&next_stan(), code);
        let r = c.call(&req).await;
        assert_answer(&c, &r, "0810", "00", &req, &format!("0800 DE70 {code}"));
        for n in [7u8, 41, 42, 70] {
            assert_eq!(
                r.get(n).map(|v| v.into_owned()),
                req.fields.get(&n).cloned(),
                "0800 DE70 {code}: DE{n} echoed"
            );
        }
        assert!(!r.has(37), "no transaction behind an 0800");
    }
    let req = c.network(&next_stan(), "999");
    let r = c.call(&req).await;
    assert_eq!(r.mti().as_str(), "0810");
    assert_ne!(rc(&r), "00", "unknown DE70 is not approved");
    assert!(
        ["12", "30"].contains(&rc(&r).as_str()),
        "unknown DE70: 12 or 30, got {}",
        rc(&r)
    );
    assert!(c.mac_ok(&r));
    assert_eq!(r.get_str(70).as_deref(), Some("999"));
    // Required element missing in an 0800.
    let mut req = c.network(&next_stan(), "301");
    req.fields.remove(&41);
    let r = c.call(&req).await;
    assert_answer(&c, &r, "0810", "30", &req, "0800 without DE41");

    let req = c.network(&next_stan(), "301");
    let r = c.call(&req).await;
    assert_answer(&c, &r, "0810", "00", &req, "echo after the refusals");
}
