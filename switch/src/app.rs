//! Start-up and shutdown of a switch instance: everything is checked before a port is
//! bound, and shutdown stops accepting, resolves what is in flight within a deadline,
//! flushes the journal and signs the bank links off.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bank_links::tcp::{Backoff, LinkNotice, spawn_link};
use bank_links::{Bank, BankConfig, LinkConfig, StanAllocator};
use bytes::Bytes;
use codec::Dialect;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::SwitchAdmin;
use crate::config::{BankMode, BankTransport, Config};
use crate::crypto::Vault;
use crate::engine::Engine;
use crate::ids::Ids;
use crate::inflight::InFlight;
use crate::limiter::{Limiter, Rate};
use crate::merchants::Merchants;
use crate::metrics::Metrics;
use crate::reversals::ReversalWorker;
use crate::routing::Router;
use crate::server::{accept_loop, tls_acceptor};
use crate::session::Listening;
use crate::session::{MerchantConnections, SessionLimits};
use crate::store::{Journal, JournalSettings, PgStore, Store, StoreError};
use crate::{db, dialects};

/// How long background workers (reversals, inquiries, notifications) get to stop.
pub const WORKERS_STOP_WAIT_MS: u64 = 2_000;
/// How long the links get to send their sign-offs before the process ends.
pub const SIGN_OFF_WAIT_MS: u64 = 200;

/// Beyond the bank timeout and the outcome wait, how much older an in-doubt transaction
/// must be before the sweep reverses it: scheduling delays under load.
pub const STALE_MARGIN_MS: u64 = 10_000;

/// The process's exit status when its lease was taken over ([`crate::lease::LeaseLost`]).
pub const LEASE_LOST_EXIT_CODE: i32 = 75;

