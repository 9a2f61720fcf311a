//! One OpenAI-compatible endpoint: an `async-openai` client over our own
//! transport, a concurrency limit, a circuit breaker, retries with jittered
//! exponential backoff inside the caller's deadline, and accounting of every
//! call. The transport replaces async-openai's built-in retry layer so that
//! exactly one place decides what is retried, and keeps what that layer would
//! hide from us: the HTTP status and the `Retry-After` header.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::{HttpRequestFactory, ReqwestService};
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessageContent, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestUserMessageContent,
    ChatCompletionResponseStream, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    FinishReason, ResponseFormat, ResponseFormatJsonSchema,
};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::breaker::Breaker;
use super::{CallRecord, ChatRequest, ChatRole, Ledger};
use crate::config::{BreakerConfig, OutputMode, ProviderConfig, RetryConfig};

/// What a provider said, before any validation of its content.
#[derive(Debug, Clone)]
pub struct Reply {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// No answer within the provider timeout or what was left of the deadline.
    Timeout,
    /// Could not connect, or the connection broke mid-response.
    Connection,
    RateLimited {
        retry_after: Option<Duration>,
    },
    /// 5xx (and 408): the provider failed; worth another try.
    Server(u16),
    /// Other 4xx: our request is wrong for this provider; retrying cannot help.
    Client(u16),
    /// A 2xx body that is not a chat completion.
    Malformed,
    /// The model declined (content filter or refusal); never retried.
    Refused,
    /// The circuit is open: the provider was not called.
    BreakerOpen,
    /// The message's deadline passed before the call could start.
    Deadline,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct ProviderError {
    pub provider: String,
    pub kind: ErrorKind,
    pub message: String,
}

impl ProviderError {
    /// Failures that another attempt on the same provider may fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Timeout
                | ErrorKind::Connection
                | ErrorKind::RateLimited { .. }
                | ErrorKind::Server(_)
                | ErrorKind::Malformed
        )
    }

    /// Failures that say the provider is unhealthy (they feed the breaker).
    /// A 429 says it is busy, not broken; a 4xx or refusal is about the request.
    fn counts_against_health(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Timeout
                | ErrorKind::Connection
                | ErrorKind::Server(_)
                | ErrorKind::Malformed
        )
    }

    /// Short label for call records and metrics.
    pub fn label(&self) -> String {
        match &self.kind {
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Connection => "connection".into(),
            ErrorKind::RateLimited { .. } => "http_429".into(),
            ErrorKind::Server(code) | ErrorKind::Client(code) => format!("http_{code}"),
            ErrorKind::Malformed => "malformed".into(),
            ErrorKind::Refused => "refused".into(),
            ErrorKind::BreakerOpen => "breaker_open".into(),
            ErrorKind::Deadline => "deadline".into(),
        }
    }
}

/// A non-2xx answer, carried through async-openai's error type by our transport.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}: {body}")]
struct HttpStatusError {
    status: u16,
    retry_after: Option<Duration>,
    body: String,
}

/// async-openai's plain reqwest transport, turning every non-2xx response
/// into an `HttpStatusError` that keeps the status and `Retry-After`.
#[derive(Clone)]
struct Transport(ReqwestService);

type TransportFuture =
    Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send + 'static>>;

impl tower::Service<HttpRequestFactory> for Transport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = TransportFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        let mut inner = self.0.clone();
        Box::pin(async move {
            let response = inner.call(request).await?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            let body = response.text().await.unwrap_or_default();
            Err(OpenAIError::Boxed(Box::new(HttpStatusError {
                status: status.as_u16(),
                retry_after,
                body: body.chars().take(300).collect(),
            })))
        })
    }
}

/// One try of a call: its number, when it started, how long it may take, and
/// the concurrency permit it holds.
struct Attempt {
    number: u32,
    started: Instant,
    budget: Duration,
    permit: OwnedSemaphorePermit,
}

/// Latencies of recent successful calls, for the hedge delay.
#[derive(Debug, Default)]
struct Latencies(VecDeque<Duration>);

const LATENCY_WINDOW: usize = 200;
/// Answers needed before the observed p95 replaces the default hedge delay.
const MIN_LATENCY_SAMPLES: usize = 20;

