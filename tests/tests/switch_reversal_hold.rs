//! Reversals racing their originals (issue 11, defect 5; merchant-h2h.md "Originals and
//! what may follow them"): a 0400 that arrives while the request it names is in flight,
//! unseen, or timed out at the bank is held until that request's outcome is recorded and
//! then applied to it; its 0401 repeat gets the same answer. The bank simulator's record
//! is the judge of what reached the bank.

use std::time::Duration;

use codec::{Message, OwnedMessage};
use system_tests::switchyard::{
    Client, SwitchProc, World, WorldOptions, answer_key, as_repeat, next_stan, order_ref, rc,
};

const VISA: &str = "4111111111111111";

/// A world whose bank-a answers after `latency_ms` (timeouts stretched to match), with a
/// ready switch (instance 1) and a client of it.
async fn world_with_latency(name: &str, latency_ms: u64) -> (World, SwitchProc, Client) {
    let world = World::new(name, WorldOptions::slow_bank_a(latency_ms));
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let c = world.client(&sw).await;
    (world, sw, c)
}

/// A frame: 2-byte big-endian length, then the message.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut f = (message.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(message);
    f
}

fn stan_of(m: &OwnedMessage) -> String {
    String::from_utf8(m.fields[&11].clone()).expect("ASCII STAN")
}

fn rrn_of(a: &Message) -> Option<String> {
    a.get_str(37).map(|r| r.trim_end().to_string())
}

/// Writes `first` and `second` in one TCP write (pipelining is allowed) and returns their
/// answers, matched by DE11.
async fn pipelined(
    c: &mut Client,
    first: &OwnedMessage,
    second: &OwnedMessage,
) -> (Message, Message) {
    let mut raw = frame(&c.encode(first));
    raw.extend_from_slice(&frame(&c.encode(second)));
    c.send_raw(&raw).await;
    let (a, others) = c.recv_stan(&stan_of(first)).await;
    let want = stan_of(second);
    let b = match others
        .into_iter()
        .find(|m| m.get_str(11).as_deref() == Some(want.as_str()))
    {
        Some(b) => b,
        None => c.recv_stan(&stan_of(second)).await.0,
    };
    (a, b)
}

/// The 0610's DE48 `ST` for `original`.
async fn status(c: &mut Client, original: &OwnedMessage) -> String {
    let a = c.call(&c.status_by_ref(&next_stan(), original)).await;
    let de48 = a.get_str(48).unwrap_or_default();
    let at = de48.find("ST").expect("DE48 ST in the 0610");
    let len: usize = de48[at + 2..at + 5].parse().expect("ST length");
    de48[at + 5..at + 5 + len].to_string()
}

// Proves a 0400 written right behind its purchase (one TCP write, the bank taking 300 ms)
// is held until the purchase is approved, then reverses it at the bank: both answered 00,
// the payment REVERSED, one reversal at the bank, and the 0401 repeat answered the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversal_pipelined_behind_its_purchase_reverses_it() {
    let (world, _sw, mut c) = world_with_latency("hold_pipelined", 300).await;
    for round in 0..3 {
        let stan = next_stan();
        let buy = c.purchase(&stan, 1000, VISA, &order_ref("HOLD", &stan));
        let void = c.reversal(&next_stan(), &buy);
        let (bought, voided) = pipelined(&mut c, &buy, &void).await;
        assert_eq!(rc(&bought), "00", "round {round}: the purchase is approved");
        assert_eq!(
            rc(&voided),
            "00",
            "round {round}: the held reversal is applied"
        );
        let bought_rrn = rrn_of(&bought).expect("the purchase's DE37");
        assert!(
            rrn_of(&voided).is_some(),
            "round {round}: the reversal is recorded"
        );
        assert_eq!(status(&mut c, &buy).await, "REVERSED", "round {round}");
        let again = c.call(&as_repeat(&void)).await;
        assert_eq!(
            answer_key(&again),
            answer_key(&voided),
            "round {round}: 0401 repeat"
        );
        world.banks[0]
            .wait_record("the reversal at the bank", Duration::from_secs(30), |r| {
                r["reversals"][&bought_rrn].as_u64() == Some(1)
            })
            .await;
    }
}

// Proves a reversal sent 0.3 s after a purchase the bank never answers is held until the
// switch times the purchase out (91), then answered 00 (the switch reverses it anyway):
// the bank gets exactly one reversal, and the 0401 repeat is answered the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversal_of_a_purchase_timing_out_is_applied() {
    let world = World::new("hold_timeout", WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let stan = next_stan();
    let buy = c.purchase(&stan, 1091, VISA, &order_ref("HOLDTO", &stan));
    c.send(&buy).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let void = c.reversal(&next_stan(), &buy);
    c.send(&void).await;
    let (bought, _) = c.recv_stan(&stan).await;
    assert_eq!(rc(&bought), "91", "the bank never answers the purchase");
    let bought_rrn = rrn_of(&bought).expect("the 91 is recorded");
    let (voided, _) = c.recv_stan(&stan_of(&void)).await;
    assert_eq!(rc(&voided), "00", "the held reversal is answered 00");
    let again = c.call(&as_repeat(&void)).await;
    assert_eq!(answer_key(&again), answer_key(&voided), "0401 repeat");
    let rec = world.banks[0]
        .wait_record("the timeout's reversal", Duration::from_secs(30), |r| {
            r["reversals"][&bought_rrn].as_u64().is_some()
        })
        .await;
    assert_eq!(
        rec["reversals"][&bought_rrn].as_u64(),
        Some(1),
        "one reversal at the bank"
    );
}

// Proves a reversal naming a purchase not sent yet waits for it (here 0.5 s, on another
// connection) and then reverses it; and one pipelined behind a purchase that ends declined
// is answered 00 with nothing sent to the bank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversal_waits_for_unseen_and_declined_needs_nothing() {
    let (world, sw, mut c) = world_with_latency("hold_unseen", 100).await;
    let mut other = world.client(&sw).await;
    let stan = next_stan();
    let buy = c.purchase(&stan, 1000, VISA, &order_ref("UNSEEN", &stan));
    let void = c.reversal(&next_stan(), &buy);
    c.send(&void).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bought = other.call(&buy).await;
    assert_eq!(rc(&bought), "00", "the late purchase is approved");
    let (voided, _) = c.recv_stan(&stan_of(&void)).await;
    assert_eq!(rc(&voided), "00", "the waiting reversal is applied");
    let bought_rrn = rrn_of(&bought).expect("DE37");
    world.banks[0]
        .wait_record("the reversal at the bank", Duration::from_secs(30), |r| {
            r["reversals"][&bought_rrn].as_u64() == Some(1)
        })
        .await;

    let stan = next_stan();
    let declined = c.purchase(&stan, 1005, VISA, &order_ref("HOLDDECL", &stan));
    let void = c.reversal(&next_stan(), &declined);
    let (refused, voided) = pipelined(&mut c, &declined, &void).await;
    assert_eq!(rc(&refused), "05", "the bank declines");
    assert_eq!(rc(&voided), "00", "nothing to undo");
    assert_eq!(rrn_of(&voided), None, "nothing recorded for it");
    let declined_rrn = rrn_of(&refused).expect("the decline is recorded");
    let again = c.call(&as_repeat(&void)).await;
    assert_eq!(answer_key(&again), answer_key(&voided), "0401 repeat");
    let rec = world.banks[0].record().await;
    assert!(
        rec["reversals"][&declined_rrn].is_null(),
        "no reversal of a declined purchase reaches the bank: {}",
        rec["reversals"]
    );
}
