//! What every binary of this crate does the same way at its edges: logs without colour
//! codes unless a person is watching, and errors printed as one line.

use std::process::ExitCode;

/// Whether log lines may carry ANSI colour codes: only when stderr is a terminal, and
/// never with `NO_COLOR` set to a non-empty value (<https://no-color.org/>). Files and
/// pipes (the demo's and the benchmark's logs) get plain text.
pub fn ansi_wanted() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default_filter`, e.g. `info`).
pub fn init_logs(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi_wanted())
        .with_writer(std::io::stderr)
        .init();
}

/// The process's exit: success, or `NAME: error: ` and the error with its causes on one
/// line (`{:#}`), status 1. Never anyhow's backtrace, which `RUST_BACKTRACE=1` would add
/// to the `Debug` form `main` returning `Result` prints: a user error is not a crash.
pub fn exit(name: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `main` on the runtime `--runtime-threads` asks for: 1, a current-thread runtime
/// (on a 2-core machine shared with the programs under test, a second worker thread costs
/// more in wake-ups between threads than it adds; the switch measured a third less CPU
/// per purchase on one thread, docs/loadtest.md); 0, one worker per core (tokio's
/// default); n, that many workers.
///
/// The switch builds its runtime the same way from `[switch] runtime_threads`
/// (`switch/src/main.rs`, `runtime`); the benchmark passes both the same setting.
///
/// Errors: the runtime cannot be built (threads or the reactor's descriptors refused),
/// or `main`'s own error.
pub fn run_on<F>(threads: usize, main: F) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()?.block_on(main)
}
