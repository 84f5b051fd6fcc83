//! The durable journal with group commit.
//!
//! Requests hand their records to one queue; a collector takes whatever has gathered
//! (up to `batch_max`) as soon as a writer is free and writes it in ONE statement (one
//! commit): inserts, outcome updates and reversal records together. While the writers
//! are busy, the next batch grows, so commits per second stay flat as load rises.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::Statement;
use tokio_postgres::error::SqlState;

use crate::checks::Kind;
use crate::content::ContentDigest;
use crate::db::DbError;
use crate::lifecycle::{ReversalReason, State};
use crate::metrics::Metrics;

/// A transaction record as first written (before anything goes to a bank).
#[derive(Debug, Clone)]
pub struct NewTxn {
    pub id: i64,
    pub instance_id: i16,
    pub merchant_id: String,
    pub terminal_id: String,
    pub stan: String,
    pub transmitted_at: String,
    pub mti: String,
    pub kind: Kind,
    pub processing_code: String,
    pub amount_minor: i64,
    pub currency: i16,
    pub order_ref: Option<String>,
    pub pan_hash: Option<Vec<u8>>,
    pub pan_last4: Option<String>,
    pub card_enc: Option<Vec<u8>>,
    pub rrn: String,
    pub bank_id: Option<String>,
    pub bank_stan: Option<String>,
    pub bank_transmitted_at: Option<String>,
    pub original_id: Option<i64>,
    pub state: State,
    pub response_code: Option<String>,
    pub reason: Option<String>,
    /// DE48 `RR` of a refund (not written by the journal: its rows are never refunds).
    pub refund_reason: Option<String>,
    /// The request's content digest ([`crate::content`]); None for rows the switch makes
    /// itself (bank advices).
    pub content: Option<ContentDigest>,
}

/// A transaction's outcome as the journal writes it (a row update), and the reversal it
/// needs if the outcome is unknown. Not to be confused with [`bank_links::Outcome`], what
/// a bank exchange came to.
#[derive(Debug, Clone)]
pub struct OutcomeRecord {
    pub id: i64,
    /// The transaction's kind, as recorded: an approved purchase's outcome is appended as
    /// a settlement (migrations/V16), every other one updates the row.
    pub kind: Kind,
    pub state: State,
    pub response_code: String,
    pub auth_code: Option<String>,
    /// (bank id, reason): a reversal to store and forward, written in the same commit.
    pub reversal: Option<(String, ReversalReason)>,
}

impl OutcomeRecord {
    /// Whether this outcome is appended as a settlement (an approved purchase, which its
    /// capture makes final: migrations/V16) rather than written over its row.
    pub fn appends(&self) -> bool {
        self.kind == Kind::Purchase && self.state == State::Approved
    }
}

/// The journal could not record: the caller answers `96` (before a bank was asked) or
/// retries (after).
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The batch may or may not have committed (the connection was lost while it ran).
    #[error("journal write failed: {0}")]
    Write(String),
    /// The batch certainly did not commit (no connection could be made, or the statement
    /// was refused).
    #[error("journal write not made: {0}")]
    NotWritten(String),
    #[error("journal has stopped")]
    Stopped,
}

enum Op {
    Insert(Arc<NewTxn>, oneshot::Sender<Result<bool, JournalError>>),
    Update(OutcomeRecord, oneshot::Sender<Result<bool, JournalError>>),
}

impl Op {
    /// Tells the waiting request how its record fared: the ids the batch inserted or
    /// settled, or why
    /// it was not written.
    fn ack(self, written: Result<&HashSet<i64>, &JournalError>) {
        match self {
            Op::Insert(t, ack) => {
                let _ = ack.send(written.map(|ids| ids.contains(&t.id)).map_err(Clone::clone));
            }
            Op::Update(o, ack) => {
                let _ = ack.send(written.map(|ids| ids.contains(&o.id)).map_err(Clone::clone));
            }
        }
    }
}

/// The handle requests use.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::Sender<Op>,
    /// `switchyard_journal_wait_seconds` for requests' and outcomes' records.
    request_wait: prometheus::Histogram,
    outcome_wait: prometheus::Histogram,
}

impl Journal {
    /// Starts `settings.writers` writer tasks, each with a database connection of its own
    /// and the batch statement prepared once. They end, after writing everything queued,
    /// when every handle is dropped.
    pub fn start(
        settings: JournalSettings,
        metrics: Arc<Metrics>,
    ) -> (Journal, tokio::task::JoinHandle<()>) {
        let JournalSettings {
            url,
            batch_max,
            writers,
            queue_max,
            commit_interval_us,
            cutover_hours,
        } = settings;
        assert!(batch_max > 0 && writers > 0 && queue_max > 0);
        assert!((0..24).contains(&cutover_hours));
        let (tx, rx) = mpsc::channel(queue_max);
        let queue = Arc::new(Mutex::new(Queue {
            rx,
            pacing: Pacing::new(Duration::from_micros(commit_interval_us)),
        }));
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let w = Writer {
                    url: url.clone(),
                    conn: None,
                    metrics: metrics.clone(),
                    cutover_hours,
                    slow: SlowCommits::default(),
                };
                tokio::spawn(w.run(queue.clone(), batch_max))
            })
            .collect();
        let all = tokio::spawn(async move {
            for t in tasks {
                let _ = t.await;
            }
        });
        let journal = Journal {
            tx,
            request_wait: metrics.journal_wait.with_label_values(&["request"]),
            outcome_wait: metrics.journal_wait.with_label_values(&["outcome"]),
        };
        (journal, all)
    }

    /// Records a new transaction; `Ok(false)` if a row with the same request key (or a
    /// live row with the same order reference) already exists.
    pub async fn insert(&self, t: Arc<NewTxn>) -> Result<bool, JournalError> {
        let (ack, rx) = oneshot::channel();
        self.queued(Op::Insert(t, ack), rx, &self.request_wait)
            .await
    }

    /// Records an outcome (and its reversal, if any); `Ok(false)` if the request was
    /// settled already (by recovery, or by this outcome written before while its
    /// acknowledgement was lost), so that the record, not this outcome, is the answer.
    pub async fn record_outcome(&self, o: OutcomeRecord) -> Result<bool, JournalError> {
        let (ack, rx) = oneshot::channel();
        self.queued(Op::Update(o, ack), rx, &self.outcome_wait)
            .await
    }

    /// Queues `op` and waits for its acknowledgement on `rx`, timed into `wait`.
    async fn queued(
        &self,
        op: Op,
        rx: oneshot::Receiver<Result<bool, JournalError>>,
        wait: &prometheus::Histogram,
    ) -> Result<bool, JournalError> {
        let queued = Instant::now();
        self.tx.send(op).await.map_err(|_| JournalError::Stopped)?;
        let acked = rx.await.map_err(|_| JournalError::Stopped)?;
        wait.observe(queued.elapsed().as_secs_f64());
        acked
    }
}

