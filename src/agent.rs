//! Agents draft replies. In template mode (the offline default) an agent renders
//! its SOP's `response.template` with the message context; the same draft is
//! what a reviewer sees when the case is queued. In LLM mode ([`LlmAgent`]) the
//! SOP's `response.llm.system` prompt goes to a model whose answer must be JSON
//! valid against the SOP's `output_schema`; one repair attempt is made with the
//! validation error. Drafting never decides whether the draft is sent:
//! `pipeline` does, and a model can only add reasons for review.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use uuid::Uuid;

use crate::llm::json::{ReplyScanner, parse_valid};
use crate::llm::{ChatMessage, ChatRequest, ChatRole, Ledger, Llm, LlmError, Purpose, Strategy};
use crate::sop::{Sop, SopSet};

/// What a template may refer to. Keep in step with the SOP authoring guide in the README.
#[derive(Debug, Clone, Serialize)]
pub struct DraftContext<'a> {
    pub customer: CustomerView<'a>,
    pub message: MessageView<'a>,
    pub conversation: ConversationView,
    pub intent: &'a str,
    pub confidence: f64,
    pub flags: Vec<&'a str>,
    /// Earlier messages of the conversation, oldest first.
    pub history: &'a [HistoryItem],
}

/// One earlier message of the conversation, as templates and prompts see it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryItem {
    /// `customer`, `bot` or `reviewer`.
    pub role: String,
    pub body: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CustomerView<'a> {
    pub id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageView<'a> {
    pub text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationView {
    pub id: Uuid,
}

impl DraftContext<'_> {
    /// The Tera context for one SOP: the message fields plus `sop` and `steps`.
    pub fn for_sop(&self, sop: Option<&Sop>) -> tera::Context {
        let mut context = tera::Context::from_serialize(self).unwrap_or_default();
        if let Some(sop) = sop {
            context.insert(
                "sop",
                &serde_json::json!({
                    "id": sop.file.id,
                    "version": sop.file.version,
                    "title": sop.file.title,
                    "description": sop.file.description,
                }),
            );
            context.insert("steps", &sop.file.steps);
        }
        context
    }
}

/// Renders the SOP's reply template (template mode).
pub fn draft(sops: &SopSet, sop: &Sop, context: &DraftContext<'_>) -> Result<String, String> {
    sops.render_reply(sop, &context.for_sop(Some(sop)))
}

fn sample(
    name: Option<&'static str>,
    email: Option<&'static str>,
    channel: Option<&'static str>,
    history: &[HistoryItem],
) -> tera::Context {
    let ctx = DraftContext {
        customer: CustomerView {
            id: "cust-123",
            name,
            email,
        },
        message: MessageView {
            text: "I lost my card yesterday, can you help?",
            channel,
        },
        conversation: ConversationView { id: Uuid::nil() },
        intent: "lost_or_stolen_card",
        confidence: 0.93,
        flags: vec![],
        history,
    };
    let mut context = ctx.for_sop(None);
    context.insert(
        "sop",
        &serde_json::json!({
            "id": "sample-sop",
            "version": 1,
            "title": "Sample SOP",
            "description": "What the sample SOP covers.",
        }),
    );
    context.insert("steps", &Vec::<String>::new());
    context
}

/// A context with every optional field present, for checking templates.
pub fn sample_context() -> tera::Context {
    let history = [HistoryItem {
        role: "customer".into(),
        body: "Hello?".into(),
    }];
    sample(
        Some("Alex"),
        Some("alex@example.com"),
        Some("web"),
        &history,
    )
}

/// A context with every optional field missing: templates must survive it.
pub fn minimal_sample_context() -> tera::Context {
    sample(None, None, None, &[])
}

/// What LLM mode produced for one message.
#[derive(Debug, Clone)]
pub enum LlmDraft {
    Reply {
        text: String,
        /// The model asked for a person to review the case.
        escalate: bool,
        provider: String,
    },
    /// The answer failed the output schema, also after the repair attempt.
    SchemaFailure {
        error: String,
    },
    Refused,
    /// No provider answered within the deadline.
    Unavailable {
        error: String,
    },
}

/// A compiled output schema of one SOP version.
struct OutputSchema {
    schema: Arc<Value>,
    validator: Arc<jsonschema::Validator>,
}

/// Drafting with a model, for the SOPs that have a `response.llm` block.
pub struct LlmAgent {
    llm: Arc<Llm>,
    /// By SOP reference (`id@version#hash`).
    schemas: HashMap<String, OutputSchema>,
    strategies: HashMap<String, Strategy>,
}

