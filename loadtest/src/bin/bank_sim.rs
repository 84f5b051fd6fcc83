//! `bank-sim`: a bank for tests and load runs (see docs/bank-protocol.md).
//!
//! Prints one JSON line to stdout when it is listening, so tests wait for it instead of
//! sleeping; everything else goes to stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Parser;
use codec::{Dialect, builtin};
use loadtest::banksim::{self, Behaviour, Config, Faults, Transport, tls};
use tracing::info;

// The switch's allocator (switch/src/main.rs), as in loadgen: the simulator shares the
// machine with the programs it measures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "bank-sim",
    version,
    about = "Simulated bank for Switchyard tests and load runs"
)]
struct Args {
    /// Address for bank links (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address of the HTTP control endpoint (GET /record, GET /health, POST /reset,
    /// POST /advise/reversal/{rrn}[?repeat_of_stan=S&de7=D], POST /links/cut[?down_ms=N]).
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// A built-in dialect name.
    #[arg(long, default_value = builtin::BANK_BCD_V1)]
    dialect: String,
    /// A dialect file (TOML, or JSON if named *.json); overrides --dialect.
    #[arg(long)]
    dialect_file: Option<PathBuf>,
    /// Milliseconds added before every answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Runtime threads: 1 a single thread, 0 one per core, n that many.
    #[arg(long, default_value_t = 0)]
    runtime_threads: usize,
    /// Never answer echo tests (0800 DE70 301).
    #[arg(long)]
    ignore_echo: bool,
    /// Answer sign-on (0800 DE70 001) with 91.
    #[arg(long)]
    refuse_sign_on: bool,
    /// DE39 for a reversal of an RRN the simulator never saw, as a real bank answers one;
    /// `00` answers it like any other. Such reversals are listed in the record's
    /// `unknown_reversals`.
    #[arg(long, default_value = "25", value_parser = parse_code)]
    unknown_reversal_code: String,
    /// TLS: the simulator's certificate chain (PEM). With --tls-key, links use TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the simulator's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TLS: the CA that must have issued the switch's client certificate (PEM); without
    /// it client certificates are not asked for.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Listen for QUIC (UDP) instead of TCP; needs --tls-cert and --tls-key.
    #[arg(long, requires = "tls_cert")]
    quic: bool,
    /// Fault: answer N financial requests per connection, then drop the connection when
    /// the next arrives.
    #[arg(long)]
    drop_after: Option<u64>,
    /// Fault: answer every financial request twice.
    #[arg(long)]
    answer_twice: bool,
    /// Fault: send an undecodable frame before every N-th financial answer.
    #[arg(long)]
    garbage_every: Option<u64>,
    /// Fault: answer financial requests whose amount ends in 77 after N milliseconds.
    #[arg(long)]
    late_ms: Option<u64>,
    /// Fault: never answer reversals (0400/0401), so the switch must settle unknown
    /// outcomes with status inquiries (0600).
    #[arg(long)]
    ignore_reversals: bool,
    /// The bank's message MAC: `x9.19` (ANSI X9.19 retail MAC, a 16-byte key) or
    /// `hmac-sha256` (a 32-byte key); needs --mac-key-hex. Messages from the switch
    /// whose MAC fails are dropped and counted (`mac_failures` in the record).
    #[arg(long, requires = "mac_key_hex", value_parser = ["x9.19", "hmac-sha256"])]
    mac: Option<String>,
    /// The MAC key in hex (16 bytes, K then K', for x9.19; 32 bytes for hmac-sha256).
    #[arg(long, requires = "mac")]
    mac_key_hex: Option<String>,
    /// Fault: break the MAC of every N-th financial answer after signing it (needs
    /// --mac), as tampering on the link would.
    #[arg(long, requires = "mac")]
    tamper_mac_every: Option<u64>,
}

/// The MAC key `--mac` and `--mac-key-hex` describe.
fn mac_key(args: &Args) -> Result<Option<codec::MacKey>> {
    let (Some(algorithm), Some(hex_key)) = (&args.mac, &args.mac_key_hex) else {
        return Ok(None);
    };
    let raw: Vec<u8> = (0..hex_key.len())
        .step_by(2)
        .map(|i| {
            hex_key
                .get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<_>>()
        .with_context(|| format!("--mac-key-hex {hex_key:?} is not hex"))?;
    let len = raw.len();
    let key = match algorithm.as_str() {
        "x9.19" => raw.try_into().ok().map(|k| codec::MacKey::x9_19(&k)),
        _ => raw.try_into().ok().map(|k| codec::MacKey::new(&k)),
    };
    key.map(Some).with_context(|| {
        format!("--mac-key-hex: {len} bytes is the wrong length for --mac {algorithm}")
    })
}

/// A DE39 value: two digits.
fn parse_code(s: &str) -> Result<String, String> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.to_owned())
    } else {
        Err(format!("a response code is two digits, not {s:?}"))
    }
}

fn transport(args: &Args) -> Result<Transport> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(Transport::Tcp);
    };
    let config = tls::server_config_files(cert, key, args.tls_client_ca.as_deref(), args.quic)
        .context("TLS configuration")?;
    Ok(if args.quic {
        Transport::Quic(config)
    } else {
        Transport::Tls(config)
    })
}

fn load_dialect(args: &Args) -> Result<&'static Dialect> {
    let Some(path) = &args.dialect_file else {
        return builtin::get(&args.dialect).ok_or_else(|| {
            let names: Vec<_> = builtin::names().collect();
            anyhow!(
                "unknown dialect {:?} (built in: {})",
                args.dialect,
                names.join(", ")
            )
        });
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading dialect file {}", path.display()))?;
    let dialect = if path.extension().is_some_and(|e| e == "json") {
        Dialect::from_json(&text)
    } else {
        Dialect::from_toml(&text)
    }
    .with_context(|| format!("dialect file {}", path.display()))?;
    Ok(codec::spec::leak(dialect))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let threads = args.runtime_threads;
    loadtest::cli::exit("bank-sim", loadtest::cli::run_on(threads, try_main(args)))
}

async fn try_main(args: Args) -> Result<()> {
    loadtest::cli::init_logs("info");
    let config = Config {
        listen: args.listen,
        control: args.control,
        dialect: load_dialect(&args)?,
        latency: Duration::from_millis(args.latency_ms),
        behaviour: Behaviour {
            ignore_echo: args.ignore_echo,
            refuse_sign_on: args.refuse_sign_on,
            unknown_reversal_code: match args.unknown_reversal_code.as_bytes() {
                b"00" => None,
                code => Some([code[0], code[1]]),
            },
        },
        transport: transport(&args)?,
        faults: Faults {
            drop_after: args.drop_after,
            answer_twice: args.answer_twice,
            garbage_every: args.garbage_every,
            late: args.late_ms.map(Duration::from_millis),
            ignore_reversals: args.ignore_reversals,
            tamper_mac_every: args.tamper_mac_every,
        },
        mac: mac_key(&args)?,
    };
    // Handlers first: a SIGTERM right after the ready line must stop us cleanly.
    let signals = Signals::install()?;
    let (addrs, handle) = banksim::serve(config).await?;

    // Written by hand: the field order is part of the contract with the tests.
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        r#"{{"event":"ready","listen":"{}","control":"{}"}}"#,
        addrs.listen, addrs.control
    )?;
    out.flush()?;
    drop(out);

    signals.wait().await;
    info!("stopping");
    handle.shutdown().await;
    info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, installed before the process announces itself.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
