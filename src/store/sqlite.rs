//! SQLite backend: the zero-setup default. WAL mode, foreign keys on, and every
//! write transaction starts with `BEGIN IMMEDIATE` so that concurrent writers
//! queue on the busy timeout instead of failing on a lock upgrade.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

pub struct SqliteStore {
    pool: SqlitePool,
    writer: tokio::sync::Mutex<()>,
}

impl SqliteStore {
    pub async fn connect(url: &str, max_connections: u32) -> super::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await?;
        Ok(SqliteStore {
            pool,
            writer: tokio::sync::Mutex::new(()),
        })
    }

    fn migrator(&self) -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/sqlite")
    }

    /// SQLite has one writer at a time. Queueing writers here, in FIFO order,
    /// instead of in SQLite's busy handler (which sleeps in growing steps) keeps
    /// the latency tail short under concurrent load; `BEGIN IMMEDIATE` still
    /// guards against writers in other processes.
    async fn begin_write(
        &self,
    ) -> sqlx::Result<(
        tokio::sync::MutexGuard<'_, ()>,
        sqlx::Transaction<'static, Sqlite>,
    )> {
        let writer = self.writer.lock().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok((writer, tx))
    }
}

/// SQLite has no data-modifying CTEs: the portable transactions serve.
impl super::sql::FastPaths for SqliteStore {}

super::sql::impl_store!(
    SqliteStore,
    Sqlite,
    backend = Backend::Sqlite,
    skip_locked = "",
    for_update = ""
);
