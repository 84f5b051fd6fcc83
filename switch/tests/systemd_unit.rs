//! The packaged systemd unit gives the switch time for its whole graceful stop, and keeps
//! the hardening it promises (switch/debian/switchyard.service, installed by `cargo deb`).

use std::path::Path;

use switch::app::{SIGN_OFF_WAIT_MS, WORKERS_STOP_WAIT_MS};

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The value of `Key=` in the unit (the last one wins, as in systemd).
fn unit_value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .next_back()
}

/// A systemd time span of plain seconds or `Ns` / `Nmin`, in milliseconds.
fn span_ms(value: &str) -> u64 {
    let (digits, factor) = if let Some(m) = value.strip_suffix("min") {
        (m, 60_000)
    } else {
        (value.strip_suffix('s').unwrap_or(value), 1_000)
    };
    digits
        .trim()
        .parse::<u64>()
        .expect("a whole number of seconds or minutes")
        * factor
}

/// The longest graceful stop of a switch with this shutdown deadline: in-flight requests,
/// then the workers, then the journal flush and the replay writer (each bounded by the
/// deadline), then the sign-offs (switch/src/app.rs, `run`).
fn worst_stop_ms(deadline_ms: u64) -> u64 {
    deadline_ms * 3 + WORKERS_STOP_WAIT_MS + SIGN_OFF_WAIT_MS
}

fn deadline_in(toml_text: &str, what: &str) -> u64 {
    let v: toml::Value = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{what}: {e}"));
    v["switch"]["shutdown_deadline_ms"]
        .as_integer()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or_else(|| panic!("{what} sets no switch.shutdown_deadline_ms"))
}

#[test]
fn stop_timeout_covers_the_packaged_configurations_graceful_stop() {
    // TimeoutStopSec above the worst graceful stop of the configuration the package installs.
    let unit = read("debian/switchyard.service");
    let timeout_ms = span_ms(unit_value(&unit, "TimeoutStopSec").expect("TimeoutStopSec"));
    let example = deadline_in(&read("../config/switchyard.example.toml"), "the example");
    assert!(
        timeout_ms > worst_stop_ms(example),
        "TimeoutStopSec {timeout_ms} ms does not cover a stop of {} ms",
        worst_stop_ms(example)
    );
    // scripts/deploy.sh writes its own configuration; the same must hold for it.
    let deploy = read("../scripts/deploy.sh");
    let line = deploy
        .lines()
        .find(|l| l.starts_with("shutdown_deadline_ms = "))
        .expect("deploy.sh writes switch.shutdown_deadline_ms");
    let written = deadline_in(&format!("[switch]\n{line}\n"), "deploy.sh");
    assert!(timeout_ms > worst_stop_ms(written));
}

#[test]
fn unit_keeps_its_hardening() {
    // The settings operations.md promises are in the unit, with the values it promises.
    let unit = read("debian/switchyard.service");
    for (key, want) in [
        ("User", "switchyard"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
        ("CapabilityBoundingSet", ""),
        ("ExecStart", "/usr/bin/switchyard run"),
    ] {
        assert_eq!(unit_value(&unit, key), Some(want), "{key}");
    }
    assert!(
        unit_value(&unit, "ReadWritePaths").is_none(),
        "the switch writes no files: nothing to open for writing"
    );
}

#[test]
fn spans_parse() {
    // The span parser reads the forms the unit may use.
    assert_eq!(span_ms("45"), 45_000);
    assert_eq!(span_ms("45s"), 45_000);
    assert_eq!(span_ms("2min"), 120_000);
}
