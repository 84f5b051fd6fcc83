//! The rest of the payment lifecycle on the request path: completion (0220), refund (0200
//! with DE3 `20`), reversal (0400) and status (0600).
//!
//! Each request first passes the retransmission check and limits ([`Engine::claim`]); the
//! rules, and each step's effect as a [`lifecycle::Transition`], come from
//! [`crate::lifecycle`]; the store applies the effect in one commit holding the payment's
//! row lock ([`crate::store::PaymentLock`]), so two requests racing for the same money
//! (on one instance or several) are serialised by the database.

use std::sync::Arc;
use std::time::Duration;

use codec::{Message, MessageBuilder, Mti, tlv};

use crate::answer::{Answer, switch_auth_code};
use crate::bank_io::BankExchange;
use crate::checks::{Kind, Rc, valid_transmission};
use crate::content::ContentDigest;
use crate::crypto::{Purpose, split_card};
use crate::engine::{Claimed, Engine, request_key};
use crate::ids::rrn_of;
use crate::inflight::owner_gone;
use crate::lifecycle::{self, ReversalEffect, ReversalHold, ReversalPlan, State, Status};
use crate::merchants::Merchant;
use crate::store::{NewTxn, PaymentLock, StoreError, TxnRecord};

pub use crate::store::OriginalRef;

/// The contract's wait for a reversal's named request that is not seen at all (ms).
pub const REVERSAL_UNSEEN_MAX_MS: u64 = 2_000;
/// Time allowed beyond the bank timeout for a named request's outcome to be recorded
/// before a held reversal gives up with `91` (ms): the outcome write's retries.
pub const REVERSAL_HOLD_MARGIN_MS: u64 = 2_000;
/// Pause between looks at a named request that is unseen, or in flight elsewhere (ms);
/// one in flight here is waited for directly.
pub const REVERSAL_HOLD_POLL_MS: u64 = 25;
/// Longest single wait on a named request in flight here before the hold looks again (ms):
/// the hold's own limits are checked between waits.
pub const REVERSAL_HOLD_FOLLOW_MS: u64 = 1_000;

/// Longest refund reason kept (DE48 `RR` is free text inside an LLLVAR of 999).
pub const REFUND_REASON_MAX_LEN: usize = 255;

/// DE90: original MTI (4), STAN (6), DE7 (10), then 22 digits we do not use.
pub fn parse_de90(de90: &[u8]) -> Option<OriginalRef> {
    if de90.len() != 42 || !de90.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mti = Mti::from_digits(de90[..4].try_into().ok()?)?.original();
    let de7 = &de90[10..20];
    if !valid_transmission(de7) {
        return None;
    }
    Some(OriginalRef {
        mti: mti.as_str().to_string(),
        stan: String::from_utf8_lossy(&de90[4..10]).into_owned(),
        transmitted_at: String::from_utf8_lossy(de7).into_owned(),
    })
}

/// DE90 as the bank saw the original: its MTI, the switch's STAN and DE7 to the bank,
/// the acquirer id right-justified in 11 digits, then 11 zeros.
pub fn bank_de90(mti: &str, bank_stan: &str, bank_de7: &str, acquirer_id: &str) -> String {
    let acquirer: String = acquirer_id.chars().filter(char::is_ascii_digit).collect();
    format!(
        "{mti}{bank_stan:0>6}{bank_de7:0>10}{acquirer:0>11}{}",
        "0".repeat(11)
    )
}

/// Elements common to the lifecycle requests, checked present and well formed.
struct Common {
    key: String,
    /// What makes a retransmission of this request the same request.
    content: ContentDigest,
    terminal_id: String,
    stan: String,
    transmitted_at: String,
    amount_minor: u64,
    currency: u16,
    original: OriginalRef,
}