/// Where the instance listens, once it does.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bound {
    pub merchant_tcp: Option<SocketAddr>,
    pub merchant_tls: Option<SocketAddr>,
    pub merchant_quic: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Errors that stop a start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Dialect(#[from] dialects::DialectLoadError),
    #[error(transparent)]
    Tls(#[from] crate::server::TlsError),
    #[error(transparent)]
    Redis(#[from] crate::limiter::LimiterError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Starts the instance and runs it until `shutdown` is cancelled; `on_ready` is called
/// once the listeners are bound.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Bound),
) -> Result<(), StartError> {
    // Checks that need no network first: dialects, keys, TLS files.
    let Preflight {
        bank_dialects,
        vault,
        merchant_tls: tls,
        admin_tls,
        mut bank_tls,
    } = preflight(&config)?;
    resolve_banks(&config).await;

    // Then the stores: migrations, merchants, routes, Redis, recovery.
    let stores = open_stores(&config, &vault).await?;
    let metrics = instance_metrics(&config);
    let links_shutdown = CancellationToken::new();
    let banks = start_banks(
        &config,
        &bank_dialects,
        &mut bank_tls,
        &links_shutdown,
        &metrics,
        &stores.shared,
    )
    .await?;
    let workers = Workers::default();
    let (engine, tasks) = start_request_path(&config, &stores, banks, &vault, &metrics, &workers);

    // Listeners last.
    let listening = listening(&config, &engine);
    let admin = switch_admin(&config, &engine, &stores, &metrics, &vault);
    workers.spawn_admin(&admin, &listening);
    let admin_shutdown = CancellationToken::new();
    let admin_addr = serve_admin(&config, admin, admin_tls, &admin_shutdown).await?;
    let listeners = TaskTracker::new();
    let bound = bind_merchants(&config, tls, &listening, &listeners, admin_addr).await?;
    tracing::info!(?bound, "switch ready");
    on_ready(&bound);

    shutdown.cancelled().await;
    Running {
        listening,
        listeners,
        workers,
        admin_shutdown,
        links_shutdown,
        engine,
        tasks,
    }
    .shut_down(&config)
    .await;
    Ok(())
}

/// The banks with their acquirer ids, by bank id.
type Banks = (HashMap<String, Bank>, HashMap<String, String>);
/// The journal's and the replays' tasks.
type PathTasks = (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>);

/// The journal, the workers beside the request path, and the engine.
fn start_request_path(
    config: &Config,
    stores: &Stores,
    (banks, acquirer_ids): Banks,
    vault: &Arc<Vault>,
    metrics: &Arc<Metrics>,
    workers: &Workers,
) -> (Arc<Engine>, PathTasks) {
    let (journal, journal_task) = start_journal(config, metrics.clone());
    let store: Arc<dyn Store> = Arc::new(stores.pg.clone().with_journal(journal));
    let reversal_wake = Arc::new(Notify::new());
    workers.spawn_per_bank(
        config,
        &stores.shared,
        &banks,
        vault,
        &reversal_wake,
        metrics,
    );
    let (replays, replays_task) =
        crate::replays::Replays::start(Arc::new(stores.limiter.clone()), metrics.clone());
    let parts = EngineParts {
        stores,
        banks,
        acquirer_ids,
        store,
        replays,
        vault,
        reversal_wake: &reversal_wake,
        metrics,
    };
    let engine = Arc::new(build_engine(config, parts));
    workers.spawn_instance(config, stores, &engine, &reversal_wake, metrics, vault);
    (engine, (journal_task, replays_task))
}

/// The instance's metrics, each bank's series present from the start (so rate() sees
/// the first failure).
fn instance_metrics(config: &Config) -> Arc<Metrics> {
    let metrics = Arc::new(Metrics::new());
    for b in &config.banks {
        metrics
            .bank_mac_failures
            .with_label_values(&[b.id.as_str()]);
    }
    metrics
}

/// The stores opened and recovered at start-up.
struct Stores {
    pool: deadpool_postgres::Pool,
    merchants: Arc<Merchants>,
    router: Arc<Router>,
    limiter: Limiter,
    /// One PgStore (cloned), so that its limit on payment locks holds across all its users.
    pg: PgStore,
    /// The handle the workers, the advices and the admin surface share: no journal.
    shared: Arc<dyn Store>,
    /// This process's incarnation of its instance id: names its Redis claims and its lease.
    incarnation: u64,
}

/// Migrations, reference data, Redis, this instance's lease, and recovery of what the
/// last run left without an outcome.
async fn open_stores(config: &Config, vault: &Arc<Vault>) -> Result<Stores, StartError> {
    let applied = db::migrate(&config.database.url).await?;
    tracing::info!(applied, "migrations checked");
    let pool = db::pool(&config.database.url, config.database.pool_size)?;
    let merchants = Arc::new(Merchants::default());
    let n_merchants = merchants.reload(&pool, vault).await?;
    let router = Arc::new(Router::default());
    let n_routes = router.reload(&pool).await?;
    tracing::info!(
        merchants = n_merchants,
        routes = n_routes,
        "reference data loaded"
    );
    let r = &config.redis;
    let limiter = Limiter::connect(
        &r.url,
        &r.cluster_nodes,
        r.key_prefix.clone(),
        config.limits.algorithm,
        r.claim_ttl_ms,
        r.answer_ttl_ms,
        r.timeout_ms,
    )
    .await?;
    // Only the request path records through the journal: the handle the workers, the
    // advices and the admin surface share has none, so the journal ends (writing what is
    // queued) as soon as the engine is gone, whatever they are still doing.
    let pg = PgStore::new(pool.clone(), config.switch.business_day_cutover_hour);
    let shared: Arc<dyn Store> = Arc::new(pg.clone());
    let incarnation: u64 = vault
        .random_u64()
        .map_err(|e| StartError::Invalid(e.to_string()))?;
    let lease_ms = i64::try_from(config.switch.lease_ms).unwrap_or(i64::MAX);
    shared
        .take_lease(config.switch.instance_id, incarnation as i64, lease_ms)
        .await?;
    let recovered = shared.recover(config.switch.instance_id).await?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "transactions left without an outcome by the last run: reversing them"
        );
    }
    Ok(Stores {
        pool,
        merchants,
        router,
        limiter,
        pg,
        shared,
        incarnation,
    })
}

