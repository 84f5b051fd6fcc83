//! Latency and outcome statistics of one run, and the report they become.
//!
//! Latencies are recorded in microseconds from when each request was *due*. Requests due
//! during the warm-up are answered and reconciled but not counted in the statistics.
//! Deliberate timeouts (amount ending 91) wait for the switch's bank timeout by design,
//! so their latency is kept apart and does not enter the percentiles.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::mix::Kind;
use super::reconcile::Reconciliation;
use super::switchstats::{self, SwitchStats};
use super::sysstat::MICROS_PER_TICK;
use super::window::Observed;

/// The highest latency a histogram records (longer ones are clamped to it).
pub const LATENCY_MAX_US: u64 = 120_000_000;
/// Significant figures of the histograms.
const HISTOGRAM_SIGFIG: u8 = 3;
/// Seconds of per-second series kept (longer runs stop adding points).
pub const SERIES_SECONDS_MAX: usize = 3_600;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, HISTOGRAM_SIGFIG).expect("valid bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, LATENCY_MAX_US)
}

/// One second of the run, by when answers arrived.
#[derive(Debug, Clone)]
struct Second {
    answered: u64,
    latency: Histogram<u64>,
}

/// Everything counted during one run.
#[derive(Debug)]
pub struct Collector {
    start: Instant,
    measured_from: Instant,
    measured_until: Instant,
    latency: Histogram<u64>,
    timeout_latency: Histogram<u64>,
    series: Vec<Second>,
    /// By kind, then DE39 (measured requests only).
    codes: BTreeMap<Kind, BTreeMap<String, u64>>,
    pub sent: u64,
    pub answered: u64,
    pub measured_answered: u64,
    /// Answers (of any request) received inside the measured window: what CPU per
    /// answered request divides by.
    pub window_answered: u64,
    pub unexpected: u64,
    pub bad_mac: u64,
    pub send_errors: u64,
    pub no_answer: u64,
    last_measured_answer: Option<Instant>,
}

/// What the collector is told about one answer.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub kind: Kind,
    pub due: Instant,
    pub received: Instant,
    pub code: &'a str,
    pub expected: Option<&'a str>,
    pub mac_ok: bool,
}

impl Collector {
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Collector {
        Collector {
            start,
            measured_from: start + warmup,
            measured_until: start + warmup + duration,
            latency: histogram(),
            timeout_latency: histogram(),
            series: Vec::new(),
            codes: BTreeMap::new(),
            sent: 0,
            answered: 0,
            measured_answered: 0,
            window_answered: 0,
            unexpected: 0,
            bad_mac: 0,
            send_errors: 0,
            no_answer: 0,
            last_measured_answer: None,
        }
    }

    pub fn measured(&self, due: Instant) -> bool {
        due >= self.measured_from
    }

    pub fn record(&mut self, o: Observation<'_>) {
        self.answered += 1;
        if o.received >= self.measured_from && o.received < self.measured_until {
            self.window_answered += 1;
        }
        let us = micros(o.received.saturating_duration_since(o.due));
        let sec = o.received.saturating_duration_since(self.start).as_secs() as usize;
        if sec < SERIES_SECONDS_MAX {
            while self.series.len() <= sec {
                self.series.push(Second {
                    answered: 0,
                    latency: histogram(),
                });
            }
            let s = &mut self.series[sec];
            s.answered += 1;
            if o.kind != Kind::Timeout {
                s.latency.saturating_record(us);
            }
        }
        if !self.measured(o.due) {
            return;
        }
        self.measured_answered += 1;
        // Deliberate timeouts end a bank timeout later by design; they do not stretch
        // the window the achieved rate is computed over.
        if o.kind != Kind::Timeout {
            self.last_measured_answer = Some(o.received);
        }
        if o.kind == Kind::Timeout {
            self.timeout_latency.saturating_record(us);
        } else {
            self.latency.saturating_record(us);
        }
        *self
            .codes
            .entry(o.kind)
            .or_default()
            .entry(o.code.to_owned())
            .or_default() += 1;
        if o.expected != Some(o.code) {
            self.unexpected += 1;
        }
        if !o.mac_ok {
            self.bad_mac += 1;
        }
    }

