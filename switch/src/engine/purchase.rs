//! Purchases and pre-authorisations (0200, 0100): admission (route, link, breaker),
//! the record before anything reaches the bank, the bank exchange, the outcome recorded
//! before the answer.

use super::admission::{self, Refusal, Route};
use super::*;
use crate::checks::Kind;

impl Engine {
    /// A purchase or pre-authorisation, from the retransmission lookup to the answer.
    pub(super) async fn authorise(
        &self,
        msg: &Message,
        merchant: &Arc<Merchant>,
        a: Authorisation<'_>,
        trace: &mut Trace,
    ) -> Answer {
        let key = request_key(
            &merchant.id,
            a.terminal_id,
            a.stan,
            a.transmitted_at,
            msg.mti(),
        );
        let content = ContentDigest::of(msg);
        let local = checks::business_checks(&a, merchant, today(&*self.clock));
        let pan_hash = self.vault.pan_hash(a.pan);
        let pan_hash_hex = hex::encode(&pan_hash[..16]);
        let guard = match self
            .claim(&key, content, merchant, Some(&pan_hash_hex), local.is_err())
            .await
        {
            Claimed::Proceed { guard, .. } => guard,
            Claimed::Done(answer) => return answer,
        };
        if let Err(rc) = local {
            tracing::info!(rc = rc.as_str(), reason = rc.reason(), card = %masked(a.pan), "request refused");
            let answer = Answer::refused(rc);
            guard.resolve(answer.clone());
            return answer;
        }
        let request = AuthRequest {
            msg,
            merchant,
            a: &a,
            key: &key,
            content,
            order_ref: text(a.order_ref),
            pan_hash,
        };
        let answer = self.authorise_claimed(&request, trace).await;
        self.finish(key, content, &answer, guard);
        answer
    }

    /// A claimed purchase or pre-authorisation: admitted, recorded, asked of the bank,
    /// its outcome recorded, answered.
    async fn authorise_claimed(&self, r: &AuthRequest<'_, '_>, trace: &mut Trace) -> Answer {
        // The exchange holds the STAN and the breaker's probe: every return before it is
        // sent gives them back.
        let exchange = match self.admit(r).await {
            Ok(exchange) => exchange,
            Err(answer) => return answer,
        };
        let sent = match self.record_request(r, &exchange).await {
            Ok(sent) => sent,
            Err(answer) => return answer,
        };
        let bank = &exchange.bank().clone();
        let started = Instant::now();
        let exchange = self.ask_bank(r, exchange, &sent).await;
        trace.bank_round_trip = started.elapsed();
        self.metrics
            .bank_round_trip
            .with_label_values(&[bank.config.id.as_str()])
            .observe(trace.bank_round_trip.as_secs_f64());
        let (outcome, answer) = self.settle(bank, &sent, exchange, started);
        let reversing = outcome.reversal.is_some();
        // No answer before the outcome is recorded. If it cannot be, the row stays
        // 'authorising' and recovery reverses it at the next start.
        let recorded = self
            .retrying("outcome", || self.store.record_outcome(outcome.clone()))
            .await;
        let answer = match recorded {
            Ok((true, 0)) => answer,
            // This write settled nothing (recovery reversed the request first), or it was
            // retried (an earlier attempt may have committed after all, or another
            // instance may have taken this one's transactions over meanwhile: its lease
            // ran out): the record, not this process's view, is the answer.
            Ok(_) => self
                .answer_from_record(r.key, r.content)
                .await
                .unwrap_or(answer),
            Err(e) => return outcome_unrecorded(sent.rrn, &e),
        };
        if reversing {
            self.reversal_wake.notify_waiters();
        }
        tracing::info!(rc = answer.rc.as_str(), rrn = %sent.rrn, bank = %bank.config.id,
            bank_ms = started.elapsed().as_millis() as u64, "request answered");
        answer
    }

    /// Routing and reachability ([`admission::admit`]), decided before recording so that
    /// the record says where the request went; their refusals come after the
    /// order-reference check.
    async fn admit(&self, r: &AuthRequest<'_, '_>) -> Result<BankExchange, Answer> {
        let routed = self.router.lookup(r.a.pan);
        let bank = routed.as_ref().and_then(|id| self.banks.get(&**id));
        let route = match (&routed, bank) {
            (None, _) => Route::Unserved,
            (Some(_), None) => Route::Unconfigured,
            (Some(_), Some(b)) => Route::Bank {
                bank: b,
                link_ready: b.is_reachable(),
            },
        };
        let gate = |b, now| BankExchange::gated_at(b, self.clock.clone(), now);
        let Refusal { rc, why } = match admission::admit(route, self.clock.mono(), gate) {
            Ok(exchange) => return Ok(exchange),
            Err(refusal) => refusal,
        };
        // A retransmission of a recorded request whose Redis key is gone (expired,
        // flushed) gets its recorded answer, not this refusal: the record comes first in
        // the order of checks (merchant-h2h.md).
        if let Some(answer) = self.answer_from_record(r.key, r.content).await {
            tracing::info!(
                rc = answer.rc.as_str(),
                "retransmission answered from the record"
            );
            return Err(answer);
        }
        if self.order_ref_live(&r.merchant.id, &r.order_ref).await {
            tracing::info!(rc = "94", "request refused: order reference in use");
            return Err(Answer::refused(Rc::DUPLICATE));
        }
        tracing::info!(rc = rc.as_str(), reason = why, card = %masked(r.a.pan), "request refused");
        Err(Answer::refused(rc))
    }