/// How the journal writes: `[database]` settings (docs/operations.md).
#[derive(Debug, Clone)]
pub struct JournalSettings {
    pub url: String,
    /// Records written in one commit at most.
    pub batch_max: usize,
    /// Batches committing at once at most, one connection each.
    pub writers: usize,
    /// Records waiting at most; requests wait for room beyond it.
    pub queue_max: usize,
    /// Least time between the start of a commit of [`PACE_FROM_RECORDS`] records or more
    /// and the next, in µs (0: none): while it runs, the next batch grows, so under load
    /// commits per second stay at most 1,000,000 / this ([`Pacing`]).
    pub commit_interval_us: u64,
    /// The business day starts at this hour, UTC (0..24).
    pub cutover_hours: i32,
}

/// Batches smaller than this are followed by no pause: so few records queued behind the
/// commit before them that the database keeps up with commits as they come. Measured at
/// 1,500 purchases/s (3,000 records/s) with the pause after every batch of two or more:
/// batches of 3.9 records and each durable wait about the commit plus half a pacing
/// interval (1.6 and 1.3 ms against 0.79 ms commits), p50 3.4 ms above the relay's. With
/// this threshold: batches of 2.0, waits of 1.16 and 0.96 ms, p50 +2.1 ms, for twice the
/// commits (75 µs more database CPU per purchase, the machine half idle). At 5,000/s
/// batches hold 12-14 records, far above it (docs/loadtest.md, 2026-12-03 evening).
/// Should a burst outrun the commits, the batches grow past it and the pacing takes over
/// again.
const PACE_FROM_RECORDS: usize = 4;

/// When the next batch may be taken: at least `interval` after the previous one was, if
/// that one held [`PACE_FROM_RECORDS`] records or more. Smaller batches mean little
/// queued behind each commit: the load is light, the database keeps up with a commit
/// per batch, and a pause would only add to each record's wait (up to a tick of
/// tokio's timer when nothing else arrives, [`gather_until`]). So commits per second stay
/// at most 1,000,000 / `interval` µs whenever batches are larger.
/// A plain decision over times and sizes passed in (the writer's clock is the shell's).
#[derive(Debug)]
struct Pacing {
    interval: Duration,
    last_taken: Option<Instant>,
    last_records: usize,
}

impl Pacing {
    fn new(interval: Duration) -> Pacing {
        Pacing {
            interval,
            last_taken: None,
            last_records: 0,
        }
    }

    /// The instant to wait for before taking a batch at `now`, if any.
    fn wait_until(&self, now: Instant) -> Option<Instant> {
        if self.last_records < PACE_FROM_RECORDS {
            return None;
        }
        let next = self.last_taken? + self.interval;
        (next > now).then_some(next)
    }

    /// A batch of `records` was taken at `now`.
    fn taken(&mut self, now: Instant, records: usize) {
        debug_assert!(
            self.last_taken.is_none_or(|t| t <= now),
            "time goes forward"
        );
        debug_assert!(records > 0, "a batch holds a record at least");
        self.last_taken = Some(now);
        self.last_records = records;
    }
}

/// Waits out the pacing interval (until `until`), taking the records that arrive meanwhile
/// into `batch` (at most `batch_max`: a full batch is written at once). Each arrival
/// wakes the writer, a task wake-up on the runtime's own thread, and the wait ends at the
/// first arrival past `until`; tokio's timer ends it when nothing arrives, which rounds to
/// its millisecond ticks and can be up to about 2 ms late. Under load records arrive every
/// few hundred microseconds at most, so the batch is taken close to `until` without a
/// timer of finer grain; and [`Pacing`] does not pause at light load. (Measured before: a
/// blocking-pool thread sleeping out the pause cost about 6 % of the switch's CPU in
/// thread wake-ups at 5,000 purchases/s, perf 2026-12-03; a timerfd in the reactor 1.6 µs
/// less per purchase than that, but its exact pauses made 8 % more commits, and 4 µs more
/// database CPU per purchase.)
async fn gather_until(
    rx: &mut mpsc::Receiver<Op>,
    batch: &mut Vec<Op>,
    batch_max: usize,
    until: Instant,
) {
    let coarse = tokio::time::sleep_until(until.into());
    tokio::pin!(coarse);
    while batch.len() < batch_max && Instant::now() < until {
        tokio::select! {
            biased;
            op = rx.recv() => match op {
                Some(op) => batch.push(op),
                // Every handle is gone: write what was taken; the next receive ends the
                // writer.
                None => return,
            },
            () = &mut coarse => return,
        }
    }
}

