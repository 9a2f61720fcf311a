//! Calls to language models. Any OpenAI-compatible endpoint (OpenAI, vLLM,
//! Ollama, llama.cpp server, OpenRouter…) is a [`Provider`] built from config;
//! a [`Strategy`] says how one call uses them (fallback, race, hedge). Every
//! call runs inside the message's deadline, retries only transient failures,
//! respects its provider's concurrency limit and circuit breaker, and is
//! accounted (tokens, cost, latency) in a [`Ledger`].
//!
//! This module never decides what happens to a customer message: it returns a
//! schema-valid answer or says why there is none, and `pipeline` applies the
//! rules.

mod breaker;
pub mod json;
mod provider;
mod strategy;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

pub use provider::{ErrorKind, Provider, ProviderError, ReplyStream};
pub use strategy::Strategy;

use crate::config::{LlmConfig, StrategyConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
}

/// Why a call was made; recorded with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Draft,
    Repair,
    Classify,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Draft => "draft",
            Purpose::Repair => "repair",
            Purpose::Classify => "classify",
        }
    }
}

/// One request, the same for every provider.
#[derive(Clone)]
pub struct ChatRequest {
    pub purpose: Purpose,
    pub messages: Vec<ChatMessage>,
    /// JSON Schema the answer must satisfy, sent to providers that support
    /// structured output, and its compiled form, which every answer must pass.
    pub schema: Arc<Value>,
    pub validator: Arc<jsonschema::Validator>,
    pub schema_name: String,
    pub max_tokens: u32,
    pub temperature: f32,
}

/// One HTTP call to one provider, as recorded on the decision.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub provider: String,
    pub model: String,
    pub purpose: &'static str,
    pub attempt: u32,
    /// `ok`, or what went wrong: `timeout`, `http_429`, `http_503`, `connection`,
    /// `malformed`, `refused`, `breaker_open`, `deadline`, `cancelled`.
    pub outcome: String,
    pub latency_ms: f64,
    pub tokens_in: u32,
    pub tokens_out: u32,
    pub cost: f64,
}

/// The calls made for one message. Shared by concurrent calls (race, hedge).
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<Vec<CallRecord>>>);

impl Ledger {
    fn push(&self, record: CallRecord) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Totals and the individual calls, as stored on the decision.
    pub fn summary(&self) -> Value {
        let calls = self.calls();
        let tokens_in: u64 = calls.iter().map(|c| u64::from(c.tokens_in)).sum();
        let tokens_out: u64 = calls.iter().map(|c| u64::from(c.tokens_out)).sum();
        let cost: f64 = calls.iter().map(|c| c.cost).sum();
        serde_json::json!({
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cost": cost,
            "calls": calls,
        })
    }
}

/// A schema-valid answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub provider: String,
    pub value: Value,
    pub raw: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    /// A provider answered, but not with JSON that satisfies the schema.
    #[error("{provider} answered with invalid output: {error}")]
    Invalid {
        provider: String,
        raw: String,
        error: String,
    },
    #[error("{0} refused to answer")]
    Refused(String),
    /// No provider answered: every one failed, was skipped or ran out of time.
    #[error("no provider answered: {0}")]
    Unavailable(String),
}

impl LlmError {
    fn from_provider(err: ProviderError) -> LlmError {
        match err.kind {
            ErrorKind::Refused => LlmError::Refused(err.provider),
            _ => LlmError::Unavailable(err.to_string()),
        }
    }

    /// An answer was given but cannot be used; another provider will not be asked.
    fn is_answer(&self) -> bool {
        matches!(self, LlmError::Invalid { .. } | LlmError::Refused(_))
    }
}