fn common(msg: &Message, merchant: &Merchant) -> Result<Common, Rc> {
    for n in [4u8, 7, 11, 41, 42, 49, 90] {
        if !msg.has(n) {
            return Err(Rc::FORMAT_ERROR);
        }
    }
    let de7 = msg.raw(7).ok_or(Rc::FORMAT_ERROR)?;
    if !valid_transmission(de7) {
        return Err(Rc::FORMAT_ERROR);
    }
    let terminal = msg.raw(41).ok_or(Rc::FORMAT_ERROR)?;
    if terminal.iter().all(|&c| c == b' ') {
        return Err(Rc::FORMAT_ERROR);
    }
    let original = parse_de90(msg.raw(90).ok_or(Rc::FORMAT_ERROR)?).ok_or(Rc::FORMAT_ERROR)?;
    let stan = msg.raw(11).ok_or(Rc::FORMAT_ERROR)?;
    Ok(Common {
        key: request_key(&merchant.id, terminal, stan, de7, msg.mti()),
        content: ContentDigest::of(msg),
        terminal_id: String::from_utf8_lossy(terminal).trim_end().to_string(),
        stan: String::from_utf8_lossy(stan).into_owned(),
        transmitted_at: String::from_utf8_lossy(de7).into_owned(),
        amount_minor: msg.get_u64(4).ok_or(Rc::FORMAT_ERROR)?,
        currency: msg.get_u64(49).ok_or(Rc::FORMAT_ERROR)? as u16,
        original,
    })
}

/// The idempotency key of the request a lifecycle request names by DE90 (same merchant
/// and terminal).
fn original_key(merchant: &Merchant, c: &Common) -> String {
    // parse_de90 made `mti` four digits naming an original MTI.
    let digits = <[u8; 4]>::try_from(c.original.mti.as_bytes()).unwrap_or(*b"0200");
    let mti = Mti::from_digits(digits).unwrap_or(Mti::FINANCIAL_REQUEST);
    request_key(
        &merchant.id,
        c.terminal_id.as_bytes(),
        c.original.stan.as_bytes(),
        c.original.transmitted_at.as_bytes(),
        mti,
    )
}

/// A completion or refund on its way: what each step of it reads.
struct Step<'a> {
    msg: &'a Message,
    merchant: &'a Merchant,
    c: Common,
    kind: Kind,
    /// DE48 `RR` of a refund.
    reason: Option<String>,
}

/// What recording a lifecycle request leads to.
enum Reserved {
    /// A refund to send to the bank.
    Forward(Forward),
    /// Answered already (a completion, recorded and queued for the bank).
    Done(Answer),
}

/// A lifecycle request's id and RRN, and its exchange with the bank (its STAN and, for
/// a refund, the breaker's admission), begun once the request is allowed: dropping it
/// gives them back.
struct Allotted {
    id: i64,
    rrn: String,
    exchange: BankExchange,
    stan_digits: [u8; 6],
    bank_de7: [u8; 10],
}

/// What a lifecycle request sends to the bank once its effect is reserved.
struct Forward {
    txn_id: i64,
    kind: Kind,
    rrn: String,
    exchange: BankExchange,
    message: Result<bytes::Bytes, codec::EncodeError>,
    request_mti: Mti,
}

/// A completion's or refund's own row, as recorded before its effect applies.
fn lifecycle_row(s: &Step<'_>, root: &TxnRecord, a: &Allotted, instance_id: i16) -> NewTxn {
    let c = &s.c;
    NewTxn {
        id: a.id,
        instance_id,
        merchant_id: s.merchant.id.clone(),
        terminal_id: c.terminal_id.clone(),
        stan: c.stan.clone(),
        transmitted_at: c.transmitted_at.clone(),
        mti: s.msg.mti().original().as_str().to_string(),
        kind: s.kind,
        processing_code: String::from_utf8_lossy(s.msg.raw(3).unwrap_or(b"000000")).into_owned(),
        amount_minor: c.amount_minor as i64,
        currency: c.currency as i16,
        order_ref: root.order_ref.clone(),
        pan_hash: root.pan_hash.clone(),
        pan_last4: root.pan_last4.clone(),
        card_enc: root.card_enc.clone(),
        rrn: a.rrn.clone(),
        bank_id: Some(a.exchange.bank().config.id.clone()),
        bank_stan: Some(String::from_utf8_lossy(&a.stan_digits).into_owned()),
        bank_transmitted_at: Some(String::from_utf8_lossy(&a.bank_de7).into_owned()),
        original_id: Some(root.id),
        state: State::Authorising,
        response_code: None,
        reason: None,
        refund_reason: s.reason.clone(),
        content: Some(c.content),
    }
}

