//! One inbound customer message → one decision. This is the only place that
//! knows the order of the steps (screen → route → resolve SOP → draft → decide →
//! persist) and the only place that decides whether a reply goes out without a
//! person. The rules are declared (SOP escalation block, config); the model only
//! ranks intents.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use chrono::{Duration, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use tokio::sync::mpsc::UnboundedSender;

use crate::agent::{
    self, ConversationView, CustomerView, DraftContext, HistoryItem, LlmAgent, LlmDraft,
    MessageView,
};
use crate::config::Config;
use crate::llm::{Ledger, Llm};
use crate::routing::screen::{self, Screen, TopicError, flag_matches};
use crate::routing::{Classifier, Flag};
use crate::sop::{Priority, Sop, SopSet};
use crate::store::{
    Conversation, Decision, Exchange, Idempotency, NewMessage, NewReviewItem, ReviewPlan, Role,
    Store, StoreError, Tenant,
};

/// A validated inbound message.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub conversation_id: Option<Uuid>,
    pub customer: Customer,
    pub text: String,
    pub channel: Option<String>,
    pub metadata: Option<Value>,
    pub idempotency_key: Option<String>,
    /// Hash of the request body, to tell a retry from a reused key.
    pub request_hash: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Customer {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// What the API answers for one message.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Outcome {
    pub conversation_id: Uuid,
    pub message_id: Uuid,
    /// The decision record (route, flags, reasons, LLM calls) for this message.
    pub decision_id: Uuid,
    /// `answered` or `queued`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_id: Option<Uuid>,
    pub route: Route,
    pub flags: Vec<String>,
    /// Why the case was queued (empty when answered).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Route {
    pub intent: Option<String>,
    pub sop: Option<String>,
    pub confidence: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("conversation {0} not found")]
    ConversationNotFound(Uuid),
    #[error("conversation {conversation} belongs to another customer")]
    CustomerMismatch { conversation: Uuid },
    #[error("the Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a pipeline could not be built from its config and SOPs.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("LLM mode: {0}")]
    Llm(String),
}

/// Why a case needs a person. Rendered as `low_confidence`, `flag:pii.email`, …
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The conversation already waits for a person; the message joins that item.
    OpenReview,
    NoRoute,
    LowConfidence,
    /// The two best intents are too close to call.
    AmbiguousRoute,
    AlwaysReview,
    Flag(String),
    TemplateError,
    /// The model asked for a person (`escalate: true`).
    ModelEscalated,
    /// The model's answer failed the SOP's output schema, also after one repair.
    SchemaFailure,
    LlmRefused,
    /// No LLM provider answered in time; the template draft waits for a reviewer.
    LlmUnavailable,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::OpenReview => f.write_str("open_review"),
            Reason::NoRoute => f.write_str("no_route"),
            Reason::LowConfidence => f.write_str("low_confidence"),
            Reason::AmbiguousRoute => f.write_str("ambiguous_route"),
            Reason::AlwaysReview => f.write_str("always_review"),
            Reason::Flag(name) => write!(f, "flag:{name}"),
            Reason::TemplateError => f.write_str("template_error"),
            Reason::ModelEscalated => f.write_str("model_escalated"),
            Reason::SchemaFailure => f.write_str("schema_failure"),
            Reason::LlmRefused => f.write_str("llm_refused"),
            Reason::LlmUnavailable => f.write_str("llm_unavailable"),
        }
    }
}

/// What the router concluded about one message, as the rules need it.
#[derive(Debug, Clone, Copy)]
pub struct RouteSignal {
    /// Calibrated probability of the best intent.
    pub confidence: f64,
    /// Best minus second-best probability.
    pub margin: f64,
    /// Threshold chosen for `routing.target_accuracy`, when one is configured.
    pub auto_threshold: Option<f64>,
    /// The LLM classifier chose this route for a message in the ambiguous
    /// band (`llm.classifier`): confidence and margin rules are met by that choice.
    pub confirmed: bool,
}

