//! BIN routing: card-number ranges to banks, held in memory as disjoint intervals over
//! 19-digit numbers and looked up by binary search.
#![deny(clippy::disallowed_methods)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use deadpool_postgres::Pool;

use crate::db::DbError;

/// Card numbers are at most 19 digits; ranges and lookups pad to this width.
pub const PAN_DIGITS_MAX: u32 = 19;
/// Routes held at most (a table of all BINs in the world is about 500,000 ranges).
pub const ROUTES_MAX: usize = 2_000_000;

/// A configured route: card numbers whose first `len(low)` digits lie in [low, high].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub low: String,
    pub high: String,
    pub bank_id: String,
    pub priority: i32,
}

/// A route covering a point of the sweep, ordered by preference: narrowest, then highest
/// priority, then earliest; then its end and bank.
type Covering = (Reverse<u64>, i32, Reverse<usize>, u64, u32);

/// Disjoint, sorted intervals of 19-digit numbers, each with the bank that serves it.
#[derive(Debug, Default, Clone)]
pub struct RouteTable {
    starts: Vec<u64>,
    ends: Vec<u64>,
    banks: Vec<u32>,
    bank_ids: Vec<Arc<str>>,
}

fn pad(prefix: &str, fill: u8) -> Option<u64> {
    if prefix.is_empty()
        || prefix.len() > PAN_DIGITS_MAX as usize
        || !prefix.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let mut v: u64 = 0;
    for c in prefix.bytes().chain(std::iter::repeat_n(
        fill,
        PAN_DIGITS_MAX as usize - prefix.len(),
    )) {
        v = v * 10 + u64::from(c - b'0');
    }
    Some(v)
}

/// A card number as a 19-digit number (shorter numbers padded with zeros on the right).
pub fn pan_key(pan: &[u8]) -> Option<u64> {
    pad(std::str::from_utf8(pan).ok()?, b'0')
}

/// Why a set of routes cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route {low}..{high}: bounds must be digit strings of equal length, low <= high")]
    Bounds { low: String, high: String },
    #[error("more than {ROUTES_MAX} routes")]
    TooMany,
}

impl RouteTable {
    /// Builds the table. Where ranges overlap, the narrowest wins, then the higher priority,
    /// then the earlier route: so a specific BIN can be carved out of a broad range.
    pub fn build(routes: &[Route]) -> Result<RouteTable, RouteError> {
        if routes.len() > ROUTES_MAX {
            return Err(RouteError::TooMany);
        }
        let mut bank_ids: Vec<Arc<str>> = Vec::new();
        let mut ivs = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let bad = || RouteError::Bounds {
                low: r.low.clone(),
                high: r.high.clone(),
            };
            if r.low.len() != r.high.len() {
                return Err(bad());
            }
            let (lo, hi) = (
                pad(&r.low, b'0').ok_or_else(bad)?,
                pad(&r.high, b'9').ok_or_else(bad)?,
            );
            if lo > hi {
                return Err(bad());
            }
            let bank = match bank_ids.iter().position(|b| **b == *r.bank_id) {
                Some(p) => p,
                None => {
                    bank_ids.push(Arc::from(r.bank_id.as_str()));
                    bank_ids.len() - 1
                }
            } as u32;
            ivs.push((lo, hi, r.priority, i, bank));
        }
        ivs.sort_by_key(|iv| iv.0);
        // Sweep over interval starts and ends, keeping the covering routes in a heap
        // ordered by preference; each elementary piece goes to the preferred one.
        let mut points: Vec<u64> = ivs
            .iter()
            .flat_map(|iv| [iv.0, iv.1.saturating_add(1)])
            .collect();
        points.sort_unstable();
        points.dedup();
        let mut heap: BinaryHeap<Covering> = BinaryHeap::new();
        let mut next = 0;
        let mut table = RouteTable {
            bank_ids,
            ..Default::default()
        };
        for w in points.windows(2) {
            let (start, end_excl) = (w[0], w[1]);
            while next < ivs.len() && ivs[next].0 <= start {
                let (lo, hi, prio, idx, bank) = ivs[next];
                heap.push((Reverse(hi - lo), prio, Reverse(idx), hi, bank));
                next += 1;
            }
            while heap.peek().is_some_and(|top| top.3 < start) {
                heap.pop();
            }
            if let Some(&(_, _, _, _, bank)) = heap.peek() {
                let end = end_excl - 1;
                if table.banks.last() == Some(&bank)
                    && table.ends.last().is_some_and(|e| *e + 1 == start)
                {
                    *table.ends.last_mut().expect("non-empty") = end;
                } else {
                    table.starts.push(start);
                    table.ends.push(end);
                    table.banks.push(bank);
                }
            }
        }
        Ok(table)
    }

    /// The bank serving a card number.
    #[inline]
    pub fn lookup(&self, pan: &[u8]) -> Option<&Arc<str>> {
        let key = pan_key(pan)?;
        let i = self.starts.partition_point(|s| *s <= key).checked_sub(1)?;
        (key <= self.ends[i]).then(|| &self.bank_ids[self.banks[i] as usize])
    }

    pub fn intervals(&self) -> usize {
        self.starts.len()
    }
}

