//! Refunds, captures and voids requested in the back office, with maker-checker (issue
//! 12): the rules as plain functions, and the desk that records requests, decides them and
//! executes them through the merchant request path ([`Engine::handle`] with the message a
//! merchant would send, built and MAC'd for the merchant: a 0200 refund, a 0220
//! completion, a 0400 reversal), so a back-office request passes the same checks, is
//! journalled the same way and sends the same bank messages as a merchant's own. The
//! merchant is told the outcome with a 0620 (`EV` `BACK_OFFICE_REFUND`, `_CAPTURE`,
//! `_VOID`). An approved request whose execution a crash interrupted is sent again, with
//! the same DE11 and DE7, by [`RefundDesk::resume`]: the request path recognises the
//! repeat, so the bank sees it once.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use admin_http::refunds::{RefundAsk, RefundListQuery, RefundRequestView, may_request};
use admin_http::v1::Principal;
use admin_http::{AdminError, Role};
use codec::{Mti, OwnedMessage, builtin};

use crate::engine::{Engine, SessionState};
use crate::lifecycle::State;
use crate::notify::Event;
use crate::payments::REFUND_REASON_MAX_LEN;
use crate::store::refund_requests::{NewRefundRequest, Original, RefundRequests, RequestRow};
use crate::store::unavailable;
use crate::store::{Store, StoreError};

/// Longest idempotency key accepted.
pub(crate) const IDEMPOTENCY_KEY_MAX_LEN: usize = 64;
/// Interrupted executions resumed per round.
pub(crate) const RESUME_BATCH_MAX: i64 = 32;
/// How often the desk looks for interrupted executions.
pub(crate) const RESUME_POLL_MS: u64 = 2_000;
/// The longest a request whose sending keeps failing for a passing reason waits between
/// attempts.
pub(crate) const RESUME_BACKOFF_MAX_MS: u64 = 300_000;

/// Whether a failed sending can never succeed however often it is tried: the original or
/// the merchant unknown, a message that cannot be built ([`AdminError::Invalid`],
/// [`AdminError::NotFound`]). Anything else (the store unavailable, the switch stopping)
/// may pass.
pub(crate) fn is_permanent(e: &AdminError) -> bool {
    matches!(e, AdminError::Invalid(_) | AdminError::NotFound(_))
}

/// How long a request waits after its `attempts`-th sending failed for a passing reason:
/// [`RESUME_POLL_MS`] doubled with each attempt, at most [`RESUME_BACKOFF_MAX_MS`].
pub(crate) fn retry_delay_ms(attempts: i32) -> u64 {
    let doublings = attempts.clamp(0, 20) as u32;
    RESUME_POLL_MS
        .saturating_mul(1 << doublings)
        .min(RESUME_BACKOFF_MAX_MS)
}

/// What a back-office request sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A 0200 refund (DE3 `20`) of a purchase or completion.
    Refund,
    /// A 0220 completion of a pre-authorisation.
    Capture,
    /// A 0400 reversal of any transaction, for its full amount.
    Void,
}

impl Operation {
    /// The name in the `kind` column and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Refund => "refund",
            Operation::Capture => "capture",
            Operation::Void => "void",
        }
    }

    pub fn parse(kind: &str) -> Option<Operation> {
        [Operation::Refund, Operation::Capture, Operation::Void]
            .into_iter()
            .find(|o| o.as_str() == kind)
    }

    /// What the merchant's 0620 says happened.
    pub fn event(self) -> Event {
        match self {
            Operation::Refund => Event::BackOfficeRefund,
            Operation::Capture => Event::BackOfficeCapture,
            Operation::Void => Event::BackOfficeVoid,
        }
    }
}

/// A request as asked for: a void's amount is the original's.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub op: Operation,
    /// `None` for a void.
    pub amount_minor: Option<i64>,
    pub reason: &'a str,
    pub idempotency_key: &'a str,
}

