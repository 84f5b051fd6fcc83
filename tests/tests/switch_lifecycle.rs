//! The payment lifecycle through real switch processes: pre-authorisation (0100),
//! completion (0220), refund (0200 DE3 `20`), reversal (0400), status (0600), the 0221/0401
//! repeats, races for the same money on one and on two instances, notifications (0620/0630)
//! and the ledger (`switchyard ledger check` / `ledger totals`). The contract
//! (merchant-h2h.md) and docs/lifecycle.md are the specification; the bank simulator's own
//! record is the judge of what reached the bank.

use std::collections::BTreeMap;
use std::time::Duration;

use codec::{Message, OwnedMessage};
use system_tests::pg_connect;
use system_tests::switchyard::{
    Client, SwitchProc, WAIT, World, WorldOptions, answer_key, as_repeat, count_mti, de48_tag,
    next_stan, order_ref, rc, requests_for, run_status, run_to_end,
};

const VISA: &str = "4111111111111111";
const MASTERCARD: &str = "5500000000000004";

/// A world with a switch (instance 1) whose bank links are ready, and a client of it.
async fn world_with_switch(name: &str) -> (World, SwitchProc, Client) {
    let world = World::new(name, WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let c = world.client(&sw).await;
    (world, sw, c)
}

/// Like [`world_with_switch`], with bank-a answering after `latency_ms` (sign-on and echo
/// too; the link's timeouts stretched to match), so a request is still at the bank when a
/// racing one arrives.
async fn slow_world_with_switch(name: &str, latency_ms: u64) -> (World, SwitchProc, Client) {
    let world = World::new(name, WorldOptions::slow_bank_a(latency_ms));
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let c = world.client(&sw).await;
    (world, sw, c)
}

/// Sends `m` and returns the answer, checking its MTI is the response to `m` and its MAC.
async fn ask(c: &mut Client, m: &OwnedMessage) -> Message {
    let a = c.call(m).await;
    assert_eq!(
        a.mti().as_str(),
        m.mti.response().as_str(),
        "answer MTI to {}",
        m.mti.as_str()
    );
    assert!(c.mac_ok(&a), "the answer to {} carries a valid MAC", m.mti);
    // Responses echo the request's elements (DE4 of a 0610 is the payment's amount) and
    // never carry DE2.
    let echoed: &[u8] = if m.mti.as_str() == "0600" {
        &[7, 11, 41, 42]
    } else {
        &[3, 4, 7, 11, 41, 42, 49]
    };
    for &n in echoed {
        assert_eq!(
            a.raw(n),
            m.fields.get(&n).map(Vec::as_slice),
            "the answer to {} echoes DE{n}",
            m.mti
        );
    }
    assert!(!a.has(2), "the answer to {} carries no DE2", m.mti);
    a
}

/// Sends `m`, asserts DE39 is `want`; the answer.
async fn expect(c: &mut Client, m: &OwnedMessage, want: &str, what: &str) -> Message {
    let a = ask(c, m).await;
    assert_eq!(rc(&a), want, "{what}: DE39");
    a
}

/// DE37 of an answer (panics when absent).
fn rrn(a: &Message, what: &str) -> String {
    a.get_str(37)
        .unwrap_or_else(|| panic!("{what}: the answer has DE37"))
        .trim_end()
        .to_string()
}

/// A purchase (0200 DE3 00) with a fresh STAN and order reference.
fn purchase(c: &Client, amount: u64, pan: &str, tag: &str) -> OwnedMessage {
    let stan = next_stan();
    c.purchase(&stan, amount, pan, &order_ref(tag, &stan))
}

/// A pre-authorisation (0100) with a fresh STAN and order reference.
fn preauth(c: &Client, amount: u64, pan: &str, tag: &str) -> OwnedMessage {
    let stan = next_stan();
    c.preauth(&stan, amount, pan, &order_ref(tag, &stan))
}

/// The order reference (DE48 OR) of a purchase or pre-authorisation request.
fn order_of(m: &OwnedMessage) -> String {
    let de48 = m.fields.get(&48).expect("DE48");
    let v = codec::tlv::find(de48, b"OR")
        .expect("DE48 parses")
        .expect("OR");
    String::from_utf8(v.to_vec()).expect("ASCII")
}

/// What a 0610 said: DE39, ST, DE4, DE54.
#[derive(Debug, PartialEq, Eq)]
struct Status {
    rc: String,
    st: Option<String>,
    amount: Option<u64>,
    refundable: Option<u64>,
}

fn status_of(a: &Message) -> Status {
    Status {
        rc: rc(a),
        st: de48_tag(a, b"ST"),
        amount: a.get_u64(4),
        refundable: a.get_u64(54),
    }
}

fn found(st: &str, amount: u64, refundable: u64) -> Status {
    Status {
        rc: "00".into(),
        st: Some(st.into()),
        amount: Some(amount),
        refundable: Some(refundable),
    }
}

/// Status by DE90 naming `original` and by its payment's OR: both must say `want`.
async fn expect_status(c: &mut Client, root: &OwnedMessage, named: &OwnedMessage, want: Status) {
    let by_ref = ask(c, &c.status_by_ref(&next_stan(), named)).await;
    assert_eq!(status_of(&by_ref), want, "status by DE90");
    let by_or = ask(c, &c.status_by_order(&next_stan(), &order_of(root))).await;
    assert_eq!(status_of(&by_or), want, "status by OR");
}

// Proves a 0100 is approved and held (status APPROVED, DE54 0), a 0220 captures part of
// it (CAPTURED, DE54 = captured), a second 0220 gets 12, a 0220 naming a purchase gets 12,
// a 0220 over the held amount gets 13, and a 0221 repeat is answered identically with no
// second bank request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preauth_and_completion() {
    let (world, _sw, mut c) = world_with_switch("lc_complete").await;

    let hold = preauth(&c, 5000, VISA, "PA");
    let held = expect(&mut c, &hold, "00", "0100").await;
    assert!(held.get_str(38).is_some(), "an approved 0100 carries DE38");
    let hold_rrn = rrn(&held, "0100");
    expect_status(&mut c, &hold, &hold, found("APPROVED", 5000, 0)).await;

    let over = c.completion(&next_stan(), &hold, 5001);
    expect(&mut c, &over, "13", "0220 over the held amount").await;

    let capture = c.completion(&next_stan(), &hold, 4000);
    let captured = expect(&mut c, &capture, "00", "0220 of 4000").await;
    let capture_rrn = rrn(&captured, "0220");
    assert_ne!(capture_rrn, hold_rrn, "a completion has an RRN of its own");
    expect_status(&mut c, &hold, &hold, found("CAPTURED", 5000, 4000)).await;
    // Named by the completion itself, the status describes the same payment.
    let m = c.status_by_ref(&next_stan(), &capture);
    let by_completion = ask(&mut c, &m).await;
    assert_eq!(status_of(&by_completion), found("CAPTURED", 5000, 4000));

    // The completion reaches the bank by store and forward, after its answer: wait for it
    // before counting what the repeats add.
    let before = world.banks[0]
        .wait_record("the completion advice", Duration::from_secs(30), |r| {
            requests_for(r, &capture_rrn) == 1
        })
        .await;
    for (how, m) in [
        ("0220 unchanged", capture.clone()),
        ("as 0221", as_repeat(&capture)),
    ] {
        let again = ask(&mut c, &m).await;
        assert_eq!(
            answer_key(&again),
            answer_key(&captured),
            "{how}: the same DE37/DE38/DE39"
        );
    }
    let mut other = world.client(&_sw).await;
    let again = ask(&mut other, &as_repeat(&capture)).await;
    assert_eq!(
        answer_key(&again),
        answer_key(&captured),
        "0221 on another connection"
    );
    let after = world.banks[0].record().await;
    assert_eq!(
        requests_for(&after, &capture_rrn),
        1,
        "one 0220 at the bank"
    );
    assert_eq!(
        count_mti(&after, "0220") + count_mti(&after, "0221"),
        count_mti(&before, "0220") + count_mti(&before, "0221"),
        "no completion reached the bank for the repeats"
    );
    assert_eq!(requests_for(&after, &hold_rrn), 1, "one 0100 at the bank");

    let second = c.completion(&next_stan(), &hold, 500);
    expect(&mut c, &second, "12", "a second 0220").await;
    expect_status(&mut c, &hold, &hold, found("CAPTURED", 5000, 4000)).await;

    let bought = purchase(&c, 1000, VISA, "PUR");
    expect(&mut c, &bought, "00", "purchase").await;
    let of_purchase = c.completion(&next_stan(), &bought, 500);
    expect(&mut c, &of_purchase, "12", "0220 naming a purchase").await;
    expect_status(&mut c, &bought, &bought, found("APPROVED", 1000, 1000)).await;
}