/// The banks by id with their links started, and each bank's acquirer id; the links'
/// notices are logged and counted.
async fn start_banks(
    config: &Config,
    bank_dialects: &HashMap<String, &'static Dialect>,
    bank_tls: &mut HashMap<String, Option<bank_links::TlsMaterial>>,
    links_shutdown: &CancellationToken,
    metrics: &Arc<Metrics>,
    shared: &Arc<dyn Store>,
) -> Result<Banks, StartError> {
    let (notice_tx, notice_rx) = mpsc::channel(bank_links::tcp::LINK_EVENT_QUEUE_MAX);
    let mut banks = HashMap::new();
    let mut acquirer_ids = HashMap::new();
    for b in &config.banks {
        let dialect = bank_dialects[&b.id];
        let endpoint = bank_endpoint(b, bank_tls.remove(&b.id).flatten(), links_shutdown).await?;
        let bank = start_bank(b, dialect, endpoint, &notice_tx, links_shutdown);
        banks.insert(b.id.clone(), bank);
        acquirer_ids.insert(b.id.clone(), b.acquirer_id.clone());
    }
    drop(notice_tx);
    let labels: Vec<(&str, Vec<&str>)> = banks
        .values()
        .map(|b: &Bank| {
            (
                b.config.id.as_str(),
                b.links.iter().map(|l| l.name()).collect(),
            )
        })
        .collect();
    metrics.init_bank_labels(&labels);
    tokio::spawn(log_notices(notice_rx, metrics.clone(), shared.clone()));
    Ok((banks, acquirer_ids))
}

/// One bank: its links spawned on `endpoint`, its STANs, its breaker.
fn start_bank(
    b: &crate::config::BankSection,
    dialect: &'static Dialect,
    endpoint: bank_links::LinkEndpoint,
    notice_tx: &mpsc::Sender<LinkNotice>,
    links_shutdown: &CancellationToken,
) -> Bank {
    let header = match &b.header_hex {
        Some(h) => Bytes::from(hex::decode(h).unwrap_or_default()),
        None => default_header(dialect),
    };
    // Start STANs where the clock puts them, so a restart does not replay the numbers
    // the bank saw just before.
    let stans = Arc::new(StanAllocator::starting_at(
        (codec::clock::unix_now() % 999_999) as u32 + 1,
    ));
    let mac = b.mac_key();
    let links = (0..b.links)
        .map(|i| {
            let lc = LinkConfig {
                name: format!("{}.{}", b.id, i),
                dialect,
                acquirer_id: b.acquirer_id.clone(),
                header: header.clone(),
                sign_on_timeout_ms: b.sign_on_timeout_ms,
                echo_idle_ms: b.echo_idle_ms,
                echo_timeout_ms: b.echo_timeout_ms,
                echo_missed_max: b.echo_missed_max,
                in_flight_max: b.in_flight_per_link,
                mac: mac.clone(),
            };
            let backoff = Backoff {
                min_ms: b.reconnect_min_ms,
                max_ms: b.reconnect_max_ms,
            };
            let (notices, shutdown) = (notice_tx.clone(), links_shutdown.clone());
            spawn_link(
                lc,
                endpoint.clone(),
                stans.clone(),
                backoff,
                notices,
                shutdown,
            )
        })
        .collect();
    let bc = BankConfig {
        id: b.id.clone(),
        dialect,
        request_timeout_ms: b.timeout_ms,
    };
    let breaker = bank_links::BreakerConfig {
        window_ms: b.breaker_window_ms,
        min_requests: b.breaker_min_requests,
        timeout_rate_permille: b.breaker_timeout_rate_percent * 10,
        open_ms: b.breaker_open_ms,
    };
    Bank::new(bc, stans, links, breaker)
}

/// The group-committed journal of the request path, and its task.
fn start_journal(config: &Config, metrics: Arc<Metrics>) -> (Journal, tokio::task::JoinHandle<()>) {
    let db = &config.database;
    Journal::start(
        JournalSettings {
            url: db.url.clone(),
            batch_max: db.journal_batch_max,
            writers: db.journal_writers,
            queue_max: db.journal_queue_max,
            commit_interval_us: db.journal_commit_interval_us,
            cutover_hours: i32::from(config.switch.business_day_cutover_hour),
        },
        metrics,
    )
}

