//! The store in memory: the [`Store`] trait's guarantees over maps, for the seeded
//! simulation. Each method is one atomic step under one mutex (a commit); a payment's
//! lock is an async mutex per payment, held from [`Store::lock_payment`] until the lock
//! is recorded or dropped, as PostgreSQL's row lock is. Writes can be made to fail
//! ([`WriteFault::Fail`]) or to lose their acknowledgement after succeeding
//! ([`WriteFault::LoseAck`]). It passes the same contract tests as [`crate::store::PgStore`]
//! (`tests/tests/store_contract.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::OwnedMutexGuard;

use crate::checks::Kind;
use crate::clock::Clock;
use crate::ids::ID_BLOCK;
use crate::lifecycle::{self, Forward, Posting, RootChange, Row, Transition, Verdict};
use crate::lifecycle::{AdviceEffect, decide};
use crate::store::Event;
use crate::store::{
    Backlog, BankAdvice, DueForward, Inquiry, JournalError, NewTxn, Notification,
    NotificationBacklog, OriginalRef, OutcomeRecord, PaymentLock, Recorded, RequestRef, State,
    Store, StoreError, TxnRecord,
};
use crate::store::{Total, Violation};

/// What happens to one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// Written and acknowledged.
    None,
    /// Not written; the error says so ([`StoreError::certainly_not_written`]).
    Fail,
    /// Written, but the acknowledgement is lost: the caller sees an error that may mean
    /// either.
    LoseAck,
}

