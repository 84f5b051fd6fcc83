//! The simulated world: one switch instance over the in-memory store and claims, its
//! banks, its merchants' connections; crashes (everything not durable lost: requests in
//! flight, workers, the in-flight table, breaker and STANs) and restarts with recovery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bank_links::{Bank, BankConfig, BreakerConfig, StanAllocator};
use bytes::Bytes;
use switch::clock::{Clock, TokioClock};
use switch::config::{LimitsOnOutage, RateAlgorithm};
use switch::crypto::Vault;
use switch::engine::{Engine, SessionState};
use switch::ids::Ids;
use switch::inflight::InFlight;
use switch::limiter::Rate;
use switch::mem::{MemClaims, MemStore};
use switch::merchants::{Merchant, Merchants};
use switch::metrics::Metrics;
use switch::notify::Outlets;
use switch::routing::{Route, RouteTable, Router};
use switch::store::Store;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::bank::SimBank;
use crate::dice::Dice;

/// The one switch instance's id.
pub const INSTANCE: i16 = 1;
/// Every bank's request timeout (ms).
pub const BANK_TIMEOUT_MS: u64 = 2_000;
/// How long an outcome write is retried before the answer is withheld (ms).
pub const OUTCOME_WAIT_MS: u64 = 3_000;
/// Notifications queued per merchant connection at most.
pub const OUTLET_QUEUE_MAX: usize = 256;
/// The virtual wall clock's start: 2026-03-01 00:00:00 UTC.
pub const START_UNIX_S: u64 = 1_772_323_200;

/// A running switch process.
struct Incarnation {
    engine: Arc<Engine>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    replays: JoinHandle<()>,
}

/// Everything one run shares.
pub struct World {
    pub dice: Dice,
    pub clock: Arc<dyn Clock>,
    pub store: MemStore,
    pub claims: MemClaims,
    pub banks: Vec<SimBank>,
    pub merchants: Arc<Merchants>,
    router: Arc<Router>,
    vault: Arc<Vault>,
    switch: Mutex<Option<Incarnation>>,
    restarts: AtomicU64,
    /// Each merchant's connection for notifications: (merchant, outlet).
    outlets: Vec<(String, mpsc::Sender<Bytes>)>,
    pub up: AtomicBool,
    /// What the limits do while Redis is away (chosen by the seed).
    limits_on_outage: LimitsOnOutage,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").finish_non_exhaustive()
    }
}

/// A merchant's id and MAC key (hex), allowed `rate_per_s` requests a second in bursts of
/// `rate_burst`.
pub fn merchant_record(id: &str, key_hex: &str, rate_per_s: u32, rate_burst: u32) -> Merchant {
    Merchant {
        id: id.to_string(),
        name: id.to_string(),
        enabled: true,
        currencies: vec![840],
        per_txn_limit_minor: 1_000_000,
        rate_per_s,
        rate_burst,
        mac_key: codec::MacKey::from_hex(key_hex).expect("hex key"),
        previous_mac_key: None,
    }
}

