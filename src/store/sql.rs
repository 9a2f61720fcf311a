//! The SQL shared by both backends. SQLite and Postgres accept the same `$n`
//! placeholders, `RETURNING`, `ON CONFLICT` and partial unique indexes, so one
//! body of SQL serves both; the macro instantiates it per backend with the few
//! clauses that differ (row locks, how a write transaction starts).

use serde_json::Value;
use sqlx::types::Json;

/// Normalises a unique-violation name across backends: Postgres reports the
/// constraint, SQLite only the columns.
pub(crate) fn conflict_name(err: &dyn sqlx::error::DatabaseError) -> String {
    if let Some(name) = err.constraint() {
        return name.to_string();
    }
    let msg = err.message();
    if msg.contains("messages.tenant_id, messages.idempotency_key") {
        "messages_idempotency".into()
    } else if msg.contains("review_items.conversation_id") {
        "review_items_one_open".into()
    } else if msg.contains("users.tenant_id, users.email") {
        "users_email".into()
    } else {
        msg.to_string()
    }
}

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern.
pub(crate) fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub(crate) fn json(value: &Value) -> Json<&Value> {
    Json(value)
}

/// Backend-specific shortcuts for the two hottest queue operations. `None`
/// means there is no shortcut (or it could not decide, e.g. the item is not
/// resolvable): the portable transaction then runs and has the last word.
#[async_trait::async_trait]
pub(crate) trait FastPaths {
    async fn fast_claim_next(
        &self,
        _tenant_id: uuid::Uuid,
        _claim: &super::Claim,
    ) -> Option<super::Result<Option<super::ReviewItem>>> {
        None
    }

    async fn fast_resolve(
        &self,
        _tenant_id: uuid::Uuid,
        _resolution: &super::Resolution,
    ) -> Option<super::Result<super::ReviewItem>> {
        None
    }
}

/// The columns of `ReviewItem`, as a literal so queries stay `&'static str`.
macro_rules! review_columns {
    () => {
        "id, tenant_id, conversation_id, decision_id, state, priority, sop_ref, reasons, draft, due_at, claimed_by, \
         lease_expires_at, resolution, final_reply, resolved_by, resolved_at, message_count, version, created_at, updated_at, \
         waiting_since"
    };
}
pub(crate) use review_columns;

/// A spot check with its decision and customer message, as `SpotCheck` reads it.
macro_rules! spot_check_select {
    () => {
        "SELECT s.id, s.decision_id, d.conversation_id, m.body AS text, d.intent AS routed_intent, d.confidence, d.sop_ref, \
         d.draft AS reply, s.created_at, s.label_intent, s.reviewer, s.labelled_at \
         FROM spot_checks s JOIN decisions d ON d.id = s.decision_id JOIN messages m ON m.id = d.message_id"
    };
}
pub(crate) use spot_check_select;

