//! `loadgen`: open-loop load against the switch, next to the same load through a bare
//! frame relay (the ceiling), with percentile reports, CPU per answered request by
//! program (by PID tree, over the measured window), steal time, the switch's journal and
//! Redis figures, PostgreSQL's top statements, a chart, and reconciliation against the
//! bank simulators' records. See docs/loadtest.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use loadtest::load::mix::Mix;
use loadtest::load::pg::{self, DbReport};
use loadtest::load::proctree::{Roots, parse_role_pid};
use loadtest::load::run::{self, RunSpec, Target};
use loadtest::load::schedule::Search;
use loadtest::load::stats::{RunReport, table};
use loadtest::load::svg;
use loadtest::load::window::Sources;
use loadtest::merchant::Merchant;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long a relay started here may take to say it is ready.
const RELAY_READY_WAIT: Duration = Duration::from_secs(10);

// The switch's allocator (switch/src/main.rs): loadgen shares the machine with the
// programs it measures, and glibc's malloc and free were 13 % of its samples at 5,000
// requests/s (perf, 2026-12-03 late evening, docs/loadtest.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Open-loop load harness for Switchyard"
)]
struct Args {
    /// The switch's merchant listener (omit to run the ceiling only).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Merchant id (DE42); repeat for several merchants, paired with --key in order.
    #[arg(long)]
    merchant: Vec<String>,
    /// The merchant's MAC key in hex; one per --merchant.
    #[arg(long)]
    key: Vec<String>,
    /// Connections per run (to the switch, and to the relay).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests per second (fixed mode; the starting rate of a search).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of measured load per run (each search step too).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of load before the measured part (answered and reconciled, not counted).
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Weights of the request kinds.
    #[arg(long, default_value = "purchase=90,decline=5,timeout=1,retransmit=4")]
    mix: String,
    /// Raise the rate until p99 passes --p99-target-ms; report the highest that met it.
    #[arg(long)]
    search: bool,
    /// The p99 latency, in milliseconds, a search step must stay under.
    #[arg(long, default_value_t = 50.0)]
    p99_target_ms: f64,
    /// The highest rate a search tries.
    #[arg(long, default_value_t = 50_000)]
    search_max: u64,
    /// Control endpoints (HTTP) of the bank simulators behind the switch; repeatable.
    #[arg(long)]
    bank_control: Vec<SocketAddr>,
    /// The switch's process id, for CPU per transaction (`forwarder` in its run).
    #[arg(long)]
    switch_pid: Option<u32>,
    /// ROLE=PID, repeatable: CPU of this process and its descendants over the measured
    /// window, reported per answered request under ROLE (several PIDs may share one
    /// role, e.g. --pid bank_sim=A --pid bank_sim=B). Roles forwarder, loadgen and
    /// machine are loadgen's own.
    #[arg(long = "pid", value_name = "ROLE=PID", value_parser = parse_role_pid)]
    pids: Vec<(String, u32)>,
    /// The switch's admin address: its /metrics are read at the window's edges
    /// (journal batches and commit time, its Redis calls).
    #[arg(long, value_name = "ADDR")]
    switch_metrics: Option<SocketAddr>,
    /// Redis (host:port): INFO commandstats at the window's edges, for Redis commands
    /// per answered request.
    #[arg(long, value_name = "ADDR")]
    redis: Option<SocketAddr>,
    /// The switch's database: pg_stat_statements is reset at each window's start and
    /// its top statements read at the switch window's end; table sizes are read too.
    #[arg(long, value_name = "URL")]
    pg_url: Option<String>,
    /// Historical transactions preloaded before the switch started (for the report).
    #[arg(long)]
    preload_rows: Option<u64>,
    /// How long the preload took (for the report).
    #[arg(long)]
    preload_seconds: Option<f64>,
    /// A relay already running (else one is started with --relay-upstream).
    #[arg(long)]
    relay: Option<SocketAddr>,
    /// The relay's process id, when --relay names one already running.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Start a relay to this bank simulator's bank-link address for the ceiling run.
    #[arg(long)]
    relay_upstream: Option<SocketAddr>,
    /// Control endpoint of the bank simulator behind the relay.
    #[arg(long)]
    relay_control: Option<SocketAddr>,
    /// Skip the ceiling run.
    #[arg(long)]
    no_ceiling: bool,
    /// Send each request at its due time to within tens of microseconds (a timerfd per
    /// connection) instead of on tokio's 1 ms timer, which sends the schedule in bursts
    /// at each millisecond tick, each request up to 1 ms after its due time (counted in
    /// its latency). Off by default, so figures compare with earlier runs.
    #[arg(long)]
    precise_schedule: bool,
    /// A request unanswered this long after the last was due counts as lost.
    #[arg(long, default_value_t = 10_000)]
    answer_timeout_ms: u64,
    /// How long reconciliation waits for the reversals of 91s to reach the bank.
    #[arg(long, default_value_t = 30)]
    reconcile_wait_s: u64,
    /// Where report.json, table.txt and chart.svg go.
    #[arg(long, default_value = "target/loadgen")]
    out: PathBuf,
    /// No live progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// loadgen's runtime threads: 1 a single thread, 0 one per core, n that many.
    #[arg(long, default_value_t = 0)]
    runtime_threads: usize,
    /// The runtime threads of the relay started with --relay-upstream (its
    /// --runtime-threads).
    #[arg(long, default_value_t = 0)]
    relay_runtime_threads: usize,
}