/// The escalation rule. A case is answered automatically only if the reason
/// list is empty; nothing else in sopr may send an unreviewed reply.
pub fn decide(
    sop: Option<&Sop>,
    route: RouteSignal,
    flags: &[Flag],
    draft_ok: bool,
    config: &Config,
) -> Vec<Reason> {
    let mut reasons = Vec::new();
    let Some(sop) = sop else {
        reasons.push(Reason::NoRoute);
        reasons.extend(forced_flags(
            flags,
            &config.escalation.force_review_flags,
            &[],
        ));
        return reasons;
    };
    let esc = &sop.file.escalation;
    // A target-accuracy threshold replaces the default; an SOP's own
    // min_confidence stays a floor either way.
    let threshold = match route.auto_threshold {
        Some(auto) => esc.min_confidence.map_or(auto, |own| own.max(auto)),
        None => esc
            .min_confidence
            .unwrap_or(config.routing.default_min_confidence),
    };
    if route.confidence < threshold && !route.confirmed {
        reasons.push(Reason::LowConfidence);
    }
    if route.margin < config.routing.min_margin && !route.confirmed {
        reasons.push(Reason::AmbiguousRoute);
    }
    if esc.always_review {
        reasons.push(Reason::AlwaysReview);
    }
    reasons.extend(forced_flags(
        flags,
        &config.escalation.force_review_flags,
        &esc.on_flags,
    ));
    if !draft_ok {
        reasons.push(Reason::TemplateError);
    }
    reasons
}

/// What the model's draft adds to the reasons. A model can ask for review
/// or fail; it can never remove a reason.
pub fn model_reasons(draft: &LlmDraft) -> Option<Reason> {
    match draft {
        LlmDraft::Reply {
            escalate: false, ..
        } => None,
        LlmDraft::Reply { escalate: true, .. } => Some(Reason::ModelEscalated),
        LlmDraft::SchemaFailure { .. } => Some(Reason::SchemaFailure),
        LlmDraft::Refused => Some(Reason::LlmRefused),
        LlmDraft::Unavailable { .. } => Some(Reason::LlmUnavailable),
    }
}

fn forced_flags(flags: &[Flag], global: &[String], sop: &[String]) -> Vec<Reason> {
    flags
        .iter()
        .filter(|f| global.iter().chain(sop).any(|p| flag_matches(p, &f.name)))
        .map(|f| Reason::Flag(f.name.clone()))
        .collect()
}

/// The screen `serve` runs: the configuration's topic lists and every SOP
/// version's own.
pub fn screen_for(config: &Config, sops: &SopSet) -> Result<Screen, TopicError> {
    let mut screen = Screen::from_config(&config.screen)?;
    for sop in &sops.versions {
        if let Some(own) = &sop.file.screen {
            screen.add_sop_topics(&sop.reference(), &own.topics)?;
        }
    }
    Ok(screen)
}

/// The reasons `serve`'s rules give for reviewing a new message, from its
/// ranked intents alone (`sopr eval --sops`): no conversation history, no
/// LLM second opinion, the deployment's topic lists plus `tenant`'s when
/// given, and a template that renders. An empty list means it would be
/// answered.
pub fn reasons_for(
    text: &str,
    ranked: &crate::routing::Ranked,
    sops: &SopSet,
    screen: &Screen,
    tenant: Option<&str>,
    auto_threshold: Option<f64>,
    config: &Config,
) -> Vec<Reason> {
    let (intent, confidence) = ranked.first().cloned().unwrap_or_default();
    let sop = sops.for_intent(&intent);
    let mut flags = match tenant {
        Some(tenant) => screen.screen_for_tenant(tenant, text),
        None => screen.screen(text),
    };
    if let Some(sop) = sop {
        screen.screen_for_sop(&sop.reference(), text, &mut flags);
    }
    let signal = RouteSignal {
        confidence,
        margin: confidence - ranked.get(1).map_or(0.0, |r| r.1),
        auto_threshold,
        confirmed: false,
    };
    decide(sop.map(|s| s.as_ref()), signal, &flags, true, config)
}