impl<'a> Ask<'a> {
    /// A refund's or capture's ask, with its amount.
    pub fn of(op: Operation, ask: &'a RefundAsk) -> Ask<'a> {
        Ask {
            op,
            amount_minor: Some(ask.amount_minor),
            reason: &ask.reason,
            idempotency_key: &ask.idempotency_key,
        }
    }
}

/// When requests need a second person, and how long a request waits for one.
#[derive(Debug, Clone, Copy)]
pub struct RefundPolicy {
    /// Requests above this amount (minor units) need an approver; at or below it they are
    /// executed at once.
    pub approval_above_minor: i64,
    /// A pending request not decided within this expires.
    pub request_ttl_ms: u64,
    /// An approved request still without an outcome this long after its approval was
    /// interrupted (the longest a live execution takes: the bank timeout plus the outcome
    /// write's wait) and is resumed.
    pub resume_after_ms: u64,
}

/// The person an actor stands for: an API key (`apikey:NAME/CREATOR`) is its creator's
/// (usernames have no `/`); anyone else is itself.
pub(crate) fn person_of(actor: &str) -> &str {
    match actor.strip_prefix("apikey:") {
        Some(key) => key.rsplit_once('/').map_or(actor, |(_, creator)| creator),
        None => actor,
    }
}

/// Why `approver` may not approve `request` at `now`, if so: the maker is not the
/// checker (an API key counts as the person who created it, else an admin could approve
/// what a key of theirs asked for), only pending requests are decided, and an expired one
/// is not.
pub(crate) fn refusal(
    approver: &Principal,
    request: &RequestRow,
    now: SystemTime,
) -> Option<AdminError> {
    if person_of(&request.view.requested_by) == person_of(&approver.actor) {
        return Some(AdminError::Forbidden(
            "maker-checker: the requester may not decide its own request".into(),
        ));
    }
    if request.view.state != "pending" {
        return Some(AdminError::Conflict(format!(
            "request is {}",
            request.view.state
        )));
    }
    if request.expires_at <= now {
        return Some(AdminError::Conflict("request expired".into()));
    }
    None
}

/// Checks an ask's fields.
pub(crate) fn check_ask(ask: &Ask<'_>) -> Result<(), AdminError> {
    let key_ok = (1..=IDEMPOTENCY_KEY_MAX_LEN).contains(&ask.idempotency_key.len());
    let reason_ok = !ask.reason.trim().is_empty() && ask.reason.len() <= REFUND_REASON_MAX_LEN;
    if ask.amount_minor.is_some_and(|a| a <= 0) || !key_ok || !reason_ok {
        return Err(AdminError::Invalid(format!(
            "amount_minor > 0, a reason of 1 to {REFUND_REASON_MAX_LEN} characters and an \
             idempotency_key of 1 to {IDEMPOTENCY_KEY_MAX_LEN}"
        )));
    }
    Ok(())
}

/// Checks an ask's amount against the transaction it names: a refund or capture of more
/// than the original's amount can never succeed (the request path refuses it with `13`),
/// and an amount past DE4's 12 digits cannot even be encoded, so an approved request for it
/// would stay `approved` with no outcome, resumed (and failing) for ever. Refused when asked
/// (`422`), before anyone is asked to approve it.
pub(crate) fn check_amount(ask: &Ask<'_>, original_amount_minor: i64) -> Result<(), AdminError> {
    match ask.amount_minor {
        Some(a) if a > original_amount_minor => Err(AdminError::Invalid(format!(
            "amount_minor {a} is more than the transaction's {original_amount_minor}"
        ))),
        _ => Ok(()),
    }
}

/// Why a request that reused an idempotency key is refused, if it is: the same key must
/// ask for the same thing (kind, transaction and amount), else the caller would be told
/// of another request as if it were theirs (`409`).
pub(crate) fn key_reused(
    existing: &RefundRequestView,
    op: Operation,
    rrn: &str,
    amount_minor: i64,
) -> Option<AdminError> {
    let same = existing.kind == op.as_str()
        && existing.original_rrn == rrn
        && existing.amount_minor == amount_minor;
    (!same).then(|| {
        AdminError::Conflict(format!(
            "idempotency key already used for request {} ({} of {} for {})",
            existing.id, existing.kind, existing.original_rrn, existing.amount_minor
        ))
    })
}

/// The message a merchant sends for `op` of `original`, as the contract has it: DE90
/// naming the original by its MTI, DE11 and DE7; a refund is a 0200 with DE3 `20` and the
/// reason in DE48 `RR`, a capture a 0220 with DE3 `00`, a void a 0400 for the original's
/// amount.
pub(crate) fn request_message(
    op: Operation,
    o: &Original,
    amount_minor: i64,
    reason: &str,
    stan: &str,
    de7: &str,
) -> OwnedMessage {
    let mti = match op {
        Operation::Refund => Mti::FINANCIAL_REQUEST,
        Operation::Capture => Mti::COMPLETION_ADVICE,
        Operation::Void => Mti::REVERSAL_REQUEST,
    };
    let mut m = OwnedMessage::new(mti);
    let de90 = format!(
        "{}{:0>6}{:0>10}{}",
        o.mti,
        o.stan,
        o.transmitted_at,
        "0".repeat(22)
    );
    for (n, v) in [
        (4u8, format!("{amount_minor:012}")),
        (7, de7.to_string()),
        (11, stan.to_string()),
        (41, o.terminal_id.clone()),
        (42, o.merchant_id.clone()),
        (49, format!("{:03}", o.currency)),
        (90, de90),
    ] {
        m.fields.insert(n, v.into_bytes());
    }
    match op {
        Operation::Refund => {
            let mut de48 = Vec::new();
            let _ = codec::tlv::push(&mut de48, b"RR", reason.as_bytes());
            m.fields.insert(3, b"200000".to_vec());
            m.fields.insert(48, de48);
        }
        Operation::Capture => {
            m.fields.insert(3, b"000000".to_vec());
        }
        Operation::Void => {}
    }
    m
}

/// The DE11 of a request's refund: `9` then its id in five digits. The refund carries
/// the original's DE41 (the payment is found by it), so its identity (DE42, DE41, DE11,
/// DE7, MTI) shares the merchant's own STAN space: a merchant request on that terminal
/// with the same STAN in the same second would be answered `94`. Starting at 900000 keeps
/// clear of terminals that count their STANs up from 1 and wrap well before; it is not a
/// guarantee for a terminal that reaches the 900000s.
pub(crate) fn stan_of(request_id: i64) -> String {
    format!("9{:05}", request_id.rem_euclid(100_000))
}

/// The desk: requests, decisions, execution.
#[derive(Debug, Clone)]
pub struct RefundDesk {
    pub requests: RefundRequests,
    /// The request path; weak, so that the desk never keeps the engine (and its
    /// journal) alive at shutdown.
    pub engine: Weak<Engine>,
    pub store: Arc<dyn Store>,
    pub policy: RefundPolicy,
}

impl RefundDesk {
    /// Records a request of `ask.op` on `rrn` by `who` and executes it at once unless it
    /// needs approval; `(request, created)`, `created` false when the key was used before.
    pub async fn request(
        &self,
        who: &Principal,
        rrn: &str,
        ask: Ask<'_>,
    ) -> Result<(RefundRequestView, bool), AdminError> {
        if !may_request(who.role) {
            return Err(AdminError::Forbidden(format!(
                "role {} may not request refunds, captures or voids",
                who.role.as_str()
            )));
        }
        check_ask(&ask)?;
        let not_found = || AdminError::NotFound(format!("transaction {rrn}"));
        let original = self
            .requests
            .original(rrn)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?;
        if !admin_http::transactions::visible_to(who, &original.merchant_id) {
            return Err(not_found());
        }
        check_amount(&ask, original.amount_minor)?;
        if ask.op == Operation::Void {
            self.check_not_voided(rrn, &who.actor, ask.idempotency_key)
                .await?;
        }
        let amount_minor = ask.amount_minor.unwrap_or(original.amount_minor).max(1);
        let now = SystemTime::now();
        let needs_approval = amount_minor > self.policy.approval_above_minor;
        let new = NewRefundRequest {
            kind: ask.op.as_str(),
            requested_by: &who.actor,
            idempotency_key: ask.idempotency_key,
            original_rrn: rrn,
            merchant_id: &original.merchant_id,
            amount_minor,
            reason: ask.reason.trim(),
            needs_approval,
            now,
            expires_at: now + Duration::from_millis(self.policy.request_ttl_ms),
        };
        let (row, created) = self.requests.insert(&new).await.map_err(|e| match e {
            // refund_requests_one_void: another void of it arrived at the same instant.
            StoreError::Db(db) if db.is_unique_violation() => AdminError::Conflict(format!(
                "transaction {rrn} is already voided or has a void open"
            )),
            e => unavailable(e),
        })?;
        if !created && let Some(e) = key_reused(&row.view, ask.op, rrn, amount_minor) {
            return Err(e);
        }
        if !created || needs_approval {
            return Ok((row.view, created));
        }
        let view = self.execute(&row, None, &original, now).await?;
        Ok((view, true))
    }

