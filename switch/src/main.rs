//! The `switchyard` binary: runs the switch and administers it.
//!
//! Only `run` and `migrate` change the database schema (and the commands that write:
//! `merchant add/enable/disable`, `route add/remove`, `prune`); the commands that only
//! read (`merchant list`, `route list`, `ledger check`, `ledger totals`,
//! `migrate --check`) never do: on a schema behind this binary they say so and fail.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use deadpool_postgres::Pool;
use switch::config::Config;
use switch::crypto::Vault;
use switch::store::PgStore;
use switch::{db, merchants, routing};
use tokio_util::sync::CancellationToken;

// mimalloc: glibc's malloc and free were a tenth of the switch's CPU under load
// (perf, scripts/bench.sh at 3,000/s), mostly per-message buffers and strings.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod iso8583_cli;

/// Exit status of `migrate --check` when migrations are pending (0: up to date; 1: an
/// error; 2: a usage error, from clap).
const EXIT_MIGRATIONS_PENDING: u8 = 3;

#[derive(Parser, Debug)]
#[command(name = "switchyard", version, about = "Switchyard payment switch")]
struct Cli {
    /// The configuration file (TOML); SWITCHYARD__SECTION__KEY variables override it.
    /// Accepted before or after the command.
    #[arg(
        long,
        short,
        env = "SWITCHYARD_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the switch until SIGTERM or SIGINT (applies pending migrations first).
    Run {
        /// Log JSON lines (overrides switch.log_json).
        #[arg(long)]
        log_json: bool,
    },
    /// Decodes and encodes ISO 8583 messages in any dialect (for integrators).
    Iso8583(iso8583_cli::Iso8583Args),
    /// Checks the configuration and exits.
    CheckConfig,
    /// Applies database migrations (or, with --check, lists the pending ones).
    Migrate {
        /// List pending migrations without applying them; exit status 0 when the schema
        /// is up to date, 3 when migrations are pending.
        #[arg(long)]
        check: bool,
    },
    /// Merchants: add, list, enable, disable.
    Merchant {
        #[command(subcommand)]
        command: MerchantCommand,
    },
    /// Retention: removes settled payments of business days before a day, with their
    /// postings, queue rows, notifications and advices (export totals first), then
    /// vacuums the journal's tables. Run it daily.
    Prune {
        /// The first business day to keep (YYYY-MM-DD).
        #[arg(long)]
        before: String,
    },
    /// The double-entry ledger: check invariants, print settlement totals.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Back-office accounts: add (the way in for the first superadmin).
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// BIN routes: add, list, remove. A running switch picks changes up within its reload
    /// interval or on SIGHUP.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
}

