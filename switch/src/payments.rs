//! The rest of the payment lifecycle on the request path: completion (0220), refund (0200
//! with DE3 `20`), reversal (0400) and status (0600).
//!
//! Each request first passes the retransmission check and limits ([`Engine::claim`]); the
//! rules come from [`crate::lifecycle`]; the effect on the payment is applied in one
//! PostgreSQL transaction holding the payment's row lock, so two requests racing for the
//! same money (on one instance or several) are serialised by the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bank_links::{Bank, Outcome as LinkOutcome};
use codec::{Message, MessageBuilder, Mti, tlv};
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;

use crate::answer::Answer;
use crate::checks::{Kind, Rc, valid_transmission};
use crate::crypto::{Purpose, split_card};
use crate::engine::{Claimed, Engine, request_key};
use crate::ids::rrn_of;
use crate::lifecycle::{self, Named, Payment, ReversalEffect, State, Status};
use crate::merchants::Merchant;

/// Longest refund reason kept (DE48 `RR` is free text inside an LLLVAR of 999).
pub const REFUND_REASON_MAX_LEN: usize = 255;

/// The contract puts DE38 on every approval. Banks often send none for completions,
/// refunds and reversals; the switch then gives its own: the last six digits of the RRN,
/// stable across retransmissions.
pub fn switch_auth_code(rrn: &str) -> String {
    rrn[rrn.len().saturating_sub(6)..].to_string()
}

/// The original a request names in DE90: MTI, STAN and DE7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalRef {
    pub mti: String,
    pub stan: String,
    pub transmitted_at: String,
}

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

/// The columns every lifecycle query reads, in this order (see [`Row`] readers below).
pub(crate) const TXN_COLUMNS: &str = "id, kind, state, amount_minor, currency, captured_minor, refunded_minor, \
    refund_reserved_minor, completion_pending, original_id, rrn, bank_id, bank_stan, bank_transmitted_at, mti, \
    processing_code, card_enc, pan_hash, pan_last4, order_ref, terminal_id";

/// A transaction row as the lifecycle reads it.
#[derive(Debug, Clone)]
pub struct TxnRow {
    pub id: i64,
    pub kind: Kind,
    pub state: State,
    pub amount_minor: u64,
    pub currency: u16,
    pub captured_minor: u64,
    pub refunded_minor: u64,
    pub refund_reserved_minor: u64,
    pub completion_pending: bool,
    pub original_id: Option<i64>,
    pub rrn: String,
    pub bank_id: Option<String>,
    pub bank_stan: Option<String>,
    pub bank_transmitted_at: Option<String>,
    pub mti: String,
    pub processing_code: String,
    pub card_enc: Option<Vec<u8>>,
    pub pan_hash: Option<Vec<u8>>,
    pub pan_last4: Option<String>,
    pub order_ref: Option<String>,
    pub terminal_id: String,
}

fn kind_of(s: &str) -> Kind {
    match s {
        "purchase" => Kind::Purchase,
        "preauth" => Kind::Preauth,
        "completion" => Kind::Completion,
        "refund" => Kind::Refund,
        _ => Kind::Reversal,
    }
}

impl TxnRow {
    pub(crate) fn from_row(r: &Row) -> TxnRow {
        TxnRow {
            id: r.get(0),
            kind: kind_of(r.get::<_, &str>(1)),
            state: State::parse(r.get::<_, &str>(2)).unwrap_or(State::Refused),
            amount_minor: r.get::<_, i64>(3) as u64,
            currency: r.get::<_, i16>(4) as u16,
            captured_minor: r.get::<_, i64>(5) as u64,
            refunded_minor: r.get::<_, i64>(6) as u64,
            refund_reserved_minor: r.get::<_, i64>(7) as u64,
            completion_pending: r.get(8),
            original_id: r.get(9),
            rrn: r.get(10),
            bank_id: r.get(11),
            bank_stan: r.get(12),
            bank_transmitted_at: r.get(13),
            mti: r.get(14),
            processing_code: r.get(15),
            card_enc: r.get(16),
            pan_hash: r.get(17),
            pan_last4: r.get(18),
            order_ref: r.get(19),
            terminal_id: r.get(20),
        }
    }