/// The workers beside the request path, tracked, stopped together at shutdown.
#[derive(Debug, Default)]
struct Workers {
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Workers {
    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Each bank's store-and-forward and inquiry workers.
    fn spawn_per_bank(
        &self,
        config: &Config,
        shared: &Arc<dyn Store>,
        banks: &HashMap<String, Bank>,
        vault: &Arc<Vault>,
        reversal_wake: &Arc<Notify>,
        metrics: &Arc<Metrics>,
    ) {
        for b in &config.banks {
            let w = ReversalWorker {
                store: shared.clone(),
                bank: banks[&b.id].clone(),
                vault: vault.clone(),
                acquirer_id: b.acquirer_id.clone(),
                max_age_ms: b.reversal_max_age_ms,
                wake: reversal_wake.clone(),
                metrics: metrics.clone(),
            };
            self.spawn(w.run(self.shutdown.clone()));
            let inquiries = crate::inquiry::InquiryWorker {
                store: shared.clone(),
                bank: banks[&b.id].clone(),
                acquirer_id: b.acquirer_id.clone(),
                per_second: b.inquiries_per_second,
            };
            self.spawn(inquiries.run(self.shutdown.clone()));
        }
    }

    /// The back office's refund resumer and the admin gauges' sampler.
    fn spawn_admin(&self, admin: &Arc<SwitchAdmin>, listening: &Listening) {
        if let Some(desk) = &admin.backoffice.desk {
            self.spawn(desk.clone().run_resumer(self.shutdown.clone()));
        }
        self.spawn(crate::admin::sample(
            admin.clone(),
            listening.connections.clone(),
            self.shutdown.clone(),
        ));
    }

    /// The lease, the notifier, and the reference data's reload.
    fn spawn_instance(
        &self,
        config: &Config,
        stores: &Stores,
        engine: &Arc<Engine>,
        reversal_wake: &Arc<Notify>,
        metrics: &Arc<Metrics>,
        vault: &Arc<Vault>,
    ) {
        self.spawn(hold_lease(
            stores.shared.clone(),
            config,
            stores.incarnation,
            reversal_wake.clone(),
            metrics.clone(),
            self.shutdown.clone(),
        ));
        self.spawn(crate::notify::run(
            stores.shared.clone(),
            engine.outlets.clone(),
            stores.merchants.clone(),
            self.shutdown.clone(),
        ));
        // Reference data follows the database: periodically and on SIGHUP.
        self.spawn(reload_loop(
            stores.pool.clone(),
            vault.clone(),
            stores.merchants.clone(),
            stores.router.clone(),
            config.switch.reload_interval_ms,
            self.shutdown.clone(),
        ));
    }
}

/// What the engine is made of, beyond the configuration.
struct EngineParts<'a> {
    stores: &'a Stores,
    banks: HashMap<String, Bank>,
    acquirer_ids: HashMap<String, String>,
    /// The store with the journal: the request path's.
    store: Arc<dyn Store>,
    replays: crate::replays::Replays,
    vault: &'a Arc<Vault>,
    reversal_wake: &'a Arc<Notify>,
    metrics: &'a Arc<Metrics>,
}

/// The request path as production wires it: PostgreSQL, Redis, the links, the system
/// clock.
fn build_engine(config: &Config, p: EngineParts<'_>) -> Engine {
    Engine {
        instance_id: config.switch.instance_id,
        incarnation: p.stores.incarnation,
        merchants: p.stores.merchants.clone(),
        router: p.stores.router.clone(),
        banks: p.banks,
        store: p.store.clone(),
        limiter: Arc::new(p.stores.limiter.clone()),
        clock: Arc::new(crate::clock::SystemClock),
        replays: p.replays,
        vault: p.vault.clone(),
        ids: Ids::new(p.store),
        inflight: Arc::new(InFlight::default()),
        card_rate: Rate::new(
            config.limits.card_velocity_per_minute,
            60_000_000,
            config.limits.card_velocity_burst,
        ),
        acquirer_ids: p.acquirer_ids,
        reversal_wake: p.reversal_wake.clone(),
        outlets: Arc::new(crate::notify::Outlets::default()),
        metrics: p.metrics.clone(),
        limits_on_outage: config.redis.limits_on_outage,
        outcome_wait_ms: config.switch.outcome_wait_ms,
        bank_timeout_max_ms: config.bank_timeout_max_ms(),
    }
}