pub struct Pipeline {
    store: Arc<dyn Store>,
    sops: Arc<SopSet>,
    /// Replaced whole when the router is retrained while serving; a message
    /// is routed and recorded with the one it read first.
    routing: RwLock<Arc<Routing>>,
    config: Arc<Config>,
    screen: Screen,
    /// LLM mode; `None` drafts from templates only.
    llm: Option<LlmAgent>,
    notifier: Arc<crate::notify::Notifier>,
}

/// A router model and the `routing.target_accuracy` threshold it gives.
pub struct Routing {
    pub classifier: Arc<Classifier>,
    pub auto_threshold: Option<f64>,
}

/// The threshold `routing.target_accuracy` asks for, from the model's calibration.
/// When no threshold on the held-out data reaches the target, nothing is
/// answered automatically (threshold above 1) rather than silently less accurate.
pub fn auto_threshold(classifier: &Classifier, config: &Config) -> Option<f64> {
    let target = config.routing.target_accuracy?;
    match classifier.calibration() {
        Some(c) => match c.threshold {
            Some(t) => Some(t),
            None => {
                tracing::warn!(
                    target,
                    "no router threshold reaches routing.target_accuracy: every message goes to review"
                );
                Some(1.01)
            }
        },
        None => {
            tracing::warn!(
                "too little training data to calibrate; routing.target_accuracy is ignored"
            );
            None
        }
    }
}

impl Pipeline {
    /// Compiles the screen once: the config's topics and each SOP version's own.
    pub fn new(
        store: Arc<dyn Store>,
        sops: Arc<SopSet>,
        classifier: Arc<Classifier>,
        config: Arc<Config>,
        llm: Option<Arc<Llm>>,
        notifier: Arc<crate::notify::Notifier>,
    ) -> Result<Pipeline, BuildError> {
        let screen = screen_for(&config, &sops)?;
        let routing = RwLock::new(Arc::new(Routing {
            auto_threshold: auto_threshold(&classifier, &config),
            classifier,
        }));
        let llm = llm
            .map(|llm| LlmAgent::new(llm, &sops))
            .transpose()
            .map_err(BuildError::Llm)?;
        Ok(Pipeline {
            store,
            sops,
            routing,
            config,
            screen,
            llm,
            notifier,
        })
    }

    pub fn sops(&self) -> &Arc<SopSet> {
        &self.sops
    }

