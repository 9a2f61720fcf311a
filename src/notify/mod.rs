//! Notifications through a transactional outbox.
//!
//! What to announce is decided where it happens ([`Notifier`]: the pipeline
//! for new review items and bot replies, the review service for reviewer
//! replies and questions) and written as outbox rows in the same transaction
//! as the item or message. The [`Dispatcher`], running inside every `serve`,
//! leases due rows, delivers them (webhook, email), and marks them delivered,
//! schedules a retry with full-jitter exponential backoff, or moves them to
//! the dead-letter state once `notify.max_attempts` is used up or the
//! receiver refuses for good. A row whose delivery was cut short by a crash
//! comes due again when its lease runs out, under the same id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::json;
use uuid::Uuid;

use crate::config::NotifyConfig;
use crate::store::{DeliveryOutcome, NewMessage, NewNotification, Notification, Store};

pub mod email;
pub mod slack;
pub mod webhook;

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryError {
    /// Worth retrying (network, timeout, 5xx, 429, SMTP 4xx).
    Transient(String),
    /// Retrying will not help (4xx, SMTP 5xx, bad address, no such target).
    Permanent(String),
}

/// Rows leased per round.
const BATCH: i64 = 32;
/// How often the dispatcher walks the SLA ladder and repairs Slack messages
/// left behind (`slack_round`).
const LADDER_EVERY: Duration = Duration::from_secs(10);
/// Items the ladder looks at per round.
const LADDER_BATCH: i64 = 500;
/// How often the dispatcher prunes delivered rows and reports the backlog.
const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// How long an item must be unchanged before `slack_round` repairs its
/// Slack messages: the change's own update normally lands within a second.
pub const SLACK_SETTLE: chrono::Duration = chrono::Duration::seconds(30);
/// Slack messages older than this are left as they are.
const SLACK_LOOKBACK: chrono::Duration = chrono::Duration::days(7);
/// Items repaired per `slack_round`.
const SLACK_BATCH: i64 = 200;

/// `email:ADDRESS` or `slack:#channel`, as SOP files and config write targets.
pub fn is_valid_target(target: &str) -> bool {
    match target.split_once(':') {
        Some(("email", address)) => address.parse::<lettre::Address>().is_ok(),
        Some(("slack", channel)) => {
            let name = channel.strip_prefix('#').unwrap_or(channel);
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        }
        _ => false,
    }
}

/// Checks, once Slack is configured, that every Slack target the SOPs and
/// the SLA ladder name can be delivered: by the bot, or by an incoming
/// webhook for that channel. (Without any Slack settings, Slack targets are
/// skipped, as email targets are without SMTP.)
pub fn check_targets(config: &NotifyConfig, sops: &crate::sop::SopSet) -> Result<(), String> {
    if !config.slack.bot() && config.slack.incoming_webhooks.is_empty() {
        return Ok(());
    }
    let from_sops = sops.active().flat_map(|s| {
        let e = &s.file.escalation;
        e.notify
            .iter()
            .map(move |t| (format!("SOP `{}` escalation.notify", s.id()), t))
            .chain(
                e.backup_notify
                    .iter()
                    .map(move |t| (format!("SOP `{}` escalation.backup_notify", s.id()), t)),
            )
    });
    let from_config = config
        .sla
        .breach_notify
        .iter()
        .map(|t| ("notify.sla.breach_notify".to_string(), t));
    for (place, target) in from_sops.chain(from_config) {
        if let Some(channel) = target.strip_prefix("slack:")
            && !config.slack.can_post(channel.trim())
        {
            return Err(format!(
                "{place} names `{target}`, but notify.slack has neither bot_token_env nor an incoming webhook for `{}`",
                channel.trim()
            ));
        }
    }
    Ok(())
}

/// Decides which outbox rows an event writes.
pub struct Notifier {
    console_url: String,
    webhook_tenants: Vec<String>,
    email: bool,
    slack: crate::config::SlackConfig,
    tenant_names: Mutex<HashMap<Uuid, String>>,
    store: Arc<dyn Store>,
}

impl Notifier {
    pub fn new(config: &NotifyConfig, store: Arc<dyn Store>) -> Notifier {
        use secrecy::ExposeSecret;
        Notifier {
            console_url: config.console_url.trim_end_matches('/').to_string(),
            webhook_tenants: config.webhooks.iter().map(|w| w.tenant.clone()).collect(),
            email: !config.smtp.url.expose_secret().is_empty(),
            slack: config.slack.clone(),
            tenant_names: Mutex::new(HashMap::new()),
            store,
        }
    }

