//! PostgreSQL figures of a benchmark: the statements that took the database's time in
//! the measured window (`pg_stat_statements`, reset at the window's start), its WAL
//! writes and flushes (`pg_stat_wal`), and the size of the journal's tables.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use serde::Serialize;
use tokio_postgres::{Client, NoTls};

use super::switchstats::ratio;

/// Statements reported: the issue asks for the top ten.
pub const TOP_STATEMENTS: i64 = 10;
/// Characters of a statement's text kept in the report (enough to recognise it).
pub const QUERY_TEXT_MAX: usize = 160;
/// The tables whose size is reported (the journal's, which grow with every purchase).
pub const SIZED_TABLES: [&str; 3] = ["transaction_rows", "settlements", "ledger_postings"];

/// The bench database's statements by exec + plan time, with everyone's total for the
/// share; our own statements about pg_stat_statements are left out.
const TOP_SQL: &str = "
WITH s AS (
  SELECT calls, total_exec_time + total_plan_time AS t, rows, query
  FROM pg_stat_statements
  WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND query NOT ILIKE '%pg_stat_statements%'
)
SELECT calls, t, rows, query, sum(t) OVER () FROM s ORDER BY t DESC LIMIT $1";

/// One statement's share of the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopStatement {
    pub calls: u64,
    pub mean_ms: f64,
    pub rows_per_call: f64,
    pub total_ms: f64,
    /// Percent of all statements' exec + plan time in the window.
    pub share_pct: f64,
    /// The normalised text, whitespace collapsed, cut at [`QUERY_TEXT_MAX`] characters.
    pub query: String,
}

/// What report.json says about the database.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DbReport {
    /// Historical transactions written before the switch started (scripts/bench-preload.sql).
    pub preload_rows: Option<u64>,
    pub preload_seconds: Option<f64>,
    /// pg_total_relation_size (table, indexes, TOAST) before the first run and after
    /// the last; null when the table does not exist.
    pub table_bytes_start: BTreeMap<String, Option<i64>>,
    pub table_bytes_end: BTreeMap<String, Option<i64>>,
    /// Autovacuum and autoanalyze passes of each table so far (`pg_stat_user_tables`),
    /// before the first run and after the last: a pass during the runs costs the
    /// database CPU the runs are charged with.
    pub maintenance_start: BTreeMap<String, Maintenance>,
    pub maintenance_end: BTreeMap<String, Maintenance>,
    /// The run the statements are from (the last switch run).
    pub top_statements_run: Option<String>,
    pub top_statements: Vec<TopStatement>,
    /// Problems reading the figures above.
    pub notes: Vec<String>,
}

/// Whitespace collapsed to single spaces, cut at `max` characters.
pub fn short_query(q: &str, max: usize) -> String {
    let joined = q.split_whitespace().collect::<Vec<_>>().join(" ");
    joined.chars().take(max).collect()
}

/// Turns (calls, exec+plan ms, rows, query, everyone's ms) rows into the report's form.
#[allow(clippy::float_arithmetic)]
pub fn shape(rows: &[(i64, f64, i64, String, f64)]) -> Vec<TopStatement> {
    rows.iter()
        .map(|(calls, t, r, q, all)| {
            let calls = u64::try_from(*calls).unwrap_or(0);
            let per = |x: f64| if calls == 0 { 0.0 } else { x / calls as f64 };
            TopStatement {
                calls,
                mean_ms: per(*t),
                rows_per_call: per(*r as f64),
                total_ms: *t,
                share_pct: if *all > 0.0 { t * 100.0 / all } else { 0.0 },
                query: short_query(q, QUERY_TEXT_MAX),
            }
        })
        .collect()
}

pub async fn connect(url: &str) -> Result<Arc<Client>, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("loadgen: PostgreSQL connection: {e}");
        }
    });
    Ok(Arc::new(client))
}

pub async fn reset_statements(c: &Client) -> Result<(), tokio_postgres::Error> {
    c.execute("SELECT pg_stat_statements_reset()", &[]).await?;
    Ok(())
}

pub async fn top_statements(c: &Client) -> Result<Vec<TopStatement>, tokio_postgres::Error> {
    let rows = c.query(TOP_SQL, &[&TOP_STATEMENTS]).await?;
    let raw: Vec<(i64, f64, i64, String, f64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    Ok(shape(&raw))
}

pub async fn table_bytes(
    c: &Client,
) -> Result<BTreeMap<String, Option<i64>>, tokio_postgres::Error> {
    let mut out = BTreeMap::new();
    for t in SIZED_TABLES {
        let row = c
            .query_one("SELECT pg_total_relation_size(to_regclass($1))", &[&t])
            .await?;
        out.insert(t.to_owned(), row.get::<_, Option<i64>>(0));
    }
    Ok(out)
}

/// PostgreSQL's WAL counters so far (`pg_stat_wal` as PostgreSQL 14-17 have it; 18 moved
/// the write and flush columns to `pg_stat_io`, and the query then fails into a note).
/// The times stay 0 unless `track_wal_io_timing` is on (scripts/bench.sh turns it on).
/// Cluster-wide: autovacuum's and checkpoints' WAL counts too.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WalCounters {
    pub records: i64,
    /// Full-page images: a page's first change after a checkpoint logs the whole page.
    pub fpi: i64,
    pub bytes: f64,
    /// WAL buffers written out (`write(2)`) and flushed to disk (`fdatasync(2)` with
    /// the default `wal_sync_method`), and the time each took in all, ms.
    pub writes: i64,
    pub syncs: i64,
    pub write_ms: f64,
    pub sync_ms: f64,
}

