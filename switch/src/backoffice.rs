//! The back office's account flows (issue 12): login with lockout and a second factor,
//! sessions, TOTP enrolment, accounts, API keys and the audit log. The rules are in
//! [`crate::accounts`], the SQL in [`crate::store::accounts`]; this module combines them
//! and records every action in the audit log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use admin_http::merchants::{Limits, MacKeyIssued, MerchantView, NewMerchantBody, Rotation};
use admin_http::refunds::{RefundAsk, RefundListQuery, RefundRequestView};
use admin_http::transactions::{TxnDetail, TxnPage, TxnQuery};
use admin_http::v1::{
    AccountView, ApiKeyCreated, AuditPage, AuditQuery, LoginGranted, LoginRequest, NewAccount,
    NewApiKey, PasswordChange, Principal, RecoveryCodes, ResetIssued, ResetPassword, TotpEnrolment,
};
use admin_http::{AdminError, Role};
use serde_json::json;

use crate::accounts as rules;
use crate::accounts::throttle::{ADDRESS_FAILURES_MAX, ADDRESS_WINDOW_MS, LoginThrottle};
use crate::crypto::{Purpose, Vault};
use crate::metrics::Metrics;
use crate::refund_desk::{Ask, Operation, RefundDesk};
use crate::store::StoreError;
use crate::store::accounts::{AccountRow, AccountStore, AuditRecord, CreateError};
use crate::store::search::{SearchError, TxnSearch};

/// The answer to every credential failure, a locked account's included: which part was
/// wrong, and whether the account exists or is locked, is not said (OWASP Authentication
/// Cheat Sheet, "Authentication Responses").
const BAD_CREDENTIALS: &str =
    "wrong username, password or code, or the account is locked after repeated failures";

/// The back office over its store.
#[derive(Debug, Clone)]
pub struct BackOffice {
    pub store: AccountStore,
    pub search: TxnSearch,
    /// Refunds with maker-checker; `None` in tools without a request path.
    pub desk: Option<RefundDesk>,
    /// For the merchants' SQL (in [`crate::merchants`]).
    pub pool: deadpool_postgres::Pool,
    /// This instance's merchant table, reloaded after a change so that it applies here at
    /// once (other instances pick it up at their reload interval); `None` in tools.
    pub merchants: Option<Arc<crate::merchants::Merchants>>,
    pub vault: Arc<Vault>,
    pub metrics: Arc<Metrics>,
    /// Failed logins by source address ([`rules::throttle`]), shared by the clones.
    pub throttle: Arc<AddressThrottle>,
}

/// Failed back-office logins by source address, for [`BackOffice::login`]: the rules are
/// in [`rules::throttle`]; new ones count nothing.
#[derive(Debug, Default)]
pub struct AddressThrottle(Mutex<LoginThrottle>);

pub use crate::store::unavailable;

fn create_error(e: CreateError) -> AdminError {
    match e {
        CreateError::Taken => AdminError::Conflict("username taken".into()),
        CreateError::UnknownMerchant => AdminError::Invalid("unknown merchant".into()),
        CreateError::Store(e) => unavailable(e),
    }
}

/// Password hashes (argon2id, tens of milliseconds of CPU and 19 MiB each) computed at
/// once, off the runtime: a flood of logins on the admin listener must not take the
/// cores that answer payments (a review measured payments' p99 going from 18 to 330 ms
/// under 19 logins/s when two ran at once on two cores).
const PASSWORD_HASHES_MAX: usize = 1;

/// Password checks waiting or running at most; beyond it a login is refused at once with
/// 503 (the caller retries) rather than queued without bound.
const PASSWORD_WAITERS_MAX: usize = 8;

/// How long a password check waits for its turn before it is refused with 503.
const PASSWORD_WAIT_MS: u64 = 2_000;

/// Runs `work` (an argon2 hash or verification) on the blocking pool, at most
/// [`PASSWORD_HASHES_MAX`] at a time and [`PASSWORD_WAITERS_MAX`] waiting. Errors
/// (`Unavailable`, 503): too many waiting, waited [`PASSWORD_WAIT_MS`], or the blocking
/// pool is shutting down.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AdminError> {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PASSWORD_HASHES_MAX);
    static WAITERS: AtomicUsize = AtomicUsize::new(0);
    let busy = || AdminError::Unavailable("too many password checks at once: retry shortly".into());
    if WAITERS.fetch_add(1, Ordering::AcqRel) >= PASSWORD_WAITERS_MAX {
        WAITERS.fetch_sub(1, Ordering::AcqRel);
        return Err(busy());
    }
    let wait = Duration::from_millis(PASSWORD_WAIT_MS);
    let permit = tokio::time::timeout(wait, PERMITS.acquire()).await;
    let result = match permit {
        Ok(Ok(_permit)) => tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string())),
        Ok(Err(e)) => Err(AdminError::Unavailable(e.to_string())),
        Err(_) => Err(busy()),
    };
    WAITERS.fetch_sub(1, Ordering::AcqRel);
    result
}

