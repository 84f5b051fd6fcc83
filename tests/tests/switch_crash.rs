//! A switch process killed with SIGKILL between forwarding a purchase and answering it,
//! then restarted; and a graceful SIGTERM with a request in flight.

use std::collections::HashSet;
use std::time::Duration;

use codec::OwnedMessage;
use system_tests::switchyard::{
    Client, World, WorldOptions, count_mti, next_stan, order_ref, rc, requests_for,
};

const VISA: &str = "4111111111111111";

/// A world whose bank-a answers everything (sign-on and echo too) after `latency_ms`; the
/// link's timeouts are stretched to match.
fn slow_world(name: &str, latency_ms: u64) -> World {
    World::new(name, WorldOptions::slow_bank_a(latency_ms))
}

/// Sends a purchase tagged `tag` and waits until bank-a has approved it (its answer still
/// on the way); the request and the RRN the bank approved.
async fn purchase_at_bank(world: &World, c: &mut Client, tag: &str) -> (OwnedMessage, String) {
    let before = world.banks[0].record().await;
    let known = approved_rrns(&before);
    let stan = next_stan();
    let req = c.purchase(&stan, 1234, VISA, &order_ref(tag, &stan));
    c.send(&req).await;
    let rec = world.banks[0]
        .wait_record(
            "the purchase received by the bank",
            Duration::from_secs(30),
            |r| count_mti(r, "0200") > count_mti(&before, "0200"),
        )
        .await;
    let new: Vec<String> = approved_rrns(&rec).difference(&known).cloned().collect();
    assert_eq!(new.len(), 1, "one new approval at the bank: {new:?}");
    (req, new[0].clone())
}

