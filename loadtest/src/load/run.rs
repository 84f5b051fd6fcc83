//! One open-loop run against the switch (merchant contract) or the bare relay (bank
//! dialect): connections, the schedule, answers, progress, CPU, reconciliation.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use codec::{MacCheck, Mti, OwnedMessage, builtin};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::http::{self, HttpError};
use super::mix::{Kind, Mix, amount_minor, expected_code};
use super::proctree::Roots;
use super::reconcile::{self, OriginalAnswer, Reconciliation, Seen, SimRecord};
use super::schedule::{due_offset, slots};
use super::stats::{Collector, CpuReport, Observation, ProcessCpu, ReportSpec, RunReport};
use super::sysstat;
use super::window::{self, Observed, Sources, WindowSpec};
use crate::merchant::{
    self, Answer, Client, ClientError, Merchant, PurchaseSpec, luhn_complete, repeat_of,
};

/// Distinct card numbers per card family (so card velocity rules never bite).
pub const CARDS_PER_FAMILY: u64 = 100_000;
/// Answered purchases each connection keeps for later retransmission.
pub const RETRANSMIT_POOL_MAX: usize = 1024;
/// Requests whose outcome is kept for reconciliation at most (more are counted only).
pub const SEEN_MAX: usize = 5_000_000;
/// Connections a run opens at most.
pub const CONNECTIONS_MAX: usize = 1024;
/// The schedule starts this long after the connections are up.
const START_LEAD: Duration = Duration::from_millis(200);
/// How often the drain checks whether every answer is in, and reconciliation polls.
const DRAIN_POLL: Duration = Duration::from_millis(20);
const RECONCILE_POLL: Duration = Duration::from_secs(1);
/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Expiry date of every generated card (YYMM).
const EXPIRY: &str = "3012";
const CURRENCY: &str = "840";
/// DE32 and DE42 of the ceiling run's bank-dialect requests.
const RELAY_ACQUIRER: &str = "123456";
const RELAY_MERCHANT: &str = "LOADGEN-RELAY";
/// RRNs of the ceiling run: the run's nonce times this, plus the slot.
const RELAY_RRN_SLOTS: u64 = 100_000_000;
/// STANs run 1..=this per connection.
const STAN_MAX: u32 = 999_999;
/// Readiness probes: how long to keep trying, and the pause between tries.
pub const READY_WAIT: Duration = Duration::from_secs(60);
const READY_RETRY: Duration = Duration::from_millis(250);
/// How long a single probe waits for its answer.
const PROBE_ANSWER_WAIT: Duration = Duration::from_secs(10);
/// One card of each family the bench routes (bank-a: 4, bank-b: 51-55).
pub const PROBE_CARDS: [&str; 2] = ["4111111111111111", "5500000000000004"];

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("bank simulator record is not JSON: {0}")]
    Record(#[from] serde_json::Error),
    #[error("reading /proc: {0}")]
    Proc(#[from] std::io::Error),
    #[error("bank links not ready after {0:?}: last answer {1}")]
    NotReady(Duration, String),
    #[error("connections must be between 1 and {CONNECTIONS_MAX}")]
    Connections,
}

/// Where the load goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// The switch's merchant listener; connections take the merchants in turn.
    Switch {
        addr: SocketAddr,
        merchants: Vec<Merchant>,
    },
    /// The bare relay in front of a bank simulator, in the bank dialect.
    Relay { addr: SocketAddr },
}

impl Target {
    fn addr(&self) -> SocketAddr {
        match self {
            Target::Switch { addr, .. } | Target::Relay { addr } => *addr,
        }
    }
}

