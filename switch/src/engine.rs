//! The request path: from a merchant's message to its answer.
//!
//! The checks are plain functions ([`crate::checks`]); this module orders them as the
//! contract says and drives the parts with I/O: Redis (idempotency, limits), the store
//! ([`crate::store`]: the journal and PostgreSQL), the router and the bank links.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bank_links::{Bank, Outcome as LinkOutcome};
use bytes::Bytes;
use codec::{MacCheck, Message, MessageBuilder, Mti, builtin};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::answer::{Answer, ECHOED_WHEN_UNPARSEABLE, respond, respond_echoing};
use crate::bank_io::{BankExchange, Refused};
use crate::checks::{self, Authorisation, Rc};
use crate::clock::Clock;
use crate::config::LimitsOnOutage;
use crate::content::{ContentDigest, same_request};
use crate::crypto::{Purpose, Vault, card_plaintext};
use crate::ids::{Ids, rrn_of};
use crate::inflight::{InFlight, InFlightGuard, Registration, follow, owner_gone};
use crate::lifecycle::{self, BankReply, ReversalReason, State};
use crate::limiter::{Claim, ClaimRequest, Claims, KeyWrite, LimiterError, Rate};
use crate::merchants::{Merchant, Merchants};
use crate::metrics::Metrics;
use crate::notify::Sessions;
use crate::replays::Replays;
use crate::routing::Router;
use crate::store::{NewTxn, Outcome, RequestRef, Store, StoreError};

/// Pause between outcome write attempts (retried for `switch.outcome_wait_ms`).
pub const OUTCOME_RETRY_PAUSE_MS: u64 = 200;
/// How often a request's first record is written again (every
/// [`OUTCOME_RETRY_PAUSE_MS`]) when a write's outcome was not seen: about 2 s, after
/// which the request is answered `96`. Shorter than the outcome's budget, because the
/// merchant has not been answered anything yet and nothing has gone to a bank.
pub const RECORD_RETRY_MAX: u32 = 10;
/// Times a request of other content waits for the request in flight under its identity
/// before it is answered `94`: each wait ends with that request's answer, so this bounds
/// a chain of requests reusing one identity at once.
pub const IN_FLIGHT_RETRIES_MAX: usize = 4;

/// The outcome of the retransmission check and the limits.
pub(crate) enum Claimed {
    /// The request owns its idempotency key; `redis_ok` says whether Redis took part.
    Proceed {
        guard: InFlightGuard,
        redis_ok: bool,
    },
    /// The request is answered already (replay, in-flight original, rate limit).
    Done(Answer),
}

/// What one request came to, for metrics.
#[derive(Debug, Default)]
struct Trace {
    rc: Option<Rc>,
    bank_round_trip: Duration,
}

/// The result of handling one message.
#[derive(Debug)]
pub struct Handled {
    pub response: Option<Bytes>,
    /// The merchant the message authenticated as (MAC verified).
    pub merchant: Option<Arc<Merchant>>,
}

/// What a merchant connection tells the engine about itself.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Signed on: wants this merchant's 0620 advices.
    pub signed_on: Arc<AtomicBool>,
}

