//! The operations files in ops/ are sound: the Prometheus alert rules load and pass their
//! promtool unit tests, and the Grafana dashboard only queries metrics the switch exports,
//! in PromQL that parses.
//!
//! Needs `promtool` (Debian package `prometheus`; scripts/test.sh installs it through
//! scripts/services.sh) but no PostgreSQL or Redis.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Runs promtool from the workspace root; fails the test (never skips it) when promtool is
/// not installed.
fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not on PATH: install the Debian package `prometheus` \
             (apt-get install -y prometheus); scripts/test.sh does it through scripts/services.sh"
        ),
        Err(e) => panic!("running promtool {args:?}: {e}"),
    }
}

fn assert_success(args: &[&str]) {
    let out = promtool(args);
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// Proves the alert rules load (`promtool check rules`) and that every alert fires on the input
// series meant to fire it and stays quiet on the others (`promtool test rules`).
#[test]
fn alert_rules_are_valid_and_pass_their_unit_tests() {
    assert_success(&["check", "rules", "ops/prometheus/alerts.yml"]);
    assert_success(&["test", "rules", "ops/prometheus/alerts_test.yml"]);
}

/// The process collector's series (the prometheus crate's `process` feature), exported
/// without the `switchyard_` prefix as Prometheus' conventions name them.
const PROCESS_METRICS: [&str; 7] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

// Proves every alert carries a severity, a summary, a description and a `runbook_url` that
// points at a section of docs/operations.md that exists (the `runbook` annotation of old is
// gone), and that the PostgreSQL and Redis health of the switch is alerted on.
#[test]
fn alerts_have_runbook_urls_that_resolve() {
    let rules = read("ops/prometheus/alerts.yml");
    let doc = read("docs/operations.md");
    // GitHub-style anchors of the runbook's headings: lower case, no spaces kept.
    let anchors: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| h.trim().to_lowercase().replace(' ', "-"))
        .collect();
    let mut alerts = 0;
    for block in rules.split("- alert: ").skip(1) {
        alerts += 1;
        let name = block.lines().next().unwrap().trim();
        for key in ["severity:", "summary:", "description:", "runbook_url:"] {
            assert!(block.contains(key), "alert {name} has no {key}");
        }
        assert!(
            !block.contains("runbook:"),
            "alert {name} still uses `runbook`"
        );
        let url = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url:"))
            .unwrap()
            .trim()
            .trim_matches('"');
        let anchor = url.strip_prefix("docs/operations.md#").unwrap_or_else(|| {
            panic!("alert {name}: runbook_url {url} is not in docs/operations.md")
        });
        assert_eq!(
            anchor,
            name.to_lowercase(),
            "alert {name}: runbook_url {url}"
        );
        assert!(
            anchors.contains(anchor),
            "alert {name}: no section ### {name} in docs/operations.md"
        );
    }
    assert!(alerts >= 15, "only {alerts} alerts found");
    for needed in [
        "switchyard_postgres_probe_failures_total",
        "switchyard_postgres_pool_waiting",
        "switchyard_redis_seconds_bucket",
        "switchyard_redis_errors_total",
    ] {
        assert!(rules.contains(needed), "no alert on {needed}");
    }
}

/// Every series name the switch exports: the names registered in switch/src/metrics.rs with
/// the registry's `switchyard_` prefix, and for histograms their `_bucket`, `_sum` and `_count`
/// series; and the process collector's.
fn exported_metric_names() -> BTreeSet<String> {
    let src = read("switch/src/metrics.rs");
    assert!(
        src.contains(r#"Registry::new_custom(Some("switchyard".into())"#),
        "switch/src/metrics.rs no longer registers under the `switchyard` namespace"
    );
    // Each metric is a `const IDENT: Def = Def { name: "...", .. }`, made (and registered)
    // by one `IDENT_FIELD: mk.KIND(&IDENT, ..)`; a histogram's kind starts `histogram`.
    let mut names = BTreeSet::new();
    let mut defined = 0;
    for chunk in src.split("const ").skip(1) {
        let Some((ident, rest)) = chunk.split_once(": Def = Def {") else {
            continue;
        };
        let name = rest
            .split_once("name: \"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(name, _)| name)
            .expect("a Def names its metric");
        let full = format!("switchyard_{name}");
        let histogram = [
            format!("mk.histogram(&{ident},"),
            format!("mk.histogram_vec(&{ident},"),
        ]
        .iter()
        .any(|call| src.contains(call.as_str()));
        if histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{full}{suffix}"));
            }
        }
        names.insert(full);
        defined += 1;
    }
    assert!(
        src.contains("ProcessCollector::for_self()"),
        "switch/src/metrics.rs no longer registers the process collector"
    );
    names.extend(PROCESS_METRICS.map(String::from));
    let made = src.matches(": mk.").count();
    assert_eq!(
        defined, made,
        "found {defined} metric definitions in switch/src/metrics.rs but {made} metrics made: \
         the name parser in tests/tests/ops_rules.rs needs to learn a new form"
    );
    names
}

