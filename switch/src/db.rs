//! PostgreSQL: the pool, the migrations in `migrations/`, and the error type.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// A database operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("migrations: {0}")]
    Migration(String),
    /// Read-only commands refuse to run on an older schema rather than migrate it.
    #[error(
        "the database schema is behind this binary: {} migration(s) pending ({}); run `switchyard migrate` first",
        .0.len(),
        .0.join(", ")
    )]
    SchemaBehind(Vec<String>),
    #[error("merchant {0}: MAC key does not open with the configured master key")]
    Key(String),
    #[error("{0}")]
    Invalid(String),
}

impl DbError {
    /// Whether the failure is a unique-constraint violation.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, DbError::Postgres(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION))
    }
}

/// A pool of `size` connections. Connections are made lazily, so a database that is
/// down at start-up surfaces as errors on use, not as a failed start.
pub fn pool(url: &str, size: usize) -> Result<Pool, DbError> {
    let pg: tokio_postgres::Config = url.parse()?;
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .build()
        .map_err(|e| DbError::Invalid(e.to_string()))
}

/// Applies every migration not yet applied; returns how many ran.
pub async fn migrate(url: &str) -> Result<usize, DbError> {
    let (mut client, conn) = tokio_postgres::connect(url, NoTls).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .map_err(|e| DbError::Migration(e.to_string()))?;
    drop(client);
    let _ = task.await;
    Ok(report.applied_migrations().len())
}

/// Where the database's schema stands against the migrations built into this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Migrations of this binary not applied yet, as `V<version>__<name>`, oldest first.
    pub pending: Vec<String>,
    /// Versions applied to the database that this binary does not know (a newer binary
    /// migrated it).
    pub unknown_applied: Vec<i32>,
}

impl SchemaStatus {
    /// The decision of a command that only reads: `Ok` when every migration is applied,
    /// otherwise why it must not run (it never migrates on its own).
    pub fn require_current(&self) -> Result<(), DbError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        Err(DbError::SchemaBehind(self.pending.clone()))
    }
}

/// Reads which migrations are applied, without changing anything (no history table is
/// created): a database without refinery's history table has every migration pending.
pub async fn schema_status(url: &str) -> Result<SchemaStatus, DbError> {
    let (mut client, conn) = tokio_postgres::connect(url, NoTls).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let runner = embedded::migrations::runner();
    let has_history: bool = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let applied: Vec<i32> = if has_history {
        runner
            .get_applied_migrations_async(&mut client)
            .await
            .map_err(|e| DbError::Migration(e.to_string()))?
            .iter()
            .map(|m| m.version())
            .collect()
    } else {
        Vec::new()
    };
    drop(client);
    let _ = task.await;
    let known: Vec<i32> = runner
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .collect();
    let mut pending: Vec<&refinery::Migration> = runner
        .get_migrations()
        .iter()
        .filter(|m| !applied.contains(&m.version()))
        .collect();
    pending.sort_by_key(|m| m.version());
    Ok(SchemaStatus {
        pending: pending
            .iter()
            .map(|m| format!("V{}__{}", m.version(), m.name()))
            .collect(),
        unknown_applied: applied.into_iter().filter(|v| !known.contains(v)).collect(),
    })
}
