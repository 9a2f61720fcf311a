//! Review queue rules: what a reviewer may do to an item and what each action
//! writes. The store makes every transition atomic (claims under row locks,
//! optimistic versions on resolve); this module decides which transitions and
//! inputs are allowed, and turns an action into the reply, audit event and
//! feedback row it produces.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::agent::{ConversationView, CustomerView, DraftContext, HistoryItem, MessageView};
use crate::config::ReviewConfig;
use crate::routing::eval::OUT_OF_SCOPE;
use crate::sop::SopSet;
use crate::store::{
    Claim, InfoRequest, NewFeedback, NewMessage, NewReviewEvent, Reroute, Resolution, ReviewItem,
    ReviewState, Role, SopSpotChecks, SpotCheck, SpotCheckCounts, Store, StoreError,
};

/// What a reviewer does to finish an item.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Send the draft as it is.
    Approve,
    /// Send a reply the reviewer wrote or edited.
    Edit { reply: String },
    /// Close without replying (spam, duplicate, handled elsewhere).
    Reject { reason: String },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Edit { .. } => "edit",
            Action::Reject { .. } => "reject",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("review item not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ReviewError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ReviewError::NotFound,
            StoreError::Conflict(message) => ReviewError::Conflict(message),
            other => ReviewError::Store(other),
        }
    }
}

/// The longest reply or reason a reviewer may send, in characters.
const MAX_REPLY_CHARS: usize = 10_000;

pub struct ReviewService {
    store: Arc<dyn Store>,
    sops: Arc<SopSet>,
    lease: Duration,
    default_sla: Duration,
    notifier: Arc<crate::notify::Notifier>,
}

/// The state a person should see: a claim whose lease ran out is open again.
pub fn effective_state(item: &ReviewItem, now: DateTime<Utc>) -> ReviewState {
    match item.state.as_str() {
        "resolved" => ReviewState::Resolved,
        "claimed" if item.lease_expires_at.is_some_and(|t| t >= now) => ReviewState::Claimed,
        "open" if item.waiting_since.is_some() => ReviewState::Waiting,
        _ => ReviewState::Open,
    }
}

impl ReviewService {
    pub fn new(
        store: Arc<dyn Store>,
        sops: Arc<SopSet>,
        config: &ReviewConfig,
        notifier: Arc<crate::notify::Notifier>,
    ) -> ReviewService {
        ReviewService {
            notifier,
            store,
            sops,
            lease: Duration::seconds(i64::try_from(config.lease_secs).unwrap_or(i64::MAX / 1000)),
            default_sla: Duration::minutes(i64::from(config.default_sla_minutes)),
        }
    }

    fn claim(&self, reviewer: &str) -> Result<Claim, ReviewError> {
        let reviewer = validate_reviewer(reviewer)?;
        let now = Utc::now();
        Ok(Claim {
            reviewer,
            now,
            lease_until: now + self.lease,
        })
    }

    pub async fn claim_next(
        &self,
        tenant_id: Uuid,
        reviewer: &str,
    ) -> Result<Option<ReviewItem>, ReviewError> {
        let claim = self.claim(reviewer)?;
        let item = self.store.claim_next_review(tenant_id, &claim).await?;
        Ok(match item {
            Some(item) => Some(self.announce(item).await),
            None => None,
        })
    }

    /// Brings the item's Slack messages up to date after a change that is
    /// committed already (claims take row locks in the store and write no
    /// outbox rows). If this row is lost (a crash in between, a failing
    /// database), the dispatcher's `slack_round` queues the same update,
    /// under the same dedupe key, once the item has settled.
    async fn announce(&self, item: ReviewItem) -> ReviewItem {
        if let Some(row) = self
            .notifier
            .slack_update(item.tenant_id, item.id, Some(item.version))
            .await
            && let Err(err) = self
                .store
                .enqueue_notifications(item.tenant_id, &[row], Utc::now())
                .await
        {
            tracing::warn!(review = %item.id, error = %err, "cannot queue the Slack update");
        }
        item
    }

    pub async fn claim_item(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        reviewer: &str,
    ) -> Result<ReviewItem, ReviewError> {
        let claim = self.claim(reviewer)?;
        let item = self.store.claim_review(tenant_id, id, &claim).await?;
        Ok(self.announce(item).await)
    }

