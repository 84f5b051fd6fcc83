//! The back office's operations beyond accounts and refunds (issue 12), each audited:
//! captures and voids through the refund desk, the store-and-forward queue (view, retry
//! now, discard with a reason), API keys listed and revoked, accounts disabled and
//! enabled. The SQL is in [`crate::store::operations`]; the routes in [`admin_http::ops`].

use std::future::Future;
use std::time::SystemTime;

use admin_http::ops::{ApiKeyView, Discard, Operations, SafItem, SafPage, SafQuery, VoidAsk};
use admin_http::refunds::{RefundAsk, RefundRequestView};
use admin_http::v1::{AccountView, Principal};
use admin_http::{AdminError, Role};
use serde_json::json;

use crate::admin::SwitchAdmin;
use crate::backoffice::{BackOffice, may_grant, unavailable};
use crate::refund_desk::{Ask, Operation};
use crate::store::StoreError;
use crate::store::operations as sql;

/// Longest discard reason accepted.
pub(crate) const DISCARD_REASON_MAX_LEN: usize = 255;

/// Checks a discard's reason: 1 to [`DISCARD_REASON_MAX_LEN`] characters, not blank.
pub(crate) fn check_discard(d: &Discard) -> Result<(), AdminError> {
    let r = d.reason.trim();
    if r.is_empty() || r.len() > DISCARD_REASON_MAX_LEN {
        return Err(AdminError::Invalid(format!(
            "a reason of 1 to {DISCARD_REASON_MAX_LEN} characters is required"
        )));
    }
    Ok(())
}

/// Why `who` may not disable or enable the account `target` (of role `role`), if so: only
/// roles the caller may grant ([`may_grant`]), and never one's own account.
pub(crate) fn switch_refusal(who: &Principal, target: &str, role: Role) -> Option<AdminError> {
    if who.actor == target {
        return Some(AdminError::Forbidden(
            "an account may not disable or enable itself".into(),
        ));
    }
    if !may_grant(who.role, role) {
        return Some(AdminError::Forbidden(format!(
            "role {} may not change an account of role {}",
            who.role.as_str(),
            role.as_str()
        )));
    }
    None
}

impl BackOffice {
    async fn saf_item(&self, id: i64) -> Result<SafItem, AdminError> {
        sql::saf_item_by_id(&self.pool, id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| AdminError::NotFound(format!("queued message {id}")))
    }

    pub async fn saf_page(&self, q: SafQuery) -> Result<SafPage, AdminError> {
        let items = sql::saf_page(&self.pool, &q).await.map_err(unavailable)?;
        let limit = q
            .limit
            .unwrap_or(sql::SAF_PAGE_DEFAULT)
            .clamp(1, sql::SAF_PAGE_MAX);
        let next_before_id = (items.len() == limit as usize)
            .then(|| items.last().map(|e| e.id))
            .flatten();
        Ok(SafPage {
            items,
            next_before_id,
        })
    }

    /// Applies a change to queued message `id` (`act` answers false when the message is
    /// neither pending nor expired: 409) and audits it as `action` with the message before
    /// and after.
    async fn saf_change<Fut>(
        &self,
        who: &Principal,
        id: i64,
        action: &str,
        act: impl FnOnce() -> Fut,
    ) -> Result<SafItem, AdminError>
    where
        Fut: Future<Output = Result<bool, StoreError>>,
    {
        let before = self.saf_item(id).await?;
        if !act().await.map_err(unavailable)? {
            return Err(AdminError::Conflict(format!("message is {}", before.state)));
        }
        let after = self.saf_item(id).await?;
        let target = id.to_string();
        self.audit(Self::change(who, action, &target, &before, &after))
            .await?;
        Ok(after)
    }

    /// Makes a pending or expired message due now; the reversal workers pick it up at
    /// their next poll.
    pub async fn saf_retry(&self, who: &Principal, id: i64) -> Result<SafItem, AdminError> {
        self.saf_change(who, id, "saf.retry", || sql::saf_retry(&self.pool, id))
            .await
    }

    /// Stops repeating a pending or expired message; the reason is kept with it.
    pub async fn saf_discard(
        &self,
        who: &Principal,
        id: i64,
        d: Discard,
    ) -> Result<SafItem, AdminError> {
        check_discard(&d)?;
        let reason = d.reason.trim();
        let by = who.actor.as_str();
        let after = self
            .saf_change(who, id, "saf.discard", || {
                sql::saf_discard(&self.pool, id, by, reason)
            })
            .await?;
        tracing::warn!(
            message = id,
            by,
            reason,
            "store-and-forward message discarded"
        );
        Ok(after)
    }

