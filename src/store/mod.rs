//! Persistence. The `Store` trait is the only way the rest of sopr reaches the
//! database; SQL lives here and nowhere else. Two implementations share one body
//! of portable SQL (see `sql.rs`): SQLite for zero-setup installs and Postgres for
//! production and replicas. Both pass the same conformance suite
//! (`tests/store_conformance.rs`).
//!
//! Methods are named after what the caller means (`claim_next_review`), and the
//! ones that must be atomic (`record_exchange`, `resolve_review`) take everything
//! they write in one call so that the implementation can use one transaction.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

mod postgres;
mod sql;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error")]
    Other(#[source] anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.constraint().unwrap_or("unique constraint").to_string())
            }
            other => StoreError::Other(other.into()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        StoreError::Other(err.into())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// Connects to the database the URL names. Does not run migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<Arc<dyn Store>> {
    match Backend::from_url(url) {
        Some(Backend::Sqlite) => Ok(Arc::new(SqliteStore::connect(url, max_connections).await?)),
        Some(Backend::Postgres) => Ok(Arc::new(
            PostgresStore::connect(url, max_connections).await?,
        )),
        None => Err(StoreError::Other(anyhow::anyhow!(
            "unsupported database URL scheme (expected sqlite:// or postgres://)"
        ))),
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A reviewer or admin of one tenant.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    /// `reviewer` or `admin`.
    pub role: String,
    #[serde(skip)]
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// Failed sign-ins in a row since the last successful one.
    pub failed_logins: i32,
    /// Sign-ins are refused until then.
    pub locked_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Conversation {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub customer_id: String,
    pub customer_name: Option<String>,
    pub customer_email: Option<String>,
    pub channel: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Who wrote a message in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Bot,
    Reviewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Bot => "bot",
            Role::Reviewer => "reviewer",
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub role: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// A message to insert. Inbound customer messages carry the idempotency data.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Uuid,
    pub role: Role,
    pub body: String,
    pub metadata: Option<Value>,
    pub idempotency: Option<Idempotency>,
    pub created_at: DateTime<Utc>,
}

/// The stored outcome of a request made with an `Idempotency-Key`.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
    pub response: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IdempotentReplay {
    pub request_hash: String,
    pub response: Value,
}

/// Why and how the pipeline decided one message. Written once, never updated.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Decision {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub message_id: Uuid,
    pub intent: Option<String>,
    pub confidence: f64,
    pub top_intents: sqlx::types::Json<Value>,
    pub flags: sqlx::types::Json<Value>,
    pub sop_ref: Option<String>,
    pub model_version: String,
    pub outcome: String,
    pub reasons: sqlx::types::Json<Value>,
    pub draft: Option<String>,
    pub timings: sqlx::types::Json<Value>,
    /// Calls to language models and which path routed and drafted; `None` when none was asked.
    pub llm: Option<sqlx::types::Json<Value>>,
    pub created_at: DateTime<Utc>,
}

/// States of a review item. `claimed` with an expired lease counts as open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewState {
    Open,
    Claimed,
    /// Open, but waiting for the customer to answer a reviewer's question.
    Waiting,
    Resolved,
}

