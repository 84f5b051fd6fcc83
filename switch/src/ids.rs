//! Transaction ids: PostgreSQL hands out blocks of `ID_BLOCK` from a sequence, so ids are
//! unique across instances and restarts without a database round trip per request.

use deadpool_postgres::Pool;
use tokio::sync::Mutex;

use crate::db::DbError;

/// Must equal the sequence's INCREMENT BY in migrations/V1__initial.sql.
pub const ID_BLOCK: i64 = 1000;

/// RRNs are 12 digits: the transaction id modulo 10^12, unique until a trillion
/// transactions have been made.
pub const RRN_MODULUS: i64 = 1_000_000_000_000;

#[derive(Debug)]
pub struct Ids {
    pool: Pool,
    block: Mutex<(i64, i64)>,
}

impl Ids {
    pub fn new(pool: Pool) -> Ids {
        Ids {
            pool,
            block: Mutex::new((0, 0)),
        }
    }

    pub async fn next(&self) -> Result<i64, DbError> {
        let mut b = self.block.lock().await;
        if b.0 >= b.1 {
            let client = self.pool.get().await?;
            let row = client
                .query_one("SELECT nextval('transaction_id_seq')", &[])
                .await?;
            let start: i64 = row.get(0);
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
