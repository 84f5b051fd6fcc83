//! The retransmission check and the limits (Redis, then the record), and settling a
//! request's idempotency key once it is answered.

use super::*;

/// The instance and incarnation an in-flight claim (`P|instance|incarnation|content`)
/// names; None for an answer or a claim without an incarnation.
fn claim_holder(v: &str) -> Option<(i16, u64)> {
    let mut parts = v.split('|');
    if parts.next()? != "P" {
        return None;
    }
    let instance = parts.next()?.parse().ok()?;
    let incarnation = parts.next()?.parse().ok()?;
    Some((instance, incarnation))
}

impl Engine {
    /// The retransmission check and the limits: a request already answered (here or on
    /// another instance) gets its answer again; one in flight here waits for it; one over
    /// a limit gets 65. Otherwise the request owns its key. `lookup_only` skips the
    /// limits and the claim (the request is refused locally anyway).
    pub(crate) async fn claim(
        &self,
        key: &str,
        content: ContentDigest,
        merchant: &Merchant,
        card_hash_hex: Option<&str>,
        lookup_only: bool,
    ) -> Claimed {
        let guard = match self.own_key(key, content).await {
            Ok(guard) => guard,
            Err(answer) => return Claimed::Done(answer),
        };
        let content_hex = content.to_hex();
        let claim_value = self.claim_value(&content_hex);
        let no_card = Rate::new(0, 1, 0);
        let redis_started = Instant::now();
        let claim = self
            .limiter
            .claim(&ClaimRequest {
                key,
                merchant_id: &merchant.id,
                card_hash_hex: card_hash_hex.unwrap_or("-"),
                merchant_rate: Rate::new(merchant.rate_per_s, 1_000_000, merchant.rate_burst),
                card_rate: if card_hash_hex.is_some() {
                    self.card_rate
                } else {
                    no_card
                },
                claim_value: &claim_value,
                content_hex: &content_hex,
                now_us: self.clock.unix_us(),
                lookup_only,
            })
            .await;
        self.metrics
            .redis_latency
            .observe(redis_started.elapsed().as_secs_f64());
        self.claimed(claim, key, content, guard, lookup_only).await
    }

    /// Makes this request the key's owner on this instance, or answers it: a
    /// retransmission of the request in flight gets that request's answer. A request of
    /// other content waits for the one in flight to end and tries again (that one may
    /// itself have reused the identity and been refused); after
    /// [`IN_FLIGHT_RETRIES_MAX`] turns it is answered `94`.
    async fn own_key(&self, key: &str, content: ContentDigest) -> Result<InFlightGuard, Answer> {
        for _ in 0..IN_FLIGHT_RETRIES_MAX {
            match self.inflight.register(key, content) {
                Registration::Owner(g) => return Ok(g),
                Registration::Follower {
                    answer,
                    owner_content,
                } if owner_content != content => owner_gone(answer).await,
                Registration::Follower { answer, .. } => {
                    self.metrics.idempotency_replays.inc();
                    tracing::info!("retransmission while in flight: waiting for the original");
                    return Err(follow(answer)
                        .await
                        .unwrap_or_else(|| Answer::refused(Rc::DUPLICATE)));
                }
            }
        }
        Err(reused_identity())
    }

    /// What the Redis claim says for the request owning `guard`: answered again (from
    /// Redis or the record), refused `65`, or go ahead (with or without Redis).
    async fn claimed(
        &self,
        claim: Result<Claim, LimiterError>,
        key: &str,
        content: ContentDigest,
        guard: InFlightGuard,
        lookup_only: bool,
    ) -> Claimed {
        match claim {
            Ok(Claim::Known(v)) if !same_request(Answer::content_in_redis(&v), content) => {
                Claimed::Done(reused_identity())
            }
            Ok(Claim::Known(v)) => {
                if self.left_by_dead_process(&v).await {
                    return self.take_over(key, content, &v, guard).await;
                }
                self.metrics.idempotency_replays.inc();
                let answer = match Answer::from_redis(&v) {
                    Some(ans) => ans,
                    None => self
                        .answer_from_record(key, content)
                        .await
                        .unwrap_or_else(|| Answer::refused(Rc::DUPLICATE)),
                };
                tracing::info!(
                    rc = answer.rc.as_str(),
                    "retransmission answered from the record"
                );
                guard.resolve(answer.clone());
                Claimed::Done(answer)
            }
            Ok(Claim::Limited(which)) => {
                // A retransmission of a recorded request whose key Redis lost (flushed,
                // restarted) is answered from the record: that check comes before the
                // limits (merchant-h2h.md, "Order of checks").
                if let Some(answer) = self.answer_from_record(key, content).await {
                    self.metrics.idempotency_replays.inc();
                    if answer.rrn.is_some() {
                        self.replays.copy(key.to_string(), answer.to_redis(content));
                    }
                    guard.resolve(answer.clone());
                    return Claimed::Done(answer);
                }
                self.metrics
                    .rate_limit_refusals
                    .with_label_values(&[which])
                    .inc();
                tracing::info!(rc = "65", reason = which, "request refused: rate limit");
                let answer = Answer::refused(Rc::FREQUENCY);
                guard.resolve(answer.clone());
                Claimed::Done(answer)
            }
            Ok(Claim::Unknown) | Ok(Claim::Claimed) => Claimed::Proceed {
                guard,
                redis_ok: true,
            },
            Err(e) => {
                self.without_redis(&e, key, content, guard, lookup_only)
                    .await
            }
        }
    }