impl ReviewState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewState::Open => "open",
            ReviewState::Claimed => "claimed",
            ReviewState::Waiting => "waiting",
            ReviewState::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ReviewItem {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub conversation_id: Uuid,
    pub decision_id: Uuid,
    pub state: String,
    pub priority: i32,
    pub sop_ref: Option<String>,
    pub reasons: sqlx::types::Json<Value>,
    pub draft: Option<String>,
    pub due_at: DateTime<Utc>,
    pub claimed_by: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub resolution: Option<String>,
    pub final_reply: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub message_count: i32,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set while the item waits for the customer's answer to a reviewer's question.
    pub waiting_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewReviewItem {
    pub id: Uuid,
    pub priority: i32,
    pub reasons: Value,
    pub draft: Option<String>,
    pub due_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ReviewEvent {
    pub id: Uuid,
    pub review_id: Uuid,
    pub actor: String,
    pub kind: String,
    pub data: sqlx::types::Json<Value>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Feedback {
    pub id: Uuid,
    pub review_id: Uuid,
    pub decision_id: Uuid,
    pub customer_text: String,
    pub predicted_intent: Option<String>,
    pub label_intent: Option<String>,
    pub sop_ref: Option<String>,
    pub action: String,
    pub draft: Option<String>,
    pub final_reply: Option<String>,
    pub reviewer: String,
    pub created_at: DateTime<Utc>,
}

/// A reviewer's label of a customer message beside what the router said:
/// one row of `sopr feedback export`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LabelledMessage {
    /// The review item's id, or the spot check's.
    pub id: Uuid,
    /// `review` (a review item's latest label) or `spot_check` (a labelled
    /// automatic answer).
    pub source: String,
    pub tenant: String,
    pub text: String,
    /// The intent the reviewer confirmed or gave (`oos`: no SOP covers it).
    pub intent: String,
    /// The intent the router chose, if any.
    pub routed_intent: Option<String>,
    /// The router's calibrated confidence in `routed_intent`.
    pub confidence: f64,
    /// What the reviewer did: `approve`, `edit`, `reroute`, … (`label` for a spot check)
    pub action: String,
    pub reviewer: String,
    pub labelled_at: DateTime<Utc>,
}

/// An automatically answered message sampled for a reviewer to label
/// (`review.spot_check_share`), with the router's decision and the reply sent.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SpotCheck {
    pub id: Uuid,
    pub decision_id: Uuid,
    pub conversation_id: Uuid,
    /// The customer's message.
    pub text: String,
    pub routed_intent: Option<String>,
    pub confidence: f64,
    pub sop_ref: Option<String>,
    /// The reply that went out.
    pub reply: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The reviewer's intent (`oos`: no SOP covers the message); `None` until labelled.
    pub label_intent: Option<String>,
    pub reviewer: Option<String>,
    pub labelled_at: Option<DateTime<Utc>>,
}

/// A tenant's spot checks over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SpotCheckCounts {
    pub sampled: i64,
    pub labelled: i64,
    /// Labelled with the intent the router chose.
    pub right: i64,
}

impl SpotCheckCounts {
    /// The counts of every SOP version together.
    pub fn total(groups: &[SopSpotChecks]) -> SpotCheckCounts {
        groups
            .iter()
            .fold(SpotCheckCounts::default(), |t, g| SpotCheckCounts {
                sampled: t.sampled + g.counts.sampled,
                labelled: t.labelled + g.counts.labelled,
                right: t.right + g.counts.right,
            })
    }
}

/// The spot checks of the automatic answers one SOP version gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SopSpotChecks {
    pub sop_ref: Option<String>,
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub counts: SpotCheckCounts,
}

/// One SOP version as loaded from disk, recorded so decisions can be traced to it.
#[derive(Debug, Clone)]
pub struct SopVersionRecord {
    pub sop_id: String,
    pub version: i64,
    pub hash: String,
    pub status: String,
    pub agent: String,
    pub title: String,
    pub content: String,
}

/// A trained router model and what it was trained on.
#[derive(Debug, Clone)]
pub struct RouterModelRecord {
    pub version: String,
    pub examples: i64,
    pub labels: i64,
    pub metrics: Value,
    pub model: Vec<u8>,
}

/// A stored router model without its weights: what it was trained on, what
/// calibration measured (`metrics`), and when it was stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RouterModelSummary {
    pub version: String,
    pub examples: i64,
    pub labels: i64,
    pub metrics: sqlx::types::Json<Value>,
    pub created_at: DateTime<Utc>,
    /// When it was last promoted (see `Store::promote_router_model`).
    pub promoted_at: Option<DateTime<Utc>>,
    /// When it was pinned, while it is (see `Store::pin_router_model`).
    pub pinned_at: Option<DateTime<Utc>>,
    /// Why, as the operator who pinned it said.
    pub pin_reason: Option<String>,
}

