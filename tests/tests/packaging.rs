//! The systemd units the Debian package installs pass `systemd-analyze verify`, which
//! checks every directive and value without running systemd (no PID 1 needed).
//!
//! Needs `systemd-analyze` (Debian package `systemd`; scripts/test.sh installs it through
//! scripts/services.sh) but no PostgreSQL or Redis. The package itself (`cargo deb`) and
//! its installation are tested end to end by scripts/deploy-test.sh.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("a parent"))
        .unwrap_or_else(|e| panic!("mkdir for {}: {e}", to.display()));
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

/// A root for `systemd-analyze verify --root`: the host's targets (the units' dependencies
/// on sysinit.target and multi-user.target resolve there), the units as the package lays
/// them out, and the programs they run.
fn verify_root(dir: &Path) {
    let host_units = Path::new("/lib/systemd/system");
    let entries = std::fs::read_dir(host_units).expect("the host's systemd units");
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().ends_with(".target") {
            copy(&e.path(), &dir.join("lib/systemd/system").join(&name));
        }
    }
    for unit in ["switchyard.service", "switchyard-bank-sim.service"] {
        copy(
            &workspace().join("switch/debian").join(unit),
            &dir.join("lib/systemd/system").join(unit),
        );
    }
    let debug = workspace().join("target/debug");
    copy(&debug.join("switchyard"), &dir.join("usr/bin/switchyard"));
    copy(
        &debug.join("bank-sim"),
        &dir.join("usr/lib/switchyard/bank-sim"),
    );
    copy(Path::new("/bin/kill"), &dir.join("bin/kill"));
}

/// A fresh verify root under target/test-configs, named by `tag` and this process.
fn fresh_root(tag: &str) -> PathBuf {
    let dir = workspace()
        .join("target/test-configs")
        .join(format!("unit-root-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    verify_root(&dir);
    dir
}

/// `systemd-analyze verify --root=DIR UNITS`: its exit status and everything it printed.
/// Removes DIR afterwards.
fn verify(dir: &Path, units: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", dir.display()))
        .args(units)
        .output()
        .expect("systemd-analyze is not installed: install the Debian package systemd");
    let _ = std::fs::remove_dir_all(dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn packaged_units_pass_systemd_analyze_verify() {
    // Both units verify with no complaint at all (verify exits 0 on unknown keys, so any
    // output counts as a failure).
    let dir = fresh_root("good");
    let (ok, text) = verify(&dir, &["switchyard.service", "switchyard-bank-sim.service"]);
    assert!(ok, "verify failed: {text}");
    assert!(text.trim().is_empty(), "verify complained: {text}");
}

#[test]
fn verify_catches_a_bad_directive() {
    // The check above can fail: a misspelt hardening key is reported.
    let dir = fresh_root("bad");
    let unit = dir.join("lib/systemd/system/switchyard.service");
    let text = std::fs::read_to_string(&unit).expect("unit");
    std::fs::write(
        &unit,
        text.replace("ProtectSystem=strict", "ProtectSystm=strict"),
    )
    .expect("write unit");
    let (_, said) = verify(&dir, &["switchyard.service"]);
    assert!(said.contains("ProtectSystm"), "no complaint: {said}");
}