/// A merchant reversal's own row: recorded approved (`00`), naming `named`.
fn reversal_row(
    msg: &Message,
    merchant: &Merchant,
    c: &Common,
    named: &TxnRecord,
    id: i64,
    instance_id: i16,
) -> NewTxn {
    NewTxn {
        id,
        instance_id,
        merchant_id: merchant.id.clone(),
        terminal_id: c.terminal_id.clone(),
        stan: c.stan.clone(),
        transmitted_at: c.transmitted_at.clone(),
        mti: msg.mti().original().as_str().to_string(),
        kind: Kind::Reversal,
        processing_code: named.processing_code.clone(),
        amount_minor: c.amount_minor as i64,
        currency: c.currency as i16,
        order_ref: None,
        pan_hash: None,
        pan_last4: None,
        card_enc: None,
        rrn: rrn_of(id),
        bank_id: named.bank_id.clone(),
        bank_stan: None,
        bank_transmitted_at: None,
        original_id: Some(named.id),
        state: State::Approved,
        response_code: Some(Rc::APPROVED.as_str().to_string()),
        reason: None,
        refund_reason: None,
        content: Some(c.content),
    }
}

/// A 0600's reference: DE90, or else DE48 `OR` (`30` when neither reads).
fn status_query(msg: &Message) -> Result<(Option<OriginalRef>, Option<String>), Rc> {
    for n in [7u8, 11, 41, 42] {
        if !msg.has(n) {
            return Err(Rc::FORMAT_ERROR);
        }
    }
    let by_ref = match msg.raw(90) {
        Some(de90) => Some(parse_de90(de90).ok_or(Rc::FORMAT_ERROR)?),
        None => None,
    };
    let order_ref = match (&by_ref, msg.raw(48)) {
        (Some(_), _) => None,
        (None, Some(de48)) => match tlv::find(de48, b"OR") {
            Ok(Some(v)) if !v.is_empty() => Some(String::from_utf8_lossy(v).into_owned()),
            _ => return Err(Rc::FORMAT_ERROR),
        },
        (None, None) => return Err(Rc::FORMAT_ERROR),
    };
    Ok((by_ref, order_ref))
}

/// A 0610 about the payment `root`: approved, with DE4 (the original amount), DE48
/// `ST` and DE54 (still refundable), 12-digit minor units.
fn status_answer(root: &TxnRecord) -> (Answer, Option<(String, String, String)>) {
    let p = root.payment();
    let status = p.status();
    let refundable = if matches!(status, Status::Reversed | Status::Declined) {
        0
    } else {
        p.refundable_minor()
    };
    let mut de48 = Vec::new();
    let _ = tlv::push(&mut de48, b"ST", status.as_str().as_bytes());
    let extra = (
        format!("{:012}", root.amount_minor),
        String::from_utf8_lossy(&de48).into_owned(),
        format!("{refundable:012}"),
    );
    let answer = Answer {
        rc: Rc::APPROVED,
        rrn: Some(root.rrn.clone()),
        auth: None,
    };
    (answer, Some(extra))
}

impl Engine {
    fn db_error(&self, e: impl std::fmt::Display) -> Answer {
        tracing::error!(error = %e, "lifecycle request not recorded: answering 96");
        Answer::refused(Rc::MALFUNCTION)
    }

    /// The row the request names and its payment, both locked until the lock is
    /// recorded or dropped; `25` when there is no such original.
    async fn lock_named(
        &self,
        merchant: &Merchant,
        c: &Common,
    ) -> Result<Box<dyn PaymentLock>, Answer> {
        match self
            .store
            .lock_payment(&merchant.id, &c.terminal_id, &c.original)
            .await
        {
            Ok(Some(lock)) => Ok(lock),
            Ok(None) => {
                tracing::info!(rc = "25", "original not found");
                Err(Answer::refused(Rc::NO_ORIGINAL))
            }
            Err(e) => Err(self.db_error(e)),
        }
    }

