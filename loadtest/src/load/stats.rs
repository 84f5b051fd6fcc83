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
    latency: Histogram<u64>,
    timeout_latency: Histogram<u64>,
    series: Vec<Second>,
    /// By kind, then DE39 (measured requests only).
    codes: BTreeMap<Kind, BTreeMap<String, u64>>,
    pub sent: u64,
    pub answered: u64,
    pub measured_answered: u64,
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
    pub fn new(start: Instant, warmup: Duration) -> Collector {
        Collector {
            start,
            measured_from: start + warmup,
            latency: histogram(),
            timeout_latency: histogram(),
            series: Vec::new(),
            codes: BTreeMap::new(),
            sent: 0,
            answered: 0,
            measured_answered: 0,
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

/// The end-of-run table.
#[allow(clippy::float_arithmetic)]
pub fn table(runs: &[RunReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
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
    );
    for r in runs {
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
            format!(
                "FAILED ({})",
                r.reconciliation
                    .failures
                    .iter()
                    .map(|f| f.count)
                    .sum::<u64>()
            )
        };
        let l = &r.latency_ms;
        let _ = writeln!(
            out,
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
        );
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
    }
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
        let mut c = Collector::new(start, Duration::from_secs(1));
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
        assert!(table(&[r]).contains("switch"));
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
