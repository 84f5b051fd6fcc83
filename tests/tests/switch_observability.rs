//! What operators see of a running switch: its /metrics pass `promtool check metrics`, with
//! labelled series present from the start, process and build metrics, and the security
//! counters moving; its logs carry no colour codes when written to a pipe, and say when a
//! merchant connection opens and closes and why, a reset being told apart from a framing
//! fault.
//!
//! Needs `promtool` (Debian package `prometheus`, installed by scripts/services.sh).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use codec::{MacKey, builtin};
use system_tests::switchyard::{SwitchProc, WAIT, World, WorldOptions, http, next_stan};
use system_tests::wait_for_line;
use tokio::io::AsyncWriteExt;

/// The value of the series `name{labels}` exactly as written in `text`, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Runs `promtool check metrics` on `text`; its verdict and findings.
fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not on PATH: install the Debian package `prometheus`");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

fn admin_world(name: &str) -> World {
    let extra = "\n[admin]\naddr = \"127.0.0.1:0\"\ntokens = [{ token = \"test-viewer-token-0123456789\", role = \"viewer\" }]\n";
    World::new(
        name,
        WorldOptions {
            extra_config: extra.to_string(),
            ..Default::default()
        },
    )
}

fn admin_addr(sw: &mut SwitchProc) -> SocketAddr {
    let ready = sw.process.stdout().seen().last().cloned().unwrap();
    let v: serde_json::Value = serde_json::from_str(&ready).unwrap();
    v["admin"].as_str().unwrap().parse().unwrap()
}

// Proves a running switch's /metrics pass `promtool check metrics`; that counters labelled
// by bank, rule and reason exist at zero before their first event, with build_info and the
// process metrics; that the PostgreSQL probe runs; and that a wrong merchant MAC and an
// admin request without a token are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_security_events() {
    let world = admin_world("obs_metrics");
    let mut sw = world.start_switch(1);
    let admin = admin_addr(&mut sw);

    let text = http(admin, "GET", "/metrics").await;
    let (ok, said) = promtool_check_metrics(&text);
    assert!(ok, "promtool check metrics failed:\n{said}\n{text}");
    for series in [
        r#"switchyard_bank_timeouts_total{bank="bank-a"}"#,
        r#"switchyard_bank_timeouts_total{bank="bank-b"}"#,
        r#"switchyard_bank_late_answers_total{link="bank-a.0"}"#,
        r#"switchyard_rate_limit_refusals_total{rule="merchant"}"#,
        r#"switchyard_rate_limit_refusals_total{rule="card"}"#,
        r#"switchyard_merchant_mac_failures_total{reason="invalid"}"#,
        r#"switchyard_admin_auth_failures_total{reason="unauthenticated"}"#,
        r#"switchyard_requests_total{mti="0200",rc="96"}"#,
    ] {
        assert_eq!(
            sample(&text, series),
            Some(0.0),
            "{series} not at 0:\n{text}"
        );
    }
    let build = format!(
        r#"switchyard_build_info{{profile="debug",version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &build), Some(1.0), "{text}");
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "switchyard_notifications_pending",
        "switchyard_postgres_pool_waiting",
    ] {
        assert!(sample(&text, name).is_some(), "{name} missing:\n{text}");
    }
    assert!(
        !text.contains("microseconds"),
        "a metric in microseconds:\n{text}"
    );

    // The probe runs every few seconds, traffic or not.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = http(admin, "GET", "/metrics").await;
        if sample(&text, "switchyard_postgres_probe_seconds_count").unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no probe:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A request MACed with another key, and an admin read without a token.
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let wrong = MacKey::from_hex(&"5a".repeat(32)).unwrap();
    let m = c.purchase(&next_stan(), 1000, "4111111111111111", "OBS-BAD-MAC");
    let bytes = m.encode_with_mac(builtin::merchant(), &wrong).unwrap();
    c.send_message_bytes(bytes).await;
    let answer = c.recv().await;
    assert_ne!(
        answer.get_str(39).as_deref(),
        Some("00"),
        "a wrong MAC approved"
    );
    let refused = http(admin, "GET", "/links").await;
    assert!(refused.contains("bearer token required"), "{refused}");
    let text = http(admin, "GET", "/metrics").await;
    for series in [
        r#"switchyard_merchant_mac_failures_total{reason="invalid"}"#,
        r#"switchyard_admin_auth_failures_total{reason="unauthenticated"}"#,
    ] {
        assert_eq!(sample(&text, series), Some(1.0), "{series}:\n{text}");
    }
    let (ok, said) = promtool_check_metrics(&text);
    assert!(ok, "promtool check metrics failed after traffic:\n{said}");
}