    /// Gives the request its id and RRN and records it (`authorising`) with the
    /// exchange's STAN: nothing reaches the bank before this is durable. On refusal the
    /// caller drops the exchange, which gives the STAN and the breaker's probe back.
    async fn record_request(
        &self,
        r: &AuthRequest<'_, '_>,
        exchange: &BankExchange,
    ) -> Result<Sent, Answer> {
        let bank = exchange.bank();
        let id = match self.ids.next().await {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "no transaction id: database unavailable");
                return Err(Answer::refused(Rc::MALFUNCTION));
            }
        };
        let rrn = rrn_of(id);
        tracing::Span::current().record("rrn", rrn.as_str());
        let bank_stan = exchange.stan();
        let unix = self.clock.unix_s();
        let sent = Sent {
            id,
            kind: r.a.kind,
            rrn,
            bank_stan,
            stamp: BankStamp::new(bank_stan, unix),
            unix,
        };
        let record = match self.new_txn(r, bank, &sent) {
            Ok(record) => Arc::new(record),
            Err(answer) => return Err(answer),
        };
        match self.insert_resolved(record, r.key).await {
            Ok(true) => Ok(sent),
            Ok(false) => {
                // Either this very request is recorded already (Redis lost its key) or
                // the order reference is live: the record decides which.
                let answer = self
                    .answer_from_record(r.key, r.content)
                    .await
                    .unwrap_or_else(|| Answer::refused(Rc::DUPLICATE));
                tracing::info!(
                    rc = answer.rc.as_str(),
                    "request already recorded or order reference in use"
                );
                Err(answer)
            }
            Err(Unresolved {
                error,
                maybe_written: false,
            }) => {
                tracing::error!(error = %error, "request not recorded: answering 96, nothing sent to the bank");
                Err(Answer::refused(Rc::MALFUNCTION))
            }
            // Perhaps recorded, certainly not at the bank: neither 96 ("not recorded") nor
            // anything else can be said; the in-doubt sweep settles the row if it exists.
            Err(Unresolved { error, .. }) => {
                tracing::error!(error = %error, "request's record unknown: no answer, nothing sent to the bank");
                Err(Answer {
                    rc: Rc::WITHHELD,
                    rrn: None,
                    auth: None,
                })
            }
        }
    }

    /// Records a request, resolving a write whose outcome was not seen (a commit can
    /// succeed while its acknowledgement is lost): the record is written again, and when a
    /// later attempt finds a row under the key, the row's id says whether it is this very
    /// record (the first write did commit: `Ok(true)`) or another request's (`Ok(false)`).
    /// Writes that certainly did not commit are retried [`RECORD_RETRY_MAX`] times (then
    /// `Err` with `maybe_written` false: answered `96`); once one may have committed, for
    /// `outcome_wait_ms` (then `maybe_written` true: no answer can be given).
    async fn insert_resolved(&self, record: Arc<NewTxn>, key: &str) -> Result<bool, Unresolved> {
        let id = record.id;
        let started = self.clock.mono();
        let (mut failed, mut maybe_written, mut attempt) = (false, false, 0u32);
        loop {
            let error = match self.store.insert(record.clone()).await {
                Ok(true) => return Ok(true),
                Ok(false) if !failed => return Ok(false),
                Ok(false) => return Ok(self.recorded_id(key).await == Some(id)),
                Err(e) => e,
            };
            failed = true;
            maybe_written |= !error.certainly_not_written();
            let more = if maybe_written {
                self.clock.mono().duration_since(started)
                    < Duration::from_millis(self.outcome_wait_ms)
            } else {
                attempt < RECORD_RETRY_MAX
            };
            if !more {
                return Err(Unresolved {
                    error,
                    maybe_written,
                });
            }
            attempt += 1;
            tracing::warn!(error = %error, attempt, maybe_written, "request's record not confirmed yet; writing it again");
            tokio::time::sleep(Duration::from_millis(OUTCOME_RETRY_PAUSE_MS)).await;
        }
    }

    /// The id of the transaction recorded under a request key, if any can be read.
    async fn recorded_id(&self, key: &str) -> Option<i64> {
        let key = request_ref(key)?;
        let recorded = self.store.recorded(&key).await.ok()??;
        Some(crate::ids::id_of_rrn(&recorded.rrn))
    }

    /// The request's record, its card sealed; `96` if it cannot be.
    fn new_txn(&self, r: &AuthRequest<'_, '_>, bank: &Bank, sent: &Sent) -> Result<NewTxn, Answer> {
        let a = r.a;
        let card_enc = self
            .vault
            .seal(Purpose::Card, &card_plaintext(a.pan, a.expiry))
            .map_err(|e| {
                tracing::error!(error = %e, "card data could not be sealed");
                Answer::refused(Rc::MALFUNCTION)
            })?;
        Ok(NewTxn {
            id: sent.id,
            instance_id: self.instance_id,
            merchant_id: r.merchant.id.clone(),
            terminal_id: text(a.terminal_id),
            stan: text(a.stan),
            transmitted_at: text(a.transmitted_at),
            mti: r.msg.mti().original().as_str().to_string(),
            kind: a.kind,
            processing_code: text(a.processing_code),
            amount_minor: a.amount_minor as i64,
            currency: a.currency as i16,
            order_ref: Some(r.order_ref.clone()),
            pan_hash: Some(r.pan_hash.to_vec()),
            pan_last4: Some(text(&a.pan[a.pan.len() - 4..])),
            card_enc: Some(card_enc),
            rrn: sent.rrn.clone(),
            bank_id: Some(bank.config.id.clone()),
            bank_stan: Some(text(&sent.stamp.stan)),
            bank_transmitted_at: Some(text(&sent.stamp.de7)),
            original_id: None,
            state: State::Authorising,
            response_code: None,
            reason: None,
            refund_reason: None,
            content: Some(r.content),
        })
    }

    /// Sends the recorded request to its bank and waits for the answer; the exchange
    /// settles the STAN and the breaker with the outcome.
    async fn ask_bank(
        &self,
        r: &AuthRequest<'_, '_>,
        exchange: BankExchange,
        sent: &Sent,
    ) -> LinkOutcome {
        let bank = exchange.bank();
        let (a, msg) = (r.a, r.msg);
        let (de12, de13) = codec::clock::local_time_date(sent.unix);
        let acquirer = self
            .acquirer_ids
            .get(&bank.config.id)
            .map(String::as_str)
            .unwrap_or("");
        let mut b = MessageBuilder::new(bank.config.dialect, msg.mti().original());
        b.set(2, a.pan)
            .set(3, a.processing_code)
            .set(4, msg.raw(4).unwrap_or(b"0"))
            .set(7, &sent.stamp.de7)
            .set(11, &sent.stamp.stan)
            .set(12, &de12)
            .set(13, &de13)
            .set(14, a.expiry)
            .set(37, sent.rrn.as_bytes())
            .set(41, a.terminal_id)
            .set(42, a.merchant_id)
            .set(49, msg.raw(49).unwrap_or(b"000"));
        crate::bank_io::set_acquirer(&mut b, bank, acquirer);
        let message = b.encode();
        exchange
            .send(msg.mti().class(), sent.bank_stan, &sent.rrn, message)
            .await
    }

    /// The outcome to record (with its reversal when the bank did not answer) and the
    /// answer for the merchant, as [`lifecycle::authorisation_verdict`] decides.
    fn settle(
        &self,
        bank: &Bank,
        sent: &Sent,
        exchange: LinkOutcome,
        started: Instant,
    ) -> (OutcomeRecord, Answer) {
        let (reply, auth) = crate::bank_io::reply(&exchange);
        match reply {
            BankReply::Unknown => {
                self.metrics
                    .bank_timeouts
                    .with_label_values(&[bank.config.id.as_str()])
                    .inc();
                tracing::warn!(bank = %bank.config.id, rrn = %sent.rrn, elapsed_ms = started.elapsed().as_millis() as u64,
                    "bank did not answer: answering 91 and reversing");
            }
            BankReply::NotSent => {
                tracing::warn!(bank = %bank.config.id, rrn = %sent.rrn, "not sent to the bank: answering 91, nothing to reverse");
            }
            BankReply::Answered(_) => {}
        }
        let verdict = lifecycle::authorisation_verdict(reply);
        let reversal = verdict
            .needs_reversal()
            .then(|| (bank.config.id.clone(), ReversalReason::Timeout));
        let outcome = OutcomeRecord {
            id: sent.id,
            kind: sent.kind,
            state: verdict.state,
            response_code: verdict.rc.as_str().into(),
            auth_code: auth.clone(),
            reversal,
        };
        let answer = Answer {
            rc: verdict.rc,
            rrn: Some(sent.rrn.clone()),
            auth,
        };
        (outcome, answer)
    }
}

/// A purchase or pre-authorisation on its way: what each step of it reads.
struct AuthRequest<'r, 'm> {
    msg: &'r Message,
    merchant: &'r Merchant,
    a: &'r Authorisation<'m>,
    key: &'r str,
    content: ContentDigest,
    order_ref: String,
    pan_hash: [u8; 32],
}

/// A request's record that could not be confirmed.
struct Unresolved {
    error: StoreError,
    /// Some attempt may have committed (its acknowledgement lost).
    maybe_written: bool,
}

/// A recorded request, as it goes to the bank.
struct Sent {
    id: i64,
    /// Purchase or pre-authorisation (the journal appends an approved purchase's outcome).
    kind: Kind,
    rrn: String,
    bank_stan: u32,
    stamp: BankStamp,
    /// When it was recorded (DE7, DE12 and DE13 to the bank), in Unix seconds.
    unix: u64,
}