    /// Answers and p99 (ms) of second `sec` of the run, for the progress line.
    #[allow(clippy::float_arithmetic)]
    pub fn second(&self, sec: usize) -> Option<(u64, f64)> {
        let s = self.series.get(sec)?;
        Some((s.answered, ms(s.latency.value_at_quantile(0.99))))
    }

    /// The report of the run (without CPU figures and reconciliation, added later).
    #[allow(clippy::float_arithmetic)]
    pub fn report(&self, spec: ReportSpec) -> RunReport {
        let window = self
            .last_measured_answer
            .map(|t| t.saturating_duration_since(self.measured_from))
            .unwrap_or_default()
            .max(Duration::from_secs(spec.duration_s));
        let achieved = if window.is_zero() {
            0.0
        } else {
            self.measured_answered as f64 / window.as_secs_f64()
        };
        RunReport {
            name: spec.name,
            target: spec.target,
            offered_rate: spec.rate,
            connections: spec.connections,
            warmup_s: spec.warmup_s,
            duration_s: spec.duration_s,
            mix: spec.mix,
            sent: self.sent,
            answered: self.answered,
            measured_answered: self.measured_answered,
            achieved_rate: achieved,
            p50_ms: ms(self.latency.value_at_quantile(0.50)),
            p99_ms: ms(self.latency.value_at_quantile(0.99)),
            latency_ms: percentiles(&self.latency),
            timeout_latency_ms: (!self.timeout_latency.is_empty())
                .then(|| percentiles(&self.timeout_latency)),
            codes: self
                .codes
                .iter()
                .map(|(k, v)| (k.name().to_owned(), v.clone()))
                .collect(),
            unexpected_codes: self.unexpected,
            bad_mac: self.bad_mac,
            send_errors: self.send_errors,
            no_answer: self.no_answer,
            series: self
                .series
                .iter()
                .enumerate()
                .map(|(i, s)| SeriesPoint {
                    t_s: i as u64,
                    answered_per_s: s.answered,
                    p99_ms: ms(s.latency.value_at_quantile(0.99)),
                })
                .collect(),
            cpu: CpuReport::default(),
            cpu_us_per_tx: BTreeMap::new(),
            cpu_window: CpuWindow {
                answered: self.window_answered,
                ..CpuWindow::default()
            },
            switch_stats: None,
            window_notes: Vec::new(),
            top_statements: Vec::new(),
            reconciliation: Reconciliation::default(),
            unmatched: 0,
        }
    }
}

/// What the report says about the run's set-up.
#[derive(Debug, Clone)]
pub struct ReportSpec {
    pub name: String,
    pub target: String,
    pub rate: u64,
    pub connections: usize,
    pub warmup_s: u64,
    pub duration_s: u64,
    pub mix: String,
}

#[allow(clippy::float_arithmetic)]
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

#[allow(clippy::float_arithmetic)]
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoint {
    pub t_s: u64,
    pub answered_per_s: u64,
    pub p99_ms: f64,
}

/// CPU figures of one process over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProcessCpu {
    pub name: String,
    pub pid: u32,
    pub ticks: u64,
    /// CPU microseconds per answered request.
    pub us_per_txn: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuReport {
    /// Steal ticks (1/100 s, all CPUs) during the run.
    pub steal_ticks: u64,
    pub total_ticks: u64,
    /// Steal as a share of all CPU time, in percent.
    pub steal_pct: f64,
    pub processes: Vec<ProcessCpu>,
}