/// What every merchant listener shares with its sessions.
fn listening(config: &Config, engine: &Arc<Engine>) -> Listening {
    let l = &config.merchant_listener;
    Listening {
        engine: engine.clone(),
        limits: SessionLimits {
            max_in_flight_per_connection: l.max_in_flight_per_connection,
            max_connections_per_merchant: l.max_connections_per_merchant,
            idle_timeout_ms: l.idle_timeout_ms,
            write_timeout_ms: l.write_timeout_ms,
            max_message_len: l.max_message_len,
        },
        max_connections_total: l.max_connections_total,
        connections: Arc::new(MerchantConnections::default()),
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
        requests: TaskTracker::new(),
    }
}

/// The switch behind the admin HTTP surface, the back office with it.
fn switch_admin(
    config: &Config,
    engine: &Arc<Engine>,
    stores: &Stores,
    metrics: &Arc<Metrics>,
    vault: &Arc<Vault>,
) -> Arc<SwitchAdmin> {
    let pool = &stores.pool;
    Arc::new(SwitchAdmin {
        metrics: metrics.clone(),
        banks: engine.banks.clone(),
        store: stores.shared.clone(),
        pool: pool.clone(),
        limiter: stores.limiter.clone(),
        routes: crate::routing::RouteBook {
            pool: pool.clone(),
            banks: config.banks.iter().map(|b| b.id.clone()).collect(),
            live: Some(engine.router.clone()),
        },
        overview: crate::overview::Recorder::default(),
        backoffice: crate::backoffice::BackOffice {
            store: crate::store::accounts::AccountStore::new(pool.clone()),
            search: crate::store::search::TxnSearch::new(pool.clone()),
            pool: pool.clone(),
            merchants: Some(engine.merchants.clone()),
            desk: Some(refund_desk(config, engine, stores)),
            vault: vault.clone(),
            metrics: metrics.clone(),
            throttle: Default::default(),
        },
    })
}

/// The back office's refund desk.
fn refund_desk(
    config: &Config,
    engine: &Arc<Engine>,
    stores: &Stores,
) -> crate::refund_desk::RefundDesk {
    crate::refund_desk::RefundDesk {
        requests: crate::store::refund_requests::RefundRequests::new(stores.pool.clone()),
        engine: Arc::downgrade(engine),
        store: stores.shared.clone(),
        policy: crate::refund_desk::RefundPolicy {
            approval_above_minor: config
                .admin
                .as_ref()
                .map_or(10_000, |a| a.refund_approval_above_minor),
            request_ttl_ms: config
                .admin
                .as_ref()
                .map_or(24 * 3600 * 1000, |a| a.refund_request_ttl_ms),
            resume_after_ms: config.bank_timeout_max_ms() + config.switch.outcome_wait_ms,
        },
    }
}

/// Binds the admin listener when one is configured; its address.
async fn serve_admin(
    config: &Config,
    admin: Arc<SwitchAdmin>,
    admin_tls: Option<Arc<rustls::ServerConfig>>,
    admin_shutdown: &CancellationToken,
) -> Result<Option<SocketAddr>, StartError> {
    let Some(a) = &config.admin else {
        return Ok(None);
    };
    if admin_tls.is_none() {
        tracing::warn!(addr = %a.addr, "admin listener without TLS: passwords, session tokens and API keys cross the network in clear; set [admin] tls");
    }
    let tokens = a.tokens.clone();
    let (addr, _task) = admin_http::serve(a.addr, admin, tokens, admin_tls, admin_shutdown.clone())
        .await
        .map_err(|source| StartError::Bind {
            addr: a.addr,
            source,
        })?;
    Ok(Some(addr))
}

/// Binds the merchant listeners (TCP, TLS, QUIC) and starts accepting on each.
async fn bind_merchants(
    config: &Config,
    tls: Option<(SocketAddr, tokio_rustls::TlsAcceptor)>,
    listening: &Listening,
    listeners: &TaskTracker,
    admin: Option<SocketAddr>,
) -> Result<Bound, StartError> {
    let l = &config.merchant_listener;
    let mut bound = Bound {
        merchant_tcp: None,
        merchant_tls: None,
        merchant_quic: None,
        admin,
    };
    if let Some(addr) = l.tcp {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        bound.merchant_tcp = listener.local_addr().ok();
        listeners.spawn(accept_loop(listener, None, listening.clone()));
    }
    if let Some((addr, acceptor)) = tls {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        bound.merchant_tls = listener.local_addr().ok();
        listeners.spawn(accept_loop(listener, Some(acceptor), listening.clone()));
    }
    if let Some(q) = &l.quic {
        let endpoint = crate::quic::endpoint(
            q.addr,
            &q.cert_pem,
            &q.key_pem,
            l.max_in_flight_per_connection,
        )?;
        bound.merchant_quic = endpoint.local_addr().ok();
        listeners.spawn(crate::quic::accept_loop(endpoint, listening.clone()));
    }
    Ok(bound)
}