/// Room reserved for a batch before it is taken, at most: `journal_batch_max` may be large,
/// and a batch is mostly far below it.
const BATCH_RESERVE_MAX: usize = 1024;

/// The records waiting, and when the next batch may be taken.
struct Queue {
    rx: mpsc::Receiver<Op>,
    pacing: Pacing,
}

/// The parts of the batch statement a batch needs beyond its inserts, approvals and
/// settled in-doubt rows: outcomes that update their rows, reversals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Form {
    update: bool,
    reversal: bool,
}

impl Form {
    /// Every form, in the order of [`Form::index`].
    const ALL: [Form; 4] = [
        Form {
            update: false,
            reversal: false,
        },
        Form {
            update: false,
            reversal: true,
        },
        Form {
            update: true,
            reversal: false,
        },
        Form {
            update: true,
            reversal: true,
        },
    ];

    fn of(c: &Columns<'_>) -> Form {
        Form {
            update: !c.u_id.is_empty(),
            reversal: !c.r_id.is_empty(),
        }
    }

    fn index(self) -> usize {
        usize::from(self.update) * 2 + usize::from(self.reversal)
    }

    /// The statement's text: fast (no conflict clauses) or safe.
    fn sql(self, fast: bool) -> String {
        let sql = match (self.update, fast) {
            (true, true) => BATCH_SQL_FAST,
            (true, false) => BATCH_SQL,
            (false, true) => BATCH_SQL_FAST_NO_UPDATE,
            (false, false) => BATCH_SQL_NO_UPDATE,
        };
        if self.reversal {
            sql.to_owned()
        } else {
            without_reversals(sql)
        }
    }
}

/// A writer's connection and the forms of the batch statement prepared on it.
struct Connection {
    client: tokio_postgres::Client,
    /// Per [`Form`] (by [`Form::index`]): the fast form, then the safe one.
    forms: Vec<[Statement; 2]>,
}

impl Connection {
    /// Prepares the batch statement's forms on `client`, set up as a writer's session.
    async fn prepare(client: tokio_postgres::Client) -> Result<Connection, tokio_postgres::Error> {
        client.batch_execute(WRITER_SESSION_SQL).await?;
        let mut forms = Vec::with_capacity(Form::ALL.len());
        for form in Form::ALL {
            debug_assert_eq!(form.index(), forms.len());
            let fast = client.prepare(&form.sql(true)).await?;
            let safe = client.prepare(&form.sql(false)).await?;
            forms.push([fast, safe]);
        }
        Ok(Connection { client, forms })
    }

    /// Writes a batch in one statement: the fast form first, the safe form again if the
    /// fast one met a row that exists already. The ids of the transactions inserted or
    /// settled.
    async fn write(&self, batch: &[Op], cutover_hours: i32) -> Result<HashSet<i64>, DbError> {
        let mut c = Columns::for_batch(batch);
        for op in batch {
            match op {
                Op::Insert(t, _) => c.push_insert(t),
                Op::Update(o, _) => c.push_outcome(o),
            }
        }
        let [fast, safe] = &self.forms[Form::of(&c).index()];
        match write_once(&self.client, fast, &c, cutover_hours).await {
            Err(DbError::Postgres(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                write_once(&self.client, safe, &c, cutover_hours).await
            }
            done => done,
        }
    }
}

/// A commit that takes this long (ms) or longer is logged. At 5,000 purchases/s on the
/// development machine about 99.9 % of commits take under 5 ms, and those of 50 ms or
/// more came with the kernel's writeback bursts, two or three a minute (docs/loadtest.md,
/// 2026-12-03 later), so the line is rare unless something is wrong. Matches the
/// benchmark's `log_min_duration_statement`, so both logs can be read together.
const SLOW_COMMIT_WARN_MS: u64 = 50;

/// How long a writer waits for a database connection before failing its batch.
pub const WRITER_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// One journal writer: a connection of its own, the batch statement prepared on it.
struct Writer {
    url: String,
    conn: Option<Connection>,
    metrics: Arc<Metrics>,
    cutover_hours: i32,
    slow: SlowCommits,
}

/// Slow commits logged at most once per this many ms, those between counted in the next
/// line: a database slow throughout would otherwise log every batch.
const SLOW_COMMIT_LOG_EVERY_MS: u64 = 1_000;

/// Which slow commits get a log line. A plain decision over times passed in.
#[derive(Debug, Default)]
struct SlowCommits {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl SlowCommits {
    /// A commit that took `took` ended at `now`: `Some(n)` to log it as slow, with `n`
    /// slow commits since the last line that were not logged; `None` if it was not slow,
    /// or to count it into the next line.
    fn observe(&mut self, took: Duration, now: Instant) -> Option<u64> {
        if took < Duration::from_millis(SLOW_COMMIT_WARN_MS) {
            return None;
        }
        let every = Duration::from_millis(SLOW_COMMIT_LOG_EVERY_MS);
        if self.last_logged.is_some_and(|t| now < t + every) {
            self.unlogged += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl Writer {
    async fn run(mut self, queue: Arc<Mutex<Queue>>, batch_max: usize) {
        loop {
            // The writer holding the queue takes the first record that comes, waits out the
            // pacing interval, and takes everything queued behind it; while writers are
            // busy committing (or pacing), the next batch grows.
            let batch = {
                let mut q = queue.lock().await;
                let Some(first) = q.rx.recv().await else {
                    return;
                };
                let mut batch = Vec::with_capacity(batch_max.min(BATCH_RESERVE_MAX));
                batch.push(first);
                if let Some(until) = q.pacing.wait_until(Instant::now()) {
                    gather_until(&mut q.rx, &mut batch, batch_max, until).await;
                }
                let taken_at = Instant::now();
                while batch.len() < batch_max {
                    match q.rx.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
                q.pacing.taken(taken_at, batch.len());
                batch
            };
            self.write(batch).await;
        }
    }

    /// The connection, made (again) if there is none or it was lost.
    async fn connection(&mut self) -> Result<&Connection, DbError> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = None;
            let connect = async {
                let (client, conn) =
                    tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Connection::prepare(client).await
            };
            let timeout = std::time::Duration::from_millis(WRITER_CONNECT_TIMEOUT_MS);
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(c)) => self.conn = Some(c),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(DbError::Invalid("database connection timed out".into())),
            }
        }
        Ok(self.conn.as_ref().expect("connected just now"))
    }