    /// Revokes an API key of a role the caller may grant.
    pub async fn revoke_api_key(&self, who: &Principal, id: i64) -> Result<ApiKeyView, AdminError> {
        let key =
            |k: Option<ApiKeyView>| k.ok_or_else(|| AdminError::NotFound(format!("key {id}")));
        let before = key(sql::api_key_by_id(&self.pool, id)
            .await
            .map_err(unavailable)?)?;
        if !may_grant(who.role, before.role) {
            return Err(AdminError::Forbidden(
                "may not revoke a key of that role".into(),
            ));
        }
        let now = SystemTime::now();
        if !sql::revoke_api_key(&self.pool, id, now)
            .await
            .map_err(unavailable)?
        {
            return Err(AdminError::Conflict("key already revoked".into()));
        }
        let after = key(sql::api_key_by_id(&self.pool, id)
            .await
            .map_err(unavailable)?)?;
        let target = format!("{id}:{}", before.name);
        self.audit(Self::change(who, "apikey.revoke", &target, &before, &after))
            .await?;
        Ok(after)
    }

    /// Disables (its sessions and API keys stop at once) or enables an account.
    pub async fn set_account_disabled(
        &self,
        who: &Principal,
        username: &str,
        disabled: bool,
    ) -> Result<AccountView, AdminError> {
        let acct = self
            .store
            .by_username(username)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| AdminError::NotFound(format!("account {username}")))?;
        if let Some(why) = switch_refusal(who, username, acct.role) {
            return Err(why);
        }
        sql::set_account_disabled(&self.pool, acct.id, disabled, SystemTime::now())
            .await
            .map_err(unavailable)?;
        let action = if disabled {
            "account.disable"
        } else {
            "account.enable"
        };
        let rec = Self::change(
            who,
            action,
            username,
            json!({ "disabled": acct.disabled }),
            json!({ "disabled": disabled }),
        );
        self.audit(rec).await?;
        let after = self
            .store
            .by_username(username)
            .await
            .map_err(unavailable)?;
        Ok(AccountView {
            username: acct.username.clone(),
            role: acct.role,
            merchant_id: acct.merchant_id.clone(),
            totp_enabled: acct.totp_enabled,
            disabled: after.is_some_and(|a| a.disabled),
            locked_until: acct.locked_until_text.clone(),
        })
    }
}

impl Operations for SwitchAdmin {
    async fn request_capture(
        &self,
        who: &Principal,
        rrn: &str,
        ask: RefundAsk,
    ) -> Result<RefundRequestView, AdminError> {
        let ask = Ask::of(Operation::Capture, &ask);
        self.backoffice.request_operation(who, rrn, ask).await
    }

    async fn request_void(
        &self,
        who: &Principal,
        rrn: &str,
        ask: VoidAsk,
    ) -> Result<RefundRequestView, AdminError> {
        let ask = Ask {
            op: Operation::Void,
            amount_minor: None,
            reason: &ask.reason,
            idempotency_key: &ask.idempotency_key,
        };
        self.backoffice.request_operation(who, rrn, ask).await
    }

    async fn saf(&self, q: SafQuery) -> Result<SafPage, AdminError> {
        self.backoffice.saf_page(q).await
    }

    async fn saf_retry(&self, who: &Principal, id: i64) -> Result<SafItem, AdminError> {
        self.backoffice.saf_retry(who, id).await
    }

    async fn saf_discard(
        &self,
        who: &Principal,
        id: i64,
        body: Discard,
    ) -> Result<SafItem, AdminError> {
        self.backoffice.saf_discard(who, id, body).await
    }

    async fn api_keys(&self) -> Result<Vec<ApiKeyView>, AdminError> {
        sql::api_keys(&self.backoffice.pool)
            .await
            .map_err(unavailable)
    }

    async fn revoke_api_key(&self, who: &Principal, id: i64) -> Result<ApiKeyView, AdminError> {
        self.backoffice.revoke_api_key(who, id).await
    }

    async fn set_account_disabled(
        &self,
        who: &Principal,
        username: &str,
        disabled: bool,
    ) -> Result<AccountView, AdminError> {
        self.backoffice
            .set_account_disabled(who, username, disabled)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(actor: &str, role: Role) -> Principal {
        Principal {
            actor: actor.into(),
            role,
            merchant_id: None,
            mfa_done: true,
            source: "127.0.0.1".into(),
        }
    }

    // Proves nobody switches their own account, admins only lower roles, superadmins any.
    #[test]
    fn who_may_switch_accounts() {
        let admin = principal("ann", Role::Admin);
        assert!(switch_refusal(&admin, "ann", Role::Viewer).is_some());
        assert!(switch_refusal(&admin, "bob", Role::Approver).is_none());
        assert!(switch_refusal(&admin, "bob", Role::Admin).is_some());
        let root = principal("root", Role::Superadmin);
        assert!(switch_refusal(&root, "ann", Role::Superadmin).is_none());
    }

    // Proves a discard needs a reason that is neither blank nor too long.
    #[test]
    fn discard_needs_a_reason() {
        let d = |r: &str| Discard { reason: r.into() };
        assert!(check_discard(&d("settled by phone with the bank")).is_ok());
        assert!(check_discard(&d("   ")).is_err());
        assert!(check_discard(&d(&"x".repeat(256))).is_err());
    }
}