// Proves refunds add up to the purchased amount and no further (over the rest: 13), that a
// refund in another currency gets 12 and one naming something never seen gets 25, and that
// the payment ends REFUNDED with nothing refundable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_refusals() {
    let (world, _sw, mut c) = world_with_switch("lc_refund").await;

    let bought = purchase(&c, 1000, VISA, "RF");
    expect(&mut c, &bought, "00", "purchase").await;

    let first = c.refund(&next_stan(), &bought, 400, None);
    let first_answer = expect(&mut c, &first, "00", "refund 400").await;
    expect_status(
        &mut c,
        &bought,
        &bought,
        found("PARTIALLY_REFUNDED", 1000, 600),
    )
    .await;

    let over = c.refund(&next_stan(), &bought, 601, None);
    expect(&mut c, &over, "13", "refund over the rest").await;

    let mut euros = c.refund(&next_stan(), &bought, 100, None);
    euros.fields.insert(49, b"978".to_vec());
    expect(&mut c, &euros, "12", "refund in another currency").await;

    let never_sent = purchase(&c, 1000, VISA, "GHOST");
    let unknown = c.refund(&next_stan(), &never_sent, 100, None);
    expect(&mut c, &unknown, "25", "refund of an unknown original").await;

    // The repeat of the first refund is answered from the record, not refunded again.
    let again = ask(&mut c, &as_repeat(&first)).await;
    assert_eq!(answer_key(&again), answer_key(&first_answer), "0201 repeat");
    expect_status(
        &mut c,
        &bought,
        &bought,
        found("PARTIALLY_REFUNDED", 1000, 600),
    )
    .await;

    let rest = c.refund(&next_stan(), &bought, 600, None);
    let rest_answer = expect(&mut c, &rest, "00", "refund of the rest").await;
    expect_status(&mut c, &bought, &bought, found("REFUNDED", 1000, 0)).await;
    let one_more = c.refund(&next_stan(), &bought, 1, None);
    expect(
        &mut c,
        &one_more,
        "13",
        "refund of a fully refunded purchase",
    )
    .await;

    let rec = world.banks[0].record().await;
    for a in [&first_answer, &rest_answer] {
        assert_eq!(
            requests_for(&rec, &rrn(a, "refund")),
            1,
            "each refund reached the bank once"
        );
    }
}