    /// Heartbeat: extends the lease of an item the reviewer holds.
    pub async fn renew(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        reviewer: &str,
    ) -> Result<ReviewItem, ReviewError> {
        let claim = self.claim(reviewer)?;
        Ok(self.store.renew_review_lease(tenant_id, id, &claim).await?)
    }

    pub async fn release(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        reviewer: &str,
    ) -> Result<ReviewItem, ReviewError> {
        let reviewer = validate_reviewer(reviewer)?;
        let item = self
            .store
            .release_review(tenant_id, id, &reviewer, Utc::now())
            .await?;
        Ok(self.announce(item).await)
    }

    /// Resolves an item the reviewer holds. `intent` corrects (or confirms) the
    /// router's label for the feedback store (`oos`: no SOP covers the
    /// message); `expected_version` guards against
    /// resolving an item that changed since the reviewer loaded it.
    pub async fn resolve(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        reviewer: &str,
        action: Action,
        intent: Option<String>,
        expected_version: Option<i64>,
    ) -> Result<ReviewItem, ReviewError> {
        let reviewer = validate_reviewer(reviewer)?;
        if let Some(intent) = &intent {
            self.validate_label(intent)?;
        }
        let item = self
            .store
            .review(tenant_id, id)
            .await?
            .ok_or(ReviewError::NotFound)?;
        let now = Utc::now();
        let (final_reply, event_data) = match &action {
            Action::Approve => {
                let draft = item.draft.clone().ok_or_else(|| ReviewError::Invalid {
                    field: "action",
                    message: "this item has no draft to approve; send an edited reply instead"
                        .into(),
                })?;
                (Some(draft.clone()), json!({ "after": draft }))
            }
            Action::Edit { reply } => {
                let reply = non_empty("reply", reply)?;
                (
                    Some(reply.clone()),
                    json!({ "before": item.draft, "after": reply }),
                )
            }
            Action::Reject { reason } => {
                let reason = non_empty("reason", reason)?;
                (None, json!({ "reason": reason }))
            }
        };
        // Approving the routed SOP's draft confirms the routed intent, and so
        // does editing it, unless the router was unsure of the route: a
        // reviewer who rewrites the reply to a message the router could not
        // place says nothing about the route, and taking it as confirmed
        // would teach the router its own guess. Naming an intent always counts.
        let label_intent = match (&intent, &action) {
            (Some(i), _) => Some(i.clone()),
            (None, Action::Reject { .. }) => None,
            (None, _) => match self.store.decision(tenant_id, item.decision_id).await? {
                Some(decision)
                    if matches!(action, Action::Edit { .. }) && route_was_unsure(&decision) =>
                {
                    None
                }
                Some(decision) => decision.intent,
                None => None,
            },
        };
        let mut event_data = event_data;
        event_data["label_intent"] = json!(label_intent);
        event_data["version"] = json!(item.version);
        let reply_message = final_reply.clone().map(|body| NewMessage {
            id: Uuid::now_v7(),
            role: Role::Reviewer,
            body,
            metadata: Some(json!({ "review_id": id, "reviewer": reviewer })),
            idempotency: None,
            created_at: now,
        });
        let mut notifications = Vec::new();
        if let Some(message) = &reply_message {
            notifications.extend(
                self.notifier
                    .message_created_for(tenant_id, item.conversation_id, message, Some(id))
                    .await,
            );
        }
        notifications.extend(self.notifier.slack_update(tenant_id, id, None).await);
        let resolution = Resolution {
            review_id: id,
            reviewer: reviewer.clone(),
            expected_version,
            action: action.name().into(),
            final_reply: final_reply.clone(),
            reply_message,
            notifications,
            event: NewReviewEvent {
                id: Uuid::now_v7(),
                actor: reviewer.clone(),
                kind: format!("resolved.{}", action.name()),
                data: event_data,
            },
            feedback: NewFeedback {
                id: Uuid::now_v7(),
                label_intent,
            },
            now,
        };
        Ok(self.store.resolve_review(tenant_id, &resolution).await?)
    }
}