    /// Whether any tenant has a chat-frontend webhook.
    pub fn has_webhooks(&self) -> bool {
        !self.webhook_tenants.is_empty()
    }

    /// The tenant's name, looked up once (names do not change).
    pub async fn tenant_name(&self, tenant_id: Uuid) -> Option<String> {
        if let Some(name) = self.tenant_names.lock().ok()?.get(&tenant_id) {
            return Some(name.clone());
        }
        let tenant = self.store.tenant(tenant_id).await.ok().flatten()?;
        if let Ok(mut names) = self.tenant_names.lock() {
            names.insert(tenant_id, tenant.name.clone());
        }
        Some(tenant.name)
    }

    /// The webhook row announcing a message to the customer, when the tenant
    /// has a webhook.
    pub fn message_created(
        &self,
        tenant_name: &str,
        conversation_id: Uuid,
        message: &NewMessage,
        review_id: Option<Uuid>,
    ) -> Option<NewNotification> {
        if !self.webhook_tenants.iter().any(|t| t == tenant_name) {
            return None;
        }
        Some(NewNotification {
            id: Uuid::now_v7(),
            review_id,
            channel: "webhook".into(),
            target: tenant_name.to_string(),
            event: "message.created".into(),
            payload: json!({
                "type": "message.created",
                "timestamp": message.created_at,
                "data": {
                    "conversation_id": conversation_id,
                    "message_id": message.id,
                    "role": message.role.as_str(),
                    "body": message.body,
                    "review_id": review_id,
                    "created_at": message.created_at,
                }
            }),
            dedupe_key: None,
        })
    }

    /// Same as [`Notifier::message_created`], for callers that know only the tenant id.
    pub async fn message_created_for(
        &self,
        tenant_id: Uuid,
        conversation_id: Uuid,
        message: &NewMessage,
        review_id: Option<Uuid>,
    ) -> Option<NewNotification> {
        if !self.has_webhooks() {
            return None;
        }
        let name = self.tenant_name(tenant_id).await?;
        self.message_created(&name, conversation_id, message, review_id)
    }

    /// Rows announcing a new review item to the SOP's `notify` targets.
    /// Email targets are written when SMTP is configured, Slack targets when
    /// the channel has a bot token or incoming webhook.
    pub fn review_created(
        &self,
        targets: &[String],
        review: &ReviewSummary,
    ) -> Vec<NewNotification> {
        let payload = json!({
            "subject": format!("[sopr] {} priority: {}", review.priority, review.sop_title),
            "review_id": review.review_id,
            "sop_ref": review.sop_ref,
            "sop_title": review.sop_title,
            "priority": review.priority,
            "reasons": review.reasons,
            "flags": review.flags,
            "intent": review.intent,
            "confidence": format!("{:.0}%", review.confidence * 100.0),
            "excerpt": review.excerpt,
            "due_at": review.due_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            "link": format!("{}/console/items/{}", self.console_url, review.review_id),
        });
        let mut rows =
            self.email_rows(targets, review.review_id, "review.created", &payload, false);
        rows.extend(self.slack_rows(targets, review.review_id, "review.created", false));
        rows
    }

    /// One Slack row per `slack:` target the config can deliver. The message
    /// is rendered from the item when it is delivered, so the payload only
    /// names the item.
    fn slack_rows(
        &self,
        targets: &[String],
        review_id: Uuid,
        event: &str,
        once: bool,
    ) -> Vec<NewNotification> {
        targets
            .iter()
            .filter_map(|t| t.strip_prefix("slack:"))
            .map(str::trim)
            .filter(|channel| self.slack.can_post(channel))
            .map(|channel| NewNotification {
                id: Uuid::now_v7(),
                review_id: Some(review_id),
                channel: "slack".into(),
                target: channel.to_string(),
                event: event.into(),
                payload: json!({ "review_id": review_id }),
                dedupe_key: once.then(|| format!("{event}:{review_id}:slack:{channel}")),
            })
            .collect()
    }

    /// The row that brings the item's Slack messages up to date after a
    /// claim, release, assignment or resolution; none when Slack has no bot
    /// or nothing was posted about the item. `version` is the item's version
    /// after the change, when the caller knows it (see [`Notifier::slack_update_row`]).
    pub async fn slack_update(
        &self,
        tenant_id: Uuid,
        review_id: Uuid,
        version: Option<i64>,
    ) -> Option<NewNotification> {
        if !self.slack.bot() {
            return None;
        }
        match self.store.slack_messages(tenant_id, review_id).await {
            Ok(messages) if messages.is_empty() => None,
            Ok(_) => Some(Notifier::slack_update_row(review_id, version)),
            Err(err) => {
                tracing::warn!(review = %review_id, error = %err, "cannot look up Slack messages; they will not show this change");
                None
            }
        }
    }