/// One run's set-up.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub name: String,
    pub target: Target,
    pub rate: u64,
    pub warmup_s: u64,
    pub duration_s: u64,
    pub connections: usize,
    pub mix: Mix,
    /// A request unanswered this long after the last one was due counts as lost.
    pub answer_timeout: Duration,
    /// Processes whose CPU time is measured over the whole run: (name, pid).
    pub processes: Vec<(String, u32)>,
    /// Roles whose CPU is measured over the measured window, by PID tree (loadgen
    /// adds itself).
    pub roots: Roots,
    /// The switch's metrics, Redis and PostgreSQL, read at the window's edges.
    pub sources: Sources,
    /// Control endpoints of the bank simulators behind the target.
    pub bank_controls: Vec<SocketAddr>,
    /// How long reconciliation waits for reversals of `91`s to reach the bank.
    pub reconcile_wait: Duration,
    /// Distinguishes this run's terminals, order references and RRNs (0..=999).
    pub nonce: u32,
    pub progress: bool,
    /// Send each request at its due time to within tens of microseconds (a timerfd per
    /// connection, [`super::due`]) rather than on tokio's 1 ms timer, which sends the
    /// schedule in bursts at each tick.
    pub precise_schedule: bool,
}

#[derive(Debug)]
struct Tag {
    kind: Kind,
    amount: u64,
    original: Option<OriginalAnswer>,
    /// The request, kept for a later retransmission.
    resend: Option<OwnedMessage>,
}

#[derive(Debug)]
struct Candidate {
    msg: OwnedMessage,
    amount: u64,
    answer: OriginalAnswer,
}

#[derive(Debug)]
struct Conn {
    client: Client<Tag>,
    merchant: Option<Merchant>,
    terminal: String,
    pool: Mutex<VecDeque<Candidate>>,
}