    /// A batch of `n` records committed at `now`: its metrics (`started` when the batch
    /// was taken, a reconnection included) and, if it was slow, a log line (`writing` when
    /// its statement was sent: the statement and its commit only).
    fn committed(&mut self, n: usize, started: Instant, writing: Instant, now: Instant) {
        self.metrics.journal_batch_size.observe(n as f64);
        self.metrics
            .journal_commit
            .observe(now.duration_since(started).as_secs_f64());
        let took = now.duration_since(writing);
        if let Some(unlogged) = self.slow.observe(took, now) {
            // Every request of the batch, and every one queued behind it, waited this long:
            // worth a line to match with the database's log.
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                records = n,
                slow_commits_unlogged = unlogged,
                "slow journal commit"
            );
        }
    }

    async fn write(&mut self, batch: Vec<Op>) {
        let started = Instant::now();
        let n = batch.len();
        let cutover_hours = self.cutover_hours;
        let c = match self.connection().await {
            Ok(c) => c,
            Err(e) => {
                self.metrics.journal_failures.inc();
                tracing::error!(error = %e, ops = n, "journal batch not written: no connection");
                let err = JournalError::NotWritten(e.to_string());
                for op in batch {
                    op.ack(Err(&err));
                }
                return;
            }
        };
        let writing = Instant::now();
        let result = c.write(&batch, cutover_hours).await;
        match result {
            Ok(inserted) => {
                self.committed(n, started, writing, Instant::now());
                for op in batch {
                    op.ack(Ok(&inserted));
                }
            }
            // A statement error (not a lost connection) may be one bad row: write the ops
            // one by one so only that one fails.
            Err(DbError::Postgres(e)) if e.as_db_error().is_some() && n > 1 => {
                tracing::warn!(error = %e, ops = n, "journal batch refused; retrying its operations one by one");
                for op in batch {
                    Box::pin(self.write(vec![op])).await;
                }
            }
            Err(e) => {
                self.metrics.journal_failures.inc();
                tracing::error!(error = %e, ops = n, "journal batch failed");
                // A statement PostgreSQL refused did not commit; anything else (the
                // connection lost on the way) may have.
                let refused = matches!(&e, DbError::Postgres(pe) if pe.as_db_error().is_some());
                let err = if refused {
                    JournalError::NotWritten(e.to_string())
                } else {
                    JournalError::Write(e.to_string())
                };
                for op in batch {
                    op.ack(Err(&err));
                }
            }
        }
    }
}

/// Settings of a writer's own connection. The batch statement touches rows only by key,
/// and its plan is made once for the connection's life, from statistics taken when a table
/// may still have been small: a sequential scan chosen then would scan `in_doubt`'s dead
/// rows (one per settled request until vacuum) on every batch, a cost that grows with load
/// and time. Measured: this was most of the database's CPU per purchase.
///
/// The plan is generic, made once: left to choose, PostgreSQL kept planning the statement
/// afresh on every execution when the tables started empty (`pg_stat_statements` at 5,000
/// purchases/s with `PRELOAD=0`: 0.13 ms of planning per commit beside 0.22 ms of
/// execution, about 20 µs of database CPU per purchase), while on a grown database it
/// settled on the generic plan.
///
/// Memoize is off: it caches inner rows by join key, and every key of a batch (a
/// transaction id) is distinct, so its cache could only cost.
const WRITER_SESSION_SQL: &str =
    "SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan; SET enable_memoize = off";

/// The plans the batch statement runs with on a writer's session, one per prepared form
/// (each [`Form`], fast then safe), each as `EXPLAIN (FORMAT JSON)` prints it (a
/// one-element JSON array). Run on `client` as a writer sets itself up
/// ([`WRITER_SESSION_SQL`]), so they are the generic plans every commit uses; tests check
/// their shape (each record reaches its rows by key, never by a rescan of the batch).
/// Errors: the database's.
pub async fn explain_batch(
    client: &tokio_postgres::Client,
) -> Result<Vec<serde_json::Value>, DbError> {
    client.batch_execute(WRITER_SESSION_SQL).await?;
    // Empty arrays for every column, 0 for the cut-over hour ($31): the plan is generic.
    let args: Vec<&str> = (1..=BATCH_PARAMS)
        .map(|i| if i == 31 { "0" } else { "'{}'" })
        .collect();
    let explain = format!(
        "EXPLAIN (FORMAT JSON) EXECUTE journal_batch_plan({})",
        args.join(", ")
    );
    let mut plans = Vec::with_capacity(Form::ALL.len() * 2);
    for form in Form::ALL {
        for fast in [true, false] {
            let sql = form.sql(fast);
            client
                .batch_execute(&format!("PREPARE journal_batch_plan AS {sql}"))
                .await?;
            let row = client.query_one(&explain, &[]).await?;
            client
                .batch_execute("DEALLOCATE journal_batch_plan")
                .await?;
            plans.push(row.get(0));
        }
    }
    Ok(plans)
}

/// Parameters of the batch statement ($1..$35).
const BATCH_PARAMS: usize = 35;

/// The batch statement, with `$conflict` after the inserts of transactions, in-doubt rows,
/// settlements and postings ([`BATCH_SQL`] skips rows that exist already: a retried
/// write, a duplicate request; [`BATCH_SQL_FAST`] has no conflict clause at all), and
/// `$update` (the outcomes that change their rows, [`OUTCOME_UPDATE`]) or nothing: a
/// batch of requests and approved purchases only leaves `transaction_rows` a single
/// result relation, whose CHECK constraints PostgreSQL rebuilds on every execution.
///
/// Parameters: $1..$23 and $32 the requests' columns; $24..$27 the outcomes that update
/// their rows (id, state, response code, authorisation code); $33..$35 the approved
/// purchases (id, response code, authorisation code); $28..$30 reversals to store and
/// forward; $31 the business day's cut-over hour.
macro_rules! batch_sql {
    ($conflict:literal, $update:expr) => {
        concat!(
            "
WITH ins AS (
  INSERT INTO transaction_rows (id, instance_id, merchant_id, terminal_id, stan, transmitted_at, mti, kind,
    processing_code, amount_minor, currency, order_ref, pan_hash, pan_last4, card_enc, rrn, bank_id, bank_stan,
    bank_transmitted_at, original_id, state, response_code, reason, content_digest)
  SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::bigint[], $11::smallint[], $12::text[], $13::bytea[], $14::text[], $15::bytea[],
    $16::text[], $17::text[], $18::text[], $19::text[], $20::bigint[], $21::text[], $22::text[], $23::text[],
    $32::bytea[])
",
            $conflict,
            "  RETURNING id, instance_id, state
), doubt AS (
  -- Recovery finds requests without an outcome here (no index on `state`, see V6).
  INSERT INTO in_doubt (transaction_id, instance_id)
  SELECT id, instance_id FROM ins WHERE state = 'authorising'
",
            $conflict,
            "), settle AS (
  -- An approved purchase's outcome is appended (V16), not written over its row: one
  -- narrow row instead of a new version of a 35-column one. Its key makes a settlement
  -- exclusive: recovery's reversal of the same request, or this outcome written again
  -- after a lost acknowledgement, inserts nothing here. Each approval reaches its row by
  -- key (see WRITER_SESSION_SQL), for the row's kind and state: an outcome settles only a
  -- request still waiting for one.
  INSERT INTO settlements (transaction_id, state, response_code, auth_code)
  SELECT t.id, 'approved', a.rc, a.auth
  FROM unnest($33::bigint[], $34::text[], $35::text[]) AS a(id, rc, auth)
  JOIN transaction_rows t ON t.id = a.id
  WHERE t.kind = 'purchase' AND t.state = 'authorising'
",
            $conflict,
            "  RETURNING transaction_id
)",
            $update,
            ", settled AS (
  DELETE FROM in_doubt WHERE transaction_id = ANY($24::bigint[] || $33::bigint[])
), post AS (
  -- An approved purchase is captured at once: the bank owes it, the merchant is owed it.
  -- Only for a settlement this statement inserted (an outcome written again after a lost
  -- acknowledgement posts nothing more; the (transaction, account) key backs that),
  -- reached by key from it.
  INSERT INTO ledger_postings (transaction_id, account, amount_minor, currency, business_day)
  SELECT t.id, p.account, p.sign * t.amount_minor, t.currency,
    (now() AT TIME ZONE 'UTC' - make_interval(hours => $31::int))::date
  FROM settle JOIN transaction_rows t ON t.id = settle.transaction_id,
    LATERAL (VALUES ('bank:' || t.bank_id, 1), ('merchant:' || t.merchant_id, -1)) AS p(account, sign)
",
            $conflict,
            ")",
            reversal_insert!(),
            "
-- The transactions this statement inserted and those whose outcome it settled (an insert
-- and an outcome of one transaction never share a batch: the outcome follows the bank,
-- which follows the insert's commit).
SELECT id FROM ins UNION ALL SELECT transaction_id FROM settle UNION ALL SELECT id FROM upd"
        )
    };
}

/// The reversals to store and forward (timeouts), for [`batch_sql`]. Most batches have
/// none: [`without_reversals`] makes the forms for them.
macro_rules! reversal_insert {
    () => {
        ", rev AS (
  INSERT INTO reversals (transaction_id, bank_id, reason)
  SELECT * FROM unnest($28::bigint[], $29::text[], $30::text[])
  ON CONFLICT (transaction_id, kind) DO NOTHING
  RETURNING id
)"
    };
}