impl Latencies {
    fn push(&mut self, d: Duration) {
        if self.0.len() == LATENCY_WINDOW {
            self.0.pop_front();
        }
        self.0.push_back(d);
    }

    fn p95(&self) -> Option<Duration> {
        if self.0.len() < MIN_LATENCY_SAMPLES {
            return None;
        }
        let mut sorted: Vec<Duration> = self.0.iter().copied().collect();
        sorted.sort_unstable();
        Some(sorted[(sorted.len() * 95).div_ceil(100) - 1])
    }
}

pub struct Provider {
    pub name: String,
    pub model: String,
    client: Client<OpenAIConfig>,
    output_mode: OutputMode,
    timeout: Duration,
    price_in: f64,
    price_out: f64,
    permits: Arc<Semaphore>,
    breaker: Breaker,
    retry: RetryConfig,
    latencies: Mutex<Latencies>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// Builds the client. The API key is read from the environment here and
    /// lives only inside the client's secret config.
    pub fn new(
        config: &ProviderConfig,
        retry: &RetryConfig,
        breaker: &BreakerConfig,
    ) -> Result<Provider, reqwest::Error> {
        super::install_crypto_provider();
        let timeout = Duration::from_millis(config.timeout_ms);
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        // Nothing from OPENAI_* variables leaks into a provider that did not ask for it.
        let key = config
            .api_key_env
            .as_deref()
            .and_then(|var| std::env::var(var).ok())
            .map(|key| key.trim().to_string())
            .unwrap_or_default();
        let openai = OpenAIConfig::new()
            .with_api_base(config.base_url.trim_end_matches('/'))
            .with_api_key(key)
            .with_org_id("")
            .with_project_id("");
        let client = Client::with_config(openai)
            .with_http_client(http.clone())
            .with_http_service(Transport(ReqwestService::new(http)));
        Ok(Provider {
            name: config.name.clone(),
            model: config.model.clone(),
            client,
            output_mode: config.output_mode,
            timeout,
            price_in: config.price_input_per_1k,
            price_out: config.price_output_per_1k,
            permits: Arc::new(Semaphore::new(config.max_concurrency)),
            breaker: Breaker::new(
                breaker.failure_threshold,
                Duration::from_secs(breaker.open_secs),
            ),
            retry: retry.clone(),
            latencies: Mutex::new(Latencies::default()),
        })
    }

    /// p95 latency of recent successful calls, once there are enough of them.
    pub fn observed_p95(&self) -> Option<Duration> {
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .p95()
    }

    fn request(&self, request: &ChatRequest, stream: bool) -> CreateChatCompletionRequest {
        let messages = request
            .messages
            .iter()
            .map(|m| -> ChatCompletionRequestMessage {
                match m.role {
                    ChatRole::System => {
                        async_openai::types::chat::ChatCompletionRequestSystemMessage::from(
                            ChatCompletionRequestSystemMessageContent::from(m.content.as_str()),
                        )
                        .into()
                    }
                    ChatRole::User => {
                        async_openai::types::chat::ChatCompletionRequestUserMessage::from(
                            ChatCompletionRequestUserMessageContent::from(m.content.as_str()),
                        )
                        .into()
                    }
                    ChatRole::Assistant => {
                        async_openai::types::chat::ChatCompletionRequestAssistantMessage::from(
                            ChatCompletionRequestAssistantMessageContent::from(m.content.as_str()),
                        )
                        .into()
                    }
                }
            })
            .collect();
        let response_format = match self.output_mode {
            OutputMode::JsonSchema => Some(ResponseFormat::JsonSchema {
                json_schema: ResponseFormatJsonSchema {
                    name: request.schema_name.clone(),
                    description: None,
                    schema: (*request.schema).clone(),
                    // Strict mode refuses schemas with optional keys; we validate ourselves.
                    strict: Some(false),
                },
            }),
            OutputMode::JsonObject => Some(ResponseFormat::JsonObject),
            OutputMode::None => None,
        };
        CreateChatCompletionRequest {
            model: self.model.clone(),
            messages,
            max_completion_tokens: Some(request.max_tokens),
            temperature: Some(request.temperature),
            response_format,
            stream: stream.then_some(true),
            stream_options: stream.then_some(ChatCompletionStreamOptions {
                include_usage: Some(true),
                include_obfuscation: None,
            }),
            ..Default::default()
        }
    }