impl Conn {
    fn pool(&self) -> MutexGuard<'_, VecDeque<Candidate>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct State {
    collector: Collector,
    seen: Vec<Seen>,
    seen_dropped: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The terminal (DE41, 8 characters) of connection `c` in a run with `nonce`.
pub fn terminal(nonce: u32, c: usize) -> String {
    format!("L{:03}{:04}", nonce % 1000, c % 10_000)
}

/// Slots in a row that use one card family before the other takes over. Not 1: the mix
/// repeats every 100 slots or fewer, so a family picked by parity would send every
/// timeout (or every 51) to the same bank.
pub const CARD_FAMILY_RUN: u64 = 101;

/// A card of the family slot `seq` uses: bank-a (4...) and bank-b (51-55...) take turns
/// in runs of [`CARD_FAMILY_RUN`] slots.
pub fn card(seq: u64) -> String {
    let n = seq % CARDS_PER_FAMILY;
    if (seq / CARD_FAMILY_RUN).is_multiple_of(2) {
        luhn_complete(&format!("4{n:014}"))
    } else {
        luhn_complete(&format!("5{}{n:013}", 1 + seq % 5))
    }
}

fn bank_purchase(spec: &PurchaseSpec, rrn: u64) -> OwnedMessage {
    let mut m = OwnedMessage::new(Mti::FINANCIAL_REQUEST);
    let now = codec::clock::unix_now();
    let (time, date) = codec::clock::local_time_date(now);
    let f = &mut m.fields;
    f.insert(2, spec.pan.as_bytes().to_vec());
    f.insert(3, b"000000".to_vec());
    f.insert(4, format!("{:012}", spec.amount_minor).into_bytes());
    f.insert(7, spec.de7.to_vec());
    f.insert(11, merchant::stan_text(spec.stan).into_bytes());
    f.insert(12, time.to_vec());
    f.insert(13, date.to_vec());
    f.insert(14, spec.expiry.as_bytes().to_vec());
    f.insert(32, RELAY_ACQUIRER.as_bytes().to_vec());
    f.insert(37, format!("{rrn:012}").into_bytes());
    f.insert(41, spec.terminal.as_bytes().to_vec());
    f.insert(42, RELAY_MERCHANT.as_bytes().to_vec());
    f.insert(49, spec.currency.as_bytes().to_vec());
    m
}

/// Sends one connection's share of the schedule: slots c, c+n, c+2n, ...
#[allow(clippy::too_many_arguments)]
async fn send_loop(
    conn: Arc<Conn>,
    c: usize,
    n: usize,
    spec: Arc<RunSpec>,
    t0: Instant,
    total: u64,
    state: Shared,
) {
    let relay = matches!(spec.target, Target::Relay { .. });
    let mix = if relay {
        spec.mix.for_relay()
    } else {
        spec.mix
    };
    let keep_for_resend = !relay && mix.weight(Kind::Retransmit) > 0;
    let mut stan = 0u32;
    let mut i = c as u64;
    let mut timer = spec.precise_schedule.then(super::due::DueTimer::in_reactor);
    while i < total {
        let due = t0 + due_offset(i, spec.rate);
        match timer.as_mut() {
            Some(t) => t.sleep_until(due.into_std()).await,
            None if due > Instant::now() => tokio::time::sleep_until(due).await,
            None => {}
        }
        let mut kind = mix.kind_at(i);
        let mut resent = None;
        if kind == Kind::Retransmit {
            resent = conn.pool().pop_front();
            if resent.is_none() {
                kind = Kind::Purchase;
            }
        }
        let res = match resent {
            Some(cand) => {
                let msg = repeat_of(&cand.msg);
                let mac = conn.merchant.as_ref().map(|m| &m.key);
                let tag = Tag {
                    kind,
                    amount: cand.amount,
                    original: Some(cand.answer),
                    resend: None,
                };
                conn.client.send(&msg, mac, due, tag).await
            }
            None => {
                stan = stan % STAN_MAX + 1;
                let amount = amount_minor(kind, i);
                let p = PurchaseSpec {
                    stan,
                    de7: merchant::de7_now(),
                    terminal: conn.terminal.clone(),
                    pan: card(i),
                    amount_minor: amount,
                    expiry: EXPIRY.into(),
                    order: format!("LG{}-{c}-{i}", spec.nonce),
                    currency: CURRENCY.into(),
                };
                let (msg, mac) = match &conn.merchant {
                    Some(m) => (merchant::purchase(&m.id, &p), Some(&m.key)),
                    None => (
                        bank_purchase(&p, u64::from(spec.nonce) * RELAY_RRN_SLOTS + i),
                        None,
                    ),
                };
                let resend = (keep_for_resend && kind == Kind::Purchase).then(|| msg.clone());
                let tag = Tag {
                    kind,
                    amount,
                    original: None,
                    resend,
                };
                conn.client.send(&msg, mac, due, tag).await
            }
        };
        {
            let mut s = lock(&state);
            match res {
                Ok(()) => s.collector.sent += 1,
                Err(_) => s.collector.send_errors += 1,
            }
        }
        i += n as u64;
    }
}

fn text(m: &codec::Message, n: u8) -> Option<String> {
    m.get_str(n).map(|s| s.trim_end().to_owned())
}

fn handle_answer(conn: &Conn, state: &Shared, a: Answer<Tag>) {
    let code = a.code();
    let rrn = text(&a.message, 37);
    let auth = text(&a.message, 38);
    let mac_ok = conn
        .merchant
        .as_ref()
        .is_none_or(|m| a.message.check_mac(&m.key) == MacCheck::Valid);
    let tag = a.tag;
    let expected = expected_code(
        tag.kind,
        tag.amount,
        tag.original.as_ref().map(|o| o.code.as_str()),
    );
    {
        let mut s = lock(state);
        s.collector.record(Observation {
            kind: tag.kind,
            due: a.due,
            received: a.received,
            code: &code,
            expected: expected.as_deref(),
            mac_ok,
        });
        if s.seen.len() < SEEN_MAX {
            s.seen.push(Seen {
                kind: tag.kind,
                terminal: conn.terminal.clone(),
                amount_minor: tag.amount,
                code: Some(code.clone()),
                rrn: rrn.clone(),
                auth: auth.clone(),
                original: tag.original,
            });
        } else {
            s.seen_dropped += 1;
        }
    }
    if let Some(msg) = tag.resend
        && code == merchant::APPROVED
    {
        let mut pool = conn.pool();
        if pool.len() >= RETRANSMIT_POOL_MAX {
            pool.pop_front();
        }
        pool.push_back(Candidate {
            msg,
            amount: tag.amount,
            answer: OriginalAnswer { code, rrn, auth },
        });
    }
}

async fn answer_loop(
    conn: Arc<Conn>,
    mut rx: mpsc::UnboundedReceiver<Answer<Tag>>,
    state: Shared,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            a = rx.recv() => match a {
                Some(a) => handle_answer(&conn, &state, a),
                None => return,
            },
            _ = stop.cancelled() => {
                while let Ok(a) = rx.try_recv() {
                    handle_answer(&conn, &state, a);
                }
                return;
            }
        }
    }
}