/// The live table, swapped whole on reload.
#[derive(Debug, Default)]
pub struct Router {
    table: ArcSwap<RouteTable>,
}

impl Router {
    pub fn lookup(&self, pan: &[u8]) -> Option<Arc<str>> {
        self.table.load().lookup(pan).cloned()
    }

    pub fn replace(&self, t: RouteTable) {
        self.table.store(Arc::new(t));
    }

    pub async fn reload(&self, pool: &Pool) -> Result<usize, DbError> {
        let routes = load_routes(pool).await?;
        let t = RouteTable::build(&routes).map_err(|e| DbError::Invalid(e.to_string()))?;
        let n = routes.len();
        self.replace(t);
        Ok(n)
    }
}

/// Every route, in the order they were added.
pub async fn load_routes(pool: &Pool) -> Result<Vec<Route>, DbError> {
    Ok(list_routes(pool)
        .await?
        .into_iter()
        .map(|s| s.route)
        .collect())
}

/// A route as stored: its id (what `route remove` takes) and the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoute {
    pub id: i64,
    pub route: Route,
}

/// Every route with its id, in the order they were added.
pub async fn list_routes(pool: &Pool) -> Result<Vec<StoredRoute>, DbError> {
    let client = pool.get().await?;
    let sql = format!("SELECT {ROUTE_COLUMNS} FROM bin_routes ORDER BY id");
    let rows = client.query(&sql, &[]).await?;
    Ok(rows.iter().map(stored).collect())
}

