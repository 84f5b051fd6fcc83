//! What the switch and Redis say about the measured window: journal batches and commit
//! time (the switch's Prometheus metrics), and Redis commands per answered request
//! (`INFO commandstats`). Snapshots are taken at the window's start and end; figures are
//! their differences. Parsing and arithmetic are plain functions.

use std::collections::BTreeMap;

use serde::Serialize;

/// The switch's metric families read here (histograms: `_sum` and `_count`).
pub const JOURNAL_BATCH: &str = "switchyard_journal_batch_size";
pub const JOURNAL_COMMIT: &str = "switchyard_journal_commit_seconds";
pub const SWITCH_REDIS: &str = "switchyard_redis_seconds";
/// By `record`: "request" or "outcome" (the label values of `switch/src/store/journal.rs`).
pub const JOURNAL_WAIT: &str = "switchyard_journal_wait_seconds";
/// Our own `INFO` calls are not the switch's work.
pub const REDIS_OWN_COMMAND: &str = "info";

/// Prometheus samples by series.
pub type Samples = BTreeMap<String, f64>;
/// Redis calls and microseconds by command.
pub type CommandCounts = BTreeMap<String, (u64, u64)>;

/// Samples of a Prometheus text exposition by series (name with its labels, as
/// written). Comments, and lines whose value does not parse, are skipped.
pub fn parse_prometheus(text: &str) -> Samples {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The value follows the series; a timestamp may follow the value.
        let (series, rest) = match line.find('}') {
            Some(i) => (&line[..=i], &line[i + 1..]),
            None => match line.split_once(' ') {
                Some((s, r)) => (s, r),
                None => continue,
            },
        };
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
            out.insert(series.trim().to_owned(), v);
        }
    }
    out
}

/// Calls by command from `INFO commandstats` (`cmdstat_NAME:calls=N,usec=U,...`):
/// (calls, usec).
pub fn parse_commandstats(text: &str) -> CommandCounts {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let field = |key: &str| {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let Some(calls) = field("calls") {
            out.insert(name.to_owned(), (calls, field("usec").unwrap_or(0)));
        }
    }
    out
}

/// Journal figures over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JournalStats {
    pub batches: u64,
    pub records: u64,
    pub mean_batch_size: Option<f64>,
    pub mean_commit_ms: Option<f64>,
    pub batches_per_s: f64,
    pub records_per_tx: Option<f64>,
    /// Mean time from queueing to acknowledgement (the wait for the commit in progress,
    /// the pacing and the record's own commit) of a request's record, and of an
    /// outcome's: the two durable waits on a purchase's path. None from a switch
    /// without `switchyard_journal_wait_seconds`.
    pub mean_request_wait_ms: Option<f64>,
    pub mean_outcome_wait_ms: Option<f64>,
}

/// The switch's own count of its Redis calls over the window, and their mean time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwitchRedisStats {
    pub calls: u64,
    pub calls_per_tx: Option<f64>,
    pub mean_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandStats {
    pub calls: u64,
    pub per_tx: Option<f64>,
    /// Mean time Redis spent executing one call (server side), in microseconds.
    pub usec_per_call: Option<f64>,
}

/// Redis's count of commands over the window (our own `INFO` calls excluded).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedisStats {
    pub calls: u64,
    pub calls_per_tx: Option<f64>,
    pub by_command: BTreeMap<String, CommandStats>,
}

/// What the switch run adds to its report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SwitchStats {
    pub window_s: f64,
    pub answered: u64,
    pub journal: Option<JournalStats>,
    pub switch_redis: Option<SwitchRedisStats>,
    pub redis: Option<RedisStats>,
    pub wal: Option<super::pg::WalStats>,
}

#[allow(clippy::float_arithmetic)]
pub(crate) fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

#[allow(clippy::float_arithmetic)]
fn per_tx(n: u64, answered: u64) -> Option<f64> {
    ratio(n as f64, answered as f64)
}

/// (Δsum, Δcount) of histogram `name` between two scrapes.
fn hist_delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, name: &str) -> (f64, u64) {
    series_delta(a, b, name, "")
}

/// (Δsum, Δcount) of the series of histogram `name` with `labels` (`{record="request"}`,
/// or "" for none) between two scrapes.
#[allow(clippy::float_arithmetic)]
fn series_delta(
    a: &BTreeMap<String, f64>,
    b: &BTreeMap<String, f64>,
    name: &str,
    labels: &str,
) -> (f64, u64) {
    let get = |m: &BTreeMap<String, f64>, suffix: &str| {
        m.get(&format!("{name}_{suffix}{labels}"))
            .copied()
            .unwrap_or(0.0)
    };
    let sum = (get(b, "sum") - get(a, "sum")).max(0.0);
    let count = (get(b, "count") - get(a, "count")).max(0.0);
    (sum, count as u64)
}

/// Journal figures from two scrapes `window_s` seconds apart.
#[allow(clippy::float_arithmetic)]
pub fn journal_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    window_s: f64,
    answered: u64,
) -> JournalStats {
    let (records, batches) = hist_delta(before, after, JOURNAL_BATCH);
    let (commit_s, commits) = hist_delta(before, after, JOURNAL_COMMIT);
    let mean_wait_ms = |record: &str| {
        let labels = format!("{{record=\"{record}\"}}");
        let (secs, n) = series_delta(before, after, JOURNAL_WAIT, &labels);
        ratio(secs * 1000.0, n as f64)
    };
    let records = records.round() as u64;
    JournalStats {
        batches,
        records,
        mean_batch_size: per_tx(records, batches),
        mean_commit_ms: ratio(commit_s * 1000.0, commits as f64),
        batches_per_s: ratio(batches as f64, window_s).unwrap_or(0.0),
        records_per_tx: per_tx(records, answered),
        mean_request_wait_ms: mean_wait_ms("request"),
        mean_outcome_wait_ms: mean_wait_ms("outcome"),
    }
}

