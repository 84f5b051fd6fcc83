//! Merchants: records in PostgreSQL, held in memory (MAC keys opened once) and swapped
//! whole on reload, so the request path reads them without locks.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use codec::MacKey;
use deadpool_postgres::Pool;

use crate::crypto::{Purpose, Vault};
use crate::db::DbError;

/// One merchant, as the request path needs it.
#[derive(Debug, Clone)]
pub struct Merchant {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    /// ISO 4217 numeric codes the merchant may charge in.
    pub currencies: Vec<u16>,
    pub per_txn_limit_minor: u64,
    pub rate_per_s: u32,
    pub rate_burst: u32,
    pub mac_key: MacKey,
}

/// What `merchant add` needs.
#[derive(Debug, Clone)]
pub struct NewMerchant {
    pub id: String,
    pub name: String,
    pub currencies: Vec<u16>,
    pub per_txn_limit_minor: u64,
    pub rate_per_s: u32,
    pub rate_burst: u32,
}

/// Longest merchant id (DE42 is ans15).
pub const MERCHANT_ID_MAX_LEN: usize = 15;

/// The in-memory merchant table.
#[derive(Debug, Default)]
pub struct Merchants {
    table: ArcSwap<HashMap<String, Arc<Merchant>>>,
}

impl Merchants {
    /// The merchant named by a DE42 value (space padding ignored).
    pub fn get(&self, de42: &[u8]) -> Option<Arc<Merchant>> {
        let id = std::str::from_utf8(de42).ok()?.trim_end();
        self.table.load().get(id).cloned()
    }

    pub fn replace(&self, all: HashMap<String, Arc<Merchant>>) {
        self.table.store(Arc::new(all));
    }

    pub fn len(&self) -> usize {
        self.table.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads every merchant, opening MAC keys; a key that does not open is an error
    /// (the master key is wrong), not a merchant to skip silently.
    pub async fn reload(&self, pool: &Pool, vault: &Vault) -> Result<usize, DbError> {
        let all = load_all(pool, vault).await?;
        let n = all.len();
        self.replace(
            all.into_iter()
                .map(|m| (m.id.clone(), Arc::new(m)))
                .collect(),
        );
        Ok(n)
    }
}

pub async fn load_all(pool: &Pool, vault: &Vault) -> Result<Vec<Merchant>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, name, enabled, currencies, per_txn_limit_minor, rate_per_s, rate_burst, mac_key_enc \
             FROM merchants ORDER BY id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let id: String = r.get(0);
            let sealed: Vec<u8> = r.get(7);
            let key = vault
                .open(Purpose::MacKey, &sealed)
                .map_err(|_| DbError::Key(id.clone()))?;
            let key: [u8; 32] = key.try_into().map_err(|_| DbError::Key(id.clone()))?;
            let currencies: Vec<i16> = r.get(3);
            Ok(Merchant {
                id,
                name: r.get(1),
                enabled: r.get(2),
                currencies: currencies.into_iter().map(|c| c as u16).collect(),
                per_txn_limit_minor: r.get::<_, i64>(4) as u64,
                rate_per_s: r.get::<_, i32>(5) as u32,
                rate_burst: r.get::<_, i32>(6) as u32,
                mac_key: MacKey::new(&key),
            })
        })
        .collect()
}

/// Creates a merchant with a fresh MAC key and returns the key (shown once, in hex).
pub async fn add(pool: &Pool, vault: &Vault, m: &NewMerchant) -> Result<[u8; 32], DbError> {
    if m.id.is_empty()
        || m.id.len() > MERCHANT_ID_MAX_LEN
        || !m.id.bytes().all(|c| (0x21..=0x7E).contains(&c))
    {
        return Err(DbError::Invalid(format!(
            "merchant id must be 1..={MERCHANT_ID_MAX_LEN} printable characters without spaces"
        )));
    }
    if m.currencies.is_empty()
        || m.currencies
            .iter()
            .any(|c| codec::currency::exponent(*c).is_none())
    {
        return Err(DbError::Invalid(
            "currencies must be known ISO 4217 numeric codes".into(),
        ));
    }
    let key = vault
        .random_key()
        .map_err(|e| DbError::Invalid(e.to_string()))?;
    let sealed = vault
        .seal(Purpose::MacKey, &key)
        .map_err(|e| DbError::Invalid(e.to_string()))?;
    let currencies: Vec<i16> = m.currencies.iter().map(|c| *c as i16).collect();
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO merchants (id, name, currencies, per_txn_limit_minor, rate_per_s, rate_burst, mac_key_enc) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &m.id,
                &m.name,
                &currencies,
                &(m.per_txn_limit_minor as i64),
                &(m.rate_per_s as i32),
                &(m.rate_burst as i32),
                &sealed,
            ],
        )
        .await?;
    Ok(key)
}

/// Enables or disables a merchant; false if there is no such merchant.
pub async fn set_enabled(pool: &Pool, id: &str, enabled: bool) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE merchants SET enabled = $2, updated_at = now() WHERE id = $1",
            &[&id, &enabled],
        )
        .await?;
    Ok(n == 1)
}
