//! The double-entry ledger: balances, per-day totals, settlement, and the invariants
//! `switchyard ledger check` verifies.
//!
//! Accounts: `bank:<id>` (what the bank owes: debits positive) and `merchant:<id>` (what
//! is owed to the merchant: credits negative). A purchase or completion posts +amount to
//! its bank and -amount to its merchant, a refund the opposite, a reversal the negation
//! of what it undoes. The invariants are checked by queries the store owns
//! ([`Store::ledger_violations`]); postings are made by the store too, each on the
//! business day its one rule gives (UTC minus `switch.business_day_cutover_hour`).

use crate::store::{Store, StoreError};

// The store's reports; their old paths stay for callers.
pub use crate::store::{Total, Violation};

/// Checks every invariant; the violations found (empty when the ledger is sound), at
/// most ten per rule.
pub async fn check(store: &dyn Store) -> Result<Vec<Violation>, StoreError> {
    store.ledger_violations().await
}

/// Totals per business day, account and currency (the settlement report), optionally
/// for one day (YYYY-MM-DD).
pub async fn totals(store: &dyn Store, day: Option<&str>) -> Result<Vec<Total>, StoreError> {
    store.ledger_totals(day).await
}

/// Totals as CSV (header line first).
pub fn to_csv(totals: &[Total]) -> String {
    let mut s = String::from("business_day,account,currency,postings,amount_minor\n");
    for t in totals {
        s.push_str(&format!(
            "{},{},{},{},{}\n",
            t.business_day, t.account, t.currency, t.postings, t.amount_minor
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the CSV form has a header and one line per total.
    #[test]
    fn csv() {
        let t = Total {
            business_day: "2026-11-26".into(),
            account: "bank:a".into(),
            currency: 840,
            postings: 2,
            amount_minor: 1500,
        };
        assert_eq!(
            to_csv(&[t]),
            "business_day,account,currency,postings,amount_minor\n2026-11-26,bank:a,840,2,1500\n"
        );
    }
}