/// Everything the request path needs.
pub struct Engine {
    pub instance_id: i16,
    /// This process's incarnation of `instance_id` (random at start): a claim in Redis
    /// naming the same instance and another incarnation was left by a process that is
    /// gone, since one instance id runs one process at a time.
    pub incarnation: u64,
    pub merchants: Arc<Merchants>,
    pub router: Arc<Router>,
    pub banks: HashMap<String, Bank>,
    /// Durable state: every record and lookup of the request path.
    pub store: Arc<dyn Store>,
    /// The idempotency claims and limits (Redis in production).
    pub limiter: Arc<dyn Claims>,
    /// Where the request path reads the time (the system clock in production).
    pub clock: Arc<dyn Clock>,
    /// Recorded answers copied to Redis in batches, for replays.
    pub replays: Replays,
    pub vault: Arc<Vault>,
    pub ids: Ids,
    pub inflight: Arc<InFlight>,
    pub card_rate: Rate,
    pub acquirer_ids: HashMap<String, String>,
    /// Wakes the reversal workers when a reversal has been recorded.
    pub reversal_wake: Arc<Notify>,
    /// Merchant connections, for notifications.
    pub sessions: Arc<Sessions>,
    pub metrics: Arc<Metrics>,
    /// What the limits do while Redis is unreachable.
    pub limits_on_outage: LimitsOnOutage,
    /// How long a request's outcome write is retried before its answer is withheld.
    pub outcome_wait_ms: u64,
    /// The longest bank timeout ([`crate::config::Config::bank_timeout_max_ms`]).
    pub bank_timeout_max_ms: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

/// The idempotency key: DE42, DE41, DE11, DE7 and the MTI with a repeat counted as its
/// original.
pub fn request_key(
    merchant_id: &str,
    terminal: &[u8],
    stan: &[u8],
    de7: &[u8],
    mti: Mti,
) -> String {
    let mut k = String::with_capacity(48);
    k.push_str(merchant_id);
    k.push('|');
    k.push_str(std::str::from_utf8(terminal).unwrap_or("?").trim_end());
    k.push('|');
    k.push_str(std::str::from_utf8(stan).unwrap_or("?"));
    k.push('|');
    k.push_str(std::str::from_utf8(de7).unwrap_or("?"));
    k.push('|');
    k.push_str(mti.original().as_str());
    k
}

fn today(clock: &dyn Clock) -> (u32, u32) {
    let (y, m, ..) = codec::clock::civil_from_unix(clock.unix_s());
    (y, m)
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).trim_end().to_string()
}

/// The answer when a bank's reply cannot be recorded within `switch.outcome_wait_ms`:
/// none at all ([`Rc::WITHHELD`]): the request is recorded and was at the bank, its
/// outcome is not recorded, and the last write may yet have committed. The in-doubt
/// sweep ([`crate::lease`]) reverses it once the database is back if no outcome landed;
/// a retransmission is then answered from the record.
pub(crate) fn outcome_unrecorded(rrn: String, e: &StoreError) -> Answer {
    tracing::error!(error = %e, rrn = %rrn, "outcome could not be recorded: no answer; the in-doubt sweep reverses it");
    Answer {
        rc: Rc::WITHHELD,
        rrn: Some(rrn),
        auth: None,
    }
}

/// The parts of a request key ([`request_key`]), for the store.
pub(crate) fn request_ref(key: &str) -> Option<RequestRef<'_>> {
    let mut parts = key.split('|');
    let r = RequestRef {
        merchant_id: parts.next()?,
        terminal_id: parts.next()?,
        stan: parts.next()?,
        transmitted_at: parts.next()?,
        mti: parts.next()?,
    };
    parts.next().is_none().then_some(r)
}

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

/// The answer to a request that carries an earlier request's identity with other
/// content: `94`, nothing forwarded, the earlier record untouched (merchant-h2h.md,
/// "Duplicates and idempotency").
fn reused_identity() -> Answer {
    tracing::info!(
        rc = "94",
        "request refused: its identity belongs to another request's content"
    );
    Answer::refused(Rc::DUPLICATE)
}

/// Masked card number for logs: BIN and last four.
pub fn masked(pan: &[u8]) -> String {
    codec::owned::mask_pan(&String::from_utf8_lossy(pan))
}