/// Everything one inbound message writes, committed in one transaction.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub tenant_id: Uuid,
    /// The conversation to create, or `None` to append to an existing one.
    pub new_conversation: Option<Conversation>,
    pub conversation_id: Uuid,
    pub inbound: NewMessage,
    pub decision: Decision,
    pub reply: Option<NewMessage>,
    pub review: ReviewPlan,
    /// Outbox rows (the reply's webhook, the new item's alerts).
    pub notifications: Vec<NewNotification>,
    /// The id of a spot check of this automatic answer, when it was sampled.
    pub spot_check: Option<Uuid>,
}

/// What an exchange does to the review queue.
#[derive(Debug, Clone)]
pub enum ReviewPlan {
    None,
    Create(NewReviewItem),
    /// Append the message to the conversation's open item.
    Join {
        review_id: Uuid,
        /// Raises the item's priority to at least this (a follow-up may be more urgent).
        priority: i32,
        /// The item's new SLA due time, when it waited for this answer: the
        /// SLA is paused while the customer is being waited on.
        resume_due_at: Option<DateTime<Utc>>,
    },
}

/// Filters for listing review items.
#[derive(Debug, Clone, Default)]
pub struct ReviewFilter {
    /// `None` lists every unresolved item (open or claimed).
    pub state: Option<ReviewState>,
    pub limit: i64,
}

/// A notification to write to the outbox, in the transaction of what it announces.
#[derive(Debug, Clone, Serialize)]
pub struct NewNotification {
    pub id: Uuid,
    pub review_id: Option<Uuid>,
    /// `webhook`, `email` or `slack`.
    pub channel: String,
    /// Where it goes: a tenant name (webhook), an email address, a Slack channel.
    pub target: String,
    /// What happened, e.g. `message.created` or `review.created`.
    pub event: String,
    pub payload: Value,
    /// Set for a step that must happen once; a second row with it is dropped.
    pub dedupe_key: Option<String>,
}

/// An outbox row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Notification {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub review_id: Option<Uuid>,
    pub channel: String,
    pub target: String,
    pub event: String,
    pub payload: sqlx::types::Json<Value>,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone)]
pub enum DeliveryOutcome {
    Delivered,
    /// Try again at this time.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// Give up: the row goes to the dead-letter state.
    Dead {
        error: String,
    },
}

/// A message sopr posted to Slack about a review item.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SlackMessage {
    /// The channel id Slack answered with (chat.update needs the id, not a name).
    pub channel: String,
    pub ts: String,
    pub tenant_id: Uuid,
    pub review_id: Uuid,
    pub notification_id: Uuid,
    pub event: String,
    pub created_at: DateTime<Utc>,
    /// The item version the message shows.
    pub shown_version: i64,
}

/// An open, unclaimed item the SLA ladder may have to act on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LadderCandidate {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub sop_ref: Option<String>,
    pub priority: i32,
    pub created_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    /// 0: nothing sent, 1: warned, 2: breach announced.
    pub ladder_step: i32,
}

/// A console session to store: the cookie's token is kept only as a hash.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub token_hash: String,
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A live console session and the (enabled) user it belongs to.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

/// What the console's queue page asks for. Unset fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct QueueQuery {
    /// `None`: every unresolved item.
    pub state: Option<ReviewState>,
    /// Items governed by one of these SOP ids (any version).
    pub sop_ids: Option<Vec<String>>,
    pub priority: Option<i32>,
    /// Only items past their SLA due time.
    pub breached: bool,
    /// Only items this reviewer holds with a live lease.
    pub claimed_by: Option<String>,
    /// Only items whose decision raised this flag.
    pub flag: Option<String>,
    pub limit: i64,
}

/// A queue row: the item with the decision fields the queue shows.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueueRow {
    #[sqlx(flatten)]
    pub item: ReviewItem,
    pub intent: Option<String>,
    pub confidence: f64,
    pub flags: sqlx::types::Json<Value>,
    /// The customer message that opened the item.
    pub message: String,
}

/// Sizes of a tenant's queue.
#[derive(Debug, Clone, Default, Serialize, sqlx::FromRow)]
pub struct QueueCounts {
    pub open: i64,
    pub claimed: i64,
    pub waiting: i64,
    pub breached: i64,
    pub mine: i64,
}

