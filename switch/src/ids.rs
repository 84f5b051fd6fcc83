//! Transaction ids: PostgreSQL hands out blocks of `ID_BLOCK` from a sequence, so ids are
//! unique across instances and restarts without a database round trip per request.

use std::sync::Arc;

use tokio::sync::Mutex;

use crate::store::{Store, StoreError};

// The RRN is the id, a rule of the store's (a CHECK); the old paths stay for callers.
pub use crate::store::{RRN_MODULUS, id_of_rrn, rrn_of};

/// Must equal the sequence's INCREMENT BY in migrations/V1__initial.sql.
pub const ID_BLOCK: i64 = 1000;

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