/// Every `expr` string anywhere in a Grafana dashboard.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// keywords, label names (inside `{}` or a `by (...)` list), strings, durations, numbers or
/// Grafana variables.
fn selected_metrics(expr: &str) -> Vec<String> {
    const KEYWORDS: [&str; 12] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
    ];
    const AGGREGATIONS: [&str; 14] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // Set after a keyword that takes a label list: the next `(...)` holds label names.
    let mut label_list_next = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' || c == '[' {
            let close = if c == '{' { '}' } else { ']' };
            while i < chars.len() && chars[i] != close {
                if chars[i] == '"' {
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                }
                i += 1;
            }
            i += 1;
        } else if c == '(' && label_list_next {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            i += 1;
            label_list_next = false;
        } else if c == '$' {
            // A Grafana variable: $name, ${name} or $__name.
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_{}".contains(chars[i]))
            {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number or a duration (5m, 1e3, 0x1f, 1.5): all of it.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let lower = word.to_ascii_lowercase();
            label_list_next = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&lower.as_str());
            if label_list_next {
                // its label list comes next
            } else if KEYWORDS.contains(&lower.as_str()) || lower == "inf" || lower == "nan" {
                // an operator keyword or a special number
            } else if next == Some(&'(') {
                // a function call, or an aggregation whose `by` comes after its argument
            } else if AGGREGATIONS.contains(&lower.as_str())
                && matches!(next, Some(&'b') | Some(&'w'))
            {
                // an aggregation with its `by (...)` or `without (...)` before the argument
            } else {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

// Proves the metric-name extraction this file relies on: names come from selectors only, not
// from functions, keywords, label lists, label values, durations or Grafana variables; and
// metrics.rs yields the documented names with histogram series.
#[test]
fn metric_name_extraction_works() {
    assert_eq!(
        selected_metrics(
            r#"histogram_quantile(0.99, sum by (le, bank) (rate(switchyard_bank_round_trip_seconds_bucket{instance=~"$instance",x="a{b}"}[$__rate_interval])))"#
        ),
        ["switchyard_bank_round_trip_seconds_bucket"]
    );
    assert_eq!(
        selected_metrics(
            r#"sum without (mti) (rate(a_total[5m] offset 1h)) / on (rc) group_left (mti) b > bool 1e3 or max(c) by (link)"#
        ),
        ["a_total", "b", "c"]
    );
    assert_eq!(
        selected_metrics("switchyard_request_total == 1"),
        ["switchyard_request_total"]
    );
    let names = exported_metric_names();
    for n in [
        "switchyard_requests_total",
        "switchyard_switch_latency_seconds_bucket",
        "switchyard_switch_latency_seconds_count",
        "switchyard_bank_round_trip_seconds_sum",
        "switchyard_bank_link_state",
        "switchyard_reversals_oldest_age_seconds",
        "switchyard_journal_batch_size_bucket",
        "switchyard_redis_seconds_bucket",
        "switchyard_bank_late_answers_total",
        "switchyard_postgres_probe_seconds_bucket",
        "switchyard_postgres_pool_waiting",
        "switchyard_notifications_pending",
        "switchyard_merchant_mac_failures_total",
        "switchyard_admin_auth_failures_total",
        "switchyard_build_info",
        "process_cpu_seconds_total",
    ] {
        assert!(names.contains(n), "{n} not among {names:?}");
    }
    assert!(!names.contains("switchyard_requests_total_bucket"));
    assert!(
        names.iter().all(|n| !n.contains("microseconds")),
        "metrics use base units (seconds)"
    );
}

fn dashboard_exprs() -> Vec<String> {
    let text = read("ops/grafana/switchyard.json");
    let dashboard: Value =
        serde_json::from_str(&text).expect("ops/grafana/switchyard.json is JSON");
    let mut out = Vec::new();
    exprs(&dashboard, &mut out);
    assert!(
        out.len() >= 20,
        "only {} queries in the dashboard",
        out.len()
    );
    out
}

// Proves every query of the Grafana dashboard selects only series the switch exports (names
// from switch/src/metrics.rs, `switchyard_` prefix, histogram series), so a renamed or
// misspelt metric cannot leave a panel silently empty; and that every panel uses the
// ${DS_PROMETHEUS} data source.
#[test]
fn dashboard_queries_use_only_exported_metrics() {
    let known = exported_metric_names();
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for e in dashboard_exprs() {
        let names = selected_metrics(&e);
        used.extend(names.iter().cloned());
        assert!(!names.is_empty(), "query selects no metric: {e}");
        for n in names {
            if !known.contains(&n) {
                unknown.push(format!("{n} (in `{e}`)"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics that switch/src/metrics.rs does not export:\n{}",
        unknown.join("\n")
    );
    // PostgreSQL and Redis as the switch sees them, the security counters and the process.
    for needed in [
        "switchyard_postgres_probe_seconds_bucket",
        "switchyard_postgres_pool_waiting",
        "switchyard_postgres_pool_connections",
        "switchyard_redis_seconds_bucket",
        "switchyard_redis_errors_total",
        "switchyard_merchant_mac_failures_total",
        "switchyard_admin_auth_failures_total",
        "switchyard_notifications_pending",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(needed), "no dashboard panel shows {needed}");
    }

    let dashboard: Value = serde_json::from_str(&read("ops/grafana/switchyard.json")).unwrap();
    assert!(
        dashboard["__inputs"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["name"] == "DS_PROMETHEUS")),
        "no DS_PROMETHEUS input"
    );
    for p in dashboard["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {} has another data source",
            p["title"]
        );
    }
}

// Proves every dashboard query is valid PromQL: each one, with Grafana's variables replaced,
// becomes a recording rule that `promtool check rules` parses.
#[test]
fn dashboard_queries_are_valid_promql() {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs().iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$instance", ".*");
        assert!(!e.contains('$'), "unknown Grafana variable in `{e}`");
        let quoted = serde_json::to_string(&e).unwrap(); // a JSON string is a YAML string
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ops_rules_dashboard_{}.yml", std::process::id()));
    std::fs::write(&path, rules).unwrap();
    let out = promtool(&["check", "rules", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