    /// Requests, newest first, confined to a merchant user's merchant.
    pub async fn list(
        &self,
        who: &Principal,
        q: &RefundListQuery,
    ) -> Result<Vec<RefundRequestView>, AdminError> {
        let states = &admin_http::refunds::REQUEST_STATES;
        admin_http::transactions::one_of("state", q.state.as_deref(), states)?;
        if who.role == Role::Merchant && who.merchant_id.is_none() {
            return Ok(Vec::new());
        }
        self.requests
            .list(who.merchant_id.as_deref(), q.state.as_deref())
            .await
            .map_err(unavailable)
    }

    /// Approves (and executes) or rejects request `id`; the view before and after.
    pub async fn decide(
        &self,
        who: &Principal,
        id: i64,
        approve: bool,
    ) -> Result<(RefundRequestView, RefundRequestView), AdminError> {
        let row = self
            .requests
            .get(id)
            .await
            .map_err(unavailable)?
            .filter(|r| admin_http::transactions::visible_to(who, &r.view.merchant_id))
            .ok_or_else(|| AdminError::NotFound(format!("refund request {id}")))?;
        let now = SystemTime::now();
        if let Some(why) = refusal(who, &row, now) {
            // The row reads `expired` once past its expiry; only a pending one is moved.
            if row.expires_at <= now {
                self.requests
                    .decide(id, "expired", None, now, None)
                    .await
                    .map_err(unavailable)?;
            }
            return Err(why);
        }
        if !approve {
            return self.finish_decision(&row, "rejected", who, now).await;
        }
        let original = self.original_of(&row).await?;
        let before = row.view.clone();
        let view = self.execute(&row, Some(who), &original, now).await?;
        Ok((before, view))
    }

