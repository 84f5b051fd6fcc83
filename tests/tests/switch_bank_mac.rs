//! Black-box checks of the bank-side message MAC: the switch and the bank simulator sign
//! everything they send and check everything they receive, over both bank dialects and
//! both algorithms; a tampered answer is dropped, counted in
//! `switchyard_bank_mac_failures_total{bank}`, and the link stays up.

use std::time::Duration;

use system_tests::office::admin_addr;
use system_tests::switchyard::{World, WorldOptions, http, next_stan, rc};

/// X9.19: K then K' (the ISO/IEC 9797-1 annex B key).
const X9_19_KEY: &str = "0123456789ABCDEFFEDCBA9876543210";
/// HMAC-SHA256: 32 bytes.
const HMAC_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const ADMIN: &str = "\n[admin]\naddr = \"127.0.0.1:0\"\n";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn toml_str(s: &str) -> String {
    format!("\"{s}\"")
}

/// bank-a: bank-bcd-v1 with X9.19; bank-b: bank-ebcdic-v1 with HMAC-SHA256; `extra_a`
/// are more simulator options for bank-a.
fn mac_world(name: &str, extra_a: &[&str]) -> World {
    let mut a = strings(&["--mac", "x9.19", "--mac-key-hex", X9_19_KEY]);
    a.extend(strings(extra_a));
    let b = strings(&[
        "--dialect",
        "bank-ebcdic-v1",
        "--mac",
        "hmac-sha256",
        "--mac-key-hex",
        HMAC_KEY,
    ]);
    let opts = WorldOptions {
        bank_args: vec![a, b],
        bank_timeout_ms: 1500,
        extra_config: ADMIN.into(),
        per_bank_overrides: vec![
            vec![
                ("mac".into(), toml_str("x9.19")),
                ("mac_key_hex".into(), toml_str(X9_19_KEY)),
            ],
            vec![
                ("dialect".into(), toml_str("bank-ebcdic-v1")),
                ("mac".into(), toml_str("hmac-sha256")),
                ("mac_key_hex".into(), toml_str(HMAC_KEY)),
            ],
        ],
        ..Default::default()
    };
    World::new(name, opts)
}

/// The switch's `switchyard_bank_mac_failures_total` for `bank` (None when absent).
async fn mac_failures(admin: std::net::SocketAddr, bank: &str) -> Option<u64> {
    let text = http(admin, "GET", "/metrics").await;
    let series = format!("switchyard_bank_mac_failures_total{{bank=\"{bank}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
}

// Proves signed messages flow end to end with both bank dialects and both algorithms:
// sign-on, echo and purchases are accepted by the simulators and the switch, with no MAC
// failure on either side (the counters exist at 0 from the start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_macs_accepted_with_both_dialects() {
    let world = mac_world("mac_good", &[]);
    let mut sw = world.start_switch(1);
    let admin = admin_addr(&mut sw);
    assert_eq!(mac_failures(admin, "bank-a").await, Some(0));
    assert_eq!(mac_failures(admin, "bank-b").await, Some(0));
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    for (i, pan) in ["4111111111111111", "5500000000000004"].iter().enumerate() {
        let stan = next_stan();
        let r = c
            .call(&c.purchase(&stan, 2500, pan, &format!("MAC-{stan}")))
            .await;
        assert_eq!(rc(&r), "00", "bank {i}");
        let rrn = r.get_str(37).unwrap().to_string();
        assert_eq!(world.banks[i].approved(&rrn).await.len(), 1, "bank {i}");
    }
    for (i, bank) in world.banks.iter().enumerate() {
        let record = bank.record().await;
        assert_eq!(record["mac_failures"], 0, "bank {i}: {record}");
    }
    assert_eq!(mac_failures(admin, "bank-a").await, Some(0));
    assert_eq!(mac_failures(admin, "bank-b").await, Some(0));
}

// Proves an answer whose MAC was broken after signing is dropped by the switch (the
// purchase ends as a timeout, not as the bank's approval), counted per bank, and the link
// survives: later purchases on it are approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_answer_dropped_and_counted() {
    let world = mac_world("mac_tamper", &["--tamper-mac-every", "3"]);
    let mut sw = world.start_switch(1);
    let admin = admin_addr(&mut sw);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        let stan = next_stan();
        let r = c
            .call(&c.purchase(&stan, 700, "4111111111111111", &format!("TAMPER-{stan}")))
            .await;
        codes.push(rc(&r));
    }
    let refused = codes.iter().filter(|c| *c != "00").count();
    assert!(refused >= 1, "some answer was tampered: {codes:?}");
    let first_refused = codes.iter().position(|c| c != "00").unwrap();
    assert!(
        codes[first_refused..].iter().any(|c| c == "00"),
        "the link still works after a tampered answer: {codes:?}"
    );
    // Every answer the simulator broke reached the switch and was counted there (the
    // counter is sampled, and reversals of the refused purchases may be tampered too).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tampered = world.banks[0].record().await["macs_tampered"]
            .as_u64()
            .unwrap();
        let counted = mac_failures(admin, "bank-a").await.unwrap();
        if tampered >= refused as u64 && counted == tampered {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "switch counted {counted} MAC failures, simulator tampered {tampered}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(mac_failures(admin, "bank-b").await, Some(0));
    assert_eq!(world.banks[0].record().await["mac_failures"], 0);
    let stan = next_stan();
    let r = c
        .call(&c.purchase(&stan, 100, "5500000000000004", &format!("AFTER-{stan}")))
        .await;
    assert_eq!(rc(&r), "00");
}