    /// The router model and threshold in use now.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn classifier(&self) -> Arc<Classifier> {
        self.routing().classifier.clone()
    }

    /// Routes the following messages with `classifier` (a retrained router);
    /// messages being handled finish with the model they started with.
    pub fn replace_classifier(&self, classifier: Arc<Classifier>) {
        let routing = Arc::new(Routing {
            auto_threshold: auto_threshold(&classifier, &self.config),
            classifier,
        });
        *self.routing.write().unwrap_or_else(PoisonError::into_inner) = routing;
    }

    /// Handles one message. Returns the outcome and whether it is a replay of an
    /// earlier request with the same idempotency key.
    pub async fn handle(
        &self,
        tenant: &Tenant,
        inbound: &Inbound,
    ) -> Result<(Outcome, bool), PipelineError> {
        self.handle_streaming(tenant, inbound, None).await
    }

    /// As [`Pipeline::handle`]; with `deltas`, an LLM reply is also sent piece
    /// by piece as it is written. The returned outcome is what counts: a
    /// streamed reply may still end in review (say, invalid output).
    pub async fn handle_streaming(
        &self,
        tenant: &Tenant,
        inbound: &Inbound,
        deltas: Option<&UnboundedSender<String>>,
    ) -> Result<(Outcome, bool), PipelineError> {
        if let Some(replay) = self.replay(tenant, inbound).await? {
            return Ok((replay, true));
        }
        // Two attempts: a concurrent message on the same conversation may open or
        // resolve its review item between our read and our write.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.process(tenant, inbound, deltas).await {
                Err(PipelineError::Store(StoreError::Conflict(name)))
                    if name == "messages_idempotency" =>
                {
                    return match self.replay(tenant, inbound).await? {
                        Some(replay) => Ok((replay, true)),
                        None => Err(PipelineError::Store(StoreError::Conflict(name))),
                    };
                }
                Err(PipelineError::Store(StoreError::Conflict(name)))
                    if attempt < 3
                        && (name == "review_items_one_open" || name == "review_resolved") =>
                {
                    continue;
                }
                other => return other.map(|o| (o, false)),
            }
        }
    }

    async fn replay(
        &self,
        tenant: &Tenant,
        inbound: &Inbound,
    ) -> Result<Option<Outcome>, PipelineError> {
        let Some(key) = &inbound.idempotency_key else {
            return Ok(None);
        };
        let Some(stored) = self.store.idempotent_replay(tenant.id, key).await? else {
            return Ok(None);
        };
        if stored.request_hash != inbound.request_hash {
            return Err(PipelineError::IdempotencyKeyReused);
        }
        serde_json::from_value(stored.response)
            .map(Some)
            .map_err(|e| PipelineError::Store(StoreError::Other(e.into())))
    }

    async fn process(
        &self,
        tenant: &Tenant,
        inbound: &Inbound,
        deltas: Option<&UnboundedSender<String>>,
    ) -> Result<Outcome, PipelineError> {
        let started = Instant::now();
        let llm_settings = &self.config.llm;
        let deadline = tokio::time::Instant::from_std(started)
            + std::time::Duration::from_millis(llm_settings.deadline_ms - llm_settings.reserve_ms);
        let ledger = Ledger::default();
        let now = Utc::now();
        let existing = match inbound.conversation_id {
            Some(id) => {
                let conversation = self
                    .store
                    .conversation(tenant.id, id)
                    .await?
                    .ok_or(PipelineError::ConversationNotFound(id))?;
                if conversation.customer_id != inbound.customer.id {
                    return Err(PipelineError::CustomerMismatch { conversation: id });
                }
                Some(conversation)
            }
            None => None,
        };
        let conversation_id = existing.as_ref().map_or_else(Uuid::now_v7, |c| c.id);
        let open_review = match &existing {
            Some(c) => {
                self.store
                    .open_review_for_conversation(tenant.id, c.id)
                    .await?
            }
            None => None,
        };

        let history: Vec<HistoryItem> = match &existing {
            Some(c) => self
                .store
                .conversation_messages(tenant.id, c.id)
                .await?
                .into_iter()
                .map(|m| HistoryItem {
                    role: m.role,
                    body: m.body,
                })
                .collect(),
            None => Vec::new(),
        };

        let t_screen = Instant::now();
        let mut flags = self.screen.screen_for_tenant(&tenant.name, &inbound.text);
        let mut screen_us = t_screen.elapsed().as_micros() as u64;
        let t_route = Instant::now();
        // Enough intents for the decision record (3) and the LLM's candidates.
        let keep = self.config.llm.classifier.top_k.max(3);
        let routing = self.routing();
        let ranked = routing.classifier.classify_top(&inbound.text, keep);
        let route_us = t_route.elapsed().as_micros() as u64;
        let (mut intent, mut confidence) = ranked.first().cloned().unwrap_or_default();
        let mut margin = confidence - ranked.get(1).map_or(0.0, |r| r.1);
        let confirmed = match self
            .second_opinion(
                confidence,
                &ranked,
                inbound,
                open_review.is_some(),
                deadline,
                &ledger,
            )
            .await
        {
            Some(choice) => {
                // Record the chosen intent with the router's own probability for it.
                confidence = ranked
                    .iter()
                    .find(|(i, _)| *i == choice)
                    .map_or(0.0, |r| r.1);
                margin = 0.0;
                intent = choice;
                true
            }
            None => false,
        };
        let sop = self.sops.for_intent(&intent).cloned();
        // A SOP's own topics apply to the messages routed to it, whatever the
        // confidence: a guessed route is reviewed anyway, and the flag helps.
        if let Some(sop) = &sop {
            let t_sop_screen = Instant::now();
            self.screen
                .screen_for_sop(&sop.reference(), &inbound.text, &mut flags);
            screen_us += t_sop_screen.elapsed().as_micros() as u64;
        }

        let flag_names: Vec<&str> = flags.iter().map(|f| f.name.as_str()).collect();
        let context = DraftContext {
            customer: CustomerView {
                id: &inbound.customer.id,
                name: inbound.customer.name.as_deref(),
                email: inbound.customer.email.as_deref(),
            },
            message: MessageView {
                text: &inbound.text,
                channel: inbound.channel.as_deref(),
            },
            conversation: ConversationView {
                id: conversation_id,
            },
            intent: &intent,
            confidence,
            flags: flag_names.clone(),
            history: &history,
        };
        let mut llm_us = 0;
        let t_draft = Instant::now();
        let draft = sop
            .as_deref()
            .map(|s| agent::draft(&self.sops, s, &context));
        let draft_us = t_draft.elapsed().as_micros() as u64;
        if let Some(Err(err)) = &draft {
            tracing::error!(sop = sop.as_ref().map(|s| s.reference()), error = %err, "SOP template failed to render");
        }
        let draft_text = draft.as_ref().and_then(|d| d.as_ref().ok()).cloned();
        let signal = RouteSignal {
            confidence,
            margin,
            auto_threshold: routing.auto_threshold,
            confirmed,
        };
        let mut reasons = decide(
            sop.as_deref(),
            signal,
            &flags,
            draft_text.is_some() || sop.is_none(),
            &self.config,
        );
        // Below its threshold the routed SOP is only a guess: its holding reply,
        // priority and SLA (say, "our fraud team will call") must not apply.
        let trusted_sop = sop.as_deref().filter(|_| {
            !reasons
                .iter()
                .any(|r| matches!(r, Reason::LowConfidence | Reason::AmbiguousRoute))
        });

        // LLM mode drafts only what the rules would send: a case that goes to
        // a person anyway keeps the template draft and costs no model call.
        let mut llm_draft = None;
        let mut draft_text = draft_text;
        if let (Some(agent), Some(sop)) = (&self.llm, trusted_sop)
            && reasons.is_empty()
            && open_review.is_none()
            && agent.handles(sop)
        {
            let t_llm = Instant::now();
            let result = agent
                .draft(&self.sops, sop, &context, deadline, &ledger, deltas)
                .await;
            llm_us = t_llm.elapsed().as_micros() as u64;
            reasons.extend(model_reasons(&result));
            if let LlmDraft::Reply { text, .. } = &result {
                draft_text = Some(text.clone());
            }
            llm_draft = Some(result);
        }

        let message_id = Uuid::now_v7();
        let decision_id = Uuid::now_v7();
        let sop_ref = sop.as_ref().map(|s| s.reference());
        let (outcome, decision_outcome, reply_text, review) = if let Some(open) = &open_review {
            // The case is with a person: the bot stays silent on this conversation.
            reasons.insert(0, Reason::OpenReview);
            (
                "queued",
                "joined",
                None,
                ReviewPlan::Join {
                    review_id: open.id,
                    priority: self.flag_priority(&flags).rank(),
                    // The SLA stood still while the item waited for this answer.
                    resume_due_at: open
                        .waiting_since
                        .map(|since| open.due_at + (now - since).max(Duration::zero())),
                },
            )
        } else if reasons.is_empty() {
            ("answered", "answered", draft_text.clone(), ReviewPlan::None)
        } else {
            let esc = trusted_sop.map(|s| &s.file.escalation);
            let sla = esc
                .and_then(|e| e.sla_minutes)
                .unwrap_or(self.config.review.default_sla_minutes);
            let priority = esc
                .map_or(Priority::Normal, |e| e.priority)
                .max(self.flag_priority(&flags));
            let holding = self.holding_reply(trusted_sop, &context);
            let item = NewReviewItem {
                id: Uuid::now_v7(),
                priority: priority.rank(),
                reasons: json!(reasons.iter().map(ToString::to_string).collect::<Vec<_>>()),
                draft: draft_text.clone(),
                due_at: now + Duration::minutes(i64::from(sla)),
            };
            ("queued", "queued", Some(holding), ReviewPlan::Create(item))
        };
        let review_id = match &review {
            ReviewPlan::Create(item) => Some(item.id),
            ReviewPlan::Join { review_id, .. } => Some(*review_id),
            ReviewPlan::None => None,
        };
        let top: Vec<Value> = ranked
            .iter()
            .take(3)
            .map(|(i, p)| json!({ "intent": i, "probability": p }))
            .collect();
        let response = Outcome {
            conversation_id,
            message_id,
            decision_id,
            outcome: outcome.into(),
            reply: reply_text.clone(),
            review_id,
            route: Route {
                intent: (!intent.is_empty()).then(|| intent.clone()),
                sop: sop_ref.clone(),
                confidence,
            },
            flags: flag_names.iter().map(|s| s.to_string()).collect(),
            reasons: reasons.iter().map(ToString::to_string).collect(),
        };
        let response_json =
            serde_json::to_value(&response).map_err(|e| StoreError::Other(e.into()))?;
        let decision = Decision {
            id: decision_id,
            conversation_id,
            message_id,
            intent: response.route.intent.clone(),
            confidence,
            top_intents: sqlx::types::Json(Value::Array(top)),
            flags: sqlx::types::Json(serde_json::to_value(&flags).unwrap_or_default()),
            sop_ref,
            model_version: routing.classifier.version().to_string(),
            outcome: decision_outcome.into(),
            reasons: sqlx::types::Json(json!(response.reasons)),
            draft: draft_text,
            timings: sqlx::types::Json(json!({
                "screen_us": screen_us,
                "route_us": route_us,
                "draft_us": draft_us,
                "llm_us": llm_us,
                "total_us": started.elapsed().as_micros() as u64,
            })),
            llm: llm_record(confirmed, llm_draft.as_ref(), &ledger).map(sqlx::types::Json),
            created_at: now,
        };
        let new_conversation = existing.is_none().then(|| Conversation {
            id: conversation_id,
            tenant_id: tenant.id,
            customer_id: inbound.customer.id.clone(),
            customer_name: inbound.customer.name.clone(),
            customer_email: inbound.customer.email.clone(),
            channel: inbound.channel.clone(),
            created_at: now,
            updated_at: now,
        });
        let reply = reply_text.map(|body| NewMessage {
            id: Uuid::now_v7(),
            role: Role::Bot,
            body,
            metadata: None,
            idempotency: None,
            // Strictly after the customer's message so conversations read in order.
            created_at: now + Duration::microseconds(1),
        });
        let mut notifications: Vec<_> = reply
            .iter()
            .filter_map(|r| {
                self.notifier
                    .message_created(&tenant.name, conversation_id, r, review_id)
            })
            .collect();
        if let (ReviewPlan::Create(item), Some(sop)) = (&review, &sop) {
            let summary = crate::notify::ReviewSummary {
                review_id: item.id,
                sop_ref: sop.reference(),
                sop_title: sop.file.title.clone(),
                priority: Priority::from_rank(item.priority).as_str().into(),
                reasons: response.reasons.clone(),
                flags: flags.iter().map(|f| f.name.clone()).collect(),
                intent: intent.clone(),
                confidence,
                excerpt: screen::mask_pii(&inbound.text.chars().take(280).collect::<String>()),
                due_at: item.due_at,
            };
            notifications.extend(
                self.notifier
                    .review_created(&sop.file.escalation.notify, &summary),
            );
        }
        // Automatic answers are sampled for spot checks by their decision's
        // random bits, so every replica samples the same share.
        let spot_check = (outcome == "answered"
            && sampled(decision_id, self.config.review.spot_check_share))
        .then(Uuid::now_v7);
        let exchange = Exchange {
            spot_check,
            tenant_id: tenant.id,
            new_conversation,
            conversation_id,
            inbound: NewMessage {
                id: message_id,
                role: Role::Customer,
                body: inbound.text.clone(),
                metadata: inbound.metadata.clone(),
                idempotency: inbound.idempotency_key.as_ref().map(|key| Idempotency {
                    key: key.clone(),
                    request_hash: inbound.request_hash.clone(),
                    response: response_json,
                }),
                created_at: now,
            },
            decision,
            notifications,
            reply,
            review,
        };
        self.store.record_exchange(&exchange).await?;
        metrics::counter!("sopr_messages_total", "outcome" => outcome).increment(1);
        if spot_check.is_some() {
            metrics::counter!("sopr_spot_checks_total").increment(1);
        }
        // The router's confidence on live traffic, and why messages go to
        // people: a drift in either shows before reviewers feel it.
        metrics::histogram!("sopr_router_confidence").record(confidence);
        for reason in &response.reasons {
            metrics::counter!("sopr_review_reasons_total", "reason" => reason.clone()).increment(1);
        }
        tracing::info!(
            tenant = %tenant.name,
            conversation = %conversation_id,
            outcome,
            intent = %intent,
            confidence = format!("{confidence:.3}"),
            flags = ?response.flags,
            reasons = ?response.reasons,
            // Mask before cutting: a number cut in half no longer looks like one.
            text = %truncate(&screen::mask_pii(&inbound.text), 120),
            "message decided"
        );
        Ok(response)
    }

    /// The least priority the fired flags demand (`review.flag_priority`).
    fn flag_priority(&self, flags: &[Flag]) -> Priority {
        flags
            .iter()
            .flat_map(|f| {
                self.config
                    .review
                    .flag_priority
                    .iter()
                    .filter(|(pattern, _)| flag_matches(pattern, &f.name))
                    .map(|(_, p)| *p)
            })
            .max()
            .unwrap_or(Priority::Low)
    }

    /// The LLM classifier's choice for a message in the ambiguous band, if
    /// it is enabled and picks one of the router's top candidates.
    async fn second_opinion(
        &self,
        confidence: f64,
        ranked: &[(String, f64)],
        inbound: &Inbound,
        joins_review: bool,
        deadline: tokio::time::Instant,
        ledger: &Ledger,
    ) -> Option<String> {
        let agent = self.llm.as_ref()?;
        let band = &self.config.llm.classifier;
        if !band.enabled || joins_review || !(band.band_low..band.band_high).contains(&confidence) {
            return None;
        }
        let candidates = &ranked[..band.top_k.min(ranked.len())];
        agent
            .classify(&self.sops, &inbound.text, candidates, deadline, ledger)
            .await
    }

    fn holding_reply(&self, sop: Option<&Sop>, context: &DraftContext<'_>) -> String {
        let tera_context = context.for_sop(sop);
        if let Some(result) = sop.and_then(|s| self.sops.render_holding(s, &tera_context)) {
            match result {
                Ok(text) => return text,
                Err(err) => {
                    tracing::error!(error = %err, "SOP holding reply failed to render; using the default")
                }
            }
        }
        tera::Tera::one_off(&self.config.messages.holding_reply, &tera_context, false)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| {
                "Thanks for your message. A member of our team will reply here shortly.".into()
            })
    }
}