/// The LLM layer of one running sopr: its providers and default strategy.
pub struct Llm {
    providers: Vec<Arc<Provider>>,
    default: Strategy,
    pub settings: LlmConfig,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm")
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

/// rustls needs one process-wide crypto provider; reqwest is built without
/// one so that no C toolchain is needed for aws-lc. Every HTTP client sopr
/// builds, and every test client, needs this to have run first.
pub fn install_crypto_provider() {
    // Err means one is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Llm {
    /// `None` when no provider is configured (template mode).
    pub fn from_config(config: &LlmConfig) -> Result<Option<Llm>, reqwest::Error> {
        if !config.enabled() {
            return Ok(None);
        }
        let providers = config
            .providers
            .iter()
            .map(|p| Provider::new(p, &config.retry, &config.breaker).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut llm = Llm {
            providers,
            default: Strategy::empty(),
            settings: config.clone(),
        };
        llm.default = llm.strategy(&config.strategy);
        Ok(Some(llm))
    }

    /// The strategy a config block describes. Names were checked at start
    /// (`LlmConfig::check_strategy`); an unknown one is skipped.
    pub fn strategy(&self, config: &StrategyConfig) -> Strategy {
        let providers = if config.providers.is_empty() {
            self.providers.clone()
        } else {
            config
                .providers
                .iter()
                .filter_map(|name| self.providers.iter().find(|p| &p.name == name).cloned())
                .collect()
        };
        Strategy {
            mode: config.mode,
            providers,
            hedge_delay: config.hedge_delay_ms.map(Duration::from_millis),
        }
    }

    pub fn default_strategy(&self) -> &Strategy {
        &self.default
    }

    /// A schema-valid JSON answer through `strategy`, within `deadline`.
    pub async fn complete(
        &self,
        strategy: &Strategy,
        request: &ChatRequest,
        deadline: Instant,
        ledger: &Ledger,
    ) -> Result<Answer, LlmError> {
        let attempt = |provider: Arc<Provider>| async move {
            let reply = provider
                .complete(request, deadline, ledger)
                .await
                .map_err(LlmError::from_provider)?;
            match json::parse_valid(&reply.text, &request.validator) {
                Ok(value) => Ok(Answer {
                    provider: provider.name.clone(),
                    value,
                    raw: reply.text,
                }),
                Err(error) => Err(LlmError::Invalid {
                    provider: provider.name.clone(),
                    raw: reply.text,
                    error,
                }),
            }
        };
        match tokio::time::timeout_at(deadline, strategy.run(attempt)).await {
            Ok(result) => result,
            Err(_) => Err(LlmError::Unavailable("the message deadline passed".into())),
        }
    }

    /// Starts a streamed reply: providers in the strategy's order, the next
    /// only if one fails before its first token (a stream cannot be raced).
    pub async fn stream(
        &self,
        strategy: &Strategy,
        request: &ChatRequest,
        deadline: Instant,
        ledger: &Ledger,
    ) -> Result<ReplyStream, LlmError> {
        let mut last = None;
        for (i, provider) in strategy.providers.iter().enumerate() {
            if i > 0 {
                metrics::counter!("sopr_llm_fallbacks_total", "provider" => provider.name.clone())
                    .increment(1);
            }
            match provider.stream(request, deadline, ledger).await {
                Ok(stream) => return Ok(stream),
                Err(err) if err.kind == ErrorKind::Refused => {
                    return Err(LlmError::from_provider(err));
                }
                Err(err) => last = Some(err),
            }
        }
        Err(LlmError::Unavailable(last.map_or_else(
            || "no provider configured".into(),
            |e| e.to_string(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_sums_tokens_and_cost() {
        let ledger = Ledger::default();
        for (tokens_in, cost) in [(100, 0.5), (50, 0.25)] {
            ledger.push(CallRecord {
                provider: "a".into(),
                model: "m".into(),
                purpose: "draft",
                attempt: 1,
                outcome: "ok".into(),
                latency_ms: 1.0,
                tokens_in,
                tokens_out: 10,
                cost,
            });
        }
        let summary = ledger.summary();
        assert_eq!(summary["tokens_in"], 150);
        assert_eq!(summary["tokens_out"], 20);
        assert_eq!(summary["cost"], 0.75);
        assert_eq!(summary["calls"].as_array().unwrap().len(), 2);
    }
}
