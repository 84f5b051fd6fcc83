//! `fsync-probe`: how long the disk under a directory takes to make an 8 KiB write
//! durable (`write` then `fdatasync(2)`, as PostgreSQL's WAL flush does with its default
//! `wal_sync_method`), measured back to back for `--seconds`.
//!
//! The benchmark runs it before its runs: a switch that answers only after two durable
//! commits cannot have a latency tail shorter than the disk's, while the bare relay never
//! touches the disk. Prints one JSON line: the count, p50, p99, p99.9 and max in µs, and
//! the worst write of every half second (`worst_us_per_half_s`), so periodic stalls show.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

/// Bytes per write: one PostgreSQL WAL page.
const WRITE_BYTES: usize = 8192;
/// The file is rewritten in a ring of this many writes, so it stays small.
const RING_WRITES: u64 = 1024;
/// Longest probe, in seconds.
const SECONDS_MAX: u64 = 600;

#[derive(Debug, Parser)]
#[command(
    name = "fsync-probe",
    version,
    about = "Tail latency of write + fdatasync"
)]
struct Args {
    /// The directory whose disk to probe (a scratch file is made and removed there).
    #[arg(long)]
    dir: PathBuf,
    /// How long to probe, in seconds (1 to 600).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

fn main() -> std::process::ExitCode {
    loadtest::cli::exit("fsync-probe", try_main())
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..=SECONDS_MAX).contains(&args.seconds),
        "--seconds must be 1 to {SECONDS_MAX}, not {}",
        args.seconds
    );
    let path = args
        .dir
        .join(format!("fsync-probe-{}.tmp", std::process::id()));
    let result = probe(&path, Duration::from_secs(args.seconds));
    let _ = std::fs::remove_file(&path);
    let (mut lat_us, worst_us) = result?;
    lat_us.sort_unstable();
    // The write at `per_mille` of the way through the sorted latencies.
    let pick = |per_mille: usize| lat_us[(lat_us.len() - 1) * per_mille / 1000];
    let line = serde_json::json!({
        "writes": lat_us.len(),
        "p50_us": pick(500),
        "p99_us": pick(990),
        "p999_us": pick(999),
        "max_us": pick(1000),
        "worst_us_per_half_s": worst_us,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    Ok(())
}

/// Every write's latency in µs, and the worst of each half second.
fn probe(path: &PathBuf, length: Duration) -> Result<(Vec<u64>, Vec<u64>)> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let page = [0x5a_u8; WRITE_BYTES];
    let (start, mut lat_us, mut worst) = (Instant::now(), Vec::new(), Vec::new());
    let mut n = 0u64;
    while start.elapsed() < length {
        let t = Instant::now();
        file.write_all_at(&page, (n % RING_WRITES) * WRITE_BYTES as u64)?;
        file.sync_data()?;
        let us = t.elapsed().as_micros() as u64;
        let slot = (t.duration_since(start).as_millis() / 500) as usize;
        if worst.len() <= slot {
            worst.resize(slot + 1, 0);
        }
        worst[slot] = worst[slot].max(us);
        lat_us.push(us);
        n += 1;
    }
    anyhow::ensure!(!lat_us.is_empty(), "no write finished in the probe's time");
    Ok((lat_us, worst))
}
