//! Postgres backend: production and replicas. Claims use `FOR UPDATE SKIP LOCKED`
//! so concurrent reviewers never wait on, or double-claim, the same row.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub async fn connect(url: &str, max_connections: u32) -> super::Result<Self> {
        let options = PgConnectOptions::from_str(url)?.application_name("sopr");
        // One direct connection first: a refused connection or a bad password
        // then surfaces as itself instead of as a pool timeout.
        PgConnection::connect_with(&options).await?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(PostgresStore { pool })
    }

    fn migrator(&self) -> sqlx::migrate::Migrator {
        sqlx::migrate!("./migrations/postgres")
    }

    /// Postgres handles concurrent writers itself (row locks, SKIP LOCKED).
    async fn begin_write(&self) -> sqlx::Result<((), sqlx::Transaction<'static, Postgres>)> {
        Ok(((), self.pool.begin().await?))
    }
}

super::sql::impl_store!(
    PostgresStore,
    Postgres,
    backend = Backend::Postgres,
    skip_locked = "FOR UPDATE SKIP LOCKED",
    for_update = "FOR UPDATE"
);
