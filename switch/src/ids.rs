//! Transaction ids: PostgreSQL hands out blocks of `ID_BLOCK` from a sequence, so ids are
//! unique across instances and restarts without a database round trip per request.

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::store::{Store, StoreError};

/// Must equal the sequence's INCREMENT BY in migrations/V1__initial.sql.
pub const ID_BLOCK: i64 = 1000;

/// RRNs are 12 digits: the transaction id modulo 10^12, unique until a trillion
/// transactions have been made.
pub const RRN_MODULUS: i64 = 1_000_000_000_000;

/// Hands out transaction ids from blocks the store reserves.
#[derive(Debug)]
pub struct Ids {
    store: Arc<dyn Store>,
    /// The next id and the end of the current block (exclusive).
    block: Mutex<(i64, i64)>,
}

impl Ids {
    pub fn new(store: Arc<dyn Store>) -> Ids {
        Ids {
            store,
            block: Mutex::new((0, 0)),
        }
    }

    /// A fresh id; the store is asked only when a block of [`ID_BLOCK`] is used up.
    pub async fn next(&self) -> Result<i64, StoreError> {
        let mut b = self.block.lock().await;
        if b.0 >= b.1 {
            let start = self.store.id_block().await?;
            *b = (start, start + ID_BLOCK);
        }
        let id = b.0;
        b.0 += 1;
        Ok(id)
    }
}

/// The RRN (DE37) of a transaction: its id in 12 digits. Ids stay below
/// [`RRN_MODULUS`] (a CHECK in migrations/V7), so RRNs are as unique as ids.
pub fn rrn_of(id: i64) -> String {
    format!("{:012}", id.rem_euclid(RRN_MODULUS))
}

/// The transaction id an RRN names: the inverse of [`rrn_of`]; -1 (no transaction) for a
/// value that is not 12 digits.
pub fn id_of_rrn(rrn: &str) -> i64 {
    if rrn.len() != 12 || !rrn.bytes().all(|b| b.is_ascii_digit()) {
        return -1;
    }
    rrn.parse().unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves id_of_rrn inverts rrn_of and refuses what is not a 12-digit RRN.
    #[test]
    fn rrn_round_trip() {
        for id in [0, 7, 1_000, 123_456_789_012, RRN_MODULUS - 1] {
            assert_eq!(id_of_rrn(&rrn_of(id)), id);
        }
        for bad in [
            "",
            "12345678901",
            "1234567890123",
            "12345678901x",
            "-12345678901",
        ] {
            assert_eq!(id_of_rrn(bad), -1, "{bad}");
        }
    }
}