    /// Redis is unreachable: idempotency falls back to PostgreSQL (the request key's
    /// unique index, then the record's answer), and the limits follow
    /// `[redis] limits_on_outage`: skipped (`fail_open`), or new requests refused `91`
    /// (`fail_closed`: not recorded, so a retry is processed afresh). A request refused
    /// locally anyway (`lookup_only`) keeps its own refusal.
    async fn without_redis(
        &self,
        e: &LimiterError,
        key: &str,
        content: ContentDigest,
        guard: InFlightGuard,
        lookup_only: bool,
    ) -> Claimed {
        self.metrics.redis_errors.inc();
        if self.limits_on_outage == LimitsOnOutage::FailOpen || lookup_only {
            self.metrics
                .redis_outage_requests
                .with_label_values(&["skipped"])
                .inc();
            tracing::warn!(error = %e, "redis unavailable: idempotency falls back to PostgreSQL, limits not applied");
            return Claimed::Proceed {
                guard,
                redis_ok: false,
            };
        }
        let answer = match self.answer_from_record(key, content).await {
            Some(answer) => answer,
            None => {
                self.metrics
                    .redis_outage_requests
                    .with_label_values(&["refused"])
                    .inc();
                tracing::warn!(error = %e, rc = "91", "redis unavailable: limits cannot be applied (fail_closed), request refused");
                Answer::refused(Rc::ISSUER_DOWN)
            }
        };
        guard.resolve(answer.clone());
        Claimed::Done(answer)
    }

    /// This process's in-flight claim for a request of `content_hex`:
    /// `P|instance|incarnation|content` (read back by [`claim_holder`]).
    fn claim_value(&self, content_hex: &str) -> String {
        format!("P|{}|{}|{content_hex}", self.instance_id, self.incarnation)
    }

    /// Whether a Redis value is an in-flight claim left by a process that is gone and
    /// whose transactions were recovered: of this instance id by another incarnation (one
    /// instance id runs one process at a time, and this one recovered at start), or of
    /// another instance whose lease that incarnation no longer holds (restarted, or taken
    /// over after its lease expired). Unknown counts as alive.
    async fn left_by_dead_process(&self, v: &str) -> bool {
        let Some((instance, incarnation)) = claim_holder(v) else {
            return false;
        };
        if instance == self.instance_id {
            return incarnation != self.incarnation;
        }
        matches!(
            self.store.lease_held(instance, incarnation as i64).await,
            Ok(false)
        )
    }

    /// A retransmission of a request whose process died with it in flight
    /// (merchant-h2h.md: answered with its real outcome, never `94` for longer than the
    /// bank timeout). Recovery ran before this process took traffic, so the record is
    /// final if the request was recorded: it answers. If it was not, nothing reached a
    /// bank (nothing does before it is recorded): the request takes the claim over and
    /// is processed as new.
    async fn take_over(
        &self,
        key: &str,
        content: ContentDigest,
        dead_claim: &str,
        guard: InFlightGuard,
    ) -> Claimed {
        if let Some(answer) = self.answer_from_record(key, content).await {
            tracing::info!(
                rc = answer.rc.as_str(),
                "retransmission after a restart answered from the record"
            );
            guard.resolve(answer.clone());
            return Claimed::Done(answer);
        }
        let value = self.claim_value(&content.to_hex());
        match self.limiter.take_over(key, dead_claim, &value).await {
            Ok(true) => {
                tracing::info!("claim left by a process that is gone taken over");
                Claimed::Proceed {
                    guard,
                    redis_ok: true,
                }
            }
            // Someone else took it over first, or Redis is away: not ours to process now.
            Ok(false) | Err(_) => Claimed::Done(Answer::refused(Rc::DUPLICATE)),
        }
    }