// Proves reversal rules: a different amount gets 13, a purchase with refunds gets 12,
// reversing something already reversed answers 00 again, something never seen gets 25;
// a reversed payment reports REVERSED; the 0401 repeat is answered identically and the bank
// sees the reversal once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversal_rules() {
    let (world, sw, mut c) = world_with_switch("lc_reverse").await;

    let bought = purchase(&c, 1000, VISA, "RV");
    let bought_answer = expect(&mut c, &bought, "00", "purchase").await;
    let bought_rrn = rrn(&bought_answer, "purchase");

    let mut wrong = c.reversal(&next_stan(), &bought);
    wrong.fields.insert(4, format!("{:012}", 999).into_bytes());
    expect(&mut c, &wrong, "13", "reversal with a different amount").await;
    expect_status(&mut c, &bought, &bought, found("APPROVED", 1000, 1000)).await;

    let void = c.reversal(&next_stan(), &bought);
    let voided = expect(&mut c, &void, "00", "reversal").await;
    expect_status(&mut c, &bought, &bought, found("REVERSED", 1000, 0)).await;

    let again = c.reversal(&next_stan(), &bought);
    expect(
        &mut c,
        &again,
        "00",
        "reversal of something already reversed",
    )
    .await;
    expect_status(&mut c, &bought, &bought, found("REVERSED", 1000, 0)).await;

    // The bank gets the reversal once; the 0401 repeat (here and on another connection) is
    // answered with the first answer and sends nothing more.
    world.banks[0]
        .wait_record("the reversal at the bank", WAIT, |r| {
            r["reversals"][&bought_rrn].as_u64() == Some(1)
        })
        .await;
    for m in [void.clone(), as_repeat(&void)] {
        let a = ask(&mut c, &m).await;
        assert_eq!(answer_key(&a), answer_key(&voided), "0400/0401 repeat");
    }
    let mut other = world.client(&sw).await;
    let a = ask(&mut other, &as_repeat(&void)).await;
    assert_eq!(
        answer_key(&a),
        answer_key(&voided),
        "0401 on another connection"
    );
    let db = pg_connect(&world.db_url).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row = db
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE r.state = 'acknowledged') FROM reversals r \
                 JOIN transactions t ON t.id = r.transaction_id WHERE t.rrn = $1",
                &[&bought_rrn],
            )
            .await
            .expect("query reversals");
        let (all, acked): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(all, 1, "one reversal stored for the purchase");
        if acked == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reversal was never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rec = world.banks[0].record().await;
    assert_eq!(
        rec["reversals"][&bought_rrn].as_u64(),
        Some(1),
        "the bank saw one reversal: {}",
        rec["reversals"]
    );
    assert_eq!(
        requests_for(&rec, &bought_rrn),
        1,
        "one purchase at the bank"
    );

    let refunded = purchase(&c, 2000, VISA, "RVR");
    expect(&mut c, &refunded, "00", "purchase").await;
    let part = c.refund(&next_stan(), &refunded, 500, None);
    expect(&mut c, &part, "00", "refund").await;
    let late = c.reversal(&next_stan(), &refunded);
    expect(&mut c, &late, "12", "reversal after refunds").await;
    expect_status(
        &mut c,
        &refunded,
        &refunded,
        found("PARTIALLY_REFUNDED", 2000, 1500),
    )
    .await;

    let never_sent = purchase(&c, 1000, VISA, "GHOST");
    let ghost = c.reversal(&next_stan(), &never_sent);
    expect(&mut c, &ghost, "25", "reversal of something never seen").await;
}

// Proves a reversed completion returns the payment to the held state (APPROVED, a new
// completion allowed) and a reversed refund stops counting (DE54 back up); the payment
// reports each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversing_completions_and_refunds() {
    let (_world, _sw, mut c) = world_with_switch("lc_undo").await;

    let hold = preauth(&c, 3000, VISA, "UC");
    expect(&mut c, &hold, "00", "0100").await;
    let capture = c.completion(&next_stan(), &hold, 2000);
    expect(&mut c, &capture, "00", "0220").await;
    expect_status(&mut c, &hold, &hold, found("CAPTURED", 3000, 2000)).await;
    let undo = c.reversal(&next_stan(), &capture);
    expect(&mut c, &undo, "00", "reversal of the completion").await;
    expect_status(&mut c, &hold, &hold, found("APPROVED", 3000, 0)).await;
    let recapture = c.completion(&next_stan(), &hold, 2500);
    expect(
        &mut c,
        &recapture,
        "00",
        "a new completion of the held pre-auth",
    )
    .await;
    expect_status(&mut c, &hold, &hold, found("CAPTURED", 3000, 2500)).await;

    let refund = c.refund(&next_stan(), &recapture, 1000, Some("damaged"));
    expect(&mut c, &refund, "00", "refund of the completion").await;
    expect_status(
        &mut c,
        &hold,
        &hold,
        found("PARTIALLY_REFUNDED", 3000, 1500),
    )
    .await;
    let undo_refund = c.reversal(&next_stan(), &refund);
    expect(&mut c, &undo_refund, "00", "reversal of the refund").await;
    expect_status(&mut c, &hold, &hold, found("CAPTURED", 3000, 2500)).await;
}