async fn verify_password(pw: &str, phc: &str) -> Result<bool, AdminError> {
    let (pw, phc) = (pw.to_owned(), phc.to_owned());
    off_runtime(move || rules::verify_password(&pw, &phc)).await
}

async fn hash_password(pw: &str) -> Result<String, AdminError> {
    let pw = pw.to_owned();
    off_runtime(move || rules::hash_password(&pw))
        .await?
        .map_err(AdminError::Unavailable)
}

/// A PHC string no password matches, verified for unknown usernames so that they take
/// as long as known ones.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| rules::hash_password("decoy-Password-1!").unwrap_or_default())
}

fn view_of(a: &AccountRow) -> AccountView {
    AccountView {
        username: a.username.clone(),
        role: a.role,
        merchant_id: a.merchant_id.clone(),
        totp_enabled: a.totp_enabled,
        disabled: a.disabled,
        locked_until: a.locked_until_text.clone(),
    }
}

/// Whether `actor` (role `by`) may create an account or key of role `role`: a
/// superadmin anything, anyone else only roles below their own.
pub fn may_grant(by: Role, role: Role) -> bool {
    by == Role::Superadmin || role < by
}

/// Checks a new account's fields: the username's shape, the merchant scope, the password.
pub fn check_new_account(new: &NewAccount) -> Result<(), AdminError> {
    let name_ok = (3..=64).contains(&new.username.len())
        && new
            .username
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._@-".contains(c));
    if !name_ok {
        return Err(AdminError::Invalid(
            "username: 3 to 64 of a-z 0-9 . _ @ -".into(),
        ));
    }
    if (new.role == Role::Merchant) != new.merchant_id.is_some() {
        return Err(AdminError::Invalid(
            "merchant_id is required for role merchant and refused for the others".into(),
        ));
    }
    rules::check_password(&new.password)
        .map_err(|p| AdminError::Invalid(format!("password refused: {p}")))
}

impl BackOffice {
    /// Appends to the audit log; an action whose record cannot be written fails.
    pub(crate) async fn audit(&self, rec: AuditRecord<'_>) -> Result<(), AdminError> {
        self.store
            .audit(&rec, SystemTime::now())
            .await
            .map_err(unavailable)
    }

    /// An audit record of a change from `before` to `after` (each serialised as JSON).
    pub(crate) fn change<'a>(
        who: &'a Principal,
        action: &'a str,
        target: &'a str,
        before: impl serde::Serialize,
        after: impl serde::Serialize,
    ) -> AuditRecord<'a> {
        AuditRecord {
            before: serde_json::to_value(before).ok(),
            after: serde_json::to_value(after).ok(),
            ..Self::record(who, action, Some(target))
        }
    }

    pub(crate) fn record<'a>(
        who: &'a Principal,
        action: &'a str,
        target: Option<&'a str>,
    ) -> AuditRecord<'a> {
        AuditRecord {
            actor: &who.actor,
            actor_role: Some(who.role),
            source_addr: &who.source,
            action,
            target,
            outcome: "ok",
            before: None,
            after: None,
        }
    }

    /// The account behind a session principal (API keys and static tokens have none).
    async fn account_of(&self, who: &Principal) -> Result<AccountRow, AdminError> {
        let not_account = || AdminError::Forbidden("only an account's session may do this".into());
        if who.actor.contains(':') {
            return Err(not_account());
        }
        self.store
            .by_username(&who.actor)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_account)
    }

    /// The principal of a session token or API key, if live.
    pub async fn authenticate(
        &self,
        bearer: &str,
        source: &str,
    ) -> Result<Option<Principal>, AdminError> {
        let now = SystemTime::now();
        let hash = rules::token_hash(bearer);
        let holder = if bearer.starts_with(rules::SESSION_PREFIX) {
            let cutoff = rules::session_cutoff(now);
            self.store.touch_session(&hash, cutoff, now).await
        } else if bearer.starts_with(rules::API_KEY_PREFIX) {
            self.store.api_key(&hash, now).await
        } else {
            return Ok(None);
        };
        Ok(holder.map_err(unavailable)?.map(|h| Principal {
            actor: h.actor,
            role: h.role,
            merchant_id: h.merchant_id,
            mfa_done: h.mfa_done,
            source: source.to_string(),
        }))
    }
}

/// A login attempt's audit record.
fn login_record<'a>(
    username: &'a str,
    role: Option<Role>,
    source: &'a str,
    action: &'a str,
    outcome: &'a str,
    why: &str,
) -> AuditRecord<'a> {
    AuditRecord {
        actor: username,
        actor_role: role,
        source_addr: source,
        action,
        target: Some(username),
        outcome,
        before: None,
        after: Some(json!({ "reason": why })),
    }
}