    /// Settles the request's idempotency key after its answer: a `96` or `91` before
    /// recording, or a `94` without an RRN, releases the claim, so that a retry is
    /// processed afresh; an answer that is not
    /// recorded in PostgreSQL (a refusal without an RRN) is stored in Redis, so that a
    /// retransmission gets it again. An answer with an RRN is recorded already: a copy goes
    /// to Redis in a batch ([`crate::replays`]), and until it is there a retransmission
    /// reads the answer from the record ([`Engine::answer_from_record`]); a purchase
    /// costs one Redis round trip of its own.
    ///
    /// The Redis write runs after the merchant is answered: the key stays registered here
    /// (so a retransmission arriving meanwhile gets the answer at once) until Redis has it.
    pub(crate) fn finish(
        &self,
        key: String,
        content: ContentDigest,
        answer: &Answer,
        guard: InFlightGuard,
    ) {
        if answer.rc == Rc::WITHHELD {
            // Nothing to replay: the claim stays until the record is final (or it
            // expires), and followers of the key get no answer either.
            return;
        }
        if answer.rrn.is_some() {
            self.replays.copy(key, answer.to_redis(content));
            guard.resolve(answer.clone());
            return;
        }
        guard.publish(answer.clone());
        // Not this key's answer to keep: a 96, or a 91 before recording, said nothing was
        // recorded (merchant-h2h.md: not replayed), and a 94 without an RRN is either an
        // identity reused with other content (the key's answer is the earlier request's)
        // or an order reference in use (which a retry after it is freed may pass): both
        // are processed afresh if sent again.
        let write = if matches!(answer.rc, Rc::MALFUNCTION | Rc::DUPLICATE | Rc::ISSUER_DOWN) {
            KeyWrite::Release(key)
        } else {
            KeyWrite::Store(key, answer.to_redis(content))
        };
        self.replays.settle(write, guard, answer.clone());
    }

    /// The recorded answer for a key, if its transaction has an outcome (a store that
    /// cannot say counts as no answer).
    ///
    /// A record of another content (the identity reused for a different request) is
    /// answered `94` ([`crate::content`]).
    pub(crate) async fn answer_from_record(
        &self,
        key: &str,
        content: ContentDigest,
    ) -> Option<Answer> {
        let key = request_ref(key)?;
        let recorded = self.store.recorded(&key).await.ok()??;
        if !same_request(recorded.content, content) {
            return Some(reused_identity());
        }
        recorded.answer()
    }

    pub(super) async fn order_ref_live(&self, merchant_id: &str, order_ref: &str) -> bool {
        self.store
            .order_ref_live(merchant_id, order_ref)
            .await
            .unwrap_or(false)
    }

    /// Runs `write` until it succeeds, retrying a failure [`OUTCOME_RETRY_PAUSE_MS`] apart
    /// for `outcome_wait_ms`: what it returned and how many attempts failed before it did,
    /// or the last error if none succeeds. `what` names the record in the logs.
    pub(crate) async fn retrying<F, Fut, T>(
        &self,
        what: &str,
        mut write: F,
    ) -> Result<(T, u32), StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let started = self.clock.mono();
        let budget = Duration::from_millis(self.outcome_wait_ms);
        let mut attempt = 0u32;
        loop {
            match write().await {
                Ok(done) => return Ok((done, attempt)),
                Err(e) if self.clock.mono().duration_since(started) < budget => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "{what} not recorded yet; retrying");
                    tokio::time::sleep(Duration::from_millis(OUTCOME_RETRY_PAUSE_MS)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::claim_holder;

    // Proves only an in-flight claim with an incarnation names its holder.
    #[test]
    fn claim_holders() {
        assert_eq!(claim_holder("P|1|42|00ff"), Some((1, 42)));
        assert_eq!(claim_holder("P|3|7"), Some((3, 7)));
        assert_eq!(
            claim_holder("P|1|00ffee"),
            None,
            "a claim from before incarnations"
        );
        assert_eq!(claim_holder("P|1"), None);
        assert_eq!(
            claim_holder("A|00|000000001000|123456|00ff"),
            None,
            "an answer"
        );
    }
}