// Proves status by OR reports the latest payment with that reference (a declined one, then
// an approved retry of the same OR), status by DE90 still describes the declined one, and
// status by OR or by DE90 of something unknown answers 25.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_by_order_and_of_unknown() {
    let (_world, _sw, mut c) = world_with_switch("lc_status").await;
    let stan = next_stan();
    let order = order_ref("LATEST", &stan);
    let declined = c.purchase(&stan, 1051, VISA, &order);
    expect(&mut c, &declined, "51", "declined purchase").await;
    expect_status(&mut c, &declined, &declined, found("DECLINED", 1051, 0)).await;
    let retry = c.purchase(&next_stan(), 1200, VISA, &order);
    expect(&mut c, &retry, "00", "retry of the same OR").await;
    let m = c.status_by_order(&next_stan(), &order);
    let by_or = ask(&mut c, &m).await;
    assert_eq!(
        status_of(&by_or),
        found("APPROVED", 1200, 1200),
        "by OR: the latest payment"
    );
    let m = c.status_by_ref(&next_stan(), &declined);
    let by_ref = ask(&mut c, &m).await;
    assert_eq!(
        status_of(&by_ref),
        found("DECLINED", 1051, 0),
        "by DE90: the payment named"
    );

    let never_sent = purchase(&c, 1000, VISA, "NOPE");
    let m = c.status_by_ref(&next_stan(), &never_sent);
    let by_ref = ask(&mut c, &m).await;
    assert_eq!(rc(&by_ref), "25", "status by DE90 of an unknown");
    let m = c.status_by_order(&next_stan(), &order_of(&never_sent));
    let by_or = ask(&mut c, &m).await;
    assert_eq!(rc(&by_or), "25", "status by OR of an unknown");
}

// Proves the whole order flow: hold 5000, capture 4000, refund 1500 with a reason (DE48
// RR, kept), refund 2500, with status APPROVED, CAPTURED, PARTIALLY_REFUNDED, REFUNDED and
// DE54 0, 4000, 2500, 0 at each step, and the bank saw each of the 0100, the 0220 and the
// two refunds (0200 DE3 20) exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_order_flow() {
    let (world, _sw, mut c) = world_with_switch("lc_flow").await;

    let hold = preauth(&c, 5000, VISA, "FLOW");
    let a_hold = expect(&mut c, &hold, "00", "hold 5000").await;
    expect_status(&mut c, &hold, &hold, found("APPROVED", 5000, 0)).await;

    let capture = c.completion(&next_stan(), &hold, 4000);
    let a_capture = expect(&mut c, &capture, "00", "capture 4000").await;
    expect_status(&mut c, &hold, &hold, found("CAPTURED", 5000, 4000)).await;

    let reason = "customer returned one item";
    let first = c.refund(&next_stan(), &capture, 1500, Some(reason));
    let a_first = expect(&mut c, &first, "00", "refund 1500").await;
    expect_status(
        &mut c,
        &hold,
        &hold,
        found("PARTIALLY_REFUNDED", 5000, 2500),
    )
    .await;

    let second = c.refund(&next_stan(), &capture, 2500, None);
    let a_second = expect(&mut c, &second, "00", "refund 2500").await;
    expect_status(&mut c, &hold, &hold, found("REFUNDED", 5000, 0)).await;

    // The completion reaches the bank by store and forward, after its answer.
    let capture_rrn = rrn(&a_capture, "0220");
    let rec = world.banks[0]
        .wait_record("the completion advice", Duration::from_secs(30), |r| {
            requests_for(r, &capture_rrn) == 1
        })
        .await;
    let expected = [
        (&a_hold, "0100", "000000", 5000u64),
        (&a_capture, "0220", "000000", 4000),
        (&a_first, "0200", "200000", 1500),
        (&a_second, "0200", "200000", 2500),
    ];
    for (answer, mti, pc, amount) in expected {
        let r = rrn(answer, mti);
        assert_eq!(
            requests_for(&rec, &r),
            1,
            "the bank saw the {mti} {pc} once"
        );
        let entry = rec["approved"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["rrn"] == r.as_str()))
            .unwrap_or_else(|| panic!("the bank approved the {mti} {pc}: {rec}"));
        assert_eq!(entry["mti"], mti, "{mti} {pc}: MTI at the bank");
        assert_eq!(entry["processing_code"], pc, "{mti} {pc}: DE3 at the bank");
        assert_eq!(
            entry["amount_minor"].as_u64(),
            Some(amount),
            "{mti} {pc}: DE4"
        );
    }
    assert_eq!(rec["requests_by_rrn_dupes"].as_u64(), Some(0));

    let db = pg_connect(&world.db_url).await;
    let row = db
        .query_one(
            "SELECT refund_reason FROM transactions WHERE rrn = $1",
            &[&rrn(&a_first, "refund")],
        )
        .await
        .expect("the refund row");
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some(reason),
        "the refund reason (DE48 RR) is kept"
    );
}