impl LlmAgent {
    /// Compiles every SOP version's output schema once. Schemas were
    /// validated when the SOPs loaded, so a failure here is reported as such.
    pub fn new(llm: Arc<Llm>, sops: &SopSet) -> Result<LlmAgent, String> {
        let mut schemas = HashMap::new();
        let mut strategies = HashMap::new();
        for sop in &sops.versions {
            let Some(block) = &sop.file.response.llm else {
                continue;
            };
            // Whatever the SOP's schema says, the customer must get some words.
            let schema = json!({
                "allOf": [
                    block.schema(),
                    {
                        "type": "object",
                        "required": ["reply"],
                        "properties": { "reply": { "type": "string", "pattern": "\\S" } }
                    }
                ]
            });
            let validator = jsonschema::validator_for(&schema)
                .map_err(|e| format!("{}: output_schema: {e}", sop.path.display()))?;
            schemas.insert(
                sop.reference(),
                OutputSchema {
                    schema: Arc::new(schema),
                    validator: Arc::new(validator),
                },
            );
            if let Some(own) = &block.strategy {
                strategies.insert(sop.reference(), llm.strategy(own));
            }
        }
        Ok(LlmAgent {
            llm,
            schemas,
            strategies,
        })
    }

    /// Whether this SOP drafts with a model.
    pub fn handles(&self, sop: &Sop) -> bool {
        self.schemas.contains_key(&sop.reference())
    }

    fn strategy(&self, sop: &Sop) -> &Strategy {
        self.strategies
            .get(&sop.reference())
            .unwrap_or_else(|| self.llm.default_strategy())
    }

    fn request(
        &self,
        sops: &SopSet,
        sop: &Sop,
        context: &DraftContext<'_>,
    ) -> Result<ChatRequest, String> {
        let output = self
            .schemas
            .get(&sop.reference())
            .ok_or_else(|| format!("SOP {} has no LLM block", sop.reference()))?;
        let system = sops
            .render_llm_system(sop, &context.for_sop(Some(sop)))
            .ok_or_else(|| format!("SOP {} has no LLM block", sop.reference()))??;
        let system = format!(
            "{system}\n\nAnswer with one JSON object and nothing else. It must match this JSON Schema:\n{}",
            output.schema
        );
        let mut messages = vec![ChatMessage::new(ChatRole::System, system)];
        let history = context
            .history
            .len()
            .saturating_sub(self.llm.settings.history_messages);
        messages.extend(context.history[history..].iter().map(|m| {
            let role = if m.role == "customer" {
                ChatRole::User
            } else {
                ChatRole::Assistant
            };
            ChatMessage::new(role, m.body.clone())
        }));
        messages.push(ChatMessage::new(ChatRole::User, context.message.text));
        Ok(ChatRequest {
            purpose: Purpose::Draft,
            messages,
            schema: output.schema.clone(),
            validator: output.validator.clone(),
            schema_name: "reply".into(),
            max_tokens: self.llm.settings.max_output_tokens,
            temperature: self.llm.settings.temperature,
        })
    }

    /// Drafts a reply. With `deltas`, the reply is streamed: each piece of
    /// the `reply` text is sent as it arrives (the final, validated text is
    /// still what this returns). A failed render of the prompt is
    /// `Unavailable`: the template draft and a reviewer take over.
    pub async fn draft(
        &self,
        sops: &SopSet,
        sop: &Sop,
        context: &DraftContext<'_>,
        deadline: Instant,
        ledger: &Ledger,
        deltas: Option<&UnboundedSender<String>>,
    ) -> LlmDraft {
        let request = match self.request(sops, sop, context) {
            Ok(r) => r,
            Err(error) => {
                tracing::error!(sop = sop.reference(), %error, "LLM prompt failed to render");
                return LlmDraft::Unavailable { error };
            }
        };
        let strategy = self.strategy(sop);
        let first = match deltas {
            Some(sink) => {
                self.streamed(strategy, &request, deadline, ledger, sink)
                    .await
            }
            None => {
                self.llm
                    .complete(strategy, &request, deadline, ledger)
                    .await
            }
        };
        let result = match first {
            Err(LlmError::Invalid { raw, error, .. }) => {
                metrics::counter!("sopr_llm_schema_failures_total", "sop" => sop.file.id.clone(), "attempt" => "first")
                    .increment(1);
                let mut repair = request.clone();
                repair.purpose = Purpose::Repair;
                repair
                    .messages
                    .push(ChatMessage::new(ChatRole::Assistant, raw));
                repair.messages.push(ChatMessage::new(
                    ChatRole::User,
                    format!(
                        "Your answer was rejected: it {error}. Answer again with only a JSON object that matches the schema."
                    ),
                ));
                self.llm.complete(strategy, &repair, deadline, ledger).await
            }
            other => other,
        };
        match result {
            Ok(answer) => LlmDraft::Reply {
                text: answer.value["reply"]
                    .as_str()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                escalate: answer.value["escalate"] == json!(true),
                provider: answer.provider,
            },
            Err(LlmError::Invalid {
                error, provider, ..
            }) => {
                metrics::counter!("sopr_llm_schema_failures_total", "sop" => sop.file.id.clone(), "attempt" => "repair")
                    .increment(1);
                tracing::warn!(sop = sop.reference(), %provider, %error, "LLM output invalid after repair");
                LlmDraft::SchemaFailure { error }
            }
            Err(LlmError::Refused(provider)) => {
                tracing::warn!(sop = sop.reference(), %provider, "LLM refused");
                LlmDraft::Refused
            }
            Err(LlmError::Unavailable(error)) => {
                tracing::warn!(sop = sop.reference(), %error, "LLM unavailable; falling back to review");
                LlmDraft::Unavailable { error }
            }
        }
    }