macro_rules! impl_store {
    ($store:ty, $db:ty, backend = $backend:expr, skip_locked = $skip_locked:literal, for_update = $for_update:literal) => {
        use $crate::store::sql::{conflict_name, json, like_escape, review_columns, spot_check_select, FastPaths};
        use sqlx::types::Json;
        use $crate::store::*;

        fn map_err(err: sqlx::Error) -> StoreError {
            match err {
                sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(conflict_name(db.as_ref())),
                other => StoreError::from(other),
            }
        }

        /// An action on an item needs the reviewer's live claim on its current version.
        fn check_held(item: &ReviewItem, reviewer: &str, now: DateTime<Utc>, expected_version: Option<i64>) -> Result<()> {
            if item.state == "resolved" {
                return Err(StoreError::Conflict("the item is already resolved".into()));
            }
            if item.state != "claimed" || item.claimed_by.as_deref() != Some(reviewer) {
                return Err(StoreError::Conflict("claim the item first".into()));
            }
            if item.lease_expires_at.is_none_or(|t| t < now) {
                return Err(StoreError::Conflict("the lease on this item has expired; claim it again".into()));
            }
            if let Some(expected) = expected_version.filter(|v| *v != item.version) {
                return Err(StoreError::Conflict(format!(
                    "the item changed since version {expected} (now {}); reload it",
                    item.version
                )));
            }
            Ok(())
        }

        /// A feedback row: the item's first customer message, what the router
        /// predicted, and what the reviewer's action says it was.
        #[allow(clippy::too_many_arguments)]
        async fn insert_feedback(
            tx: &mut sqlx::Transaction<'_, $db>,
            tenant_id: Uuid,
            item: &ReviewItem,
            feedback: &NewFeedback,
            action: &str,
            final_reply: Option<&str>,
            reviewer: &str,
            now: DateTime<Utc>,
        ) -> Result<()> {
            sqlx::query(
                "INSERT INTO feedback (id, tenant_id, review_id, decision_id, customer_text, predicted_intent, label_intent, sop_ref, \
                 action, draft, final_reply, reviewer, created_at) \
                 SELECT $1, $2, $3, d.id, m.body, d.intent, $4, $5, $6, $7, $8, $9, $10 \
                 FROM decisions d JOIN messages m ON m.id = d.message_id WHERE d.id = $11",
            )
            .bind(feedback.id)
            .bind(tenant_id)
            .bind(item.id)
            .bind(&feedback.label_intent)
            .bind(&item.sop_ref)
            .bind(action)
            .bind(&item.draft)
            .bind(final_reply)
            .bind(reviewer)
            .bind(now)
            .bind(item.decision_id)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        async fn insert_event(
            tx: &mut sqlx::Transaction<'_, $db>,
            tenant_id: Uuid,
            review_id: Uuid,
            actor: &str,
            kind: &str,
            data: &Value,
            now: DateTime<Utc>,
        ) -> Result<()> {
            sqlx::query(
                "INSERT INTO review_events (id, tenant_id, review_id, actor, kind, data, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(Uuid::now_v7())
            .bind(tenant_id)
            .bind(review_id)
            .bind(actor)
            .bind(kind)
            .bind(json(data))
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
            Ok(())
        }

        async fn insert_message(
            tx: &mut sqlx::Transaction<'_, $db>,
            tenant_id: Uuid,
            conversation_id: Uuid,
            msg: &NewMessage,
        ) -> Result<()> {
            let (key, hash, response) = match &msg.idempotency {
                Some(i) => (Some(i.key.as_str()), Some(i.request_hash.as_str()), Some(json(&i.response))),
                None => (None, None, None),
            };
            sqlx::query(
                "INSERT INTO messages (id, tenant_id, conversation_id, role, body, metadata, idempotency_key, request_hash, response, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(msg.id)
            .bind(tenant_id)
            .bind(conversation_id)
            .bind(msg.role.as_str())
            .bind(&msg.body)
            .bind(msg.metadata.as_ref().map(json))
            .bind(key)
            .bind(hash)
            .bind(response)
            .bind(msg.created_at)
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
            Ok(())
        }

        /// Writes outbox rows; one whose dedupe key exists already is skipped.
        async fn insert_notifications(
            tx: &mut sqlx::Transaction<'_, $db>,
            tenant_id: Uuid,
            rows: &[NewNotification],
            now: DateTime<Utc>,
        ) -> Result<u64> {
            let mut written = 0;
            for n in rows {
                written += sqlx::query(
                    "INSERT INTO outbox (id, tenant_id, review_id, channel, target, event, payload, dedupe_key, state, attempts, \
                     next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, $9) \
                     ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING",
                )
                .bind(n.id)
                .bind(tenant_id)
                .bind(n.review_id)
                .bind(&n.channel)
                .bind(&n.target)
                .bind(&n.event)
                .bind(json(&n.payload))
                .bind(&n.dedupe_key)
                .bind(now)
                .execute(&mut **tx)
                .await
                .map_err(map_err)?
                .rows_affected();
            }
            Ok(written)
        }

        async fn lock_review(tx: &mut sqlx::Transaction<'_, $db>, tenant_id: Uuid, id: Uuid) -> Result<ReviewItem> {
            let sql = concat!("SELECT ", review_columns!(), " FROM review_items WHERE tenant_id = $1 AND id = $2 ", $for_update);
            sqlx::query_as::<_, ReviewItem>(sql)
                .bind(tenant_id)
                .bind(id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(map_err)?
                .ok_or(StoreError::NotFound)
        }

        /// Gives `item` to the claimant, logging a takeover of an expired lease.
        async fn take_claim(
            tx: &mut sqlx::Transaction<'_, $db>,
            item: &ReviewItem,
            claim: &Claim,
        ) -> Result<ReviewItem> {
            if item.state == "claimed" {
                if let Some(previous) = item.claimed_by.as_deref().filter(|p| *p != claim.reviewer) {
                    let data = serde_json::json!({ "previous": previous, "lease_expires_at": item.lease_expires_at });
                    insert_event(tx, item.tenant_id, item.id, "system", "lease_expired", &data, claim.now).await?;
                }
            }
            let sql = concat!(
                    "UPDATE review_items SET state = 'claimed', claimed_by = $1, lease_expires_at = $2, version = version + 1, updated_at = $3 \
                 WHERE id = $4 RETURNING ",
                    review_columns!()
                );
            let updated = sqlx::query_as::<_, ReviewItem>(sql)
                .bind(&claim.reviewer)
                .bind(claim.lease_until)
                .bind(claim.now)
                .bind(item.id)
                .fetch_one(&mut **tx)
                .await
                .map_err(map_err)?;
            let data = serde_json::json!({ "lease_expires_at": claim.lease_until, "version": updated.version });
            insert_event(tx, item.tenant_id, item.id, &claim.reviewer, "claimed", &data, claim.now).await?;
            Ok(updated)
        }

        #[async_trait::async_trait]
        impl Store for $store {
            fn backend(&self) -> Backend {
                $backend
            }

            async fn migrate(&self) -> Result<()> {
                self.migrator().run(&self.pool).await?;
                Ok(())
            }

            async fn tenant_count(&self) -> Result<i64> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tenants").fetch_one(&self.pool).await?;
                Ok(n)
            }

            async fn ensure_tenant(&self, name: &str) -> Result<(Tenant, bool)> {
                let created = sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
                    .bind(Uuid::now_v7())
                    .bind(name)
                    .bind(Utc::now())
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
                    == 1;
                let tenant = sqlx::query_as::<_, Tenant>("SELECT id, name, created_at FROM tenants WHERE name = $1")
                    .bind(name)
                    .fetch_one(&self.pool)
                    .await?;
                Ok((tenant, created))
            }

            async fn insert_api_key(&self, tenant_id: Uuid, prefix: &str, key_hash: &str) -> Result<()> {
                sqlx::query("INSERT INTO api_keys (id, tenant_id, prefix, key_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(Uuid::now_v7())
                    .bind(tenant_id)
                    .bind(prefix)
                    .bind(key_hash)
                    .bind(Utc::now())
                    .execute(&self.pool)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            async fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>> {
                Ok(sqlx::query_as::<_, Tenant>("SELECT id, name, created_at FROM tenants WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn create_user(&self, user: &User) -> Result<()> {
                sqlx::query(
                    "INSERT INTO users (id, tenant_id, email, role, password_hash, created_at, disabled_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(user.id)
                .bind(user.tenant_id)
                .bind(&user.email)
                .bind(&user.role)
                .bind(&user.password_hash)
                .bind(user.created_at)
                .bind(user.disabled_at)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn user_by_email(&self, tenant_id: Uuid, email: &str) -> Result<Option<User>> {
                Ok(sqlx::query_as::<_, User>(
                    "SELECT id, tenant_id, email, role, password_hash, created_at, disabled_at, failed_logins, locked_until FROM users \
                     WHERE tenant_id = $1 AND email = $2",
                )
                .bind(tenant_id)
                .bind(email)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn list_users(&self, tenant_id: Uuid) -> Result<Vec<User>> {
                Ok(sqlx::query_as::<_, User>(
                    "SELECT id, tenant_id, email, role, password_hash, created_at, disabled_at, failed_logins, locked_until FROM users \
                     WHERE tenant_id = $1 ORDER BY email",
                )
                .bind(tenant_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn set_user_password(&self, tenant_id: Uuid, email: &str, password_hash: &str) -> Result<bool> {
                Ok(sqlx::query("UPDATE users SET password_hash = $3, failed_logins = 0, locked_until = NULL WHERE tenant_id = $1 AND email = $2")
                    .bind(tenant_id)
                    .bind(email)
                    .bind(password_hash)
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
                    == 1)
            }

            async fn user_by_id(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<User>> {
                Ok(sqlx::query_as::<_, User>(
                    "SELECT id, tenant_id, email, role, password_hash, created_at, disabled_at, failed_logins, locked_until FROM users \
                     WHERE tenant_id = $1 AND id = $2",
                )
                .bind(tenant_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn set_user_disabled(&self, tenant_id: Uuid, email: &str, disabled_at: Option<DateTime<Utc>>) -> Result<bool> {
                Ok(sqlx::query("UPDATE users SET disabled_at = $3 WHERE tenant_id = $1 AND email = $2")
                    .bind(tenant_id)
                    .bind(email)
                    .bind(disabled_at)
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
                    == 1)
            }

            async fn record_failed_login(&self, user_id: Uuid) -> Result<i32> {
                Ok(sqlx::query_scalar::<_, i32>(
                    "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = $1 RETURNING failed_logins",
                )
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn lock_user(&self, user_id: Uuid, until: DateTime<Utc>) -> Result<()> {
                sqlx::query("UPDATE users SET locked_until = $2 WHERE id = $1")
                    .bind(user_id)
                    .bind(until)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn clear_failed_logins(&self, user_id: Uuid) -> Result<()> {
                sqlx::query("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1 AND (failed_logins <> 0 OR locked_until IS NOT NULL)")
                    .bind(user_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn create_session(&self, session: &NewSession) -> Result<()> {
                sqlx::query(
                    "INSERT INTO console_sessions (token_hash, tenant_id, user_id, csrf_token, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&session.token_hash)
                .bind(session.tenant_id)
                .bind(session.user_id)
                .bind(&session.csrf_token)
                .bind(session.created_at)
                .bind(session.expires_at)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
                Ok(())
            }

            async fn session(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<Session>> {
                #[derive(sqlx::FromRow)]
                struct Row {
                    #[sqlx(flatten)]
                    user: User,
                    csrf_token: String,
                    expires_at: DateTime<Utc>,
                }
                let row = sqlx::query_as::<_, Row>(
                    "SELECT u.id, u.tenant_id, u.email, u.role, u.password_hash, u.created_at, u.disabled_at, u.failed_logins, \
                     u.locked_until, s.csrf_token, s.expires_at FROM console_sessions s JOIN users u ON u.id = s.user_id \
                     WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.disabled_at IS NULL",
                )
                .bind(token_hash)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|r| Session { user: r.user, csrf_token: r.csrf_token, expires_at: r.expires_at }))
            }

            async fn delete_session(&self, token_hash: &str) -> Result<()> {
                sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
                    .bind(token_hash)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_user_sessions(&self, user_id: Uuid) -> Result<()> {
                sqlx::query("DELETE FROM console_sessions WHERE user_id = $1")
                    .bind(user_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64> {
                Ok(sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await?
                    .rows_affected())
            }

            async fn tenant_for_key(&self, key_hash: &str) -> Result<Option<Tenant>> {
                Ok(sqlx::query_as::<_, Tenant>(
                    "SELECT t.id, t.name, t.created_at FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
                     WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
                )
                .bind(key_hash)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn record_sop_versions(&self, versions: &[SopVersionRecord]) -> Result<()> {
                let (_writer, mut tx) = self.begin_write().await?;
                let now = Utc::now();
                for v in versions {
                    sqlx::query(
                        "INSERT INTO sop_versions (sop_id, version, hash, status, agent, title, content, first_seen) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (sop_id, version, hash) DO UPDATE SET status = excluded.status",
                    )
                    .bind(&v.sop_id)
                    .bind(v.version)
                    .bind(&v.hash)
                    .bind(&v.status)
                    .bind(&v.agent)
                    .bind(&v.title)
                    .bind(&v.content)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn sop_version_hashes(&self, sop_id: &str) -> Result<Vec<(i64, String)>> {
                Ok(sqlx::query_as("SELECT version, hash FROM sop_versions WHERE sop_id = $1 ORDER BY version, first_seen")
                    .bind(sop_id)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn router_model(&self, version: &str) -> Result<Option<Vec<u8>>> {
                let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT model FROM router_models WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.0))
            }

            async fn save_router_model(&self, m: &RouterModelRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO router_models (version, examples, labels, metrics, model, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (version) DO NOTHING",
                )
                .bind(&m.version)
                .bind(m.examples)
                .bind(m.labels)
                .bind(json(&m.metrics))
                .bind(&m.model)
                .bind(Utc::now())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn prune_router_models(&self, keep: i64) -> Result<u64> {
                Ok(sqlx::query(
                    "DELETE FROM router_models WHERE version NOT IN \
                     (SELECT version FROM router_models ORDER BY created_at DESC, version LIMIT $1) \
                     AND version NOT IN (SELECT version FROM router_models WHERE promoted_at IS NOT NULL \
                     ORDER BY promoted_at DESC, version LIMIT 1) \
                     AND pinned_at IS NULL",
                )
                .bind(keep)
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            async fn promote_router_model(&self, version: &str, at: DateTime<Utc>) -> Result<bool> {
                Ok(sqlx::query("UPDATE router_models SET promoted_at = $2 WHERE version = $1")
                    .bind(version)
                    .bind(at)
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
                    == 1)
            }

            async fn promoted_router_model(&self) -> Result<Option<String>> {
                let row: Option<(String,)> = sqlx::query_as(
                    "SELECT version FROM router_models WHERE promoted_at IS NOT NULL \
                     ORDER BY promoted_at DESC, version LIMIT 1",
                )
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|r| r.0))
            }

            async fn pin_router_model(&self, version: &str, at: DateTime<Utc>, reason: Option<&str>) -> Result<bool> {
                let (_writer, mut tx) = self.begin_write().await?;
                let found = sqlx::query(
                    "UPDATE router_models SET pinned_at = $2, promoted_at = $2, pin_reason = $3 WHERE version = $1",
                )
                .bind(version)
                .bind(at)
                .bind(reason)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !found {
                    return Ok(false);
                }
                sqlx::query(
                    "UPDATE router_models SET pinned_at = NULL, pin_reason = NULL WHERE pinned_at IS NOT NULL AND version <> $1",
                )
                .bind(version)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn unpin_router_model(&self) -> Result<Option<String>> {
                let unpinned: Vec<(String,)> = sqlx::query_as(
                    "UPDATE router_models SET pinned_at = NULL, pin_reason = NULL WHERE pinned_at IS NOT NULL RETURNING version",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(unpinned.into_iter().next().map(|r| r.0))
            }

            async fn pinned_router_model(&self) -> Result<Option<String>> {
                let row: Option<(String,)> = sqlx::query_as(
                    "SELECT version FROM router_models WHERE pinned_at IS NOT NULL \
                     ORDER BY pinned_at DESC, version LIMIT 1",
                )
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|r| r.0))
            }

            async fn router_models(&self, limit: i64) -> Result<Vec<RouterModelSummary>> {
                Ok(sqlx::query_as::<_, RouterModelSummary>(
                    "SELECT version, examples, labels, metrics, created_at, promoted_at, pinned_at, pin_reason FROM router_models \
                     ORDER BY created_at DESC, version LIMIT $1",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn try_lease(&self, name: &str, holder: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<bool> {
                // Lapsed leases of other names go too: a name is often used once
                // (a model version), and its row would otherwise stay forever.
                sqlx::query("DELETE FROM leases WHERE expires_at <= $1 AND name <> $2")
                    .bind(now)
                    .bind(name)
                    .execute(&self.pool)
                    .await?;
                let taken = sqlx::query(
                    "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                     WHERE leases.holder = excluded.holder OR leases.expires_at <= $4",
                )
                .bind(name)
                .bind(holder)
                .bind(until)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected();
                Ok(taken == 1)
            }

            async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
                sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                    .bind(name)
                    .bind(holder)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn idempotent_replay(&self, tenant_id: Uuid, key: &str) -> Result<Option<IdempotentReplay>> {
                let row: Option<(Option<String>, Option<Json<Value>>)> = sqlx::query_as(
                    "SELECT request_hash, response FROM messages WHERE tenant_id = $1 AND idempotency_key = $2",
                )
                .bind(tenant_id)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|(hash, response)| IdempotentReplay {
                    request_hash: hash.unwrap_or_default(),
                    response: response.map(|j| j.0).unwrap_or(Value::Null),
                }))
            }

            async fn conversation(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<Conversation>> {
                Ok(sqlx::query_as::<_, Conversation>(
                    "SELECT id, tenant_id, customer_id, customer_name, customer_email, channel, created_at, updated_at \
                     FROM conversations WHERE tenant_id = $1 AND id = $2",
                )
                .bind(tenant_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn open_review_for_conversation(&self, tenant_id: Uuid, conversation_id: Uuid) -> Result<Option<ReviewItem>> {
                let sql = concat!("SELECT ", review_columns!(), " FROM review_items WHERE tenant_id = $1 AND conversation_id = $2 AND state <> 'resolved'");
                Ok(sqlx::query_as::<_, ReviewItem>(sql)
                    .bind(tenant_id)
                    .bind(conversation_id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn record_exchange(&self, ex: &Exchange) -> Result<()> {
                let (_writer, mut tx) = self.begin_write().await?;
                let now = ex.inbound.created_at;
                match &ex.new_conversation {
                    Some(c) => {
                        sqlx::query(
                            "INSERT INTO conversations (id, tenant_id, customer_id, customer_name, customer_email, channel, created_at, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        )
                        .bind(c.id)
                        .bind(c.tenant_id)
                        .bind(&c.customer_id)
                        .bind(&c.customer_name)
                        .bind(&c.customer_email)
                        .bind(&c.channel)
                        .bind(c.created_at)
                        .bind(c.updated_at)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    }
                    None => {
                        sqlx::query("UPDATE conversations SET updated_at = $1 WHERE id = $2 AND tenant_id = $3")
                            .bind(now)
                            .bind(ex.conversation_id)
                            .bind(ex.tenant_id)
                            .execute(&mut *tx)
                            .await
                            .map_err(map_err)?;
                    }
                }
                insert_message(&mut tx, ex.tenant_id, ex.conversation_id, &ex.inbound).await?;
                let d = &ex.decision;
                sqlx::query(
                    "INSERT INTO decisions (id, tenant_id, conversation_id, message_id, intent, confidence, top_intents, flags, sop_ref, \
                     model_version, outcome, reasons, draft, timings, llm, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                )
                .bind(d.id)
                .bind(ex.tenant_id)
                .bind(d.conversation_id)
                .bind(d.message_id)
                .bind(&d.intent)
                .bind(d.confidence)
                .bind(&d.top_intents)
                .bind(&d.flags)
                .bind(&d.sop_ref)
                .bind(&d.model_version)
                .bind(&d.outcome)
                .bind(&d.reasons)
                .bind(&d.draft)
                .bind(&d.timings)
                .bind(&d.llm)
                .bind(d.created_at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                match &ex.review {
                    ReviewPlan::None => {}
                    ReviewPlan::Create(item) => {
                        sqlx::query(
                            "INSERT INTO review_items (id, tenant_id, conversation_id, decision_id, state, priority, sop_ref, reasons, draft, \
                             due_at, message_count, version, created_at, updated_at) \
                             VALUES ($1, $2, $3, $4, 'open', $5, $6, $7, $8, $9, 1, 1, $10, $10)",
                        )
                        .bind(item.id)
                        .bind(ex.tenant_id)
                        .bind(ex.conversation_id)
                        .bind(d.id)
                        .bind(item.priority)
                        .bind(&d.sop_ref)
                        .bind(json(&item.reasons))
                        .bind(&item.draft)
                        .bind(item.due_at)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                        let data = serde_json::json!({ "decision_id": d.id, "reasons": item.reasons, "priority": item.priority });
                        insert_event(&mut tx, ex.tenant_id, item.id, "system", "created", &data, now).await?;
                    }
                    ReviewPlan::Join { review_id, priority, resume_due_at } => {
                        let joined = sqlx::query(
                            "UPDATE review_items SET message_count = message_count + 1, version = version + 1, updated_at = $1, \
                             priority = CASE WHEN priority < $4 THEN $4 ELSE priority END, waiting_since = NULL, \
                             due_at = COALESCE($5, due_at) \
                             WHERE id = $2 AND tenant_id = $3 AND state <> 'resolved'",
                        )
                        .bind(now)
                        .bind(review_id)
                        .bind(ex.tenant_id)
                        .bind(priority)
                        .bind(resume_due_at)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?
                        .rows_affected();
                        if joined == 0 {
                            return Err(StoreError::Conflict("review_resolved".into()));
                        }
                        let data = serde_json::json!({ "message_id": ex.inbound.id, "decision_id": d.id, "flags": d.flags.0 });
                        insert_event(&mut tx, ex.tenant_id, *review_id, "customer", "customer_message", &data, now).await?;
                    }
                }
                if let Some(reply) = &ex.reply {
                    insert_message(&mut tx, ex.tenant_id, ex.conversation_id, reply).await?;
                }
                insert_notifications(&mut tx, ex.tenant_id, &ex.notifications, now).await?;
                if let Some(id) = ex.spot_check {
                    sqlx::query("INSERT INTO spot_checks (id, tenant_id, decision_id, created_at) VALUES ($1, $2, $3, $4)")
                        .bind(id)
                        .bind(ex.tenant_id)
                        .bind(d.id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn conversation_messages(&self, tenant_id: Uuid, conversation_id: Uuid) -> Result<Vec<Message>> {
                Ok(sqlx::query_as::<_, Message>(
                    "SELECT id, conversation_id, role, body, created_at FROM messages \
                     WHERE tenant_id = $1 AND conversation_id = $2 ORDER BY created_at, id",
                )
                .bind(tenant_id)
                .bind(conversation_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn decision(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<Decision>> {
                Ok(sqlx::query_as::<_, Decision>(
                    "SELECT id, conversation_id, message_id, intent, confidence, top_intents, flags, sop_ref, model_version, outcome, \
                     reasons, draft, timings, llm, created_at FROM decisions WHERE tenant_id = $1 AND id = $2",
                )
                .bind(tenant_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn list_reviews(&self, tenant_id: Uuid, filter: &ReviewFilter, now: DateTime<Utc>) -> Result<Vec<ReviewItem>> {
                // $2 (now) is bound in every variant so that one bind list serves all.
                let sql = match filter.state {
                    None => concat!(
                        "SELECT ", review_columns!(),
                        " FROM review_items WHERE tenant_id = $1 AND state <> 'resolved' AND $2 IS NOT NULL \
                         ORDER BY priority DESC, due_at, created_at LIMIT $3"
                    ),
                    Some(ReviewState::Open) => concat!(
                        "SELECT ", review_columns!(),
                        " FROM review_items WHERE tenant_id = $1 \
                         AND ((state = 'open' AND waiting_since IS NULL) OR (state = 'claimed' AND lease_expires_at < $2)) \
                         ORDER BY priority DESC, due_at, created_at LIMIT $3"
                    ),
                    Some(ReviewState::Waiting) => concat!(
                        "SELECT ", review_columns!(),
                        " FROM review_items WHERE tenant_id = $1 AND state = 'open' AND waiting_since IS NOT NULL AND $2 IS NOT NULL \
                         ORDER BY priority DESC, due_at, created_at LIMIT $3"
                    ),
                    Some(ReviewState::Claimed) => concat!(
                        "SELECT ", review_columns!(),
                        " FROM review_items WHERE tenant_id = $1 AND state = 'claimed' AND lease_expires_at >= $2 \
                         ORDER BY priority DESC, due_at, created_at LIMIT $3"
                    ),
                    Some(ReviewState::Resolved) => concat!(
                        "SELECT ", review_columns!(),
                        " FROM review_items WHERE tenant_id = $1 AND state = 'resolved' AND $2 IS NOT NULL ORDER BY resolved_at DESC LIMIT $3"
                    ),
                };
                Ok(sqlx::query_as::<_, ReviewItem>(sql)
                    .bind(tenant_id)
                    .bind(now)
                    .bind(filter.limit)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn review(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<ReviewItem>> {
                let sql = concat!("SELECT ", review_columns!(), " FROM review_items WHERE tenant_id = $1 AND id = $2");
                Ok(sqlx::query_as::<_, ReviewItem>(sql)
                    .bind(tenant_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn claim_next_review(&self, tenant_id: Uuid, claim: &Claim) -> Result<Option<ReviewItem>> {
                if let Some(result) = self.fast_claim_next(tenant_id, claim).await {
                    return result;
                }
                let (_writer, mut tx) = self.begin_write().await?;
                // Two indexed lookups instead of one OR that sorts the whole
                // queue: the best open item and the best expired claim; the
                // more urgent of the two is taken (the other's lock ends with
                // the transaction).
                let open = concat!(
                    "SELECT ",
                    review_columns!(),
                    " FROM review_items WHERE tenant_id = $1 AND state = 'open' AND waiting_since IS NULL AND $2 IS NOT NULL \
                     ORDER BY priority DESC, due_at, created_at LIMIT 1 ",
                    $skip_locked
                );
                let expired = concat!(
                    "SELECT ",
                    review_columns!(),
                    " FROM review_items WHERE tenant_id = $1 AND state = 'claimed' AND lease_expires_at < $2 \
                     ORDER BY priority DESC, due_at, created_at LIMIT 1 ",
                    $skip_locked
                );
                let mut best: Option<ReviewItem> = None;
                for sql in [open, expired] {
                    let candidate = sqlx::query_as::<_, ReviewItem>(sql)
                        .bind(tenant_id)
                        .bind(claim.now)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let urgency = |i: &ReviewItem| (std::cmp::Reverse(i.priority), i.due_at, i.created_at);
                    best = match (best, candidate) {
                        (Some(b), Some(c)) if urgency(&c) < urgency(&b) => Some(c),
                        (None, c) => c,
                        (b, _) => b,
                    };
                }
                let Some(item) = best else {
                    return Ok(None);
                };
                let claimed = take_claim(&mut tx, &item, claim).await?;
                tx.commit().await?;
                Ok(Some(claimed))
            }

            async fn claim_review(&self, tenant_id: Uuid, id: Uuid, claim: &Claim) -> Result<ReviewItem> {
                let (_writer, mut tx) = self.begin_write().await?;
                let item = lock_review(&mut tx, tenant_id, id).await?;
                match item.state.as_str() {
                    "resolved" => return Err(StoreError::Conflict("the item is already resolved".into())),
                    "claimed" if item.claimed_by.as_deref() != Some(claim.reviewer.as_str())
                        && item.lease_expires_at.is_some_and(|t| t >= claim.now) =>
                    {
                        return Err(StoreError::Conflict(format!(
                            "the item is claimed by {}",
                            item.claimed_by.as_deref().unwrap_or("another reviewer")
                        )));
                    }
                    // A repeated claim (double click, retry) by the holder only extends
                    // the lease: no new version, so a versioned resolve still matches.
                    "claimed" if item.lease_expires_at.is_some_and(|t| t >= claim.now) => {
                        let renewed = sqlx::query_as::<_, ReviewItem>(concat!(
                            "UPDATE review_items SET lease_expires_at = $1, updated_at = $2 WHERE id = $3 RETURNING ",
                            review_columns!()
                        ))
                        .bind(claim.lease_until)
                        .bind(claim.now)
                        .bind(item.id)
                        .fetch_one(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        return Ok(renewed);
                    }
                    _ => {}
                }
                let claimed = take_claim(&mut tx, &item, claim).await?;
                tx.commit().await?;
                Ok(claimed)
            }

            async fn renew_review_lease(&self, tenant_id: Uuid, id: Uuid, claim: &Claim) -> Result<ReviewItem> {
                let sql = concat!(
                    "UPDATE review_items SET lease_expires_at = $1, updated_at = $2 \
                     WHERE tenant_id = $3 AND id = $4 AND state = 'claimed' AND claimed_by = $5 AND lease_expires_at >= $2 RETURNING ",
                    review_columns!()
                );
                sqlx::query_as::<_, ReviewItem>(sql)
                    .bind(claim.lease_until)
                    .bind(claim.now)
                    .bind(tenant_id)
                    .bind(id)
                    .bind(&claim.reviewer)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| StoreError::Conflict("the lease is not held by this reviewer".into()))
            }

            async fn release_review(&self, tenant_id: Uuid, id: Uuid, reviewer: &str, now: DateTime<Utc>) -> Result<ReviewItem> {
                let (_writer, mut tx) = self.begin_write().await?;
                let item = lock_review(&mut tx, tenant_id, id).await?;
                if item.state != "claimed" || item.claimed_by.as_deref() != Some(reviewer) {
                    return Err(StoreError::Conflict("the item is not claimed by this reviewer".into()));
                }
                let sql = concat!(
                    "UPDATE review_items SET state = 'open', claimed_by = NULL, lease_expires_at = NULL, version = version + 1, \
                     updated_at = $1 WHERE id = $2 RETURNING ",
                    review_columns!()
                );
                let released = sqlx::query_as::<_, ReviewItem>(sql).bind(now).bind(id).fetch_one(&mut *tx).await?;
                insert_event(&mut tx, tenant_id, id, reviewer, "released", &serde_json::json!({}), now).await?;
                tx.commit().await?;
                Ok(released)
            }

            async fn resolve_review(&self, tenant_id: Uuid, r: &Resolution) -> Result<ReviewItem> {
                if let Some(result) = self.fast_resolve(tenant_id, r).await {
                    return result;
                }
                let (_writer, mut tx) = self.begin_write().await?;
                let item = lock_review(&mut tx, tenant_id, r.review_id).await?;
                check_held(&item, &r.reviewer, r.now, r.expected_version)?;
                let sql = concat!(
                    "UPDATE review_items SET state = 'resolved', resolution = $1, final_reply = $2, resolved_by = $3, resolved_at = $4, \
                     lease_expires_at = NULL, version = version + 1, updated_at = $4 WHERE id = $5 RETURNING ",
                    review_columns!()
                );
                let resolved = sqlx::query_as::<_, ReviewItem>(sql)
                    .bind(&r.action)
                    .bind(&r.final_reply)
                    .bind(&r.reviewer)
                    .bind(r.now)
                    .bind(r.review_id)
                    .fetch_one(&mut *tx)
                    .await?;
                if let Some(reply) = &r.reply_message {
                    insert_message(&mut tx, tenant_id, item.conversation_id, reply).await?;
                    sqlx::query("UPDATE conversations SET updated_at = $1 WHERE id = $2")
                        .bind(r.now)
                        .bind(item.conversation_id)
                        .execute(&mut *tx)
                        .await?;
                }
                insert_event(&mut tx, tenant_id, r.review_id, &r.event.actor, &r.event.kind, &r.event.data, r.now).await?;
                insert_feedback(&mut tx, tenant_id, &item, &r.feedback, &r.action, r.final_reply.as_deref(), &r.reviewer, r.now).await?;
                insert_notifications(&mut tx, tenant_id, &r.notifications, r.now).await?;
                tx.commit().await?;
                Ok(resolved)
            }

            async fn assign_review(&self, tenant_id: Uuid, id: Uuid, actor: &str, claim: &Claim) -> Result<ReviewItem> {
                let (_writer, mut tx) = self.begin_write().await?;
                let item = lock_review(&mut tx, tenant_id, id).await?;
                if item.state == "resolved" {
                    return Err(StoreError::Conflict("the item is already resolved".into()));
                }
                let sql = concat!(
                    "UPDATE review_items SET state = 'claimed', claimed_by = $1, lease_expires_at = $2, version = version + 1, \
                     updated_at = $3 WHERE id = $4 RETURNING ",
                    review_columns!()
                );
                let assigned = sqlx::query_as::<_, ReviewItem>(sql)
                    .bind(&claim.reviewer)
                    .bind(claim.lease_until)
                    .bind(claim.now)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                let previous = (item.state == "claimed").then_some(item.claimed_by.as_deref()).flatten();
                let data = serde_json::json!({
                    "to": claim.reviewer,
                    "previous": previous,
                    "lease_expires_at": claim.lease_until,
                    "version": assigned.version,
                });
                insert_event(&mut tx, tenant_id, id, actor, "assigned", &data, claim.now).await?;
                tx.commit().await?;
                Ok(assigned)
            }

            async fn request_info(&self, tenant_id: Uuid, r: &InfoRequest) -> Result<ReviewItem> {
                let (_writer, mut tx) = self.begin_write().await?;
                let item = lock_review(&mut tx, tenant_id, r.review_id).await?;
                check_held(&item, &r.reviewer, r.now, r.expected_version)?;
                let sql = concat!(
                    "UPDATE review_items SET state = 'open', claimed_by = NULL, lease_expires_at = NULL, waiting_since = $1, \
                     version = version + 1, updated_at = $1 WHERE id = $2 RETURNING ",
                    review_columns!()
                );
                let waiting = sqlx::query_as::<_, ReviewItem>(sql)
                    .bind(r.now)
                    .bind(r.review_id)
                    .fetch_one(&mut *tx)
                    .await?;
                insert_message(&mut tx, tenant_id, item.conversation_id, &r.message).await?;
                sqlx::query("UPDATE conversations SET updated_at = $1 WHERE id = $2")
                    .bind(r.now)
                    .bind(item.conversation_id)
                    .execute(&mut *tx)
                    .await?;
                let data = serde_json::json!({ "message_id": r.message.id, "question": r.message.body, "version": item.version });
                insert_event(&mut tx, tenant_id, r.review_id, &r.reviewer, "info_requested", &data, r.now).await?;
                insert_notifications(&mut tx, tenant_id, &r.notifications, r.now).await?;
                tx.commit().await?;
                Ok(waiting)
            }

            async fn reroute_review(&self, tenant_id: Uuid, r: &Reroute) -> Result<ReviewItem> {
                let (_writer, mut tx) = self.begin_write().await?;
                let item = lock_review(&mut tx, tenant_id, r.review_id).await?;
                check_held(&item, &r.reviewer, r.now, r.expected_version)?;
                let sql = concat!(
                    "UPDATE review_items SET sop_ref = $1, draft = $2, priority = $3, due_at = $4, version = version + 1, \
                     updated_at = $5 WHERE id = $6 RETURNING ",
                    review_columns!()
                );
                let rerouted = sqlx::query_as::<_, ReviewItem>(sql)
                    .bind(&r.sop_ref)
                    .bind(&r.draft)
                    .bind(r.priority)
                    .bind(r.due_at)
                    .bind(r.now)
                    .bind(r.review_id)
                    .fetch_one(&mut *tx)
                    .await?;
                insert_event(&mut tx, tenant_id, r.review_id, &r.event.actor, &r.event.kind, &r.event.data, r.now).await?;
                insert_feedback(&mut tx, tenant_id, &item, &r.feedback, "reroute", None, &r.reviewer, r.now).await?;
                tx.commit().await?;
                Ok(rerouted)
            }

            async fn review_events(&self, tenant_id: Uuid, review_id: Uuid) -> Result<Vec<ReviewEvent>> {
                Ok(sqlx::query_as::<_, ReviewEvent>(
                    "SELECT id, review_id, actor, kind, data, created_at FROM review_events \
                     WHERE tenant_id = $1 AND review_id = $2 ORDER BY created_at, id",
                )
                .bind(tenant_id)
                .bind(review_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn enqueue_notifications(&self, tenant_id: Uuid, rows: &[NewNotification], now: DateTime<Utc>) -> Result<u64> {
                let (_writer, mut tx) = self.begin_write().await?;
                let written = insert_notifications(&mut tx, tenant_id, rows, now).await?;
                tx.commit().await?;
                Ok(written)
            }

            async fn claim_notifications(&self, now: DateTime<Utc>, lease_until: DateTime<Utc>, limit: i64) -> Result<Vec<Notification>> {
                let (_writer, mut tx) = self.begin_write().await?;
                let sql = concat!(
                    "UPDATE outbox SET locked_until = $2, attempts = attempts + 1 WHERE id IN (\
                     SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= $1 \
                     AND (locked_until IS NULL OR locked_until < $1) ORDER BY next_attempt_at LIMIT $3 ",
                    $skip_locked,
                    ") RETURNING id, tenant_id, review_id, channel, target, event, payload, state, attempts, next_attempt_at, \
                     last_error, created_at, delivered_at"
                );
                let rows = sqlx::query_as::<_, Notification>(sql)
                    .bind(now)
                    .bind(lease_until)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(rows)
            }

            async fn finish_notification(&self, id: Uuid, outcome: &DeliveryOutcome, now: DateTime<Utc>) -> Result<()> {
                let query = match outcome {
                    DeliveryOutcome::Delivered => sqlx::query(
                        "UPDATE outbox SET state = 'delivered', delivered_at = $2, locked_until = NULL, last_error = NULL WHERE id = $1",
                    )
                    .bind(id)
                    .bind(now),
                    DeliveryOutcome::Retry { at, error } => sqlx::query(
                        "UPDATE outbox SET next_attempt_at = $2, locked_until = NULL, last_error = $3 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(*at)
                    .bind(error.clone()),
                    DeliveryOutcome::Dead { error } => sqlx::query(
                        "UPDATE outbox SET state = 'dead', locked_until = NULL, last_error = $2 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(error.clone()),
                };
                let (_writer, mut tx) = self.begin_write().await?;
                query.execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn list_notifications(&self, tenant_id: Uuid, state: &str, limit: i64) -> Result<Vec<Notification>> {
                Ok(sqlx::query_as::<_, Notification>(
                    "SELECT id, tenant_id, review_id, channel, target, event, payload, state, attempts, next_attempt_at, \
                     last_error, created_at, delivered_at FROM outbox WHERE tenant_id = $1 AND state = $2 \
                     ORDER BY created_at DESC LIMIT $3",
                )
                .bind(tenant_id)
                .bind(state)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn retry_notification(&self, tenant_id: Uuid, id: Uuid, now: DateTime<Utc>) -> Result<bool> {
                let (_writer, mut tx) = self.begin_write().await?;
                let done = sqlx::query(
                    "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $3, locked_until = NULL \
                     WHERE tenant_id = $1 AND id = $2 AND state = 'dead'",
                )
                .bind(tenant_id)
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                tx.commit().await?;
                Ok(done)
            }

            async fn prune_notifications(&self, before: DateTime<Utc>) -> Result<u64> {
                let (_writer, mut tx) = self.begin_write().await?;
                let gone = sqlx::query("DELETE FROM outbox WHERE state = 'delivered' AND delivered_at < $1")
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(gone)
            }

            async fn notification_backlog(&self) -> Result<(i64, i64)> {
                Ok(sqlx::query_as::<_, (i64, i64)>(
                    "SELECT COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0), \
                     COALESCE(SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), 0) FROM outbox WHERE state <> 'delivered'",
                )
                .fetch_one(&self.pool)
                .await?)
            }

            async fn record_slack_message(&self, m: &SlackMessage) -> Result<()> {
                let (_writer, mut tx) = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO slack_messages (channel, ts, tenant_id, review_id, notification_id, event, created_at, shown_version) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                )
                .bind(&m.channel)
                .bind(&m.ts)
                .bind(m.tenant_id)
                .bind(m.review_id)
                .bind(m.notification_id)
                .bind(&m.event)
                .bind(m.created_at)
                .bind(m.shown_version)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn slack_messages(&self, tenant_id: Uuid, review_id: Uuid) -> Result<Vec<SlackMessage>> {
                Ok(sqlx::query_as::<_, SlackMessage>(
                    "SELECT channel, ts, tenant_id, review_id, notification_id, event, created_at, shown_version FROM slack_messages \
                     WHERE tenant_id = $1 AND review_id = $2 ORDER BY created_at, ts",
                )
                .bind(tenant_id)
                .bind(review_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn slack_message_for(&self, notification_id: Uuid) -> Result<Option<SlackMessage>> {
                Ok(sqlx::query_as::<_, SlackMessage>(
                    "SELECT channel, ts, tenant_id, review_id, notification_id, event, created_at, shown_version FROM slack_messages \
                     WHERE notification_id = $1",
                )
                .bind(notification_id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn mark_slack_shown(&self, channel: &str, ts: &str, version: i64) -> Result<()> {
                let (_writer, mut tx) = self.begin_write().await?;
                sqlx::query(
                    "UPDATE slack_messages SET shown_version = $3 WHERE channel = $1 AND ts = $2 AND shown_version < $3",
                )
                .bind(channel)
                .bind(ts)
                .bind(version)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn stale_slack_items(
                &self,
                posted_after: DateTime<Utc>,
                settled_before: DateTime<Utc>,
                limit: i64,
            ) -> Result<Vec<(Uuid, Uuid, i64)>> {
                Ok(sqlx::query_as::<_, (Uuid, Uuid, i64)>(
                    "SELECT DISTINCT r.tenant_id, r.id, r.version FROM slack_messages m \
                     JOIN review_items r ON r.id = m.review_id AND r.tenant_id = m.tenant_id \
                     WHERE m.created_at > $1 AND m.shown_version < r.version AND r.updated_at < $2 \
                     ORDER BY r.id LIMIT $3",
                )
                .bind(posted_after)
                .bind(settled_before)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn remember_slack_request(&self, signature: &str, now: DateTime<Utc>, forget_before: DateTime<Utc>) -> Result<bool> {
                let (_writer, mut tx) = self.begin_write().await?;
                sqlx::query("DELETE FROM slack_requests WHERE received_at < $1")
                    .bind(forget_before)
                    .execute(&mut *tx)
                    .await?;
                let new = sqlx::query(
                    "INSERT INTO slack_requests (signature, received_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(signature)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                tx.commit().await?;
                Ok(new)
            }

            async fn ladder_candidates(&self, horizon: DateTime<Utc>, limit: i64) -> Result<Vec<LadderCandidate>> {
                Ok(sqlx::query_as::<_, LadderCandidate>(
                    "SELECT id, tenant_id, sop_ref, priority, created_at, due_at, ladder_step FROM review_items \
                     WHERE state = 'open' AND ladder_step < 2 AND waiting_since IS NULL AND due_at <= $1 \
                     ORDER BY due_at LIMIT $2",
                )
                .bind(horizon)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn advance_ladder(&self, tenant_id: Uuid, review_id: Uuid, step: i32, rows: &[NewNotification], now: DateTime<Utc>) -> Result<bool> {
                let (_writer, mut tx) = self.begin_write().await?;
                let moved = sqlx::query(
                    "UPDATE review_items SET ladder_step = $3 WHERE tenant_id = $1 AND id = $2 AND ladder_step < $3",
                )
                .bind(tenant_id)
                .bind(review_id)
                .bind(step)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if moved {
                    insert_notifications(&mut tx, tenant_id, rows, now).await?;
                }
                tx.commit().await?;
                Ok(moved)
            }

            async fn tenant(&self, id: Uuid) -> Result<Option<Tenant>> {
                Ok(sqlx::query_as::<_, Tenant>("SELECT id, name, created_at FROM tenants WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn list_queue(&self, tenant_id: Uuid, q: &QueueQuery, now: DateTime<Utc>) -> Result<Vec<QueueRow>> {
                let mut sql = sqlx::QueryBuilder::<$db>::new(
                    "SELECT r.id, r.tenant_id, r.conversation_id, r.decision_id, r.state, r.priority, r.sop_ref, r.reasons, r.draft, \
                     r.due_at, r.claimed_by, r.lease_expires_at, r.resolution, r.final_reply, r.resolved_by, r.resolved_at, \
                     r.message_count, r.version, r.created_at, r.updated_at, r.waiting_since, d.intent, d.confidence, d.flags, \
                     m.body AS message FROM review_items r JOIN decisions d ON d.id = r.decision_id \
                     JOIN messages m ON m.id = d.message_id WHERE r.tenant_id = ",
                );
                sql.push_bind(tenant_id);
                match q.state {
                    None => sql.push(" AND r.state <> 'resolved'"),
                    Some(ReviewState::Open) => sql
                        .push(" AND ((r.state = 'open' AND r.waiting_since IS NULL) OR (r.state = 'claimed' AND r.lease_expires_at < ")
                        .push_bind(now)
                        .push("))"),
                    Some(ReviewState::Waiting) => sql.push(" AND r.state = 'open' AND r.waiting_since IS NOT NULL"),
                    Some(ReviewState::Claimed) => sql
                        .push(" AND r.state = 'claimed' AND r.lease_expires_at >= ")
                        .push_bind(now),
                    Some(ReviewState::Resolved) => sql.push(" AND r.state = 'resolved'"),
                };
                if let Some(ids) = &q.sop_ids {
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    sql.push(" AND (");
                    for (i, id) in ids.iter().enumerate() {
                        if i > 0 {
                            sql.push(" OR ");
                        }
                        sql.push("r.sop_ref LIKE ").push_bind(format!("{}@%", like_escape(id))).push(" ESCAPE '\\'");
                    }
                    sql.push(")");
                }
                if let Some(priority) = q.priority {
                    sql.push(" AND r.priority = ").push_bind(priority);
                }
                if q.breached {
                    sql.push(" AND r.waiting_since IS NULL AND r.due_at < ").push_bind(now);
                }
                if let Some(reviewer) = &q.claimed_by {
                    sql.push(" AND r.state = 'claimed' AND r.claimed_by = ")
                        .push_bind(reviewer.clone())
                        .push(" AND r.lease_expires_at >= ")
                        .push_bind(now);
                }
                if let Some(flag) = &q.flag {
                    // Flags are stored as [{"name": ..., "evidence": ...}]; the
                    // quoted name matches in either backend's JSON text.
                    sql.push(" AND CAST(d.flags AS TEXT) LIKE ")
                        .push_bind(format!("%\"{}\"%", like_escape(flag)))
                        .push(" ESCAPE '\\'");
                }
                sql.push(" ORDER BY r.priority DESC, r.due_at, r.created_at LIMIT ").push_bind(q.limit);
                Ok(sql.build_query_as::<QueueRow>().fetch_all(&self.pool).await?)
            }

            async fn queue_counts(&self, tenant_id: Uuid, reviewer: &str, now: DateTime<Utc>) -> Result<QueueCounts> {
                Ok(sqlx::query_as::<_, QueueCounts>(
                    "SELECT \
                     COALESCE(SUM(CASE WHEN (state = 'open' AND waiting_since IS NULL) OR (state = 'claimed' AND lease_expires_at < $2) THEN 1 ELSE 0 END), 0) AS open, \
                     COALESCE(SUM(CASE WHEN state = 'claimed' AND lease_expires_at >= $2 THEN 1 ELSE 0 END), 0) AS claimed, \
                     COALESCE(SUM(CASE WHEN state = 'open' AND waiting_since IS NOT NULL THEN 1 ELSE 0 END), 0) AS waiting, \
                     COALESCE(SUM(CASE WHEN due_at < $2 AND waiting_since IS NULL THEN 1 ELSE 0 END), 0) AS breached, \
                     COALESCE(SUM(CASE WHEN state = 'claimed' AND claimed_by = $3 AND lease_expires_at >= $2 THEN 1 ELSE 0 END), 0) AS mine \
                     FROM review_items WHERE tenant_id = $1 AND state <> 'resolved'",
                )
                .bind(tenant_id)
                .bind(now)
                .bind(reviewer)
                .fetch_one(&self.pool)
                .await?)
            }

            async fn queue_changed_at(&self, tenant_id: Uuid) -> Result<Option<DateTime<Utc>>> {
                Ok(sqlx::query_scalar::<_, DateTime<Utc>>(
                    "SELECT updated_at FROM review_items WHERE tenant_id = $1 ORDER BY updated_at DESC LIMIT 1",
                )
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn search_resolved(&self, tenant_id: Uuid, text: &str, limit: i64) -> Result<Vec<ReviewItem>> {
                let pattern = format!("%{}%", like_escape(&text.trim().to_lowercase()));
                let sql = concat!(
                    "SELECT ", review_columns!(),
                    " FROM review_items r WHERE r.tenant_id = $1 AND r.state = 'resolved' AND ($2 = '%%' \
                     OR LOWER(COALESCE(r.final_reply, '')) LIKE $2 ESCAPE '\\' \
                     OR LOWER(COALESCE(r.resolved_by, '')) LIKE $2 ESCAPE '\\' \
                     OR LOWER(COALESCE(r.sop_ref, '')) LIKE $2 ESCAPE '\\' \
                     OR EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = r.conversation_id AND LOWER(m.body) LIKE $2 ESCAPE '\\')) \
                     ORDER BY r.resolved_at DESC LIMIT $3"
                );
                Ok(sqlx::query_as::<_, ReviewItem>(sql)
                    .bind(tenant_id)
                    .bind(pattern)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn review_timelines(&self, tenant_id: Uuid, since: DateTime<Utc>) -> Result<Vec<ReviewTimeline>> {
                Ok(sqlx::query_as::<_, ReviewTimeline>(
                    "SELECT r.sop_ref, r.state, r.resolution, r.created_at, r.due_at, r.resolved_at, r.waiting_since, \
                     (SELECT MIN(e.created_at) FROM review_events e WHERE e.review_id = r.id AND e.kind IN ('claimed', 'assigned')) \
                     AS first_claimed_at FROM review_items r WHERE r.tenant_id = $1 AND (r.created_at >= $2 OR r.state <> 'resolved') \
                     ORDER BY r.created_at LIMIT 200000",
                )
                .bind(tenant_id)
                .bind(since)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn decision_outcomes(&self, tenant_id: Uuid, since: DateTime<Utc>) -> Result<Vec<OutcomeCount>> {
                Ok(sqlx::query_as::<_, OutcomeCount>(
                    "SELECT sop_ref, outcome, COUNT(*) AS count FROM decisions WHERE tenant_id = $1 AND created_at >= $2 \
                     GROUP BY sop_ref, outcome ORDER BY sop_ref, outcome",
                )
                .bind(tenant_id)
                .bind(since)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn review_feedback(&self, tenant_id: Uuid, review_id: Uuid) -> Result<Vec<Feedback>> {
                Ok(sqlx::query_as::<_, Feedback>(
                    "SELECT id, review_id, decision_id, customer_text, predicted_intent, label_intent, sop_ref, action, draft, \
                     final_reply, reviewer, created_at FROM feedback WHERE tenant_id = $1 AND review_id = $2 ORDER BY created_at, id",
                )
                .bind(tenant_id)
                .bind(review_id)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn labelled_messages(
                &self,
                tenant_id: Option<Uuid>,
                since: DateTime<Utc>,
            ) -> Result<Vec<LabelledMessage>> {
                macro_rules! labelled_sql {
                    ($tenant:literal) => {
                        concat!(
                            "SELECT * FROM (\
                             SELECT f.review_id AS id, 'review' AS source, t.name AS tenant, f.customer_text AS text, \
                             f.label_intent AS intent, f.predicted_intent AS routed_intent, d.confidence, f.action, f.reviewer, \
                             f.created_at AS labelled_at, f.id AS row_id \
                             FROM feedback f JOIN decisions d ON d.id = f.decision_id JOIN tenants t ON t.id = f.tenant_id \
                             WHERE f.label_intent IS NOT NULL AND f.created_at >= $1",
                            $tenant,
                            " AND NOT EXISTS (SELECT 1 FROM feedback g WHERE g.review_id = f.review_id AND g.label_intent IS NOT NULL \
                             AND (g.created_at > f.created_at OR (g.created_at = f.created_at AND g.id > f.id))) \
                             UNION ALL \
                             SELECT s.id, 'spot_check', t.name, m.body, s.label_intent, d.intent, d.confidence, 'label', \
                             COALESCE(s.reviewer, ''), s.labelled_at, s.id \
                             FROM spot_checks s JOIN decisions d ON d.id = s.decision_id JOIN messages m ON m.id = d.message_id \
                             JOIN tenants t ON t.id = s.tenant_id \
                             WHERE s.label_intent IS NOT NULL AND s.labelled_at >= $1",
                            $tenant,
                            ") labelled ORDER BY labelled_at, row_id"
                        )
                    };
                }
                let query = match tenant_id {
                    Some(tenant_id) => sqlx::query_as::<_, LabelledMessage>(labelled_sql!(" AND t.id = $2"))
                        .bind(since)
                        .bind(tenant_id),
                    None => sqlx::query_as::<_, LabelledMessage>(labelled_sql!("")).bind(since),
                };
                Ok(query.fetch_all(&self.pool).await?)
            }

            async fn spot_checks(&self, tenant_id: Uuid, labelled: bool, limit: i64) -> Result<Vec<SpotCheck>> {
                let sql = if labelled {
                    concat!(spot_check_select!(), " WHERE s.tenant_id = $1 AND s.labelled_at IS NOT NULL ORDER BY s.labelled_at DESC, s.id DESC LIMIT $2")
                } else {
                    concat!(spot_check_select!(), " WHERE s.tenant_id = $1 AND s.labelled_at IS NULL ORDER BY s.created_at, s.id LIMIT $2")
                };
                Ok(sqlx::query_as::<_, SpotCheck>(sql)
                    .bind(tenant_id)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn spot_check(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<SpotCheck>> {
                Ok(sqlx::query_as::<_, SpotCheck>(concat!(spot_check_select!(), " WHERE s.tenant_id = $1 AND s.id = $2"))
                    .bind(tenant_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn label_spot_check(
                &self,
                tenant_id: Uuid,
                id: Uuid,
                intent: &str,
                reviewer: &str,
                now: DateTime<Utc>,
            ) -> Result<Option<SpotCheck>> {
                let updated = sqlx::query(
                    "UPDATE spot_checks SET label_intent = $3, reviewer = $4, labelled_at = $5 WHERE tenant_id = $1 AND id = $2",
                )
                .bind(tenant_id)
                .bind(id)
                .bind(intent)
                .bind(reviewer)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(map_err)?
                .rows_affected();
                if updated == 0 {
                    return Ok(None);
                }
                self.spot_check(tenant_id, id).await
            }

            async fn spot_check_counts(&self, tenant_id: Uuid, since: DateTime<Utc>) -> Result<Vec<SopSpotChecks>> {
                Ok(sqlx::query_as::<_, SopSpotChecks>(
                    "SELECT d.sop_ref, COUNT(*) AS sampled, COUNT(s.labelled_at) AS labelled, \
                     COUNT(CASE WHEN s.label_intent = d.intent THEN 1 END) AS \"right\" \
                     FROM spot_checks s JOIN decisions d ON d.id = s.decision_id WHERE s.tenant_id = $1 AND s.created_at >= $2 \
                     GROUP BY d.sop_ref ORDER BY d.sop_ref",
                )
                .bind(tenant_id)
                .bind(since)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn feedback_examples(&self, limit: i64) -> Result<Vec<(String, String)>> {
                Ok(sqlx::query_as::<_, (String, String)>(
                    "SELECT label_intent, customer_text FROM (\
                     SELECT f.label_intent, f.customer_text, f.created_at AS labelled_at, f.id FROM feedback f \
                     WHERE f.label_intent IS NOT NULL AND NOT EXISTS (\
                     SELECT 1 FROM feedback g WHERE g.review_id = f.review_id AND g.label_intent IS NOT NULL \
                     AND (g.created_at > f.created_at OR (g.created_at = f.created_at AND g.id > f.id))) \
                     UNION ALL \
                     SELECT s.label_intent, m.body, s.labelled_at, s.id FROM spot_checks s \
                     JOIN decisions d ON d.id = s.decision_id JOIN messages m ON m.id = d.message_id \
                     WHERE s.label_intent IS NOT NULL \
                     ORDER BY labelled_at DESC, id DESC LIMIT $1) recent ORDER BY labelled_at, id",
                )
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
            }
        }
    };
}

pub(crate) use impl_store;