impl BackOffice {
    /// Checks credentials (password, then TOTP or a recovery code once enrolled) and
    /// opens a session. Every refusal of credentials (`Unauthenticated`: an unknown,
    /// disabled or locked account, a wrong password or code) counts towards the source
    /// address's throttle, which refuses the address (`TooManyAttempts`, before any
    /// password is hashed) once it has failed too often; those of an unlocked account
    /// count towards its lockout too. A database fault (`Unavailable`) counts for neither.
    pub async fn login(&self, req: LoginRequest, source: &str) -> Result<LoginGranted, AdminError> {
        let refused = self.throttle().refused(source, Instant::now());
        if let Some(wait) = refused {
            self.count_login("throttled");
            return Err(AdminError::TooManyAttempts {
                detail: "too many failed logins from this address: try again later".into(),
                retry_after_s: wait.as_millis().div_ceil(1000).max(1) as u64,
            });
        }
        let result = self.check_login(req, source).await;
        if let Err(AdminError::Unauthenticated(_)) = &result {
            let engaged = self.throttle().failed(source, Instant::now());
            if engaged && let Err(e) = self.audit_throttle(source).await {
                // The attempt's answer stands: it was counted, and the log has the line.
                tracing::error!(error = %e, source, "throttle's audit line not written");
            }
        }
        result
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, LoginThrottle> {
        // A panic elsewhere while holding it leaves counts that are still whole.
        self.throttle
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The audit line of an address the throttle starts refusing (once per window: the
    /// refusals themselves are only counted, so a flood writes nothing).
    async fn audit_throttle(&self, source: &str) -> Result<(), AdminError> {
        tracing::warn!(
            source,
            "back office: too many failed logins from one address, refusing it"
        );
        let detail = format!(
            "{ADDRESS_FAILURES_MAX} failed logins within {} minutes: address refused until the window ends",
            ADDRESS_WINDOW_MS / 60_000
        );
        let rec = AuditRecord {
            actor: "anonymous",
            actor_role: None,
            source_addr: source,
            action: "login",
            target: None,
            outcome: "throttled",
            before: None,
            after: Some(json!({ "reason": detail })),
        };
        self.audit(rec).await
    }

    async fn check_login(
        &self,
        req: LoginRequest,
        source: &str,
    ) -> Result<LoginGranted, AdminError> {
        let now = SystemTime::now();
        let found = self
            .store
            .by_username(&req.username)
            .await
            .map_err(unavailable)?;
        let Some(acct) = found.filter(|a| !a.disabled) else {
            let pw = req.password.clone();
            off_runtime(move || rules::verify_password(&pw, decoy_hash())).await?;
            self.count_login("failure");
            let rec = login_record(
                &req.username,
                None,
                source,
                "login",
                "failed",
                "unknown or disabled account",
            );
            self.audit(rec).await?;
            return Err(AdminError::Unauthenticated(BAD_CREDENTIALS.into()));
        };
        // The password is hashed for a locked account too, and the answer is the same 401
        // whatever it was: a lock that answered differently to the right password would
        // tell a guesser when they had found it, lock or no lock. The time still differs
        // from an unknown account's by the failure bookkeeping below (a database write).
        let password_ok = verify_password(&req.password, &acct.password_hash).await?;
        if rules::is_locked(acct.locked_until, now) {
            return Err(self.refuse_locked(&acct, source, password_ok).await);
        }
        if !password_ok {
            return Err(self.fail_login(&acct, source, now, "wrong password").await);
        }
        let mfa_done = if acct.totp_enabled {
            if let Err(why) = self.second_factor(&acct, &req, now).await? {
                return Err(self.fail_login(&acct, source, now, why).await);
            }
            true
        } else {
            !rules::needs_second_factor(acct.role)
        };
        self.open_session(&acct, source, now, mfa_done).await
    }

    /// A login to a locked account, refused as bad credentials whatever the password. The
    /// right password is counted and audited as `locked` (the account's owner, waiting
    /// out the lock); a wrong one as a failure, like an unknown account's, since the
    /// metrics are open to anyone who can reach the login. Neither extends the lock.
    async fn refuse_locked(
        &self,
        acct: &AccountRow,
        source: &str,
        password_ok: bool,
    ) -> AdminError {
        // (audit outcome, metric outcome, audit detail)
        let (outcome, counted, detail) = if password_ok {
            (
                "locked",
                "locked",
                "account locked: the right password refused",
            )
        } else {
            ("failed", "failure", "account locked: wrong password")
        };
        self.count_login(counted);
        let rec = login_record(
            &acct.username,
            Some(acct.role),
            source,
            "login",
            outcome,
            detail,
        );
        if let Err(e) = self.audit(rec).await {
            return e;
        }
        AdminError::Unauthenticated(BAD_CREDENTIALS.into())
    }

    fn count_login(&self, outcome: &str) {
        self.metrics
            .admin_logins
            .with_label_values(&[outcome])
            .inc();
    }

    /// Checks the TOTP code or recovery code of a login; `Ok(Err(why))` when wrong.
    async fn second_factor(
        &self,
        acct: &AccountRow,
        req: &LoginRequest,
        now: SystemTime,
    ) -> Result<Result<(), &'static str>, AdminError> {
        if let Some(code) = &req.recovery_code {
            let hash = rules::recovery_hash(code);
            let used = self.store.use_recovery_code(acct.id, &hash, now).await;
            return Ok(used
                .map_err(unavailable)?
                .then_some(())
                .ok_or("wrong recovery code"));
        }
        let Some(code) = &req.totp else {
            return Ok(Err("TOTP code missing"));
        };
        let totp = self.totp_of(acct)?;
        let Some(step) = rules::check_totp(&totp, code, now, acct.totp_last_step) else {
            return Ok(Err("wrong or reused TOTP code"));
        };
        let fresh = self
            .store
            .use_totp_step(acct.id, step)
            .await
            .map_err(unavailable)?;
        Ok(fresh.then_some(()).ok_or("reused TOTP code"))
    }

    fn totp_of(&self, acct: &AccountRow) -> Result<totp_rs::Totp, AdminError> {
        let broken = |what: &str| AdminError::Unavailable(format!("TOTP secret: {what}"));
        let sealed = acct.totp_secret.as_deref().ok_or_else(|| broken("none"))?;
        let secret = self
            .vault
            .open(Purpose::TotpSecret, sealed)
            .map_err(|e| broken(&e.to_string()))?;
        rules::totp(&secret, &acct.username).map_err(|e| broken(&e))
    }

    /// Counts a failed login, locks the account at the threshold, records both; the
    /// error to answer.
    async fn fail_login(
        &self,
        acct: &AccountRow,
        source: &str,
        now: SystemTime,
        why: &str,
    ) -> AdminError {
        self.count_login("failure");
        let window = rules::failure_window_start(now);
        let step = async {
            let n = self
                .store
                .record_failure(acct.id, now, source, window)
                .await
                .map_err(unavailable)?;
            let rec = login_record(
                &acct.username,
                Some(acct.role),
                source,
                "login",
                "failed",
                why,
            );
            self.audit(rec).await?;
            if let Some(until) = rules::lock_until(n, now) {
                self.store
                    .set_lock(acct.id, Some(until))
                    .await
                    .map_err(unavailable)?;
                let reason = format!(
                    "{n} failures within {} minutes",
                    rules::LOCKOUT_WINDOW_MS / 60_000
                );
                let rec = login_record(
                    &acct.username,
                    Some(acct.role),
                    source,
                    "account.lock",
                    "ok",
                    &reason,
                );
                self.audit(rec).await?;
                tracing::warn!(account = %acct.username, failures = n, "back-office account locked");
            }
            Ok::<(), AdminError>(())
        };
        match step.await {
            Ok(()) => AdminError::Unauthenticated(BAD_CREDENTIALS.into()),
            Err(e) => e,
        }
    }

    async fn open_session(
        &self,
        acct: &AccountRow,
        source: &str,
        now: SystemTime,
        mfa_done: bool,
    ) -> Result<LoginGranted, AdminError> {
        let (token, hash) = rules::new_token(rules::SESSION_PREFIX);
        let s = &self.store;
        s.open_session(&hash, acct.id, now, mfa_done, source)
            .await
            .map_err(unavailable)?;
        s.set_lock(acct.id, None).await.map_err(unavailable)?;
        let (shown, is_new) = s
            .note_address(acct.id, source, now)
            .await
            .map_err(unavailable)?;
        let role = Some(acct.role);
        if is_new {
            self.metrics.admin_new_address_logins.inc();
            let rec = login_record(
                &acct.username,
                role,
                source,
                "login.new_address",
                "ok",
                source,
            );
            self.audit(rec).await?;
        }
        self.count_login("success");
        let why = match (acct.password_change_required, mfa_done) {
            (true, _) => "signed in, password to change",
            (false, true) => "signed in",
            (false, false) => "signed in, second factor to enrol",
        };
        self.audit(login_record(
            &acct.username,
            role,
            source,
            "login",
            "ok",
            why,
        ))
        .await?;
        Ok(LoginGranted {
            token,
            role: acct.role,
            idle_timeout_s: rules::SESSION_IDLE_MS / 1000,
            totp_enrolment_required: !mfa_done,
            password_change_required: acct.password_change_required,
            new_login_addresses: shown,
        })
    }

    /// Revokes the caller's session.
    pub async fn logout(&self, who: &Principal, token: &str) -> Result<(), AdminError> {
        let hash = rules::token_hash(token);
        self.store
            .revoke_session(&hash, SystemTime::now())
            .await
            .map_err(unavailable)?;
        self.audit(Self::record(who, "logout", Some(&who.actor)))
            .await
    }
}

impl BackOffice {
    /// A fresh TOTP secret for the caller's account (replacing an unconfirmed one).
    pub async fn totp_enrol(&self, who: &Principal) -> Result<TotpEnrolment, AdminError> {
        let acct = self.account_of(who).await?;
        let secret = rules::new_totp_secret();
        let sealed = self
            .vault
            .seal(Purpose::TotpSecret, &secret)
            .map_err(|e| AdminError::Unavailable(e.to_string()))?;
        self.store
            .set_totp_secret(acct.id, &sealed)
            .await
            .map_err(unavailable)?;
        let totp = rules::totp(&secret, &acct.username).map_err(AdminError::Unavailable)?;
        let otpauth_url = totp
            .to_url()
            .map_err(|e| AdminError::Unavailable(e.to_string()))?;
        self.audit(Self::record(who, "totp.enrol", Some(&who.actor)))
            .await?;
        Ok(TotpEnrolment {
            secret_base32: totp.secret().to_base32(),
            otpauth_url,
        })
    }

    /// Confirms enrolment with a current code: TOTP on, the session second-factored,
    /// fresh recovery codes returned once.
    pub async fn totp_confirm(
        &self,
        who: &Principal,
        token: &str,
        code: &str,
    ) -> Result<RecoveryCodes, AdminError> {
        let acct = self.account_of(who).await?;
        let now = SystemTime::now();
        let totp = self.totp_of(&acct)?;
        let Some(step) = rules::check_totp(&totp, code, now, None) else {
            let mut rec = Self::record(who, "totp.confirm", Some(&who.actor));
            rec.outcome = "refused";
            self.audit(rec).await?;
            return Err(AdminError::Invalid("wrong TOTP code".into()));
        };
        let codes = rules::new_recovery_codes();
        let hashes: Vec<Vec<u8>> = codes.iter().map(|c| rules::recovery_hash(c)).collect();
        let session = rules::token_hash(token);
        self.store
            .enable_totp(acct.id, step, &hashes, &session)
            .await
            .map_err(unavailable)?;
        self.audit(Self::record(who, "totp.confirm", Some(&who.actor)))
            .await?;
        Ok(RecoveryCodes {
            recovery_codes: codes,
        })
    }

    /// Changes the caller's password (the current one proves it is them); every other
    /// session of the account is revoked.
    pub async fn change_password(
        &self,
        who: &Principal,
        change: PasswordChange,
        token: &str,
    ) -> Result<(), AdminError> {
        let acct = self.account_of(who).await?;
        if !verify_password(&change.current_password, &acct.password_hash).await? {
            let mut rec = Self::record(who, "password.change", Some(&who.actor));
            rec.outcome = "refused";
            self.audit(rec).await?;
            return Err(AdminError::Forbidden("current password wrong".into()));
        }
        rules::check_password(&change.new_password)
            .map_err(|p| AdminError::Invalid(format!("password refused: {p}")))?;
        if change.new_password == change.current_password {
            // PCI DSS 8.3.7: a new password differs from the one it replaces.
            return Err(AdminError::Invalid(
                "password refused: the new password must differ from the current one".into(),
            ));
        }
        let hash = hash_password(&change.new_password).await?;
        let keep = rules::token_hash(token);
        self.store
            .set_password(acct.id, &hash, Some(&keep), SystemTime::now())
            .await
            .map_err(unavailable)?;
        self.audit(Self::record(who, "password.change", Some(&who.actor)))
            .await
    }

    pub async fn accounts(&self) -> Result<Vec<AccountView>, AdminError> {
        let all = self.store.all().await.map_err(unavailable)?;
        Ok(all.iter().map(view_of).collect())
    }

    /// Creates an account of a role the caller may grant ([`may_grant`]).
    pub async fn create_account(
        &self,
        who: &Principal,
        new: NewAccount,
    ) -> Result<AccountView, AdminError> {
        if !may_grant(who.role, new.role) {
            return Err(AdminError::Forbidden(format!(
                "role {} may not create role {}",
                who.role.as_str(),
                new.role.as_str()
            )));
        }
        // An administrator chose this password: the owner changes it at first use.
        let view = self.insert_account(&new, true).await?;
        let mut rec = Self::record(who, "account.create", Some(&new.username));
        rec.after = serde_json::to_value(&view).ok();
        self.audit(rec).await?;
        Ok(view)
    }

    /// `change_required`: the password was set by someone other than the account's owner.
    async fn insert_account(
        &self,
        new: &NewAccount,
        change_required: bool,
    ) -> Result<AccountView, AdminError> {
        check_new_account(new)?;
        let hash = hash_password(&new.password).await?;
        let merchant = new.merchant_id.as_deref();
        self.store
            .insert(&new.username, new.role, merchant, &hash, change_required)
            .await
            .map_err(create_error)?;
        Ok(AccountView {
            username: new.username.clone(),
            role: new.role,
            merchant_id: new.merchant_id.clone(),
            totp_enabled: false,
            disabled: false,
            locked_until: None,
        })
    }

    /// Creates an account from the command line (`switchyard account add`), the way in
    /// for the first superadmin; recorded with actor `cli`.
    pub async fn create_account_from_cli(
        &self,
        new: NewAccount,
    ) -> Result<AccountView, AdminError> {
        // The operator at the command line sets the first superadmin's own password.
        let view = self.insert_account(&new, false).await?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let rec = AuditRecord {
            actor: "cli",
            actor_role: None,
            source_addr: &host,
            action: "account.create",
            target: Some(&new.username),
            outcome: "ok",
            before: None,
            after: serde_json::to_value(&view).ok(),
        };
        self.audit(rec).await?;
        Ok(view)
    }

    /// Lifts a lockout and forgets the failures behind it.
    pub async fn unlock(&self, who: &Principal, username: &str) -> Result<(), AdminError> {
        let acct = self
            .store
            .by_username(username)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| AdminError::NotFound(format!("account {username}")))?;
        self.store
            .set_lock(acct.id, None)
            .await
            .map_err(unavailable)?;
        let rec = Self::change(
            who,
            "account.unlock",
            username,
            json!({ "locked_until": acct.locked_until_text }),
            json!({ "locked_until": null }),
        );
        self.audit(rec).await
    }

    /// A one-time reset token for an account whose role the caller may grant; the
    /// account's sessions end.
    pub async fn issue_reset(
        &self,
        who: &Principal,
        username: &str,
    ) -> Result<ResetIssued, AdminError> {
        let acct = self
            .store
            .by_username(username)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| AdminError::NotFound(format!("account {username}")))?;
        if !may_grant(who.role, acct.role) {
            return Err(AdminError::Forbidden(
                "may not reset an account of that role".into(),
            ));
        }
        let now = SystemTime::now();
        let (token, hash) = rules::new_token(rules::RESET_PREFIX);
        let until = now + Duration::from_millis(rules::RESET_TTL_MS);
        let expires_at = self
            .store
            .insert_reset(&hash, acct.id, &who.actor, now, until)
            .await
            .map_err(unavailable)?;
        let mut rec = Self::record(who, "password.reset_issued", Some(username));
        rec.after = Some(json!({ "expires_at": expires_at }));
        self.audit(rec).await?;
        Ok(ResetIssued {
            reset_token: token,
            expires_at,
        })
    }

