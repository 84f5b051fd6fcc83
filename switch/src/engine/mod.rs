//! The request path: from a merchant's message to its answer.
//!
//! The checks are plain functions ([`crate::checks`]); this module orders them as the
//! contract says and drives the parts with I/O: Redis (idempotency, limits), the store
//! ([`crate::store`]: the journal and PostgreSQL), the router and the bank links. By
//! message:
//!
//! - this module: decoding, authentication, dispatch by MTI, network management (0800);
//! - [`claim`]: the retransmission check and the limits, and settling a request's key;
//! - [`admission`]: whether a purchase may go to a bank (route, link, breaker), a plain
//!   decision;
//! - [`purchase`]: purchases and pre-authorisations (0200, 0100), from admission to the
//!   recorded outcome;
//! - [`payments`]: completions, refunds, reversals and status (0220, 0200 DE3 20,
//!   0400, 0600).

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
use crate::bank_io::BankExchange;
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
use crate::notify::Outlets;
use crate::replays::Replays;
use crate::routing::Router;
use crate::store::{NewTxn, OutcomeRecord, RequestRef, Store, StoreError};

mod admission;
mod claim;
pub mod payments;
mod purchase;

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
    pub outlets: Arc<Outlets>,
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

/// What a request goes to its bank with besides its RRN: the bank-side STAN (DE11) and
/// the transmission date and time (DE7), as sent and as recorded.
struct BankStamp {
    stan: [u8; 6],
    de7: [u8; 10],
}

impl BankStamp {
    /// The STAN allotted for the exchange; `unix_s` is when the request is recorded.
    fn new(stan: u32, unix_s: u64) -> BankStamp {
        BankStamp {
            stan: bank_links::stan::format_stan(stan),
            de7: codec::clock::transmission(unix_s),
        }
    }
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
                self.outlets.wake.notify_one();
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
}
