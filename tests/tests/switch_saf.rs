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