    /// 0220/0221: capture (part of) a held pre-authorisation.
    pub(crate) async fn complete(&self, msg: &Message, merchant: &Arc<Merchant>) -> Answer {
        let c = match common(msg, merchant) {
            Ok(c) => c,
            Err(rc) => return Answer::refused(rc),
        };
        if msg.raw(3).is_none() {
            return Answer::refused(Rc::FORMAT_ERROR);
        }
        self.lifecycle_request(msg, merchant, c, Kind::Completion, None)
            .await
    }

    /// 0200/0201 with DE3 `20`: refund (part of) a purchase or completion.
    pub(crate) async fn refund(&self, msg: &Message, merchant: &Arc<Merchant>) -> Answer {
        let c = match common(msg, merchant) {
            Ok(c) => c,
            Err(rc) => return Answer::refused(rc),
        };
        let reason = match msg.raw(48) {
            None => None,
            Some(de48) => match tlv::find(de48, b"RR") {
                Ok(r) => r.map(|r| {
                    String::from_utf8_lossy(&r[..r.len().min(REFUND_REASON_MAX_LEN)]).into_owned()
                }),
                Err(_) => return Answer::refused(Rc::FORMAT_ERROR),
            },
        };
        self.lifecycle_request(msg, merchant, c, Kind::Refund, reason)
            .await
    }

    async fn lifecycle_request(
        &self,
        msg: &Message,
        merchant: &Arc<Merchant>,
        c: Common,
        kind: Kind,
        reason: Option<String>,
    ) -> Answer {
        let (guard, _redis_ok) = match self.claim(&c.key, c.content, merchant, None, false).await {
            Claimed::Proceed { guard, redis_ok } => (guard, redis_ok),
            Claimed::Done(answer) => return answer,
        };
        let step = Step {
            msg,
            merchant,
            c,
            kind,
            reason,
        };
        let answer = match self.reserve(&step).await {
            Err(answer) | Ok(Reserved::Done(answer)) => answer,
            Ok(Reserved::Forward(fwd)) => self.forward(fwd).await,
        };
        self.finish(step.c.key, step.c.content, &answer, guard);
        answer
    }

    /// Checks the request against its payment and records it, in one commit. A refund
    /// is recorded with its amount reserved and goes to the bank as a request. A
    /// completion is an advice: recorded with its effect (the payment captured, the
    /// ledger posted) and stored for the bank, which gets it by store and forward (0220,
    /// then 0221 repeats, until it answers); the merchant is answered at once.
    async fn reserve(&self, s: &Step<'_>) -> Result<Reserved, Answer> {
        // The id first: a new block of ids needs a pooled connection, which must never be
        // awaited while this task holds a payment's lock (and so a connection): under a
        // full pool that waits on itself.
        let id = self.ids.next().await.map_err(|e| self.db_error(e))?;
        let lock = self.lock_named(s.merchant, &s.c).await?;
        let (named, root) = (lock.named().clone(), lock.root().clone());
        let payment = root.payment();
        let (amount, currency) = (s.c.amount_minor, s.c.currency);
        let rule = match s.kind {
            Kind::Completion => {
                lifecycle::check_completion(&named.named(), &payment, amount, currency)
            }
            _ => lifecycle::check_refund(&named.named(), &payment, amount, currency),
        };
        if let Err(rc) = rule {
            // A retransmission of a recorded request whose Redis key is gone (flushed,
            // expired, Redis away) gets its recorded answer, not the refusal its own
            // effect now causes: the record comes first in the order of checks
            // (merchant-h2h.md; found by the simulation, docs/simulation.md).
            drop(lock);
            if let Some(answer) = self.answer_from_record(&s.c.key, s.c.content).await {
                return Err(answer);
            }
            tracing::info!(
                rc = rc.as_str(),
                reason = rc.reason(),
                kind = s.kind.as_str(),
                "lifecycle request refused"
            );
            return Err(Answer::refused(rc));
        }
        let exchange = self.lifecycle_bank(&root, s.kind)?;
        let allotted = self.allot(id, exchange);
        let change = match s.kind {
            Kind::Completion => {
                lifecycle::completion_recorded(&payment, amount, switch_auth_code(&allotted.rrn))
            }
            _ => lifecycle::refund_reserved(&payment, amount),
        };
        let request = lifecycle_row(s, &root, &allotted, self.instance_id);
        let recorded = match lock.record(request, change).await {
            Err(e) => self.confirm_record(&s.c.key, &allotted.rrn, e).await,
            Ok(recorded) => Ok(recorded),
        };
        match recorded {
            Ok(true) if s.kind == Kind::Completion => Ok(Reserved::Done(self.completed(allotted))),
            Ok(true) => Ok(Reserved::Forward(
                self.refund_message(s, &named, &root, allotted),
            )),
            Ok(false) => {
                // Recorded before (Redis lost the key): the record answers.
                let answer = self
                    .answer_from_record(&s.c.key, s.c.content)
                    .await
                    .unwrap_or_else(|| Answer::refused(Rc::DUPLICATE));
                drop(allotted);
                Err(answer)
            }
            Err(answer) => {
                drop(allotted);
                Err(answer)
            }
        }
    }