    /// Sets a new password with a reset token, once; lifts a lockout.
    pub async fn reset_password(&self, req: ResetPassword, source: &str) -> Result<(), AdminError> {
        rules::check_password(&req.new_password)
            .map_err(|p| AdminError::Invalid(format!("password refused: {p}")))?;
        let now = SystemTime::now();
        let hash = rules::token_hash(&req.reset_token);
        let Some(acct) = self
            .store
            .use_reset(&hash, now)
            .await
            .map_err(unavailable)?
        else {
            let rec = login_record(
                "unknown",
                None,
                source,
                "password.reset",
                "refused",
                "unknown, used or expired token",
            );
            self.audit(rec).await?;
            return Err(AdminError::Unauthenticated(
                "reset token unknown, used or expired".into(),
            ));
        };
        let phc = hash_password(&req.new_password).await?;
        self.store
            .set_password(acct.id, &phc, None, now)
            .await
            .map_err(unavailable)?;
        self.store
            .set_lock(acct.id, None)
            .await
            .map_err(unavailable)?;
        let rec = login_record(
            &acct.username,
            Some(acct.role),
            source,
            "password.reset",
            "ok",
            "reset token used",
        );
        self.audit(rec).await
    }

    /// Creates an API key of a role the caller may grant; the key is shown once.
    pub async fn create_api_key(
        &self,
        who: &Principal,
        new: NewApiKey,
    ) -> Result<ApiKeyCreated, AdminError> {
        let acct = self.account_of(who).await?;
        if !may_grant(who.role, new.role) {
            return Err(AdminError::Forbidden(
                "a key may not exceed its creator's role".into(),
            ));
        }
        if (new.role == Role::Merchant) != new.merchant_id.is_some() {
            return Err(AdminError::Invalid(
                "merchant_id goes with role merchant only".into(),
            ));
        }
        if !(1..=rules::API_KEY_MAX_DAYS).contains(&new.expires_in_days) || new.name.is_empty() {
            return Err(AdminError::Invalid(format!(
                "a name, and expires_in_days from 1 to {}",
                rules::API_KEY_MAX_DAYS
            )));
        }
        let now = SystemTime::now();
        let expires = now + Duration::from_secs(u64::from(new.expires_in_days) * 86_400);
        let (key, hash) = rules::new_token(rules::API_KEY_PREFIX);
        let merchant = new.merchant_id.as_deref();
        let (id, expires_at) = self
            .store
            .insert_api_key(&new.name, &hash, new.role, merchant, acct.id, now, expires)
            .await
            .map_err(create_error)?;
        let mut rec = Self::record(who, "apikey.create", Some(&new.name));
        rec.after = Some(
            json!({ "id": id, "role": new.role, "merchant_id": new.merchant_id, "expires_at": expires_at }),
        );
        self.audit(rec).await?;
        Ok(ApiKeyCreated {
            id,
            key,
            expires_at,
        })
    }