impl Engine {
    /// Handles one framed message: the bytes to send back, if any, and the merchant if
    /// the message authenticated as one (for connection accounting).
    pub async fn handle(&self, frame: Bytes, session: &SessionState) -> Handled {
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let mti = frame
            .get(..4)
            .and_then(|m| Mti::from_digits(m.try_into().ok()?))
            .map(|m| m.original());
        let mut authenticated = None;
        let mut trace = Trace::default();
        let span = tracing::info_span!(
            "request",
            merchant = tracing::field::Empty,
            mti = tracing::field::Empty,
            stan = tracing::field::Empty,
            rrn = tracing::field::Empty
        );
        let response = self
            .handle_inner(frame, session, &mut authenticated, &mut trace)
            .instrument(span)
            .await;
        self.metrics.in_flight.dec();
        let mti_label = crate::metrics::mti_label(mti);
        if let Some(rc) = trace.rc {
            self.metrics
                .requests
                .with_label_values(&[mti_label, rc.as_str()])
                .inc();
        }
        let added = started.elapsed().saturating_sub(trace.bank_round_trip);
        self.metrics
            .switch_latency
            .with_label_values(&[mti_label])
            .observe(added.as_secs_f64());
        Handled {
            response,
            merchant: authenticated,
        }
    }

    async fn handle_inner(
        &self,
        frame: Bytes,
        session: &SessionState,
        authenticated: &mut Option<Arc<Merchant>>,
        trace: &mut Trace,
    ) -> Option<Bytes> {
        let msg = match builtin::merchant().decode(frame.clone()) {
            Ok(m) => m,
            Err(e) => return self.unparseable(frame, &e, trace),
        };
        let mti = msg.mti();
        if !mti.is_request() {
            self.merchant_response(&msg).await;
            return None;
        }
        let Some(merchant) = msg.raw(42).and_then(|id| self.merchants.get(id)) else {
            return self.refuse(trace, &msg, None, Rc::NOT_PERMITTED, "unknown merchant");
        };
        let span = tracing::Span::current();
        span.record("merchant", merchant.id.as_str());
        span.record("mti", mti.as_str());
        span.record("stan", msg.get_str(11).unwrap_or_default().as_ref());
        if !merchant.enabled {
            return self.refuse(
                trace,
                &msg,
                Some(&merchant),
                Rc::NOT_PERMITTED,
                "merchant disabled",
            );
        }
        let why = match merchant.check_mac(&msg, self.clock.system_time()) {
            MacCheck::Valid => None,
            MacCheck::Misplaced => {
                Some((Rc::FORMAT_ERROR, "MAC in the wrong element", "misplaced"))
            }
            MacCheck::Missing => Some((Rc::SECURITY_VIOLATION, "MAC missing", "missing")),
            MacCheck::Invalid => Some((Rc::SECURITY_VIOLATION, "MAC invalid", "invalid")),
        };
        if let Some((rc, why, reason)) = why {
            self.metrics
                .merchant_mac_failures
                .with_label_values(&[reason])
                .inc();
            return self.refuse(trace, &msg, Some(&merchant), rc, why);
        }
        *authenticated = Some(merchant.clone());
        self.dispatch(&msg, &merchant, session, trace).await
    }

    /// An authenticated request of an enabled merchant, to its handler by MTI.
    async fn dispatch(
        &self,
        msg: &Message,
        merchant: &Arc<Merchant>,
        session: &SessionState,
        trace: &mut Trace,
    ) -> Option<Bytes> {
        let answer = match msg.mti().original() {
            Mti::NETWORK_REQUEST => return self.network(trace, msg, merchant, session),
            Mti::FINANCIAL_REQUEST | Mti::AUTHORISATION_REQUEST => {
                match checks::required_authorisation(msg) {
                    Err(rc) => {
                        return self.refuse(
                            trace,
                            msg,
                            Some(merchant),
                            rc,
                            "required element missing or malformed",
                        );
                    }
                    Ok(Some(a)) => self.authorise(msg, merchant, a, trace).await,
                    Ok(None) => self.refund(msg, merchant).await,
                }
            }
            Mti::COMPLETION_ADVICE => self.complete(msg, merchant).await,
            Mti::REVERSAL_REQUEST => self.reverse(msg, merchant).await,
            Mti::STATUS_REQUEST => {
                let (answer, extra) = self.status(msg, merchant).await;
                trace.rc = Some(answer.rc);
                let Some((de4, de48, de54)) = extra else {
                    return respond(msg, Some(merchant), &answer, &[]);
                };
                let fields: [(u8, &[u8]); 3] = [
                    (4, de4.as_bytes()),
                    (48, de48.as_bytes()),
                    (54, de54.as_bytes()),
                ];
                return respond(msg, Some(merchant), &answer, &fields);
            }
            _ => {
                return self.refuse(
                    trace,
                    msg,
                    Some(merchant),
                    Rc::INVALID_TRANSACTION,
                    "message type not supported",
                );
            }
        };
        if answer.rc == Rc::WITHHELD {
            return None;
        }
        trace.rc = Some(answer.rc);
        respond(msg, Some(merchant), &answer, &[])
    }