/// Reads [`WalCounters`]. Errors: the database's.
pub async fn wal_counters(c: &Client) -> Result<WalCounters, tokio_postgres::Error> {
    let r = c
        .query_one(
            "SELECT wal_records, wal_fpi, wal_bytes::float8, wal_write, wal_sync, \
             wal_write_time, wal_sync_time FROM pg_stat_wal",
            &[],
        )
        .await?;
    Ok(WalCounters {
        records: r.get(0),
        fpi: r.get(1),
        bytes: r.get(2),
        writes: r.get(3),
        syncs: r.get(4),
        write_ms: r.get(5),
        sync_ms: r.get(6),
    })
}

/// The WAL a run wrote, per answered request, and how long its flushes took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WalStats {
    pub bytes_per_tx: Option<f64>,
    pub records_per_tx: Option<f64>,
    pub fpi_per_tx: Option<f64>,
    pub syncs_per_s: f64,
    /// Mean time of one flush and of one write, ms; null without `track_wal_io_timing`
    /// (or without any).
    pub mean_sync_ms: Option<f64>,
    pub mean_write_ms: Option<f64>,
}

/// The WAL written between two readings `window_s` seconds apart.
#[allow(clippy::float_arithmetic)]
pub fn wal_delta(a: &WalCounters, b: &WalCounters, window_s: f64, answered: u64) -> WalStats {
    // Counters reset inside the window (pg_stat_reset_shared, a crash) count from 0.
    let per_tx = |x: f64| ratio(x.max(0.0), answered as f64);
    let mean = |ms: f64, n: i64| ratio(ms, n as f64).filter(|m| *m > 0.0);
    let syncs = (b.syncs - a.syncs).max(0);
    let writes = (b.writes - a.writes).max(0);
    WalStats {
        bytes_per_tx: per_tx(b.bytes - a.bytes),
        records_per_tx: per_tx((b.records - a.records) as f64),
        fpi_per_tx: per_tx((b.fpi - a.fpi) as f64),
        syncs_per_s: ratio(syncs as f64, window_s).unwrap_or(0.0),
        mean_sync_ms: mean(b.sync_ms - a.sync_ms, syncs),
        mean_write_ms: mean(b.write_ms - a.write_ms, writes),
    }
}

/// A table's autovacuum and autoanalyze passes so far (`pg_stat_user_tables`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Maintenance {
    pub autovacuum: i64,
    pub autoanalyze: i64,
}

/// Autovacuum and autoanalyze passes of each of [`SIZED_TABLES`] so far; a table
/// missing (or never seen by the statistics collector) is left out.
pub async fn maintenance(
    c: &Client,
) -> Result<BTreeMap<String, Maintenance>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT relname::text, autovacuum_count, autoanalyze_count FROM pg_stat_user_tables \
             WHERE relname = ANY($1)",
            &[&SIZED_TABLES.as_slice()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let passes = Maintenance {
                autovacuum: r.get(1),
                autoanalyze: r.get(2),
            };
            (r.get(0), passes)
        })
        .collect())
}

/// " (autovacuum N, autoanalyze M during the runs)" for `table`, or nothing when either
/// end is unknown.
fn maintenance_note(db: &DbReport, table: &str) -> String {
    match (
        db.maintenance_start.get(table),
        db.maintenance_end.get(table),
    ) {
        (Some(a), Some(b)) => format!(
            "; autovacuum {}, autoanalyze {} during the runs",
            b.autovacuum - a.autovacuum,
            b.autoanalyze - a.autoanalyze
        ),
        _ => String::new(),
    }
}

#[allow(clippy::float_arithmetic)]
fn mib(b: Option<i64>) -> String {
    b.map_or("-".to_owned(), |b| {
        format!("{:.1} MiB", b as f64 / 1_048_576.0)
    })
}