#[allow(clippy::float_arithmetic)]
async fn progress_loop(
    name: String,
    t0: Instant,
    total_s: u64,
    conns: Vec<Arc<Conn>>,
    state: Shared,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(t0 + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sec = Instant::now().saturating_duration_since(t0).as_secs();
        let in_flight: usize = conns.iter().map(|c| c.client.in_flight()).sum();
        let s = lock(&state);
        let (answered, p99) = s
            .collector
            .second(sec.saturating_sub(1) as usize)
            .unwrap_or((0, 0.0));
        let errors = s.collector.unexpected + s.collector.send_errors + s.collector.bad_mac;
        eprintln!(
            "[{name} {sec:>3}/{total_s} s] {answered:>6}/s  p99 {p99:>8.2} ms  in flight {in_flight:>6}  unexpected codes {errors}"
        );
    }
}

fn cpu_now(processes: &[(String, u32)]) -> CpuSnapshot {
    let machine = sysstat::read_machine().unwrap_or_default();
    let procs = processes
        .iter()
        .map(|(_, pid)| sysstat::read_process(*pid).ok())
        .collect();
    (machine, procs)
}

/// The simulators' records, merged.
pub async fn fetch_records(controls: &[SocketAddr]) -> Result<SimRecord, RunError> {
    let mut all = vec![];
    for c in controls {
        let body = http::request(*c, "GET", "/record").await?;
        all.push(serde_json::from_str::<SimRecord>(&body)?);
    }
    Ok(SimRecord::merge(all))
}

/// Polls the simulators until every `91` is reversed or `wait` passes, then reconciles.
pub async fn reconcile_with_bank(
    seen: &[Seen],
    controls: &[SocketAddr],
    terminals: &HashSet<String>,
    wait: Duration,
) -> Result<Reconciliation, RunError> {
    let deadline = Instant::now() + wait;
    loop {
        let sim = fetch_records(controls).await?;
        let pending = reconcile::timeouts_unreversed(seen, &sim);
        if pending.is_empty() || Instant::now() >= deadline {
            return Ok(reconcile::reconcile(seen, &sim, terminals));
        }
        tokio::time::sleep(RECONCILE_POLL).await;
    }
}

/// Empties the simulators' records so a run reconciles against its own traffic only.
pub async fn reset_banks(controls: &[SocketAddr]) -> Result<(), RunError> {
    for c in controls {
        http::request(*c, "POST", "/reset").await?;
    }
    Ok(())
}

/// Sends a purchase of each probe card until none is answered `91` (bank link not yet
/// signed on), within [`READY_WAIT`].
pub async fn wait_links_ready(addr: SocketAddr, m: &Merchant) -> Result<(), RunError> {
    let (client, mut rx) = Client::<()>::connect(addr, builtin::merchant()).await?;
    let deadline = Instant::now() + READY_WAIT;
    let mut stan = 0u32;
    for pan in PROBE_CARDS {
        loop {
            stan += 1;
            let p = PurchaseSpec {
                stan,
                de7: merchant::de7_now(),
                terminal: "PROBE001".into(),
                pan: pan.into(),
                amount_minor: 100,
                expiry: EXPIRY.into(),
                order: format!("PROBE-{}-{stan}", codec::clock::unix_now()),
                currency: CURRENCY.into(),
            };
            let msg = merchant::purchase(&m.id, &p);
            let a = merchant::call(&client, &mut rx, &msg, Some(&m.key), PROBE_ANSWER_WAIT).await?;
            let code = a.code();
            if code == merchant::APPROVED {
                break;
            }
            if Instant::now() >= deadline {
                return Err(RunError::NotReady(READY_WAIT, code));
            }
            tokio::time::sleep(READY_RETRY).await;
        }
    }
    Ok(())
}

