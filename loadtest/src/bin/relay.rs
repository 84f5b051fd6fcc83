//! `relay`: a bare frame relay for the load harness's ceiling run. Accepts connections,
//! forwards frames to `--upstream` as they are and relays the answers back.
//!
//! Prints one JSON line to stdout when it is listening; logs go to stderr.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::net::TcpListener;

// The switch's allocator (switch/src/main.rs): the relay is the ceiling's stand-in for
// the switch, so it is built the same way (as it runs on the same kind of runtime).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "Bare frame relay (the load harness's ceiling)"
)]
struct Args {
    /// Where to listen (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to forward every connection (a bank simulator's bank-link address).
    #[arg(long)]
    upstream: SocketAddr,
    /// Runtime threads: 1 a single thread, 0 one per core, n that many (the benchmark
    /// gives the relay the switch's setting, so that the ceiling is the same kind of
    /// program).
    #[arg(long, default_value_t = 0)]
    runtime_threads: usize,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let threads = args.runtime_threads;
    loadtest::cli::exit("relay", loadtest::cli::run_on(threads, try_main(args)))
}

async fn try_main(args: Args) -> Result<()> {
    loadtest::cli::init_logs("warn");
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        r#"{{"event":"ready","listen":"{addr}","upstream":"{}"}}"#,
        args.upstream
    )?;
    out.flush()?;
    drop(out);
    tokio::select! {
        r = loadtest::relay::serve(listener, args.upstream) => r?,
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}
