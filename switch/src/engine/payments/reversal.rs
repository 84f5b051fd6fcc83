//! Merchant reversals (0400/0401): the request named is found (and held while it is unseen
//! or in flight, [`lifecycle::plan_reversal`]), reversed in one commit, and the reversal
//! stored for the bank.

use super::*;

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

impl Engine {
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
}
