//! How one logical call uses several providers.
//!
//! - `fallback`: in order; the next provider only after one fails.
//! - `race`: all at once; the first valid answer wins and the others are
//!   cancelled (their futures dropped, which closes their connections).
//! - `hedge`: the first provider, then the next one too if no answer came
//!   within the hedge delay (by default the first provider's observed p95);
//!   the first valid answer wins. A failure starts the next provider at once.
//!
//! A provider that answers with unusable output (schema-invalid, refused) does
//! not end a race or hedge while others may still answer validly; in fallback
//! it ends the call, since the caller repairs rather than asks elsewhere.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::{Answer, LlmError, Provider};
use crate::config::StrategyMode;

/// Delay before hedging while a provider has too few answers for a p95.
const DEFAULT_HEDGE_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct Strategy {
    pub mode: StrategyMode,
    pub providers: Vec<Arc<Provider>>,
    pub hedge_delay: Option<Duration>,
}

impl Strategy {
    pub(super) fn empty() -> Strategy {
        Strategy {
            mode: StrategyMode::Fallback,
            providers: Vec::new(),
            hedge_delay: None,
        }
    }

    pub async fn run<F, Fut>(&self, attempt: F) -> Result<Answer, LlmError>
    where
        F: Fn(Arc<Provider>) -> Fut,
        Fut: Future<Output = Result<Answer, LlmError>>,
    {
        match self.mode {
            StrategyMode::Fallback => self.fallback(attempt).await,
            StrategyMode::Race => self.race(attempt).await,
            StrategyMode::Hedge => self.hedge(attempt).await,
        }
    }

    async fn fallback<F, Fut>(&self, attempt: F) -> Result<Answer, LlmError>
    where
        F: Fn(Arc<Provider>) -> Fut,
        Fut: Future<Output = Result<Answer, LlmError>>,
    {
        let mut last = LlmError::Unavailable("no provider configured".into());
        for (i, provider) in self.providers.iter().enumerate() {
            if i > 0 {
                metrics::counter!("sopr_llm_fallbacks_total", "provider" => provider.name.clone())
                    .increment(1);
                tracing::info!(provider = %provider.name, after = %last, "LLM fallback");
            }
            match attempt(provider.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(err) if err.is_answer() => return Err(err),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    async fn race<F, Fut>(&self, attempt: F) -> Result<Answer, LlmError>
    where
        F: Fn(Arc<Provider>) -> Fut,
        Fut: Future<Output = Result<Answer, LlmError>>,
    {
        let mut running: FuturesUnordered<_> =
            self.providers.iter().cloned().map(&attempt).collect();
        let mut outcome = Outcome::default();
        while let Some(result) = running.next().await {
            if let Some(answer) = outcome.take(result) {
                metrics::counter!("sopr_llm_race_wins_total", "provider" => answer.provider.clone())
                    .increment(1);
                return Ok(answer);
            }
        }
        Err(outcome.into_error())
    }

    async fn hedge<F, Fut>(&self, attempt: F) -> Result<Answer, LlmError>
    where
        F: Fn(Arc<Provider>) -> Fut,
        Fut: Future<Output = Result<Answer, LlmError>>,
    {
        let Some(first) = self.providers.first() else {
            return Err(LlmError::Unavailable("no provider configured".into()));
        };
        let delay = self
            .hedge_delay
            .or_else(|| first.observed_p95())
            .unwrap_or(DEFAULT_HEDGE_DELAY);
        let mut waiting = self.providers.iter().cloned();
        let mut running = FuturesUnordered::new();
        running.extend(waiting.next().map(&attempt));
        let mut outcome = Outcome::default();
        let timer = tokio::time::sleep(delay);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                Some(result) = running.next(), if !running.is_empty() => {
                    let failed = result.is_err();
                    if let Some(answer) = outcome.take(result) {
                        return Ok(answer);
                    }
                    if failed {
                        match waiting.next() {
                            Some(next) => {
                                running.push(attempt(next));
                                timer.as_mut().reset(tokio::time::Instant::now() + delay);
                            }
                            None if running.is_empty() => break,
                            None => {}
                        }
                    }
                }
                () = &mut timer, if waiting.len() > 0 => {
                    if let Some(next) = waiting.next() {
                        metrics::counter!("sopr_llm_hedges_total", "provider" => next.name.clone())
                            .increment(1);
                        tracing::debug!(provider = %next.name, delay_ms = delay.as_millis() as u64, "LLM hedge");
                        running.push(attempt(next));
                        timer.as_mut().reset(tokio::time::Instant::now() + delay);
                    }
                }
                else => break,
            }
        }
        Err(outcome.into_error())
    }
}

/// What the finished attempts of a race or hedge amount to so far.
#[derive(Default)]
struct Outcome {
    unusable: Option<LlmError>,
    last_failure: Option<LlmError>,
}

impl Outcome {
    /// The winning answer, or `None` after noting why this attempt did not win.
    fn take(&mut self, result: Result<Answer, LlmError>) -> Option<Answer> {
        match result {
            Ok(answer) => Some(answer),
            Err(err) if err.is_answer() => {
                self.unusable.get_or_insert(err);
                None
            }
            Err(err) => {
                self.last_failure = Some(err);
                None
            }
        }
    }

    /// An unusable answer beats no answer: the caller can repair it.
    fn into_error(self) -> LlmError {
        self.unusable
            .or(self.last_failure)
            .unwrap_or_else(|| LlmError::Unavailable("no provider configured".into()))
    }
}
