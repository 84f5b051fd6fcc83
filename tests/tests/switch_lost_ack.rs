//! Commits whose acknowledgement is lost (issue 11, defects 1 and 2), made on purpose by a
//! proxy between the switch and PostgreSQL that lets the journal's statement commit and then
//! cuts the connection before the answer reaches the switch. The record, not the lost
//! answer, must decide: no posting written twice, no `96` for a request that is recorded.

use std::time::Duration;

use system_tests::pgproxy::PgProxy;
use system_tests::switchyard::{
    Client, SwitchProc, World, WorldOptions, count_mti, next_stan, order_ref, rc, requests_for,
};
use system_tests::{pg_connect, pg_port};

const VISA: &str = "4111111111111111";

/// A world (bank-a answering after `latency_ms`) whose switch reaches PostgreSQL through
/// a fresh proxy.
async fn world_through_proxy(name: &str, latency_ms: u64) -> (World, SwitchProc, Client, PgProxy) {
    let world = World::new(name, WorldOptions::slow_bank_a(latency_ms));
    let proxy = PgProxy::start(pg_port()).await;
    let url = proxy.url(&world.db_url);
    let sw = world.start_switch_env(1, &[("SWITCHYARD__DATABASE__URL", url.as_str())]);
    world.wait_links_ready(&sw).await;
    let c = world.client(&sw).await;
    (world, sw, c, proxy)
}

/// How many ledger postings the transaction with `rrn` has.
async fn postings_of(world: &World, rrn: &str) -> i64 {
    let db = pg_connect(&world.db_url).await;
    db.query_one(
        "SELECT count(*) FROM ledger_postings p JOIN transactions t ON t.id = p.transaction_id \
         WHERE t.rrn = $1",
        &[&rrn],
    )
    .await
    .expect("postings")
    .get(0)
}

// Proves defect 1 is gone: the outcome of an approved purchase commits but its
// acknowledgement is lost; the switch writes it again, answers 00 from the record, and the
// purchase has its postings once (the same count as an undisturbed purchase), with the
// ledger check clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_commit_with_lost_ack_posts_once() {
    let (world, _sw, mut c, proxy) = world_through_proxy("ack_outcome", 500).await;
    let plain = c.call(&purchase(&c, "ACKPLAIN")).await;
    assert_eq!(rc(&plain), "00");
    let plain_postings = postings_of(&world, &rrn(&plain)).await;
    assert!(plain_postings > 0, "an approved purchase is posted");

    let before = count_mti(&world.banks[0].record().await, "0200");
    let m = purchase(&c, "ACKOUT");
    c.send(&m).await;
    // Recorded and at the bank: the next journal statement is this purchase's outcome.
    world.banks[0]
        .wait_record("the purchase at the bank", Duration::from_secs(30), |r| {
            count_mti(r, "0200") > before
        })
        .await;
    proxy.lose_next_journal_ack();
    let answer = c.recv().await;
    assert_eq!(proxy.cuts(), 1, "the outcome's acknowledgement was lost");
    assert_eq!(rc(&answer), "00", "answered from the record");
    assert_eq!(
        postings_of(&world, &rrn(&answer)).await,
        plain_postings,
        "posted once, not twice"
    );
    let out = world.admin(&["ledger", "check"]);
    assert!(
        !out.to_lowercase().contains("violation"),
        "ledger check: {out}"
    );
}

// Proves defect 2 is gone: a purchase's record commits but its acknowledgement is lost;
// the switch finds its own record, goes on to the bank, and answers 00 with that RRN, never
// 96; the bank saw it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_commit_with_lost_ack_is_not_96() {
    let (world, _sw, mut c, proxy) = world_through_proxy("ack_insert", 0).await;
    proxy.lose_next_journal_ack();
    let answer = c.call(&purchase(&c, "ACKINS")).await;
    assert_eq!(proxy.cuts(), 1, "the record's acknowledgement was lost");
    assert_eq!(rc(&answer), "00", "the recorded request goes on, not 96");
    let rec = world.banks[0].record().await;
    assert_eq!(requests_for(&rec, &rrn(&answer)), 1, "one bank request");
}

fn purchase(c: &Client, tag: &str) -> codec::OwnedMessage {
    let stan = next_stan();
    c.purchase(&stan, 1000, VISA, &order_ref(tag, &stan))
}

fn rrn(a: &codec::Message) -> String {
    a.get_str(37).expect("DE37").trim_end().to_string()
}
