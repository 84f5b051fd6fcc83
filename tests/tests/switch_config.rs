//! Black-box checks of the configuration as operators use it: environment variables over
//! the file (down to one key of one `[[bank]]`), bank addresses given as host names,
//! errors that name the variable or file, the key and the value, and `check-config`
//! refusing what `run` would refuse.

use std::path::PathBuf;
use std::time::Duration;

use system_tests::switchyard::{WAIT, World, WorldOptions, next_stan, rc};
use system_tests::{spawn_binary, unique_name, wait_for_line};

/// A configuration file that needs no running service to be checked, with one bank.
fn config_file(name: &str, bank: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-configs");
    std::fs::create_dir_all(&dir).expect("config dir");
    let path = dir.join(format!("{}.toml", unique_name(name)));
    let text = format!(
        r#"
[switch]
instance_id = 1
[merchant_listener]
tcp = "127.0.0.1:0"
[database]
url = "postgres://nobody@127.0.0.1:1/none"
[redis]
url = "redis://127.0.0.1:1/"
[security]
master_key_hex = "{master}"
pan_hash_key_hex = "{pan}"
[[bank]]
id = "bank-a"
acquirer_id = "123450"
{bank}
"#,
        master = "11".repeat(32),
        pan = "22".repeat(32),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs `switchyard check-config` on `path` with `env`: whether it succeeded, and what it
/// wrote on stdout and stderr.
fn check_config(path: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let cfg = path.to_str().expect("utf-8 path");
    let mut p = spawn_binary("switchyard", &["check-config", "--config", cfg], env);
    let mut out = Vec::new();
    while let Ok(line) = wait_for_line(p.stdout(), |_| true, WAIT) {
        out.push(line);
    }
    while let Ok(line) = wait_for_line(p.stderr(), |_| true, Duration::from_secs(2)) {
        out.push(line);
    }
    let status = p.wait_timeout(WAIT).expect("check-config finished");
    (status.success(), out.join("\n"))
}

// Proves a variable overrides one key of one [[bank]] entry (the file's address for
// bank-a is a closed port; SWITCHYARD__BANK__0__ADDR gives the simulator's as a host
// name, `localhost:PORT`) and the switch reaches the bank through it: a purchase is
// approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_overrides_bank_address_given_as_host_name() {
    let opts = WorldOptions {
        bank_args: vec![vec![]],
        per_bank_overrides: vec![vec![("addr".into(), "\"127.0.0.1:1\"".into())]],
        ..Default::default()
    };
    let world = World::new("cfg_env_addr", opts);
    let addr = format!("localhost:{}", world.banks[0].listen.port());
    let sw = world.start_switch_env(1, &[("SWITCHYARD__BANK__0__ADDR", &addr)]);
    world.wait_links_ready(&sw).await;
    let mut c = world.client(&sw).await;
    let stan = next_stan();
    let r = c
        .call(&c.purchase(&stan, 1234, "4111111111111111", &format!("ENV-{stan}")))
        .await;
    assert_eq!(rc(&r), "00");
    assert_eq!(
        world.banks[0].approved(&r.get_str(37).unwrap()).await.len(),
        1
    );
}

// Proves an error caused by a variable names the variable, the key and the value, and
// one caused by the file names the file, the key and the value.
#[test]
fn errors_name_variable_or_file_key_and_value() {
    let path = config_file(
        "cfg_err",
        "dialect = \"bank-bcd-v1\"\naddr = \"bank-a.internal:35151\"",
    );
    let (ok, out) = check_config(&path, &[]);
    assert!(ok, "{out}");
    let (ok, out) = check_config(&path, &[("SWITCHYARD__BANK__0__TIMEOUT_MS", "soon")]);
    assert!(!ok);
    assert!(out.contains("SWITCHYARD__BANK__0__TIMEOUT_MS"), "{out}");
    assert!(out.contains("soon"), "{out}");
    let (ok, out) = check_config(&path, &[("SWITCHYARD__BANK__0__LINKS", "0")]);
    assert!(!ok);
    assert!(
        out.contains("bank.0.links = \"0\" (from SWITCHYARD__BANK__0__LINKS)"),
        "{out}"
    );
    let path = config_file(
        "cfg_err",
        "dialect = \"bank-bcd-v1\"\naddr = \"bank-a.internal\"",
    );
    let (ok, out) = check_config(&path, &[]);
    assert!(!ok);
    assert!(
        out.contains(&format!("{}, key bank.0.addr", path.display())),
        "{out}"
    );
    assert!(out.contains("\"bank-a.internal\""), "{out}");
}

// Proves check-config refuses what run refuses before binding: an unknown dialect (which
// it used to pass), and a certificate that exists but does not parse.
#[test]
fn check_config_rejects_what_run_rejects() {
    let path = config_file(
        "cfg_dialect",
        "dialect = \"bank-nope-v1\"\naddr = \"127.0.0.1:9\"",
    );
    let (ok, out) = check_config(&path, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("bank.0.dialect = \"bank-nope-v1\""), "{out}");
    assert!(out.contains("unknown dialect"), "{out}");
    let cfg = path.to_str().unwrap();
    let mut run = spawn_binary("switchyard", &["run", "--config", cfg], &[]);
    let status = run.wait_timeout(WAIT).expect("run refused");
    assert!(!status.success());

    let dir = path.parent().unwrap();
    let junk = dir.join(format!("{}.pem", unique_name("junk")));
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let bank = format!(
        "dialect = \"bank-bcd-v1\"\naddr = \"127.0.0.1:9\"\ntransport = \"tls\"\nserver_name = \"bank\"\ncert_pem = \"{p}\"\nkey_pem = \"{p}\"\nca_pem = \"{p}\"",
        p = junk.display()
    );
    let (ok, out) = check_config(&config_file("cfg_tls", &bank), &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("bank-a"), "{out}");
}
