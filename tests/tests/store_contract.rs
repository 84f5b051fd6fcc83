//! The store's contract, one set of test bodies run against PostgreSQL ([`PgStore`] with
//! its journal) and against memory ([`MemStore`], the simulation's store), so that the
//! simulation cannot rely on a guarantee the real store does not give.

use std::sync::Arc;

use codec::Mti;
use switch::checks::{Kind, Rc};
use switch::clock::SystemClock;
use switch::ids::rrn_of;
use switch::lifecycle::{self, Verdict};
use switch::mem::MemStore;
use switch::metrics::Metrics;
use switch::store::{
    BankAdvice, Journal, JournalSettings, NewTxn, OriginalRef, OutcomeRecord, PgStore, RequestRef,
    State, Store,
};

const MERCHANT: &str = "MCONTRACT";
const TERMINAL: &str = "TERM0001";
const DE7: &str = "0301120000";

/// A PostgreSQL store over a fresh, migrated database, recording through its journal.
async fn postgres(name: &str) -> Arc<dyn Store> {
    let url = system_tests::fresh_database(name);
    switch::db::migrate(&url).await.expect("migrations");
    postgres_at(&url)
}

/// A PostgreSQL store over the migrated database at `url`, recording through its journal.
fn postgres_at(url: &str) -> Arc<dyn Store> {
    let url = url.to_string();
    let pool = switch::db::pool(&url, 4).expect("pool");
    let settings = JournalSettings {
        url,
        batch_max: 16,
        writers: 1,
        queue_max: 64,
        commit_interval_us: 0,
        cutover_hours: 0,
    };
    let (journal, _task) = Journal::start(settings, Arc::new(Metrics::new()));
    Arc::new(PgStore::new(pool, 0).with_journal(journal))
}

/// Both stores: the same body runs on each.
async fn stores(name: &str) -> [(&'static str, Arc<dyn Store>); 2] {
    [
        ("memory", Arc::new(MemStore::new(Arc::new(SystemClock)))),
        ("postgres", postgres(name).await),
    ]
}

/// A purchase of `amount_minor` at bank-a, recorded waiting for its outcome.
fn purchase(id: i64, stan: &str, order: &str, amount_minor: i64) -> NewTxn {
    NewTxn {
        id,
        instance_id: 1,
        merchant_id: MERCHANT.into(),
        terminal_id: TERMINAL.into(),
        stan: stan.into(),
        transmitted_at: DE7.into(),
        mti: "0200".into(),
        kind: Kind::Purchase,
        processing_code: "000000".into(),
        amount_minor,
        currency: 840,
        order_ref: Some(order.into()),
        pan_hash: None,
        pan_last4: Some("0004".into()),
        card_enc: None,
        rrn: rrn_of(id),
        bank_id: Some("bank-a".into()),
        bank_stan: Some(stan.into()),
        bank_transmitted_at: Some(DE7.into()),
        original_id: None,
        state: State::Authorising,
        response_code: None,
        reason: None,
        refund_reason: None,
        content: None,
    }
}

fn key(stan: &str) -> RequestRef<'_> {
    RequestRef {
        merchant_id: MERCHANT,
        terminal_id: TERMINAL,
        stan,
        transmitted_at: DE7,
        mti: "0200",
    }
}

fn outcome(id: i64, state: State, rc: &str) -> OutcomeRecord {
    OutcomeRecord {
        id,
        kind: Kind::Purchase,
        state,
        response_code: rc.into(),
        auth_code: None,
        reversal: None,
    }
}

/// Records an approved purchase; its id.
async fn approved(store: &dyn Store, stan: &str, order: &str, amount: i64) -> i64 {
    let id = store.id_block().await.expect("ids");
    assert!(
        store
            .insert(Arc::new(purchase(id, stan, order, amount)))
            .await
            .expect("insert")
    );
    assert!(
        store
            .record_outcome(outcome(id, State::Approved, "00"))
            .await
            .expect("outcome"),
        "the approval settles the request"
    );
    id
}

async fn sound(name: &str, store: &dyn Store) {
    let v = store.ledger_violations().await.expect("ledger");
    assert!(v.is_empty(), "{name}: ledger {v:?}");
}