    /// A lifecycle request's record whose commit was not confirmed (`e`): a commit can
    /// succeed while its acknowledgement is lost, and then answering `96` ("not
    /// recorded") would be false. The record says which: `Ok(true)` when the row under
    /// `key` is this request's (`rrn`), `Ok(false)` when it is another's; `96` when
    /// nothing is recorded; no answer ([`Rc::WITHHELD`]) when the record cannot be read
    /// within `outcome_wait_ms` (a retransmission is answered from it later).
    async fn confirm_record(&self, key: &str, rrn: &str, e: StoreError) -> Result<bool, Answer> {
        if e.certainly_not_written() {
            return Err(self.db_error(e));
        }
        let Some(key_ref) = crate::engine::request_ref(key) else {
            return Err(self.db_error(e));
        };
        let started = self.clock.mono();
        let budget = Duration::from_millis(self.outcome_wait_ms);
        loop {
            match self.store.recorded(&key_ref).await {
                Ok(Some(found)) => return Ok(found.rrn == rrn),
                Ok(None) => return Err(self.db_error(e)),
                Err(read) if self.clock.mono().duration_since(started) < budget => {
                    tracing::warn!(error = %read, "lifecycle record unconfirmed; reading it again");
                    tokio::time::sleep(Duration::from_millis(
                        crate::engine::OUTCOME_RETRY_PAUSE_MS,
                    ))
                    .await;
                }
                Err(read) => {
                    tracing::error!(error = %e, read = %read, "lifecycle record unconfirmed: no answer");
                    return Err(Answer {
                        rc: Rc::WITHHELD,
                        rrn: None,
                        auth: None,
                    });
                }
            }
        }
    }

    /// The payment's bank, if it can take the request now. A refund needs the bank now;
    /// a completion (an advice) is stored and forwarded whenever the bank can take it, so
    /// neither a lost link nor the breaker stops it.
    fn lifecycle_bank(&self, root: &TxnRecord, kind: Kind) -> Result<BankExchange, Answer> {
        let bank = root
            .bank_id
            .as_deref()
            .and_then(|b| self.banks.get(b))
            .cloned();
        let gated = kind == Kind::Refund;
        let Some(bank) = bank.filter(|b| !gated || b.is_reachable()) else {
            tracing::info!(rc = "91", "the payment's bank has no ready link");
            return Err(Answer::refused(Rc::ISSUER_DOWN));
        };
        let exchange = if gated {
            BankExchange::gated(&bank, self.clock.clone())
        } else {
            BankExchange::ungated(&bank)
        };
        exchange.map_err(|why| {
            tracing::info!(rc = "91", ?why, "the payment's bank cannot take it now");
            Answer::refused(Rc::ISSUER_DOWN)
        })
    }

