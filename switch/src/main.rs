//! The `switchyard` binary: runs the switch and administers it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use switch::config::Config;
use switch::crypto::Vault;
use switch::store::PgStore;
use switch::{db, merchants, routing};
use tokio_util::sync::CancellationToken;

mod iso8583_cli;

#[derive(Parser, Debug)]
#[command(name = "switchyard", version, about = "Switchyard payment switch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct ConfigArg {
    /// The configuration file (TOML); SWITCHYARD__SECTION__KEY and
    /// SWITCHYARD__BANK__<i>__KEY variables override it (docs/operations.md).
    #[arg(long, short, env = "SWITCHYARD_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the switch until SIGTERM or SIGINT.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Log JSON lines (overrides switch.log_json).
        #[arg(long)]
        log_json: bool,
    },
    /// Decodes and encodes ISO 8583 messages in any dialect (for integrators).
    Iso8583(iso8583_cli::Iso8583Args),
    /// Checks the configuration and exits.
    CheckConfig(ConfigArg),
    /// Applies database migrations.
    Migrate(ConfigArg),
    /// Merchants: add, list, enable, disable.
    Merchant {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: MerchantCommand,
    },
    /// Retention: removes settled payments of business days before a day, with their
    /// postings, queue rows, notifications and advices (export totals first), then
    /// vacuums the journal's tables. Run it daily.
    Prune {
        #[command(flatten)]
        config: ConfigArg,
        /// The first business day to keep (YYYY-MM-DD).
        #[arg(long)]
        before: String,
    },
    /// The double-entry ledger: check invariants, print settlement totals.
    Ledger {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// BIN routes: add, list. A running switch picks changes up within its reload interval or on SIGHUP.
    Route {
        #[command(flatten)]
        config: ConfigArg,
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
    List,
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
}

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
    /// Routes cards whose leading digits lie in [low, high] (same length) to a bank.
    Add {
        #[arg(long)]
        low: String,
        #[arg(long)]
        high: String,
        #[arg(long)]
        bank: String,
        #[arg(long, default_value_t = 0)]
        priority: i32,
    },
    List,
}

fn init_logs(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

fn load(arg: &ConfigArg) -> Result<Config> {
    let Some(path) = &arg.config else {
        bail!("--config FILE (or SWITCHYARD_CONFIG) is required")
    };
    Config::load(path).with_context(|| format!("configuration {}", path.display()))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The codec tool needs no runtime, no configuration and no logs.
    let cli = match cli.command {
        Command::Iso8583(args) => return iso8583_cli::run(args),
        command => Cli { command },
    };
    // One crypto provider for the whole process (quinn and tokio-rustls must agree).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Iso8583(args) => iso8583_cli::run(args)?,
        Command::Run {
            config: arg,
            log_json,
        } => {
            let config = load(&arg)?;
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
        }
        Command::CheckConfig(arg) => {
            let config = load(&arg)?;
            switch::app::preflight(&config)?;
            for u in switch::app::resolve_banks(&config).await {
                eprintln!("warning: {u}");
            }
            println!("configuration ok: {} bank(s)", config.banks.len());
        }
        Command::Migrate(arg) => {
            let config = load(&arg)?;
            let n = db::migrate(&config.database.url).await?;
            println!("{n} migration(s) applied");
        }
        Command::Merchant { config, command } => {
            let config = load(&config)?;
            let pool = db::pool(&config.database.url, 2)?;
            db::migrate(&config.database.url).await?;
            match command {
                MerchantCommand::Add {
                    id,
                    name,
                    currencies,
                    limit_minor,
                    rate,
                    burst,
                } => {
                    let vault = vault(&config)?;
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
                    let vault = vault(&config)?;
                    for m in merchants::load_all(&pool, &vault).await? {
                        println!(
                            "{}",
                            serde_json::json!({"id": m.id, "name": m.name, "enabled": m.enabled, "currencies": m.currencies,
                                "per_txn_limit_minor": m.per_txn_limit_minor, "rate_per_s": m.rate_per_s, "rate_burst": m.rate_burst})
                        );
                    }
                }
                MerchantCommand::Disable { id } => {
                    if !merchants::set_enabled(&pool, &id, false).await? {
                        bail!("no merchant {id}");
                    }
                    println!("merchant {id} disabled");
                }
                MerchantCommand::Enable { id } => {
                    if !merchants::set_enabled(&pool, &id, true).await? {
                        bail!("no merchant {id}");
                    }
                    println!("merchant {id} enabled");
                }
            }
        }
        Command::Prune { config, before } => {
            let config = load(&config)?;
            let pool = db::pool(&config.database.url, 2)?;
            db::migrate(&config.database.url).await?;
            let store = PgStore::new(pool, config.switch.business_day_cutover_hour);
            let pruned = store.prune_before(&before).await?;
            println!(
                "{}",
                serde_json::json!({"before": before, "payments": pruned.payments,
                    "transactions": pruned.transactions, "postings": pruned.postings})
            );
        }
        Command::Ledger { config, command } => {
            let config = load(&config)?;
            let pool = db::pool(&config.database.url, 2)?;
            db::migrate(&config.database.url).await?;
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
        }
        Command::Route { config, command } => {
            let config = load(&config)?;
            let pool = db::pool(&config.database.url, 2)?;
            db::migrate(&config.database.url).await?;
            match command {
                RouteCommand::Add {
                    low,
                    high,
                    bank,
                    priority,
                } => {
                    if !config.banks.iter().any(|b| b.id == bank) {
                        bail!("bank {bank} is not in the configuration");
                    }
                    let id = routing::add_route(
                        &pool,
                        &routing::Route {
                            low,
                            high,
                            bank_id: bank,
                            priority,
                        },
                    )
                    .await?;
                    println!("route {id} added");
                }
                RouteCommand::List => {
                    for r in routing::load_routes(&pool).await? {
                        println!(
                            "{}",
                            serde_json::json!({"low": r.low, "high": r.high, "bank": r.bank_id, "priority": r.priority})
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