    /// A `review.updated` Slack row. With the item's version it carries a
    /// dedupe key, so the change and the dispatcher's reconciliation
    /// ([`Dispatcher::slack_round`]) queue one update per version between them.
    pub fn slack_update_row(review_id: Uuid, version: Option<i64>) -> NewNotification {
        NewNotification {
            id: Uuid::now_v7(),
            review_id: Some(review_id),
            channel: "slack".into(),
            target: String::new(),
            event: "review.updated".into(),
            payload: json!({ "review_id": review_id }),
            dedupe_key: version.map(|v| format!("review.updated:{review_id}:slack:v{v}")),
        }
    }

    /// One email row per `email:` target (none while SMTP is off). With
    /// `once`, each row carries a dedupe key for (event, item, address).
    fn email_rows(
        &self,
        targets: &[String],
        review_id: Uuid,
        event: &str,
        payload: &serde_json::Value,
        once: bool,
    ) -> Vec<NewNotification> {
        targets
            .iter()
            .filter_map(|t| t.strip_prefix("email:"))
            .filter(|_| self.email)
            .map(|address| NewNotification {
                id: Uuid::now_v7(),
                review_id: Some(review_id),
                channel: "email".into(),
                target: address.trim().to_string(),
                event: event.into(),
                payload: payload.clone(),
                dedupe_key: once.then(|| format!("{event}:{review_id}:{}", address.trim())),
            })
            .collect()
    }

    /// The rows for one SLA ladder step of an item: email and Slack targets
    /// get a `review.sla_warning` (step 1) or `review.sla_breached` (step 2),
    /// each with a dedupe key so that the step goes out once.
    pub fn ladder_rows(
        &self,
        item: &crate::store::LadderCandidate,
        step: i32,
        sop_title: &str,
        targets: &[String],
    ) -> Vec<NewNotification> {
        let (event, headline) = if step >= 2 {
            (
                "review.sla_breached",
                "has breached its SLA and nobody has claimed it",
            )
        } else {
            (
                "review.sla_warning",
                "is still unclaimed and its SLA is running out",
            )
        };
        let priority = crate::sop::Priority::from_rank(item.priority).as_str();
        let payload = json!({
            "template": "review_sla",
            "subject": format!("[sopr] {} {priority} case {headline}", sop_title),
            "headline": headline,
            "review_id": item.id,
            "sop_ref": item.sop_ref.as_deref().unwrap_or("none"),
            "sop_title": sop_title,
            "priority": priority,
            "due_at": item.due_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            "link": format!("{}/console/items/{}", self.console_url, item.id),
        });
        let mut rows = self.email_rows(targets, item.id, event, &payload, true);
        rows.extend(self.slack_rows(targets, item.id, event, true));
        rows
    }
}

/// What a new-item notification says. `excerpt` must already be masked.
pub struct ReviewSummary {
    pub review_id: Uuid,
    pub sop_ref: String,
    pub sop_title: String,
    pub priority: String,
    pub reasons: Vec<String>,
    pub flags: Vec<String>,
    pub intent: String,
    pub confidence: f64,
    pub excerpt: String,
    pub due_at: DateTime<Utc>,
}

/// Delivers outbox rows.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    sops: Arc<crate::sop::SopSet>,
    notifier: Arc<Notifier>,
    /// The longest SLA any item can have, for the ladder's look-ahead.
    longest_sla: chrono::Duration,
    webhooks: webhook::Webhooks,
    mailer: Option<email::Mailer>,
    slack: Option<Arc<slack::Slack>>,
    config: NotifyConfig,
}

impl Dispatcher {
    /// `slack` is the client from [`slack::Slack::new`] (shared with the
    /// `/slack/actions` endpoint); callers check the SOPs' targets with
    /// [`check_targets`] first.
    pub fn new(
        config: &NotifyConfig,
        store: Arc<dyn Store>,
        sops: Arc<crate::sop::SopSet>,
        notifier: Arc<Notifier>,
        slack: Option<Arc<slack::Slack>>,
        default_sla_minutes: u32,
    ) -> Result<Dispatcher, String> {
        let longest = sops
            .versions
            .iter()
            .filter_map(|s| s.file.escalation.sla_minutes)
            .chain([default_sla_minutes])
            .max()
            .unwrap_or(default_sla_minutes);
        Ok(Dispatcher {
            slack,
            store,
            sops,
            notifier,
            longest_sla: chrono::Duration::minutes(i64::from(longest)),
            webhooks: webhook::Webhooks::new(&config.webhooks),
            mailer: email::Mailer::new(&config.smtp)?,
            config: config.clone(),
        })
    }

