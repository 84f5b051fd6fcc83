//! The back office's reference data and operations (issue 12): BIN routes through the
//! one owner of route changes ([`RouteBook`]), link sign-on and sign-off, settlement
//! totals per business day and ledger balances. Every change is recorded in the audit
//! log with its before and after values.

use admin_http::reference::{Balance, RouteBody, RouteView, SettlementLine, SettlementReport};
use admin_http::v1::Principal;
use admin_http::{AdminError, LinkView, Role};
use serde_json::json;

use crate::backoffice::{BackOffice, unavailable};
use crate::routing::{Route, RouteBook, RouteChangeError, StoredRoute};
use crate::store::ledger_reads::{self, AccountSum};

/// A route as the API shows it.
pub fn route_view(s: StoredRoute) -> RouteView {
    RouteView {
        id: s.id,
        low: s.route.low,
        high: s.route.high,
        bank_id: s.route.bank_id,
        priority: s.route.priority,
    }
}

fn route_of(b: RouteBody) -> Route {
    Route {
        low: b.low,
        high: b.high,
        bank_id: b.bank_id,
        priority: b.priority,
    }
}

fn route_problem(e: RouteChangeError) -> AdminError {
    match e {
        RouteChangeError::NotFound(id) => AdminError::NotFound(format!("no route {id}")),
        RouteChangeError::UnknownBank(_)
        | RouteChangeError::Invalid(_)
        | RouteChangeError::Duplicate { .. } => AdminError::Invalid(e.to_string()),
        RouteChangeError::Db(crate::db::DbError::Invalid(w)) => AdminError::Invalid(w),
        RouteChangeError::Db(e) => unavailable(e.into()),
    }
}

/// The principal of the command line (`switchyard route ...`), for the audit log.
pub fn cli_principal() -> Principal {
    Principal {
        actor: "cli".into(),
        role: Role::Superadmin,
        merchant_id: None,
        mfa_done: true,
        source: std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
    }
}

/// `bank:a` as (`bank`, `a`); an account without a kind as (`other`, itself).
fn party(account: &str) -> (String, String) {
    match account.split_once(':') {
        Some((kind, id)) => (kind.to_string(), id.to_string()),
        None => ("other".into(), account.to_string()),
    }
}

/// The ledger account a merchant user is confined to, `None` for operators.
fn own_account(who: &Principal) -> Option<String> {
    who.merchant_id.as_ref().map(|m| format!("merchant:{m}"))
}

impl BackOffice {
    pub async fn route_views(&self, book: &RouteBook) -> Result<Vec<RouteView>, AdminError> {
        let routes = book.list().await.map_err(|e| unavailable(e.into()))?;
        Ok(routes.into_iter().map(route_view).collect())
    }

    pub async fn add_route(
        &self,
        who: &Principal,
        book: &RouteBook,
        body: RouteBody,
    ) -> Result<RouteView, AdminError> {
        let added = route_view(book.add(route_of(body)).await.map_err(route_problem)?);
        let id = added.id.to_string();
        let rec = Self::change(who, "route.add", &id, None::<()>, &added);
        self.audit(rec).await?;
        Ok(added)
    }

    pub async fn change_route(
        &self,
        who: &Principal,
        book: &RouteBook,
        id: i64,
        body: RouteBody,
    ) -> Result<RouteView, AdminError> {
        let (before, after) = book
            .change(id, route_of(body))
            .await
            .map_err(route_problem)?;
        let (before, after) = (route_view(before), route_view(after));
        let target = id.to_string();
        let rec = Self::change(who, "route.change", &target, &before, &after);
        self.audit(rec).await?;
        Ok(after)
    }

    pub async fn remove_route(
        &self,
        who: &Principal,
        book: &RouteBook,
        id: i64,
    ) -> Result<RouteView, AdminError> {
        let removed = route_view(book.remove(id).await.map_err(route_problem)?);
        let target = id.to_string();
        let rec = Self::change(who, "route.remove", &target, &removed, None::<()>);
        self.audit(rec).await?;
        Ok(removed)
    }

    /// Records a sign-on or sign-off of a link, with its state before.
    pub async fn audit_link(
        &self,
        who: &Principal,
        before: &LinkView,
        signed_on: bool,
    ) -> Result<(), AdminError> {
        let action = if signed_on {
            "link.sign_on"
        } else {
            "link.sign_off"
        };
        let wanted = if signed_on { "signed on" } else { "signed off" };
        let rec = Self::change(
            who,
            action,
            &before.name,
            json!({ "state": before.state }),
            json!({ "state": wanted }),
        );
        self.audit(rec).await
    }

    /// Settlement totals of a business day, per party and currency.
    pub async fn settlement(
        &self,
        who: &Principal,
        day: &str,
    ) -> Result<SettlementReport, AdminError> {
        let own = own_account(who);
        let sums = ledger_reads::day_totals(&self.pool, day, own.as_deref())
            .await
            .map_err(unavailable)?;
        let lines = sums
            .into_iter()
            .map(|s: AccountSum| {
                let (party, party_id) = party(&s.account);
                SettlementLine {
                    party,
                    party_id,
                    currency: s.currency,
                    postings: s.postings,
                    amount_minor: s.amount_minor,
                }
            })
            .collect();
        Ok(SettlementReport {
            business_day: day.to_string(),
            lines,
        })
    }

    /// Every account's balance, per currency.
    pub async fn ledger_balances(&self, who: &Principal) -> Result<Vec<Balance>, AdminError> {
        let own = own_account(who);
        let sums = ledger_reads::balances(&self.pool, own.as_deref())
            .await
            .map_err(unavailable)?;
        Ok(sums
            .into_iter()
            .map(|s| {
                let (party, party_id) = party(&s.account);
                Balance {
                    party,
                    party_id,
                    currency: s.currency,
                    postings: s.postings,
                    balance_minor: s.amount_minor,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves ledger accounts split into their party kind and id, and merchant users are
    // confined to their own merchant's account.
    #[test]
    fn parties_and_scope() {
        assert_eq!(party("bank:a"), ("bank".into(), "a".into()));
        assert_eq!(party("merchant:M:1"), ("merchant".into(), "M:1".into()));
        assert_eq!(party("odd"), ("other".into(), "odd".into()));
        let mut p = cli_principal();
        assert_eq!(own_account(&p), None);
        p.merchant_id = Some("M1".into());
        assert_eq!(own_account(&p).as_deref(), Some("merchant:M1"));
    }
}
