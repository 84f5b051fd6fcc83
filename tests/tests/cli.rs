//! The command lines as operators meet them: every binary says its version and documents
//! every command and option; the configuration option goes before or after the command;
//! user errors are one clear line even with RUST_BACKTRACE=1; commands that only read
//! never migrate (they refuse a schema that is behind), `migrate --check` lists what is
//! pending without changing anything; routes are listed with ids and removed by id.

use std::collections::BTreeSet;

use system_tests::switchyard::{WAIT, run_binary};
use system_tests::{fresh_database, pg_connect, redis_url, unique_name};

/// Every binary of the workspace an operator or integrator runs.
const BINARIES: [&str; 5] = ["switchyard", "bank-sim", "loadgen", "relay", "demo-traffic"];

/// A config file for a fresh database (no schema yet) and the database's URL.
fn config_for_fresh_database(name: &str) -> (std::path::PathBuf, String) {
    let db_url = fresh_database(name);
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-configs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.toml", unique_name(name)));
    let text = format!(
        r#"
[switch]
instance_id = 1

[merchant_listener]
tcp = "127.0.0.1:0"

[database]
url = "{db_url}"

[redis]
url = "{redis}"

[security]
master_key_hex = "{master}"
pan_hash_key_hex = "{pan}"

[[bank]]
id = "bank-a"
dialect = "bank-bcd-v1"
addr = "127.0.0.1:9"
acquirer_id = "123450"
"#,
        redis = redis_url(),
        master = "11".repeat(32),
        pan = "22".repeat(32),
    );
    std::fs::write(&path, text).unwrap();
    (path, db_url)
}

// Proves every binary answers --version with its name and the workspace's version.
#[test]
fn every_binary_has_version() {
    for bin in BINARIES {
        let (status, out, err) = run_binary(bin, &["--version"], &[]);
        assert!(status.success(), "{bin} --version failed: {err}");
        assert_eq!(out.trim(), format!("{bin} {}", env!("CARGO_PKG_VERSION")));
    }
}

/// The entries (commands, arguments, options) of a clap `--help` page that have no help
/// text, and the commands it lists. An entry is a line indented by two spaces (six for an
/// option without a short form) in a section
/// ("Commands:", "Options:", "Arguments:"); its help follows on the same line after two or
/// more spaces, or (long help) on the next lines, indented further.
fn undocumented_and_commands(page: &str) -> (Vec<String>, Vec<String>) {
    let lines: Vec<&str> = page.lines().collect();
    let (mut bare, mut commands) = (Vec::new(), Vec::new());
    let mut section = "";
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        // Entries stand at two spaces, options without a short form at six; help text
        // continued on the next lines stands further in.
        let indent = line.len() - line.trim_start().len();
        let entry = line.trim_start();
        let is_entry = indent == 2 || (indent == 6 && entry.starts_with("--"));
        if !is_entry || section.is_empty() {
            continue;
        }
        let name = entry.split("  ").next().unwrap_or(entry).trim().to_string();
        if section == "Commands:" && name != "help" {
            commands.push(name.clone());
        }
        let same_line = entry.trim_end().len() > name.len();
        let next_line = lines.get(i + 1).is_some_and(|n| {
            let indent = n.len() - n.trim_start().len();
            indent > 6 && !n.trim().is_empty()
        });
        if !same_line && !next_line {
            bare.push(name);
        }
    }
    (bare, commands)
}

// Proves every command and option of every binary has help text: walks `--help` of each
// binary and, recursively, of each subcommand.
#[test]
fn every_command_and_option_has_help() {
    let mut missing = BTreeSet::new();
    let mut pages = 0;
    for bin in BINARIES {
        let mut todo = vec![Vec::<String>::new()];
        while let Some(path) = todo.pop() {
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push("--help");
            let (status, out, err) = run_binary(bin, &args, &[]);
            assert!(status.success(), "{bin} {args:?} failed: {err}");
            pages += 1;
            let (bare, commands) = undocumented_and_commands(&out);
            for b in bare {
                missing.insert(format!("{bin} {} {b}", path.join(" ")));
            }
            for c in commands {
                let mut sub = path.clone();
                sub.push(c);
                todo.push(sub);
            }
        }
    }
    assert!(
        pages >= 20,
        "only {pages} help pages found: the walk is broken"
    );
    assert!(
        missing.is_empty(),
        "entries without help text: {missing:#?}"
    );
}

// Proves the help walk itself: an entry without help is found, in both layouts.
#[test]
fn help_walk_finds_bare_entries() {
    let page = "Usage: x\n\nCommands:\n  run   Runs it\n  list\n  help  Print this\n\nOptions:\n  -c, --config <FILE>\n          The file\n      --bare\n  -h, --help  Print help\n";
    let (bare, commands) = undocumented_and_commands(page);
    assert_eq!(bare, ["list", "--bare"]);
    assert_eq!(commands, ["run", "list"]);
}

