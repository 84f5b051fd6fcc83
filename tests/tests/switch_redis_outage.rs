//! Redis down, not just flushed (issue 11): while the switch's Redis is unreachable,
//! idempotency falls back to PostgreSQL (retransmissions replayed, no second bank request)
//! and the limits follow `[redis] limits_on_outage` (`fail_open`: skipped; `fail_closed`:
//! new requests refused `91`, not recorded); after Redis comes back empty (a restart), a
//! retransmission is still answered from the record. Each test runs its own Redis server.

use std::time::Duration;

use codec::{Message, OwnedMessage};
use system_tests::PrivateRedis;
use system_tests::switchyard::{
    Client, SwitchProc, World, WorldOptions, answer_key, as_repeat, count_mti, next_stan,
    order_ref, rc, requests_for,
};

const VISA: &str = "4111111111111111";

/// A world whose merchant may send 1 request/s with a burst of 4 (the harness's link
/// check takes two), and a switch using
/// `redis` with `limits_on_outage = policy`.
async fn world_on(
    name: &str,
    redis: &PrivateRedis,
    policy: &str,
) -> (World, SwitchProc, Client, u64) {
    let world = World::new(
        name,
        WorldOptions {
            merchant_rate: 1,
            merchant_burst: 4,
            ..WorldOptions::default()
        },
    );
    let url = redis.url();
    let sw = world.start_switch_env(
        1,
        &[
            ("SWITCHYARD__REDIS__URL", url.as_str()),
            ("SWITCHYARD__REDIS__LIMITS_ON_OUTAGE", policy),
        ],
    );
    world.wait_links_ready(&sw).await;
    let c = world.client(&sw).await;
    let before = count_mti(&world.banks[0].record().await, "0200");
    (world, sw, c, before)
}

fn purchase(c: &Client, tag: &str) -> OwnedMessage {
    let stan = next_stan();
    c.purchase(&stan, 1000, VISA, &order_ref(tag, &stan))
}

fn rrn(a: &Message) -> String {
    a.get_str(37).expect("DE37").trim_end().to_string()
}

/// Asserts the bank saw `rrn` once and `purchases` 0200s since `before`.
async fn bank_saw(world: &World, before: u64, rrn: &str, purchases: u64, what: &str) {
    let rec = world.banks[0].record().await;
    assert_eq!(
        requests_for(&rec, rrn),
        1,
        "{what}: the bank saw {rrn} once"
    );
    assert_eq!(
        count_mti(&rec, "0200") - before,
        purchases,
        "{what}: 0200s at the bank"
    );
}

// Proves fail_open: with Redis killed, a retransmission is answered from PostgreSQL with
// no second bank request, new purchases go through unlimited (6 in a row at 1/s, burst 4,
// all approved), and after Redis restarts empty every retransmission is still replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fail_open_falls_back_to_postgres() {
    let mut redis = PrivateRedis::start();
    let (world, _sw, mut c, before) = world_on("redis_open", &redis, "fail_open").await;
    let first = purchase(&c, "ROPEN");
    let answered = c.call(&first).await;
    assert_eq!(rc(&answered), "00", "purchase with Redis up");

    redis.stop();
    let again = c.call(&as_repeat(&first)).await;
    assert_eq!(
        answer_key(&again),
        answer_key(&answered),
        "0201 during the outage"
    );
    bank_saw(
        &world,
        before,
        &rrn(&answered),
        1,
        "retransmission during the outage",
    )
    .await;
    let mut during = Vec::new();
    for _ in 0..6 {
        let m = purchase(&c, "ROPEN");
        let a = c.call(&m).await;
        assert_eq!(rc(&a), "00", "fail_open: no rate limit while Redis is down");
        during.push((m, a));
    }

    redis.resume();
    for (m, a) in std::iter::once((first, answered)).chain(during) {
        let again = c.call(&m).await;
        assert_eq!(
            answer_key(&again),
            answer_key(&a),
            "retransmission after the restart"
        );
    }
    bank_saw(&world, before, &rrn(&again), 7, "after the restart").await;
}

// Proves fail_closed: with Redis killed, a retransmission of a recorded purchase is still
// answered from PostgreSQL, a new purchase is refused 91 without DE37 and never reaches the
// bank, and once Redis is back its retransmission is processed afresh and approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fail_closed_refuses_new_requests() {
    let mut redis = PrivateRedis::start();
    let (world, _sw, mut c, before) = world_on("redis_closed", &redis, "fail_closed").await;
    let first = purchase(&c, "RCLOSED");
    let answered = c.call(&first).await;
    assert_eq!(rc(&answered), "00", "purchase with Redis up");

    redis.stop();
    let again = c.call(&first).await;
    assert_eq!(
        answer_key(&again),
        answer_key(&answered),
        "retransmission during the outage"
    );
    let refused_one = purchase(&c, "RCLOSED");
    let refused = c.call(&refused_one).await;
    assert_eq!(rc(&refused), "91", "fail_closed: a new request is refused");
    assert_eq!(refused.get_str(37), None, "the 91 is not recorded");
    bank_saw(&world, before, &rrn(&answered), 1, "during the outage").await;

    redis.resume();
    // The switch reconnects to Redis on its own; until it has, the retransmission may get
    // 91 again, which is what a merchant retrying sees.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let later = loop {
        let a = c.call(&as_repeat(&refused_one)).await;
        if rc(&a) != "91" {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never came back for the switch"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(rc(&later), "00", "processed afresh once Redis is back");
    bank_saw(&world, before, &rrn(&later), 2, "after the outage").await;
}