/// Waits for the switch's log line closing the merchant connection from `peer`.
fn closed_line(sw: &mut SwitchProc, peer: SocketAddr) -> String {
    let peer = format!("peer={peer}");
    wait_for_line(
        sw.process.stderr(),
        |l| l.contains("merchant connection closed") && l.contains(&peer),
        WAIT,
    )
    .expect("the close is logged")
}

// Proves merchant connections are logged when they open and close, with the peer and the
// reason; a connection the client resets is logged as reset by peer and never as a frame
// that cannot be resynchronised, while a real framing fault (a zero length prefix) is; and
// that bank links log their connects and drops (with the reason); and that no log line of
// the switch or the bank simulators, written to a pipe, holds an ANSI escape (ESC) byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_logged_resets_apart_from_framing_faults_no_colour() {
    let mut world = admin_world("obs_logs");
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;

    // A client that sends half a frame and resets the connection (RST, not FIN).
    let s = tokio::net::TcpStream::connect(sw.merchant_addr)
        .await
        .unwrap();
    let reset_peer = s.local_addr().unwrap();
    let mut s = s;
    s.write_all(&[0x00, 0x40, b'0', b'2']).await.unwrap();
    s.flush().await.unwrap();
    wait_for_line(
        sw.process.stderr(),
        |l| l.contains("merchant connection opened") && l.contains(&reset_peer.to_string()),
        WAIT,
    )
    .expect("the open is logged");
    s.set_zero_linger().unwrap();
    drop(s);
    let line = closed_line(&mut sw, reset_peer);
    assert!(line.contains("reset by peer"), "{line}");

    // A client whose frame has length 0: a real framing fault.
    let mut s = tokio::net::TcpStream::connect(sw.merchant_addr)
        .await
        .unwrap();
    let fault_peer = s.local_addr().unwrap();
    s.write_all(&[0x00, 0x00]).await.unwrap();
    let line = closed_line(&mut sw, fault_peer);
    assert!(line.contains("framing fault"), "{line}");

    let logs = sw.process.stderr().seen().to_vec();
    let resync = |peer: SocketAddr| {
        logs.iter()
            .any(|l| l.contains("cannot be resynchronised") && l.contains(&peer.to_string()))
    };
    assert!(
        !resync(reset_peer),
        "a reset logged as a framing fault:\n{}",
        logs.join("\n")
    );
    assert!(resync(fault_peer), "the framing fault is not logged as one");

    // The bank side: links say when they connect, and when a bank drops them and why.
    assert!(
        logs.iter()
            .any(|l| l.contains("bank link connected") && l.contains("bank-b.0")),
        "no connect line for bank-b.0"
    );
    world.banks[1].process.kill();
    let dropped = wait_for_line(
        sw.process.stderr(),
        |l| l.contains("bank link connection closed") && l.contains("bank-b.0"),
        WAIT,
    )
    .expect("the drop is logged");
    assert!(
        dropped.contains("closed by bank") || dropped.contains("transport error"),
        "{dropped}"
    );

    sw.process.signal("TERM");
    sw.process
        .wait_timeout(WAIT)
        .expect("switch exits on SIGTERM");
    sw.process.stderr().drain();
    let mut all = sw.process.stderr().seen().to_vec();
    for b in &mut world.banks {
        b.process.stderr().drain();
        all.extend_from_slice(b.process.stderr().seen());
    }
    let coloured: Vec<&String> = all.iter().filter(|l| l.contains('\u{1b}')).collect();
    assert!(
        coloured.is_empty(),
        "log lines with ANSI escapes: {coloured:?}"
    );
    assert!(all.len() > 10, "too few log lines to judge: {all:?}");
}