/// The decision sent the message to review because of its route: too
/// unsure, too close to call, or no SOP for it.
pub(crate) fn route_was_unsure(decision: &crate::store::Decision) -> bool {
    use crate::pipeline::Reason;
    let unsure = [
        Reason::LowConfidence,
        Reason::AmbiguousRoute,
        Reason::NoRoute,
    ]
    .map(|reason| reason.to_string());
    decision.reasons.0.as_array().is_some_and(|reasons| {
        reasons
            .iter()
            .filter_map(|r| r.as_str())
            .any(|r| unsure.iter().any(|u| u == r))
    })
}

impl ReviewService {
    /// Assigns an item to a named reviewer, who then holds it with a fresh
    /// lease (taking it from whoever held it). For the console this is an
    /// admin action; over the tenant API key anyone with the key may do it.
    pub async fn assign(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        actor: &str,
        assignee: &str,
    ) -> Result<ReviewItem, ReviewError> {
        let actor = validate_reviewer(actor)?;
        let claim = self.claim(assignee).map_err(|_| ReviewError::Invalid {
            field: "assignee",
            message: "must be a non-empty name of at most 200 characters".into(),
        })?;
        let item = self
            .store
            .assign_review(tenant_id, id, &actor, &claim)
            .await?;
        Ok(self.announce(item).await)
    }

    /// Asks the customer for more information: the question goes to the
    /// conversation, the reviewer's claim ends and the item waits, out of
    /// claim-next, until the customer's next message joins it.
    pub async fn request_info(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        reviewer: &str,
        question: &str,
        expected_version: Option<i64>,
    ) -> Result<ReviewItem, ReviewError> {
        let reviewer = validate_reviewer(reviewer)?;
        let question = non_empty("message", question)?;
        let now = Utc::now();
        let message = NewMessage {
            id: Uuid::now_v7(),
            role: Role::Reviewer,
            body: question,
            metadata: Some(
                json!({ "review_id": id, "reviewer": reviewer, "kind": "info_request" }),
            ),
            idempotency: None,
            created_at: now,
        };
        let mut notifications = Vec::new();
        if self.notifier.has_webhooks()
            && let Some(item) = self.store.review(tenant_id, id).await?
        {
            notifications.extend(
                self.notifier
                    .message_created_for(tenant_id, item.conversation_id, &message, Some(id))
                    .await,
            );
        }
        notifications.extend(self.notifier.slack_update(tenant_id, id, None).await);
        let request = InfoRequest {
            review_id: id,
            reviewer: reviewer.clone(),
            expected_version,
            message,
            notifications,
            now,
        };
        Ok(self.store.request_info(tenant_id, &request).await?)
    }