// Proves a request is recorded once per key and a live order reference once, an outcome
// settles only a request still waiting (written again after a lost acknowledgement it
// changes nothing), and the record answers a retransmission.
#[tokio::test]
async fn a_request_is_recorded_once_and_settled_once() {
    for (name, store) in stores("contract_once").await {
        let id = store.id_block().await.expect("ids");
        let t = purchase(id, "000001", "ORDER-1", 1_000);
        assert!(
            store.insert(Arc::new(t.clone())).await.unwrap(),
            "{name}: first"
        );
        assert!(
            !store.insert(Arc::new(t)).await.unwrap(),
            "{name}: same key"
        );
        let other = purchase(id + 1, "000002", "ORDER-1", 1_000);
        assert!(
            !store.insert(Arc::new(other)).await.unwrap(),
            "{name}: live order"
        );
        let rec = store
            .recorded(&key("000001"))
            .await
            .unwrap()
            .expect("recorded");
        assert_eq!(
            (rec.state, rec.answer()),
            (State::Authorising, None),
            "{name}"
        );
        store
            .record_outcome(outcome(id, State::Approved, "00"))
            .await
            .unwrap();
        store
            .record_outcome(outcome(id, State::Declined, "51"))
            .await
            .unwrap();
        let rec = store
            .recorded(&key("000001"))
            .await
            .unwrap()
            .expect("recorded");
        let answer = rec.answer().expect("an answer");
        assert_eq!(
            (answer.rc, answer.rrn),
            (Rc::APPROVED, Some(rrn_of(id))),
            "{name}"
        );
        assert!(
            store.order_ref_live(MERCHANT, "ORDER-1").await.unwrap(),
            "{name}"
        );
        sound(name, &*store).await;
    }
}

// Proves a declined purchase frees its order reference for a new request.
#[tokio::test]
async fn a_declined_order_is_free_again() {
    for (name, store) in stores("contract_declined").await {
        let id = store.id_block().await.unwrap();
        store
            .insert(Arc::new(purchase(id, "000001", "ORDER-2", 500)))
            .await
            .unwrap();
        store
            .record_outcome(outcome(id, State::Declined, "51"))
            .await
            .unwrap();
        assert!(
            !store.order_ref_live(MERCHANT, "ORDER-2").await.unwrap(),
            "{name}"
        );
        let again = purchase(id + 1, "000002", "ORDER-2", 500);
        assert!(
            store.insert(Arc::new(again)).await.unwrap(),
            "{name}: a new request for the order"
        );
    }
}

// Proves recovery reverses what was left waiting: the row is reversing (91) with a
// reversal to send, claimed once under its lease; the bank's acknowledgement makes it
// reversed and notifies the merchant, whose 0630 delivers the notification.
#[tokio::test]
async fn recovery_reverses_and_notifies() {
    for (name, store) in stores("contract_recovery").await {
        let id = store.id_block().await.unwrap();
        store
            .insert(Arc::new(purchase(id, "000001", "ORDER-3", 700)))
            .await
            .unwrap();
        assert_eq!(store.recover(1).await.unwrap(), 1, "{name}");
        let rec = store.recorded(&key("000001")).await.unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.response_code.as_deref()),
            (State::Reversing, Some("91")),
            "{name}"
        );
        let due = store.claim_forwards("bank-a", 10, 60_000).await.unwrap();
        assert_eq!(due.len(), 1, "{name}: one reversal");
        assert!(!due[0].advice && due[0].rrn == rrn_of(id), "{name}");
        assert!(
            store
                .claim_forwards("bank-a", 10, 60_000)
                .await
                .unwrap()
                .is_empty(),
            "{name}: leased"
        );
        store.reversal_answered(due[0].id, "00").await.unwrap();
        let rec = store.recorded(&key("000001")).await.unwrap().unwrap();
        assert_eq!(rec.state, State::Reversed, "{name}");
        assert_eq!(
            store.notification_backlog().await.unwrap().pending,
            1,
            "{name}"
        );
        let notes = store
            .claim_notifications(&[MERCHANT.to_string()], 10, DE7)
            .await
            .unwrap();
        assert_eq!(notes.len(), 1, "{name}");
        assert_eq!(notes[0].event, "TRANSACTION_REVERSED", "{name}");
        let n = &notes[0];
        assert!(
            store
                .notification_answered(MERCHANT, &n.stan, &n.transmitted_at)
                .await
                .unwrap(),
            "{name}"
        );
        assert_eq!(
            store.notification_backlog().await.unwrap().pending,
            0,
            "{name}"
        );
        sound(name, &*store).await;
    }
}