    /// A page of the audit log, newest first.
    pub async fn search_audit(&self, q: AuditQuery) -> Result<AuditPage, AdminError> {
        let entries = self.store.search_audit(&q).await.map_err(unavailable)?;
        let limit = q
            .limit
            .unwrap_or(crate::store::accounts::AUDIT_PAGE_DEFAULT)
            .clamp(1, crate::store::accounts::AUDIT_PAGE_MAX);
        let next_before_id = (entries.len() == limit as usize)
            .then(|| entries.last().map(|e| e.id))
            .flatten();
        Ok(AuditPage {
            entries,
            next_before_id,
        })
    }
}

impl BackOffice {
    /// Transactions matching `q`, confined to the merchant of a merchant user.
    pub async fn search_transactions(
        &self,
        who: &Principal,
        mut q: TxnQuery,
    ) -> Result<TxnPage, AdminError> {
        q.merchant_id = admin_http::transactions::scope(who, q.merchant_id.as_deref())?;
        admin_http::transactions::check_query(&q)?;
        self.search.search(&q).await.map_err(|e| match e {
            SearchError::BadFilter(w) => AdminError::Invalid(w),
            SearchError::Store(e) => unavailable(e),
        })
    }

    /// A transaction and its chain; another merchant's is `NotFound` to a merchant user.
    pub async fn transaction_chain(
        &self,
        who: &Principal,
        rrn: &str,
    ) -> Result<TxnDetail, AdminError> {
        let not_found = || AdminError::NotFound(format!("transaction {rrn}"));
        let (transaction, timeline) = self
            .search
            .chain(rrn)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?;
        if !admin_http::transactions::visible_to(who, &transaction.merchant_id) {
            return Err(not_found());
        }
        Ok(TxnDetail {
            transaction,
            timeline,
        })
    }
}

