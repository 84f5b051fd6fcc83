//! PostgreSQL stopped under a running switch. In a test binary of its own: it stops the
//! PostgreSQL server every test of the run shares (a `PgOutage` guard restarts it even if
//! the test panics).

use std::time::Duration;

use system_tests::PgOutage;
use system_tests::switchyard::{
    World, WorldOptions, answer_key, as_repeat, count_mti, next_stan, order_ref, rc, requests_for,
};

const VISA: &str = "4111111111111111";

/// Waits until the answer to the request with DE11 `stan` is copied to Redis.
async fn wait_for_copy(world: &World, stan: &str) {
    let client = redis::Client::open(system_tests::redis_url()).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let pattern = format!("{}idem:*|{stan}|*", world.redis_prefix);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut con)
            .await
            .expect("keys");
        if let Some(k) = keys.first() {
            let v: String = redis::cmd("GET")
                .arg(k)
                .query_async(&mut con)
                .await
                .expect("get");
            if v.starts_with("A|") {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "answer copied to Redis within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Proves that with PostgreSQL stopped a purchase is answered 96 and nothing reaches the
// bank, the switch keeps serving (0800 echo still 00), and once PostgreSQL is back the same
// request, retransmitted, and a new one are processed normally with one bank request each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_answers_96_then_recovers() {
    let world = World::new("pg_outage", WorldOptions::default());
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    // A purchase answered before the outage: its answer's copy reaches Redis.
    let stan = next_stan();
    let earlier = c.purchase(&stan, 1000, VISA, &order_ref("PGBEFORE", &stan));
    let earlier_answer = c.call(&earlier).await;
    assert_eq!(rc(&earlier_answer), "00");
    wait_for_copy(&world, &stan).await;
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
    // A retransmission of what was answered before is answered the same (from Redis).
    let again = c.call(&as_repeat(&earlier)).await;
    assert_eq!(
        answer_key(&again),
        answer_key(&earlier_answer),
        "a retransmission during the outage gets its answer"
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
