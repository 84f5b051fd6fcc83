//! Black-box purchases through a real switch process, real bank simulators, real
//! PostgreSQL and Redis.

use std::time::Duration;

use system_tests::switchyard::{World, WorldOptions, next_stan};

// Proves the happy path and both declines: approval with DE37/DE38 and a valid MAC,
// 51 and 05 passed on, each reaching the bank exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_and_declines() {
    let world = World::new("approval", WorldOptions::default());
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;

    let stan = next_stan();
    let r = c
        .call(&c.purchase(&stan, 1000, "4111111111111111", "ORDER-A1"))
        .await;
    assert_eq!(r.mti().as_str(), "0210");
    assert_eq!(r.get_str(39).as_deref(), Some("00"));
    assert!(c.mac_ok(&r), "answer MAC verifies");
    assert_eq!(r.get_str(11).as_deref(), Some(stan.as_str()));
    assert!(r.has(38), "approval carries DE38");
    assert!(!r.has(2), "DE2 is never echoed");
    let rrn = r.get_str(37).expect("DE37").into_owned();
    assert_eq!(world.banks[0].approved(&rrn).await.len(), 1);

    let r = c
        .call(&c.purchase(&next_stan(), 1051, "4111111111111111", "ORDER-A2"))
        .await;
    assert_eq!(r.get_str(39).as_deref(), Some("51"));
    assert!(!r.has(38));
    let r = c
        .call(&c.purchase(&next_stan(), 1005, "5500000000000004", "ORDER-A3"))
        .await;
    assert_eq!(r.get_str(39).as_deref(), Some("05"));
    let _ = Duration::from_secs(0);
}