impl BackOffice {
    pub(crate) fn desk(&self) -> Result<&RefundDesk, AdminError> {
        self.desk
            .as_ref()
            .ok_or_else(|| AdminError::Unavailable("no request path here".into()))
    }

    /// Records (and, at or below the approval amount, executes) a refund request.
    pub async fn request_refund(
        &self,
        who: &Principal,
        rrn: &str,
        ask: RefundAsk,
    ) -> Result<RefundRequestView, AdminError> {
        self.request_operation(who, rrn, Ask::of(Operation::Refund, &ask))
            .await
    }

    /// Records (and, at or below the approval amount, executes) a refund, capture or void
    /// request; a new one is audited as `{kind}.request`.
    pub async fn request_operation(
        &self,
        who: &Principal,
        rrn: &str,
        ask: Ask<'_>,
    ) -> Result<RefundRequestView, AdminError> {
        let (view, created) = self.desk()?.request(who, rrn, ask).await?;
        if created {
            let id = view.id.to_string();
            let action = format!("{}.request", ask.op.as_str());
            let mut rec = Self::record(who, &action, Some(&id));
            rec.after = serde_json::to_value(&view).ok();
            self.audit(rec).await?;
        }
        Ok(view)
    }

    pub async fn refund_requests(
        &self,
        who: &Principal,
        q: RefundListQuery,
    ) -> Result<Vec<RefundRequestView>, AdminError> {
        self.desk()?.list(who, &q).await
    }