/// A running instance, as shutdown takes it apart.
struct Running {
    listening: Listening,
    listeners: TaskTracker,
    workers: Workers,
    admin_shutdown: CancellationToken,
    links_shutdown: CancellationToken,
    engine: Arc<Engine>,
    tasks: PathTasks,
}

impl Running {
    /// Stops accepting, waits (up to `shutdown_deadline_ms`) for accepted requests to be
    /// answered, stops the workers, lets the journal write what is queued, and signs the
    /// bank links off.
    async fn shut_down(self, config: &Config) {
        let deadline = Duration::from_millis(config.switch.shutdown_deadline_ms);
        tracing::info!(
            deadline_ms = deadline.as_millis() as u64,
            "shutting down: no new connections or requests"
        );
        let Running {
            listening,
            listeners,
            workers,
            admin_shutdown,
            links_shutdown,
            engine,
            tasks: (journal_task, replays_task),
        } = self;
        listening.shutdown.cancel();
        listeners.close();
        listening.sessions.close();
        listening.requests.close();
        let drained = tokio::time::timeout(deadline, async {
            listeners.wait().await;
            listening.requests.wait().await;
            listening.sessions.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = engine.inflight.len(),
                "shutdown deadline passed with requests in flight; recovery reverses them at the next start"
            );
        }
        workers.shutdown.cancel();
        admin_shutdown.cancel();
        workers.tracker.close();
        let stop_wait = Duration::from_millis(WORKERS_STOP_WAIT_MS);
        let _ = tokio::time::timeout(stop_wait, workers.tracker.wait()).await;
        links_shutdown.cancel();
        drop(listening);
        drop(engine);
        // Every journal handle is gone now: the collector writes what is queued and ends.
        let _ = tokio::time::timeout(deadline, journal_task).await;
        let _ = tokio::time::timeout(deadline, replays_task).await;
        // Let the links send their sign-offs.
        tokio::time::sleep(Duration::from_millis(SIGN_OFF_WAIT_MS)).await;
        tracing::info!("switch stopped");
    }
}

/// What the checks before start-up produce: each bank's dialect, the vault, the
/// merchant TLS acceptor, and each bank's TLS material (None over plain TCP).
pub struct Preflight {
    pub bank_dialects: HashMap<String, &'static Dialect>,
    pub vault: Arc<Vault>,
    pub merchant_tls: Option<(SocketAddr, tokio_rustls::TlsAcceptor)>,
    /// The admin listener's TLS configuration, when it has one.
    pub admin_tls: Option<Arc<rustls::ServerConfig>>,
    pub bank_tls: HashMap<String, Option<bank_links::TlsMaterial>>,
}

impl std::fmt::Debug for Preflight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preflight")
            .field("banks", &self.bank_dialects.keys())
            .finish_non_exhaustive()
    }
}