/// Why a route change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteChangeError {
    #[error("bank {0} is not in the configuration")]
    UnknownBank(String),
    #[error(transparent)]
    Invalid(#[from] RouteError),
    #[error("no route {0}")]
    NotFound(i64),
    /// Another route has the same range and priority: which of the two serves a card
    /// would depend on the order they were added, not on anything an operator sees.
    #[error("route {id} already covers {low}..{high} at priority {priority} (bank {bank_id})")]
    Duplicate {
        id: i64,
        low: String,
        high: String,
        priority: i32,
        bank_id: String,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The one owner of route changes, for the command line and the admin API alike: it
/// checks a route (bounds, a configured bank, the table's size), writes it, and in a
/// running switch swaps the live table at once; other instances (and a switch changed
/// from the command line) follow at their reload interval or on SIGHUP.
#[derive(Debug, Clone)]
pub struct RouteBook {
    pub pool: Pool,
    /// The configured banks' ids: a route to any other is refused.
    pub banks: Vec<String>,
    /// This instance's table; `None` in the command-line tool.
    pub live: Option<Arc<Router>>,
}

const ROUTE_COLUMNS: &str = "id, bin_low, bin_high, bank_id, priority";

fn stored(r: &tokio_postgres::Row) -> StoredRoute {
    StoredRoute {
        id: r.get(0),
        route: Route {
            low: r.get(1),
            high: r.get(2),
            bank_id: r.get(3),
            priority: r.get(4),
        },
    }
}

impl RouteBook {
    pub async fn list(&self) -> Result<Vec<StoredRoute>, DbError> {
        list_routes(&self.pool).await
    }

    /// A route's own bounds and bank, the route `replacing` there, no other route with its
    /// range and priority, and room for one more (when adding: `replacing` is `None`).
    async fn check(&self, r: &Route, replacing: Option<i64>) -> Result<(), RouteChangeError> {
        if !self.banks.contains(&r.bank_id) {
            return Err(RouteChangeError::UnknownBank(r.bank_id.clone()));
        }
        RouteTable::build(std::slice::from_ref(r))?;
        let client = self.pool.get().await.map_err(DbError::from)?;
        if let Some(id) = replacing {
            // A change of a route that does not exist is that, before any clash.
            let exists = "SELECT EXISTS (SELECT 1 FROM bin_routes WHERE id = $1)";
            let found: bool = client
                .query_one(exists, &[&id])
                .await
                .map_err(DbError::from)?
                .get(0);
            if !found {
                return Err(RouteChangeError::NotFound(id));
            }
        }
        let twin = client
            .query_opt(
                "SELECT id, bank_id FROM bin_routes WHERE bin_low = $1 AND bin_high = $2
                   AND priority = $3 AND id IS DISTINCT FROM $4 LIMIT 1",
                &[&r.low, &r.high, &r.priority, &replacing],
            )
            .await
            .map_err(DbError::from)?;
        if let Some(t) = twin {
            return Err(RouteChangeError::Duplicate {
                id: t.get(0),
                low: r.low.clone(),
                high: r.high.clone(),
                priority: r.priority,
                bank_id: t.get(1),
            });
        }
        if replacing.is_none() {
            let n: i64 = client
                .query_one("SELECT count(*) FROM bin_routes", &[])
                .await
                .map_err(DbError::from)?
                .get(0);
            if n >= ROUTES_MAX as i64 {
                return Err(RouteError::TooMany.into());
            }
        }
        Ok(())
    }

    /// Rebuilds this instance's table from the database, when it has one.
    async fn apply(&self) -> Result<(), RouteChangeError> {
        if let Some(live) = &self.live {
            live.reload(&self.pool).await?;
        }
        Ok(())
    }

    /// Adds a route; the route with its id.
    pub async fn add(&self, r: Route) -> Result<StoredRoute, RouteChangeError> {
        self.check(&r, None).await?;
        let client = self.pool.get().await.map_err(DbError::from)?;
        let sql = format!(
            "INSERT INTO bin_routes (bin_low, bin_high, bank_id, priority) VALUES ($1, $2, $3, $4) RETURNING {ROUTE_COLUMNS}"
        );
        let row = client
            .query_one(&sql, &[&r.low, &r.high, &r.bank_id, &r.priority])
            .await
            .map_err(DbError::from)?;
        self.apply().await?;
        Ok(stored(&row))
    }

    /// Replaces route `id`: the route before and after.
    pub async fn change(
        &self,
        id: i64,
        r: Route,
    ) -> Result<(StoredRoute, StoredRoute), RouteChangeError> {
        self.check(&r, Some(id)).await?;
        let client = self.pool.get().await.map_err(DbError::from)?;
        // The old row is read in the same statement that replaces it.
        let sql = "WITH old AS (SELECT id, bin_low, bin_high, bank_id, priority FROM bin_routes WHERE id = $1 FOR UPDATE),
             new AS (UPDATE bin_routes b SET bin_low = $2, bin_high = $3, bank_id = $4, priority = $5
                     FROM old WHERE b.id = old.id RETURNING b.id)
             SELECT old.id, old.bin_low, old.bin_high, old.bank_id, old.priority FROM old, new";
        let row = client
            .query_opt(sql, &[&id, &r.low, &r.high, &r.bank_id, &r.priority])
            .await
            .map_err(DbError::from)?
            .ok_or(RouteChangeError::NotFound(id))?;
        self.apply().await?;
        Ok((stored(&row), StoredRoute { id, route: r }))
    }

    /// Removes route `id`: the route as it was.
    pub async fn remove(&self, id: i64) -> Result<StoredRoute, RouteChangeError> {
        let client = self.pool.get().await.map_err(DbError::from)?;
        let sql = format!("DELETE FROM bin_routes WHERE id = $1 RETURNING {ROUTE_COLUMNS}");
        let row = client
            .query_opt(&sql, &[&id])
            .await
            .map_err(DbError::from)?
            .ok_or(RouteChangeError::NotFound(id))?;
        self.apply().await?;
        Ok(stored(&row))
    }
}

#[cfg(test)]
// Tests make their own clock readings to feed the decisions.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn route(low: &str, high: &str, bank: &str) -> Route {
        Route {
            low: low.into(),
            high: high.into(),
            bank_id: bank.into(),
            priority: 0,
        }
    }

    // Proves lookups by prefix range, with a narrow range carved out of a broad one.
    #[test]
    fn nested_ranges_narrowest_wins() {
        let t = RouteTable::build(&[
            route("4", "4", "visa-bank"),
            route("411111", "411111", "special"),
            route("51", "55", "mc-bank"),
        ])
        .unwrap();
        assert_eq!(t.lookup(b"4111111111111111").map(|b| &**b), Some("special"));
        assert_eq!(
            t.lookup(b"4111121111111111").map(|b| &**b),
            Some("visa-bank")
        );
        assert_eq!(
            t.lookup(b"4000000000000002").map(|b| &**b),
            Some("visa-bank")
        );
        assert_eq!(t.lookup(b"5500000000000004").map(|b| &**b), Some("mc-bank"));
        assert_eq!(t.lookup(b"3400000000000009"), None);
        assert_eq!(t.lookup(b"5600000000000000"), None);
        assert_eq!(t.intervals(), 4);
    }

    // Proves malformed ranges are refused.
    #[test]
    fn bad_bounds() {
        assert!(RouteTable::build(&[route("5", "45", "x")]).is_err());
        assert!(RouteTable::build(&[route("5", "4", "x")]).is_err());
        assert!(RouteTable::build(&[route("4a", "4b", "x")]).is_err());
    }

    proptest::proptest! {
        // Proves the swept table agrees with a brute-force scan of the routes.
        #[test]
        fn agrees_with_brute_force(ranges in proptest::collection::vec((0u32..1000, 0u32..50, 0usize..3), 1..30), probes in proptest::collection::vec(0u32..1100, 1..50)) {
            let routes: Vec<Route> = ranges.iter().enumerate().map(|(i, (lo, w, len))| {
                let width = [3usize, 4, 5][*len];
                let scale = 10u32.pow(width as u32 - 3);
                let lo = lo * scale;
                let hi = (lo + w * scale).min(10u32.pow(width as u32) - 1);
                Route { low: format!("{lo:0width$}"), high: format!("{hi:0width$}"), bank_id: format!("b{i}"), priority: 0 }
            }).collect();
            let t = RouteTable::build(&routes).unwrap();
            for p in probes {
                let pan = format!("{:03}4111111111111", p.min(999));
                let key = pan_key(pan.as_bytes()).unwrap();
                let best = routes.iter().enumerate().filter(|(_, r)| pad(&r.low, b'0').unwrap() <= key && key <= pad(&r.high, b'9').unwrap())
                    .min_by_key(|(i, r)| (pad(&r.high, b'9').unwrap() - pad(&r.low, b'0').unwrap(), -r.priority, *i)).map(|(_, r)| r.bank_id.clone());
                proptest::prop_assert_eq!(t.lookup(pan.as_bytes()).map(|b| b.to_string()), best);
            }
        }
    }
}