    /// Moves an item the reviewer holds to another active SOP: its template
    /// drafts a new reply for the conversation, and the item takes the SOP's
    /// priority and SLA (counted from when the item was opened). The item
    /// stays claimed. `intent` labels the message for the feedback store; it
    /// may be left out when the SOP has a single intent.
    pub async fn reroute(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        reviewer: &str,
        sop_id: &str,
        intent: Option<String>,
        expected_version: Option<i64>,
    ) -> Result<ReviewItem, ReviewError> {
        let reviewer = validate_reviewer(reviewer)?;
        let sop = self
            .sops
            .active()
            .find(|s| s.id() == sop_id.trim())
            .cloned()
            .ok_or_else(|| ReviewError::Invalid {
                field: "sop",
                message: format!("`{sop_id}` is not the id of an active SOP"),
            })?;
        let label = match (intent, sop.file.intents.as_slice()) {
            (Some(i), intents) if intents.contains(&i) => i,
            (Some(i), _) => {
                return Err(ReviewError::Invalid {
                    field: "intent",
                    message: format!("`{i}` is not an intent of SOP `{}`", sop.id()),
                });
            }
            (None, [only]) => only.clone(),
            (None, _) => {
                return Err(ReviewError::Invalid {
                    field: "intent",
                    message: format!(
                        "SOP `{}` has several intents ({}); say which one",
                        sop.id(),
                        sop.file.intents.join(", ")
                    ),
                });
            }
        };
        let item = self
            .store
            .review(tenant_id, id)
            .await?
            .ok_or(ReviewError::NotFound)?;
        let conversation = self
            .store
            .conversation(tenant_id, item.conversation_id)
            .await?
            .ok_or(ReviewError::NotFound)?;
        let messages = self
            .store
            .conversation_messages(tenant_id, item.conversation_id)
            .await?;
        let Some(last) = messages
            .iter()
            .rposition(|m| m.role == Role::Customer.as_str())
        else {
            return Err(ReviewError::Conflict(
                "the conversation has no customer message".into(),
            ));
        };
        let history: Vec<HistoryItem> = messages[..last]
            .iter()
            .map(|m| HistoryItem {
                role: m.role.clone(),
                body: m.body.clone(),
            })
            .collect();
        let context = DraftContext {
            customer: CustomerView {
                id: &conversation.customer_id,
                name: conversation.customer_name.as_deref(),
                email: conversation.customer_email.as_deref(),
            },
            message: MessageView {
                text: &messages[last].body,
                channel: conversation.channel.as_deref(),
            },
            conversation: ConversationView {
                id: conversation.id,
            },
            intent: &label,
            confidence: 1.0,
            flags: Vec::new(),
            history: &history,
        };
        // A template that fails leaves no draft: the reviewer writes the reply.
        let draft = crate::agent::draft(&self.sops, &sop, &context)
            .inspect_err(|err| tracing::error!(sop = sop.reference(), error = %err, "SOP template failed to render on reroute"))
            .ok();
        let esc = &sop.file.escalation;
        let sla = esc
            .sla_minutes
            .map_or(self.default_sla, |m| Duration::minutes(i64::from(m)));
        let now = Utc::now();
        let reroute = Reroute {
            review_id: id,
            reviewer: reviewer.clone(),
            expected_version,
            sop_ref: sop.reference(),
            draft: draft.clone(),
            priority: esc.priority.rank(),
            due_at: item.created_at + sla,
            event: NewReviewEvent {
                id: Uuid::now_v7(),
                actor: reviewer,
                kind: "rerouted".into(),
                data: json!({
                    "before": { "sop_ref": item.sop_ref, "draft": item.draft, "priority": item.priority },
                    "after": { "sop_ref": sop.reference(), "draft": draft, "priority": esc.priority.rank() },
                    "label_intent": label,
                    "version": item.version,
                }),
            },
            feedback: NewFeedback {
                id: Uuid::now_v7(),
                label_intent: Some(label),
            },
            now,
        };
        let item = self.store.reroute_review(tenant_id, &reroute).await?;
        Ok(self.announce(item).await)
    }
}

impl ReviewService {
    /// A label for the feedback store: an intent of an active SOP, or `oos`,
    /// which labels a message no SOP covers (the router learns to send such
    /// messages to review instead of to the nearest SOP).
    fn validate_label(&self, intent: &str) -> Result<(), ReviewError> {
        if intent == OUT_OF_SCOPE || self.sops.for_intent(intent).is_some() {
            return Ok(());
        }
        Err(ReviewError::Invalid {
            field: "intent",
            message: format!(
                "`{intent}` is not an intent of any active SOP (`{OUT_OF_SCOPE}` labels a message no SOP covers)"
            ),
        })
    }

    /// Records which intent a spot-checked automatic answer was about (the
    /// routed one when it was right). A second label corrects the first.
    /// Confirming the routed intent is always allowed, even when no active
    /// SOP has it any more: it says the answer given then was right.
    pub async fn label_spot_check(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        reviewer: &str,
        intent: &str,
    ) -> Result<SpotCheck, ReviewError> {
        let reviewer = validate_reviewer(reviewer)?;
        let intent = non_empty("intent", intent)?;
        let sampled = self
            .store
            .spot_check(tenant_id, id)
            .await?
            .ok_or(ReviewError::NotFound)?;
        if sampled.routed_intent.as_deref() != Some(intent.as_str()) {
            self.validate_label(&intent)?;
        }
        let check = self
            .store
            .label_spot_check(tenant_id, id, &intent, &reviewer, Utc::now())
            .await?
            .ok_or(ReviewError::NotFound)?;
        metrics::counter!(
            "sopr_spot_checks_labelled_total",
            "verdict" => if check.routed_intent.as_deref() == Some(intent.as_str()) { "right" } else { "wrong" }
        )
        .increment(1);
        Ok(check)
    }
}