#[derive(Subcommand, Debug)]
enum MerchantCommand {
    /// Creates a merchant and prints its MAC key once.
    Add {
        /// DE42 value (1 to 15 printable characters).
        #[arg(long)]
        id: String,
        /// The merchant's name, for operators.
        #[arg(long)]
        name: String,
        /// ISO 4217 numeric codes, comma separated (e.g. 840,978).
        #[arg(long, value_delimiter = ',', required = true)]
        currencies: Vec<u16>,
        /// Largest amount of one transaction, in minor units.
        #[arg(long)]
        limit_minor: u64,
        /// Requests per second on average.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Requests allowed in a burst.
        #[arg(long, default_value_t = 200)]
        burst: u32,
    },
    /// Prints every merchant as a JSON line (never its MAC key).
    List,
    /// Refuses the merchant's requests (answered 58, not permitted) from the next reload on.
    Disable {
        /// The merchant's DE42 value.
        id: String,
    },
    /// Accepts the merchant's requests again.
    Enable {
        /// The merchant's DE42 value.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum AccountCommand {
    /// Creates a back-office account. The password is read from the environment variable
    /// SWITCHYARD_ACCOUNT_PASSWORD or, when unset, from the first line of stdin (never
    /// from the command line, where other users and the shell history would see it).
    Add {
        /// Login name: 3 to 64 of a-z 0-9 . _ @ -
        #[arg(long)]
        username: String,
        /// merchant, viewer, operator, approver, admin or superadmin.
        #[arg(long)]
        role: String,
        /// The merchant (DE42) a `merchant` account sees.
        #[arg(long)]
        merchant: Option<String>,
    },
}

/// Where `account add` reads the new password when stdin is not used.
const ACCOUNT_PASSWORD_ENV: &str = "SWITCHYARD_ACCOUNT_PASSWORD";

#[derive(Subcommand, Debug)]
enum LedgerCommand {
    /// Verifies every invariant; exits non-zero with the first violation.
    Check,
    /// Totals per business day, account (bank:ID, merchant:ID) and currency.
    Totals {
        /// One business day (YYYY-MM-DD); all days when absent.
        #[arg(long)]
        day: Option<String>,
        /// CSV instead of JSON lines.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RouteCommand {
    /// Routes cards whose leading digits lie in [low, high] (same length) to a bank;
    /// prints the new route's id.
    Add {
        /// The lowest leading digits of the range (1 to 19 digits).
        #[arg(long)]
        low: String,
        /// The highest leading digits of the range (as many digits as --low).
        #[arg(long)]
        high: String,
        /// The bank's id (a [[bank]] of the configuration).
        #[arg(long)]
        bank: String,
        /// Breaks ties between ranges of the same width: the higher wins.
        #[arg(long, default_value_t = 0)]
        priority: i32,
    },
    /// Prints every route with its id as a JSON line, in the order they were added.
    List,
    /// Removes a route by its id (see `route list`).
    Remove {
        /// The route's id.
        id: i64,
    },
}

/// Whether log lines may carry ANSI colour codes: only on a terminal, and never with
/// `NO_COLOR` set to a non-empty value (<https://no-color.org/>).
fn ansi_wanted() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

fn init_logs(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi_wanted())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn vault(c: &Config) -> Result<Vault> {
    let master = hex::decode(c.security.master_key_hex.trim())?;
    let pan = hex::decode(c.security.pan_hash_key_hex.trim())?;
    Vault::new(&master, &pan).context("security keys")
}

fn load(config: &Option<PathBuf>) -> Result<Config> {
    let Some(path) = config else {
        bail!("--config FILE (or SWITCHYARD_CONFIG) is required")
    };
    Config::load(path).with_context(|| format!("configuration {}", path.display()))
}

/// A small pool for an administrative command. `migrate`: apply pending migrations first
/// (commands that write); otherwise refuse a schema that is behind (commands that read).
async fn admin_pool(config: &Config, migrate: bool) -> Result<Pool> {
    let url = &config.database.url;
    if migrate {
        db::migrate(url).await?;
    } else {
        db::schema_status(url).await?.require_current()?;
    }
    Ok(db::pool(url, 2)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Errors are printed with their causes on one line, never with anyhow's backtrace
    // (RUST_BACKTRACE=1 would add one to the `{:?}` form that returning it from `main`
    // prints): a user error is not a crash.
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchyard: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by `: ` (as `{:#}` does), each text once: some errors
/// repeat their source's message in their own, which would print it twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> Result<ExitCode> {
    // The codec tool needs no runtime, no configuration and no logs.
    let cli = match cli.command {
        Command::Iso8583(args) => return iso8583_cli::run(args).map(|()| ExitCode::SUCCESS),
        command => Cli { command, ..cli },
    };
    // One crypto provider for the whole process (quinn and tokio-rustls must agree).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let threads = match cli.command {
        Command::Run { .. } => load(&cli.config)?.switch.runtime_threads,
        _ => 1,
    };
    let rt = runtime(threads)?;
    rt.block_on(async_main(cli))
}

/// The runtime `[switch] runtime_threads` asks for (0: one thread per core). The load
/// harness's programs build theirs the same way (`loadtest::cli::run_on`).
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

async fn async_main(cli: Cli) -> Result<ExitCode> {
    let config = load(&cli.config)?;
    match cli.command {
        Command::Iso8583(_) => unreachable!("handled before the runtime starts"),
        Command::Run { log_json } => run_switch(config, log_json).await?,
        Command::CheckConfig => {
            switch::app::preflight(&config)?;
            for u in switch::app::resolve_banks(&config).await {
                eprintln!("warning: {u}");
            }
            println!("configuration ok: {} bank(s)", config.banks.len());
        }
        Command::Migrate { check: false } => {
            let n = db::migrate(&config.database.url).await?;
            println!("{n} migration(s) applied");
        }
        Command::Migrate { check: true } => return migrate_check(&config).await,
        Command::Merchant { command } => merchant(&config, command).await?,
        Command::Prune { before } => {
            let pool = admin_pool(&config, true).await?;
            let store = PgStore::new(pool, config.switch.business_day_cutover_hour);
            let pruned = store.prune_before(&before).await?;
            println!(
                "{}",
                serde_json::json!({"before": before, "payments": pruned.payments,
                    "transactions": pruned.transactions, "postings": pruned.postings})
            );
        }
        Command::Ledger { command } => ledger(&config, command).await?,
        Command::Route { command } => route(&config, command).await?,
        Command::Account { command } => account(&config, command).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_switch(config: Config, log_json: bool) -> Result<()> {
    init_logs(log_json || config.switch.log_json);
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    // Installed before anything is bound, so a signal right after the ready line
    // is a clean shutdown, never the default exit.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        s.cancel();
    });
    switch::app::run(config, shutdown, |bound| {
        let line = serde_json::json!({"event": "ready", "merchant_tcp": bound.merchant_tcp, "merchant_tls": bound.merchant_tls, "merchant_quic": bound.merchant_quic, "admin": bound.admin});
        println!("{line}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })
    .await?;
    Ok(())
}

/// `migrate --check`: prints each pending migration (one a line), changes nothing.
async fn migrate_check(config: &Config) -> Result<ExitCode> {
    let status = db::schema_status(&config.database.url).await?;
    for v in &status.unknown_applied {
        eprintln!("note: the database has migration V{v}, which this binary does not know");
    }
    if status.pending.is_empty() {
        println!("schema up to date: no migration pending");
        return Ok(ExitCode::SUCCESS);
    }
    for m in &status.pending {
        println!("pending {m}");
    }
    println!(
        "{} migration(s) pending: `switchyard migrate` applies them",
        status.pending.len()
    );
    Ok(ExitCode::from(EXIT_MIGRATIONS_PENDING))
}

/// The new account's password: the environment variable, else stdin's first line.
fn read_new_password() -> Result<String> {
    if let Ok(p) = std::env::var(ACCOUNT_PASSWORD_ENV) {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        bail!("no password: set {ACCOUNT_PASSWORD_ENV} or write it on stdin");
    }
    Ok(pw)
}

/// The back office as the command line uses it: no request path, no live tables.
fn cli_office(
    config: &Config,
    pool: deadpool_postgres::Pool,
) -> Result<switch::backoffice::BackOffice> {
    Ok(switch::backoffice::BackOffice {
        store: switch::store::accounts::AccountStore::new(pool.clone()),
        search: switch::store::search::TxnSearch::new(pool.clone()),
        desk: None,
        pool,
        merchants: None,
        vault: std::sync::Arc::new(vault(config)?),
        metrics: std::sync::Arc::new(switch::metrics::Metrics::new()),
        throttle: Default::default(),
    })
}

async fn account(config: &Config, command: AccountCommand) -> Result<()> {
    let AccountCommand::Add {
        username,
        role,
        merchant,
    } = command;
    let Some(role) = admin_http::Role::parse(&role) else {
        bail!("--role: one of merchant, viewer, operator, approver, admin, superadmin");
    };
    let password = read_new_password()?;
    let pool = admin_pool(config, true).await?;
    let office = cli_office(config, pool)?;
    let new = admin_http::v1::NewAccount {
        username,
        role,
        merchant_id: merchant,
        password,
    };
    let view = office
        .create_account_from_cli(new)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{}", serde_json::to_string(&view)?);
    Ok(())
}

async fn merchant(config: &Config, command: MerchantCommand) -> Result<()> {
    let pool = admin_pool(config, !matches!(command, MerchantCommand::List)).await?;
    match command {
        MerchantCommand::Add {
            id,
            name,
            currencies,
            limit_minor,
            rate,
            burst,
        } => {
            let vault = vault(config)?;
            let m = merchants::NewMerchant {
                id: id.clone(),
                name,
                currencies,
                per_txn_limit_minor: limit_minor,
                rate_per_s: rate,
                rate_burst: burst,
            };
            let key = merchants::add(&pool, &vault, &m).await?;
            println!(
                "{}",
                serde_json::json!({"id": id, "mac_key_hex": hex::encode(key)})
            );
            eprintln!("The MAC key is shown this once; store it with the merchant.");
        }
        MerchantCommand::List => {
            let vault = vault(config)?;
            for m in merchants::load_all(&pool, &vault).await? {
                println!(
                    "{}",
                    serde_json::json!({"id": m.id, "name": m.name, "enabled": m.enabled, "currencies": m.currencies,
                        "per_txn_limit_minor": m.per_txn_limit_minor, "rate_per_s": m.rate_per_s, "rate_burst": m.rate_burst})
                );
            }
        }
        MerchantCommand::Disable { id } => set_enabled(&pool, &id, false).await?,
        MerchantCommand::Enable { id } => set_enabled(&pool, &id, true).await?,
    }
    Ok(())
}

async fn set_enabled(pool: &Pool, id: &str, enabled: bool) -> Result<()> {
    if !merchants::set_enabled(pool, id, enabled).await? {
        bail!("no merchant {id}");
    }
    let word = if enabled { "enabled" } else { "disabled" };
    println!("merchant {id} {word}");
    Ok(())
}

async fn ledger(config: &Config, command: LedgerCommand) -> Result<()> {
    let pool = admin_pool(config, false).await?;
    let store = PgStore::new(pool, config.switch.business_day_cutover_hour);
    match command {
        LedgerCommand::Check => {
            let violations = switch::ledger::check(&store).await?;
            if let Some(first) = violations.first() {
                for v in &violations {
                    eprintln!("violation [{}]: {}", v.rule, v.detail);
                }
                bail!("ledger check failed: [{}] {}", first.rule, first.detail);
            }
            println!("ledger check: ok");
        }
        LedgerCommand::Totals { day, csv } => {
            let totals = switch::ledger::totals(&store, day.as_deref()).await?;
            if csv {
                print!("{}", switch::ledger::to_csv(&totals));
            } else {
                for t in totals {
                    println!(
                        "{}",
                        serde_json::json!({"business_day": t.business_day, "account": t.account,
                            "currency": t.currency, "postings": t.postings, "amount_minor": t.amount_minor})
                    );
                }
            }
        }
    }
    Ok(())
}

async fn route(config: &Config, command: RouteCommand) -> Result<()> {
    let pool = admin_pool(config, !matches!(command, RouteCommand::List)).await?;
    let book = routing::RouteBook {
        pool: pool.clone(),
        banks: config.banks.iter().map(|b| b.id.clone()).collect(),
        live: None,
    };
    let who = switch::reference::cli_principal();
    let failed = |e: admin_http::AdminError| anyhow::anyhow!("{e}");
    match command {
        RouteCommand::Add {
            low,
            high,
            bank,
            priority,
        } => {
            let body = admin_http::reference::RouteBody {
                low,
                high,
                bank_id: bank,
                priority,
            };
            let office = cli_office(config, pool)?;
            let r = office.add_route(&who, &book, body).await.map_err(failed)?;
            println!("route {} added", r.id);
        }
        RouteCommand::List => {
            for s in book.list().await? {
                let r = s.route;
                println!(
                    "{}",
                    serde_json::json!({"id": s.id, "low": r.low, "high": r.high, "bank": r.bank_id, "priority": r.priority})
                );
            }
        }
        RouteCommand::Remove { id } => {
            let office = cli_office(config, pool)?;
            office.remove_route(&who, &book, id).await.map_err(failed)?;
            println!("route {id} removed");
        }
    }
    Ok(())
}