    /// Waits for the breaker and a concurrency permit, within the deadline.
    async fn admit(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, ProviderError> {
        if !self.breaker.allow(std::time::Instant::now()) {
            self.publish_breaker();
            return Err(self.error(ErrorKind::BreakerOpen, "circuit open".into()));
        }
        match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(self.error(
                ErrorKind::Deadline,
                "deadline passed waiting for a free slot".into(),
            )),
        }
    }

    /// One chat completion, retried on transient failures while the deadline allows.
    pub async fn complete(
        &self,
        request: &ChatRequest,
        deadline: Instant,
        ledger: &Ledger,
    ) -> Result<Reply, ProviderError> {
        let body = self.request(request, false);
        self.retrying(request, deadline, ledger, |attempt| {
            let body = body.clone();
            async move {
                let chat = self.client.chat();
                let response = match tokio::time::timeout(attempt.budget, chat.create(body)).await {
                    Ok(result) => result.map_err(|e| self.classify(e))?,
                    Err(_) => return Err(self.timed_out(attempt.budget)),
                };
                drop(attempt.permit);
                let tokens = response
                    .usage
                    .as_ref()
                    .map_or((0, 0), |u| (u.prompt_tokens, u.completion_tokens));
                let choice = response.choices.into_iter().next();
                let refused = choice.as_ref().is_some_and(|c| {
                    c.finish_reason == Some(FinishReason::ContentFilter)
                        || c.message.refusal.as_deref().is_some_and(|r| !r.is_empty())
                });
                match choice.and_then(|c| c.message.content) {
                    _ if refused => Err(self.error(ErrorKind::Refused, "the model refused".into())),
                    Some(text) => Ok((Reply { text }, Some(tokens))),
                    None => Err(self.error(ErrorKind::Malformed, "no message content".into())),
                }
            }
        })
        .await
    }

    /// Starts a streamed completion. Retries cover only the start of the
    /// stream: once text has been sent onwards, a failure is final.
    pub async fn stream(
        self: &Arc<Self>,
        request: &ChatRequest,
        deadline: Instant,
        ledger: &Ledger,
    ) -> Result<ReplyStream, ProviderError> {
        let body = self.request(request, true);
        self.retrying(request, deadline, ledger, |attempt| {
            let body = body.clone();
            async move {
                let chat = self.client.chat();
                let inner =
                    match tokio::time::timeout(attempt.budget, chat.create_stream(body)).await {
                        Ok(result) => result.map_err(|e| self.classify(e))?,
                        Err(_) => return Err(self.timed_out(attempt.budget)),
                    };
                // The call goes on: the stream accounts for it when it ends.
                let stream = ReplyStream {
                    provider: self.clone(),
                    inner,
                    ledger: ledger.clone(),
                    purpose: request.purpose,
                    attempt: attempt.number,
                    started: attempt.started,
                    deadline: attempt.started + attempt.budget,
                    tokens: (0, 0),
                    text: String::new(),
                    _permit: attempt.permit,
                    done: false,
                };
                Ok((stream, None))
            }
        })
        .await
    }