    /// Refuses (`409`) a void of `rrn` when the transaction is reversed (or being
    /// reversed) or another void of it is outstanding, unless it is the caller's repeat of
    /// that very request (same key): the request path would answer a second 0400 `00` and
    /// journal a second reversal.
    async fn check_not_voided(&self, rrn: &str, actor: &str, key: &str) -> Result<(), AdminError> {
        let repeat = self
            .requests
            .by_key(actor, key)
            .await
            .map_err(unavailable)?
            .is_some_and(|r| r.view.kind == "void" && r.view.original_rrn == rrn);
        if repeat {
            return Ok(());
        }
        let reversed = self
            .store
            .transaction_by_rrn(rrn)
            .await
            .map_err(unavailable)?
            .is_some_and(|t| matches!(t.state, State::Reversed | State::Reversing));
        if reversed
            || self
                .requests
                .void_outstanding(rrn)
                .await
                .map_err(unavailable)?
        {
            return Err(AdminError::Conflict(format!(
                "transaction {rrn} is already voided or reversed (or a void of it is pending)"
            )));
        }
        Ok(())
    }

    async fn original_of(&self, row: &RequestRow) -> Result<Original, AdminError> {
        self.requests
            .original(&row.view.original_rrn)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| AdminError::NotFound("original transaction".into()))
    }

    async fn finish_decision(
        &self,
        row: &RequestRow,
        to: &str,
        who: &Principal,
        now: SystemTime,
    ) -> Result<(RefundRequestView, RefundRequestView), AdminError> {
        let moved = self
            .requests
            .decide(row.view.id, to, Some(&who.actor), now, None)
            .await;
        if !moved.map_err(unavailable)? {
            return Err(AdminError::Conflict("request decided meanwhile".into()));
        }
        let after = self.requests.get(row.view.id).await.map_err(unavailable)?;
        Ok((
            row.view.clone(),
            after.map(|r| r.view).unwrap_or_else(|| row.view.clone()),
        ))
    }