/// How CPU per answered request was measured: over the measured window, by PID tree.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuWindow {
    pub seconds: f64,
    /// Answers received inside the window (of any request, warm-up ones included).
    pub answered: u64,
    /// /proc samples taken.
    pub samples: u64,
    /// CPU ticks (1/100 s) by role; `machine` is all busy CPU from /proc/stat.
    pub ticks: BTreeMap<String, u64>,
    /// Distinct processes (pid and start time) counted by role.
    pub processes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// "relay" (the ceiling) or "switch".
    pub name: String,
    pub target: String,
    pub offered_rate: u64,
    pub connections: usize,
    pub warmup_s: u64,
    pub duration_s: u64,
    pub mix: String,
    pub sent: u64,
    pub answered: u64,
    pub measured_answered: u64,
    pub achieved_rate: f64,
    /// The same as latency_ms.p50 and .p99, at the top for quick reading.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Every measured request but deliberate timeouts.
    pub latency_ms: Percentiles,
    /// Deliberate timeouts (amount ending 91): the switch's bank timeout, by design.
    pub timeout_latency_ms: Option<Percentiles>,
    /// Measured answers by kind and DE39.
    pub codes: BTreeMap<String, BTreeMap<String, u64>>,
    pub unexpected_codes: u64,
    pub bad_mac: u64,
    pub send_errors: u64,
    pub no_answer: u64,
    /// Answers that matched no request in flight.
    pub unmatched: u64,
    pub series: Vec<SeriesPoint>,
    pub cpu: CpuReport,
    /// CPU microseconds per answered request over the measured window, by role
    /// (`forwarder`: the switch or the relay; `machine`: all busy CPU); null when
    /// nothing was answered.
    pub cpu_us_per_tx: BTreeMap<String, Option<f64>>,
    pub cpu_window: CpuWindow,
    /// Journal and Redis figures of the switch's run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_stats: Option<SwitchStats>,
    /// Figures that could not be read in the window, and why.
    pub window_notes: Vec<String>,
    /// The window's top statements (the report puts the last switch run's under `db`).
    #[serde(skip)]
    pub top_statements: Vec<super::pg::TopStatement>,
    pub reconciliation: Reconciliation,
}

impl RunReport {
    /// Whether the run meets a p99 target with nothing lost and the offered rate carried.
    #[allow(clippy::float_arithmetic)]
    pub fn passes(&self, p99_target_ms: f64) -> bool {
        self.latency_ms.count > 0
            && self.latency_ms.p99 <= p99_target_ms
            && self.no_answer == 0
            && self.send_errors == 0
            && self.achieved_rate >= self.offered_rate as f64 * ACHIEVED_SHARE_MIN
    }
}

/// A run carries its offered rate when it answers at least this share of it.
pub const ACHIEVED_SHARE_MIN: f64 = 0.95;

/// Codes other than the expected ones, as `kind:code=n` items.
pub fn code_summary(codes: &BTreeMap<String, BTreeMap<String, u64>>) -> String {
    let mut parts = vec![];
    for (kind, by_code) in codes {
        for (code, n) in by_code {
            parts.push(format!("{kind}:{code}={n}"));
        }
    }
    parts.join(" ")
}

/// CPU microseconds per answered request from ticks, to a tenth of a microsecond.
#[allow(clippy::float_arithmetic)]
pub fn cpu_per_tx(ticks: &BTreeMap<String, u64>, answered: u64) -> BTreeMap<String, Option<f64>> {
    ticks
        .iter()
        .map(|(role, t)| {
            let us = (answered > 0)
                .then(|| ((t * MICROS_PER_TICK) as f64 * 10.0 / answered as f64).round() / 10.0);
            (role.clone(), us)
        })
        .collect()
}