    /// Approves (and executes) or rejects a request; refusals are audited too.
    pub async fn decide_refund(
        &self,
        who: &Principal,
        id: i64,
        approve: bool,
    ) -> Result<RefundRequestView, AdminError> {
        let action = if approve {
            "refund.approve"
        } else {
            "refund.reject"
        };
        let target = id.to_string();
        match self.desk()?.decide(who, id, approve).await {
            Ok((before, after)) => {
                let rec = Self::change(who, action, &target, &before, &after);
                self.audit(rec).await?;
                Ok(after)
            }
            Err(e) => {
                let mut rec = Self::record(who, action, Some(&target));
                rec.outcome = "refused";
                rec.after = Some(json!({ "reason": e.to_string() }));
                self.audit(rec).await?;
                Err(e)
            }
        }
    }
}

fn db_problem(e: crate::db::DbError) -> AdminError {
    match e {
        crate::db::DbError::Invalid(w) => AdminError::Invalid(w),
        crate::db::DbError::Postgres(pg)
            if pg.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
        {
            AdminError::Conflict("merchant exists".into())
        }
        other => unavailable(StoreError::Db(other)),
    }
}

impl BackOffice {
    /// Reloads this instance's merchants after a change.
    async fn reload_merchants(&self) -> Result<(), AdminError> {
        if let Some(m) = &self.merchants {
            m.reload(&self.pool, &self.vault)
                .await
                .map_err(db_problem)?;
        }
        Ok(())
    }

