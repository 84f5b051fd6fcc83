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

pub fn rrn_of(id: i64) -> String {
    format!("{:012}", id.rem_euclid(RRN_MODULUS))
}
