//! PostgreSQL stopped under a running switch. In a test binary of its own: it stops the
//! PostgreSQL server every test of the run shares (a `PgOutage` guard restarts it even if
//! the test panics).

use std::time::Duration;

use system_tests::PgOutage;
use system_tests::switchyard::{
    World, WorldOptions, answer_key, count_mti, next_stan, order_ref, rc, requests_for,
};

const VISA: &str = "4111111111111111";

// Proves that with PostgreSQL stopped a purchase is answered 96 and nothing reaches the
// bank, the switch keeps serving (0800 echo still 00), and once PostgreSQL is back the same
// request, retransmitted, and a new one are processed normally with one bank request each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_answers_96_then_recovers() {
    let world = World::new("pg_outage", WorldOptions::default());
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let before = count_mti(&world.banks[0].record().await, "0200");

    let outage = tokio::task::spawn_blocking(PgOutage::begin)
        .await
        .expect("stopping PostgreSQL");

    let stan = next_stan();
    let req = c.purchase(&stan, 1000, VISA, &order_ref("PGDOWN", &stan));
    let r = c.call(&req).await;
    assert_eq!(r.mti().as_str(), "0210");
    assert_eq!(rc(&r), "96", "purchase while PostgreSQL is down");
    assert!(c.mac_ok(&r));
    assert!(!r.has(38));
    assert_eq!(
        count_mti(&world.banks[0].record().await, "0200"),
        before,
        "nothing was forwarded to the bank during the outage"
    );
    // Network management needs no database.
    let echo = c.call(&c.network(&next_stan(), "301")).await;
    assert_eq!(rc(&echo), "00", "echo during the outage");
    assert!(
        sw.process.wait_timeout(Duration::ZERO).is_none(),
        "the switch survives the outage"
    );

    tokio::task::spawn_blocking(move || outage.end())
        .await
        .expect("starting PostgreSQL");

    // The same request, retransmitted until the switch has its database back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let r = c.call(&req).await;
        match rc(&r).as_str() {
            "00" => break r,
            "96" => {}
            other => panic!("retransmission after the outage: unexpected DE39 {other}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the switch did not recover within 30 s of PostgreSQL's return"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let key = answer_key(&answer);
    let rrn = key.0.clone().expect("DE37");
    let again = c.call(&req).await;
    assert_eq!(answer_key(&again), key, "now it is known, it is repeated");
    let rec = world.banks[0].record().await;
    assert_eq!(requests_for(&rec, &rrn), 1, "one bank request for it");
    assert_eq!(count_mti(&rec, "0200"), before + 1);

    let stan = next_stan();
    let r = c
        .call(&c.purchase(&stan, 1000, VISA, &order_ref("PGUP", &stan)))
        .await;
    assert_eq!(rc(&r), "00", "a new purchase after the outage");
}
