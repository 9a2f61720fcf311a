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

/// Claim-next and resolve each as one statement (data-modifying CTEs): one
/// round trip instead of five to eight, with the same locks and writes
/// (outbox rows included) as the portable transactions. A resolve that
/// matches no row (stale version, lost lease, unknown item) falls back to the
/// transaction, which says why.
#[async_trait::async_trait]
impl super::sql::FastPaths for PostgresStore {
    async fn fast_claim_next(
        &self,
        tenant_id: uuid::Uuid,
        claim: &super::Claim,
    ) -> Option<super::Result<Option<super::ReviewItem>>> {
        const SQL: &str = concat!(
            "WITH open_item AS (
                SELECT id, priority, due_at, created_at, state, claimed_by, lease_expires_at FROM review_items
                WHERE tenant_id = $1 AND state = 'open' AND waiting_since IS NULL
                ORDER BY priority DESC, due_at, created_at LIMIT 1 FOR UPDATE SKIP LOCKED
            ), expired_item AS (
                SELECT id, priority, due_at, created_at, state, claimed_by, lease_expires_at FROM review_items
                WHERE tenant_id = $1 AND state = 'claimed' AND lease_expires_at < $2
                ORDER BY priority DESC, due_at, created_at LIMIT 1 FOR UPDATE SKIP LOCKED
            ), best AS (
                SELECT * FROM (SELECT * FROM open_item UNION ALL SELECT * FROM expired_item) c
                ORDER BY priority DESC, due_at, created_at LIMIT 1
            ), claimed AS (
                UPDATE review_items r SET state = 'claimed', claimed_by = $3, lease_expires_at = $4,
                    version = r.version + 1, updated_at = $2
                FROM best WHERE r.id = best.id
                RETURNING r.*, best.state AS old_state, best.claimed_by AS old_claimed_by,
                    best.lease_expires_at AS old_lease
            ), takeover AS (
                INSERT INTO review_events (id, tenant_id, review_id, actor, kind, data, created_at)
                SELECT $5, $1, id, 'system', 'lease_expired',
                    jsonb_build_object('previous', old_claimed_by, 'lease_expires_at', old_lease), $2
                FROM claimed WHERE old_state = 'claimed' AND old_claimed_by IS DISTINCT FROM $3
            ), claim_event AS (
                INSERT INTO review_events (id, tenant_id, review_id, actor, kind, data, created_at)
                SELECT $6, $1, id, $3, 'claimed', jsonb_build_object('lease_expires_at', $7::text, 'version', version), $2
                FROM claimed
            )
            SELECT ",
            super::sql::review_columns!(),
            " FROM claimed"
        );
        let lease = serde_json::to_value(claim.lease_until)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let result = sqlx::query_as::<_, super::ReviewItem>(SQL)
            .bind(tenant_id)
            .bind(claim.now)
            .bind(&claim.reviewer)
            .bind(claim.lease_until)
            .bind(uuid::Uuid::now_v7())
            .bind(uuid::Uuid::now_v7())
            .bind(lease)
            .fetch_optional(&self.pool)
            .await;
        Some(result.map_err(super::StoreError::from))
    }

    async fn fast_resolve(
        &self,
        tenant_id: uuid::Uuid,
        r: &super::Resolution,
    ) -> Option<super::Result<super::ReviewItem>> {
        const SQL: &str = concat!(
            "WITH resolved AS (
                UPDATE review_items SET state = 'resolved', resolution = $1, final_reply = $2, resolved_by = $3,
                    resolved_at = $4, lease_expires_at = NULL, version = version + 1, updated_at = $4
                WHERE id = $5 AND tenant_id = $6 AND state = 'claimed' AND claimed_by = $3
                    AND lease_expires_at >= $4 AND ($7::bigint IS NULL OR version = $7)
                RETURNING *
            ), reply AS (
                INSERT INTO messages (id, tenant_id, conversation_id, role, body, metadata, created_at)
                SELECT $8, $6, conversation_id, $17, $9, $10, $4 FROM resolved WHERE $8::uuid IS NOT NULL
            ), conversation AS (
                UPDATE conversations c SET updated_at = $4 FROM resolved
                WHERE c.id = resolved.conversation_id AND $8::uuid IS NOT NULL
            ), event AS (
                INSERT INTO review_events (id, tenant_id, review_id, actor, kind, data, created_at)
                SELECT $11, $6, id, $12, $13, $14, $4 FROM resolved
            ), feedback AS (
                INSERT INTO feedback (id, tenant_id, review_id, decision_id, customer_text, predicted_intent, label_intent,
                    sop_ref, action, draft, final_reply, reviewer, created_at)
                SELECT $15, $6, r.id, d.id, m.body, d.intent, $16, r.sop_ref, $1, r.draft, $2, $3, $4
                FROM resolved r JOIN decisions d ON d.id = r.decision_id JOIN messages m ON m.id = d.message_id
            ), outbox_rows AS (
                INSERT INTO outbox (id, tenant_id, review_id, channel, target, event, payload, dedupe_key, state, attempts,
                    next_attempt_at, created_at)
                SELECT n.id, $6, n.review_id, n.channel, n.target, n.event, n.payload, n.dedupe_key, 'pending', 0, $4, $4
                FROM resolved, jsonb_to_recordset($18::jsonb) AS n(id uuid, review_id uuid, channel text, target text,
                    event text, payload jsonb, dedupe_key text)
                ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
            )
            SELECT ",
            super::sql::review_columns!(),
            " FROM resolved"
        );
        let reply = r.reply_message.as_ref();
        let result = sqlx::query_as::<_, super::ReviewItem>(SQL)
            .bind(&r.action)
            .bind(&r.final_reply)
            .bind(&r.reviewer)
            .bind(r.now)
            .bind(r.review_id)
            .bind(tenant_id)
            .bind(r.expected_version)
            .bind(reply.map(|m| m.id))
            .bind(reply.map(|m| m.body.as_str()))
            .bind(
                reply
                    .and_then(|m| m.metadata.as_ref())
                    .map(sqlx::types::Json),
            )
            .bind(r.event.id)
            .bind(&r.event.actor)
            .bind(&r.event.kind)
            .bind(sqlx::types::Json(&r.event.data))
            .bind(r.feedback.id)
            .bind(&r.feedback.label_intent)
            .bind(reply.map(|m| m.role.as_str()))
            .bind(sqlx::types::Json(&r.notifications))
            .fetch_optional(&self.pool)
            .await;
        match result {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => None,
            Err(err) => Some(Err(err.into())),
        }
    }
}

super::sql::impl_store!(
    PostgresStore,
    Postgres,
    backend = Backend::Postgres,
    skip_locked = "FOR UPDATE SKIP LOCKED",
    for_update = "FOR UPDATE"
);