    /// The request's id and RRN with its exchange at the bank.
    fn allot(&self, id: i64, exchange: BankExchange) -> Allotted {
        Allotted {
            id,
            rrn: rrn_of(id),
            stan_digits: bank_links::stan::format_stan(exchange.stan()),
            bank_de7: codec::clock::transmission(self.clock.unix_s()),
            exchange,
        }
    }

    /// A completion is recorded: its advice is queued for the bank (whose first send
    /// takes its STAN again; nothing is in flight now) and the merchant answered `00`.
    fn completed(&self, a: Allotted) -> Answer {
        // Nothing goes to the bank now: the store-and-forward worker sends the advice.
        let Allotted { rrn, exchange, .. } = a;
        drop(exchange);
        self.reversal_wake.notify_waiters();
        tracing::info!(rc = "00", rrn = %rrn, "completion recorded; advice queued for the bank");
        let auth = Some(switch_auth_code(&rrn));
        Answer {
            rc: Rc::APPROVED,
            rrn: Some(rrn),
            auth,
        }
    }

    /// The bank's message for a recorded refund: the card from the payment, DE90 naming
    /// what the bank saw.
    fn refund_message(
        &self,
        s: &Step<'_>,
        named: &TxnRecord,
        root: &TxnRecord,
        a: Allotted,
    ) -> Forward {
        let (pan, expiry) = match root
            .card_enc
            .as_deref()
            .map(|c| self.vault.open(Purpose::Card, c))
        {
            Some(Ok(plain)) => split_card(&plain),
            _ => (Vec::new(), Vec::new()),
        };
        let acquirer = self
            .acquirer_ids
            .get(&a.exchange.bank().config.id)
            .cloned()
            .unwrap_or_default();
        let de90 = bank_de90(
            &named.mti,
            named.bank_stan.as_deref().unwrap_or("0"),
            named.bank_transmitted_at.as_deref().unwrap_or("0"),
            &acquirer,
        );
        let amount = format!("{:012}", s.c.amount_minor);
        let currency = format!("{:03}", s.c.currency);
        let request_mti = s.msg.mti().original();
        let mut b = MessageBuilder::new(a.exchange.bank().config.dialect, request_mti);
        if !pan.is_empty() {
            b.set(2, &pan);
        }
        if expiry.len() == 4 {
            b.set(14, &expiry);
        }
        b.set(3, s.msg.raw(3).unwrap_or(b"000000"))
            .set(4, amount.as_bytes())
            .set(7, &a.bank_de7)
            .set(11, &a.stan_digits)
            .set(37, a.rrn.as_bytes())
            .set(41, s.msg.raw(41).unwrap_or(b"        "))
            .set(42, s.msg.raw(42).unwrap_or(b" "))
            .set(49, currency.as_bytes())
            .set(90, de90.as_bytes());
        crate::bank_io::set_acquirer(&mut b, a.exchange.bank(), &acquirer);
        Forward {
            txn_id: a.id,
            kind: s.kind,
            message: b.encode(),
            rrn: a.rrn,
            exchange: a.exchange,
            request_mti,
        }
    }

    /// Sends a reserved request to the bank and records its outcome with its effect on
    /// the payment before answering.
    async fn forward(&self, f: Forward) -> Answer {
        let stan = f.exchange.stan();
        let outcome = f
            .exchange
            .send(f.request_mti.class(), stan, &f.rrn, f.message)
            .await;
        let (reply, auth) = crate::bank_io::reply(&outcome);
        let verdict = lifecycle::refund_verdict(reply);
        let recorded = self
            .retrying("lifecycle outcome", || {
                self.store.settle_refund(f.txn_id, verdict, auth.clone())
            })
            .await;
        if let Err(e) = recorded {
            return crate::engine::outcome_unrecorded(f.rrn, &e);
        }
        if verdict.state == State::Reversing {
            self.reversal_wake.notify_waiters();
        }
        let rc = verdict.rc;
        tracing::info!(rc = rc.as_str(), rrn = %f.rrn, kind = f.kind.as_str(), "lifecycle request answered");
        let auth = if rc == Rc::APPROVED {
            auth.or_else(|| Some(switch_auth_code(&f.rrn)))
        } else {
            None
        };
        Answer {
            rc,
            rrn: Some(f.rrn),
            auth,
        }
    }