/// Decides each write's fate by the write's name (`insert`, `outcome`, `lock`, ...).
pub type FaultPlan = Box<dyn FnMut(&'static str) -> WriteFault + Send>;

/// A transaction row.
#[derive(Debug, Clone)]
struct Txn {
    new: NewTxn,
    state: State,
    response_code: Option<String>,
    auth_code: Option<String>,
    captured_minor: u64,
    refunded_minor: u64,
    refund_reserved_minor: u64,
    completion_pending: bool,
    created_us: u64,
    inquired_us: Option<u64>,
}

impl Txn {
    fn record(&self) -> TxnRecord {
        let n = &self.new;
        TxnRecord {
            id: n.id,
            kind: n.kind,
            state: self.state,
            amount_minor: n.amount_minor as u64,
            currency: n.currency as u16,
            captured_minor: self.captured_minor,
            refunded_minor: self.refunded_minor,
            refund_reserved_minor: self.refund_reserved_minor,
            completion_pending: self.completion_pending,
            original_id: n.original_id,
            rrn: n.rrn.clone(),
            bank_id: n.bank_id.clone(),
            bank_stan: n.bank_stan.clone(),
            bank_transmitted_at: n.bank_transmitted_at.clone(),
            mti: n.mti.clone(),
            processing_code: n.processing_code.clone(),
            card_enc: n.card_enc.clone(),
            pan_hash: n.pan_hash.clone(),
            pan_last4: n.pan_last4.clone(),
            order_ref: n.order_ref.clone(),
            terminal_id: n.terminal_id.clone(),
            merchant_id: n.merchant_id.clone(),
            response_code: self.response_code.clone(),
        }
    }

    fn order_live(&self) -> bool {
        self.new.kind.is_root()
            && self.new.order_ref.is_some()
            && matches!(self.state, State::Authorising | State::Approved)
    }
}

/// A store-and-forward message.
#[derive(Debug, Clone)]
struct Fwd {
    txn_id: i64,
    bank_id: String,
    advice: bool,
    pending: bool,
    attempts: i32,
    next_us: u64,
    created_us: u64,
}

#[derive(Debug, Clone)]
struct Note {
    merchant_id: String,
    terminal_id: String,
    event: &'static str,
    status: &'static str,
    rrn: String,
    order_ref: Option<String>,
    stan: Option<String>,
    transmitted_at: Option<String>,
    attempts: i32,
    next_us: u64,
    delivered: bool,
    created_us: u64,
}

type RequestKey = (String, String, String, String, String);

#[derive(Debug, Default)]
struct Db {
    next_id: i64,
    txns: BTreeMap<i64, Txn>,
    keys: HashMap<RequestKey, i64>,
    in_doubt: BTreeMap<i64, i16>,
    forwards: BTreeMap<i64, Fwd>,
    next_forward: i64,
    advices: HashSet<(String, String, String, String)>,
    notes: BTreeMap<i64, Note>,
    next_note: i64,
    /// (source transaction, event): one notification each.
    note_sources: HashSet<(i64, &'static str)>,
    /// (transaction, account, amount, currency, business day)
    postings: Vec<(i64, String, i64, i16, String)>,
    leases: BTreeMap<i16, (i64, u64)>,
}

/// The store in memory. Clones share the data.
#[derive(Clone)]
pub struct MemStore {
    db: Arc<Mutex<Db>>,
    locks: Arc<Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>>,
    clock: Arc<dyn Clock>,
    faults: Arc<Mutex<Option<FaultPlan>>>,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore").finish_non_exhaustive()
    }
}

fn not_written() -> StoreError {
    StoreError::Journal(JournalError::NotWritten("injected fault".into()))
}

fn ack_lost() -> StoreError {
    StoreError::Journal(JournalError::Write(
        "acknowledgement lost (injected)".into(),
    ))
}

fn request_key(n: &NewTxn) -> RequestKey {
    (
        n.merchant_id.clone(),
        n.terminal_id.clone(),
        n.stan.clone(),
        n.transmitted_at.clone(),
        n.mti.clone(),
    )
}

impl MemStore {
    /// An empty store whose times come from `clock`; ids start at `ID_BLOCK`.
    pub fn new(clock: Arc<dyn Clock>) -> MemStore {
        let db = Db {
            next_id: ID_BLOCK,
            next_forward: 1,
            next_note: 1,
            ..Db::default()
        };
        MemStore {
            db: Arc::new(Mutex::new(db)),
            locks: Arc::default(),
            clock,
            faults: Arc::default(),
        }
    }

    /// Decides each later write's fate by `plan` (none: every write succeeds).
    pub fn set_faults(&self, plan: Option<FaultPlan>) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = plan;
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_us(&self) -> u64 {
        self.clock.unix_us()
    }

    fn day(&self) -> String {
        let (y, m, d, ..) = codec::clock::civil_from_unix(self.clock.unix_s());
        format!("{y:04}-{m:02}-{d:02}")
    }

    /// Runs the write `apply` under the fault plan: not at all, or with its
    /// acknowledgement lost.
    fn write<T>(
        &self,
        what: &'static str,
        apply: impl FnOnce(&mut Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let fault = match &mut *self.faults.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(plan) => plan(what),
            None => WriteFault::None,
        };
        if fault == WriteFault::Fail {
            return Err(not_written());
        }
        let written = apply(&mut self.db())?;
        match fault {
            WriteFault::LoseAck => Err(ack_lost()),
            _ => Ok(written),
        }
    }

    /// The async lock of payment `root_id` (its row lock).
    async fn lock_root(&self, root_id: i64) -> OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(root_id)
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Every transaction, for the simulation's invariants.
    pub fn transactions(&self) -> Vec<TxnRecord> {
        self.db().txns.values().map(Txn::record).collect()
    }

    /// Store-and-forward messages still pending.
    pub fn pending_forwards(&self) -> usize {
        self.db().forwards.values().filter(|f| f.pending).count()
    }

    /// Transactions still waiting for a bank's answer (`in_doubt`).
    pub fn in_doubt(&self) -> usize {
        self.db().in_doubt.len()
    }
}

impl Db {
    fn named(&self, merchant: &str, terminal: &str, r: &OriginalRef) -> Option<(i64, i64)> {
        let key = (
            merchant.to_string(),
            terminal.to_string(),
            r.stan.clone(),
            r.transmitted_at.clone(),
            r.mti.clone(),
        );
        let id = *self.keys.get(&key)?;
        let named = self.txns.get(&id)?;
        if named.new.kind.is_root() {
            return Some((id, id));
        }
        let root = named.new.original_id?;
        self.txns.contains_key(&root).then_some((id, root))
    }

    fn insert(&mut self, n: &NewTxn, now_us: u64) -> bool {
        let key = request_key(n);
        let order_taken = n.kind.is_root()
            && n.order_ref.is_some()
            && self.txns.values().any(|t| {
                t.order_live()
                    && t.new.merchant_id == n.merchant_id
                    && t.new.order_ref == n.order_ref
            });
        if self.keys.contains_key(&key) || self.txns.contains_key(&n.id) || order_taken {
            return false;
        }
        self.keys.insert(key, n.id);
        self.txns.insert(
            n.id,
            Txn {
                new: n.clone(),
                state: n.state,
                response_code: n.response_code.clone(),
                auth_code: None,
                captured_minor: 0,
                refunded_minor: 0,
                refund_reserved_minor: 0,
                completion_pending: false,
                created_us: now_us,
                inquired_us: None,
            },
        );
        true
    }

    fn queue(&mut self, txn_id: i64, bank_id: &str, f: Forward, now_us: u64) {
        let advice = matches!(f, Forward::CompletionAdvice);
        if self
            .forwards
            .values()
            .any(|q| q.txn_id == txn_id && q.advice == advice)
        {
            return;
        }
        let id = self.next_forward;
        self.next_forward += 1;
        self.forwards.insert(
            id,
            Fwd {
                txn_id,
                bank_id: bank_id.to_string(),
                advice,
                pending: true,
                attempts: 0,
                next_us: now_us,
                created_us: now_us,
            },
        );
    }

    fn post(&mut self, id: i64, amount: i64, day: &str) {
        let t = &self.txns[&id].new;
        let bank = format!("bank:{}", t.bank_id.clone().unwrap_or_default());
        let merchant = format!("merchant:{}", t.merchant_id);
        let (currency, day) = (t.currency, day.to_string());
        if self.postings.iter().any(|p| p.0 == id) {
            return;
        }
        self.postings
            .push((id, bank, amount, currency, day.clone()));
        self.postings.push((id, merchant, -amount, currency, day));
    }

    fn negate(&mut self, own: i64, named: i64, day: &str) {
        let negated: Vec<_> = self
            .postings
            .iter()
            .filter(|p| p.0 == named)
            .map(|p| (own, p.1.clone(), -p.2, p.3, day.to_string()))
            .collect();
        self.postings.extend(negated);
    }

    fn change_root(&mut self, id: i64, r: &RootChange) {
        let t = self.txns.get_mut(&id).expect("root exists");
        if let Some(s) = r.state {
            t.state = s;
        }
        if let Some(c) = r.captured_minor {
            t.captured_minor = c;
        }
        t.refunded_minor = (t.refunded_minor as i64 + r.refunded_delta) as u64;
        t.refund_reserved_minor = (t.refund_reserved_minor as i64 + r.refund_reserved_delta) as u64;
        if let Some(p) = r.completion_pending {
            t.completion_pending = p;
        }
    }

    fn notify(&mut self, root_id: i64, status: &'static str, source: i64, event: Event, now: u64) {
        if !self.note_sources.insert((source, event.as_str())) {
            return;
        }
        let root = &self.txns[&root_id];
        let id = self.next_note;
        self.next_note += 1;
        let note = Note {
            merchant_id: root.new.merchant_id.clone(),
            terminal_id: root.new.terminal_id.clone(),
            event: event.as_str(),
            status,
            rrn: root.new.rrn.clone(),
            order_ref: root.new.order_ref.clone(),
            stan: None,
            transmitted_at: None,
            attempts: 0,
            next_us: now,
            delivered: false,
            created_us: now,
        };
        self.notes.insert(id, note);
    }

    /// Applies `t` to the rows it is about.
    fn apply(&mut self, own: i64, named: i64, root: i64, t: &Transition, day: &str, now: u64) {
        if let Some(s) = &t.settle {
            let row = self.txns.get_mut(&own).expect("own row");
            row.state = s.state;
            row.response_code = Some(s.rc.as_str().to_string());
            row.auth_code = s.auth_code.clone();
        }
        if let Some(state) = t.named_state {
            self.txns.get_mut(&named).expect("named row").state = state;
        }
        if !t.root.is_empty() {
            self.change_root(root, &t.root);
        }
        match t.posting {
            Some(Posting::Amount(amount)) => self.post(own, amount, day),
            Some(Posting::NegateNamed) => self.negate(own, named, day),
            None => {}
        }
        if let Some((row, forward)) = t.forward {
            let id = if row == Row::Own { own } else { named };
            if let Some(bank) = self.txns[&id].new.bank_id.clone() {
                self.queue(id, &bank, forward, now);
            }
        }
        match t.in_doubt {
            Some(true) => {
                let instance = self.txns[&own].new.instance_id;
                self.in_doubt.insert(own, instance);
            }
            Some(false) => {
                self.in_doubt.remove(&own);
            }
            None => {}
        }
    }

    fn recover(&mut self, instance: i16, older_than_us: u64, now: u64) -> u64 {
        let mut n = 0;
        let ids: Vec<(i64, i16)> = self.in_doubt.iter().map(|(a, b)| (*a, *b)).collect();
        for (id, inst) in ids {
            if inst != instance {
                continue;
            }
            let t = &self.txns[&id];
            let old = t.created_us + older_than_us <= now;
            if t.state != State::Authorising {
                self.in_doubt.remove(&id);
                continue;
            }
            let Some(bank) = t.new.bank_id.clone() else {
                continue;
            };
            if !old {
                continue;
            }
            let row = self.txns.get_mut(&id).expect("row");
            row.state = State::Reversing;
            row.response_code = Some("91".into());
            self.in_doubt.remove(&id);
            let reason = Forward::Reversal(lifecycle::ReversalReason::Recovery);
            self.queue(id, &bank, reason, now);
            n += 1;
        }
        n
    }
}

/// A payment held under its async lock.
#[derive(Debug)]
struct MemPaymentLock {
    named: TxnRecord,
    root: TxnRecord,
    store: MemStore,
    _held: OwnedMutexGuard<()>,
}

#[async_trait]
impl PaymentLock for MemPaymentLock {
    fn named(&self) -> &TxnRecord {
        &self.named
    }

    fn root(&self) -> &TxnRecord {
        &self.root
    }

    async fn record(
        self: Box<Self>,
        request: NewTxn,
        change: Transition,
    ) -> Result<bool, StoreError> {
        let (now, day) = (self.store.now_us(), self.store.day());
        let (named, root) = (self.named.id, self.root.id);
        self.store.write("lock", |db| {
            if !db.insert(&request, now) {
                return Ok(false);
            }
            db.apply(request.id, named, root, &change, &day, now);
            Ok(true)
        })
    }
}

#[async_trait]
impl Store for MemStore {
    async fn insert(&self, t: Arc<NewTxn>) -> Result<bool, StoreError> {
        let now = self.now_us();
        self.write("insert", |db| {
            let inserted = db.insert(&t, now);
            if inserted && t.state == State::Authorising {
                db.in_doubt.insert(t.id, t.instance_id);
            }
            Ok(inserted)
        })
    }

    async fn record_outcome(&self, o: OutcomeRecord) -> Result<bool, StoreError> {
        let (now, day) = (self.now_us(), self.day());
        self.write("outcome", |db| {
            db.in_doubt.remove(&o.id);
            let Some(t) = db.txns.get_mut(&o.id) else {
                return Ok(false);
            };
            // Written again after a lost acknowledgement: what came after stays.
            if t.state != State::Authorising {
                return Ok(false);
            }
            t.state = o.state;
            t.response_code = Some(o.response_code.clone());
            t.auth_code = o.auth_code.clone();
            let purchase = t.new.kind == Kind::Purchase && o.state == State::Approved;
            if purchase {
                t.captured_minor = t.new.amount_minor as u64;
                let amount = t.new.amount_minor;
                db.post(o.id, amount, &day);
            }
            if let Some((bank, reason)) = &o.reversal {
                db.queue(o.id, bank, Forward::Reversal(*reason), now);
            }
            Ok(true)
        })
    }

    async fn id_block(&self) -> Result<i64, StoreError> {
        let mut db = self.db();
        let first = db.next_id;
        db.next_id += ID_BLOCK;
        Ok(first)
    }

    async fn recover(&self, instance_id: i16) -> Result<u64, StoreError> {
        let now = self.now_us();
        self.write("recover", |db| Ok(db.recover(instance_id, 0, now)))
    }

    async fn recover_stale(&self, instance_id: i16, older_than_ms: i64) -> Result<u64, StoreError> {
        let now = self.now_us();
        let older = older_than_ms.max(0) as u64 * 1_000;
        self.write("recover", |db| Ok(db.recover(instance_id, older, now)))
    }

    async fn take_lease(
        &self,
        instance: i16,
        incarnation: i64,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        let expires = self.now_us() + lease_ms.max(0) as u64 * 1_000;
        self.db().leases.insert(instance, (incarnation, expires));
        Ok(())
    }

    async fn renew_lease(
        &self,
        instance: i16,
        incarnation: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let expires = self.now_us() + lease_ms.max(0) as u64 * 1_000;
        let mut db = self.db();
        match db.leases.get_mut(&instance) {
            Some(l) if l.0 == incarnation => {
                l.1 = expires;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn lease_held(&self, instance: i16, incarnation: i64) -> Result<bool, StoreError> {
        Ok(self
            .db()
            .leases
            .get(&instance)
            .is_some_and(|l| l.0 == incarnation))
    }

    async fn take_over_expired(&self, own: i16) -> Result<Vec<(i16, u64)>, StoreError> {
        let now = self.now_us();
        let mut db = self.db();
        let expired: Vec<i16> = db
            .leases
            .iter()
            .filter(|(i, l)| **i != own && l.1 < now)
            .map(|(i, _)| *i)
            .collect();
        let mut out = Vec::new();
        for instance in expired {
            db.leases.remove(&instance);
            out.push((instance, db.recover(instance, 0, now)));
        }
        Ok(out)
    }

    async fn recorded(&self, key: &RequestRef<'_>) -> Result<Option<Recorded>, StoreError> {
        let db = self.db();
        let k = (
            key.merchant_id.to_string(),
            key.terminal_id.to_string(),
            key.stan.to_string(),
            key.transmitted_at.to_string(),
            key.mti.to_string(),
        );
        Ok(db.keys.get(&k).map(|id| {
            let t = &db.txns[id];
            Recorded {
                kind: t.new.kind,
                state: t.state,
                response_code: t.response_code.clone(),
                rrn: t.new.rrn.clone(),
                auth_code: t.auth_code.clone(),
                content: t.new.content,
            }
        }))
    }

    async fn order_ref_live(&self, merchant_id: &str, order_ref: &str) -> Result<bool, StoreError> {
        Ok(self.db().txns.values().any(|t| {
            t.order_live()
                && t.new.merchant_id == merchant_id
                && t.new.order_ref.as_deref() == Some(order_ref)
        }))
    }

    async fn payment_of(
        &self,
        merchant_id: &str,
        terminal_id: &str,
        original: &OriginalRef,
    ) -> Result<Option<TxnRecord>, StoreError> {
        let db = self.db();
        Ok(db
            .named(merchant_id, terminal_id, original)
            .map(|(_, root)| db.txns[&root].record()))
    }

    async fn payment_by_order_ref(
        &self,
        merchant_id: &str,
        order_ref: &str,
    ) -> Result<Option<TxnRecord>, StoreError> {
        Ok(self
            .db()
            .txns
            .values()
            .rev()
            .find(|t| {
                t.new.kind.is_root()
                    && t.new.merchant_id == merchant_id
                    && t.new.order_ref.as_deref() == Some(order_ref)
            })
            .map(Txn::record))
    }

    async fn transaction_by_rrn(&self, rrn: &str) -> Result<Option<TxnRecord>, StoreError> {
        let id = crate::store::id_of_rrn(rrn);
        Ok(self
            .db()
            .txns
            .get(&id)
            .filter(|t| t.new.rrn == rrn)
            .map(Txn::record))
    }

    async fn lock_payment(
        &self,
        merchant_id: &str,
        terminal_id: &str,
        original: &OriginalRef,
    ) -> Result<Option<Box<dyn PaymentLock>>, StoreError> {
        let Some((_, root)) = self.db().named(merchant_id, terminal_id, original) else {
            return Ok(None);
        };
        let held = self.lock_root(root).await;
        // Read again under the lock: the rows may have changed while it was awaited.
        let db = self.db();
        let Some((named, root)) = db.named(merchant_id, terminal_id, original) else {
            return Ok(None);
        };
        Ok(Some(Box::new(MemPaymentLock {
            named: db.txns[&named].record(),
            root: db.txns[&root].record(),
            store: self.clone(),
            _held: held,
        })))
    }

    async fn settle_refund(
        &self,
        id: i64,
        verdict: Verdict,
        auth_code: Option<String>,
    ) -> Result<(), StoreError> {
        let root = self
            .db()
            .txns
            .get(&id)
            .and_then(|t| t.new.original_id)
            .ok_or_else(|| StoreError::Db(crate::db::DbError::Invalid("no refund".into())))?;
        let _held = self.lock_root(root).await;
        let (now, day) = (self.now_us(), self.day());
        self.write("refund", |db| {
            let own = db.txns[&id].record();
            if own.state != State::Authorising {
                // Settled already: a write repeated after a lost acknowledgement.
                return Ok(());
            }
            let payment = db.txns[&root].payment_record();
            let change = lifecycle::refund_settled(&payment, own.amount_minor, verdict, auth_code);
            db.apply(id, id, root, &change, &day, now);
            Ok(())
        })
    }

    async fn claim_forwards(
        &self,
        bank_id: &str,
        max: i64,
        lease_ms: i64,
    ) -> Result<Vec<DueForward>, StoreError> {
        let now = self.now_us();
        let mut db = self.db();
        let mut seen = HashSet::new();
        let mut due = Vec::new();
        let ids: Vec<i64> = db.forwards.keys().copied().collect();
        for id in ids {
            let f = db.forwards[&id].clone();
            if !f.pending || !seen.insert(f.txn_id) || f.bank_id != bank_id || f.next_us > now {
                continue;
            }
            if due.len() as i64 >= max {
                break;
            }
            db.forwards.get_mut(&id).expect("row").next_us = now + lease_ms.max(0) as u64 * 1_000;
            let t = &db.txns[&f.txn_id];
            let p = &db.txns[&t.new.original_id.unwrap_or(t.new.id)];
            let first = if f.advice { p } else { t };
            due.push(DueForward {
                id,
                advice: f.advice,
                original_mti: first.new.mti.clone(),
                original_bank_stan: first.new.bank_stan.clone(),
                original_bank_de7: first.new.bank_transmitted_at.clone(),
                attempts: f.attempts,
                age_ms: ((now - f.created_us) / 1_000) as i64,
                processing_code: t.new.processing_code.clone(),
                amount_minor: t.new.amount_minor,
                currency: t.new.currency,
                rrn: t.new.rrn.clone(),
                terminal_id: t.new.terminal_id.clone(),
                merchant_id: t.new.merchant_id.clone(),
                card_enc: t.new.card_enc.clone(),
                first_stan: t.new.bank_stan.clone(),
                first_de7: t.new.bank_transmitted_at.clone(),
            });
        }
        Ok(due)
    }

    async fn expire_forward(&self, id: i64) -> Result<(), StoreError> {
        self.write("forward", |db| {
            if let Some(f) = db.forwards.get_mut(&id) {
                f.pending = false;
            }
            Ok(())
        })
    }

    async fn advice_answered(&self, id: i64, _rc: &str) -> Result<(), StoreError> {
        self.write("forward", |db| {
            if let Some(f) = db.forwards.get_mut(&id) {
                f.pending = false;
                f.attempts += 1;
            }
            Ok(())
        })
    }

    async fn reversal_answered(&self, id: i64, _rc: &str) -> Result<(), StoreError> {
        let Some(txn_id) = self.db().forwards.get(&id).map(|f| f.txn_id) else {
            return Ok(());
        };
        let root = {
            let db = self.db();
            let t = &db.txns[&txn_id];
            t.new.original_id.unwrap_or(t.new.id)
        };
        let _held = self.lock_root(root).await;
        let now = self.now_us();
        self.write("reversal", |db| {
            let f = db.forwards.get_mut(&id).expect("row");
            if !f.pending {
                return Ok(());
            }
            f.pending = false;
            f.attempts += 1;
            let t = db.txns.get_mut(&txn_id).expect("row");
            if t.state != State::Reversing {
                return Ok(());
            }
            t.state = State::Reversed;
            let (kind, amount) = (t.new.kind, t.new.amount_minor as u64);
            let payment = db.txns[&root].payment_record();
            let change = lifecycle::reversal_confirmed(kind, &payment, amount);
            db.change_root(root, &change);
            let status = db.txns[&root].payment_record().status().as_str();
            db.notify(root, status, txn_id, Event::reversed(kind), now);
            Ok(())
        })
    }

    async fn forward_unanswered(&self, id: i64, pause_ms: i64) -> Result<(), StoreError> {
        let now = self.now_us();
        self.write("forward", |db| {
            if let Some(f) = db.forwards.get_mut(&id) {
                f.attempts += 1;
                f.next_us = now + pause_ms.max(0) as u64 * 1_000;
            }
            Ok(())
        })
    }

    async fn forward_backlog(&self) -> Result<Vec<Backlog>, StoreError> {
        let now = self.now_us();
        let mut by_bank: BTreeMap<String, (i64, u64)> = BTreeMap::new();
        for f in self.db().forwards.values().filter(|f| f.pending) {
            let e = by_bank.entry(f.bank_id.clone()).or_insert((0, now));
            e.0 += 1;
            e.1 = e.1.min(f.created_us);
        }
        Ok(by_bank
            .into_iter()
            .map(|(bank_id, (pending, oldest))| Backlog {
                bank_id,
                pending,
                oldest_age_s: ((now - oldest) / 1_000_000) as i64,
            })
            .collect())
    }

    async fn claim_inquiries(
        &self,
        bank_id: &str,
        max: i64,
        repeat_ms: i64,
    ) -> Result<Vec<Inquiry>, StoreError> {
        let now = self.now_us();
        let repeat = repeat_ms.max(0) as u64 * 1_000;
        let mut db = self.db();
        let due: Vec<(i64, i64)> = db
            .forwards
            .iter()
            .filter(|(_, f)| f.bank_id == bank_id && f.pending && !f.advice && f.attempts >= 1)
            .filter(|(_, f)| {
                let t = &db.txns[&f.txn_id];
                t.state == State::Reversing && t.inquired_us.is_none_or(|at| at + repeat < now)
            })
            .take(max.max(0) as usize)
            .map(|(id, f)| (*id, f.txn_id))
            .collect();
        Ok(due
            .into_iter()
            .map(|(reversal_id, txn_id)| {
                let t = db.txns.get_mut(&txn_id).expect("row");
                t.inquired_us = Some(now);
                Inquiry {
                    reversal_id,
                    rrn: t.new.rrn.clone(),
                    mti: t.new.mti.clone(),
                    bank_stan: t.new.bank_stan.clone(),
                    bank_transmitted_at: t.new.bank_transmitted_at.clone(),
                }
            })
            .collect())
    }

    async fn apply_bank_advice(&self, a: &BankAdvice) -> Result<AdviceEffect, StoreError> {
        let named = a.rrn.as_ref().and_then(|rrn| {
            let db = self.db();
            let id = crate::store::id_of_rrn(rrn);
            db.txns
                .get(&id)
                .filter(|t| &t.new.rrn == rrn && t.new.bank_id.as_deref() == Some(&a.bank_id))
                .map(|t| (id, t.new.original_id.unwrap_or(id)))
        });
        let _held = match named {
            Some((_, root)) => Some(self.lock_root(root).await),
            None => None,
        };
        let (now, day) = (self.now_us(), self.day());
        self.write("advice", |db| {
            let txn = named.map(|(id, _)| db.txns[&id].record());
            let effect = decide(a.mti.class(), txn.as_ref().map(|t| (t.state, t.kind)));
            if effect == AdviceEffect::Deferred {
                return Ok(effect);
            }
            let key = (
                a.bank_id.clone(),
                a.mti.as_str().to_string(),
                a.stan.clone(),
                a.transmitted_at.clone(),
            );
            if !db.advices.insert(key) {
                return Ok(AdviceEffect::Duplicate);
            }
            if let (AdviceEffect::Reversed, Some(t)) = (effect, &txn) {
                db.bank_reversed(a, t, &day, now);
            }
            Ok(effect)
        })
    }

    async fn claim_notifications(
        &self,
        merchants: &[String],
        max: i64,
        transmitted_at: &str,
    ) -> Result<Vec<Notification>, StoreError> {
        let now = self.now_us();
        let mut db = self.db();
        let mut out = Vec::new();
        for (id, n) in db.notes.iter_mut() {
            if out.len() as i64 >= max {
                break;
            }
            if n.delivered || n.next_us > now || !merchants.contains(&n.merchant_id) {
                continue;
            }
            let pause = crate::store::retry_ms(n.attempts.max(0) as u32);
            n.attempts += 1;
            n.next_us = now + pause * 1_000;
            let stan = n
                .stan
                .get_or_insert_with(|| format!("{:06}", id % 1_000_000));
            let de7 = n
                .transmitted_at
                .get_or_insert_with(|| transmitted_at.to_string());
            out.push(Notification {
                merchant_id: n.merchant_id.clone(),
                terminal_id: n.terminal_id.clone(),
                event: n.event.to_string(),
                status: n.status.to_string(),
                rrn: n.rrn.clone(),
                order_ref: n.order_ref.clone(),
                stan: stan.clone(),
                transmitted_at: de7.clone(),
                attempts: n.attempts,
            });
        }
        Ok(out)
    }

    async fn notification_answered(
        &self,
        merchant_id: &str,
        stan: &str,
        transmitted_at: &str,
    ) -> Result<bool, StoreError> {
        self.write("notification", |db| {
            let mut found = false;
            for n in db.notes.values_mut() {
                if !n.delivered
                    && n.merchant_id == merchant_id
                    && n.stan.as_deref() == Some(stan)
                    && n.transmitted_at.as_deref() == Some(transmitted_at)
                {
                    n.delivered = true;
                    found = true;
                }
            }
            Ok(found)
        })
    }

    async fn notification_backlog(&self) -> Result<NotificationBacklog, StoreError> {
        let now = self.now_us();
        let db = self.db();
        let pending: Vec<&Note> = db.notes.values().filter(|n| !n.delivered).collect();
        let oldest = pending.iter().map(|n| n.created_us).min().unwrap_or(now);
        Ok(NotificationBacklog {
            pending: pending.len() as i64,
            oldest_age_s: ((now - oldest) / 1_000_000) as i64,
        })
    }

    async fn ledger_violations(&self) -> Result<Vec<Violation>, StoreError> {
        Ok(self.db().violations())
    }

    async fn ledger_totals(&self, day: Option<&str>) -> Result<Vec<Total>, StoreError> {
        let mut totals: BTreeMap<(String, String, i16), (i64, i64)> = BTreeMap::new();
        for (_, account, amount, currency, d) in &self.db().postings {
            if day.is_some_and(|day| day != d) {
                continue;
            }
            let e = totals
                .entry((d.clone(), account.clone(), *currency))
                .or_default();
            e.0 += 1;
            e.1 += amount;
        }
        Ok(totals
            .into_iter()
            .map(
                |((business_day, account, currency), (postings, amount_minor))| Total {
                    business_day,
                    account,
                    currency,
                    postings,
                    amount_minor,
                },
            )
            .collect())
    }
}

impl Txn {
    fn payment_record(&self) -> lifecycle::Payment {
        self.record().payment()
    }
}

impl Db {
    /// The bank reversed `t` on its own (an 0420): as [`crate::store`]'s advices do.
    fn bank_reversed(&mut self, a: &BankAdvice, t: &TxnRecord, day: &str, now: u64) {
        self.txns.get_mut(&t.id).expect("row").state = State::Reversed;
        for f in self.forwards.values_mut() {
            if f.txn_id == t.id && f.pending {
                f.pending = false;
            }
        }
        if t.state == State::Approved {
            let id = self.next_id;
            self.next_id += 1;
            let mut row = self.txns[&t.id].new.clone();
            row.id = id;
            row.stan = format!("{}:{}", a.bank_id, a.stan);
            row.transmitted_at = a.transmitted_at.clone();
            row.mti = "A420".into();
            row.kind = Kind::Reversal;
            row.rrn = crate::store::rrn_of(id);
            row.original_id = Some(t.id);
            row.state = State::Approved;
            row.response_code = Some("00".into());
            row.order_ref = None;
            self.insert(&row, now);
            self.negate(id, t.id, day);
        }
        let root = t.original_id.unwrap_or(t.id);
        let status = self.txns[&root].payment_record().status().as_str();
        self.notify(root, status, t.id, Event::BankReversed, now);
    }

    /// The ledger's rules, as [`crate::store`]'s postings check them.
    fn violations(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        let sums = self.posting_sums(&mut out);
        for (id, sum) in sums.per_txn.iter().filter(|(_, s)| **s != 0) {
            out.push(Violation {
                rule: "posting-balances",
                detail: format!("transaction {id} postings sum to {sum}"),
            });
        }
        let mut journal_owed: BTreeMap<(String, i16), i64> = BTreeMap::new();
        for t in self.txns.values() {
            let n = &t.new;
            if n.kind.is_root() && matches!(t.state, State::Approved | State::Captured) {
                *journal_owed
                    .entry((n.merchant_id.clone(), n.currency))
                    .or_default() += t.captured_minor as i64 - t.refunded_minor as i64;
            }
            row_violations(t, &sums.to_bank, &mut out);
        }
        let keys: BTreeSet<&(String, i16)> = journal_owed
            .keys()
            .chain(sums.merchant_owed.keys())
            .collect();
        for k in keys {
            let (j, l) = (
                journal_owed.get(k).copied().unwrap_or(0),
                sums.merchant_owed.get(k).copied().unwrap_or(0),
            );
            if j != l {
                out.push(Violation {
                    rule: "merchant-balance-matches-journal",
                    detail: format!(
                        "merchant {} currency {}: journal says {j} owed, ledger says {l}",
                        k.0, k.1
                    ),
                });
            }
        }
        out
    }

    /// The postings summed per transaction, per transaction to its own bank, and per
    /// merchant and currency (what the merchant is owed); postings naming no transaction
    /// are violations.
    fn posting_sums(&self, out: &mut Vec<Violation>) -> PostingSums {
        let mut sums = PostingSums::default();
        for (id, account, amount, currency, _) in &self.postings {
            *sums.per_txn.entry(*id).or_default() += amount;
            if let Some(m) = account.strip_prefix("merchant:") {
                *sums
                    .merchant_owed
                    .entry((m.to_string(), *currency))
                    .or_default() -= amount;
            }
            let Some(t) = self.txns.get(id) else {
                out.push(Violation {
                    rule: "posting-names-transaction",
                    detail: format!("a posting names transaction {id}, which is not recorded"),
                });
                continue;
            };
            let own_bank = t.new.bank_id.as_deref().map(|b| format!("bank:{b}"));
            if own_bank.as_deref() == Some(account.as_str()) {
                *sums.to_bank.entry(*id).or_default() += amount;
            }
        }
        sums
    }
}

/// The ledger's postings, summed three ways (minor units).
#[derive(Debug, Default)]
struct PostingSums {
    per_txn: BTreeMap<i64, i64>,
    to_bank: BTreeMap<i64, i64>,
    merchant_owed: BTreeMap<(String, i16), i64>,
}

/// One row's rules: an approved purchase, completion or refund is posted to its bank for
/// its amount; refunds stay within what was captured.
fn row_violations(t: &Txn, to_bank: &BTreeMap<i64, i64>, out: &mut Vec<Violation>) {
    let n = &t.new;
    let posted_kind = matches!(n.kind, Kind::Purchase | Kind::Completion | Kind::Refund);
    let posted_state = matches!(t.state, State::Approved | State::Reversed | State::Captured);
    if posted_kind && posted_state && t.response_code.as_deref() == Some("00") {
        let want = if n.kind == Kind::Refund {
            -n.amount_minor
        } else {
            n.amount_minor
        };
        let got = to_bank.get(&n.id).copied().unwrap_or(0);
        if got != want {
            out.push(Violation {
                rule: "approved-transactions-posted",
                detail: format!(
                    "{} {} of {} has {got} posted to its bank",
                    n.kind.as_str(),
                    n.id,
                    n.amount_minor
                ),
            });
        }
    }
    if t.refunded_minor + t.refund_reserved_minor > t.captured_minor {
        out.push(Violation {
            rule: "refunds-within-captured",
            detail: format!(
                "payment {}: captured {}, refunded {}, reserved {}",
                n.id, t.captured_minor, t.refunded_minor, t.refund_reserved_minor
            ),
        });
    }
}
