//! Back-office accounts, sessions, API keys, second factor and the audit log (the
//! tables of `V11__back_office.sql`). The rules (what counts as locked, expired, a valid
//! code) are in [`crate::accounts`]; this module only reads and writes.

use std::time::SystemTime;

use admin_http::Role;
use admin_http::v1::{AuditEntry, AuditQuery};
use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::StoreError;

/// Most audit records one search returns.
pub const AUDIT_PAGE_MAX: u32 = 500;
/// Audit records a search returns when it does not say.
pub const AUDIT_PAGE_DEFAULT: u32 = 100;

/// An account as stored.
#[derive(Debug, Clone)]
pub struct AccountRow {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub merchant_id: Option<String>,
    pub password_hash: String,
    /// Sealed by the vault ([`crate::crypto::Purpose::TotpSecret`]).
    pub totp_secret: Option<Vec<u8>>,
    pub totp_enabled: bool,
    pub totp_last_step: Option<u64>,
    pub locked_until: Option<SystemTime>,
    /// `locked_until` as RFC 3339 UTC.
    pub locked_until_text: Option<String>,
    pub disabled: bool,
    /// Set by an administrator: the owner changes it at first use (PCI DSS 8.3.5).
    pub password_change_required: bool,
}

/// What a live session or API key stands for.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The account's username, or `apikey:NAME/CREATOR` (a username has no `/`, so the
    /// creator's username is what follows the last one).
    pub actor: String,
    pub role: Role,
    pub merchant_id: Option<String>,
    /// The session passed its second factor (or needs none) and its account's password
    /// needs no change: false limits it to setting the account up.
    pub mfa_done: bool,
}

/// An audit record to append.
#[derive(Debug, Clone)]
pub struct AuditRecord<'a> {
    pub actor: &'a str,
    pub actor_role: Option<Role>,
    pub source_addr: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    /// `ok`, `refused`, `failed`...
    pub outcome: &'a str,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// Why an account could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("username taken")]
    Taken,
    #[error("unknown merchant")]
    UnknownMerchant,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The accounts' SQL, over the pool.
#[derive(Debug, Clone)]
pub struct AccountStore {
    pool: Pool,
}

const ACCOUNT_COLUMNS: &str = "id, username, role, merchant_id, password_hash, totp_secret, \
     totp_enabled, totp_last_step, locked_until, disabled, \
     to_char(locked_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
     password_change_required";

/// An RFC 3339 UTC rendering of a `timestamptz` column, in SQL.
macro_rules! utc_text {
    ($col:literal) => {
        concat!(
            "to_char(",
            $col,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
        )
    };
}

fn role_of(text: &str) -> Role {
    // The table's CHECK allows only the names Role knows.
    Role::parse(text).unwrap_or(Role::Merchant)
}

fn account_of(r: &Row) -> AccountRow {
    AccountRow {
        id: r.get(0),
        username: r.get(1),
        role: role_of(r.get(2)),
        merchant_id: r.get(3),
        password_hash: r.get(4),
        totp_secret: r.get(5),
        totp_enabled: r.get(6),
        totp_last_step: r.get::<_, Option<i64>>(7).map(|s| s as u64),
        locked_until: r.get(8),
        disabled: r.get(9),
        locked_until_text: r.get(10),
        password_change_required: r.get(11),
    }
}

impl AccountStore {
    pub fn new(pool: Pool) -> AccountStore {
        AccountStore { pool }
    }