/// Every check `run` makes before it touches the network or binds a port, beyond
/// [`Config::validate`] (which loading already ran): dialects loaded and looked up, keys
/// made into a vault, every certificate and key parsed. `check-config` runs exactly this.
pub fn preflight(config: &Config) -> Result<Preflight, StartError> {
    let dialects = dialects::load(&config.switch.dialect_files)?;
    let mut bank_dialects = HashMap::new();
    let mut bank_tls = HashMap::new();
    for b in &config.banks {
        let d = dialects.get(&b.dialect).copied().ok_or_else(|| {
            StartError::Invalid(format!("bank {}: unknown dialect {:?}", b.id, b.dialect))
        })?;
        bank_dialects.insert(b.id.clone(), d);
        bank_tls.insert(b.id.clone(), bank_tls_material(b)?);
    }
    let key =
        |hex_key: &str| hex::decode(hex_key.trim()).map_err(|e| StartError::Invalid(e.to_string()));
    let sec = &config.security;
    let vault = Vault::new(&key(&sec.master_key_hex)?, &key(&sec.pan_hash_key_hex)?)
        .map_err(|e| StartError::Invalid(e.to_string()))?;
    let l = &config.merchant_listener;
    let merchant_tls = match &l.tls {
        Some(t) => Some((t.addr, tls_acceptor(&t.cert_pem, &t.key_pem)?)),
        None => None,
    };
    if let Some(q) = &l.quic {
        crate::server::tls_server_config(&q.cert_pem, &q.key_pem)?;
    }
    let admin_tls = match config.admin.as_ref().and_then(|a| a.tls.as_ref()) {
        Some(t) => Some(Arc::new(admin_http::tls::with_http_alpn(
            crate::server::tls_server_config(&t.cert_pem, &t.key_pem)?,
        ))),
        None => None,
    };
    Ok(Preflight {
        bank_dialects,
        vault: Arc::new(vault),
        merchant_tls,
        admin_tls,
        bank_tls,
    })
}

/// Resolves each connect-mode bank's address once, so a name that does not resolve is
/// reported at start; not fatal, since links resolve again on every connect (a bank's
/// name may appear later, as services start in any order).
pub async fn resolve_banks(config: &Config) -> Vec<String> {
    let mut unresolved = Vec::new();
    for b in &config.banks {
        let Some(addr) = b.addr.as_deref().filter(|_| b.mode == BankMode::Connect) else {
            continue;
        };
        match tokio::net::lookup_host(addr)
            .await
            .map(|found| found.count())
        {
            Ok(n) if n > 0 => {}
            Ok(_) => unresolved.push(format!("bank {}: {addr} resolves to no address", b.id)),
            Err(e) => unresolved.push(format!("bank {}: {addr} does not resolve: {e}", b.id)),
        }
    }
    for u in &unresolved {
        tracing::warn!("{u}; its links keep trying");
    }
    unresolved
}

fn bank_tls_material(
    b: &crate::config::BankSection,
) -> Result<Option<bank_links::TlsMaterial>, StartError> {
    let invalid = |e: &dyn std::fmt::Display| StartError::Invalid(format!("bank {}: {e}", b.id));
    match (b.transport, &b.cert_pem, &b.key_pem, &b.ca_pem) {
        (BankTransport::Tcp, ..) => Ok(None),
        (_, Some(cert), Some(key), Some(ca)) => {
            let name = b.server_name.as_deref().unwrap_or("localhost");
            bank_links::TlsMaterial::from_pem_files(cert, key, ca, name)
                .map(Some)
                .map_err(|e| invalid(&e))
        }
        _ => Err(invalid(&"TLS needs cert_pem, key_pem and ca_pem")),
    }
}