    /// A message that does not decode: a request whose MTI can be read is refused `30`,
    /// echoing what could be read; anything else is dropped.
    fn unparseable(
        &self,
        frame: Bytes,
        e: &dyn std::fmt::Display,
        trace: &mut Trace,
    ) -> Option<Bytes> {
        let Some(partial) = builtin::merchant().salvage(frame) else {
            tracing::warn!(error = %e, "merchant message without a readable MTI dropped");
            return None;
        };
        tracing::warn!(error = %e, mti = %partial.mti(), "merchant message refused: format error");
        if !partial.mti().is_request() {
            return None;
        }
        let merchant = partial.raw(42).and_then(|id| self.merchants.get(id));
        trace.rc = Some(Rc::FORMAT_ERROR);
        let answer = Answer::refused(Rc::FORMAT_ERROR);
        respond_echoing(
            &partial,
            merchant.as_deref(),
            &answer,
            &[],
            &ECHOED_WHEN_UNPARSEABLE,
        )
    }

    /// A response from a merchant: a 0630 answers one of our 0620 advices; any other
    /// has nothing to answer.
    async fn merchant_response(&self, msg: &Message) {
        let mti = msg.mti();
        if mti == Mti::NOTIFICATION_RESPONSE
            && let Some(m) = msg.raw(42).and_then(|id| self.merchants.get(id))
            && m.check_mac(msg, self.clock.system_time()) == MacCheck::Valid
        {
            match crate::notify::acknowledged(&*self.store, &m.id, msg).await {
                Ok(found) => {
                    tracing::info!(merchant = %m.id, found, "notification acknowledged")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notification acknowledgement not recorded")
                }
            }
        } else {
            tracing::debug!(mti = %mti, "merchant response ignored");
        }
    }

    fn refuse(
        &self,
        trace: &mut Trace,
        msg: &Message,
        merchant: Option<&Merchant>,
        rc: Rc,
        why: &str,
    ) -> Option<Bytes> {
        trace.rc = Some(rc);
        tracing::info!(rc = rc.as_str(), reason = why, mti = %msg.mti(), "request refused");
        respond(msg, merchant, &Answer::refused(rc), &[])
    }

    fn network(
        &self,
        trace: &mut Trace,
        msg: &Message,
        merchant: &Merchant,
        session: &SessionState,
    ) -> Option<Bytes> {
        for n in [7u8, 11, 41, 42, 70] {
            if !msg.has(n) {
                return self.refuse(
                    trace,
                    msg,
                    Some(merchant),
                    Rc::FORMAT_ERROR,
                    "required element missing",
                );
            }
        }
        match msg.raw(70) {
            Some(b"001") => {
                session.signed_on.store(true, Ordering::Relaxed);
                self.sessions.wake.notify_one();
            }
            Some(b"002") => session.signed_on.store(false, Ordering::Relaxed),
            Some(b"301") => {}
            _ => {
                return self.refuse(
                    trace,
                    msg,
                    Some(merchant),
                    Rc::INVALID_TRANSACTION,
                    "unknown network management code",
                );
            }
        }
        trace.rc = Some(Rc::APPROVED);
        respond(msg, Some(merchant), &Answer::refused(Rc::APPROVED), &[])
    }