    /// 0400/0401: reverse (void) the named purchase, pre-authorisation, completion or
    /// refund. Answered once the reversal is recorded and queued for the bank (store and
    /// forward repeats it there until acknowledged).
    pub(crate) async fn reverse(&self, msg: &Message, merchant: &Arc<Merchant>) -> Answer {
        let c = match common(msg, merchant) {
            Ok(c) => c,
            Err(rc) => return Answer::refused(rc),
        };
        let guard = match self.claim(&c.key, c.content, merchant, None, false).await {
            Claimed::Proceed { guard, .. } => guard,
            Claimed::Done(answer) => return answer,
        };
        let answer = match self.reverse_claimed(msg, merchant, &c).await {
            Ok(a) | Err(a) => a,
        };
        self.finish(c.key, c.content, &answer, guard);
        answer
    }

    /// Finds the request the reversal names, holding it while it is unseen or in flight
    /// ([`lifecycle::plan_reversal`]), then reverses it.
    async fn reverse_claimed(
        &self,
        msg: &Message,
        merchant: &Merchant,
        c: &Common,
    ) -> Result<Answer, Answer> {
        let hold = self.reversal_hold();
        let started = self.clock.mono();
        let original_key = original_key(merchant, c);
        // Before any lock (see `reserve`); unused if nothing is recorded.
        let id = self.ids.next().await.map_err(|e| self.db_error(e))?;
        loop {
            let lock = self.find_named(merchant, c).await?;
            let found = lock
                .as_ref()
                .map(|l| (l.named().named(), l.root().payment()));
            let held = self.clock.mono().duration_since(started);
            let held_ms = u64::try_from(held.as_millis()).unwrap_or(u64::MAX);
            let plan = lifecycle::plan_reversal(
                found.as_ref().map(|(n, p)| (n, p)),
                c.amount_minor,
                held_ms,
                &hold,
            );
            match (plan, lock) {
                (ReversalPlan::Hold, lock) => {
                    // The row lock must go before waiting: the original's outcome is
                    // written under it.
                    drop(lock);
                    self.wait_for_original(&original_key).await;
                }
                (ReversalPlan::Refuse(rc), _) => {
                    tracing::info!(
                        rc = rc.as_str(),
                        reason = rc.reason(),
                        held_ms,
                        "reversal refused"
                    );
                    return Err(Answer::refused(rc));
                }
                (ReversalPlan::NothingToUndo, _) => {
                    tracing::info!(
                        rc = "00",
                        held_ms,
                        "reversal of a declined or refused request: nothing to undo"
                    );
                    return Ok(Answer {
                        rc: Rc::APPROVED,
                        rrn: None,
                        auth: None,
                    });
                }
                (ReversalPlan::Apply(effect), Some(lock)) => {
                    return self
                        .record_reversal(msg, merchant, c, (id, lock), effect)
                        .await;
                }
                (ReversalPlan::Apply(_), None) => {
                    unreachable!("a reversal is applied only to a request found")
                }
            }
        }
    }

    /// The hold's limits: the contract's 2 s for an unseen request; for one in flight,
    /// the longest bank timeout and [`REVERSAL_HOLD_MARGIN_MS`] to record its outcome.
    fn reversal_hold(&self) -> ReversalHold {
        ReversalHold {
            unseen_max_ms: REVERSAL_UNSEEN_MAX_MS,
            in_flight_max_ms: self.bank_timeout_max_ms + REVERSAL_HOLD_MARGIN_MS,
        }
    }

    /// Waits a little for the named request: until it ends if it is in flight here,
    /// else one [`REVERSAL_HOLD_POLL_MS`] pause (it may be in flight on another instance,
    /// or not arrived yet).
    async fn wait_for_original(&self, original_key: &str) {
        match self.inflight.watch(original_key) {
            Some(rx) => {
                let follow = Duration::from_millis(REVERSAL_HOLD_FOLLOW_MS);
                let _ = tokio::time::timeout(follow, owner_gone(rx)).await;
            }
            None => tokio::time::sleep(Duration::from_millis(REVERSAL_HOLD_POLL_MS)).await,
        }
    }