    pub fn payment(&self) -> Payment {
        Payment {
            kind: self.kind,
            state: self.state,
            amount_minor: self.amount_minor,
            currency: self.currency,
            captured_minor: self.captured_minor,
            refunded_minor: self.refunded_minor,
            refund_reserved_minor: self.refund_reserved_minor,
            completion_pending: self.completion_pending,
        }
    }

    pub fn named(&self) -> Named {
        Named {
            kind: self.kind,
            state: self.state,
            amount_minor: self.amount_minor,
            currency: self.currency,
        }
    }

    fn is_root(&self) -> bool {
        matches!(self.kind, Kind::Purchase | Kind::Preauth)
    }
}

/// The row named by a DE90 reference and its payment's root, both locked when `lock`.
async fn load_named<C: GenericClient>(
    c: &C,
    merchant_id: &str,
    terminal_id: &str,
    r: &OriginalRef,
    lock: bool,
) -> Result<Option<(TxnRow, TxnRow)>, tokio_postgres::Error> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    let q = format!(
        "SELECT {TXN_COLUMNS} FROM transactions WHERE merchant_id = $1 AND terminal_id = $2 AND mti = $3 \
         AND stan = $4 AND transmitted_at = $5{suffix}"
    );
    let Some(row) = c
        .query_opt(
            &q,
            &[
                &merchant_id,
                &terminal_id,
                &r.mti,
                &r.stan,
                &r.transmitted_at,
            ],
        )
        .await?
    else {
        return Ok(None);
    };
    let named = TxnRow::from_row(&row);
    if named.is_root() {
        return Ok(Some((named.clone(), named)));
    }
    let Some(root_id) = named.original_id else {
        return Ok(None);
    };
    let q = format!("SELECT {TXN_COLUMNS} FROM transactions WHERE id = $1{suffix}");
    let root = c
        .query_opt(&q, &[&root_id])
        .await?
        .map(|r| TxnRow::from_row(&r));
    Ok(root.map(|root| (named, root)))
}

fn business_day_sql() -> &'static str {
    "(now() AT TIME ZONE 'UTC' - make_interval(hours => $3::int))::date"
}

/// Posts `amount_minor` to the bank (debit) and the merchant (credit) for a transaction;
/// negative amounts post the other way.
async fn post(
    tx: &Transaction<'_>,
    txn_id: i64,
    bank_id: &str,
    merchant_id: &str,
    amount_minor: i64,
    currency: i16,
    cutover: i32,
) -> Result<(), tokio_postgres::Error> {
    let q = format!(
        "INSERT INTO ledger_postings (transaction_id, account, amount_minor, currency, business_day) \
         VALUES ($1, $2, $4, $5, {bd}), ($1, $6, -$4, $5, {bd})",
        bd = business_day_sql()
    );
    tx.execute(
        &q,
        &[
            &txn_id,
            &format!("bank:{bank_id}"),
            &cutover,
            &amount_minor,
            &currency,
            &format!("merchant:{merchant_id}"),
        ],
    )
    .await?;
    Ok(())
}

/// Undoes a transaction's postings under the reversing transaction's id.
async fn post_negation(
    tx: &Transaction<'_>,
    reversal_id: i64,
    named_id: i64,
    cutover: i32,
) -> Result<(), tokio_postgres::Error> {
    let q = format!(
        "INSERT INTO ledger_postings (transaction_id, account, amount_minor, currency, business_day) \
         SELECT $1, account, -amount_minor, currency, {bd} FROM ledger_postings WHERE transaction_id = $2",
        bd = business_day_sql()
    );
    tx.execute(&q, &[&reversal_id, &named_id, &cutover]).await?;
    Ok(())
}

/// Elements common to the lifecycle requests, checked present and well formed.
struct Common {
    key: String,
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
        terminal_id: String::from_utf8_lossy(terminal).trim_end().to_string(),
        stan: String::from_utf8_lossy(stan).into_owned(),
        transmitted_at: String::from_utf8_lossy(de7).into_owned(),
        amount_minor: msg.get_u64(4).ok_or(Rc::FORMAT_ERROR)?,
        currency: msg.get_u64(49).ok_or(Rc::FORMAT_ERROR)? as u16,
        original,
    })
}

/// What recording a lifecycle request leads to.
enum Reserved {
    /// A refund to send to the bank.
    Forward(Forward),
    /// Answered already (a completion, recorded and queued for the bank).
    Done(Answer),
}