    /// Creates an account; its id. `change_required`: its owner must change the password
    /// at first use (it was set by someone else).
    pub async fn insert(
        &self,
        username: &str,
        role: Role,
        merchant_id: Option<&str>,
        password_hash: &str,
        change_required: bool,
    ) -> Result<i64, CreateError> {
        let c = self.pool.get().await.map_err(StoreError::from)?;
        let r = c
            .query_one(
                "INSERT INTO accounts (username, role, merchant_id, password_hash,
                   password_change_required)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[
                    &username,
                    &role.as_str(),
                    &merchant_id,
                    &password_hash,
                    &change_required,
                ],
            )
            .await;
        match r {
            Ok(row) => Ok(row.get(0)),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(CreateError::Taken),
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                Err(CreateError::UnknownMerchant)
            }
            Err(e) => Err(CreateError::Store(e.into())),
        }
    }

    pub async fn by_username(&self, username: &str) -> Result<Option<AccountRow>, StoreError> {
        let c = self.pool.get().await?;
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE username = $1");
        Ok(c.query_opt(&sql, &[&username])
            .await?
            .map(|r| account_of(&r)))
    }

    pub async fn all(&self) -> Result<Vec<AccountRow>, StoreError> {
        let c = self.pool.get().await?;
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY username");
        Ok(c.query(&sql, &[]).await?.iter().map(account_of).collect())
    }

    /// Records a failed login; how many failures the account has at or after
    /// `window_start` (this one included).
    pub async fn record_failure(
        &self,
        account_id: i64,
        at: SystemTime,
        source: &str,
        window_start: SystemTime,
    ) -> Result<u32, StoreError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO login_failures (account_id, at, source_addr) VALUES ($1, $2, $3)",
            &[&account_id, &at, &source],
        )
        .await?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM login_failures WHERE account_id = $1 AND at >= $2",
                &[&account_id, &window_start],
            )
            .await?
            .get(0);
        Ok(n as u32)
    }

    /// Sets or lifts (`None`) a lock; lifting also forgets the failures that led to it.
    pub async fn set_lock(
        &self,
        account_id: i64,
        until: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "UPDATE accounts SET locked_until = $2 WHERE id = $1",
            &[&account_id, &until],
        )
        .await?;
        if until.is_none() {
            tx.execute(
                "DELETE FROM login_failures WHERE account_id = $1",
                &[&account_id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a successful login's address. Returns the addresses of earlier logins the
    /// account has not been shown yet (now marked shown), and whether `source` is new
    /// for an account that had logged in before (the first address ever is not news).
    pub async fn note_address(
        &self,
        account_id: i64,
        source: &str,
        now: SystemTime,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let unshown: Vec<String> = tx
            .query(
                "UPDATE login_addresses SET shown = TRUE WHERE account_id = $1 AND NOT shown
                 RETURNING source_addr",
                &[&account_id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let known: i64 = tx
            .query_one(
                "SELECT count(*) FROM login_addresses WHERE account_id = $1",
                &[&account_id],
            )
            .await?
            .get(0);
        let inserted = tx
            .execute(
                "INSERT INTO login_addresses (account_id, source_addr, first_seen_at, shown)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&account_id, &source, &now, &(known == 0)],
            )
            .await?;
        tx.commit().await?;
        Ok((unshown, inserted == 1 && known > 0))
    }

    /// Accepts TOTP step `step` once: false when it (or a later one) was used already.
    pub async fn use_totp_step(&self, account_id: i64, step: u64) -> Result<bool, StoreError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE accounts SET totp_last_step = $2
                 WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
                &[&account_id, &(step as i64)],
            )
            .await?;
        Ok(n == 1)
    }

    /// Uses a recovery code (by hash) once; false when unknown or used.
    pub async fn use_recovery_code(
        &self,
        account_id: i64,
        code_hash: &[u8],
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE recovery_codes SET used_at = $3
                 WHERE account_id = $1 AND code_hash = $2 AND used_at IS NULL",
                &[&account_id, &code_hash, &now],
            )
            .await?;
        Ok(n == 1)
    }

    /// Stores a new (not yet confirmed) TOTP secret, sealed.
    pub async fn set_totp_secret(&self, account_id: i64, sealed: &[u8]) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        c.execute(
            "UPDATE accounts SET totp_secret = $2, totp_enabled = FALSE WHERE id = $1",
            &[&account_id, &sealed],
        )
        .await?;
        Ok(())
    }

    /// Confirms enrolment: TOTP on, `step` used, the recovery codes replaced, and the
    /// session `token_hash` second-factored.
    pub async fn enable_totp(
        &self,
        account_id: i64,
        step: u64,
        code_hashes: &[Vec<u8>],
        token_hash: &[u8],
    ) -> Result<(), StoreError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "UPDATE accounts SET totp_enabled = TRUE, totp_last_step = $2 WHERE id = $1",
            &[&account_id, &(step as i64)],
        )
        .await?;
        tx.execute(
            "DELETE FROM recovery_codes WHERE account_id = $1",
            &[&account_id],
        )
        .await?;
        for h in code_hashes {
            tx.execute(
                "INSERT INTO recovery_codes (account_id, code_hash) VALUES ($1, $2)",
                &[&account_id, h],
            )
            .await?;
        }
        tx.execute(
            "UPDATE account_sessions SET mfa_done = TRUE WHERE token_hash = $1",
            &[&token_hash],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the password hash (chosen by the owner: no change is required any more)
    /// and revokes every session of the account but `keep`.
    pub async fn set_password(
        &self,
        account_id: i64,
        hash: &str,
        keep: Option<&[u8]>,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "UPDATE accounts SET password_hash = $2, password_change_required = false
             WHERE id = $1",
            &[&account_id, &hash],
        )
        .await?;
        tx.execute(
            "UPDATE account_sessions SET revoked_at = $3 WHERE account_id = $1
             AND revoked_at IS NULL AND token_hash IS DISTINCT FROM $2",
            &[&account_id, &keep, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn open_session(
        &self,
        token_hash: &[u8],
        account_id: i64,
        now: SystemTime,
        mfa_done: bool,
        source: &str,
    ) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO account_sessions (token_hash, account_id, created_at, last_seen_at,
               mfa_done, source_addr) VALUES ($1, $2, $3, $3, $4, $5)",
            &[&token_hash, &account_id, &now, &mfa_done, &source],
        )
        .await?;
        Ok(())
    }

    /// The holder of a live session (not revoked, used at or after `cutoff`, its account
    /// enabled), marking it used at `now`.
    pub async fn touch_session(
        &self,
        token_hash: &[u8],
        cutoff: SystemTime,
        now: SystemTime,
    ) -> Result<Option<Holder>, StoreError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "UPDATE account_sessions s SET last_seen_at = $3 FROM accounts a
                 WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.last_seen_at >= $2
                   AND a.id = s.account_id AND NOT a.disabled
                 RETURNING a.username, a.role, a.merchant_id,
                   s.mfa_done AND NOT a.password_change_required",
                &[&token_hash, &cutoff, &now],
            )
            .await?;
        Ok(row.map(|r| Holder {
            actor: r.get(0),
            role: role_of(r.get(1)),
            merchant_id: r.get(2),
            mfa_done: r.get(3),
        }))
    }

    pub async fn revoke_session(
        &self,
        token_hash: &[u8],
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        c.execute(
            "UPDATE account_sessions SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL",
            &[&token_hash, &now],
        )
        .await?;
        Ok(())
    }

    /// Stores a one-time password reset token for an account, revoking its sessions; the
    /// expiry as RFC 3339 UTC.
    pub async fn insert_reset(
        &self,
        token_hash: &[u8],
        account_id: i64,
        created_by: &str,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> Result<String, StoreError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let row = tx
            .query_one(
                concat!(
                    "INSERT INTO password_resets (token_hash, account_id, created_by, created_at,
                   expires_at) VALUES ($1, $2, $3, $4, $5) RETURNING ",
                    utc_text!("expires_at")
                ),
                &[&token_hash, &account_id, &created_by, &now, &expires_at],
            )
            .await?;
        tx.execute(
            "UPDATE account_sessions SET revoked_at = $2 WHERE account_id = $1 AND revoked_at IS NULL",
            &[&account_id, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(row.get(0))
    }

    /// Uses a reset token once: the account it was for, if unused and not expired at
    /// `now` (it is then used).
    pub async fn use_reset(
        &self,
        token_hash: &[u8],
        now: SystemTime,
    ) -> Result<Option<AccountRow>, StoreError> {
        let c = self.pool.get().await?;
        let sql = format!(
            "WITH used AS (UPDATE password_resets SET used_at = $2
               WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING account_id)
             SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = (SELECT account_id FROM used)"
        );
        Ok(c.query_opt(&sql, &[&token_hash, &now])
            .await?
            .map(|r| account_of(&r)))
    }

    /// Stores an API key; its id and expiry (RFC 3339 UTC).
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_api_key(
        &self,
        name: &str,
        key_hash: &[u8],
        role: Role,
        merchant_id: Option<&str>,
        created_by: i64,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> Result<(i64, String), CreateError> {
        let c = self.pool.get().await.map_err(StoreError::from)?;
        let r = c
            .query_one(
                concat!("INSERT INTO api_keys (name, key_hash, role, merchant_id, created_by, created_at,
                   expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, ", utc_text!("expires_at")),
                &[&name, &key_hash, &role.as_str(), &merchant_id, &created_by, &now, &expires_at],
            )
            .await;
        match r {
            Ok(row) => Ok((row.get(0), row.get(1))),
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                Err(CreateError::UnknownMerchant)
            }
            Err(e) => Err(CreateError::Store(e.into())),
        }
    }

    /// The holder of an API key that is neither revoked nor expired at `now`, and whose
    /// creator's account is not disabled.
    pub async fn api_key(
        &self,
        key_hash: &[u8],
        now: SystemTime,
    ) -> Result<Option<Holder>, StoreError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT k.name, k.role, k.merchant_id, a.username FROM api_keys k
                 JOIN accounts a ON a.id = k.created_by
                 WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND k.expires_at > $2
                   AND NOT a.disabled",
                &[&key_hash, &now],
            )
            .await?;
        Ok(row.map(|r| Holder {
            // The creator is part of the actor so that maker-checker can tell the person
            // behind a key ([`crate::refund_desk::person_of`]) and same-named keys apart.
            actor: format!("apikey:{}/{}", r.get::<_, String>(0), r.get::<_, String>(3)),
            role: role_of(r.get(1)),
            merchant_id: r.get(2),
            mfa_done: true,
        }))
    }

    /// Appends to the audit log.
    pub async fn audit(&self, rec: &AuditRecord<'_>, at: SystemTime) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO audit_log (at, actor, actor_role, source_addr, action, target, outcome,
               before, after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &at,
                &rec.actor,
                &rec.actor_role.map(Role::as_str),
                &rec.source_addr,
                &rec.action,
                &rec.target,
                &rec.outcome,
                &rec.before,
                &rec.after,
            ],
        )
        .await?;
        Ok(())
    }

    /// Audit records matching `q`, newest first, at most `q.limit` (capped at
    /// [`AUDIT_PAGE_MAX`]).
    pub async fn search_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let c = self.pool.get().await?;
        let limit = i64::from(
            q.limit
                .unwrap_or(AUDIT_PAGE_DEFAULT)
                .clamp(1, AUDIT_PAGE_MAX),
        );
        let rows = c
            .query(
                concat!(
                    "SELECT id, ",
                    utc_text!("at"),
                    ",
                   actor, actor_role, source_addr, action, target, outcome, before, after
                 FROM audit_log
                 WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2)
                   AND ($3::text IS NULL OR target = $3) AND ($4::bigint IS NULL OR id < $4)
                 ORDER BY id DESC LIMIT $5"
                ),
                &[&q.actor, &q.action, &q.target, &q.before_id, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at: r.get(1),
                actor: r.get(2),
                actor_role: r.get(3),
                source_addr: r.get(4),
                action: r.get(5),
                target: r.get(6),
                outcome: r.get(7),
                before: r.get(8),
                after: r.get(9),
            })
            .collect())
    }
}