impl RunReport {
    /// Adds what the measured window's observer saw.
    pub fn apply_window(&mut self, o: Observed) {
        let answered = self.cpu_window.answered;
        self.cpu_us_per_tx = cpu_per_tx(&o.ticks, answered);
        self.cpu_window = CpuWindow {
            seconds: o.seconds,
            answered,
            samples: o.samples,
            ticks: o.ticks,
            processes: o.processes,
        };
        if o.metrics.is_some() || o.redis.is_some() || o.wal.is_some() {
            let m = o.metrics.as_ref();
            self.switch_stats = Some(SwitchStats {
                window_s: o.seconds,
                answered,
                journal: m.map(|(a, b)| switchstats::journal_delta(a, b, o.seconds, answered)),
                switch_redis: m.map(|(a, b)| switchstats::switch_redis_delta(a, b, answered)),
                redis: o
                    .redis
                    .as_ref()
                    .map(|(a, b)| switchstats::redis_delta(a, b, answered)),
                wal: o
                    .wal
                    .as_ref()
                    .map(|(a, b)| super::pg::wal_delta(a, b, o.seconds, answered)),
            });
        }
        self.top_statements = o.top_statements.unwrap_or_default();
        self.window_notes = o.notes;
    }
}

/// Roles in the CPU table's order: the usual ones first, others by name, the machine.
const CPU_ROLE_ORDER: [&str; 5] = ["forwarder", "postgres", "redis", "bank_sim", "loadgen"];

fn cpu_roles(runs: &[RunReport]) -> Vec<String> {
    let mut roles: Vec<String> = CPU_ROLE_ORDER.iter().map(|r| (*r).to_owned()).collect();
    for r in runs {
        for k in r.cpu_us_per_tx.keys() {
            if !roles.contains(k) && k != super::window::MACHINE {
                roles.push(k.clone());
            }
        }
    }
    roles.retain(|k| runs.iter().any(|r| r.cpu_us_per_tx.contains_key(k)));
    roles
}

fn fmt_opt(v: Option<f64>, width: usize) -> String {
    v.map_or(format!("{:>width$}", "-"), |v| format!("{v:>width$.1}"))
}

/// CPU per answered request over the measured window, by role.
pub fn cpu_table(runs: &[RunReport]) -> String {
    use std::fmt::Write;
    let roles = cpu_roles(runs);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ncpu us per answered request, measured window, by PID tree (other = machine - roles):"
    );
    let mut head = format!("{:<8} {:>8} {:>9}", "run", "window s", "answered");
    for r in roles.iter().map(String::as_str).chain(["other", "machine"]) {
        let _ = write!(head, " {r:>9}");
    }
    let _ = writeln!(out, "{head}");
    for r in runs {
        let w = &r.cpu_window;
        let _ = write!(out, "{:<8} {:>8.1} {:>9}", r.name, w.seconds, w.answered);
        let mut sum = 0u64;
        for role in &roles {
            sum += w.ticks.get(role).copied().unwrap_or(0);
            let v = r.cpu_us_per_tx.get(role).copied().flatten();
            let _ = write!(out, " {}", fmt_opt(v, 9));
        }
        let machine = w.ticks.get(super::window::MACHINE).copied();
        let other = machine.map(|m| BTreeMap::from([(String::new(), m.saturating_sub(sum))]));
        let other = other.and_then(|o| cpu_per_tx(&o, w.answered).remove("").flatten());
        let m = r
            .cpu_us_per_tx
            .get(super::window::MACHINE)
            .copied()
            .flatten();
        let _ = writeln!(out, " {} {}", fmt_opt(other, 9), fmt_opt(m, 9));
    }
    out
}

fn per_tx_text(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.2}"))
}

/// A mean time in ms to the microsecond, or `-`.
fn ms_text(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.3}"))
}