/// What reviewers' spot checks say about the automatic answers of a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpotCheckSummary {
    pub sampled: i64,
    pub labelled: i64,
    /// Labelled with the intent the router chose.
    pub right: i64,
    /// `right / labelled`, with its 95% (Wilson score) interval.
    pub accuracy: Option<f64>,
    pub interval: Option<[f64; 2]>,
    /// `routing.target_accuracy`: what the automatic answers were calibrated to reach.
    pub target: Option<f64>,
    /// The whole interval lies below the target: more labels will not make
    /// the shortfall go away.
    pub below_target: bool,
}

impl SpotCheckSummary {
    pub fn new(counts: SpotCheckCounts, target: Option<f64>) -> SpotCheckSummary {
        let (n, k) = (counts.labelled, counts.right);
        let accuracy = (n > 0).then(|| k as f64 / n as f64);
        let interval = accuracy.map(|p| wilson_interval(p, n as f64));
        SpotCheckSummary {
            sampled: counts.sampled,
            labelled: n,
            right: k,
            accuracy,
            interval,
            target,
            below_target: matches!((interval, target), (Some([_, high]), Some(t)) if high < t),
        }
    }
}

/// Spot checks of a period, in all and per SOP version that answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpotCheckReport {
    pub total: SpotCheckSummary,
    pub by_sop: Vec<SopSpotCheckSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SopSpotCheckSummary {
    pub sop_ref: Option<String>,
    #[serde(flatten)]
    pub summary: SpotCheckSummary,
}

impl SpotCheckReport {
    pub fn new(groups: &[SopSpotChecks], target: Option<f64>) -> SpotCheckReport {
        SpotCheckReport {
            total: SpotCheckSummary::new(SpotCheckCounts::total(groups), target),
            by_sop: groups
                .iter()
                .map(|g| SopSpotCheckSummary {
                    sop_ref: g.sop_ref.clone(),
                    summary: SpotCheckSummary::new(g.counts, target),
                })
                .collect(),
        }
    }
}

/// The 95% Wilson score interval of a share `p` observed over `n` trials:
/// unlike `p ± 1.96·se`, it stays inside [0, 1] and is honest when `p` is
/// near 1, as the accuracy of automatic answers is.
fn wilson_interval(p: f64, n: f64) -> [f64; 2] {
    const Z: f64 = 1.959_963_984_540_054;
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

fn validate_reviewer(reviewer: &str) -> Result<String, ReviewError> {
    let reviewer = reviewer.trim();
    if reviewer.is_empty() || reviewer.chars().count() > 200 {
        return Err(ReviewError::Invalid {
            field: "reviewer",
            message: "must be a non-empty name of at most 200 characters".into(),
        });
    }
    Ok(reviewer.to_string())
}

fn non_empty(field: &'static str, value: &str) -> Result<String, ReviewError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ReviewError::Invalid {
            field,
            message: "must not be empty".into(),
        });
    }
    if value.chars().count() > MAX_REPLY_CHARS {
        return Err(ReviewError::Invalid {
            field,
            message: format!("must be at most {MAX_REPLY_CHARS} characters"),
        });
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spot_check_accuracy_comes_with_its_interval_and_the_target() {
        let summary = |labelled, right, target| {
            SpotCheckSummary::new(
                SpotCheckCounts {
                    sampled: 500,
                    labelled,
                    right,
                },
                target,
            )
        };
        let none = summary(0, 0, Some(0.98));
        assert_eq!(
            (none.accuracy, none.interval, none.below_target),
            (None, None, false)
        );
        // 196 of 200: 0.98, interval about 0.950–0.992 (Wilson, 95%).
        let s = summary(200, 196, Some(0.98));
        assert_eq!(s.accuracy, Some(0.98));
        let [low, high] = s.interval.unwrap();
        assert!(
            (low - 0.9497).abs() < 1e-3 && (high - 0.9922).abs() < 1e-3,
            "{low} {high}"
        );
        assert!(!s.below_target);
        // 180 of 200 (0.90, up to about 0.937) cannot be a 0.98 router having a bad day.
        assert!(summary(200, 180, Some(0.98)).below_target);
        assert!(
            !summary(200, 180, None).below_target,
            "no target, no verdict"
        );
        // All right: the interval still admits some error; never above 1.
        let [low, high] = summary(20, 20, None).interval.unwrap();
        assert!(low > 0.8 && low < 0.85 && high == 1.0, "{low} {high}");
    }
}