    /// One streamed attempt, validated once complete.
    async fn streamed(
        &self,
        strategy: &Strategy,
        request: &ChatRequest,
        deadline: Instant,
        ledger: &Ledger,
        sink: &UnboundedSender<String>,
    ) -> Result<crate::llm::Answer, LlmError> {
        let mut stream = self.llm.stream(strategy, request, deadline, ledger).await?;
        let mut scanner = ReplyScanner::default();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| match e.kind {
                crate::llm::ErrorKind::Refused => LlmError::Refused(e.provider),
                _ => LlmError::Unavailable(e.to_string()),
            })?;
            let text = scanner.push(&piece);
            if !text.is_empty() {
                // A closed receiver means the client left; the reply is still persisted.
                let _ = sink.send(text);
            }
        }
        let provider = stream.provider().to_string();
        let raw = stream.text().to_string();
        match parse_valid(&raw, &request.validator) {
            Ok(value) => Ok(crate::llm::Answer {
                provider,
                value,
                raw,
            }),
            Err(error) => Err(LlmError::Invalid {
                provider,
                raw,
                error,
            }),
        }
    }

    /// Asks the model to choose the intent of an ambiguous message among the
    /// router's candidates. `None` when it picks none, fails or is invalid.
    pub async fn classify(
        &self,
        sops: &SopSet,
        text: &str,
        candidates: &[(String, f64)],
        deadline: Instant,
        ledger: &Ledger,
    ) -> Option<String> {
        let settings = &self.llm.settings.classifier;
        let mut allowed: Vec<Value> = candidates.iter().map(|(i, _)| json!(i)).collect();
        allowed.push(json!("none"));
        let schema = json!({
            "type": "object",
            "required": ["intent"],
            "additionalProperties": false,
            "properties": { "intent": { "enum": allowed } }
        });
        let validator = jsonschema::validator_for(&schema).ok()?;
        let list: Vec<String> = candidates
            .iter()
            .map(|(intent, _)| match sops.for_intent(intent) {
                Some(sop) => format!("- {intent}: {}", sop.file.title),
                None => format!("- {intent}"),
            })
            .collect();
        let system = format!(
            "You route customer-support messages to the procedure that handles them. \
             Choose the one intent below that matches what the customer wants, or \"none\" if none clearly does.\n{}\n\n\
             Answer with one JSON object and nothing else, matching this JSON Schema:\n{schema}",
            list.join("\n")
        );
        let request = ChatRequest {
            purpose: Purpose::Classify,
            messages: vec![
                ChatMessage::new(ChatRole::System, system),
                ChatMessage::new(ChatRole::User, text),
            ],
            schema: Arc::new(schema),
            validator: Arc::new(validator),
            schema_name: "intent".into(),
            max_tokens: 50,
            temperature: 0.0,
        };
        let strategy = settings
            .strategy
            .as_ref()
            .map(|s| self.llm.strategy(s))
            .unwrap_or_else(|| self.llm.default_strategy().clone());
        match self
            .llm
            .complete(&strategy, &request, deadline, ledger)
            .await
        {
            Ok(answer) => answer.value["intent"]
                .as_str()
                .filter(|i| *i != "none")
                .map(str::to_string),
            Err(err) => {
                tracing::warn!(error = %err, "LLM classifier gave no answer; the router decides");
                None
            }
        }
    }
}