/// Purchases 1000 on `a`, then sends refunds of 600 on `a` and `b` at the same time, `rounds`
/// times: each time exactly one gets 00 and the other 13, and the payment ends
/// PARTIALLY_REFUNDED with 400 refundable.
async fn refund_race(a: &mut Client, b: &mut Client, rounds: usize) {
    for round in 0..rounds {
        let bought = purchase(a, 1000, VISA, "RACE");
        expect(a, &bought, "00", "purchase").await;
        let ra = a.refund(&next_stan(), &bought, 600, None);
        let rb = b.refund(&next_stan(), &bought, 600, None);
        let (x, y) = tokio::join!(ask(a, &ra), ask(b, &rb));
        let mut codes = [rc(&x), rc(&y)];
        codes.sort();
        assert_eq!(
            codes,
            ["00".to_string(), "13".to_string()],
            "round {round}: exactly one refund of the last 600 succeeds"
        );
        expect_status(a, &bought, &bought, found("PARTIALLY_REFUNDED", 1000, 400)).await;
    }
}

// Proves two refunds racing for the last unit on one instance (two connections): purchase
// 1000, refunds of 600 and 600 at the same time: exactly one 00, the other 13.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refunds_one_instance() {
    let (world, sw, mut a) = world_with_switch("lc_race1").await;
    let mut b = world.client(&sw).await;
    refund_race(&mut a, &mut b, 5).await;
    ledger_check_ok(&world);
}

// Proves the same across two switch instances (ids 1 and 2) sharing the world, with the
// bank answering after 300 ms so the winner is still at the bank when the loser is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refunds_two_instances() {
    let (world, _sw1, mut a) = slow_world_with_switch("lc_race2", 300).await;
    let sw2 = world.start_switch(2);
    world.wait_links_ready(&sw2).await;
    let mut b = world.client(&sw2).await;
    refund_race(&mut a, &mut b, 5).await;
    ledger_check_ok(&world);
}

// Proves a capture and a void of the same held pre-auth sent at the same time on two
// instances: exactly one wins (00, the other 12) and the final status agrees (CAPTURED or
// REVERSED), never both; the bank saw a completion exactly when the capture won. The race
// is decided by the payment's row lock: completions are recorded at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_versus_void_two_instances() {
    let (world, _sw1, mut a) = slow_world_with_switch("lc_capvoid", 300).await;
    let sw2 = world.start_switch(2);
    world.wait_links_ready(&sw2).await;
    let mut b = world.client(&sw2).await;
    let completions_before = count_mti(&world.banks[0].record().await, "0220");
    let mut captures_won = 0u64;
    for round in 0..6 {
        let hold = preauth(&a, 3000, VISA, "CV");
        expect(&mut a, &hold, "00", "0100").await;
        let capture = a.completion(&next_stan(), &hold, 3000);
        let void = b.reversal(&next_stan(), &hold);
        // Which one leaves first alternates, so both orders of arrival are raced.
        let (x, y) = if round % 2 == 0 {
            tokio::join!(ask(&mut a, &capture), ask(&mut b, &void))
        } else {
            let (y, x) = tokio::join!(ask(&mut b, &void), ask(&mut a, &capture));
            (x, y)
        };
        let (cap, vd) = (rc(&x), rc(&y));
        let m = a.status_by_ref(&next_stan(), &hold);
        let status = status_of(&ask(&mut a, &m).await);
        match (cap.as_str(), vd.as_str()) {
            ("00", "12") => {
                captures_won += 1;
                assert_eq!(status, found("CAPTURED", 3000, 3000), "round {round}");
            }
            ("12", "00") => assert_eq!(status, found("REVERSED", 3000, 0), "round {round}"),
            _ => panic!(
                "round {round}: capture answered {cap}, void answered {vd}: exactly one must \
                 win (the other 12); status now {status:?}"
            ),
        }
    }
    // Completions reach the bank by store and forward, after their answers.
    let rec = world.banks[0]
        .wait_record(
            "every winning capture's advice",
            Duration::from_secs(30),
            |r| count_mti(r, "0220") - completions_before >= captures_won,
        )
        .await;
    assert_eq!(
        count_mti(&rec, "0220") - completions_before,
        captures_won,
        "the bank saw a completion for each capture that won and no other"
    );
    ledger_check_ok(&world);
}

/// `switchyard ledger check` on the world's configuration succeeds.
fn ledger_check_ok(world: &World) {
    let cfg = world.config.to_str().expect("utf-8 path");
    let (status, out, err) = run_status(&["ledger", "check", "--config", cfg]);
    assert!(
        status.success(),
        "ledger check failed ({status}): {out}\n{err}"
    );
}

/// Polls the world's database until the notification of the payment with this RRN is
/// stored (the bank has acknowledged the reversal).
async fn wait_notification_stored(world: &World, rrn: &str) {
    let db = pg_connect(&world.db_url).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n: i64 = db
            .query_one("SELECT count(*) FROM notifications WHERE rrn = $1", &[&rrn])
            .await
            .expect("query notifications")
            .get(0);
        if n > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notification stored for {rrn} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A purchase that the bank never answers (amount ending 91): the switch answers 91; the
/// request and the payment's RRN.
async fn timed_out_purchase(c: &mut Client) -> (OwnedMessage, String) {
    let m = purchase(c, 1091, VISA, "TIMEOUT");
    let stan = String::from_utf8(m.fields[&11].clone()).expect("ASCII");
    c.send(&m).await;
    let (a, _) = c.recv_stan(&stan).await;
    assert_eq!(rc(&a), "91", "a purchase the bank never answers");
    let r = rrn(&a, "the 91");
    (m, r)
}

/// Waits for the 0620 about `payment_rrn` on `c` and checks it: EV TRANSACTION_REVERSED,
/// ST REVERSED, OR the payment's, DE37 its RRN, a valid MAC. Returns it.
async fn expect_reversed_notification(
    c: &mut Client,
    payment: &OwnedMessage,
    payment_rrn: &str,
) -> Message {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (m, _) = c.recv_mti("0620", left).await;
        let m = m.unwrap_or_else(|| panic!("no 0620 about {payment_rrn} within {WAIT:?}"));
        if m.get_str(37).as_deref().map(str::trim_end) != Some(payment_rrn) {
            continue;
        }
        assert!(c.mac_ok(&m), "the 0620 carries a valid MAC");
        assert_eq!(de48_tag(&m, b"EV").as_deref(), Some("TRANSACTION_REVERSED"));
        assert_eq!(de48_tag(&m, b"ST").as_deref(), Some("REVERSED"));
        assert_eq!(de48_tag(&m, b"OR"), Some(order_of(payment)));
        assert_eq!(m.get_str(42).as_deref(), Some(c.creds.id.as_str()));
        for n in [7u8, 11, 41] {
            assert!(m.has(n), "the 0620 carries DE{n}");
        }
        return m;
    }
}