/// The switch's own Redis call figures from two scrapes.
#[allow(clippy::float_arithmetic)]
pub fn switch_redis_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    answered: u64,
) -> SwitchRedisStats {
    let (secs, calls) = hist_delta(before, after, SWITCH_REDIS);
    SwitchRedisStats {
        calls,
        calls_per_tx: per_tx(calls, answered),
        mean_ms: ratio(secs * 1000.0, calls as f64),
    }
}

/// Redis command figures from two `INFO commandstats` snapshots.
#[allow(clippy::float_arithmetic)]
pub fn redis_delta(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    answered: u64,
) -> RedisStats {
    let mut by_command = BTreeMap::new();
    let mut total = 0;
    for (name, (calls, usec)) in after {
        if name.eq_ignore_ascii_case(REDIS_OWN_COMMAND) {
            continue;
        }
        let (c0, u0) = before.get(name).copied().unwrap_or((0, 0));
        let calls = calls.saturating_sub(c0);
        if calls == 0 {
            continue;
        }
        total += calls;
        by_command.insert(
            name.clone(),
            CommandStats {
                calls,
                per_tx: per_tx(calls, answered),
                usec_per_call: per_tx(usec.saturating_sub(u0), calls),
            },
        );
    }
    RedisStats {
        calls: total,
        calls_per_tx: per_tx(total, answered),
        by_command,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE_A: &str = "# HELP switchyard_journal_batch_size Records\n\
        # TYPE switchyard_journal_batch_size histogram\n\
        switchyard_journal_batch_size_bucket{le=\"1\"} 3\n\
        switchyard_journal_batch_size_sum 100\n\
        switchyard_journal_batch_size_count 40\n\
        switchyard_journal_commit_seconds_sum 0.08\n\
        switchyard_journal_commit_seconds_count 40\n\
        switchyard_redis_seconds_sum 0.5\n\
        switchyard_redis_seconds_count 1000\n\
        switchyard_requests_total{mti=\"0200\",rc=\"00\"} 7 1700000000\n";
    const SCRAPE_B: &str = "switchyard_journal_batch_size_sum 2500\n\
        switchyard_journal_batch_size_count 1040\n\
        switchyard_journal_commit_seconds_sum 2.58\n\
        switchyard_journal_commit_seconds_count 1040\n\
        switchyard_redis_seconds_sum 2.5\n\
        switchyard_redis_seconds_count 3000\n\
        switchyard_journal_wait_seconds_sum{record=\"request\"} 3.6\n\
        switchyard_journal_wait_seconds_count{record=\"request\"} 1200\n\
        not_a_value x\n";

    // Proves Prometheus text parses by series (labels kept, comments and timestamps
    // skipped) and journal and Redis figures are the differences of two scrapes.
    #[test]
    fn journal_from_scrapes() {
        let a = parse_prometheus(SCRAPE_A);
        let b = parse_prometheus(SCRAPE_B);
        assert_eq!(a["switchyard_requests_total{mti=\"0200\",rc=\"00\"}"], 7.0);
        assert_eq!(a["switchyard_journal_batch_size_bucket{le=\"1\"}"], 3.0);
        assert!(!b.contains_key("not_a_value"));
        let j = journal_delta(&a, &b, 10.0, 1200);
        assert_eq!((j.batches, j.records), (1000, 2400));
        assert!((j.mean_batch_size.unwrap() - 2.4).abs() < 1e-9);
        assert!((j.mean_commit_ms.unwrap() - 2.5).abs() < 1e-9);
        assert!((j.batches_per_s - 100.0).abs() < 1e-9);
        assert!((j.records_per_tx.unwrap() - 2.0).abs() < 1e-9);
        assert!((j.mean_request_wait_ms.unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(
            j.mean_outcome_wait_ms, None,
            "no outcome series in the scrapes"
        );
        let r = switch_redis_delta(&a, &b, 1000);
        assert_eq!(r.calls, 2000);
        assert!((r.mean_ms.unwrap() - 1.0).abs() < 1e-9);
        let empty = journal_delta(&a, &a, 10.0, 0);
        assert_eq!(empty.mean_batch_size, None);
        assert_eq!(empty.records_per_tx, None);
    }

    // Proves commandstats parse by command (subcommands included) and the delta excludes
    // our own INFO calls and commands that did not run in the window.
    #[test]
    fn redis_from_commandstats() {
        let a = parse_commandstats(
            "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=50,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_info:calls=3,usec=30\r\ncmdstat_ping:calls=4,usec=4\r\n",
        );
        let b = parse_commandstats(
            "cmdstat_evalsha:calls=2010,usec=6050\r\ncmdstat_set:calls=1000,usec=2000\r\n\
             cmdstat_info:calls=5,usec=60\r\ncmdstat_ping:calls=4,usec=4\r\n\
             cmdstat_client|setname:calls=1,usec=1\r\n",
        );
        assert_eq!(b["client|setname"], (1, 1));
        let r = redis_delta(&a, &b, 1000);
        assert_eq!(r.calls, 2000 + 1000 + 1);
        assert!((r.calls_per_tx.unwrap() - 3.001).abs() < 1e-9);
        assert!(!r.by_command.contains_key("info"));
        assert!(!r.by_command.contains_key("ping"));
        let e = &r.by_command["evalsha"];
        assert_eq!(e.calls, 2000);
        assert!((e.usec_per_call.unwrap() - 3.0).abs() < 1e-9);
    }
}
