//! A PostgreSQL outage longer than the old outcome-retry budget (issue 11): every request
//! at the bank when the database went away ends answered with its real outcome after
//! recovery, or reversed and answered 91 from the record; none stays `authorising`. In a
//! test binary of its own: it stops the PostgreSQL server every test of the run shares (a
//! `PgOutage` guard restarts it even if the test panics).

use std::time::Duration;

use codec::OwnedMessage;
use system_tests::switchyard::{Client, World, WorldOptions, count_mti, next_stan, order_ref, rc};
use system_tests::{PgOutage, pg_connect};

const VISA: &str = "4111111111111111";
/// Longer than the 10 s the switch used to retry an outcome before giving up.
const OUTAGE: Duration = Duration::from_secs(13);

fn purchase(c: &Client, tag: &str) -> OwnedMessage {
    let stan = next_stan();
    c.purchase(&stan, 1000, VISA, &order_ref(tag, &stan))
}

fn stan_of(m: &OwnedMessage) -> String {
    String::from_utf8(m.fields[&11].clone()).expect("ASCII STAN")
}

// Proves both ends of a long outage: instance 1 (outcome wait 60 s, the default) answers
// its purchase with the bank's real outcome once PostgreSQL is back; instance 2 (outcome
// wait 2 s) sends no answer at all, then its in-doubt sweep reverses the purchase at the
// bank, its retransmission is answered 91 with the same RRN, and no row is left
// `authorising`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_outage_ends_in_real_outcome_or_reversal() {
    let world = World::new(
        "pg_long",
        WorldOptions {
            bank_args: vec![vec!["--latency-ms".into(), "1500".into()], vec![]],
            bank_timeout_ms: 5_000,
            bank_overrides: vec![
                ("sign_on_timeout_ms".into(), "15000".into()),
                ("echo_timeout_ms".into(), "15000".into()),
            ],
            ..WorldOptions::default()
        },
    );
    let lease = ("SWITCHYARD__SWITCH__LEASE_MS", "3000");
    let patient = world.start_switch_env(1, &[lease]);
    let hasty =
        world.start_switch_env(2, &[lease, ("SWITCHYARD__SWITCH__OUTCOME_WAIT_MS", "2000")]);
    world.wait_links_ready(&patient).await;
    world.wait_links_ready(&hasty).await;
    let mut a = world.client(&patient).await;
    let mut b = world.client(&hasty).await;
    let before = count_mti(&world.banks[0].record().await, "0200");

    let (pa, pb) = (purchase(&a, "LONGA"), purchase(&b, "LONGB"));
    a.send(&pa).await;
    b.send(&pb).await;
    world.banks[0]
        .wait_record("both purchases at the bank", Duration::from_secs(30), |r| {
            count_mti(r, "0200") >= before + 2
        })
        .await;
    let outage = tokio::task::spawn_blocking(PgOutage::begin)
        .await
        .expect("stopping PostgreSQL");
    tokio::time::sleep(OUTAGE).await;
    tokio::task::spawn_blocking(move || outage.end())
        .await
        .expect("starting PostgreSQL");

    let (answered, _) = a.recv_stan(&stan_of(&pa)).await;
    assert_eq!(rc(&answered), "00", "the real outcome, after recovery");
    assert!(
        b.try_recv(Duration::from_secs(2)).await.is_none(),
        "no guess is answered for an outcome that could not be recorded"
    );

    // The sweep reverses it once no request path can still be resolving it (bank timeout
    // + outcome wait + margin after it was recorded); the merchant retransmits meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let reversed = loop {
        let r = b.call(&pb).await;
        if rc(&r) == "91" {
            break r;
        }
        assert_eq!(rc(&r), "94", "in flight until the sweep: {r:?}");
        assert!(tokio::time::Instant::now() < deadline, "never resolved");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let rrn = reversed
        .get_str(37)
        .expect("DE37 of the 91")
        .trim_end()
        .to_string();
    world.banks[0]
        .wait_record("the reversal at the bank", Duration::from_secs(30), |r| {
            r["reversals"][rrn.as_str()].as_u64().unwrap_or(0) >= 1
        })
        .await;
    let db = pg_connect(&world.db_url).await;
    let row = db
        .query_one(
            "SELECT count(*) FROM transactions WHERE state = 'authorising'",
            &[],
        )
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 0, "nothing left authorising");
}