/// The journal's lines of [`switch_table`]: commits, and the two durable waits when the
/// switch reports them.
fn journal_lines(out: &mut String, j: &super::switchstats::JournalStats) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "  journal: {} commits ({:.1}/s), {} records per commit, {} records per answered request, commit mean {} ms",
        j.batches,
        j.batches_per_s,
        per_tx_text(j.mean_batch_size),
        per_tx_text(j.records_per_tx),
        per_tx_text(j.mean_commit_ms)
    );
    if j.mean_request_wait_ms.is_some() || j.mean_outcome_wait_ms.is_some() {
        let _ = writeln!(
            out,
            "  durable waits (switchyard_journal_wait_seconds, queued to acknowledged): request's record mean {} ms, outcome's mean {} ms",
            per_tx_text(j.mean_request_wait_ms),
            per_tx_text(j.mean_outcome_wait_ms)
        );
    }
}

/// Journal and Redis figures of the switch's runs.
pub fn switch_table(runs: &[RunReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for r in runs {
        let Some(s) = &r.switch_stats else { continue };
        let _ = writeln!(
            out,
            "\n{} @{}/s, measured window {:.1} s, {} answered:",
            r.name, r.offered_rate, s.window_s, s.answered
        );
        if let Some(j) = &s.journal {
            journal_lines(&mut out, j);
        }
        if let Some(sr) = &s.switch_redis {
            let _ = writeln!(
                out,
                "  switch-timed Redis calls (switchyard_redis_seconds: the claim script): {} per answered request, mean {} ms",
                per_tx_text(sr.calls_per_tx),
                per_tx_text(sr.mean_ms)
            );
        }
        if let Some(rd) = &s.redis {
            let cmds: Vec<String> = rd
                .by_command
                .iter()
                .map(|(c, v)| {
                    let us = v
                        .usec_per_call
                        .map_or(String::new(), |u| format!(", {u:.1} us"));
                    format!("{c} {}{us}", per_tx_text(v.per_tx))
                })
                .collect();
            let _ = writeln!(
                out,
                "  Redis commands (INFO commandstats; those a script runs count too): {} per answered request: {}",
                per_tx_text(rd.calls_per_tx),
                cmds.join("; ")
            );
        }
        if let Some(w) = &s.wal {
            let _ = writeln!(
                out,
                "  WAL (pg_stat_wal): {} bytes, {} records, {} full-page images per answered request; {:.1} flushes/s, flush mean {} ms, write mean {} ms",
                w.bytes_per_tx.map_or("-".to_owned(), |v| format!("{v:.0}")),
                per_tx_text(w.records_per_tx),
                per_tx_text(w.fpi_per_tx),
                w.syncs_per_s,
                ms_text(w.mean_sync_ms),
                ms_text(w.mean_write_ms)
            );
        }
    }
    out
}

/// The latency table's header.
fn main_header() -> String {
    format!(
        "{:<8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9} {:>9} {:>6}  recon",
        "run",
        "offered",
        "achieved",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "errors",
        "no-ans",
        "cpu us/tx",
        "91 p50ms",
        "steal%"
    )
}

/// One run's row of the latency table.
fn main_row(r: &RunReport) -> String {
    let cpu = r
        .cpu
        .processes
        .iter()
        .find(|p| p.name == r.name)
        .and_then(|p| p.us_per_txn)
        .map_or("-".to_owned(), |u| u.to_string());
    let t91 = r
        .timeout_latency_ms
        .as_ref()
        .map_or("-".to_owned(), |p| format!("{:.0}", p.p50));
    let recon = if r.reconciliation.ok() {
        "ok".to_owned()
    } else {
        let n: u64 = r.reconciliation.failures.iter().map(|f| f.count).sum();
        format!("FAILED ({n})")
    };
    let l = &r.latency_ms;
    format!(
        "{:<8} {:>8} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>7} {:>9} {:>9} {:>6.2}  {}",
        r.name,
        r.offered_rate,
        r.achieved_rate,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        r.unexpected_codes + r.bad_mac + r.send_errors,
        r.no_answer,
        cpu,
        t91,
        r.cpu.steal_pct,
        recon
    )
}

/// The end-of-run table: latency, codes, CPU by role, the switch's journal and Redis.
pub fn table(runs: &[RunReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}", main_header());
    for r in runs {
        let _ = writeln!(out, "{}", main_row(r));
    }
    for r in runs {
        let _ = writeln!(out, "  {} codes: {}", r.name, code_summary(&r.codes));
        for f in &r.reconciliation.failures {
            let _ = writeln!(
                out,
                "  {} RECONCILIATION: {} x{} (e.g. {})",
                r.name,
                f.check,
                f.count,
                f.examples.join(", ")
            );
        }
        for n in &r.window_notes {
            let _ = writeln!(out, "  {} note: {n}", r.name);
        }
    }
    out.push_str(&cpu_table(runs));
    out.push_str(&switch_table(runs));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(kind: Kind, due: Instant, after_ms: u64, code: &str) -> Observation<'static> {
        let code: &'static str = Box::leak(code.to_owned().into_boxed_str());
        Observation {
            kind,
            due,
            received: due + Duration::from_millis(after_ms),
            code,
            expected: Some("00"),
            mac_ok: true,
        }
    }

    // Proves warm-up answers stay out of the statistics, timeouts stay out of the
    // percentiles, and unexpected codes are counted.
    #[test]
    fn warmup_and_timeouts_excluded() {
        let start = Instant::now();
        let mut c = Collector::new(start, Duration::from_secs(1), Duration::from_secs(10));
        c.record(obs(Kind::Purchase, start, 500, "00"));
        let t = start + Duration::from_secs(2);
        for i in 0..100 {
            c.record(obs(Kind::Purchase, t, 1 + i % 3, "00"));
        }
        c.record(obs(Kind::Timeout, t, 2000, "91"));
        c.record(obs(Kind::Purchase, t, 10, "96"));
        let r = c.report(ReportSpec {
            name: "switch".into(),
            target: "x".into(),
            rate: 100,
            connections: 1,
            warmup_s: 1,
            duration_s: 1,
            mix: "purchase=1".into(),
        });
        assert_eq!(r.answered, 103);
        assert_eq!(r.measured_answered, 102);
        assert_eq!(r.latency_ms.count, 101);
        assert!(r.latency_ms.max < 11.0, "{:?}", r.latency_ms);
        assert_eq!(r.timeout_latency_ms.as_ref().unwrap().count, 1);
        assert_eq!(r.unexpected_codes, 2);
        assert_eq!(r.codes["purchase"]["96"], 1);
        assert_eq!(r.series[2].answered_per_s, 101);
        // Received inside [1 s, 11 s): all but the warm-up one at 0.5 s.
        assert_eq!(r.cpu_window.answered, 102);
        assert_eq!((r.p50_ms, r.p99_ms), (r.latency_ms.p50, r.latency_ms.p99));
        assert!(table(&[r]).contains("switch"));
    }

    fn report_with(answered: u64) -> RunReport {
        let start = Instant::now();
        let mut c = Collector::new(start, Duration::ZERO, Duration::from_secs(10));
        for _ in 0..answered {
            c.record(obs(Kind::Purchase, start, 1, "00"));
        }
        c.report(ReportSpec {
            name: "switch".into(),
            target: "x".into(),
            rate: 1000,
            connections: 1,
            warmup_s: 0,
            duration_s: 10,
            mix: "purchase=1".into(),
        })
    }

    // Proves ticks become microseconds per answered request (a tick is 10 000 us), and
    // nothing answered gives null rather than a division by zero.
    #[test]
    fn cpu_per_answered_request() {
        let ticks = BTreeMap::from([("forwarder".to_owned(), 15), ("machine".to_owned(), 3)]);
        let v = cpu_per_tx(&ticks, 1000);
        assert_eq!(v["forwarder"], Some(150.0));
        assert_eq!(v["machine"], Some(30.0));
        assert_eq!(
            cpu_per_tx(&BTreeMap::from([("x".to_owned(), 1)]), 3)["x"],
            Some(3333.3)
        );
        assert_eq!(cpu_per_tx(&ticks, 0)["forwarder"], None);
    }

    // Proves a window's observations land in the report: CPU by role, journal, Redis and
    // WAL deltas, notes, and the tables show them with "other" = machine minus the roles.
    #[test]
    fn window_in_report_and_table() {
        let mut r = report_with(1000);
        let m = |sum: f64, count: f64| {
            BTreeMap::from([
                ("switchyard_journal_batch_size_sum".to_owned(), sum),
                ("switchyard_journal_batch_size_count".to_owned(), count),
            ])
        };
        let cmd = |n: u64| BTreeMap::from([("evalsha".to_owned(), (n, n * 2))]);
        r.apply_window(Observed {
            seconds: 10.0,
            samples: 41,
            ticks: BTreeMap::from([
                ("forwarder".to_owned(), 10),
                ("postgres".to_owned(), 20),
                ("machine".to_owned(), 40),
            ]),
            metrics: Some((m(0.0, 0.0), m(1000.0, 400.0))),
            redis: Some((cmd(5), cmd(2005))),
            wal: Some((
                super::super::pg::WalCounters::default(),
                super::super::pg::WalCounters {
                    bytes: 1_500_000.0,
                    records: 13_000,
                    syncs: 500,
                    sync_ms: 150.0,
                    ..Default::default()
                },
            )),
            notes: vec!["redis INFO commandstats: refused".into()],
            ..Observed::default()
        });
        assert_eq!(r.cpu_us_per_tx["postgres"], Some(200.0));
        let s = r.switch_stats.as_ref().unwrap();
        assert_eq!(s.journal.as_ref().unwrap().batches, 400);
        assert_eq!(s.redis.as_ref().unwrap().calls_per_tx, Some(2.0));
        let t = table(&[r]);
        assert!(t.contains("forwarder  postgres"), "{t}");
        assert!(t.contains("100.0     200.0     100.0     400.0"), "{t}");
        assert!(
            t.contains("400 commits (40.0/s), 2.50 records per commit"),
            "{t}"
        );
        assert!(t.contains("evalsha 2.00, 2.0 us"), "{t}");
        assert!(
            t.contains("1500 bytes, 13.00 records, 0.00 full-page images per answered request; 50.0 flushes/s, flush mean 0.300 ms, write mean - ms"),
            "{t}"
        );
        assert!(
            t.contains("switch note: redis INFO commandstats: refused"),
            "{t}"
        );
    }

    // Proves the pass rule: p99 within target, nothing lost, offered rate carried.
    #[test]
    fn pass_rule() {
        let mut r = RunReport {
            name: "switch".into(),
            target: String::new(),
            offered_rate: 1000,
            connections: 1,
            warmup_s: 0,
            duration_s: 10,
            mix: String::new(),
            sent: 0,
            answered: 0,
            measured_answered: 0,
            achieved_rate: 990.0,
            p50_ms: 0.0,
            p99_ms: 4.0,
            latency_ms: Percentiles {
                count: 10,
                p99: 4.0,
                ..Percentiles::default()
            },
            timeout_latency_ms: None,
            codes: BTreeMap::new(),
            unexpected_codes: 0,
            bad_mac: 0,
            send_errors: 0,
            no_answer: 0,
            unmatched: 0,
            series: vec![],
            cpu: CpuReport::default(),
            cpu_us_per_tx: BTreeMap::new(),
            cpu_window: CpuWindow::default(),
            switch_stats: None,
            window_notes: vec![],
            top_statements: vec![],
            reconciliation: Reconciliation::default(),
        };
        assert!(r.passes(5.0));
        assert!(!r.passes(3.0));
        r.achieved_rate = 900.0;
        assert!(!r.passes(5.0));
        r.achieved_rate = 1000.0;
        r.no_answer = 1;
        assert!(!r.passes(5.0));
    }
}
