//! Completions (0220/0221: capture of a held pre-authorisation, recorded with its effect
//! and forwarded to the bank as an advice) and refunds (0200/0201 with DE3 `20`: the amount
//! reserved under the payment's lock, then sent to the bank, then settled).

use super::*;
use crate::engine::{BankStamp, text};

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
    stamp: BankStamp,
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
        bank_stan: Some(text(&a.stamp.stan)),
        bank_transmitted_at: Some(text(&a.stamp.de7)),
        original_id: Some(root.id),
        state: State::Authorising,
        response_code: None,
        reason: None,
        refund_reason: s.reason.clone(),
        content: Some(c.content),
    }
}

impl Engine {
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
    pub(super) async fn confirm_record(
        &self,
        key: &str,
        rrn: &str,
        e: StoreError,
    ) -> Result<bool, Answer> {
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
            stamp: BankStamp::new(exchange.stan(), self.clock.unix_s()),
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
            .set(7, &a.stamp.de7)
            .set(11, &a.stamp.stan)
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
        if verdict.needs_reversal() {
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
}