/// Where a bank's links get their connections: the transport, its certificates, and in
/// listen mode the bound listener they share.
/// Renews this instance's lease until shutdown ([`crate::lease`]). If another instance
/// took it over (it expired while this process could not reach PostgreSQL), that instance
/// is reversing this one's in-doubt transactions: answering them now could contradict
/// the record, so the process ends at once, with [`LEASE_LOST_EXIT_CODE`].
fn hold_lease(
    store: Arc<dyn Store>,
    config: &Config,
    incarnation: u64,
    reversal_wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + use<> {
    let lease = crate::lease::Lease {
        instance_id: config.switch.instance_id,
        incarnation: incarnation as i64,
        lease_ms: config.switch.lease_ms,
        stale_ms: config.bank_timeout_max_ms() + config.switch.outcome_wait_ms + STALE_MARGIN_MS,
    };
    async move {
        let held = crate::lease::run(store, lease, reversal_wake, metrics, shutdown).await;
        if let Err(lost) = held {
            tracing::error!(error = %lost, "stopping at once: another instance is resolving this one's transactions");
            std::process::exit(LEASE_LOST_EXIT_CODE);
        }
    }
}

async fn bank_endpoint(
    b: &crate::config::BankSection,
    tls: Option<bank_links::TlsMaterial>,
    shutdown: &CancellationToken,
) -> Result<bank_links::LinkEndpoint, StartError> {
    use bank_links::{BankListener, Connector, LinkEndpoint, TransportKind};
    let invalid = |e: &dyn std::fmt::Display| StartError::Invalid(format!("bank {}: {e}", b.id));
    let kind = match b.transport {
        BankTransport::Tcp => TransportKind::Tcp,
        BankTransport::Tls => TransportKind::Tls,
        BankTransport::Quic => TransportKind::Quic,
    };
    match (b.mode, &b.addr, b.listen_addr) {
        (BankMode::Connect, Some(addr), _) => Ok(LinkEndpoint::Connect {
            addr: addr.clone(),
            connector: Connector::new(kind, tls.as_ref()).map_err(|e| invalid(&e))?,
        }),
        (BankMode::Listen, _, Some(addr)) => {
            let l = BankListener::bind(addr, kind, tls.as_ref(), shutdown.clone())
                .await
                .map_err(|e| invalid(&e))?;
            tracing::info!(bank = %b.id, addr = %l.local_addr(), "listening for the bank's links");
            Ok(LinkEndpoint::Listen(l))
        }
        _ => Err(invalid(
            &"mode needs addr (connect) or listen_addr (listen)",
        )),
    }
}

/// A TPDU (0x60, destination 0001, source 0000) for dialects with a 5-byte header.
fn default_header(d: &Dialect) -> Bytes {
    match d.framing.header_len {
        0 => Bytes::new(),
        5 => Bytes::from_static(&[0x60, 0x00, 0x01, 0x00, 0x00]),
        n => Bytes::from(vec![0u8; usize::from(n)]),
    }
}

/// Late answers are counted and logged. A late approval needs no action of its own: its
/// request timed out, so its reversal is already stored and on its way to the bank.
/// Advices the bank starts are recorded and applied exactly once, then acknowledged.
async fn log_notices(
    mut rx: mpsc::Receiver<LinkNotice>,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
) {
    while let Some(n) = rx.recv().await {
        match n {
            LinkNotice::Late { link, message } => {
                metrics
                    .late_answers
                    .with_label_values(&[link.as_str()])
                    .inc();
                tracing::warn!(%link, mti = %message.mti(),
                    rrn = %message.get_str(37).unwrap_or_default(), rc = %message.get_str(39).unwrap_or_default(),
                    "late answer from bank (its request was already resolved)")
            }
            LinkNotice::Unsolicited {
                link,
                message,
                responder,
            } => {
                if message.mti().class() == 8 {
                    // Network management: the link answered it already.
                    continue;
                }
                // Links are named "<bank>.<index>".
                let bank = link.rsplit_once('.').map(|(b, _)| b).unwrap_or(&link);
                match crate::advices::apply(&*store, bank, &message).await {
                    Ok(crate::advices::AdviceEffect::Deferred) => {
                        tracing::info!(%link, rrn = %message.get_str(37).unwrap_or_default(),
                            "bank advice deferred until its transaction's outcome is recorded; left unacknowledged")
                    }
                    Ok(effect) => {
                        tracing::info!(%link, mti = %message.mti(), rrn = %message.get_str(37).unwrap_or_default(),
                            effect = effect.as_str(), "bank advice recorded");
                        if let Some(ack) = crate::advices::acknowledgement(&message) {
                            responder.answer(ack).await;
                        }
                    }
                    // Not durable, so not acknowledged: the bank repeats it.
                    Err(e) => {
                        tracing::warn!(%link, error = %e, "bank advice not recorded; left unacknowledged")
                    }
                }
            }
        }
    }
}

async fn reload_loop(
    pool: deadpool_postgres::Pool,
    vault: Arc<Vault>,
    merchants: Arc<Merchants>,
    router: Arc<Router>,
    interval_ms: u64,
    shutdown: CancellationToken,
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(interval_ms)) => {}
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading merchants and routes");
            }
        }
        if let Err(e) = merchants.reload(&pool, &vault).await {
            tracing::warn!(error = %e, "merchant reload failed; keeping the current table");
        }
        if let Err(e) = router.reload(&pool).await {
            tracing::warn!(error = %e, "route reload failed; keeping the current table");
        }
    }
}
