//! The measured window of one run, observed from outside the load: CPU by role sampled
//! from /proc, the machine's busy time, and (for the switch's run) the switch's metrics,
//! Redis's command counts and PostgreSQL's statement and WAL statistics, each read at the
//! window's start and end. A source that cannot be read leaves a note, not a failure:
//! the load and its reconciliation matter more than any one figure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::http;
use super::pg::{self, TopStatement, WalCounters};
use super::proctree::{CpuTracker, Roots, assign};
use super::switchstats::{CommandCounts, Samples, parse_commandstats, parse_prometheus};
use super::sysstat::{self, MachineTicks};

/// How often every process is sampled: often enough that a PostgreSQL backend that
/// exits loses little (at most this much of its CPU), rarely enough that reading /proc
/// costs loadgen almost nothing (a few hundred small files per sample).
pub const PROC_SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// A snapshot (metrics scrape, Redis INFO, a statistics query) taking longer than this
/// is given up: every source is on loopback and answers in milliseconds.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest `INFO commandstats` reply read (a few kB in practice).
const REDIS_REPLY_MAX: usize = 1 << 20;
/// The role under which `/proc/stat`'s busy time is reported.
pub const MACHINE: &str = "machine";

/// Where the switch-side figures come from (each optional).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The switch's admin address (GET /metrics).
    pub metrics: Option<SocketAddr>,
    /// Redis, for `INFO commandstats`.
    pub redis: Option<SocketAddr>,
    /// The bench database, for `pg_stat_statements`.
    pub pg: Option<Arc<tokio_postgres::Client>>,
}

/// What to observe and when.
#[derive(Debug, Clone)]
pub struct WindowSpec {
    pub roots: Roots,
    pub start: Instant,
    pub end: Instant,
    /// Read the switch's metrics, Redis and the top statements (the switch's run).
    pub switch_sources: bool,
    pub sources: Sources,
}

/// What was seen.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub seconds: f64,
    pub samples: u64,
    /// CPU ticks by role, and [`MACHINE`] for all busy CPU.
    pub ticks: BTreeMap<String, u64>,
    pub processes: BTreeMap<String, u64>,
    /// The switch's metrics at the window's start and end.
    pub metrics: Option<(Samples, Samples)>,
    /// Redis's command counts at the window's start and end.
    pub redis: Option<(CommandCounts, CommandCounts)>,
    pub top_statements: Option<Vec<TopStatement>>,
    /// PostgreSQL's WAL counters at the window's start and end.
    pub wal: Option<(WalCounters, WalCounters)>,
    pub notes: Vec<String>,
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    f: impl Future<Output = Result<T, E>>,
    notes: &mut Vec<String>,
) -> Option<T> {
    match tokio::time::timeout(SNAPSHOT_TIMEOUT, f).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            notes.push(format!("{what}: {e}"));
            None
        }
        Err(_) => {
            notes.push(format!("{what}: no answer in {SNAPSHOT_TIMEOUT:?}"));
            None
        }
    }
}