/// Signs `c` on (0800 DE70 001).
async fn sign_on(c: &mut Client) {
    let stan = next_stan();
    c.send(&c.network(&stan, "001")).await;
    let (a, _) = c.recv_stan(&stan).await;
    assert_eq!(a.mti().as_str(), "0810");
    assert_eq!(rc(&a), "00", "sign-on");
}

/// Answers the 0620 with 0630 DE39 00, then watches `c` for longer than the first repeat
/// would take: no further 0620 about `payment_rrn` may come.
async fn acknowledge_and_expect_silence(c: &mut Client, advice: &Message, payment_rrn: &str) {
    c.send(&c.notification_ack(advice, "00")).await;
    // An observation window (the first repeat is due 2 s after a send, and the notifier
    // polls every 0.5 s): nothing about this payment may arrive in it.
    let window = Duration::from_secs(6);
    let deadline = tokio::time::Instant::now() + window;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (m, _) = c.recv_mti("0620", left).await;
        let Some(m) = m else { break };
        assert_ne!(
            m.get_str(37).as_deref().map(str::trim_end),
            Some(payment_rrn),
            "a 0620 about {payment_rrn} came again after it was acknowledged with 0630 00"
        );
    }
}

// Proves a signed-on merchant whose purchase timed out (91) gets a 0620 (EV
// TRANSACTION_REVERSED, ST REVERSED, DE37 the payment's RRN, valid MAC) once the bank has
// acknowledged the reversal, and after answering 0630 00 gets no further 0620 for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_to_a_signed_on_merchant() {
    let (world, _sw, mut c) = world_with_switch("lc_notify").await;
    sign_on(&mut c).await;
    let (payment, payment_rrn) = timed_out_purchase(&mut c).await;
    let advice = expect_reversed_notification(&mut c, &payment, &payment_rrn).await;
    let rec = world.banks[0].record().await;
    assert!(
        rec["reversals"][&payment_rrn].as_u64().unwrap_or(0) >= 1,
        "the 0620 came after the bank had the reversal: {}",
        rec["reversals"]
    );
    acknowledge_and_expect_silence(&mut c, &advice, &payment_rrn).await;
    let m = c.status_by_ref(&next_stan(), &payment);
    let status = ask(&mut c, &m).await;
    assert_eq!(status_of(&status), found("REVERSED", 1091, 0));
}

// Proves a merchant that is not connected when the reversal is acknowledged gets the 0620
// when it connects and signs on, repeated (same DE7 and DE11) until it answers 0630 00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_waits_for_an_absent_merchant() {
    let (world, sw, mut c) = world_with_switch("lc_notify_away").await;
    let (payment, payment_rrn) = timed_out_purchase(&mut c).await;
    drop(c);
    wait_notification_stored(&world, &payment_rrn).await;

    let mut later = world.client(&sw).await;
    sign_on(&mut later).await;
    let advice = expect_reversed_notification(&mut later, &payment, &payment_rrn).await;
    // Unanswered, it is repeated with the same DE7 and DE11.
    let repeat = expect_reversed_notification(&mut later, &payment, &payment_rrn).await;
    for n in [7u8, 11] {
        assert_eq!(repeat.raw(n), advice.raw(n), "the repeat keeps DE{n}");
    }
    acknowledge_and_expect_silence(&mut later, &repeat, &payment_rrn).await;
}

// Proves a stored notification is not lost across a switch restart: the switch is stopped
// with SIGTERM before the merchant signs on, started again, and the merchant that signs on
// then receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_survives_a_restart() {
    let (world, mut sw, mut c) = world_with_switch("lc_notify_restart").await;
    let (payment, payment_rrn) = timed_out_purchase(&mut c).await;
    wait_notification_stored(&world, &payment_rrn).await;
    drop(c);
    sw.process.signal("TERM");
    let exit = sw
        .process
        .wait_timeout(WAIT)
        .expect("the switch exits on SIGTERM");
    assert!(exit.success(), "SIGTERM exits 0: {exit}");

    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    sign_on(&mut c).await;
    let advice = expect_reversed_notification(&mut c, &payment, &payment_rrn).await;
    acknowledge_and_expect_silence(&mut c, &advice, &payment_rrn).await;
}

