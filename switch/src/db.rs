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