    /// Runs until the task is dropped, one round every `notify.poll_ms`
    /// (at once again while rounds come back full).
    pub async fn run(self) {
        let every = Duration::from_millis(self.config.poll_ms);
        let mut last_housekeeping: Option<std::time::Instant> = None;
        let mut last_ladder: Option<std::time::Instant> = None;
        loop {
            if last_ladder.is_none_or(|t| t.elapsed() >= LADDER_EVERY) {
                last_ladder = Some(std::time::Instant::now());
                if let Err(err) = self.ladder_round(Utc::now()).await {
                    tracing::warn!(error = %err, "SLA ladder round failed");
                }
                if let Err(err) = self.slack_round(Utc::now()).await {
                    tracing::warn!(error = %err, "Slack reconciliation round failed");
                }
            }
            if last_housekeeping.is_none_or(|t| t.elapsed() >= HOUSEKEEPING) {
                last_housekeeping = Some(std::time::Instant::now());
                if let Err(err) = self.housekeeping().await {
                    tracing::warn!(error = %err, "outbox housekeeping failed");
                }
            }
            match self.run_once().await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "outbox round failed"),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Deletes delivered rows past `notify.keep_delivered_days` and sets the
    /// `sopr_notifications_pending` and `sopr_notifications_dead` gauges.
    pub async fn housekeeping(&self) -> Result<(), crate::store::StoreError> {
        let keep = chrono::Duration::days(i64::from(self.config.keep_delivered_days));
        let pruned = self.store.prune_notifications(Utc::now() - keep).await?;
        if pruned > 0 {
            tracing::info!(rows = pruned, "pruned delivered notifications");
        }
        let (pending, dead) = self.store.notification_backlog().await?;
        metrics::gauge!("sopr_notifications_pending").set(pending as f64);
        metrics::gauge!("sopr_notifications_dead").set(dead as f64);
        Ok(())
    }

    /// Re-renders the Slack messages that show an older version of their
    /// item than it has, for items unchanged for [`SLACK_SETTLE`] (so the
    /// change's own update has had its chance) and posted within
    /// [`SLACK_LOOKBACK`]. This catches a replica that stopped between
    /// committing a claim and queueing its update, and updates that gave up
    /// while Slack was down. Returns how many updates it queued.
    pub async fn slack_round(&self, now: DateTime<Utc>) -> Result<usize, crate::store::StoreError> {
        if self.slack.is_none() || !self.config.slack.bot() {
            return Ok(0);
        }
        let stale = self
            .store
            .stale_slack_items(now - SLACK_LOOKBACK, now - SLACK_SETTLE, SLACK_BATCH)
            .await?;
        let mut queued = 0;
        for (tenant_id, review_id, version) in stale {
            let row = Notifier::slack_update_row(review_id, Some(version));
            queued += self
                .store
                .enqueue_notifications(tenant_id, &[row], Utc::now())
                .await? as usize;
        }
        if queued > 0 {
            tracing::info!(
                items = queued,
                "queued updates for Slack messages left behind"
            );
        }
        Ok(queued)
    }

    /// One walk of the SLA ladder as of `now`: each open, unclaimed item
    /// past `notify.sla.warn_fraction` of its SLA moves to step 1 (its SOP's
    /// `backup_notify` targets are told), each one past its due time to step
    /// 2 (`notify.sla.breach_notify`). Returns how many items moved.
    pub async fn ladder_round(
        &self,
        now: DateTime<Utc>,
    ) -> Result<usize, crate::store::StoreError> {
        let fraction = self.config.sla.warn_fraction;
        // Items due within this can be past their warning time.
        let lead_ms = (self.longest_sla.num_milliseconds() as f64 * (1.0 - fraction)) as i64;
        let horizon = if fraction > 0.0 {
            now + chrono::Duration::milliseconds(lead_ms)
        } else {
            now
        };
        let mut moved = 0;
        for item in self.store.ladder_candidates(horizon, LADDER_BATCH).await? {
            let warn_at = item.created_at
                + chrono::Duration::milliseconds(
                    ((item.due_at - item.created_at).num_milliseconds() as f64 * fraction) as i64,
                );
            let sop = item
                .sop_ref
                .as_deref()
                .and_then(|r| self.sops.versions.iter().find(|s| s.reference() == r));
            let title = sop.map_or("Unrouted", |s| s.file.title.as_str());
            let (step, targets): (i32, &[String]) = if now >= item.due_at {
                (2, &self.config.sla.breach_notify)
            } else if fraction > 0.0 && now >= warn_at && item.ladder_step < 1 {
                (1, sop.map_or(&[][..], |s| &s.file.escalation.backup_notify))
            } else {
                continue;
            };
            let rows = self.notifier.ladder_rows(&item, step, title, targets);
            // `now` decides the step; the rows are due from the real time.
            if self
                .store
                .advance_ladder(item.tenant_id, item.id, step, &rows, Utc::now())
                .await?
            {
                moved += 1;
                tracing::info!(review = %item.id, step, rows = rows.len(), "SLA ladder step");
            }
        }
        Ok(moved)
    }

    /// Leases the due rows and delivers them concurrently; returns how many it leased.
    pub async fn run_once(&self) -> Result<usize, crate::store::StoreError> {
        let now = Utc::now();
        let lease = chrono::Duration::seconds(i64::try_from(self.config.lease_secs).unwrap_or(60));
        let rows = self
            .store
            .claim_notifications(now, now + lease, BATCH)
            .await?;
        let results = futures::future::join_all(rows.iter().map(|n| self.deliver(n))).await;
        for (n, result) in rows.iter().zip(results) {
            let outcome = self.outcome(n, result);
            let label = match &outcome {
                DeliveryOutcome::Delivered => "delivered",
                DeliveryOutcome::Retry { .. } => "retry",
                DeliveryOutcome::Dead { .. } => "dead",
            };
            metrics::counter!("sopr_notifications_total", "channel" => n.channel.clone(), "outcome" => label)
                .increment(1);
            match &outcome {
                DeliveryOutcome::Delivered => {
                    tracing::info!(id = %n.id, channel = %n.channel, event = %n.event, attempt = n.attempts, "notification delivered")
                }
                DeliveryOutcome::Retry { at, error } => {
                    tracing::warn!(id = %n.id, channel = %n.channel, attempt = n.attempts, retry_at = %at, error = %error, "notification failed; will retry")
                }
                DeliveryOutcome::Dead { error } => {
                    tracing::error!(id = %n.id, channel = %n.channel, attempt = n.attempts, error = %error, "notification dead-lettered")
                }
            }
            self.store
                .finish_notification(n.id, &outcome, Utc::now())
                .await?;
        }
        Ok(rows.len())
    }

    async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        match n.channel.as_str() {
            "webhook" => self.webhooks.deliver(n).await,
            "email" => match &self.mailer {
                Some(mailer) => mailer.deliver(n).await,
                None => Err(DeliveryError::Transient(
                    "email is not configured (notify.smtp.url)".into(),
                )),
            },
            "slack" => match &self.slack {
                Some(slack) => slack.deliver(n).await,
                None => Err(DeliveryError::Permanent(
                    "Slack is not configured (notify.slack)".into(),
                )),
            },
            other => Err(DeliveryError::Permanent(format!(
                "channel `{other}` is not delivered by this version"
            ))),
        }
    }