/// In place of [`reversal_insert`] when a batch has no reversal, as
/// [`no_outcome_update`] is for updates: it names the parameters and is never run.
macro_rules! no_reversal_insert {
    () => {
        ", rev AS (SELECT $28::bigint[] AS id, $29::text[] AS bank, $30::text[] AS reason WHERE false)"
    };
}

/// `sql` (a form of [`batch_sql`]) for a batch without reversals. PostgreSQL sets up
/// every data-modifying CTE of a statement on each execution, empty or not (opening the
/// table and its three indexes, the conflict check): with `perf`, the set-up of result
/// relations was about 9 % of the database's CPU at 5,000 purchases/s, and reversals
/// come with timeouts only, in about one batch in twelve.
fn without_reversals(sql: &str) -> String {
    debug_assert_eq!(sql.matches(reversal_insert!()).count(), 1);
    sql.replace(reversal_insert!(), no_reversal_insert!())
}

/// The outcomes that change their rows (declines, refusals, timeouts, pre-authorisations):
/// an update of `transaction_rows`, for [`batch_sql`]. A decline ends the order
/// reference's hold, which the row's index keeps.
macro_rules! outcome_update {
    () => {
        ", upd AS (
  UPDATE transaction_rows t SET state = u.state, response_code = u.rc, auth_code = u.auth, updated_at = now()
  FROM unnest($24::bigint[], $25::text[], $26::text[], $27::text[]) AS u(id, state, rc, auth)
  -- An outcome settles a request still waiting for one: written again after a lost
  -- acknowledgement, it must not undo what came after it (a merchant's reversal), and a
  -- row that says 'authorising' under a settlement has been settled (V16).
  -- Joined by key alone, so each outcome is one primary-key probe: with `t.id = ANY(...)`
  -- added, the generic plan scanned the ids first and rescanned the whole array for each
  -- row found, a cost growing with the square of the batch (see WRITER_SESSION_SQL).
  WHERE t.id = u.id AND t.state = 'authorising'
    AND NOT EXISTS (SELECT 1 FROM settlements s WHERE s.transaction_id = t.id)
  RETURNING t.id
)"
    };
}

