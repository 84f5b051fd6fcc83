//! `simulate`: runs seeds of the whole-switch simulation and reports each failing seed
//! with the invariants it broke; ends with `P passed, F failed`.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Seeded simulation of the whole switch (issue 10)")]
struct Args {
    /// How many seeds to run.
    #[arg(default_value_t = 10)]
    seeds: u64,
    /// The first seed (the rest follow it).
    #[arg(long, env = "SEED")]
    seed: Option<u64>,
    /// Terminals per merchant.
    #[arg(long, default_value_t = 3)]
    terminals: u32,
    /// Operations per terminal.
    #[arg(long, default_value_t = 8)]
    ops: u32,
    /// Print each seed's digest (equal for equal seeds) even when it passes.
    #[arg(long)]
    verbose: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let start = match args.seed {
        Some(s) => s,
        None => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64
                % 1_000_000_000
        }
    };
    let Some(end) = start.checked_add(args.seeds) else {
        anyhow::bail!("seeds {start} and the {} after it pass 2^64", args.seeds);
    };
    match args.seeds {
        0 => println!("no seeds"),
        n => println!("seeds {start} to {} ({n} seeds)", end - 1),
    }
    let opts = sim::Options {
        terminals: args.terminals,
        ops: args.ops,
        ..sim::Options::default()
    };
    let (mut passed, mut failed) = (0u64, 0u64);
    for seed in start..end {
        let r = sim::run_seed(seed, &opts);
        if r.violations.is_empty() {
            passed += 1;
            if args.verbose {
                println!(
                    "seed {seed}: ok ({} requests, {} crashes, {} virtual s, {} RRNs at the banks, answers {:?}, digest {:016x})",
                    r.requests, r.crashes, r.virtual_s, r.bank_rrns, r.answers, r.digest
                );
            }
        } else {
            failed += 1;
            println!(
                "seed {seed}: FAILED ({} requests, {} crashes)",
                r.requests, r.crashes
            );
            for v in &r.violations {
                println!("  {v}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
