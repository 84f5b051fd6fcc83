//! Merchants: records in PostgreSQL, held in memory (MAC keys opened once) and swapped
//! whole on reload, so the request path reads them without locks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use codec::{MacCheck, MacKey, Message};
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
    /// The key before the last rotation, while its overlap window lasts.
    pub previous_mac_key: Option<PreviousKey>,
}

/// A rotated-out MAC key and the end of its overlap window.
#[derive(Debug, Clone)]
pub struct PreviousKey {
    pub key: MacKey,
    pub until: SystemTime,
}

impl Merchant {
    /// A request's MAC checked against the current key and, when that fails, the previous
    /// key while `now` is before the end of its overlap window (issue 12: both keys verify
    /// during a rotation; answers use the current key).
    pub fn check_mac(&self, msg: &Message, now: SystemTime) -> MacCheck {
        let current = msg.check_mac(&self.mac_key);
        match &self.previous_mac_key {
            Some(p) if current == MacCheck::Invalid && now < p.until => msg.check_mac(&p.key),
            _ => current,
        }
    }
}

/// Longest overlap of a MAC key rotation: a week.
pub const ROTATION_OVERLAP_MAX_S: u64 = 7 * 24 * 3600;

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
            "SELECT id, name, enabled, currencies, per_txn_limit_minor, rate_per_s, rate_burst, mac_key_enc, \
             mac_key_prev_enc, mac_key_prev_until FROM merchants ORDER BY id",
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
            let previous_mac_key = previous_key(vault, &id, r.get(8), r.get(9))?;
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
                previous_mac_key,
            })
        })
        .collect()
}

/// Every merchant as the back office lists it (no key), by id.
pub async fn views(pool: &Pool) -> Result<Vec<admin_http::merchants::MerchantView>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT id, name, enabled, currencies, per_txn_limit_minor, rate_per_s, rate_burst,
               CASE WHEN mac_key_prev_until > now() THEN
                 to_char(mac_key_prev_until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') END
             FROM merchants ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| admin_http::merchants::MerchantView {
            id: r.get(0),
            name: r.get(1),
            enabled: r.get(2),
            currencies: r
                .get::<_, Vec<i16>>(3)
                .into_iter()
                .map(|c| c as u16)
                .collect(),
            limit_minor: r.get::<_, i64>(4) as u64,
            rate_per_s: r.get::<_, i32>(5) as u32,
            burst: r.get::<_, i32>(6) as u32,
            previous_key_valid_until: r.get(7),
        })
        .collect())
}

/// The previous key of a row, opened, when it has one.
fn previous_key(
    vault: &Vault,
    id: &str,
    sealed: Option<Vec<u8>>,
    until: Option<SystemTime>,
) -> Result<Option<PreviousKey>, DbError> {
    let (Some(sealed), Some(until)) = (sealed, until) else {
        return Ok(None);
    };
    let key = vault
        .open(Purpose::MacKey, &sealed)
        .map_err(|_| DbError::Key(id.to_string()))?;
    let key: [u8; 32] = key.try_into().map_err(|_| DbError::Key(id.to_string()))?;
    Ok(Some(PreviousKey {
        key: MacKey::new(&key),
        until,
    }))
}

/// Replaces a merchant's MAC key with a fresh one; the old key keeps verifying for
/// `overlap_s` seconds (at most [`ROTATION_OVERLAP_MAX_S`]). The new key and the end of
/// the overlap; `None` when there is no such merchant.
pub async fn rotate_key(
    pool: &Pool,
    vault: &Vault,
    id: &str,
    overlap_s: u64,
) -> Result<Option<([u8; 32], SystemTime)>, DbError> {
    if overlap_s > ROTATION_OVERLAP_MAX_S {
        return Err(DbError::Invalid(format!(
            "overlap_s: at most {ROTATION_OVERLAP_MAX_S}"
        )));
    }
    let (key, sealed) = new_key(vault)?;
    let until = SystemTime::now() + Duration::from_secs(overlap_s);
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE merchants SET mac_key_prev_enc = mac_key_enc, mac_key_prev_until = $3,
               mac_key_enc = $2, updated_at = now() WHERE id = $1",
            &[&id, &sealed, &until],
        )
        .await?;
    Ok((n == 1).then_some((key, until)))
}

/// Sets a merchant's currencies, per-transaction limit and rate; false if there is no
/// such merchant.
pub async fn set_limits(
    pool: &Pool,
    id: &str,
    currencies: &[u16],
    limit_minor: u64,
    rate_per_s: u32,
    burst: u32,
) -> Result<bool, DbError> {
    check_currencies(currencies)?;
    let invalid = |what: &str| Err(DbError::Invalid(format!("{what} must be positive and fit")));
    let (Ok(limit), Ok(rate), Ok(burst)) = (
        i64::try_from(limit_minor),
        i32::try_from(rate_per_s),
        i32::try_from(burst),
    ) else {
        return invalid("limit_minor, rate_per_s and burst");
    };
    if limit <= 0 || rate <= 0 || burst <= 0 {
        return invalid("limit_minor, rate_per_s and burst");
    }
    let cs: Vec<i16> = currencies.iter().map(|c| *c as i16).collect();
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE merchants SET currencies = $2, per_txn_limit_minor = $3, rate_per_s = $4,
               rate_burst = $5, updated_at = now() WHERE id = $1",
            &[&id, &cs, &limit, &rate, &burst],
        )
        .await?;
    Ok(n == 1)
}

/// A fresh MAC key and its sealed form.
fn new_key(vault: &Vault) -> Result<([u8; 32], Vec<u8>), DbError> {
    let key = vault
        .random_key()
        .map_err(|e| DbError::Invalid(e.to_string()))?;
    let sealed = vault
        .seal(Purpose::MacKey, &key)
        .map_err(|e| DbError::Invalid(e.to_string()))?;
    Ok((key, sealed))
}

fn check_currencies(currencies: &[u16]) -> Result<(), DbError> {
    if currencies.is_empty()
        || currencies
            .iter()
            .any(|c| codec::currency::exponent(*c).is_none())
    {
        return Err(DbError::Invalid(
            "currencies must be known ISO 4217 numeric codes".into(),
        ));
    }
    Ok(())
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
    check_currencies(&m.currencies)?;
    let (key, sealed) = new_key(vault)?;
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