/// The journal's one statement per batch (one commit): inserts, outcomes, postings and
/// reversal records as data-modifying CTEs over `unnest`ed arrays.
const BATCH_SQL: &str = batch_sql!("  ON CONFLICT DO NOTHING\n", outcome_update!());

/// [`BATCH_SQL`] without the conflict clauses, tried first. A conflict is rare (Redis
/// stops most duplicates before they reach the journal), while checking every unique
/// index before each insert ("speculative insertion") cost about 7 % of the writer's
/// database CPU, measured with perf. A batch it refuses with a unique violation is written
/// again with [`BATCH_SQL`], which then tells each record "new" from "already there".
const BATCH_SQL_FAST: &str = batch_sql!("", outcome_update!());

/// In place of [`outcome_update`] when a batch has no outcome that updates its row: it
/// only names the update's parameters, so that the statement's parameters are those of
/// the other forms (PostgreSQL must be able to tell every parameter's type); a CTE that
/// reads nothing and is not referred to is never run.
macro_rules! no_outcome_update {
    () => {
        ", upd AS (SELECT NULL::bigint AS id, $25::text[] AS state, $26::text[] AS rc, $27::text[] AS auth WHERE false)"
    };
}

/// [`BATCH_SQL`] for a batch without outcomes that update their rows.
const BATCH_SQL_NO_UPDATE: &str = batch_sql!("  ON CONFLICT DO NOTHING\n", no_outcome_update!());

/// [`BATCH_SQL_FAST`] for a batch without outcomes that update their rows.
const BATCH_SQL_FAST_NO_UPDATE: &str = batch_sql!("", no_outcome_update!());

/// The batch statement's array parameters, borrowed from the batch: nothing is copied
/// between a request's record and the statement.
#[derive(Default)]
struct Columns<'a> {
    id: Vec<i64>,
    instance: Vec<i16>,
    merchant: Vec<&'a str>,
    terminal: Vec<&'a str>,
    stan: Vec<&'a str>,
    transmitted: Vec<&'a str>,
    mti: Vec<&'a str>,
    kind: Vec<&'a str>,
    pcode: Vec<&'a str>,
    amount: Vec<i64>,
    currency: Vec<i16>,
    order_ref: Vec<Option<&'a str>>,
    pan_hash: Vec<Option<&'a [u8]>>,
    last4: Vec<Option<&'a str>>,
    card: Vec<Option<&'a [u8]>>,
    rrn: Vec<&'a str>,
    bank: Vec<Option<&'a str>>,
    bank_stan: Vec<Option<&'a str>>,
    bank_transmitted: Vec<Option<&'a str>>,
    original: Vec<Option<i64>>,
    state: Vec<&'a str>,
    rc: Vec<Option<&'a str>>,
    reason: Vec<Option<&'a str>>,
    content: Vec<Option<&'a [u8]>>,
    u_id: Vec<i64>,
    u_state: Vec<&'a str>,
    u_rc: Vec<&'a str>,
    u_auth: Vec<Option<&'a str>>,
    a_id: Vec<i64>,
    a_rc: Vec<&'a str>,
    a_auth: Vec<Option<&'a str>>,
    r_id: Vec<i64>,
    r_bank: Vec<&'a str>,
    r_reason: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    /// Columns with room for `batch`'s records, each allocated once. Grown a push at a
    /// time, each column of a batch of 13 records (5,000 purchases/s) was allocated two or
    /// three times: about 8 allocations a purchase, 4 when sized once.
    fn for_batch(batch: &[Op]) -> Columns<'a> {
        let (mut inserts, mut appends, mut updates, mut reversals) = (0, 0, 0, 0);
        for op in batch {
            match op {
                Op::Insert(..) => inserts += 1,
                Op::Update(o, _) => {
                    if o.appends() {
                        appends += 1;
                    } else {
                        updates += 1;
                    }
                    reversals += usize::from(o.reversal.is_some());
                }
            }
        }
        let n = inserts;
        Columns {
            id: Vec::with_capacity(n),
            instance: Vec::with_capacity(n),
            merchant: Vec::with_capacity(n),
            terminal: Vec::with_capacity(n),
            stan: Vec::with_capacity(n),
            transmitted: Vec::with_capacity(n),
            mti: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            pcode: Vec::with_capacity(n),
            amount: Vec::with_capacity(n),
            currency: Vec::with_capacity(n),
            order_ref: Vec::with_capacity(n),
            pan_hash: Vec::with_capacity(n),
            last4: Vec::with_capacity(n),
            card: Vec::with_capacity(n),
            rrn: Vec::with_capacity(n),
            bank: Vec::with_capacity(n),
            bank_stan: Vec::with_capacity(n),
            bank_transmitted: Vec::with_capacity(n),
            original: Vec::with_capacity(n),
            state: Vec::with_capacity(n),
            rc: Vec::with_capacity(n),
            reason: Vec::with_capacity(n),
            content: Vec::with_capacity(n),
            u_id: Vec::with_capacity(updates),
            u_state: Vec::with_capacity(updates),
            u_rc: Vec::with_capacity(updates),
            u_auth: Vec::with_capacity(updates),
            a_id: Vec::with_capacity(appends),
            a_rc: Vec::with_capacity(appends),
            a_auth: Vec::with_capacity(appends),
            r_id: Vec::with_capacity(reversals),
            r_bank: Vec::with_capacity(reversals),
            r_reason: Vec::with_capacity(reversals),
        }
    }

    fn push_insert(&mut self, t: &'a NewTxn) {
        self.id.push(t.id);
        self.instance.push(t.instance_id);
        self.merchant.push(&t.merchant_id);
        self.terminal.push(&t.terminal_id);
        self.stan.push(&t.stan);
        self.transmitted.push(&t.transmitted_at);
        self.mti.push(&t.mti);
        self.kind.push(t.kind.as_str());
        self.pcode.push(&t.processing_code);
        self.amount.push(t.amount_minor);
        self.currency.push(t.currency);
        self.order_ref.push(t.order_ref.as_deref());
        self.pan_hash.push(t.pan_hash.as_deref());
        self.last4.push(t.pan_last4.as_deref());
        self.card.push(t.card_enc.as_deref());
        self.rrn.push(&t.rrn);
        self.bank.push(t.bank_id.as_deref());
        self.bank_stan.push(t.bank_stan.as_deref());
        self.bank_transmitted.push(t.bank_transmitted_at.as_deref());
        self.original.push(t.original_id);
        self.state.push(t.state.as_str());
        self.rc.push(t.response_code.as_deref());
        self.reason.push(t.reason.as_deref());
        self.content.push(t.content.as_ref().map(|d| &d.0[..]));
    }

    /// An approved purchase's outcome goes to the settlements ($33..$35), any other to the
    /// row updates ($24..$27).
    fn push_outcome(&mut self, o: &'a OutcomeRecord) {
        if o.appends() {
            self.a_id.push(o.id);
            self.a_rc.push(&o.response_code);
            self.a_auth.push(o.auth_code.as_deref());
        } else {
            self.u_id.push(o.id);
            self.u_state.push(o.state.as_str());
            self.u_rc.push(&o.response_code);
            self.u_auth.push(o.auth_code.as_deref());
        }
        if let Some((bank, reason)) = &o.reversal {
            self.r_id.push(o.id);
            self.r_bank.push(bank);
            self.r_reason.push(reason.as_str());
        }
    }
}