// Proves a request is settled once whichever comes first, the bank's approval or
// recovery's reversal: the second changes nothing and says so (the switch then answers
// from the record), and the ledger posts only what the first settled.
#[tokio::test]
async fn approval_and_recovery_settle_a_request_once() {
    for (name, store) in stores("contract_settle_once").await {
        let id = store.id_block().await.unwrap();
        store
            .insert(Arc::new(purchase(id, "000001", "ORDER-5", 700)))
            .await
            .unwrap();
        assert_eq!(store.recover(1).await.unwrap(), 1, "{name}: reversed");
        assert!(
            !store
                .record_outcome(outcome(id, State::Approved, "00"))
                .await
                .unwrap(),
            "{name}: the approval settled nothing"
        );
        let rec = store.recorded(&key("000001")).await.unwrap().unwrap();
        assert_eq!(
            (rec.state, rec.response_code.as_deref()),
            (State::Reversing, Some("91")),
            "{name}: recovery came first"
        );
        sound(name, &*store).await;

        let id = approved(&*store, "000002", "ORDER-6", 800).await;
        assert!(
            !store
                .record_outcome(outcome(id, State::Approved, "00"))
                .await
                .unwrap(),
            "{name}: written again, it settles nothing more"
        );
        assert_eq!(
            store.recover(1).await.unwrap(),
            0,
            "{name}: nothing in doubt"
        );
        let rec = store.recorded(&key("000002")).await.unwrap().unwrap();
        let answer = rec.answer().expect("an answer");
        assert_eq!(
            (rec.state, answer.rc, answer.rrn),
            (State::Approved, Rc::APPROVED, Some(rrn_of(id))),
            "{name}: the approval came first"
        );
        sound(name, &*store).await;
    }
}