    /// A purchase or pre-authorisation, from the retransmission lookup to the answer.
    async fn authorise(
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

    async fn order_ref_live(&self, merchant_id: &str, order_ref: &str) -> bool {
        self.store
            .order_ref_live(merchant_id, order_ref)
            .await
            .unwrap_or(false)
    }

    /// Runs `write` until it succeeds, retrying a failure [`OUTCOME_RETRY_PAUSE_MS`] apart
    /// for `outcome_wait_ms`: how many attempts failed before it did, or the last error if
    /// none succeeds. `what` names the record in the logs.
    pub(crate) async fn retrying<F, Fut>(&self, what: &str, mut write: F) -> Result<u32, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), StoreError>>,
    {
        let started = self.clock.mono();
        let budget = Duration::from_millis(self.outcome_wait_ms);
        let mut attempt = 0u32;
        loop {
            match write().await {
                Ok(()) => return Ok(attempt),
                Err(e) if self.clock.mono().duration_since(started) < budget => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "{what} not recorded yet; retrying");
                    tokio::time::sleep(Duration::from_millis(OUTCOME_RETRY_PAUSE_MS)).await;
                }
                Err(e) => return Err(e),
            }
        }
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
            Ok(0) => answer,
            // A retried write: an earlier attempt may have committed after all, or another
            // instance may have taken this one's transactions over meanwhile (its lease
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

    /// Routing and reachability, decided before recording so that the record says where
    /// the request went; their refusals come after the order-reference check.
    async fn admit(&self, r: &AuthRequest<'_, '_>) -> Result<BankExchange, Answer> {
        let route = self.router.lookup(r.a.pan);
        let bank = route.as_ref().and_then(|id| self.banks.get(&**id));
        let refusal = match (&route, bank) {
            (None, _) => (Rc::NO_ROUTE, "no bank serves this card"),
            (Some(_), None) => (Rc::NO_ROUTE, "route names an unconfigured bank"),
            (Some(_), Some(b)) if !b.is_reachable() => (Rc::ISSUER_DOWN, "bank has no ready link"),
            // Last, so that no other refusal uses up the breaker's single probe.
            (Some(_), Some(b)) => match BankExchange::gated(b, self.clock.clone()) {
                Ok(exchange) => return Ok(exchange),
                Err(Refused::Breaker) => (Rc::ISSUER_DOWN, "bank circuit breaker open"),
                Err(Refused::Stans) => (Rc::ISSUER_DOWN, "every STAN of the bank in flight"),
            },
        };
        {
            let (rc, why) = refusal;
            // A retransmission of a recorded request whose Redis key is gone (expired,
            // flushed) gets its recorded answer, not this refusal: the record comes first
            // in the order of checks (merchant-h2h.md).
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
            rrn,
            bank_stan,
            stan_digits: bank_links::stan::format_stan(bank_stan),
            bank_de7: codec::clock::transmission(unix),
            unix,
        };
        let record = match self.new_txn(r, bank, &sent) {
            Ok(record) => record,
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
    async fn insert_resolved(&self, record: NewTxn, key: &str) -> Result<bool, Unresolved> {
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
            bank_stan: Some(text(&sent.stan_digits)),
            bank_transmitted_at: Some(text(&sent.bank_de7)),
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
            .set(7, &sent.bank_de7)
            .set(11, &sent.stan_digits)
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
    ) -> (Outcome, Answer) {
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
        let reversal = (verdict.state == State::Reversing)
            .then(|| (bank.config.id.clone(), ReversalReason::Timeout));
        let outcome = Outcome {
            id: sent.id,
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
    rrn: String,
    bank_stan: u32,
    stan_digits: [u8; 6],
    bank_de7: [u8; 10],
    /// When it was recorded (DE7, DE12 and DE13 to the bank), in Unix seconds.
    unix: u64,
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