// Proves -c/--config is accepted before the command as well as after it.
#[test]
fn config_option_before_or_after_the_command() {
    let (path, _) = config_for_fresh_database("cli_global_config");
    let cfg = path.to_str().unwrap();
    for args in [
        vec!["-c", cfg, "check-config"],
        vec!["--config", cfg, "check-config"],
        vec!["check-config", "-c", cfg],
        vec!["check-config", "--config", cfg],
    ] {
        let (status, out, err) = run_binary("switchyard", &args, &[]);
        assert!(status.success(), "switchyard {args:?}: {err}");
        assert!(out.contains("configuration ok"), "{out}");
    }
}

// Proves user errors (missing file, bad file, bad argument) print one clear line and no
// backtrace even with RUST_BACKTRACE=1, and exit non-zero.
#[test]
fn user_errors_are_one_line_without_backtrace() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-configs");
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join(format!("{}.toml", unique_name("cli_bad_config")));
    std::fs::write(&bad, "[switch\ninstance_id = ").unwrap();
    let bad = bad.to_str().unwrap();
    // (binary, arguments, what the first line must name, whether the error is ours: one
    // line; clap's usage errors add a hint line, a TOML syntax error its snippet).
    let cases: [(&str, Vec<&str>, &str, bool); 5] = [
        (
            "switchyard",
            vec!["-c", "/nonexistent/switchyard.toml", "run"],
            "/nonexistent/switchyard.toml",
            true,
        ),
        ("switchyard", vec!["-c", bad, "check-config"], bad, false),
        (
            "switchyard",
            vec!["route", "remove", "not-a-number"],
            "not-a-number",
            false,
        ),
        (
            "bank-sim",
            vec!["--dialect-file", "/nonexistent/dialect.toml"],
            "/nonexistent/dialect.toml",
            true,
        ),
        ("loadgen", vec!["--rate", "fast"], "fast", false),
    ];
    let env = [("RUST_BACKTRACE", "1"), ("RUST_LOG", "off")];
    for (bin, args, names, ours) in cases {
        let (status, _, err) = run_binary(bin, &args, &env);
        assert!(!status.success(), "{bin} {args:?} succeeded");
        let lower = err.to_lowercase();
        assert!(
            !lower.contains("backtrace") && !lower.contains("stack"),
            "{bin} {args:?} printed a backtrace:\n{err}"
        );
        let first = err.lines().next().unwrap_or("");
        assert!(
            first.starts_with("error:") || first.starts_with(&format!("{bin}: error: ")),
            "{bin} {args:?}: {err}"
        );
        assert!(
            first.contains(names),
            "{bin} {args:?}: the first line does not name {names}: {err}"
        );
        if ours {
            assert_eq!(err.lines().count(), 1, "{bin} {args:?}: {err}");
            let os = "No such file or directory";
            assert_eq!(
                err.matches(os).count(),
                1,
                "{bin} {args:?} repeats itself: {err}"
            );
        }
    }
}