impl World {
    /// A world of `merchants` (id, hex key) and two banks; returns the world and each
    /// merchant's notification inbox.
    pub fn new(
        dice: Dice,
        merchants: &[(String, String)],
    ) -> (Arc<World>, Vec<mpsc::Receiver<Bytes>>) {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(START_UNIX_S));
        let store = MemStore::new(clock.clone());
        let claims = MemClaims::new(clock.clone(), RateAlgorithm::Gcra, 30_000, 86_400_000);
        let dialect = codec::builtin::bank_bcd();
        let banks = vec![
            SimBank::new("bank-a", dialect, dice.fork(1)),
            SimBank::new("bank-b", dialect, dice.fork(2)),
        ];
        let table: HashMap<String, Arc<Merchant>> = merchants
            .iter()
            .enumerate()
            .map(|(i, (id, key))| {
                // The last merchant is held to a tight rate: its terminals meet `65`.
                let (rate, burst) = if i + 1 == merchants.len() {
                    (2, 3)
                } else {
                    (50, 20)
                };
                (id.clone(), Arc::new(merchant_record(id, key, rate, burst)))
            })
            .collect();
        let m = Merchants::default();
        m.replace(table);
        let router = Router::default();
        let routes = [("4", "bank-a"), ("5", "bank-b")].map(|(bin, bank)| Route {
            low: bin.into(),
            high: bin.into(),
            bank_id: bank.into(),
            priority: 0,
        });
        router.replace(RouteTable::build(&routes).expect("routes"));
        let mut outlets = Vec::new();
        let mut inboxes = Vec::new();
        for (id, _) in merchants {
            let (tx, rx) = mpsc::channel(OUTLET_QUEUE_MAX);
            outlets.push((id.clone(), tx));
            inboxes.push(rx);
        }
        let limits_on_outage = if dice.chance(500) {
            LimitsOnOutage::FailClosed
        } else {
            LimitsOnOutage::FailOpen
        };
        let world = World {
            dice,
            clock,
            store,
            claims,
            banks,
            merchants: Arc::new(m),
            router: Arc::new(router),
            vault: Arc::new(Vault::new(&[7; 32], &[9; 32]).expect("keys")),
            switch: Mutex::new(None),
            restarts: AtomicU64::new(0),
            outlets,
            up: AtomicBool::new(false),
            limits_on_outage,
        };
        (Arc::new(world), inboxes)
    }

    fn switch(&self) -> MutexGuard<'_, Option<Incarnation>> {
        self.switch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `frame` to the running switch as a connection would and waits up to `wait`
    /// for its answer: `None` when none came (no switch, answer withheld, crashed, slow).
    pub async fn call(&self, frame: Bytes, wait: Duration) -> Option<Bytes> {
        let (tx, rx) = oneshot::channel();
        if !self.hand_over(frame, tx) {
            // Connection refused: the merchant notices at once, then waits its turn.
            tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
            return None;
        }
        tokio::time::timeout(wait, rx).await.ok()?.ok()?
    }

    /// Starts handling `frame` on the running switch, its answer to `tx`; false when no
    /// switch runs.
    fn hand_over(&self, frame: Bytes, tx: oneshot::Sender<Option<Bytes>>) -> bool {
        let mut sw = self.switch();
        let Some(inc) = sw.as_mut() else {
            return false;
        };
        while inc.tasks.try_join_next().is_some() {}
        let engine = inc.engine.clone();
        inc.tasks.spawn(async move {
            let handled = engine.handle(frame, &SessionState::default()).await;
            let _ = tx.send(handled.response);
        });
        true
    }

    /// Kills the switch: its tasks stop where they are; only the store and Redis keep
    /// anything.
    pub fn crash(&self) {
        if let Some(mut inc) = self.switch().take() {
            inc.shutdown.cancel();
            inc.tasks.abort_all();
            inc.replays.abort();
        }
        self.up.store(false, Ordering::SeqCst);
    }

    /// Starts a switch process: recovery first (until the store lets it), then the
    /// workers, then traffic.
    pub async fn start(self: &Arc<Self>) {
        while self.store.recover(INSTANCE).await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let incarnation = self.restarts.fetch_add(1, Ordering::SeqCst) + 1;
        while self
            .store
            .take_lease(INSTANCE, incarnation as i64, 10_000)
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (engine, replays) = self.engine(incarnation);
        let engine = Arc::new(engine);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        self.spawn_workers(&engine, incarnation, &mut tasks, &shutdown);
        for (i, (merchant, tx)) in self.outlets.iter().enumerate() {
            let signed_on = Arc::new(AtomicBool::new(true));
            engine
                .outlets
                .register(merchant, i as u64, tx.clone(), signed_on);
        }
        engine.outlets.wake.notify_one();
        *self.switch() = Some(Incarnation {
            engine,
            tasks,
            shutdown,
            replays,
        });
        self.up.store(true, Ordering::SeqCst);
    }
}