/// `INFO <section>` over RESP: the bulk string reply.
pub async fn redis_info(addr: SocketAddr, section: &str) -> std::io::Result<String> {
    let mut s = BufReader::new(TcpStream::connect(addr).await?);
    s.get_mut()
        .write_all(format!("INFO {section}\r\n").as_bytes())
        .await?;
    let mut head = String::new();
    s.read_line(&mut head).await?;
    let len: usize = head
        .strip_prefix('$')
        .and_then(|n| n.trim().parse().ok())
        .filter(|n| *n <= REDIS_REPLY_MAX)
        .ok_or_else(|| std::io::Error::other(format!("unexpected reply {head:?}")))?;
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Metrics, Redis counts, WAL counters (and a statements reset at the start, or the top
/// statements at the end), as one snapshot.
struct Snapshot {
    metrics: Option<Samples>,
    redis: Option<CommandCounts>,
    top: Option<Vec<TopStatement>>,
    wal: Option<WalCounters>,
}

async fn snapshot(spec: &WindowSpec, at_end: bool, notes: &mut Vec<String>) -> Snapshot {
    let mut snap = Snapshot {
        metrics: None,
        redis: None,
        top: None,
        wal: None,
    };
    let src = &spec.sources;
    if spec.switch_sources {
        if let Some(a) = src.metrics {
            let m = timed("switch metrics", http::request(a, "GET", "/metrics"), notes).await;
            snap.metrics = m.map(|t| parse_prometheus(&t));
        }
        if let Some(a) = src.redis {
            let r = timed(
                "redis INFO commandstats",
                redis_info(a, "commandstats"),
                notes,
            )
            .await;
            snap.redis = r.map(|t| parse_commandstats(&t));
        }
    }
    if let Some(c) = &src.pg {
        if spec.switch_sources {
            snap.wal = timed("pg_stat_wal", pg::wal_counters(c), notes).await;
        }
        if !at_end {
            timed("pg_stat_statements_reset", pg::reset_statements(c), notes).await;
        } else if spec.switch_sources {
            snap.top = timed("pg_stat_statements", pg::top_statements(c), notes).await;
        }
    }
    snap
}

fn sample(roots: &Roots, tracker: &mut CpuTracker, notes: &mut Vec<String>) {
    match sysstat::read_all_processes() {
        Ok(procs) => tracker.observe(assign(&procs, roots)),
        Err(e) => notes.push(format!("reading /proc: {e}")),
    }
}

fn machine_now(notes: &mut Vec<String>) -> MachineTicks {
    sysstat::read_machine().unwrap_or_else(|e| {
        notes.push(format!("reading /proc/stat: {e}"));
        MachineTicks::default()
    })
}

/// The CPU seen over the window: by process tree, and the machine's busy ticks at its
/// edges.
struct CpuSeen {
    tracker: CpuTracker,
    machine: (MachineTicks, MachineTicks),
    seconds: f64,
    notes: Vec<String>,
}

impl CpuSeen {
    /// No samples, and why.
    fn nothing(why: String) -> CpuSeen {
        CpuSeen {
            tracker: CpuTracker::new(),
            machine: (MachineTicks::default(), MachineTicks::default()),
            seconds: 0.0,
            notes: vec![why],
        }
    }
}

/// Samples /proc every [`PROC_SAMPLE_EVERY`] until `end`, on the calling thread: a sweep
/// reads every process's stat file (a few hundred files, milliseconds), so it runs on a
/// blocking-pool thread, not on loadgen's single runtime thread, which sends requests and
/// timestamps answers.
fn sample_until(roots: &Roots, end: std::time::Instant) -> CpuSeen {
    let mut notes = Vec::new();
    let mut tracker = CpuTracker::new();
    let m0 = machine_now(&mut notes);
    sample(roots, &mut tracker, &mut notes);
    let t0 = std::time::Instant::now();
    let mut next = t0 + PROC_SAMPLE_EVERY;
    while next < end {
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
        sample(roots, &mut tracker, &mut notes);
        next += PROC_SAMPLE_EVERY;
    }
    std::thread::sleep(end.saturating_duration_since(std::time::Instant::now()));
    sample(roots, &mut tracker, &mut notes);
    let m1 = machine_now(&mut notes);
    CpuSeen {
        tracker,
        machine: (m0, m1),
        seconds: t0.elapsed().as_secs_f64(),
        notes,
    }
}

/// Waits for the window, samples it, and returns what it saw.
pub async fn observe(spec: WindowSpec) -> Observed {
    let mut notes = Vec::new();
    tokio::time::sleep_until(spec.start).await;
    let before = snapshot(&spec, false, &mut notes).await;
    let (roots, end) = (spec.roots.clone(), spec.end.into_std());
    let cpu = tokio::task::spawn_blocking(move || sample_until(&roots, end))
        .await
        .unwrap_or_else(|e| CpuSeen::nothing(format!("sampling /proc: {e}")));
    notes.extend(cpu.notes);
    let (tracker, (m0, m1), seconds) = (cpu.tracker, cpu.machine, cpu.seconds);
    let after = snapshot(&spec, true, &mut notes).await;
    let mut ticks = tracker.totals();
    for role in spec.roots.roles() {
        ticks.entry(role).or_default();
    }
    ticks.insert(MACHINE.into(), m1.since(&m0).busy);
    Observed {
        seconds,
        samples: tracker.samples(),
        ticks,
        processes: tracker.processes(),
        metrics: before.metrics.zip(after.metrics),
        redis: before.redis.zip(after.redis),
        top_statements: after.top,
        wal: before.wal.zip(after.wal),
        notes,
    }
}