    async fn merchant_view(&self, id: &str) -> Result<MerchantView, AdminError> {
        crate::merchants::views(&self.pool)
            .await
            .map_err(db_problem)?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| AdminError::NotFound(format!("merchant {id}")))
    }

    pub async fn merchant_views(&self) -> Result<Vec<MerchantView>, AdminError> {
        crate::merchants::views(&self.pool)
            .await
            .map_err(db_problem)
    }

    /// Creates a merchant; its MAC key is returned once.
    pub async fn create_merchant(
        &self,
        who: &Principal,
        new: NewMerchantBody,
    ) -> Result<MacKeyIssued, AdminError> {
        let m = crate::merchants::NewMerchant {
            id: new.id.clone(),
            name: new.name,
            currencies: new.currencies,
            per_txn_limit_minor: new.limit_minor,
            rate_per_s: new.rate_per_s,
            rate_burst: new.burst,
        };
        let key = crate::merchants::add(&self.pool, &self.vault, &m)
            .await
            .map_err(db_problem)?;
        self.reload_merchants().await?;
        let mut rec = Self::record(who, "merchant.create", Some(&new.id));
        rec.after = serde_json::to_value(self.merchant_view(&new.id).await?).ok();
        self.audit(rec).await?;
        Ok(MacKeyIssued {
            id: new.id,
            mac_key_hex: hex::encode(key),
            previous_key_valid_until: None,
        })
    }

    pub async fn set_merchant_enabled(
        &self,
        who: &Principal,
        id: &str,
        enabled: bool,
    ) -> Result<(), AdminError> {
        let before = self.merchant_view(id).await?;
        crate::merchants::set_enabled(&self.pool, id, enabled)
            .await
            .map_err(db_problem)?;
        self.reload_merchants().await?;
        let action = if enabled {
            "merchant.enable"
        } else {
            "merchant.disable"
        };
        let rec = Self::change(
            who,
            action,
            id,
            json!({ "enabled": before.enabled }),
            json!({ "enabled": enabled }),
        );
        self.audit(rec).await
    }

    pub async fn set_merchant_limits(
        &self,
        who: &Principal,
        id: &str,
        l: Limits,
    ) -> Result<MerchantView, AdminError> {
        let before = self.merchant_view(id).await?;
        crate::merchants::set_limits(
            &self.pool,
            id,
            &l.currencies,
            l.limit_minor,
            l.rate_per_s,
            l.burst,
        )
        .await
        .map_err(db_problem)?;
        self.reload_merchants().await?;
        let after = self.merchant_view(id).await?;
        let rec = Self::change(who, "merchant.limits", id, &before, &after);
        self.audit(rec).await?;
        Ok(after)
    }

    /// A new MAC key for the merchant; the old one verifies until the overlap ends.
    pub async fn rotate_merchant_key(
        &self,
        who: &Principal,
        id: &str,
        r: Rotation,
    ) -> Result<MacKeyIssued, AdminError> {
        let (key, _until) = crate::merchants::rotate_key(&self.pool, &self.vault, id, r.overlap_s)
            .await
            .map_err(db_problem)?
            .ok_or_else(|| AdminError::NotFound(format!("merchant {id}")))?;
        self.reload_merchants().await?;
        let view = self.merchant_view(id).await?;
        let mut rec = Self::record(who, "merchant.rotate_key", Some(id));
        rec.after = Some(
            json!({ "overlap_s": r.overlap_s, "previous_key_valid_until": view.previous_key_valid_until }),
        );
        self.audit(rec).await?;
        Ok(MacKeyIssued {
            id: id.to_string(),
            mac_key_hex: hex::encode(key),
            previous_key_valid_until: view.previous_key_valid_until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves only a superadmin grants its own role or admin; others grant lower roles only.
    #[test]
    fn granting() {
        assert!(may_grant(Role::Superadmin, Role::Superadmin));
        assert!(may_grant(Role::Admin, Role::Approver));
        assert!(!may_grant(Role::Admin, Role::Admin));
        assert!(may_grant(Role::Viewer, Role::Merchant));
        assert!(!may_grant(Role::Operator, Role::Approver));
    }

    // Proves a flood of password checks is bounded: one runs at a time, at most
    // PASSWORD_WAITERS_MAX wait, the rest are refused at once (503) instead of queueing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_checks_bounded() {
        let running = Arc::new(AtomicUsize::new(0));
        let calls = (0..3 * PASSWORD_WAITERS_MAX).map(|_| {
            let running = running.clone();
            tokio::spawn(off_runtime(move || {
                assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "one at a time");
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
            }))
        });
        let mut done = 0;
        let mut busy = 0;
        for call in calls.collect::<Vec<_>>() {
            match call.await.unwrap() {
                Ok(()) => done += 1,
                Err(AdminError::Unavailable(_)) => busy += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!((1..=PASSWORD_WAITERS_MAX).contains(&done), "{done} ran");
        assert_eq!(done + busy, 3 * PASSWORD_WAITERS_MAX);
    }
}