// Proves recovery that meets an approval still committing waits for it and then leaves
// it standing: a settlement's key decides which came first, not a snapshot taken before
// the approval committed (migrations/V16).
#[tokio::test]
async fn recovery_waits_for_an_approval_still_committing() {
    let url = system_tests::fresh_database("contract_settle_race");
    switch::db::migrate(&url).await.expect("migrations");
    let store = postgres_at(&url);
    let id = store.id_block().await.unwrap();
    store
        .insert(Arc::new(purchase(id, "000001", "ORDER-7", 900)))
        .await
        .unwrap();
    let (mut approver, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    // The journal's approval, caught between its statement and its commit.
    let open = approver.transaction().await.unwrap();
    open.batch_execute(&format!(
        "INSERT INTO settlements (transaction_id, state, response_code) VALUES ({id}, 'approved', '00');
         DELETE FROM in_doubt WHERE transaction_id = {id}"
    ))
    .await
    .unwrap();
    let recovering = tokio::spawn({
        let store = store.clone();
        async move { store.recover(1).await }
    });
    let (watch, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    for _ in 0..3_000 {
        let waiting: i64 = watch
            .query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[])
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(!recovering.is_finished(), "recovery did not wait");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    open.commit().await.unwrap();
    assert_eq!(recovering.await.unwrap().unwrap(), 0, "nothing reversed");
    let rec = store.recorded(&key("000001")).await.unwrap().unwrap();
    assert_eq!(rec.state, State::Approved);
}

// Proves a refund recorded under the payment's lock reserves its amount, the bank's
// approval moves it to refunded once, and settling it again (a write repeated after its
// acknowledgement was lost) changes nothing.
#[tokio::test]
async fn a_refund_settles_once() {
    for (name, store) in stores("contract_refund").await {
        let id = approved(&*store, "000001", "ORDER-4", 1_000).await;
        let named = OriginalRef {
            mti: "0200".into(),
            stan: "000001".into(),
            transmitted_at: DE7.into(),
        };
        let lock = store
            .lock_payment(MERCHANT, TERMINAL, &named)
            .await
            .unwrap()
            .expect("found");
        assert_eq!(lock.root().id, id, "{name}");
        let change = lifecycle::refund_reserved(&lock.root().payment(), 400);
        let refund_id = store.id_block().await.unwrap();
        let refund = NewTxn {
            kind: Kind::Refund,
            processing_code: "200000".into(),
            original_id: Some(id),
            order_ref: None,
            ..purchase(refund_id, "000002", "-", 400)
        };
        assert!(lock.record(refund, change).await.unwrap(), "{name}");
        let root = store
            .payment_of(MERCHANT, TERMINAL, &named)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(root.refund_reserved_minor, 400, "{name}");
        let approved = Verdict {
            state: State::Approved,
            rc: Rc::APPROVED,
        };
        store
            .settle_refund(refund_id, approved, None)
            .await
            .unwrap();
        store
            .settle_refund(refund_id, approved, None)
            .await
            .unwrap();
        let root = store
            .payment_of(MERCHANT, TERMINAL, &named)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (root.refunded_minor, root.refund_reserved_minor),
            (400, 0),
            "{name}"
        );
        sound(name, &*store).await;
    }
}

// Proves a bank's reversal advice applies once: the purchase is reversed with its
// postings undone, and the same advice again is a duplicate that changes nothing.
#[tokio::test]
async fn a_bank_advice_applies_once() {
    for (name, store) in stores("contract_advice").await {
        let id = approved(&*store, "000001", "ORDER-5", 900).await;
        let advice = BankAdvice {
            bank_id: "bank-a".into(),
            mti: Mti::from_digits(*b"0420").unwrap(),
            stan: "123456".into(),
            transmitted_at: DE7.into(),
            rrn: Some(rrn_of(id)),
        };
        use switch::advices::AdviceEffect;
        assert_eq!(
            store.apply_bank_advice(&advice).await.unwrap(),
            AdviceEffect::Reversed,
            "{name}"
        );
        assert_eq!(
            store.apply_bank_advice(&advice).await.unwrap(),
            AdviceEffect::Duplicate,
            "{name}"
        );
        let rec = store.recorded(&key("000001")).await.unwrap().unwrap();
        assert_eq!(rec.state, State::Reversed, "{name}");
        sound(name, &*store).await;
    }
}

/// Every join of the plan under `node`, as (join type, outer node type, inner node type).
fn joins(node: &serde_json::Value, out: &mut Vec<(String, String, String)>) {
    let kind = |n: &serde_json::Value| n["Node Type"].as_str().unwrap_or("").to_string();
    let children = node["Plans"].as_array().cloned().unwrap_or_default();
    if matches!(
        kind(node).as_str(),
        "Nested Loop" | "Hash Join" | "Merge Join"
    ) {
        assert_eq!(children.len(), 2, "a join has two inputs: {node}");
        out.push((kind(node), kind(&children[0]), kind(&children[1])));
    }
    for child in &children {
        joins(child, out);
    }
}

// Proves the journal's batch statement costs each record a key lookup, whatever the batch
// size: in the generic plan of every form a writer commits with, no join rescans the batch's arrays
// (a Function Scan as a nested loop's inner side costs batch x batch rows; measured at
// 5,000 purchases/s on a slow machine, it grew commits to 771 records and 106 ms each
// and never recovered) and no table is scanned whole.
#[tokio::test]
async fn journal_batch_plan_reaches_each_row_by_key() {
    let url = system_tests::fresh_database("batch_plan");
    switch::db::migrate(&url).await.expect("migrations");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let conn = tokio::spawn(conn);
    let plans = switch::store::explain_batch(&client)
        .await
        .expect("explain");
    assert_eq!(plans.len(), 8, "four forms, fast and safe");
    for plan in &plans {
        let root = &plan[0]["Plan"];
        let text = plan.to_string();
        assert!(
            !text.contains("\"Seq Scan\""),
            "a table scanned whole: {text}"
        );
        let mut found = Vec::new();
        joins(root, &mut found);
        assert!(
            found.iter().any(|(_, outer, _)| outer == "Function Scan"),
            "the outcomes' join is driven by the batch's arrays: {found:?}"
        );
        for (join, outer, inner) in &found {
            assert!(
                !(join == "Nested Loop" && inner == "Function Scan"),
                "a nested loop rescans the batch for each {outer} row: {text}"
            );
        }
    }
    drop(client);
    conn.await.expect("connection task").expect("connection");
}