/// What a lifecycle request sends to the bank once its effect is reserved.
struct Forward {
    txn_id: i64,
    kind: Kind,
    rrn: String,
    bank: Bank,
    bank_stan: u32,
    message: Result<bytes::Bytes, codec::EncodeError>,
    request_mti: Mti,
}

impl Engine {
    fn db_error(&self, e: impl std::fmt::Display) -> Answer {
        tracing::error!(error = %e, "lifecycle request not recorded: answering 96");
        Answer::refused(Rc::MALFUNCTION)
    }

    /// The row the request names and its payment, both locked until `tx` ends; `25` when
    /// there is no such original.
    async fn lock_named(
        &self,
        tx: &Transaction<'_>,
        merchant: &Merchant,
        c: &Common,
    ) -> Result<(TxnRow, TxnRow), Answer> {
        match load_named(tx, &merchant.id, &c.terminal_id, &c.original, true).await {
            Ok(Some(found)) => Ok(found),
            Ok(None) => {
                tracing::info!(rc = "25", "original not found");
                Err(Answer::refused(Rc::NO_ORIGINAL))
            }
            Err(e) => Err(self.db_error(e)),
        }
    }

    fn cutover(&self) -> i32 {
        i32::from(self.business_day_cutover_hour)
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
        let (guard, _redis_ok) = match self.claim(&c.key, merchant, None, false).await {
            Claimed::Proceed { guard, redis_ok } => (guard, redis_ok),
            Claimed::Done(answer) => return answer,
        };
        let answer = match self.reserve(msg, merchant, &c, kind, reason).await {
            Err(answer) | Ok(Reserved::Done(answer)) => answer,
            Ok(Reserved::Forward(fwd)) => self.forward(fwd, &merchant.id).await,
        };
        self.finish(c.key, &answer, guard);
        answer
    }