struct Ceiling {
    addr: SocketAddr,
    pid: Option<u32>,
    control: Vec<SocketAddr>,
    _child: Option<tokio::process::Child>,
}

async fn start_relay(
    upstream: SocketAddr,
    runtime_threads: usize,
) -> Result<(SocketAddr, tokio::process::Child)> {
    let exe = std::env::current_exe()?.with_file_name("relay");
    let mut child = tokio::process::Command::new(&exe)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream.to_string(),
            "--runtime-threads",
            &runtime_threads.to_string(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stdout = child.stdout.take().context("relay stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(RELAY_READY_WAIT, lines.next_line())
        .await
        .context("relay did not become ready")??
        .context("relay exited before it was ready")?;
    let v: serde_json::Value = serde_json::from_str(&line)?;
    let addr = v["listen"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("relay ready line without listen")?;
    Ok((addr, child))
}

fn date_text() -> String {
    let (y, mo, d, h, mi, s) = codec::clock::civil_from_unix(codec::clock::unix_now());
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

struct Plan {
    args: Args,
    mix: Mix,
    merchants: Vec<Merchant>,
    ceiling: Option<Ceiling>,
    nonce: u32,
    sources: Sources,
}

impl Plan {
    fn spec(&mut self, relay: bool, rate: u64) -> RunSpec {
        self.nonce = (self.nonce + 1) % 1000;
        let a = &self.args;
        let mut roots = Roots::new();
        for (role, pid) in &a.pids {
            roots.add(role, *pid);
        }
        let relay_pid = self.ceiling.as_ref().and_then(|c| c.pid);
        match (relay, relay_pid) {
            (true, Some(p)) => roots.add("forwarder", p),
            // The idle relay (loadgen's child) is not loadgen's work.
            (false, Some(p)) => roots.exclude(p),
            _ => {}
        }
        if let (false, Some(p)) = (relay, a.switch_pid) {
            roots.add("forwarder", p);
        }
        let (name, target, processes, controls) = match (&self.ceiling, relay) {
            (Some(c), true) => (
                "relay",
                Target::Relay { addr: c.addr },
                c.pid
                    .map(|p| vec![("relay".to_owned(), p)])
                    .unwrap_or_default(),
                c.control.clone(),
            ),
            _ => (
                "switch",
                Target::Switch {
                    addr: a.addr.expect("checked"),
                    merchants: self.merchants.clone(),
                },
                a.switch_pid
                    .map(|p| vec![("switch".to_owned(), p)])
                    .unwrap_or_default(),
                a.bank_control.clone(),
            ),
        };
        RunSpec {
            name: name.into(),
            target,
            rate,
            warmup_s: a.warmup,
            duration_s: a.duration,
            connections: a.connections,
            mix: self.mix,
            answer_timeout: Duration::from_millis(a.answer_timeout_ms),
            processes,
            roots,
            sources: self.sources.clone(),
            bank_controls: controls,
            reconcile_wait: Duration::from_secs(a.reconcile_wait_s),
            nonce: self.nonce,
            progress: !a.quiet,
            precise_schedule: a.precise_schedule,
        }
    }
}

fn summary_line(r: &RunReport) -> String {
    format!(
        "{} @{}/s: achieved {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, no answer {}, unexpected codes {}, reconciliation {}",
        r.name,
        r.offered_rate,
        r.achieved_rate,
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.no_answer,
        r.unexpected_codes,
        if r.reconciliation.ok() {
            "ok"
        } else {
            "FAILED"
        }
    )
}

async fn search(plan: &mut Plan, relay: bool) -> Result<(Option<u64>, Vec<RunReport>)> {
    let mut s = Search::new(plan.args.search_max);
    let mut rate = plan.args.rate;
    let mut reports = vec![];
    loop {
        let spec = plan.spec(relay, rate);
        let r = run::run(spec).await?;
        let passed = r.passes(plan.args.p99_target_ms) && r.reconciliation.ok();
        eprintln!(
            "search {}: {} -> {}",
            r.name,
            summary_line(&r),
            if passed { "pass" } else { "fail" }
        );
        reports.push(r);
        match s.record(rate, passed) {
            Some(next) => rate = next,
            None => return Ok((s.best, reports)),
        }
    }
}

fn merchants_of(args: &Args) -> Result<Vec<Merchant>> {
    if args.merchant.len() != args.key.len() {
        bail!("give one --key per --merchant");
    }
    let merchants: Vec<Merchant> = args
        .merchant
        .iter()
        .zip(&args.key)
        .map(|(id, k)| {
            Merchant::new(id, k).with_context(|| format!("key of {id} is not 64 hex digits"))
        })
        .collect::<Result<_>>()?;
    if args.addr.is_some() && merchants.is_empty() {
        bail!("--addr needs --merchant and --key");
    }
    Ok(merchants)
}

async fn ceiling_of(args: &Args) -> Result<Option<Ceiling>> {
    let control: Vec<SocketAddr> = args.relay_control.into_iter().collect();
    if args.no_ceiling {
        Ok(None)
    } else if let Some(addr) = args.relay {
        Ok(Some(Ceiling {
            addr,
            pid: args.relay_pid,
            control,
            _child: None,
        }))
    } else if let Some(up) = args.relay_upstream {
        let (addr, child) = start_relay(up, args.relay_runtime_threads).await?;
        eprintln!("relay listening on {addr}, forwarding to {up}");
        Ok(Some(Ceiling {
            addr,
            pid: child.id(),
            control,
            _child: Some(child),
        }))
    } else {
        Ok(None)
    }
}

/// The runs in order (relay, then switch; each a search when asked), the runs to chart,
/// and the search's result.
async fn run_all(plan: &mut Plan) -> Result<(Vec<RunReport>, Vec<usize>, serde_json::Value)> {
    let has_switch = plan.args.addr.is_some();
    let has_relay = plan.ceiling.is_some();
    let mut runs: Vec<RunReport> = vec![];
    let mut chart_runs: Vec<usize> = vec![];
    let mut best = serde_json::Map::new();
    for (relay, present) in [(true, has_relay), (false, has_switch)] {
        if !present {
            continue;
        }
        if plan.args.search {
            let (b, reports) = search(plan, relay).await?;
            best.insert(if relay { "relay" } else { "switch" }.into(), json!(b));
            let best_idx = reports
                .iter()
                .position(|r| Some(r.offered_rate) == b)
                .map(|i| runs.len() + i);
            runs.extend(reports);
            chart_runs.extend(best_idx);
        } else {
            let spec = plan.spec(relay, plan.args.rate);
            let r = run::run(spec).await?;
            eprintln!("{}", summary_line(&r));
            chart_runs.push(runs.len());
            runs.push(r);
        }
    }
    if !plan.args.search {
        return Ok((runs, chart_runs, serde_json::Value::Null));
    }
    best.insert("p99_target_ms".into(), json!(plan.args.p99_target_ms));
    Ok((runs, chart_runs, serde_json::Value::Object(best)))
}

/// Table sizes now, or a note saying why not.
async fn table_bytes(
    pg: Option<&Arc<tokio_postgres::Client>>,
    notes: &mut Vec<String>,
) -> std::collections::BTreeMap<String, Option<i64>> {
    let Some(c) = pg else {
        return Default::default();
    };
    pg::table_bytes(c).await.unwrap_or_else(|e| {
        notes.push(format!("table sizes: {e}"));
        Default::default()
    })
}

/// Autovacuum and autoanalyze passes so far, or a note saying why not.
async fn maintenance(
    pg: Option<&Arc<tokio_postgres::Client>>,
    notes: &mut Vec<String>,
) -> std::collections::BTreeMap<String, pg::Maintenance> {
    let Some(c) = pg else {
        return Default::default();
    };
    pg::maintenance(c).await.unwrap_or_else(|e| {
        notes.push(format!("autovacuum counts: {e}"));
        Default::default()
    })
}

/// The database section: the preload, sizes, and the last switch run's statements.
async fn finish_db(plan: &Plan, mut db: DbReport, runs: &[RunReport]) -> DbReport {
    db.table_bytes_end = table_bytes(plan.sources.pg.as_ref(), &mut db.notes).await;
    db.maintenance_end = maintenance(plan.sources.pg.as_ref(), &mut db.notes).await;
    if plan.sources.pg.is_some()
        && let Some(r) = runs.iter().rev().find(|r| r.name == "switch")
    {
        db.top_statements_run = Some(format!("{} @{}/s", r.name, r.offered_rate));
        db.top_statements = r.top_statements.clone();
    }
    db
}

/// Writes report.json, table.txt and chart.svg, and prints the table.
fn write_reports(
    plan: &Plan,
    runs: &[RunReport],
    chart_runs: &[usize],
    search_result: &serde_json::Value,
    db: &DbReport,
) -> Result<()> {
    let mut text = table(runs);
    text.push('\n');
    text.push_str(&pg::db_table(db));
    println!("{text}");
    if !search_result.is_null() {
        println!(
            "search (p99 target {} ms): highest passing rate {}",
            plan.args.p99_target_ms, search_result
        );
    }
    let out = &plan.args.out;
    let report = json!({
        "generated_at": date_text(),
        "mode": if plan.args.search { "search" } else { "fixed" },
        "search": search_result,
        "db": db,
        "runs": runs,
    });
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("table.txt"), &text)?;
    let charted: Vec<&RunReport> = chart_runs.iter().map(|i| &runs[*i]).collect();
    let title = format!("Switchyard load, {} ({})", date_text(), plan.args.mix);
    std::fs::write(out.join("chart.svg"), svg::chart(&charted, &title))?;
    eprintln!("reports in {}", out.display());
    Ok(())
}

/// Prints reconciliation failures; true when there were any.
fn report_failures(runs: &[RunReport]) -> bool {
    let failed: Vec<&RunReport> = runs.iter().filter(|r| !r.reconciliation.ok()).collect();
    for r in &failed {
        eprintln!(
            "RECONCILIATION FAILED for {} @{}/s:",
            r.name, r.offered_rate
        );
        for f in &r.reconciliation.failures {
            eprintln!("  {} x{}: {}", f.check, f.count, f.examples.join(", "));
        }
    }
    !failed.is_empty()
}

async fn sources_of(args: &Args) -> Result<Sources> {
    let pg = match &args.pg_url {
        Some(url) => Some(
            pg::connect(url)
                .await
                .with_context(|| format!("connecting to {url}"))?,
        ),
        None => None,
    };
    Ok(Sources {
        metrics: args.switch_metrics,
        redis: args.redis,
        pg,
    })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let threads = args.runtime_threads;
    loadtest::cli::exit("loadgen", loadtest::cli::run_on(threads, try_main(args)))
}

async fn try_main(args: Args) -> Result<()> {
    let mix = Mix::parse(&args.mix)?;
    let merchants = merchants_of(&args)?;
    let ceiling = ceiling_of(&args).await?;
    if args.addr.is_none() && ceiling.is_none() {
        bail!("nothing to run: give --addr (the switch) and/or --relay / --relay-upstream");
    }
    if let Some(addr) = args.addr {
        eprintln!("waiting for the switch's bank links ...");
        run::wait_links_ready(addr, &merchants[0]).await?;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let sources = sources_of(&args).await?;
    let mut db = DbReport {
        preload_rows: args.preload_rows,
        preload_seconds: args.preload_seconds,
        ..DbReport::default()
    };
    db.table_bytes_start = table_bytes(sources.pg.as_ref(), &mut db.notes).await;
    db.maintenance_start = maintenance(sources.pg.as_ref(), &mut db.notes).await;
    let nonce = (codec::clock::unix_now() % 1000) as u32;
    let mut plan = Plan {
        args,
        mix,
        merchants,
        ceiling,
        nonce,
        sources,
    };
    let (runs, chart_runs, search_result) = run_all(&mut plan).await?;
    let db = finish_db(&plan, db, &runs).await;
    write_reports(&plan, &runs, &chart_runs, &search_result, &db)?;
    if report_failures(&runs) {
        // Stops the relay this process started (exit skips destructors).
        drop(plan);
        std::process::exit(2);
    }
    Ok(())
}