/// About 100 mixed requests on both banks and two currencies: purchases, declines, a
/// timeout, pre-authorisations with completions, refunds, reversals of purchases,
/// pre-authorisations, completions and refunds. Every answer is checked.
async fn mixed_run(c: &mut Client) -> usize {
    let mut sent = 0usize;
    let mut go = async |c: &mut Client, m: &OwnedMessage, want: &str, what: &str| {
        sent += 1;
        expect(c, m, want, what).await;
    };
    for round in 0..11u64 {
        let pan = if round % 2 == 0 { VISA } else { MASTERCARD };
        let currency: &[u8] = if round % 3 == 2 { b"978" } else { b"840" };
        let with_currency = |mut m: OwnedMessage| {
            m.fields.insert(49, currency.to_vec());
            m
        };

        let bought = with_currency(purchase(c, 1000 + round * 10, pan, "MIX"));
        go(c, &bought, "00", "purchase").await;
        let declined = with_currency(purchase(c, 1051 + round * 100, pan, "MIXD"));
        go(c, &declined, "51", "declined purchase").await;

        let hold = with_currency(preauth(c, 3000 + round * 10, pan, "MIXH"));
        go(c, &hold, "00", "pre-auth").await;
        let capture = c.completion(&next_stan(), &hold, 2000 + round * 10);
        go(c, &capture, "00", "completion").await;
        let refund_capture = c.refund(&next_stan(), &capture, 500, Some("mixed"));
        go(c, &refund_capture, "00", "refund of a completion").await;

        let refund_purchase = c.refund(&next_stan(), &bought, 300, None);
        go(c, &refund_purchase, "00", "refund of a purchase").await;

        let voided = with_currency(purchase(c, 700 + round * 10, pan, "MIXV"));
        go(c, &voided, "00", "purchase to void").await;
        let void = c.reversal(&next_stan(), &voided);
        go(c, &void, "00", "void").await;

        match round % 4 {
            0 => {
                let undo = c.reversal(&next_stan(), &refund_purchase);
                go(c, &undo, "00", "reversal of a refund").await;
            }
            1 => {
                let other = with_currency(preauth(c, 4200, pan, "MIXHV"));
                go(c, &other, "00", "pre-auth to void").await;
                let undo = c.reversal(&next_stan(), &other);
                go(c, &undo, "00", "void of a pre-auth").await;
            }
            2 => {
                let other = with_currency(preauth(c, 1800, pan, "MIXHC"));
                go(c, &other, "00", "pre-auth").await;
                let cap = c.completion(&next_stan(), &other, 1700);
                go(c, &cap, "00", "completion").await;
                let undo = c.reversal(&next_stan(), &cap);
                go(c, &undo, "00", "reversal of a completion").await;
            }
            _ => {
                let over = c.refund(&next_stan(), &bought, 5000, None);
                go(c, &over, "13", "refund over the rest").await;
            }
        }
        if round == 0 || round == 5 {
            let m = with_currency(purchase(c, 1191, pan, "MIXT"));
            go(c, &m, "91", "timeout").await;
        }
    }
    sent
}

/// Sum per (account, currency) of `ledger totals --csv` over all business days.
fn parse_totals(csv: &str) -> BTreeMap<(String, String), i64> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    assert_eq!(
        lines.next(),
        Some("business_day,account,currency,postings,amount_minor"),
        "CSV header"
    );
    let mut out = BTreeMap::new();
    for l in lines {
        let cols: Vec<&str> = l.split(',').collect();
        assert_eq!(cols.len(), 5, "CSV line {l:?}");
        let amount: i64 = cols[4].parse().expect("amount_minor");
        *out.entry((cols[1].to_string(), cols[2].to_string()))
            .or_insert(0) += amount;
    }
    out
}

/// What a bank simulator's record says it owes, per currency: approved purchases and
/// completions less approved refunds, each unless reversed (pre-authorisations hold, they
/// do not move money).
fn bank_net(record: &serde_json::Value) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for e in record["approved"].as_array().cloned().unwrap_or_default() {
        if e["reversed"] == true {
            continue;
        }
        let amount = e["amount_minor"].as_i64().unwrap_or(0);
        let pc = e["processing_code"].as_str().unwrap_or("");
        let signed = match (e["mti"].as_str().unwrap_or(""), &pc[..pc.len().min(2)]) {
            ("0200" | "0201", "00") | ("0220" | "0221", _) => amount,
            ("0200" | "0201", "20") => -amount,
            _ => continue,
        };
        let currency = e["currency"].as_str().unwrap_or("").to_string();
        *out.entry(currency).or_insert(0) += signed;
    }
    out.retain(|_, v| *v != 0);
    out
}

// Proves `switchyard ledger check` is clean (exit 0) after a long mixed run, and fails
// (non-zero exit, naming the violated rule) once a posting in the database is corrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_check_clean_then_detects_corruption() {
    let (world, _sw, mut c) = world_with_switch("lc_ledger_check").await;
    let sent = mixed_run(&mut c).await;
    assert!(sent >= 100, "a long run: {sent} requests");
    let cfg = world.config.to_str().expect("utf-8 path");
    let out = run_to_end(&["ledger", "check", "--config", cfg]);
    assert!(out.contains("ok"), "ledger check says ok: {out}");

    let db = pg_connect(&world.db_url).await;
    let n = db
        .execute(
            "UPDATE ledger_postings SET amount_minor = amount_minor + 1 \
             WHERE (transaction_id, account) = \
               (SELECT transaction_id, account FROM ledger_postings ORDER BY 1, 2 LIMIT 1)",
            &[],
        )
        .await
        .expect("corrupt a posting");
    assert_eq!(n, 1, "one posting corrupted");
    let (status, out, err) = run_status(&["ledger", "check", "--config", cfg]);
    assert!(
        !status.success(),
        "ledger check must fail on a corrupted posting: {out}\n{err}"
    );
    assert!(
        format!("{out}\n{err}").contains("posting-balances"),
        "the failure names the violated rule: {out}\n{err}"
    );
}