/// One review item's timeline, for the dashboard.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReviewTimeline {
    pub sop_ref: Option<String>,
    pub state: String,
    pub resolution: Option<String>,
    pub created_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    pub first_claimed_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Set while the item waits for the customer (its SLA is paused).
    pub waiting_since: Option<DateTime<Utc>>,
}

/// How many decisions of one SOP version had one outcome.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutcomeCount {
    pub sop_ref: Option<String>,
    pub outcome: String,
    pub count: i64,
}

/// A reviewer's final action on an item, with everything it writes.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub review_id: Uuid,
    pub reviewer: String,
    /// Optimistic lock: the item version the reviewer saw.
    pub expected_version: Option<i64>,
    pub action: String,
    pub final_reply: Option<String>,
    pub reply_message: Option<NewMessage>,
    pub event: NewReviewEvent,
    pub feedback: NewFeedback,
    /// Outbox rows (the reply's webhook).
    pub notifications: Vec<NewNotification>,
    pub now: DateTime<Utc>,
}

/// A reviewer's question to the customer: sent as a message, and the item
/// waits (unclaimed) until the customer answers.
#[derive(Debug, Clone)]
pub struct InfoRequest {
    pub review_id: Uuid,
    pub reviewer: String,
    pub expected_version: Option<i64>,
    pub message: NewMessage,
    /// Outbox rows (the question's webhook).
    pub notifications: Vec<NewNotification>,
    pub now: DateTime<Utc>,
}

/// Moving an item to another SOP: new SOP reference, draft, priority and SLA;
/// the reviewer keeps the claim.
#[derive(Debug, Clone)]
pub struct Reroute {
    pub review_id: Uuid,
    pub reviewer: String,
    pub expected_version: Option<i64>,
    pub sop_ref: String,
    pub draft: Option<String>,
    pub priority: i32,
    pub due_at: DateTime<Utc>,
    pub event: NewReviewEvent,
    pub feedback: NewFeedback,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewReviewEvent {
    pub id: Uuid,
    pub actor: String,
    pub kind: String,
    pub data: Value,
}

#[derive(Debug, Clone)]
pub struct NewFeedback {
    pub id: Uuid,
    pub label_intent: Option<String>,
}

/// A claim request: who, until when, and the id of the audit event to write.
#[derive(Debug, Clone)]
pub struct Claim {
    pub reviewer: String,
    pub now: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Applies pending migrations of this backend.
    async fn migrate(&self) -> Result<()>;

    // --- tenants and keys -------------------------------------------------
    async fn tenant_count(&self) -> Result<i64>;
    /// Returns the tenant with this name, creating it if needed (`true` when created).
    async fn ensure_tenant(&self, name: &str) -> Result<(Tenant, bool)>;
    async fn insert_api_key(&self, tenant_id: Uuid, prefix: &str, key_hash: &str) -> Result<()>;
    /// The tenant owning an unrevoked key with this hash.
    async fn tenant_for_key(&self, key_hash: &str) -> Result<Option<Tenant>>;
    async fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>>;

    // --- users ------------------------------------------------------------
    /// `Conflict("users_email")` when the tenant already has that email.
    async fn create_user(&self, user: &User) -> Result<()>;
    async fn user_by_email(&self, tenant_id: Uuid, email: &str) -> Result<Option<User>>;
    async fn list_users(&self, tenant_id: Uuid) -> Result<Vec<User>>;
    /// Returns false when there is no such user.
    async fn set_user_password(
        &self,
        tenant_id: Uuid,
        email: &str,
        password_hash: &str,
    ) -> Result<bool>;