fn approved_rrns(record: &serde_json::Value) -> HashSet<String> {
    record["approved"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["rrn"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

// Proves that a switch killed with SIGKILL after the bank received a purchase and before it
// answered, once restarted with the same instance id, reverses that purchase at the bank
// (the simulator ends with its RRN reversed), and that the merchant's retransmission then
// gets a final 91 with the same RRN and never a second bank request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_forwarding_and_answering() {
    let world = slow_world("crash_kill", 4000);
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let before = world.banks[0].record().await;
    let (req, rrn) = purchase_at_bank(&world, &mut c, "CRASH").await;

    sw.process.signal("KILL");
    sw.process
        .wait_timeout(Duration::from_secs(30))
        .expect("the killed switch exits");
    assert!(
        c.try_recv(Duration::from_secs(10)).await.is_none(),
        "a killed switch sends no answer"
    );

    let sw = world.start_switch(1);
    world.banks[0]
        .wait_record(
            "the reversal of the interrupted purchase",
            Duration::from_secs(30),
            |r| r["reversals"][rrn.as_str()].as_u64().unwrap_or(0) >= 1,
        )
        .await;
    let rec = world.banks[0].record().await;
    let entry = rec["approved"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["rrn"] == rrn.as_str()).cloned())
        .expect("the approval is still in the record");
    assert_eq!(entry["reversed"], true, "the approval is marked reversed");

    let mut c = world.client(&sw).await;
    let r = c.call(&req).await;
    assert_eq!(r.mti().as_str(), "0210");
    assert_eq!(
        rc(&r),
        "91",
        "the retransmission of an outcome-unknown, reversed purchase gets a final 91"
    );
    assert_eq!(r.get_str(37).as_deref(), Some(rrn.as_str()), "same RRN");
    assert!(!r.has(38));
    assert!(c.mac_ok(&r));
    let rec = world.banks[0].record().await;
    assert_eq!(requests_for(&rec, &rrn), 1, "never a second bank request");
    assert_eq!(
        count_mti(&rec, "0200"),
        count_mti(&before, "0200") + 1,
        "one 0200 in all since the purchase"
    );
}

// Proves a graceful shutdown (SIGTERM) with a purchase in flight still answers the merchant
// before its connection closes, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_in_flight_then_exits_0() {
    let world = slow_world("crash_term", 1000);
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let before = count_mti(&world.banks[0].record().await, "0200");

    let stan = next_stan();
    let req = c.purchase(&stan, 1000, VISA, &order_ref("TERM", &stan));
    c.send(&req).await;
    world.banks[0]
        .wait_record(
            "the purchase received by the bank",
            Duration::from_secs(30),
            |r| count_mti(r, "0200") > before,
        )
        .await;
    sw.process.signal("TERM");
    let r = c
        .try_recv(Duration::from_secs(30))
        .await
        .expect("the in-flight purchase is answered before the connection closes");
    assert_eq!(r.get_str(11).as_deref(), Some(stan.as_str()));
    assert_eq!(rc(&r), "00");
    assert!(c.mac_ok(&r));
    assert!(
        c.closed(Duration::from_secs(30)).await,
        "the connection closes after the answer"
    );
    let status = sw
        .process
        .wait_timeout(Duration::from_secs(30))
        .expect("the switch exits after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

// Proves an instance that never comes back is taken over: two instances share the
// database (leases of 3 s), instance 2 is killed with SIGKILL while its purchase is at the
// bank and never restarted; instance 1 reverses that purchase at the bank within a few
// lease times, and a retransmission to instance 1 gets the final 91 with the same RRN and
// no second bank request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_that_never_returns_is_taken_over() {
    let world = slow_world("crash_lease", 4000);
    let lease = [("SWITCHYARD__SWITCH__LEASE_MS", "3000")];
    let survivor = world.start_switch_env(1, &lease);
    let mut doomed = world.start_switch_env(2, &lease);
    world.wait_links_ready(&survivor).await;
    world.wait_links_ready(&doomed).await;
    let mut c = world.client(&doomed).await;
    let (req, rrn) = purchase_at_bank(&world, &mut c, "LEASE").await;

    doomed.process.signal("KILL");
    doomed
        .process
        .wait_timeout(Duration::from_secs(30))
        .expect("the killed switch exits");
    let killed = std::time::Instant::now();
    world.banks[0]
        .wait_record(
            "the survivor's reversal of the dead instance's purchase",
            Duration::from_secs(30),
            |r| r["reversals"][rrn.as_str()].as_u64().unwrap_or(0) >= 1,
        )
        .await;
    // Lease expiry (3 s) plus at most one renewal interval (1 s); the rest is slack for a
    // loaded machine.
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "taken over within a few lease times, not {:?}",
        killed.elapsed()
    );

    let mut c = world.client(&survivor).await;
    let r = c.call(&req).await;
    assert_eq!(rc(&r), "91", "the retransmission gets the final 91");
    assert_eq!(r.get_str(37).as_deref(), Some(rrn.as_str()), "same RRN");
    let rec = world.banks[0].record().await;
    assert_eq!(requests_for(&rec, &rrn), 1, "never a second bank request");
}

// Proves a process whose lease another instance has taken over stops at once (exit
// status 75) rather than answering for transactions now being reversed: the lease row is
// handed to another incarnation behind the running switch's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_whose_lease_was_taken_over_stops() {
    let world = World::new("crash_lease_lost", WorldOptions::default());
    let mut sw = world.start_switch_env(1, &[("SWITCHYARD__SWITCH__LEASE_MS", "1500")]);
    world.wait_links_ready(&sw).await;
    let db = system_tests::pg_connect(&world.db_url).await;
    let taken = db
        .execute(
            "UPDATE instance_leases SET incarnation = incarnation + 1 WHERE instance_id = 1",
            &[],
        )
        .await
        .expect("hand the lease over");
    assert_eq!(taken, 1, "the running switch holds a lease");
    let status = sw
        .process
        .wait_timeout(Duration::from_secs(30))
        .expect("the switch stops once it finds its lease gone");
    assert_eq!(status.code(), Some(75), "exit status of a lost lease");
}