    /// The row the request names and its payment, both locked until the lock is
    /// recorded or dropped; `None` when there is no such request (yet).
    async fn find_named(
        &self,
        merchant: &Merchant,
        c: &Common,
    ) -> Result<Option<Box<dyn PaymentLock>>, Answer> {
        self.store
            .lock_payment(&merchant.id, &c.terminal_id, &c.original)
            .await
            .map_err(|e| self.db_error(e))
    }

    /// Records the reversal of the locked request with `effect` and wakes the reversal
    /// workers; answered `00` with the reversal's own RRN.
    async fn record_reversal(
        &self,
        msg: &Message,
        merchant: &Merchant,
        c: &Common,
        (id, lock): (i64, Box<dyn PaymentLock>),
        effect: ReversalEffect,
    ) -> Result<Answer, Answer> {
        let (named, root) = (lock.named().clone(), lock.root().clone());
        let request = reversal_row(msg, merchant, c, &named, id, self.instance_id);
        let rrn = request.rrn.clone();
        let change = lifecycle::reversal_recorded(effect, &named.named(), &root.payment());
        let recorded = match lock.record(request, change).await {
            Err(e) => self.confirm_record(&c.key, &rrn, e).await?,
            Ok(recorded) => recorded,
        };
        if !recorded {
            return Ok(self
                .answer_from_record(&c.key, c.content)
                .await
                .unwrap_or_else(|| Answer::refused(Rc::DUPLICATE)));
        }
        self.reversal_wake.notify_waiters();
        tracing::info!(rc = "00", rrn = %rrn, reversed = %named.rrn, ?effect, "reversal recorded");
        let auth = Some(switch_auth_code(&rrn));
        Ok(Answer {
            rc: Rc::APPROVED,
            rrn: Some(rrn),
            auth,
        })
    }

    /// 0600: where a payment stands, by DE90 or by DE48 `OR`. Always answered afresh.
    /// Returns the answer and the 0610's extra elements (DE4, DE48 ST, DE54).
    pub(crate) async fn status(
        &self,
        msg: &Message,
        merchant: &Merchant,
    ) -> (Answer, Option<(String, String, String)>) {
        let (by_ref, order_ref) = match status_query(msg) {
            Ok(q) => q,
            Err(rc) => return (Answer::refused(rc), None),
        };
        let root = match (&by_ref, &order_ref) {
            (Some(r), _) => {
                let terminal = String::from_utf8_lossy(msg.raw(41).unwrap_or(b""))
                    .trim_end()
                    .to_string();
                self.store.payment_of(&merchant.id, &terminal, r).await
            }
            (None, Some(or)) => self.store.payment_by_order_ref(&merchant.id, or).await,
            (None, None) => Ok(None),
        };
        match root {
            Err(e) => (self.db_error(e), None),
            Ok(None) => (Answer::refused(Rc::NO_ORIGINAL), None),
            Ok(Some(root)) => status_answer(&root),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves DE90 reads the contract's example and refuses malformed ones.
    #[test]
    fn de90() {
        let r = parse_de90(b"010000000411260653020000000000000000000000").unwrap();
        assert_eq!(
            r,
            OriginalRef {
                mti: "0100".into(),
                stan: "000004".into(),
                transmitted_at: "1126065302".into()
            }
        );
        assert_eq!(
            parse_de90(b"020100000311260653010000000000000000000000")
                .unwrap()
                .mti,
            "0200",
            "repeat counts as original"
        );
        assert!(
            parse_de90(b"0100000004112606530200000000000000000000").is_none(),
            "short"
        );
        assert!(
            parse_de90(b"010000000413260653020000000000000000000000").is_none(),
            "month 13"
        );
        assert_eq!(
            bank_de90("0200", "000042", "1126065301", "123456"),
            format!("0200000042112606530100000123456{}", "0".repeat(11))
        );
    }
}