    /// Checks the request against its payment and records it, in one transaction. A refund
    /// is recorded with its amount reserved and goes to the bank as a request. A completion
    /// is an advice: recorded with its effect (the payment captured, the ledger posted) and
    /// stored for the bank, which gets it by store and forward (0220, then 0221 repeats,
    /// until it answers); the merchant is answered at once.
    async fn reserve(
        &self,
        msg: &Message,
        merchant: &Merchant,
        c: &Common,
        kind: Kind,
        reason: Option<String>,
    ) -> Result<Reserved, Answer> {
        let mut client = self.pool.get().await.map_err(|e| self.db_error(e))?;
        let tx = client.transaction().await.map_err(|e| self.db_error(e))?;
        let (named, root) = self.lock_named(&tx, merchant, c).await?;
        let payment = root.payment();
        let rule = match kind {
            Kind::Completion => {
                lifecycle::check_completion(&named.named(), &payment, c.amount_minor, c.currency)
            }
            _ => lifecycle::check_refund(&named.named(), &payment, c.amount_minor, c.currency),
        };
        if let Err(rc) = rule {
            tracing::info!(
                rc = rc.as_str(),
                reason = rc.reason(),
                kind = kind.as_str(),
                "lifecycle request refused"
            );
            return Err(Answer::refused(rc));
        }
        let bank = root
            .bank_id
            .as_deref()
            .and_then(|b| self.banks.get(b))
            .cloned();
        // A refund needs the bank now; a completion (an advice) is stored and forwarded
        // whenever the bank can take it, so neither a lost link nor the breaker stops it.
        let gated = kind == Kind::Refund;
        let Some(bank) = bank.filter(|b| !gated || b.is_reachable()) else {
            tracing::info!(rc = "91", "the payment's bank has no ready link");
            return Err(Answer::refused(Rc::ISSUER_DOWN));
        };
        if gated && !bank.allow(Instant::now()) {
            tracing::info!(rc = "91", "the payment's bank circuit breaker is open");
            return Err(Answer::refused(Rc::ISSUER_DOWN));
        }
        // Frees the breaker's probe when nothing reaches the bank after all.
        let abandon = || {
            if gated {
                bank.abandon(Instant::now());
            }
        };
        let id = self.ids.next().await.map_err(|e| {
            abandon();
            self.db_error(e)
        })?;
        let rrn = rrn_of(id);
        let bank_stan = bank.stans.allocate().map_err(|_| {
            abandon();
            Answer::refused(Rc::ISSUER_DOWN)
        })?;
        let stan_digits = bank_links::stan::format_stan(bank_stan);
        let bank_de7 = codec::clock::transmission(codec::clock::unix_now());
        let processing_code = String::from_utf8_lossy(msg.raw(3).unwrap_or(b"000000")).into_owned();
        let inserted = tx
            .execute(
                "INSERT INTO transactions (id, instance_id, merchant_id, terminal_id, stan, transmitted_at, mti, kind, \
                 processing_code, amount_minor, currency, pan_hash, pan_last4, card_enc, rrn, bank_id, bank_stan, \
                 bank_transmitted_at, original_id, state, refund_reason, order_ref) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
                 'authorising', $20, $21) ON CONFLICT DO NOTHING",
                &[
                    &id,
                    &self.instance_id,
                    &merchant.id,
                    &c.terminal_id,
                    &c.stan,
                    &c.transmitted_at,
                    &msg.mti().original().as_str(),
                    &kind.as_str(),
                    &processing_code,
                    &(c.amount_minor as i64),
                    &(c.currency as i16),
                    &root.pan_hash,
                    &root.pan_last4,
                    &root.card_enc,
                    &rrn,
                    &bank.config.id,
                    &String::from_utf8_lossy(&stan_digits).into_owned(),
                    &String::from_utf8_lossy(&bank_de7).into_owned(),
                    &root.id,
                    &reason,
                    &root.order_ref,
                ],
            )
            .await;
        // Nothing reaches the bank after all: free the STAN and the breaker's probe.
        let release = |a: Answer| {
            bank.stans.release(bank_stan);
            abandon();
            a
        };
        match inserted {
            Ok(1) => {}
            Ok(_) => {
                drop(tx);
                // Recorded before (Redis lost the key): the record answers.
                let answer = self
                    .answer_from_record(&c.key)
                    .await
                    .unwrap_or_else(|| Answer::refused(Rc::DUPLICATE));
                return Err(release(answer));
            }
            Err(e) => return Err(release(self.db_error(e))),
        }
        if kind == Kind::Completion {
            let auth = switch_auth_code(&rrn);
            let amount = c.amount_minor as i64;
            let captured: Result<(), tokio_postgres::Error> = async {
                tx.execute(
                    "UPDATE transactions SET state = 'approved', response_code = '00', auth_code = $2 WHERE id = $1",
                    &[&id, &auth],
                )
                .await?;
                tx.execute(
                    "UPDATE transactions SET state = 'captured', captured_minor = $2, updated_at = now() WHERE id = $1",
                    &[&root.id, &amount],
                )
                .await?;
                tx.execute(
                    "INSERT INTO reversals (transaction_id, bank_id, reason, kind) VALUES ($1, $2, 'completion', 'advice')",
                    &[&id, &bank.config.id],
                )
                .await?;
                post(&tx, id, &bank.config.id, &merchant.id, amount, c.currency as i16, self.cutover()).await
            }
            .await;
            // The advice's first send takes its STAN again; nothing is in flight now.
            bank.stans.release(bank_stan);
            if let Err(e) = captured {
                abandon();
                return Err(self.db_error(e));
            }
            if let Err(e) = tx.commit().await {
                abandon();
                return Err(self.db_error(e));
            }
            abandon();
            self.reversal_wake.notify_waiters();
            tracing::info!(rc = "00", rrn = %rrn, "completion recorded; advice queued for the bank");
            return Ok(Reserved::Done(Answer {
                rc: Rc::APPROVED,
                rrn: Some(rrn),
                auth: Some(auth),
            }));
        }
        // A refund stays 'authorising' until the bank answers: recovery finds it here.
        if let Err(e) = tx
            .execute(
                "INSERT INTO in_doubt (transaction_id, instance_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&id, &self.instance_id],
            )
            .await
        {
            return Err(release(self.db_error(e)));
        }
        let effect = tx
            .execute(
                "UPDATE transactions SET refund_reserved_minor = refund_reserved_minor + $2, updated_at = now() \
                 WHERE id = $1",
                &[&root.id, &(c.amount_minor as i64)],
            )
            .await;
        if let Err(e) = effect {
            return Err(release(self.db_error(e)));
        }
        if let Err(e) = tx.commit().await {
            return Err(release(self.db_error(e)));
        }