    async fn user_by_id(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<User>>;
    /// Disables (`Some(now)`) or re-enables (`None`) an account; false when there is no such user.
    async fn set_user_disabled(
        &self,
        tenant_id: Uuid,
        email: &str,
        disabled_at: Option<DateTime<Utc>>,
    ) -> Result<bool>;
    /// Counts a failed sign-in and returns how many failed in a row.
    async fn record_failed_login(&self, user_id: Uuid) -> Result<i32>;
    async fn lock_user(&self, user_id: Uuid, until: DateTime<Utc>) -> Result<()>;
    /// A successful sign-in: the failure count and any lock are cleared.
    async fn clear_failed_logins(&self, user_id: Uuid) -> Result<()>;

    // --- console sessions -------------------------------------------------
    async fn create_session(&self, session: &NewSession) -> Result<()>;
    /// The unexpired session with this token hash, if its user is enabled.
    async fn session(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<Session>>;
    async fn delete_session(&self, token_hash: &str) -> Result<()>;
    /// Ends every session of a user (on disable or password change).
    async fn delete_user_sessions(&self, user_id: Uuid) -> Result<()>;
    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> Result<u64>;

    // --- SOP versions -----------------------------------------------------
    /// Records the loaded SOP versions; already-known (id, version, hash) rows are kept.
    async fn record_sop_versions(&self, versions: &[SopVersionRecord]) -> Result<()>;
    async fn sop_version_hashes(&self, sop_id: &str) -> Result<Vec<(i64, String)>>;

    // --- router models ----------------------------------------------------
    /// The stored model with this version, as written by `save_router_model`.
    async fn router_model(&self, version: &str) -> Result<Option<Vec<u8>>>;
    /// Stores a trained model; saving a version that exists keeps the first.
    async fn save_router_model(&self, model: &RouterModelRecord) -> Result<()>;
    /// Deletes all but the `keep` most recently stored models, the latest
    /// promoted one and the pinned one; returns how many went.
    async fn prune_router_models(&self, keep: i64) -> Result<u64>;
    /// Records that replicas route with `version` from `at` on (it passed the
    /// "not worse" check, or it is the first). False when no such model is stored.
    async fn promote_router_model(&self, version: &str, at: DateTime<Utc>) -> Result<bool>;
    /// The version most recently promoted, if any.
    async fn promoted_router_model(&self) -> Result<Option<String>>;
    /// Pins `version` from `at` on, for `reason`, in place of any pinned
    /// before: replicas route with it whatever their training data asks for,
    /// and it counts as promoted at `at`. False (and nothing changes) when no
    /// such model is stored.
    async fn pin_router_model(
        &self,
        version: &str,
        at: DateTime<Utc>,
        reason: Option<&str>,
    ) -> Result<bool>;
    /// Lifts the pin; returns the version that was pinned, if one was.
    async fn unpin_router_model(&self) -> Result<Option<String>>;
    /// The pinned version, if one is.
    async fn pinned_router_model(&self) -> Result<Option<String>>;
    /// The `limit` most recently stored models, newest first, without weights.
    async fn router_models(&self, limit: i64) -> Result<Vec<RouterModelSummary>>;

    // --- leases -------------------------------------------------------------
    /// Takes or renews the lease `name` for `holder` until `until`. True when
    /// `holder` now holds it: it was free, had lapsed (`expires_at <= now`) or
    /// was already `holder`'s. A lease only saves repeated work; holding one
    /// guards nothing that must not happen twice.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool>;
    /// Gives the lease up, if `holder` still holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;

    // --- message path -----------------------------------------------------
    async fn idempotent_replay(
        &self,
        tenant_id: Uuid,
        key: &str,
    ) -> Result<Option<IdempotentReplay>>;
    async fn conversation(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<Conversation>>;
    async fn open_review_for_conversation(
        &self,
        tenant_id: Uuid,
        conversation_id: Uuid,
    ) -> Result<Option<ReviewItem>>;
    /// Writes one inbound message and everything decided about it atomically.
    /// A reused idempotency key fails with `Conflict("messages_idempotency")`; a
    /// second open review item on the conversation with `Conflict("review_items_one_open")`.
    async fn record_exchange(&self, exchange: &Exchange) -> Result<()>;
    async fn conversation_messages(
        &self,
        tenant_id: Uuid,
        conversation_id: Uuid,
    ) -> Result<Vec<Message>>;
    async fn decision(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<Decision>>;

    // --- review queue -----------------------------------------------------
    async fn list_reviews(
        &self,
        tenant_id: Uuid,
        filter: &ReviewFilter,
        now: DateTime<Utc>,
    ) -> Result<Vec<ReviewItem>>;
    async fn review(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<ReviewItem>>;
    /// Claims the most urgent claimable item (open, or claimed with an expired lease).
    async fn claim_next_review(&self, tenant_id: Uuid, claim: &Claim)
    -> Result<Option<ReviewItem>>;
    /// Claims one item. `Conflict` when someone else holds a live lease or it is resolved.
    async fn claim_review(&self, tenant_id: Uuid, id: Uuid, claim: &Claim) -> Result<ReviewItem>;
    /// Extends the lease of an item the reviewer holds.
    async fn renew_review_lease(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        claim: &Claim,
    ) -> Result<ReviewItem>;
    /// Returns a claimed item to the queue. `Conflict` unless `reviewer` holds it.
    async fn release_review(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        reviewer: &str,
        now: DateTime<Utc>,
    ) -> Result<ReviewItem>;
    /// Resolves an item the reviewer holds, writing reply, audit event and feedback
    /// in one transaction. `Conflict` on a stale version, a lost lease or a resolved item.
    async fn resolve_review(&self, tenant_id: Uuid, resolution: &Resolution) -> Result<ReviewItem>;
    /// Reroutes an item the reviewer holds: one transaction for the item, its
    /// audit event and the feedback row labelling the message.
    async fn reroute_review(&self, tenant_id: Uuid, reroute: &Reroute) -> Result<ReviewItem>;
    /// Sends the question, releases the claim and parks the item until the
    /// customer's next message (which joins it and clears the wait).
    async fn request_info(&self, tenant_id: Uuid, request: &InfoRequest) -> Result<ReviewItem>;
    /// Gives an unresolved item to `claim.reviewer`, whoever holds it now;
    /// `actor` (who assigned it) is recorded in the audit trail.
    async fn assign_review(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        actor: &str,
        claim: &Claim,
    ) -> Result<ReviewItem>;
    async fn review_events(&self, tenant_id: Uuid, review_id: Uuid) -> Result<Vec<ReviewEvent>>;

    // --- outbox -------------------------------------------------------------
    /// Writes rows outside another transaction (e.g. SLA escalations); rows
    /// whose dedupe key exists already are skipped. Returns how many went in.
    async fn enqueue_notifications(
        &self,
        tenant_id: Uuid,
        rows: &[NewNotification],
        now: DateTime<Utc>,
    ) -> Result<u64>;
    /// Leases up to `limit` pending rows that are due, counting an attempt on each.
    async fn claim_notifications(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Notification>>;
    async fn finish_notification(
        &self,
        id: Uuid,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// A tenant's rows in one state, newest first.
    async fn list_notifications(
        &self,
        tenant_id: Uuid,
        state: &str,
        limit: i64,
    ) -> Result<Vec<Notification>>;
    /// Puts a dead row back to pending, due now; false when there is no such dead row.
    async fn retry_notification(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    async fn tenant(&self, id: Uuid) -> Result<Option<Tenant>>;
    /// Open, unclaimed, not waiting items below ladder step 2 due by
    /// `horizon`, soonest due first.
    async fn ladder_candidates(
        &self,
        horizon: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<LadderCandidate>>;
    /// Moves an item to ladder `step` and writes that step's rows, in one
    /// transaction; false (nothing written) when it was there already.
    async fn advance_ladder(
        &self,
        tenant_id: Uuid,
        review_id: Uuid,
        step: i32,
        rows: &[NewNotification],
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Deletes delivered rows delivered before `before`; returns how many went.
    async fn prune_notifications(&self, before: DateTime<Utc>) -> Result<u64>;
    /// Rows per state across tenants: `(pending, dead)`.
    async fn notification_backlog(&self) -> Result<(i64, i64)>;

    // --- Slack ----------------------------------------------------------------
    /// Remembers a message posted to Slack (a second record of the same
    /// message is ignored).
    async fn record_slack_message(&self, message: &SlackMessage) -> Result<()>;
    /// The Slack messages about an item, oldest first.
    async fn slack_messages(&self, tenant_id: Uuid, review_id: Uuid) -> Result<Vec<SlackMessage>>;
    /// The message an outbox row posted, if it got that far.
    async fn slack_message_for(&self, notification_id: Uuid) -> Result<Option<SlackMessage>>;
    /// Records that a Slack message now shows this version of its item (an
    /// older version than the one recorded is ignored).
    async fn mark_slack_shown(&self, channel: &str, ts: &str, version: i64) -> Result<()>;
    /// Items whose Slack messages (posted after `posted_after`) show an older
    /// version than the item has, for items unchanged since `settled_before`:
    /// `(tenant, item, version)`, at most `limit`.
    async fn stale_slack_items(
        &self,
        posted_after: DateTime<Utc>,
        settled_before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, Uuid, i64)>>;
    /// Records a signed `/slack/actions` request by its signature and forgets
    /// those received before `forget_before`; false when it was seen already.
    async fn remember_slack_request(
        &self,
        signature: &str,
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
    ) -> Result<bool>;

    // --- console views ----------------------------------------------------
    /// Unresolved items with their decision's route and flags, most urgent first.
    async fn list_queue(
        &self,
        tenant_id: Uuid,
        query: &QueueQuery,
        now: DateTime<Utc>,
    ) -> Result<Vec<QueueRow>>;
    async fn queue_counts(
        &self,
        tenant_id: Uuid,
        reviewer: &str,
        now: DateTime<Utc>,
    ) -> Result<QueueCounts>;
    /// When the tenant's queue last changed (any item created or updated).
    async fn queue_changed_at(&self, tenant_id: Uuid) -> Result<Option<DateTime<Utc>>>;
    /// Resolved items, newest first, whose reply, resolver, SOP or customer
    /// messages contain `text` (case-insensitive); all of them when it is empty.
    async fn search_resolved(
        &self,
        tenant_id: Uuid,
        text: &str,
        limit: i64,
    ) -> Result<Vec<ReviewItem>>;
    /// Items created since `since` or still unresolved, with first claim times.
    async fn review_timelines(
        &self,
        tenant_id: Uuid,
        since: DateTime<Utc>,
    ) -> Result<Vec<ReviewTimeline>>;
    /// Decisions since `since`, counted per SOP version and outcome.
    async fn decision_outcomes(
        &self,
        tenant_id: Uuid,
        since: DateTime<Utc>,
    ) -> Result<Vec<OutcomeCount>>;
    async fn review_feedback(&self, tenant_id: Uuid, review_id: Uuid) -> Result<Vec<Feedback>>;
    /// `(intent, customer text)` from reviewers' decisions across tenants:
    /// the latest labelled row per item and every labelled spot check, the
    /// newest `limit` of them by when they were labelled, oldest
    /// first (a stable order, so the same feedback hashes to the same model).
    async fn feedback_examples(&self, limit: i64) -> Result<Vec<(String, String)>>;
    /// Every item's latest labelled feedback row and every labelled spot
    /// check, labelled at `since` or later, of one tenant or of all, oldest
    /// first: the rows `feedback_examples` draws from, with the router's
    /// decision beside them.
    async fn labelled_messages(
        &self,
        tenant_id: Option<Uuid>,
        since: DateTime<Utc>,
    ) -> Result<Vec<LabelledMessage>>;
    /// The tenant's spot checks still to label, oldest first, or the
    /// labelled ones, most recently labelled first.
    async fn spot_checks(
        &self,
        tenant_id: Uuid,
        labelled: bool,
        limit: i64,
    ) -> Result<Vec<SpotCheck>>;
    async fn spot_check(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<SpotCheck>>;
    /// Records (or corrects) a reviewer's label; `None` when the tenant has
    /// no such spot check.
    async fn label_spot_check(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        intent: &str,
        reviewer: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SpotCheck>>;
    /// Spot checks sampled at `since` or later, per SOP version that
    /// answered (ordered by it).
    async fn spot_check_counts(
        &self,
        tenant_id: Uuid,
        since: DateTime<Utc>,
    ) -> Result<Vec<SopSpotChecks>>;
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}