impl World {
    /// The switch's banks as this process sees them: fresh breakers and STANs over the
    /// simulated banks' wires.
    fn bank_handles(&self) -> HashMap<String, Bank> {
        let breaker = BreakerConfig {
            window_ms: 10_000,
            min_requests: 20,
            timeout_rate_permille: 500,
            open_ms: 2_000,
        };
        self.banks
            .iter()
            .map(|b| {
                let config = BankConfig {
                    id: b.id.clone(),
                    dialect: b.dialect,
                    request_timeout_ms: BANK_TIMEOUT_MS,
                };
                // Where the clock puts them, as the switch starts them.
                let first = (self.clock.unix_s() % 999_999) as u32 + 1;
                let stans = Arc::new(StanAllocator::starting_at(first));
                let wire = Arc::new(b.clone());
                let bank = Bank::over_wire(config, stans, wire, breaker, self.clock.mono());
                (b.id.clone(), bank)
            })
            .collect()
    }

    fn engine(&self, incarnation: u64) -> (Engine, JoinHandle<()>) {
        let store: Arc<dyn Store> = Arc::new(self.store.clone());
        let limiter = Arc::new(self.claims.clone());
        let metrics = Arc::new(Metrics::new());
        let (replays, task) = switch::replays::Replays::start(limiter.clone(), metrics.clone());
        let engine = Engine {
            instance_id: INSTANCE,
            incarnation,
            merchants: self.merchants.clone(),
            router: self.router.clone(),
            banks: self.bank_handles(),
            store: store.clone(),
            limiter,
            clock: self.clock.clone(),
            replays,
            vault: self.vault.clone(),
            ids: Ids::new(store),
            inflight: Arc::new(InFlight::default()),
            card_rate: Rate::new(30, 60_000_000, 10),
            acquirer_ids: HashMap::new(),
            reversal_wake: Arc::new(Notify::new()),
            outlets: Arc::new(Outlets::default()),
            metrics,
            limits_on_outage: self.limits_on_outage,
            outcome_wait_ms: OUTCOME_WAIT_MS,
            bank_timeout_max_ms: BANK_TIMEOUT_MS,
        };
        (engine, task)
    }

    /// The workers a switch process runs: store and forward and inquiries per bank,
    /// notifications, the lease with its sweep of stale requests.
    fn spawn_workers(
        &self,
        engine: &Arc<Engine>,
        incarnation: u64,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) {
        // In the world's order (the engine's map has none): the same seed, the same run.
        for bank in self.banks.iter().map(|b| &engine.banks[&b.id]) {
            let worker = switch::reversals::ReversalWorker {
                store: engine.store.clone(),
                bank: bank.clone(),
                vault: engine.vault.clone(),
                acquirer_id: String::new(),
                max_age_ms: 86_400_000,
                wake: engine.reversal_wake.clone(),
                metrics: engine.metrics.clone(),
            };
            tasks.spawn(worker.run(shutdown.clone()));
            let inquiries = switch::inquiry::InquiryWorker {
                store: engine.store.clone(),
                bank: bank.clone(),
                acquirer_id: String::new(),
                per_second: 5,
            };
            tasks.spawn(inquiries.run(shutdown.clone()));
        }
        tasks.spawn(switch::notify::run(
            engine.store.clone(),
            engine.outlets.clone(),
            engine.merchants.clone(),
            shutdown.clone(),
        ));
        let lease = switch::lease::Lease {
            instance_id: INSTANCE,
            incarnation: incarnation as i64,
            lease_ms: 10_000,
            stale_ms: BANK_TIMEOUT_MS + OUTCOME_WAIT_MS + switch::app::STALE_MARGIN_MS,
        };
        let (store, wake, metrics) = (
            engine.store.clone(),
            engine.reversal_wake.clone(),
            engine.metrics.clone(),
        );
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _ = switch::lease::run(store, lease, wake, metrics, shutdown).await;
        });
    }
}