    /// Marks the request approved (by `by`, or automatically) with the DE11 and DE7 its
    /// message will carry, then sends it ([`RefundDesk::send`]).
    async fn execute(
        &self,
        row: &RequestRow,
        by: Option<&Principal>,
        original: &Original,
        now: SystemTime,
    ) -> Result<RefundRequestView, AdminError> {
        let stan = stan_of(row.view.id);
        let de7 = String::from_utf8_lossy(&codec::clock::transmission(codec::clock::unix_now()))
            .into_owned();
        let by_actor = by.map(|p| p.actor.as_str());
        let moved = self
            .requests
            .decide(row.view.id, "approved", by_actor, now, Some((&stan, &de7)))
            .await;
        if !moved.map_err(unavailable)? {
            return Err(AdminError::Conflict("request decided meanwhile".into()));
        }
        let approved = RequestRow {
            sent: Some((stan, de7)),
            ..row.clone()
        };
        if let Err(e) = self.send(&approved, original, false).await {
            self.settle_failure(&approved, &e, now).await;
            return Err(e);
        }
        let after = self.requests.get(row.view.id).await.map_err(unavailable)?;
        Ok(after.map(|r| r.view).unwrap_or_else(|| row.view.clone()))
    }

    /// Sends an approved request's message through the request path with its fixed DE11
    /// and DE7, records the answer and tells the merchant (once, whoever records it
    /// first). A `resumed` execution answered `94` (the first is still in flight) or `96`
    /// (nothing recorded) records nothing and is tried again later.
    async fn send(
        &self,
        row: &RequestRow,
        original: &Original,
        resumed: bool,
    ) -> Result<(), AdminError> {
        let engine = self
            .engine
            .upgrade()
            .ok_or_else(|| AdminError::Unavailable("the switch is stopping".into()))?;
        let (stan, de7) = row
            .sent
            .clone()
            .ok_or_else(|| AdminError::Conflict("request not approved".into()))?;
        let op = Operation::parse(&row.view.kind).unwrap_or(Operation::Refund);
        let merchant = engine
            .merchants
            .get(original.merchant_id.as_bytes())
            .ok_or_else(|| AdminError::Invalid("merchant unknown to the switch".into()))?;
        let v = &row.view;
        let msg = request_message(op, original, v.amount_minor, &v.reason, &stan, &de7);
        let frame = msg
            .encode_with_mac(builtin::merchant(), &merchant.mac_key)
            .map_err(|e| AdminError::Invalid(format!("request message: {e}")))?;
        let handled = engine.handle(frame, &SessionState::default()).await;
        let answer = handled
            .response
            .and_then(|b| builtin::merchant().decode(b).ok());
        let field = |n: u8| answer.as_ref().and_then(|a| a.get_str(n)).map(String::from);
        let rc = field(39).unwrap_or_else(|| "96".into());
        if resumed && (rc == "94" || rc == "96") {
            tracing::info!(request = v.id, rc = %rc, "resumed back-office request not settled yet");
            return Err(AdminError::Unavailable(format!(
                "answered {rc}, not settled yet"
            )));
        }
        let made_rrn = field(37);
        let first = self
            .requests
            .executed(v.id, made_rrn.as_deref(), &rc)
            .await
            .map_err(unavailable)?;
        if let (true, Some(r)) = (first, &made_rrn) {
            self.tell_merchant(&engine, &v.original_rrn, r, op.event())
                .await?;
        }
        Ok(())
    }

    /// Completes approved requests whose execution was interrupted (approved more than
    /// [`RefundPolicy::resume_after_ms`] before `now`, no outcome recorded): each is sent
    /// again as it was first. How many were found.
    pub async fn resume(&self, now: SystemTime) -> Result<usize, AdminError> {
        let before = now - Duration::from_millis(self.policy.resume_after_ms);
        let rows = self
            .requests
            .interrupted(before, now, RESUME_BATCH_MAX)
            .await
            .map_err(unavailable)?;
        for row in &rows {
            tracing::warn!(request = row.view.id, kind = %row.view.kind, "resuming an interrupted back-office request");
            let sent = async { self.send(row, &self.original_of(row).await?, true).await };
            if let Err(e) = sent.await {
                self.settle_failure(row, &e, now).await;
            }
        }
        Ok(rows.len())
    }

    /// Records a failed sending of approved `row`: `failed` with the reason when it can
    /// never succeed ([`is_permanent`]), else postponed by [`retry_delay_ms`]. A store
    /// error here is logged: the request stays approved and is tried again.
    async fn settle_failure(&self, row: &RequestRow, e: &AdminError, now: SystemTime) {
        let id = row.view.id;
        let recorded = if is_permanent(e) {
            tracing::warn!(request = id, error = %e, "back-office request can never be sent: failed");
            self.requests.failed(id, &e.to_string()).await.map(|_| ())
        } else {
            let delay_ms = retry_delay_ms(row.attempts);
            tracing::warn!(request = id, error = %e, delay_ms, "sending a back-office request failed; tried again later");
            let at = now + Duration::from_millis(delay_ms);
            self.requests.postpone(id, at).await
        };
        if let Err(store) = recorded {
            tracing::warn!(request = id, error = %store, "recording a back-office request's failure failed");
        }
    }