/// Whether refinery's history table exists in `db_url`.
async fn has_history_table(db_url: &str) -> bool {
    let c = pg_connect(db_url).await;
    c.query_one(
        "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

// Proves commands that only read never migrate: on a fresh database they fail, say the
// schema is behind and change nothing; `migrate --check` lists the pending migrations
// (exit 3) without applying them; `migrate` applies them; then `--check` exits 0 and the
// read-only commands run. Also routes: `route list` shows ids, `route remove ID` removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_never_migrate() {
    let (path, db_url) = config_for_fresh_database("cli_read_only");
    let cfg = path.to_str().unwrap();
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .count();
    for args in [
        ["merchant", "list"].as_slice(),
        &["route", "list"],
        &["ledger", "check"],
        &["ledger", "totals"],
    ] {
        let mut all = vec!["-c", cfg];
        all.extend_from_slice(args);
        let (status, _, err) = run_binary("switchyard", &all, &[]);
        assert!(
            !status.success(),
            "switchyard {args:?} ran on an empty schema"
        );
        assert!(
            err.contains("schema is behind") && err.contains("switchyard migrate"),
            "switchyard {args:?}: {err}"
        );
        assert!(
            !has_history_table(&db_url).await,
            "switchyard {args:?} migrated"
        );
    }

    let (status, out, _) = run_binary("switchyard", &["migrate", "--check", "-c", cfg], &[]);
    assert_eq!(status.code(), Some(3), "pending migrations: exit 3\n{out}");
    let pending = out.lines().filter(|l| l.starts_with("pending V")).count();
    assert_eq!(pending, migrations, "{out}");
    assert!(
        !has_history_table(&db_url).await,
        "migrate --check migrated"
    );

    let (status, out, err) = run_binary("switchyard", &["migrate", "-c", cfg], &[]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains(&format!("{migrations} migration(s) applied")),
        "{out}"
    );
    let (status, out, _) = run_binary("switchyard", &["migrate", "--check", "-c", cfg], &[]);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("up to date"), "{out}");
    for args in [["ledger", "check"], ["merchant", "list"]] {
        let mut all = vec!["-c", cfg];
        all.extend_from_slice(&args);
        let (status, _, err) = run_binary("switchyard", &all, &[]);
        assert!(status.success(), "switchyard {args:?}: {err}");
    }

    // Routes: ids listed, one removed, a second removal refused.
    let mut ids = Vec::new();
    for (low, high) in [("4", "4"), ("51", "55")] {
        let args = [
            "-c", cfg, "route", "add", "--low", low, "--high", high, "--bank", "bank-a",
        ];
        let (status, out, err) = run_binary("switchyard", &args, &[]);
        assert!(status.success(), "{err}");
        let id: i64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        ids.push(id);
    }
    let list = |out: &str| -> Vec<(i64, String)> {
        out.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["id"].as_i64().unwrap(),
                    v["low"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (_, out, _) = run_binary("switchyard", &["-c", cfg, "route", "list"], &[]);
    assert_eq!(list(&out), [(ids[0], "4".into()), (ids[1], "51".into())]);
    let first = ids[0].to_string();
    let (status, out, err) = run_binary("switchyard", &["-c", cfg, "route", "remove", &first], &[]);
    assert!(status.success(), "{err}");
    assert!(out.contains("removed"), "{out}");
    let (_, out, _) = run_binary("switchyard", &["-c", cfg, "route", "list"], &[]);
    assert_eq!(list(&out), [(ids[1], "51".into())]);
    let (status, _, err) = run_binary("switchyard", &["-c", cfg, "route", "remove", &first], &[]);
    assert!(!status.success());
    assert!(err.contains(&format!("no route {first}")), "{err}");
}

/// Runs the workspace binary `bin` with `args` on a pseudo-terminal (`script`, from
/// util-linux), as in an operator's terminal, with `env` added; waits for a line containing
/// `ready`, stops the binary with SIGTERM and returns every line it printed.
fn on_terminal(bin: &str, args: &[&str], env: &[(&str, &str)], ready: &str) -> Vec<String> {
    let path = system_tests::binary_path(bin);
    // `exec` keeps the shell's pid, printed first, so the binary itself gets the SIGTERM.
    let command = format!("echo pid=$$; exec {} {}", path.display(), args.join(" "));
    let mut p = system_tests::spawn_path(
        std::path::Path::new("script"),
        ["-qfec", command.as_str(), "/dev/null"],
        env.iter().copied(),
    );
    let pid_line = system_tests::wait_for_line(p.stdout(), |l| l.starts_with("pid="), WAIT)
        .expect("the shell's pid");
    let pid = pid_line.trim_start_matches("pid=").trim().to_string();
    system_tests::wait_for_line(p.stdout(), |l| l.contains(ready), WAIT).expect("ready");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success(), "kill -TERM {pid}");
    p.wait_timeout(WAIT).expect("the binary stops on SIGTERM");
    p.stdout().drain();
    p.stdout().seen().to_vec()
}

// Proves log colours follow the terminal and NO_COLOR: on a pseudo-terminal the switch's and
// the bank simulator's log lines are coloured (so the terminal is real to them), and with
// NO_COLOR=1 the same lines carry no ANSI escape.
#[test]
fn no_colour_with_no_color_even_on_a_terminal() {
    let (path, _) = config_for_fresh_database("cli_no_color");
    let cfg = path.to_str().unwrap();
    let runs: [(&str, Vec<&str>); 2] =
        [("bank-sim", vec![]), ("switchyard", vec!["-c", cfg, "run"])];
    for (bin, args) in runs {
        // NO_COLOR empty counts as unset (https://no-color.org/).
        let coloured = on_terminal(
            bin,
            &args,
            &[("NO_COLOR", ""), ("RUST_LOG", "info")],
            "ready",
        );
        assert!(
            coloured.iter().any(|l| l.contains('\u{1b}')),
            "{bin} on a terminal wrote no colour: the test's terminal is not one\n{coloured:#?}"
        );
        let plain = on_terminal(
            bin,
            &args,
            &[("NO_COLOR", "1"), ("RUST_LOG", "info")],
            "ready",
        );
        assert!(plain.len() >= 2, "{bin}: {plain:#?}");
        let escaped: Vec<&String> = plain.iter().filter(|l| l.contains('\u{1b}')).collect();
        assert!(escaped.is_empty(), "{bin} with NO_COLOR=1: {escaped:#?}");
    }
}