    fn outcome(&self, n: &Notification, result: Result<(), DeliveryError>) -> DeliveryOutcome {
        match result {
            Ok(()) => DeliveryOutcome::Delivered,
            Err(DeliveryError::Permanent(error)) => DeliveryOutcome::Dead { error },
            Err(DeliveryError::Transient(error)) => {
                let attempts = u32::try_from(n.attempts).unwrap_or(u32::MAX);
                if attempts >= self.config.max_attempts {
                    return DeliveryOutcome::Dead {
                        error: format!("gave up after {attempts} attempts: {error}"),
                    };
                }
                let delay = backoff(
                    attempts,
                    self.config.backoff_base_ms,
                    self.config.backoff_max_ms,
                );
                DeliveryOutcome::Retry {
                    at: Utc::now()
                        + chrono::Duration::milliseconds(
                            i64::try_from(delay).unwrap_or(i64::MAX / 2),
                        ),
                    error,
                }
            }
        }
    }
}

/// Full jitter: a uniform wait in [0, min(max, base × 2^(attempt-1))] ms.
pub fn backoff(attempt: u32, base_ms: u64, max_ms: u64) -> u64 {
    let cap = base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(30))
        .min(max_ms);
    rand::rng().random_range(0..=cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..200 {
            assert!(backoff(1, 1000, 60_000) <= 1000);
            assert!(backoff(3, 1000, 60_000) <= 4000);
            assert!(backoff(40, 1000, 60_000) <= 60_000);
        }
        let spread: std::collections::HashSet<u64> =
            (0..50).map(|_| backoff(5, 1000, 60_000)).collect();
        assert!(spread.len() > 10, "jittered");
    }
}