    /// Resumes interrupted requests every [`RESUME_POLL_MS`] until `shutdown`.
    pub async fn run_resumer(self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            if let Err(e) = self.resume(SystemTime::now()).await {
                tracing::warn!(error = %e, "resuming back-office requests failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(RESUME_POLL_MS)) => {}
            }
        }
    }

    /// Stores the 0620 of a request's outcome (the transaction `made_rrn` it made) for the
    /// payment's merchant and wakes the notifier.
    async fn tell_merchant(
        &self,
        engine: &Engine,
        original_rrn: &str,
        made_rrn: &str,
        event: Event,
    ) -> Result<(), AdminError> {
        let Some(original) = self
            .store
            .transaction_by_rrn(original_rrn)
            .await
            .map_err(unavailable)?
        else {
            return Ok(());
        };
        let root_rrn = match original.original_id {
            Some(id) => crate::ids::rrn_of(id),
            None => original.rrn.clone(),
        };
        let root = self
            .store
            .transaction_by_rrn(&root_rrn)
            .await
            .map_err(unavailable)?;
        let made = self
            .store
            .transaction_by_rrn(made_rrn)
            .await
            .map_err(unavailable)?;
        if let (Some(root), Some(made)) = (root, made) {
            let status = root.payment().status();
            self.requests
                .notify(&root, status, made.id, event)
                .await
                .map_err(unavailable)?;
            engine.outlets.wake.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn original() -> Original {
        Original {
            rrn: "000000001002".into(),
            merchant_id: "MERCHANT0000001".into(),
            terminal_id: "TERM0001".into(),
            mti: "0100".into(),
            stan: "42".into(),
            transmitted_at: "1201034500".into(),
            currency: 840,
            amount_minor: 5000,
        }
    }

    fn text(m: &OwnedMessage, n: u8) -> Option<String> {
        m.fields
            .get(&n)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    // Proves each operation is the message the contract has a merchant send: the MTI, DE3,
    // the amount, and DE90 naming the original by MTI, STAN and DE7 (merchant-h2h.md).
    #[test]
    fn messages_as_a_merchant_sends_them() {
        let o = original();
        let de90 = format!("0100000042{}{}", o.transmitted_at, "0".repeat(22));
        for (op, mti, de3) in [
            (Operation::Refund, Mti::FINANCIAL_REQUEST, Some("200000")),
            (Operation::Capture, Mti::COMPLETION_ADVICE, Some("000000")),
            (Operation::Void, Mti::REVERSAL_REQUEST, None),
        ] {
            let m = request_message(op, &o, 4000, "goods returned", "900007", "1201040000");
            assert_eq!(m.mti, mti, "{op:?}");
            assert_eq!(text(&m, 3).as_deref(), de3, "{op:?}");
            assert_eq!(text(&m, 4).as_deref(), Some("000000004000"));
            assert_eq!(text(&m, 11).as_deref(), Some("900007"));
            assert_eq!(text(&m, 90), Some(de90.clone()));
            assert_eq!(
                m.fields.contains_key(&48),
                op == Operation::Refund,
                "{op:?}"
            );
            assert_eq!(Operation::parse(op.as_str()), Some(op));
        }
    }

    // Proves a void needs no amount, any other ask a positive one, and every ask a reason
    // and an idempotency key of bounded length.
    #[test]
    fn asks_are_checked() {
        let ask = |op, amount_minor, reason, key| Ask {
            op,
            amount_minor,
            reason,
            idempotency_key: key,
        };
        assert!(check_ask(&ask(Operation::Void, None, "cancelled", "k")).is_ok());
        assert!(check_ask(&ask(Operation::Capture, Some(1), "shipped", "k")).is_ok());
        assert!(check_ask(&ask(Operation::Capture, Some(0), "shipped", "k")).is_err());
        assert!(check_ask(&ask(Operation::Refund, Some(5), " ", "k")).is_err());
        let long = "k".repeat(IDEMPOTENCY_KEY_MAX_LEN + 1);
        assert!(check_ask(&ask(Operation::Refund, Some(5), "r", &long)).is_err());
    }

    fn request_by(requested_by: &str) -> RequestRow {
        RequestRow {
            view: RefundRequestView {
                id: 1,
                kind: "refund".into(),
                state: "pending".into(),
                original_rrn: "000000001002".into(),
                merchant_id: "MERCHANT0000001".into(),
                amount_minor: 50_000,
                reason: "returned".into(),
                requested_by: requested_by.into(),
                needs_approval: true,
                created_at: String::new(),
                expires_at: String::new(),
                decided_by: None,
                refund_rrn: None,
                response_code: None,
                failure: None,
            },
            expires_at: SystemTime::now() + Duration::from_secs(3600),
            sent: None,
            attempts: 0,
        }
    }

    fn approver(actor: &str) -> Principal {
        Principal {
            actor: actor.into(),
            role: Role::Admin,
            merchant_id: None,
            mfa_done: true,
            source: "127.0.0.1".into(),
        }
    }

    // Proves maker-checker sees through API keys: an admin may not approve what one of
    // their keys asked for, nor a key of theirs what they (or another of their keys) asked
    // for; a key of someone else's may.
    #[test]
    fn a_key_is_its_creator_for_maker_checker() {
        let now = SystemTime::now();
        let refused = |maker: &str, checker: &str| {
            refusal(&approver(checker), &request_by(maker), now).is_some()
        };
        assert!(refused("apikey:op/adam", "adam"));
        assert!(refused("adam", "apikey:approve/adam"));
        assert!(refused("apikey:op/adam", "apikey:approve/adam"));
        assert!(refused("apikey:a/b/adam", "adam"));
        assert!(!refused("apikey:op/adam", "ann"));
        assert!(!refused("apikey:op/adam", "apikey:op/ann"));
        assert!(!refused("oscar", "ann"));
        assert_eq!(person_of("token:operator"), "token:operator");
    }

    // Proves a refund or capture of more than the original's amount (up to i64::MAX, which
    // DE4 cannot carry) is refused when asked, and a void (the original's amount) never is.
    #[test]
    fn amounts_above_the_original_are_refused() {
        let ask = |op, amount_minor| Ask {
            op,
            amount_minor,
            reason: "r",
            idempotency_key: "k",
        };
        assert!(check_amount(&ask(Operation::Refund, Some(5000)), 5000).is_ok());
        assert!(check_amount(&ask(Operation::Refund, Some(5001)), 5000).is_err());
        assert!(check_amount(&ask(Operation::Capture, Some(i64::MAX)), 5000).is_err());
        assert!(check_amount(&ask(Operation::Void, None), 5000).is_ok());
    }

    // Proves a sending that can never succeed is told from one that may, and that retries
    // of the latter back off from the poll interval, doubling, to a bound.
    #[test]
    fn failures_are_final_or_backed_off() {
        assert!(is_permanent(&AdminError::Invalid(
            "merchant unknown".into()
        )));
        assert!(is_permanent(&AdminError::NotFound("original".into())));
        assert!(!is_permanent(&AdminError::Unavailable("store".into())));
        assert_eq!(retry_delay_ms(0), RESUME_POLL_MS);
        assert_eq!(retry_delay_ms(1), 2 * RESUME_POLL_MS);
        assert_eq!(retry_delay_ms(3), 8 * RESUME_POLL_MS);
        assert_eq!(retry_delay_ms(i32::MAX), RESUME_BACKOFF_MAX_MS);
        assert_eq!(retry_delay_ms(-1), RESUME_POLL_MS);
    }

    // Proves an idempotency key repeated with the same ask is a repeat, and with another
    // kind, transaction or amount is refused rather than answered with the old request.
    #[test]
    fn a_key_asks_for_one_thing() {
        let v = request_by("adam").view;
        let (rrn, amount) = (v.original_rrn.clone(), v.amount_minor);
        assert!(key_reused(&v, Operation::Refund, &rrn, amount).is_none());
        assert!(key_reused(&v, Operation::Refund, &rrn, amount - 1).is_some());
        assert!(key_reused(&v, Operation::Void, &rrn, amount).is_some());
        assert!(key_reused(&v, Operation::Refund, "000000009999", amount).is_some());
    }
}
