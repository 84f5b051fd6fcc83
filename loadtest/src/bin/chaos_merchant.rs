//! `chaos-merchant`: the merchant and the judge of `scripts/chaos.sh`.
//!
//! - `run`: sends orders at a steady rate for a while, retransmitting as the merchant
//!   contract says through whatever the switch suffers, and writes every request and
//!   answer to a JSON file.
//! - `reconcile`: waits (bounded) for the switch to settle, then compares that file with
//!   the bank simulators' records and the switch's journal and ledger, prints the lost,
//!   doubled, phantom and unresolved counts, writes a JSON summary, and exits 1 when any
//!   count is not zero or the ledger check failed.
//!
//! See docs/operations.md, "Fault run (scripts/chaos.sh)".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use loadtest::chaos::plan::RetryPolicy;
use loadtest::chaos::verdict::{MerchantLog, Verdict, verdict};
use loadtest::chaos::{client, journal};
use loadtest::load::run as load_run;
use loadtest::merchant::Merchant;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "chaos-merchant",
    about = "The merchant and the judge of scripts/chaos.sh"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send orders for a while and write the merchant's record.
    Run(RunArgs),
    /// Reconcile the merchant's record with the banks and the journal.
    Reconcile(ReconcileArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The switch's merchant listener.
    #[arg(long)]
    addr: SocketAddr,
    /// DE42.
    #[arg(long)]
    merchant: String,
    /// The merchant's MAC key (hex, as `switchyard merchant add` printed it).
    #[arg(long)]
    key: String,
    /// Orders started per second.
    #[arg(long, default_value_t = 150)]
    rate: u32,
    /// Seconds orders are started for.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// Connections to the switch (orders spread over them).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// No answer this long after a send: retransmit.
    #[arg(long, default_value_t = 5000)]
    answer_timeout_ms: u64,
    /// After 94 or 96: retransmit after this long.
    #[arg(long, default_value_t = 500)]
    pause_ms: u64,
    /// No final answer this long after the first send: give up.
    #[arg(long, default_value_t = 90_000)]
    give_up_ms: u64,
    /// Wait until both banks' links answer (probe purchases on terminal PROBE001) first.
    #[arg(long)]
    wait_links: bool,
    /// Where the merchant's record goes (JSON).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ReconcileArgs {
    /// The merchant's record (`run --out`).
    #[arg(long)]
    orders: PathBuf,
    /// A bank simulator's control endpoint (repeat for each).
    #[arg(long = "bank-control", required = true)]
    bank_controls: Vec<SocketAddr>,
    /// The switch's database.
    #[arg(long)]
    pg_url: String,
    /// How long to wait for in-flight transactions and reversals to settle.
    #[arg(long, default_value_t = 90)]
    settle_s: u64,
    /// The exit status of `switchyard ledger check`.
    #[arg(long)]
    ledger_status: i32,
    /// What `switchyard ledger check` printed.
    #[arg(long)]
    ledger_output: PathBuf,
    /// A file of fault lines to copy into the summary.
    #[arg(long)]
    faults: Option<PathBuf>,
    /// Where the JSON summary goes.
    #[arg(long)]
    summary: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Command::Run(a) => run(a).await,
        Command::Reconcile(a) => reconcile(a).await,
    }
}

async fn run(a: RunArgs) -> Result<()> {
    let merchant = Merchant::new(&a.merchant, &a.key).context("--key is not a hex MAC key")?;
    if a.wait_links {
        load_run::wait_links_ready(a.addr, &merchant).await?;
    }
    // The script injects its faults once the orders flow (stdout: the ready line only).
    println!(r#"{{"event":"ready","rate":{}}}"#, a.rate);
    let cfg = client::RunConfig {
        addr: a.addr,
        merchant,
        rate_per_s: a.rate,
        duration: Duration::from_secs(a.duration_s),
        connections: a.connections,
        policy: RetryPolicy {
            answer_timeout_ms: a.answer_timeout_ms,
            pause_ms: a.pause_ms,
            give_up_ms: a.give_up_ms,
        },
    };
    let log = client::run(cfg).await?;
    let open = log
        .orders
        .iter()
        .filter(|o| o.purchase.final_answer.is_none())
        .count();
    eprintln!(
        "chaos-merchant: {} orders, {open} without a final answer",
        log.orders.len()
    );
    let text = serde_json::to_string(&log)?;
    std::fs::write(&a.out, text).with_context(|| format!("writing {}", a.out.display()))?;
    Ok(())
}

async fn reconcile(a: ReconcileArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.orders)
        .with_context(|| format!("reading {}", a.orders.display()))?;
    let log: MerchantLog =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", a.orders.display()))?;
    let db = journal::connect(&a.pg_url)
        .await
        .context("connecting to the switch's database")?;
    let (left, took) = journal::settle(
        &db,
        Duration::from_secs(a.settle_s),
        Duration::from_millis(250),
    )
    .await?;
    eprintln!(
        "chaos-merchant: settled in {:.1} s ({left} transactions or reversals still open)",
        took.as_secs_f64()
    );
    let bank = load_run::fetch_records(&a.bank_controls).await?;
    let rows = journal::rows(&db, &log.merchant).await?;
    let v = verdict(&log, &bank, &rows);
    let ledger = std::fs::read_to_string(&a.ledger_output).unwrap_or_default();
    let faults = match &a.faults {
        Some(p) => std::fs::read_to_string(p).unwrap_or_default(),
        None => String::new(),
    };
    print_summary(&v, a.ledger_status, &ledger);
    let summary = json!({
        "ok": v.ok() && a.ledger_status == 0,
        "verdict": v,
        "ledger_check": { "exit_status": a.ledger_status, "output": ledger.trim() },
        "settle_seconds": took.as_secs_f64(),
        "journal_rows": rows.len(),
        "unmatched_answers": log.unmatched_answers,
        "faults": faults.lines().collect::<Vec<_>>(),
    });
    std::fs::write(&a.summary, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", a.summary.display()))?;
    if !v.ok() || a.ledger_status != 0 {
        // A finding, not a failure of this program: said plainly, without a backtrace.
        eprintln!(
            "chaos-merchant: the fault run found defects (see above and {})",
            a.summary.display()
        );
        std::process::exit(1);
    }
    Ok(())
}

fn print_summary(v: &Verdict, ledger_status: i32, ledger: &str) {
    println!("orders: {}", v.orders);
    println!("purchase final answers: {:?}", v.purchase_finals);
    println!("reversal final answers: {:?}", v.reversal_finals);
    println!(
        "retransmissions: {} (answers 94: {}, 96: {}); bank RRN repeats: {}",
        v.retransmissions, v.answers_94, v.answers_96, v.bank_rrn_repeats
    );
    println!(
        "reversals of requests the bank never saw, after a 91 (no money moved): {}",
        v.unseen_reversals_after_91
    );
    for (name, c) in v.counts() {
        println!("{name}: {}", c.count);
        for e in &c.examples {
            println!("    {e}");
        }
    }
    let verdict = if ledger_status == 0 { "ok" } else { "FAILED" };
    println!(
        "ledger check ({verdict}): {}",
        ledger.trim().replace('\n', "\n    ")
    );
}