type Receivers = Vec<mpsc::UnboundedReceiver<Answer<Tag>>>;

/// Opens the run's connections; each takes the next merchant in turn.
async fn connect_all(spec: &RunSpec) -> Result<(Vec<Arc<Conn>>, Receivers), RunError> {
    let dialect = match spec.target {
        Target::Switch { .. } => builtin::merchant(),
        Target::Relay { .. } => builtin::bank_bcd(),
    };
    let mut conns = Vec::with_capacity(spec.connections);
    let mut receivers = Vec::with_capacity(spec.connections);
    for c in 0..spec.connections {
        let (client, rx) = Client::<Tag>::connect(spec.target.addr(), dialect).await?;
        let merchant = match &spec.target {
            Target::Switch { merchants, .. } => merchants.get(c % merchants.len().max(1)).cloned(),
            Target::Relay { .. } => None,
        };
        conns.push(Arc::new(Conn {
            client,
            merchant,
            terminal: terminal(spec.nonce, c),
            pool: Mutex::new(VecDeque::new()),
        }));
        receivers.push(rx);
    }
    Ok((conns, receivers))
}

/// The tasks that run beside the senders.
struct Tasks {
    answers: Vec<JoinHandle<()>>,
    progress: Option<JoinHandle<()>>,
    window: JoinHandle<Observed>,
    stop: CancellationToken,
}

fn start_tasks(
    spec: &Arc<RunSpec>,
    conns: &[Arc<Conn>],
    receivers: Receivers,
    state: &Shared,
    t0: Instant,
) -> Tasks {
    let stop = CancellationToken::new();
    let answers = conns
        .iter()
        .zip(receivers)
        .map(|(conn, rx)| tokio::spawn(answer_loop(conn.clone(), rx, state.clone(), stop.clone())))
        .collect();
    let progress = spec.progress.then(|| {
        tokio::spawn(progress_loop(
            spec.name.clone(),
            t0,
            spec.warmup_s + spec.duration_s,
            conns.to_vec(),
            state.clone(),
            stop.clone(),
        ))
    });
    let mut roots = spec.roots.clone();
    roots.add("loadgen", std::process::id());
    let start = t0 + Duration::from_secs(spec.warmup_s);
    let window = tokio::spawn(window::observe(WindowSpec {
        roots,
        start,
        end: start + Duration::from_secs(spec.duration_s),
        switch_sources: matches!(spec.target, Target::Switch { .. }),
        sources: spec.sources.clone(),
    }));
    Tasks {
        answers,
        progress,
        window,
        stop,
    }
}

