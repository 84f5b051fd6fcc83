//! Store and forward to banks through a real switch: completions are advices, answered to
//! the merchant once recorded and delivered to the bank whenever it can take them.

use std::time::Duration;

use system_tests::switchyard::{BankSim, World, WorldOptions, count_mti, next_stan, rc};

// Proves a completion made while its bank is down is answered 00 at once, stays queued,
// and reaches the bank (0220 or its 0221 repeat) when the bank is back; the payment is
// captured throughout and the ledger stays sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_advice_waits_for_the_bank() {
    let opts = WorldOptions {
        bank_timeout_ms: 500,
        ..Default::default()
    };
    let mut world = World::new("saf_completion", opts);
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;

    let stan = next_stan();
    let hold = c.preauth(&stan, 5000, "4111111111111111", &format!("SAF-{stan}"));
    let r = c.call(&hold).await;
    assert_eq!(rc(&r), "00", "pre-authorisation held");

    // The bank goes away: its link drops and no new one can be made.
    let listen = world.banks[0].listen;
    let old = world.banks.remove(0);
    drop(old);
    let capture = c.completion(&next_stan(), &hold, 4000);
    let r = c.call(&capture).await;
    assert_eq!(
        rc(&r),
        "00",
        "a completion is answered once recorded, bank or no bank"
    );
    assert!(r.has(38), "with the switch's own approval code");
    let rrn = r.get_str(37).expect("DE37").into_owned();
    let repeat = c.call(&capture).await;
    assert_eq!(
        repeat.get_str(37).as_deref(),
        Some(rrn.as_str()),
        "a retransmission gets the same answer"
    );

    // The bank comes back on the same address; the queued advice reaches it once.
    let addr = listen.to_string();
    let bank = BankSim::start_on(&addr, &[]);
    let record = bank
        .wait_record("the completion advice", Duration::from_secs(60), |r| {
            count_mti(r, "0220") + count_mti(r, "0221") >= 1
        })
        .await;
    let delivered: Vec<_> = record["approved"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["rrn"] == rrn.as_str())
        .collect();
    assert_eq!(
        delivered.len(),
        1,
        "the bank took the completion once: {record}"
    );
    assert_eq!(delivered[0]["amount_minor"], 4000);

    let client = system_tests::pg_connect(&world.db_url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = client
            .query_one(
                "SELECT r.state FROM reversals r JOIN transactions t ON t.id = r.transaction_id \
                 WHERE t.rrn = $1 AND r.kind = 'advice'",
                &[&rrn],
            )
            .await
            .unwrap();
        if row.get::<_, String>(0) == "acknowledged" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the advice was never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cfg = world.config.to_str().unwrap().to_string();
    system_tests::switchyard::run_to_end(&["ledger", "check", "--config", &cfg]);
    world.banks.insert(0, bank);
}

// Proves reversal expiry (`reversal_max_age_ms`): a purchase the switch timed out (91) is
// approved at a bank that never answers reversals; the switch repeats the reversal until it
// is 3 s old, then gives it up: the queue row is `expired`, the transaction stays
// `reversing` (status UNKNOWN for the merchant), and the switch logs that an operator must
// settle it with the bank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversal_expires_unacknowledged() {
    let opts = WorldOptions {
        bank_args: vec![
            // Amounts ending 77 are answered after 1.5 s, past the switch's timeout.
            vec![
                "--late-ms".into(),
                "1500".into(),
                "--ignore-reversals".into(),
            ],
            vec![],
        ],
        bank_timeout_ms: 800,
        bank_overrides: vec![("reversal_max_age_ms".into(), "3000".into())],
        ..Default::default()
    };
    let world = World::new("saf_expiry", opts);
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let stan = next_stan();
    let buy = c.purchase(&stan, 1077, "4111111111111111", &format!("EXP-{stan}"));
    let r = c.call(&buy).await;
    assert_eq!(rc(&r), "91", "the bank answers after the switch's timeout");
    let rrn = r.get_str(37).expect("DE37").trim_end().to_string();

    system_tests::wait_for_line(
        sw.process.stderr(),
        |l| l.contains("reversal expired unacknowledged") && l.contains(rrn.as_str()),
        Duration::from_secs(60),
    )
    .expect("the expiry is logged with the RRN");
    let db = system_tests::pg_connect(&world.db_url).await;
    let row = db
        .query_one(
            "SELECT t.state, r.state, r.attempts FROM transactions t \
             JOIN reversals r ON r.transaction_id = t.id WHERE t.rrn = $1",
            &[&rrn],
        )
        .await
        .expect("the purchase and its reversal");
    let (txn, queued, attempts): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(queued, "expired", "the reversal is given up");
    assert_eq!(txn, "reversing", "the outcome stays unknown");
    assert!(attempts >= 1, "it was sent before it expired");
    let status = c.call(&c.status_by_ref(&next_stan(), &buy)).await;
    let de48 = status.get_str(48).unwrap_or_default().into_owned();
    assert!(de48.contains("ST007UNKNOWN"), "status UNKNOWN: {de48}");
}