    /// Runs `call` until it succeeds, fails for good, or the deadline leaves
    /// no room for another try. `call` returns the tokens used when the call
    /// is complete, or `None` when it continues (a stream) and accounts itself.
    async fn retrying<T, F, Fut>(
        &self,
        request: &ChatRequest,
        deadline: Instant,
        ledger: &Ledger,
        call: F,
    ) -> Result<T, ProviderError>
    where
        F: Fn(Attempt) -> Fut,
        Fut: Future<Output = Result<(T, Option<(u32, u32)>), ProviderError>>,
    {
        let mut number = 0;
        loop {
            number += 1;
            let permit = self.admit(deadline).await?;
            let started = Instant::now();
            let budget = self
                .timeout
                .min(deadline.saturating_duration_since(started));
            let result = call(Attempt {
                number,
                started,
                budget,
                permit,
            })
            .await;
            match result {
                Ok((value, Some(tokens))) => {
                    let elapsed = started.elapsed();
                    self.account(ledger, request.purpose, number, "ok", elapsed, tokens);
                    self.healthy(elapsed);
                    return Ok(value);
                }
                Ok((value, None)) => return Ok(value),
                Err(err) => {
                    self.account(
                        ledger,
                        request.purpose,
                        number,
                        &err.label(),
                        started.elapsed(),
                        (0, 0),
                    );
                    self.unhealthy(&err);
                    let Some(wait) = self.backoff(&err, number, deadline) else {
                        return Err(err);
                    };
                    metrics::counter!("sopr_llm_retries_total", "provider" => self.name.clone())
                        .increment(1);
                    tracing::debug!(provider = %self.name, attempt = number, error = %err, wait_ms = wait.as_millis() as u64, "retrying LLM call");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn timed_out(&self, budget: Duration) -> ProviderError {
        self.error(
            ErrorKind::Timeout,
            format!("no answer after {} ms", budget.as_millis()),
        )
    }

    /// How long to wait before the next attempt, or `None` when there is none:
    /// the error is not transient, attempts are used up, or the wait would
    /// overrun the deadline. A server's `Retry-After` is honoured as a minimum.
    fn backoff(&self, err: &ProviderError, attempt: u32, deadline: Instant) -> Option<Duration> {
        if !err.is_transient() || attempt >= self.retry.max_attempts {
            return None;
        }
        let cap = self
            .retry
            .initial_backoff_ms
            .saturating_mul(1 << (attempt - 1).min(20))
            .min(self.retry.max_backoff_ms);
        // Full jitter: spreads out retries of many messages that failed together.
        let mut wait = Duration::from_millis(rand::random_range(0..=cap));
        if let ErrorKind::RateLimited {
            retry_after: Some(after),
        } = err.kind
        {
            wait = wait.max(after);
        }
        (Instant::now() + wait < deadline).then_some(wait)
    }

    fn classify(&self, err: OpenAIError) -> ProviderError {
        let (kind, message) = match err {
            OpenAIError::Boxed(boxed) => match boxed.downcast::<HttpStatusError>() {
                Ok(http) => (status_kind(http.status, http.retry_after), http.to_string()),
                Err(other) => (ErrorKind::Connection, other.to_string()),
            },
            OpenAIError::ApiError(api) => {
                (status_kind(api.status_code.as_u16(), None), api.to_string())
            }
            OpenAIError::Reqwest(e) if e.is_timeout() => (ErrorKind::Timeout, e.to_string()),
            OpenAIError::Reqwest(e) if e.is_decode() => (ErrorKind::Malformed, e.to_string()),
            OpenAIError::Reqwest(e) => (ErrorKind::Connection, error_chain(&e)),
            OpenAIError::JSONDeserialize(e, _) => (ErrorKind::Malformed, e.to_string()),
            OpenAIError::StreamError(e) => (ErrorKind::Connection, e.to_string()),
            other => (ErrorKind::Client(0), other.to_string()),
        };
        self.error(kind, message)
    }

    fn error(&self, kind: ErrorKind, message: String) -> ProviderError {
        ProviderError {
            provider: self.name.clone(),
            kind,
            message,
        }
    }

    fn healthy(&self, elapsed: Duration) {
        self.breaker.success();
        self.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(elapsed);
        self.publish_breaker();
    }

    fn unhealthy(&self, err: &ProviderError) {
        if err.counts_against_health() {
            self.breaker.failure(std::time::Instant::now());
        } else if !matches!(err.kind, ErrorKind::BreakerOpen | ErrorKind::Deadline) {
            // The provider answered (a 4xx, a refusal, a 429): it is up.
            self.breaker.success();
        }
        self.publish_breaker();
    }

    fn publish_breaker(&self) {
        metrics::gauge!("sopr_llm_breaker_state", "provider" => self.name.clone())
            .set(self.breaker.gauge());
    }

    fn account(
        &self,
        ledger: &Ledger,
        purpose: super::Purpose,
        attempt: u32,
        outcome: &str,
        elapsed: Duration,
        (tokens_in, tokens_out): (u32, u32),
    ) {
        let cost = f64::from(tokens_in) / 1000.0 * self.price_in
            + f64::from(tokens_out) / 1000.0 * self.price_out;
        metrics::counter!("sopr_llm_calls_total", "provider" => self.name.clone(), "outcome" => outcome.to_string())
            .increment(1);
        metrics::histogram!("sopr_llm_call_seconds", "provider" => self.name.clone())
            .record(elapsed.as_secs_f64());
        metrics::counter!("sopr_llm_tokens_total", "provider" => self.name.clone(), "direction" => "in")
            .increment(u64::from(tokens_in));
        metrics::counter!("sopr_llm_tokens_total", "provider" => self.name.clone(), "direction" => "out")
            .increment(u64::from(tokens_out));
        ledger.push(CallRecord {
            provider: self.name.clone(),
            model: self.model.clone(),
            purpose: purpose.as_str(),
            attempt,
            outcome: outcome.to_string(),
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            tokens_in,
            tokens_out,
            cost,
        });
    }
}

fn status_kind(status: u16, retry_after: Option<Duration>) -> ErrorKind {
    match status {
        429 => ErrorKind::RateLimited { retry_after },
        408 | 500..=599 => ErrorKind::Server(status),
        _ => ErrorKind::Client(status),
    }
}

/// reqwest's top-level message is generic ("error sending request"); the cause says what broke.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.join(": ")
}

/// A streamed reply in progress. Holds its provider's concurrency permit until
/// dropped; records the call in the ledger when it ends, however it ends.
pub struct ReplyStream {
    provider: Arc<Provider>,
    inner: ChatCompletionResponseStream,
    ledger: Ledger,
    purpose: super::Purpose,
    attempt: u32,
    started: Instant,
    deadline: Instant,
    tokens: (u32, u32),
    text: String,
    _permit: OwnedSemaphorePermit,
    done: bool,
}

impl ReplyStream {
    pub fn provider(&self) -> &str {
        &self.provider.name
    }

    /// The next piece of text; `None` when the reply is complete.
    pub async fn next(&mut self) -> Option<Result<String, ProviderError>> {
        if self.done {
            return None;
        }
        loop {
            let chunk = match tokio::time::timeout_at(self.deadline, self.inner.next()).await {
                Err(_) => Some(Err(self.provider.error(
                    ErrorKind::Timeout,
                    "stream stalled past the deadline".into(),
                ))),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some(Err(self.provider.classify(e))),
                Ok(Some(Ok(chunk))) => {
                    if let Some(u) = &chunk.usage {
                        self.tokens = (u.prompt_tokens, u.completion_tokens);
                    }
                    let choice = chunk.choices.into_iter().next();
                    match choice {
                        Some(c) if c.finish_reason == Some(FinishReason::ContentFilter) => {
                            Some(Err(self
                                .provider
                                .error(ErrorKind::Refused, "the model refused".into())))
                        }
                        Some(c) => match c.delta.content {
                            Some(text) if !text.is_empty() => {
                                self.text.push_str(&text);
                                Some(Ok(text))
                            }
                            _ => continue,
                        },
                        None => continue,
                    }
                }
            };
            match chunk {
                Some(Ok(text)) => return Some(Ok(text)),
                Some(Err(err)) => {
                    self.finish(&err.label());
                    self.provider.unhealthy(&err);
                    return Some(Err(err));
                }
                None => {
                    self.finish("ok");
                    self.provider.healthy(self.started.elapsed());
                    return None;
                }
            }
        }
    }

    /// Everything received so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn finish(&mut self, outcome: &str) {
        if self.done {
            return;
        }
        self.done = true;
        self.provider.account(
            &self.ledger,
            self.purpose,
            self.attempt,
            outcome,
            self.started.elapsed(),
            self.tokens,
        );
    }
}

impl Drop for ReplyStream {
    fn drop(&mut self) {
        // Dropped before the end: the client went away or the deadline passed.
        self.finish("cancelled");
    }
}