        // The bank's message: the card from the payment, DE90 naming what the bank saw.
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
            .get(&bank.config.id)
            .cloned()
            .unwrap_or_default();
        let de90 = bank_de90(
            &named.mti,
            named.bank_stan.as_deref().unwrap_or("0"),
            named.bank_transmitted_at.as_deref().unwrap_or("0"),
            &acquirer,
        );
        let amount = format!("{:012}", c.amount_minor);
        let currency = format!("{:03}", c.currency);
        let request_mti = msg.mti().original();
        let mut b = MessageBuilder::new(bank.config.dialect, request_mti);
        if !pan.is_empty() {
            b.set(2, &pan);
        }
        if expiry.len() == 4 {
            b.set(14, &expiry);
        }
        b.set(3, processing_code.as_bytes())
            .set(4, amount.as_bytes())
            .set(7, &bank_de7)
            .set(11, &stan_digits)
            .set(37, rrn.as_bytes())
            .set(41, msg.raw(41).unwrap_or(b"        "))
            .set(42, msg.raw(42).unwrap_or(b" "))
            .set(49, currency.as_bytes())
            .set(90, de90.as_bytes());
        crate::bank_io::set_acquirer(&mut b, &bank, &acquirer);
        let message = b.encode();
        Ok(Reserved::Forward(Forward {
            txn_id: id,
            kind,
            rrn,
            bank,
            bank_stan,
            message,
            request_mti,
        }))
    }

    /// Sends a reserved request to the bank and records its outcome with its effect on
    /// the payment before answering.
    async fn forward(&self, f: Forward, merchant_id: &str) -> Answer {
        let outcome = crate::bank_io::send(
            &f.bank,
            f.request_mti.class(),
            f.bank_stan,
            &f.rrn,
            f.message.clone(),
        )
        .await;
        f.bank.record_outcome(Instant::now(), &outcome);
        f.bank.stans.release(f.bank_stan);
        let (rc, auth) = match &outcome {
            LinkOutcome::Answered(reply) => {
                let rc = Rc::from_bank(reply.raw(39).unwrap_or(b"05"));
                let auth = (rc == Rc::APPROVED)
                    .then(|| reply.get_str(38).map(|s| s.trim_end().to_string()))
                    .flatten();
                (rc, auth)
            }
            _ => (Rc::ISSUER_DOWN, None),
        };
        let mut attempt = 0;
        loop {
            match self
                .record_lifecycle_outcome(&f, merchant_id, rc, auth.as_deref())
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < crate::engine::OUTCOME_RETRY_MAX => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "lifecycle outcome not recorded yet; retrying");
                    tokio::time::sleep(Duration::from_millis(
                        crate::engine::OUTCOME_RETRY_PAUSE_MS,
                    ))
                    .await;
                }
                Err(e) => {
                    tracing::error!(error = %e, rrn = %f.rrn, "outcome could not be recorded: answering 96; recovery will reverse");
                    return Answer {
                        rc: Rc::MALFUNCTION,
                        rrn: Some(f.rrn),
                        auth: None,
                    };
                }
            }
        }
        if rc == Rc::ISSUER_DOWN {
            self.reversal_wake.notify_waiters();
        }
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

    async fn record_lifecycle_outcome(
        &self,
        f: &Forward,
        merchant_id: &str,
        rc: Rc,
        auth: Option<&str>,
    ) -> Result<(), tokio_postgres::Error> {
        let mut client = match self.pool.get().await {
            Ok(c) => c,
            Err(deadpool_postgres::PoolError::Backend(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "no database connection");
                tokio::time::sleep(Duration::from_millis(crate::engine::OUTCOME_RETRY_PAUSE_MS))
                    .await;
                return Box::pin(self.record_lifecycle_outcome(f, merchant_id, rc, auth)).await;
            }
        };
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                "SELECT original_id, amount_minor, currency, bank_id FROM transactions WHERE id = $1 FOR UPDATE",
                &[&f.txn_id],
            )
            .await?;
        let root_id: i64 = row.get(0);
        let amount: i64 = row.get(1);
        let currency: i16 = row.get(2);
        let bank_id: String = row.get(3);
        tx.execute(
            "SELECT 1 FROM transactions WHERE id = $1 FOR UPDATE",
            &[&root_id],
        )
        .await?;
        let state = match rc {
            Rc::APPROVED => "approved",
            Rc::ISSUER_DOWN => "reversing",
            _ => "declined",
        };
        tx.execute(
            "UPDATE transactions SET state = $2, response_code = $3, auth_code = $4, updated_at = now() WHERE id = $1",
            &[&f.txn_id, &state, &rc.as_str(), &auth],
        )
        .await?;
        tx.execute(
            "DELETE FROM in_doubt WHERE transaction_id = $1",
            &[&f.txn_id],
        )
        .await?;
        match (f.kind, rc) {
            (Kind::Refund, Rc::APPROVED) => {
                tx.execute(
                    "UPDATE transactions SET refund_reserved_minor = refund_reserved_minor - $2, \
                     refunded_minor = refunded_minor + $2, updated_at = now() WHERE id = $1",
                    &[&root_id, &amount],
                )
                .await?;
                post(
                    &tx,
                    f.txn_id,
                    &bank_id,
                    merchant_id,
                    -amount,
                    currency,
                    self.cutover(),
                )
                .await?;
            }
            // Unknown at the bank: reverse it; the reservation holds until the bank
            // acknowledges the reversal (see reversals.rs).
            (_, Rc::ISSUER_DOWN) => {
                tx.execute(
                    "INSERT INTO reversals (transaction_id, bank_id, reason) VALUES ($1, $2, 'timeout') \
                     ON CONFLICT (transaction_id, kind) DO NOTHING",
                    &[&f.txn_id, &bank_id],
                )
                .await?;
            }
            _ => {
                tx.execute(
                    "UPDATE transactions SET refund_reserved_minor = refund_reserved_minor - $2, updated_at = now() \
                     WHERE id = $1",
                    &[&root_id, &amount],
                )
                .await?;
            }
        }
        tx.commit().await
    }

    /// 0400/0401: reverse (void) the named purchase, pre-authorisation, completion or
    /// refund. Answered once the reversal is recorded and queued for the bank (store and
    /// forward repeats it there until acknowledged).
    pub(crate) async fn reverse(&self, msg: &Message, merchant: &Arc<Merchant>) -> Answer {
        let c = match common(msg, merchant) {
            Ok(c) => c,
            Err(rc) => return Answer::refused(rc),
        };
        let guard = match self.claim(&c.key, merchant, None, false).await {
            Claimed::Proceed { guard, .. } => guard,
            Claimed::Done(answer) => return answer,
        };
        let answer = match self.reverse_claimed(msg, merchant, &c).await {
            Ok(a) | Err(a) => a,
        };
        self.finish(c.key, &answer, guard);
        answer
    }

    async fn reverse_claimed(
        &self,
        msg: &Message,
        merchant: &Merchant,
        c: &Common,
    ) -> Result<Answer, Answer> {
        let mut client = self.pool.get().await.map_err(|e| self.db_error(e))?;
        let tx = client.transaction().await.map_err(|e| self.db_error(e))?;
        let (named, root) = self.lock_named(&tx, merchant, c).await?;
        let effect = lifecycle::check_reversal(&named.named(), &root.payment(), c.amount_minor)
            .map_err(|rc| {
                tracing::info!(rc = rc.as_str(), reason = rc.reason(), "reversal refused");
                Answer::refused(rc)
            })?;
        let id = self.ids.next().await.map_err(|e| self.db_error(e))?;
        let rrn = rrn_of(id);
        let inserted = tx
            .execute(
                "INSERT INTO transactions (id, instance_id, merchant_id, terminal_id, stan, transmitted_at, mti, kind, \
                 processing_code, amount_minor, currency, rrn, bank_id, original_id, state, response_code) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'reversal', $8, $9, $10, $11, $12, $13, 'approved', '00') \
                 ON CONFLICT DO NOTHING",
                &[
                    &id,
                    &self.instance_id,
                    &merchant.id,
                    &c.terminal_id,
                    &c.stan,
                    &c.transmitted_at,
                    &msg.mti().original().as_str(),
                    &named.processing_code,
                    &(c.amount_minor as i64),
                    &(c.currency as i16),
                    &rrn,
                    &named.bank_id,
                    &named.id,
                ],
            )
            .await
            .map_err(|e| self.db_error(e))?;
        if inserted == 0 {
            drop(tx);
            return Ok(self
                .answer_from_record(&c.key)
                .await
                .unwrap_or_else(|| Answer::refused(Rc::DUPLICATE)));
        }
        let cutover = self.cutover();
        let applied: Result<(), tokio_postgres::Error> = async {
            match effect {
                ReversalEffect::AlreadyReversed => {}
                ReversalEffect::VoidPayment => {
                    tx.execute("UPDATE transactions SET state = 'reversed', updated_at = now() WHERE id = $1", &[&named.id])
                        .await?;
                }
                ReversalEffect::UndoCompletion => {
                    tx.execute("UPDATE transactions SET state = 'reversed', updated_at = now() WHERE id = $1", &[&named.id])
                        .await?;
                    tx.execute(
                        "UPDATE transactions SET state = 'approved', captured_minor = 0, updated_at = now() WHERE id = $1",
                        &[&root.id],
                    )
                    .await?;
                }
                ReversalEffect::UndoRefund => {
                    tx.execute("UPDATE transactions SET state = 'reversed', updated_at = now() WHERE id = $1", &[&named.id])
                        .await?;
                    tx.execute(
                        "UPDATE transactions SET refunded_minor = refunded_minor - $2, updated_at = now() WHERE id = $1",
                        &[&root.id, &(named.amount_minor as i64)],
                    )
                    .await?;
                }
            }
            if effect != ReversalEffect::AlreadyReversed {
                post_negation(&tx, id, named.id, cutover).await?;
                if let Some(bank) = &named.bank_id {
                    tx.execute(
                        "INSERT INTO reversals (transaction_id, bank_id, reason) VALUES ($1, $2, 'merchant') \
                         ON CONFLICT (transaction_id, kind) DO NOTHING",
                        &[&named.id, bank],
                    )
                    .await?;
                }
            }
            Ok(())
        }
        .await;
        applied.map_err(|e| self.db_error(e))?;
        tx.commit().await.map_err(|e| self.db_error(e))?;
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
        for n in [7u8, 11, 41, 42] {
            if !msg.has(n) {
                return (Answer::refused(Rc::FORMAT_ERROR), None);
            }
        }
        let by_ref = match msg.raw(90) {
            Some(de90) => match parse_de90(de90) {
                Some(r) => Some(r),
                None => return (Answer::refused(Rc::FORMAT_ERROR), None),
            },
            None => None,
        };
        let order_ref = match (&by_ref, msg.raw(48)) {
            (Some(_), _) => None,
            (None, Some(de48)) => match tlv::find(de48, b"OR") {
                Ok(Some(v)) if !v.is_empty() => Some(String::from_utf8_lossy(v).into_owned()),
                _ => return (Answer::refused(Rc::FORMAT_ERROR), None),
            },
            (None, None) => return (Answer::refused(Rc::FORMAT_ERROR), None),
        };
        let client = match self.pool.get().await {
            Ok(c) => c,
            Err(e) => return (self.db_error(e), None),
        };
        let root = match (&by_ref, &order_ref) {
            (Some(r), _) => {
                let terminal = String::from_utf8_lossy(msg.raw(41).unwrap_or(b"")).trim_end().to_string();
                load_named(&client, &merchant.id, &terminal, r, false).await.map(|o| o.map(|(_, root)| root))
            }
            (None, Some(or)) => client
                .query_opt(
                    &format!(
                        "SELECT {TXN_COLUMNS} FROM transactions WHERE merchant_id = $1 AND order_ref = $2 \
                         AND kind IN ('purchase', 'preauth') ORDER BY id DESC LIMIT 1"
                    ),
                    &[&merchant.id, or],
                )
                .await
                .map(|o| o.map(|r| TxnRow::from_row(&r))),
            (None, None) => Ok(None),
        };
        match root {
            Err(e) => (self.db_error(e), None),
            Ok(None) => (Answer::refused(Rc::NO_ORIGINAL), None),
            Ok(Some(root)) => {
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
                (
                    Answer {
                        rc: Rc::APPROVED,
                        rrn: Some(root.rrn.clone()),
                        auth: None,
                    },
                    Some(extra),
                )
            }
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