/// The database part of table.txt.
pub fn db_table(db: &DbReport) -> String {
    let mut out = String::new();
    let preload = match (db.preload_rows, db.preload_seconds) {
        (Some(n), Some(s)) => format!("{n} historical transactions in {s:.0} s"),
        (Some(n), None) => format!("{n} historical transactions"),
        _ => "none".to_owned(),
    };
    let _ = writeln!(out, "db: preload {preload}");
    for t in SIZED_TABLES {
        let size = |m: &BTreeMap<String, Option<i64>>| mib(m.get(t).copied().flatten());
        let _ = writeln!(
            out,
            "  {t}: {} before the runs, {} after{}",
            size(&db.table_bytes_start),
            size(&db.table_bytes_end),
            maintenance_note(db, t)
        );
    }
    if let Some(run) = &db.top_statements_run {
        let _ = writeln!(
            out,
            "top statements, {run}, measured window, by exec+plan time (pg_stat_statements):"
        );
        let _ = writeln!(
            out,
            "  {:>8} {:>8} {:>9} {:>10} {:>6}  query",
            "calls", "mean ms", "rows/call", "total ms", "share"
        );
        for s in &db.top_statements {
            let _ = writeln!(
                out,
                "  {:>8} {:>8.3} {:>9.2} {:>10.1} {:>5.1}%  {}",
                s.calls, s.mean_ms, s.rows_per_call, s.total_ms, s.share_pct, s.query
            );
        }
    }
    for n in &db.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves statement rows become means, rows per call and shares, and that long
    // statement texts are collapsed and cut on character boundaries.
    #[test]
    fn shapes_statements() {
        let rows = vec![
            (
                100,
                300.0,
                200,
                "INSERT  INTO t\n  VALUES ($1)".to_owned(),
                400.0,
            ),
            (0, 0.0, 0, "BEGIN".to_owned(), 400.0),
        ];
        let s = shape(&rows);
        assert_eq!(s[0].query, "INSERT INTO t VALUES ($1)");
        assert!((s[0].mean_ms - 3.0).abs() < 1e-9);
        assert!((s[0].rows_per_call - 2.0).abs() < 1e-9);
        assert!((s[0].share_pct - 75.0).abs() < 1e-9);
        assert_eq!(s[1].mean_ms, 0.0);
        let long = "é".repeat(QUERY_TEXT_MAX + 10);
        assert_eq!(
            short_query(&long, QUERY_TEXT_MAX).chars().count(),
            QUERY_TEXT_MAX
        );
    }

    // Proves WAL counters become per-request figures and mean flush times, and that
    // times left at 0 (timing off) give no mean rather than a zero one.
    #[test]
    fn wal_per_request() {
        let a = WalCounters {
            records: 10,
            fpi: 1,
            bytes: 1000.0,
            writes: 5,
            syncs: 5,
            write_ms: 1.0,
            sync_ms: 2.0,
        };
        let b = WalCounters {
            records: 210,
            fpi: 21,
            bytes: 41_000.0,
            writes: 15,
            syncs: 25,
            write_ms: 2.0,
            sync_ms: 12.0,
        };
        let w = wal_delta(&a, &b, 2.0, 20);
        assert_eq!(w.bytes_per_tx, Some(2000.0));
        assert_eq!(w.records_per_tx, Some(10.0));
        assert_eq!(w.fpi_per_tx, Some(1.0));
        assert_eq!(w.syncs_per_s, 10.0);
        assert_eq!(w.mean_sync_ms, Some(0.5));
        assert_eq!(w.mean_write_ms, Some(0.1));
        let untimed = WalCounters {
            write_ms: 0.0,
            sync_ms: 0.0,
            ..b
        };
        let w = wal_delta(&WalCounters::default(), &untimed, 0.0, 0);
        assert_eq!(
            (w.mean_sync_ms, w.bytes_per_tx, w.syncs_per_s),
            (None, None, 0.0)
        );
    }

    // Proves the database section names the preload, both sizes, the maintenance passes
    // between them and every statement.
    #[test]
    fn db_section() {
        let mut db = DbReport {
            preload_rows: Some(1000),
            preload_seconds: Some(2.0),
            top_statements_run: Some("switch @1000/s".into()),
            top_statements: shape(&[(1, 1.0, 1, "SELECT 1".into(), 1.0)]),
            ..DbReport::default()
        };
        db.table_bytes_end
            .insert("transaction_rows".into(), Some(2 * 1_048_576));
        let passes = |autovacuum, autoanalyze| Maintenance {
            autovacuum,
            autoanalyze,
        };
        db.maintenance_start
            .insert("settlements".into(), passes(1, 2));
        db.maintenance_end
            .insert("settlements".into(), passes(1, 5));
        let t = db_table(&db);
        assert!(
            t.contains("settlements: - before the runs, - after; autovacuum 0, autoanalyze 3 during the runs"),
            "{t}"
        );
        assert!(
            t.contains("preload 1000 historical transactions in 2 s"),
            "{t}"
        );
        assert!(
            t.contains("transaction_rows: - before the runs, 2.0 MiB after"),
            "{t}"
        );
        assert!(t.contains("100.0%  SELECT 1"), "{t}");
    }
}