/// Sends the whole schedule, then waits for the answers (at most the answer timeout
/// after the last request was due), then stops the tasks; returns what the window saw.
async fn send_and_drain(
    spec: &Arc<RunSpec>,
    conns: &[Arc<Conn>],
    tasks: Tasks,
    state: &Shared,
    t0: Instant,
) -> Observed {
    let total = slots(spec.rate, spec.warmup_s + spec.duration_s);
    let senders: Vec<_> = conns
        .iter()
        .enumerate()
        .map(|(c, conn)| {
            let args = (conn.clone(), c, conns.len(), spec.clone(), t0, total);
            tokio::spawn(send_loop(
                args.0,
                args.1,
                args.2,
                args.3,
                args.4,
                args.5,
                state.clone(),
            ))
        })
        .collect();
    for s in senders {
        let _ = s.await;
    }
    let last_due = t0 + due_offset(total.saturating_sub(1), spec.rate);
    let drain_deadline = last_due.max(Instant::now()) + spec.answer_timeout;
    while Instant::now() < drain_deadline && conns.iter().any(|c| c.client.in_flight() > 0) {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    tasks.stop.cancel();
    for t in tasks.answers {
        let _ = t.await;
    }
    if let Some(p) = tasks.progress {
        let _ = p.await;
    }
    tasks.window.await.unwrap_or_else(|e| Observed {
        notes: vec![format!("window observer failed: {e}")],
        ..Observed::default()
    })
}

/// Counts what is still unanswered as lost (and keeps it for reconciliation); returns
/// the answers that matched no request.
fn abandon_pending(conns: &[Arc<Conn>], state: &Shared) -> u64 {
    let mut unmatched = 0;
    let mut s = lock(state);
    for conn in conns {
        unmatched += conn.client.unmatched();
        for (_, tag) in conn.client.abandon_pending() {
            s.collector.no_answer += 1;
            s.seen.push(Seen {
                kind: tag.kind,
                terminal: conn.terminal.clone(),
                amount_minor: tag.amount,
                code: None,
                rrn: None,
                auth: None,
                original: tag.original,
            });
        }
    }
    unmatched
}

type CpuSnapshot = (sysstat::MachineTicks, Vec<Option<u64>>);

/// The whole run's CPU figures (warm-up included) of the listed processes, and steal.
fn cpu_report(
    processes: &[(String, u32)],
    a: &CpuSnapshot,
    b: &CpuSnapshot,
    answered: u64,
) -> CpuReport {
    let machine = b.0.since(&a.0);
    #[allow(clippy::float_arithmetic)]
    let steal_pct = if machine.total == 0 {
        0.0
    } else {
        machine.steal as f64 * 100.0 / machine.total as f64
    };
    let processes = processes
        .iter()
        .zip(a.1.iter().zip(&b.1))
        .map(|((name, pid), (a, b))| {
            let ticks = match (a, b) {
                (Some(a), Some(b)) => b.saturating_sub(*a),
                _ => 0,
            };
            ProcessCpu {
                name: name.clone(),
                pid: *pid,
                ticks,
                us_per_txn: sysstat::micros_per_txn(ticks, answered),
            }
        })
        .collect();
    CpuReport {
        steal_ticks: machine.steal,
        total_ticks: machine.total,
        steal_pct,
        processes,
    }
}

fn report_spec(spec: &RunSpec) -> ReportSpec {
    ReportSpec {
        name: spec.name.clone(),
        target: spec.target.addr().to_string(),
        rate: spec.rate,
        connections: spec.connections,
        warmup_s: spec.warmup_s,
        duration_s: spec.duration_s,
        mix: match spec.target {
            Target::Switch { .. } => spec.mix.to_string(),
            Target::Relay { .. } => spec.mix.for_relay().to_string(),
        },
    }
}

/// Room for every request the run sends (at most [`SEEN_MAX`]), reserved up front so
/// that the list never reallocates while answers wait for its lock (the same kind of
/// pause the bank simulator's tables made: docs/loadtest.md, 2026-12-03 later). The
/// reservation is address space; pages are touched only as entries arrive.
fn seen_capacity(rate: u64, warmup_s: u64, duration_s: u64) -> usize {
    let seconds = warmup_s.saturating_add(duration_s);
    usize::try_from(rate.saturating_mul(seconds))
        .unwrap_or(SEEN_MAX)
        .min(SEEN_MAX)
}

/// An empty list with room for `n`, or less room if that much cannot be had: a run
/// without the reservation only reallocates as it goes.
fn reserved(n: usize) -> Vec<Seen> {
    let mut v = Vec::new();
    if v.try_reserve_exact(n).is_err() {
        let _ = v.try_reserve_exact(n / 8);
    }
    v
}

/// Runs one open-loop load run and reconciles it.
pub async fn run(spec: RunSpec) -> Result<RunReport, RunError> {
    if spec.connections == 0 || spec.connections > CONNECTIONS_MAX {
        return Err(RunError::Connections);
    }
    let spec = Arc::new(spec);
    reset_banks(&spec.bank_controls).await?;
    let (conns, receivers) = connect_all(&spec).await?;
    let terminals: HashSet<String> = conns.iter().map(|c| c.terminal.clone()).collect();
    let mut processes = spec.processes.clone();
    processes.push(("loadgen".into(), std::process::id()));
    let cpu0 = cpu_now(&processes);

    let t0 = Instant::now() + START_LEAD;
    let state: Shared = Arc::new(Mutex::new(State {
        collector: Collector::new(
            t0,
            Duration::from_secs(spec.warmup_s),
            Duration::from_secs(spec.duration_s),
        ),
        seen: reserved(seen_capacity(spec.rate, spec.warmup_s, spec.duration_s)),
        seen_dropped: 0,
    }));
    let tasks = start_tasks(&spec, &conns, receivers, &state, t0);
    let observed = send_and_drain(&spec, &conns, tasks, &state, t0).await;
    let cpu1 = cpu_now(&processes);
    let unmatched = abandon_pending(&conns, &state);
    drop(conns);

    let (seen, mut report) = {
        let mut s = lock(&state);
        let report = s.collector.report(report_spec(&spec));
        (std::mem::take(&mut s.seen), report)
    };
    report.unmatched = unmatched;
    report.cpu = cpu_report(&processes, &cpu0, &cpu1, report.answered);
    report.apply_window(observed);
    if !spec.bank_controls.is_empty() {
        report.reconciliation =
            reconcile_with_bank(&seen, &spec.bank_controls, &terminals, spec.reconcile_wait)
                .await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the reconciliation list is reserved for every request of the schedule
    // (warm-up included), never beyond SEEN_MAX, and without overflow.
    #[test]
    fn seen_room_is_the_whole_schedule_up_to_the_cap() {
        assert_eq!(seen_capacity(5_000, 5, 60), 325_000);
        assert_eq!(seen_capacity(0, 5, 60), 0);
        assert_eq!(seen_capacity(1_000_000, 5, 60), SEEN_MAX);
        assert_eq!(
            seen_capacity(u64::MAX, u64::MAX, 1),
            SEEN_MAX,
            "no overflow"
        );
    }

    // Proves generated cards pass Luhn, take turns between the two routed families, and
    // that slots one mix period apart (same kind) reach both banks.
    #[test]
    fn cards_by_family() {
        let a = card(0);
        let b = card(CARD_FAMILY_RUN);
        assert!(a.starts_with('4') && a.len() == 16);
        assert!(b.starts_with('5') && (b'1'..=b'5').contains(&b.as_bytes()[1]));
        assert_eq!(luhn_complete(&a[..15]), a);
        assert_eq!(luhn_complete(&b[..15]), b);
        assert_ne!(card(2), card(0));
        let families: std::collections::HashSet<u8> =
            (0..10).map(|k| card(7 + 100 * k).as_bytes()[0]).collect();
        assert_eq!(families.len(), 2);
    }

    // Proves terminals are eight characters and distinct per connection and nonce.
    #[test]
    fn terminals_distinct() {
        assert_eq!(terminal(7, 12), "L0070012");
        assert_ne!(terminal(7, 12), terminal(8, 12));
        assert_eq!(terminal(1234, 99_999).len(), 8);
    }

    // Proves the ceiling's bank-dialect purchase encodes with the bank's elements.
    #[test]
    fn bank_purchase_encodes() {
        let p = PurchaseSpec {
            stan: 5,
            de7: *b"1126120000",
            terminal: terminal(1, 1),
            pan: card(0),
            amount_minor: 10_051,
            expiry: EXPIRY.into(),
            order: String::new(),
            currency: CURRENCY.into(),
        };
        let d = builtin::bank_bcd();
        let m = d.decode(bank_purchase(&p, 42).encode(d).unwrap()).unwrap();
        assert_eq!(m.get_str(37).unwrap(), "000000000042");
        assert_eq!(m.get_u64(4), Some(10_051));
        assert_eq!(
            m.fields().collect::<Vec<_>>(),
            [2, 3, 4, 7, 11, 12, 13, 14, 32, 37, 41, 42, 49]
        );
    }
}
