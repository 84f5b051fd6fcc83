//! A misbehaving bank behind a real switch: whatever the bank does (drops the link
//! mid-flight, answers twice, sends garbage, answers late), nothing is charged twice,
//! every approval the merchant was not told of is reversed at the bank (checked against
//! the simulator's own record), and traffic to the other bank is unaffected.

use std::time::Duration;

use system_tests::switchyard::{World, WorldOptions, next_stan, rc};

/// Requests per fault scenario.
const REQUESTS: u64 = 12;

async fn scenario(name: &str, fault: &[&str], amount_ending: u64) {
    let opts = WorldOptions {
        bank_args: vec![fault.iter().map(|s| s.to_string()).collect(), vec![]],
        bank_timeout_ms: 800,
        ..Default::default()
    };
    let world = World::new(name, opts);
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;

    let mut answers = Vec::new();
    for i in 0..REQUESTS {
        let stan = next_stan();
        let amount = 1000 + i * 100 + amount_ending;
        let r = c
            .call(&c.purchase(&stan, amount, "4111111111111111", &format!("{name}-{stan}")))
            .await;
        let code = rc(&r);
        assert!(
            code == "00" || code == "91",
            "{name}: only approvals or 91 expected, got {code}"
        );
        answers.push((code, r.get_str(37).map(|s| s.into_owned())));
        // The other bank is not affected by this one's trouble.
        if i % 4 == 0 {
            let other = c
                .call(&c.purchase(
                    &next_stan(),
                    2000,
                    "5500000000000004",
                    &format!("{name}-B-{i}"),
                ))
                .await;
            assert_eq!(rc(&other), "00", "{name}: the other bank keeps approving");
        }
    }

    let bank = &world.banks[0];
    let record = bank
        .wait_record(
            &format!("{name}: every unknown outcome reversed"),
            Duration::from_secs(60),
            |r| {
                answers.iter().all(|(code, rrn)| {
                    let Some(rrn) = rrn else { return true };
                    let approved = r["approved"]
                        .as_array()
                        .and_then(|a| a.iter().find(|e| e["rrn"] == rrn.as_str()));
                    match (code.as_str(), approved) {
                        // Told 91: if the bank approved it, it must be reversed there.
                        ("91", Some(e)) => e["reversed"] == true,
                        _ => true,
                    }
                })
            },
        )
        .await;
    assert_eq!(
        record["requests_by_rrn_dupes"], 0,
        "{name}: no request reached the bank twice: {record}"
    );
    for (code, rrn) in &answers {
        // A 91 without DE37 was refused before anything was recorded or sent (the link
        // was down, reconnecting).
        let Some(rrn) = rrn.as_deref() else {
            assert_eq!(code, "91", "{name}: only a refusal lacks DE37");
            continue;
        };
        let entries: Vec<_> = record["approved"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["rrn"] == rrn)
            .collect();
        assert!(entries.len() <= 1, "{name}: {rrn} charged more than once");
        if code == "00" {
            assert_eq!(
                entries.len(),
                1,
                "{name}: an approval the merchant saw exists at the bank"
            );
            assert_eq!(
                entries[0]["reversed"], false,
                "{name}: an approval the merchant saw stands"
            );
        }
    }
    let cfg = world.config.to_str().expect("utf-8").to_string();
    system_tests::switchyard::run_to_end(&["ledger", "check", "--config", &cfg]);
}

// Proves a link dropped with requests in flight costs no double charge: in-flight
// requests are answered 91 and reversed, never resent as new charges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_drops_the_link_mid_flight() {
    scenario("fault_drop", &["--drop-after", "3"], 0).await;
}

// Proves a bank answering every request twice charges once and the duplicate is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_answers_twice() {
    scenario("fault_twice", &["--answer-twice"], 0).await;
}

// Proves garbage frames from the bank leave the link and the answers intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_sends_garbage() {
    scenario("fault_garbage", &["--garbage-every", "2"], 0).await;
}

// Proves late approvals (after the switch answered 91) end reversed at the bank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_answers_late() {
    scenario("fault_late", &["--late-ms", "1500"], 77).await;
}