/// Runs one form of the batch statement over the batch's columns.
async fn write_once(
    client: &tokio_postgres::Client,
    stmt: &Statement,
    c: &Columns<'_>,
    cutover_hours: i32,
) -> Result<HashSet<i64>, DbError> {
    let rows = client
        .query(
            stmt,
            &[
                &c.id,
                &c.instance,
                &c.merchant,
                &c.terminal,
                &c.stan,
                &c.transmitted,
                &c.mti,
                &c.kind,
                &c.pcode,
                &c.amount,
                &c.currency,
                &c.order_ref,
                &c.pan_hash,
                &c.last4,
                &c.card,
                &c.rrn,
                &c.bank,
                &c.bank_stan,
                &c.bank_transmitted,
                &c.original,
                &c.state,
                &c.rc,
                &c.reason,
                &c.u_id,
                &c.u_state,
                &c.u_rc,
                &c.u_auth,
                &c.r_id,
                &c.r_bank,
                &c.r_reason,
                &cutover_hours,
                &c.content,
                &c.a_id,
                &c.a_rc,
                &c.a_auth,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

#[cfg(test)]
mod tests {
    fn outcome(id: i64) -> super::Op {
        let o = super::OutcomeRecord {
            id,
            kind: super::Kind::Purchase,
            state: super::State::Approved,
            response_code: "00".into(),
            auth_code: None,
            reversal: None,
        };
        super::Op::Update(o, super::oneshot::channel().0)
    }

    // Proves the pacing pause takes what arrives while it lasts and ends no earlier than
    // its deadline when nothing more comes; and that it ends at once, keeping what it
    // took, when every handle is gone.
    #[tokio::test]
    async fn pacing_pause_gathers_until_its_deadline() {
        use std::time::{Duration, Instant};
        let (tx, mut rx) = super::mpsc::channel(8);
        let until = Instant::now() + Duration::from_millis(200);
        let sender = tokio::spawn(async move {
            for id in [1, 2] {
                assert!(tx.send(outcome(id)).await.is_ok());
            }
            tx
        });
        let mut batch = Vec::new();
        super::gather_until(&mut rx, &mut batch, 8, until).await;
        assert!(Instant::now() >= until, "ended before its deadline");
        assert_eq!(batch.len(), 2);

        let tx = sender.await.expect("sender");
        assert!(tx.send(outcome(3)).await.is_ok());
        drop(tx);
        let later = Instant::now() + Duration::from_secs(60);
        super::gather_until(&mut rx, &mut batch, 8, later).await;
        assert!(Instant::now() < later, "waited on a closed queue");
        assert_eq!(batch.len(), 3);
    }

    // Proves the pacing pause takes no more than a batch holds, and leaves the rest queued.
    #[tokio::test]
    async fn pacing_pause_stops_at_a_full_batch() {
        use std::time::{Duration, Instant};
        let (tx, mut rx) = super::mpsc::channel(8);
        for id in [1, 2, 3] {
            assert!(tx.send(outcome(id)).await.is_ok());
        }
        let mut batch = Vec::new();
        let later = Instant::now() + Duration::from_secs(60);
        super::gather_until(&mut rx, &mut batch, 2, later).await;
        assert!(Instant::now() < later, "a full batch waits no more");
        assert_eq!(batch.len(), 2);
        assert!(rx.try_recv().is_ok(), "the third stays queued");
    }

    // Proves slow commits log at most one line per interval, and the next line counts
    // those left out.
    #[test]
    fn slow_commits_log_once_per_interval() {
        let mut s = super::SlowCommits::default();
        let t0 = std::time::Instant::now();
        let ms = std::time::Duration::from_millis;
        let slow = ms(super::SLOW_COMMIT_WARN_MS);
        assert_eq!(s.observe(slow, t0), Some(0));
        assert_eq!(s.observe(slow, t0 + ms(10)), None);
        assert_eq!(s.observe(slow, t0 + ms(999)), None);
        let every = ms(super::SLOW_COMMIT_LOG_EVERY_MS);
        assert_eq!(s.observe(slow, t0 + every), Some(2));
        assert_eq!(s.observe(slow, t0 + every * 3), Some(0));
    }

    // Proves the batch statement posts by the one business-day rule every other posting
    // uses (the statement itself stays as it is tuned).
    #[test]
    fn batch_uses_the_one_business_day_rule() {
        assert!(super::BATCH_SQL.contains(&super::super::postings::business_day_sql(31)));
        assert!(super::BATCH_SQL_FAST.contains(&super::super::postings::business_day_sql(31)));
        assert!(super::BATCH_SQL_NO_UPDATE.contains(&super::super::postings::business_day_sql(31)));
    }

    // Proves each fast statement differs from its safe one only by its conflict clauses,
    // and the forms without outcome updates from the others only by the update.
    #[test]
    fn statement_forms_differ_only_where_they_should() {
        let strip = |sql: &str| sql.replace("  ON CONFLICT DO NOTHING\n", "");
        assert_eq!(strip(super::BATCH_SQL), super::BATCH_SQL_FAST);
        assert_eq!(
            strip(super::BATCH_SQL_NO_UPDATE),
            super::BATCH_SQL_FAST_NO_UPDATE
        );
        for safe in [super::BATCH_SQL, super::BATCH_SQL_NO_UPDATE] {
            assert_eq!(safe.matches("ON CONFLICT DO NOTHING").count(), 4);
        }
        for sql in [super::BATCH_SQL_FAST, super::BATCH_SQL_FAST_NO_UPDATE] {
            assert!(sql.contains("ON CONFLICT (transaction_id, kind) DO NOTHING"));
        }
        assert_eq!(
            super::BATCH_SQL.replace(outcome_update!(), no_outcome_update!()),
            super::BATCH_SQL_NO_UPDATE
        );
        assert!(!super::BATCH_SQL_NO_UPDATE.contains("UPDATE transaction_rows"));
    }

    // Proves the forms for batches without reversals differ from the others only by the
    // reversals' insert, and that each form is chosen by what its batch holds.
    #[test]
    fn forms_without_reversals_leave_out_only_the_insert() {
        use super::Form;
        for form in Form::ALL {
            for fast in [true, false] {
                let sql = form.sql(fast);
                assert_eq!(sql.contains("INSERT INTO reversals"), form.reversal);
                assert_eq!(sql.contains("UPDATE transaction_rows"), form.update);
                let with = Form {
                    reversal: true,
                    ..form
                }
                .sql(fast);
                let without = Form {
                    reversal: false,
                    ..form
                }
                .sql(fast);
                assert_eq!(
                    with.replace(reversal_insert!(), ""),
                    without.replace(no_reversal_insert!(), "")
                );
                for n in 1..=super::BATCH_PARAMS {
                    assert!(sql.contains(&format!("${n}::")), "${n} named in {form:?}");
                }
            }
        }
        let mut c = super::Columns::default();
        assert_eq!(Form::of(&c), Form::ALL[0]);
        c.r_id.push(1);
        assert_eq!(Form::of(&c).index(), 1);
        c.u_id.push(1);
        assert_eq!(Form::of(&c).index(), 3);
        let indexes: Vec<usize> = Form::ALL.iter().map(|f| f.index()).collect();
        assert_eq!(indexes, [0, 1, 2, 3]);
    }

    // Proves pacing on a virtual clock: the first batch never waits, a batch within the
    // interval of the previous one waits for the rest of it, a later one does not, one
    // after a small batch does not (light load), and an interval of zero never waits.
    #[test]
    fn pacing_spaces_batches_by_the_interval() {
        use super::Pacing;
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pacing::new(ms(1));
        assert_eq!(p.wait_until(t0), None, "the first batch");
        p.taken(t0, super::PACE_FROM_RECORDS);
        assert_eq!(
            p.wait_until(t0 + Duration::from_micros(300)),
            Some(t0 + ms(1))
        );
        assert_eq!(p.wait_until(t0 + ms(1)), None, "exactly one interval later");
        assert_eq!(p.wait_until(t0 + ms(5)), None);
        p.taken(t0 + ms(5), 13);
        assert_eq!(p.wait_until(t0 + ms(5)), Some(t0 + ms(6)));
        p.taken(t0 + ms(6), super::PACE_FROM_RECORDS - 1);
        assert_eq!(p.wait_until(t0 + ms(6)), None, "a small batch: light load");
        let mut off = Pacing::new(Duration::ZERO);
        off.taken(t0, 13);
        assert_eq!(off.wait_until(t0), None, "no pacing");
    }
}