// Proves `switchyard ledger totals --csv` after a mixed run reconciles with each bank
// simulator's own record: per bank and currency, approved purchases and completions less
// refunds, reversed ones not counting, equal the bank account's total; the merchant's
// account is the opposite of the banks' together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_totals_reconcile_with_the_banks() {
    let (world, _sw, mut c) = world_with_switch("lc_ledger_totals").await;
    mixed_run(&mut c).await;
    let cfg = world.config.to_str().expect("utf-8 path");
    let totals = parse_totals(&run_to_end(&["ledger", "totals", "--config", cfg, "--csv"]));
    let ledger_for = |account: &str| -> BTreeMap<String, i64> {
        totals
            .iter()
            .filter(|((a, _), v)| a == account && **v != 0)
            .map(|((_, cur), v)| (cur.clone(), *v))
            .collect()
    };
    let mut banks_sum: BTreeMap<String, i64> = BTreeMap::new();
    for (i, bank) in world.banks.iter().enumerate() {
        let id = system_tests::switchyard::BANK_IDS[i];
        let want = ledger_for(&format!("bank:{id}"));
        assert!(!want.is_empty(), "{id} has postings: {totals:?}");
        // Merchant reversals reach the bank by store and forward, after their answer.
        let deadline = tokio::time::Instant::now() + WAIT;
        let got = loop {
            let got = bank_net(&bank.record().await);
            if got == want || tokio::time::Instant::now() >= deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            got, want,
            "{id}: the simulator's net (left) against the ledger's bank account (right)"
        );
        for (cur, v) in want {
            *banks_sum.entry(cur).or_insert(0) += v;
        }
    }
    let merchant: BTreeMap<String, i64> = ledger_for(&format!("merchant:{}", world.merchant.id))
        .into_iter()
        .map(|(k, v)| (k, -v))
        .collect();
    assert_eq!(
        merchant, banks_sum,
        "the merchant's account mirrors the banks'"
    );
}

// Proves `switchyard prune` removes settled payments of old business days whole (with
// their postings), keeps a recent payment and anything still in doubt, and leaves the
// ledger check clean; a second run finds nothing more to remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_old_settled_payments_whole() {
    let (world, sw, mut c) = world_with_switch("lc_prune").await;
    let sent = mixed_run(&mut c).await;
    assert!(sent >= 100, "a long run: {sent} requests");
    let db = pg_connect(&world.db_url).await;
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) }
    };
    // Everything so far happened 40 days ago; one purchase happens today.
    db.execute(
        "UPDATE transaction_rows SET created_at = created_at - interval '40 days'",
        &[],
    )
    .await
    .expect("age the journal");
    let recent = purchase(&c, 1234, VISA, "RECENT");
    let recent_answer = expect(&mut c, &recent, "00", "a purchase today").await;
    let old_before =
        count("SELECT count(*) FROM transactions WHERE created_at < now() - interval '30 days'")
            .await;
    // The switch stops here, so that nothing settles between the two prunes below.
    drop(c);
    drop(sw);
    let in_doubt_before = count("SELECT count(*) FROM in_doubt").await;

    let cfg = world.config.to_str().expect("utf-8 path");
    let day = db
        .query_one("SELECT (current_date - 30)::text", &[])
        .await
        .expect("cut-off")
        .get::<_, String>(0);
    let out = run_to_end(&["prune", "--config", cfg, "--before", &day]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("prune prints JSON");
    let payments = report["payments"].as_u64().expect("payments");
    assert!(payments > 0, "old settled payments removed: {out}");
    assert!(
        report["postings"].as_u64().unwrap_or(0) > 0,
        "with their postings: {out}"
    );
    let old_after =
        count("SELECT count(*) FROM transactions WHERE created_at < now() - interval '30 days'")
            .await;
    assert_eq!(
        old_before - old_after,
        report["transactions"].as_i64().expect("transactions"),
        "the rows it says it removed are gone"
    );
    let rrn = recent_answer.get_str(37).expect("DE37").into_owned();
    let kept = db
        .query_one("SELECT count(*) FROM transactions WHERE rrn = $1", &[&rrn])
        .await
        .expect("recent")
        .get::<_, i64>(0);
    assert_eq!(kept, 1, "today's purchase is kept");
    assert_eq!(
        count("SELECT count(*) FROM in_doubt").await,
        in_doubt_before,
        "nothing in doubt removed"
    );
    let orphans = count(
        "SELECT count(*) FROM transactions c WHERE c.original_id IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM transactions p WHERE p.id = c.original_id)",
    )
    .await;
    assert_eq!(
        orphans, 0,
        "no completion, refund or reversal outlives its payment"
    );
    let check = run_to_end(&["ledger", "check", "--config", cfg]);
    assert!(check.contains("ok"), "ledger check after prune: {check}");
    let again = run_to_end(&["prune", "--config", cfg, "--before", &day]);
    let again: serde_json::Value = serde_json::from_str(again.trim()).expect("JSON");
    assert_eq!(again["payments"], 0, "a second run removes nothing more");
}