/// The decision's `llm` record: which path routed and drafted, and the calls.
fn llm_record(confirmed: bool, draft: Option<&LlmDraft>, ledger: &Ledger) -> Option<Value> {
    if ledger.is_empty() && draft.is_none() {
        return None;
    }
    let mut record = ledger.summary();
    record["route"] = json!(if confirmed { "llm" } else { "router" });
    record["draft"] = json!(match draft {
        Some(LlmDraft::Reply { .. }) => "llm",
        _ => "template",
    });
    match draft {
        Some(LlmDraft::Reply { provider, .. }) => record["provider"] = json!(provider),
        Some(LlmDraft::SchemaFailure { error } | LlmDraft::Unavailable { error }) => {
            record["error"] = json!(error)
        }
        _ => {}
    }
    Some(record)
}

/// Whether the message decided as `decision_id` falls in a sample of
/// `share`. A v7 UUID from `Uuid::now_v7` carries a 42-bit counter below its
/// timestamp (ids of one millisecond count up), so only its low 32 bits are
/// random: those decide.
fn sampled(decision_id: Uuid, share: f64) -> bool {
    let random = f64::from(decision_id.as_u128() as u32);
    random < share * f64::from(u32::MAX) + share
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sops() -> SopSet {
        SopSet::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sops"))
            .expect("demo SOPs load")
            .0
    }

    fn signal(confidence: f64, auto_threshold: Option<f64>) -> RouteSignal {
        RouteSignal {
            confidence,
            margin: confidence - 0.05,
            auto_threshold,
            confirmed: false,
        }
    }

    #[test]
    fn thresholds_come_from_the_sop_or_the_accuracy_target_with_the_sop_as_floor() {
        let sops = sops();
        let config = Config::default();
        // exchange-rate sets min_confidence 0.6 in the demo set.
        let sop = sops.for_intent("exchange_rate").unwrap();
        let own = sop.file.escalation.min_confidence.unwrap();
        let decide_at = |c, auto| decide(Some(sop), signal(c, auto), &[], true, &config);
        assert!(decide_at(own + 0.01, None).is_empty());
        assert_eq!(decide_at(own - 0.01, None), vec![Reason::LowConfidence]);
        // A stricter target raises the bar…
        assert_eq!(
            decide_at(own + 0.01, Some(own + 0.2)),
            vec![Reason::LowConfidence]
        );
        // …a laxer one never lowers it below the SOP's own floor.
        assert_eq!(
            decide_at(own - 0.01, Some(0.1)),
            vec![Reason::LowConfidence]
        );
        // Without its own min_confidence an SOP would use the target alone.
        assert!(decide_at(own + 0.01, Some(own)).is_empty());
    }

    #[test]
    fn spot_checks_sample_their_share_of_decisions() {
        let ids: Vec<Uuid> = (0..20_000).map(|_| Uuid::now_v7()).collect();
        let share_of = |share: f64| {
            ids.iter().filter(|id| sampled(**id, share)).count() as f64 / ids.len() as f64
        };
        assert_eq!(share_of(0.0), 0.0);
        assert_eq!(share_of(1.0), 1.0);
        for share in [0.02, 0.1, 0.5] {
            let got = share_of(share);
            // Four standard errors of a binomial share over 20,000 draws.
            let tolerance = 4.0 * (share * (1.0 - share) / ids.len() as f64).sqrt();
            assert!((got - share).abs() < tolerance, "{share}: {got}");
        }
    }

    #[test]
    fn every_rule_adds_its_reason() {
        let sops = sops();
        let mut config = Config::default();
        config.routing.min_margin = 0.5;
        let sop = sops.for_intent("compromised_card").unwrap();
        let flags = [Flag {
            name: "pii.card_number".into(),
            evidence: "**** 1234".into(),
        }];
        let reasons = decide(
            Some(sop),
            RouteSignal {
                confidence: 0.3,
                margin: 0.1,
                auto_threshold: None,
                confirmed: false,
            },
            &flags,
            false,
            &config,
        );
        assert_eq!(
            reasons,
            vec![
                Reason::LowConfidence,
                Reason::AmbiguousRoute,
                Reason::AlwaysReview,
                Reason::Flag("pii.card_number".into()),
                Reason::TemplateError
            ]
        );
        assert_eq!(
            decide(None, signal(0.99, None), &[], true, &config),
            vec![Reason::NoRoute]
        );
    }
}
