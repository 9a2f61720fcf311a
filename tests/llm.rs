//! The LLM layer against a local OpenAI-compatible server that misbehaves on
//! cue: retries, fallback, race, hedge, breaker, deadline, schema checks, and
//! the guarantee that no customer message is lost when every model fails.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sopr::config::{LlmConfig, StrategyConfig, StrategyMode};
use sopr::llm::{ChatMessage, ChatRequest, ChatRole, Ledger, Llm, LlmError, Purpose};
use support::llm_server::{Behaviour, LlmServer};
use support::{TestDb, llm_provider, spawn_app_on};
use tokio::time::Instant;

fn llm(servers: &[&LlmServer], mode: StrategyMode, tweak: impl FnOnce(&mut LlmConfig)) -> Llm {
    let mut config = LlmConfig {
        providers: servers.iter().map(|s| llm_provider(s)).collect(),
        strategy: StrategyConfig {
            mode,
            providers: Vec::new(),
            hedge_delay_ms: None,
        },
        ..LlmConfig::default()
    };
    config.retry.initial_backoff_ms = 10;
    config.retry.max_backoff_ms = 50;
    tweak(&mut config);
    Llm::from_config(&config)
        .expect("clients build")
        .expect("providers configured")
}

fn request() -> ChatRequest {
    let schema = json!({
        "type": "object", "required": ["reply"],
        "properties": { "reply": { "type": "string", "minLength": 1 }, "escalate": { "type": "boolean" } }
    });
    ChatRequest {
        purpose: Purpose::Draft,
        messages: vec![
            ChatMessage::new(ChatRole::System, "You are a test."),
            ChatMessage::new(ChatRole::User, "Where is my card?"),
        ],
        validator: Arc::new(jsonschema::validator_for(&schema).unwrap()),
        schema: Arc::new(schema),
        schema_name: "reply".into(),
        max_tokens: 100,
        temperature: 0.0,
    }
}

async fn call(llm: &Llm, within: Duration) -> (Result<String, LlmError>, Ledger) {
    let ledger = Ledger::default();
    let result = llm
        .complete(
            llm.default_strategy(),
            &request(),
            Instant::now() + within,
            &ledger,
        )
        .await
        .map(|a| a.provider);
    (result, ledger)
}

fn outcomes(ledger: &Ledger) -> Vec<String> {
    ledger
        .calls()
        .iter()
        .map(|c| format!("{}:{}", c.provider, c.outcome))
        .collect()
}

#[tokio::test]
async fn transient_failures_are_retried_on_the_same_provider() {
    let a = LlmServer::start("a").await;
    a.push([
        Behaviour::status(500),
        Behaviour::Reset,
        Behaviour::Malformed,
        Behaviour::status(503),
    ]);
    let llm = llm(&[&a], StrategyMode::Fallback, |c| c.retry.max_attempts = 5);
    let (result, ledger) = call(&llm, Duration::from_secs(5)).await;
    assert_eq!(result.unwrap(), "a");
    assert_eq!(
        outcomes(&ledger),
        [
            "a:http_500",
            "a:connection",
            "a:malformed",
            "a:http_503",
            "a:ok"
        ]
    );
    let ok = ledger.calls().pop().unwrap();
    assert!(
        ok.tokens_in > 0 && ok.tokens_out > 0 && ok.cost > 0.0,
        "{ok:?}"
    );
}

#[tokio::test]
async fn rate_limits_wait_for_retry_after() {
    let a = LlmServer::start("a").await;
    a.push([Behaviour::Status {
        code: 429,
        retry_after: Some(1),
        delay: Duration::ZERO,
    }]);
    let llm = llm(&[&a], StrategyMode::Fallback, |_| {});
    let (result, ledger) = call(&llm, Duration::from_secs(5)).await;
    assert_eq!(result.unwrap(), "a");
    assert_eq!(outcomes(&ledger), ["a:http_429", "a:ok"]);
    let seen = a.seen();
    let waited = seen[1].received - seen[0].received;
    assert!(
        waited >= Duration::from_millis(990),
        "retried after {waited:?}"
    );
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_moves_on_instead_of_waiting() {
    let (a, b) = (LlmServer::start("a").await, LlmServer::start("b").await);
    a.push([Behaviour::Status {
        code: 429,
        retry_after: Some(30),
        delay: Duration::ZERO,
    }]);
    let llm = llm(&[&a, &b], StrategyMode::Fallback, |_| {});
    let (result, ledger) = call(&llm, Duration::from_secs(3)).await;
    assert_eq!(result.unwrap(), "b");
    assert_eq!(outcomes(&ledger), ["a:http_429", "b:ok"]);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_fall_back() {
    let (a, b) = (LlmServer::start("a").await, LlmServer::start("b").await);
    a.push([Behaviour::status(400)]);
    let llm = llm(&[&a, &b], StrategyMode::Fallback, |_| {});
    let (result, ledger) = call(&llm, Duration::from_secs(5)).await;
    assert_eq!(result.unwrap(), "b");
    assert_eq!(outcomes(&ledger), ["a:http_400", "b:ok"]);
    assert_eq!(a.requests(), 1);
}

#[tokio::test]
async fn a_slow_provider_times_out_and_the_next_answers() {
    let (a, b) = (LlmServer::start("a").await, LlmServer::start("b").await);
    a.set_default(Behaviour::slow(Duration::from_secs(5)));
    let llm = llm(&[&a, &b], StrategyMode::Fallback, |c| {
        c.providers[0].timeout_ms = 200;
        c.retry.max_attempts = 2;
    });
    let (result, ledger) = call(&llm, Duration::from_secs(5)).await;
    assert_eq!(result.unwrap(), "b");
    assert_eq!(outcomes(&ledger), ["a:timeout", "a:timeout", "b:ok"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        a.seen().iter().all(|s| s.cancelled && !s.answered),
        "timed-out calls close their connections"
    );
}

#[tokio::test]
async fn the_message_deadline_bounds_everything() {
    let a = LlmServer::start("a").await;
    a.set_default(Behaviour::slow(Duration::from_secs(10)));
    let llm = llm(&[&a], StrategyMode::Fallback, |c| {
        c.providers[0].timeout_ms = 60_000
    });
    let started = std::time::Instant::now();
    let (result, _) = call(&llm, Duration::from_millis(400)).await;
    assert!(
        matches!(result, Err(LlmError::Unavailable(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn every_provider_down_is_unavailable() {
    let (a, b) = (LlmServer::start("a").await, LlmServer::start("b").await);
    a.set_default(Behaviour::status(500));
    b.set_default(Behaviour::Reset);
    let llm = llm(&[&a, &b], StrategyMode::Fallback, |_| {});
    let (result, ledger) = call(&llm, Duration::from_secs(5)).await;
    assert!(
        matches!(result, Err(LlmError::Unavailable(_))),
        "{result:?}"
    );
    assert_eq!(ledger.calls().len(), 6, "three attempts on each");
}

#[tokio::test]
async fn schema_invalid_output_is_returned_for_repair_not_retried() {
    let (a, b) = (LlmServer::start("a").await, LlmServer::start("b").await);
    a.push([Behaviour::content(r#"{"answer": "hi"}"#)]);
    let llm = llm(&[&a, &b], StrategyMode::Fallback, |_| {});
    let (result, _) = call(&llm, Duration::from_secs(5)).await;
    match result {
        Err(LlmError::Invalid {
            provider, error, ..
        }) => {
            assert_eq!(provider, "a");
            assert!(error.contains("reply"), "{error}");
        }
        other => panic!("expected invalid output, got {other:?}"),
    }
    assert_eq!(b.requests(), 0);
}

#[tokio::test]
async fn a_race_takes_the_first_valid_answer_and_cancels_the_loser() {
    let (a, b) = (LlmServer::start("a").await, LlmServer::start("b").await);
    a.set_default(Behaviour::slow(Duration::from_secs(3)));
    b.set_default(Behaviour::slow(Duration::from_millis(50)));
    let llm = llm(&[&a, &b], StrategyMode::Race, |_| {});
    let (result, _) = call(&llm, Duration::from_secs(5)).await;
    assert_eq!(result.unwrap(), "b");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let loser = &a.seen()[0];
    assert!(loser.cancelled && !loser.answered, "{loser:?}");
}

#[tokio::test]
async fn a_race_skips_an_invalid_answer_while_another_may_be_valid() {
    let (a, b) = (LlmServer::start("a").await, LlmServer::start("b").await);
    a.push([Behaviour::content("not json")]);
    b.set_default(Behaviour::slow(Duration::from_millis(200)));
    let llm = llm(&[&a, &b], StrategyMode::Race, |_| {});
    let (result, _) = call(&llm, Duration::from_secs(5)).await;
    assert_eq!(result.unwrap(), "b");
}

#[tokio::test]
async fn a_hedge_fires_only_after_its_delay() {
    let (a, b) = (LlmServer::start("a").await, LlmServer::start("b").await);
    let hedged = |c: &mut LlmConfig| c.strategy.hedge_delay_ms = Some(300);

    // Fast first provider: the second is never asked.
    a.push([Behaviour::slow(Duration::from_millis(20))]);
    let llm = llm(&[&a, &b], StrategyMode::Hedge, hedged);
    let (result, _) = call(&llm, Duration::from_secs(5)).await;
    assert_eq!(result.unwrap(), "a");
    assert_eq!(b.requests(), 0);

    // Slow first provider: the second is asked after the delay and wins.
    a.push([Behaviour::slow(Duration::from_secs(3))]);
    let (result, _) = call(&llm, Duration::from_secs(5)).await;
    assert_eq!(result.unwrap(), "b");
    let sent_a = a.seen()[1].received;
    let sent_b = b.seen()[0].received;
    assert!(
        sent_b - sent_a >= Duration::from_millis(290),
        "hedged after {:?}",
        sent_b - sent_a
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.seen()[1].cancelled, "the slow call is cancelled");
}

#[tokio::test]
async fn a_hedge_starts_the_next_provider_at_once_when_the_first_fails() {
    let (a, b) = (LlmServer::start("a").await, LlmServer::start("b").await);
    a.set_default(Behaviour::status(400));
    let llm = llm(&[&a, &b], StrategyMode::Hedge, |c| {
        c.strategy.hedge_delay_ms = Some(5_000)
    });
    let started = std::time::Instant::now();
    let (result, _) = call(&llm, Duration::from_secs(10)).await;
    assert_eq!(result.unwrap(), "b");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "did not wait for the hedge delay"
    );
}

#[tokio::test]
async fn the_breaker_opens_after_repeated_failures_and_skips_the_provider() {
    let (a, b) = (LlmServer::start("a").await, LlmServer::start("b").await);
    a.set_default(Behaviour::status(500));
    let llm = llm(&[&a, &b], StrategyMode::Fallback, |c| {
        c.retry.max_attempts = 1;
        c.breaker.failure_threshold = 2;
        c.breaker.open_secs = 60;
    });
    for _ in 0..4 {
        let (result, _) = call(&llm, Duration::from_secs(5)).await;
        assert_eq!(result.unwrap(), "b");
    }
    assert_eq!(a.requests(), 2, "calls stop once the circuit is open");
}

#[tokio::test]
async fn the_breaker_lets_a_trial_call_through_later() {
    let a = LlmServer::start("a").await;
    a.push([Behaviour::status(500)]);
    let llm = llm(&[&a], StrategyMode::Fallback, |c| {
        c.retry.max_attempts = 1;
        c.breaker.failure_threshold = 1;
        c.breaker.open_secs = 1;
    });
    assert!(call(&llm, Duration::from_secs(5)).await.0.is_err());
    assert!(call(&llm, Duration::from_secs(5)).await.0.is_err(), "open");
    assert_eq!(a.requests(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(&llm, Duration::from_secs(5)).await.0.unwrap(), "a");
}

#[tokio::test]
async fn concurrency_per_provider_is_bounded() {
    let a = LlmServer::start("a").await;
    a.set_default(Behaviour::slow(Duration::from_millis(300)));
    let llm = llm(&[&a], StrategyMode::Fallback, |c| {
        c.providers[0].max_concurrency = 1
    });
    let (first, second) = tokio::join!(
        call(&llm, Duration::from_secs(5)),
        call(&llm, Duration::from_secs(5))
    );
    assert!(first.0.is_ok() && second.0.is_ok());
    let seen = a.seen();
    let gap = seen[1].received - seen[0].received;
    assert!(
        gap >= Duration::from_millis(280),
        "second call sent after {gap:?}"
    );
}

// ---------------------------------------------------------------------------
// Through the service: LLM mode in the message pipeline.

/// A message the demo router sends to `card-delivery`, whose SOP has an LLM block.
const CARD_DELIVERY: &str = "My new card still hasn't arrived, how long does delivery take?";

async fn app_with(
    servers: &[&LlmServer],
    tweak: impl FnOnce(&mut sopr::config::Config),
) -> support::TestApp {
    app_on(TestDb::sqlite(), servers, tweak).await
}

async fn app_on(
    db: TestDb,
    servers: &[&LlmServer],
    tweak: impl FnOnce(&mut sopr::config::Config),
) -> support::TestApp {
    let providers = servers.iter().map(|s| llm_provider(s)).collect();
    spawn_app_on(db, move |c| {
        c.llm.providers = providers;
        c.llm.retry.initial_backoff_ms = 10;
        c.llm.retry.max_backoff_ms = 50;
        tweak(c);
    })
    .await
}

async fn decision(app: &support::TestApp, outcome: &Value) -> sopr::store::Decision {
    let id = outcome["decision_id"].as_str().unwrap().parse().unwrap();
    app.store
        .decision(app.tenant.id, id)
        .await
        .unwrap()
        .expect("decision stored")
}

#[tokio::test]
async fn the_demo_answers_in_llm_mode_and_records_the_calls() {
    for db in support::databases().await {
        demo_answers_in_llm_mode(db).await;
    }
}

async fn demo_answers_in_llm_mode(db: TestDb) {
    let a = LlmServer::start("primary").await;
    let app = app_on(db, &[&a], |_| {}).await;
    let outcome = app.message("cust-1", CARD_DELIVERY).await;
    assert_eq!(outcome["outcome"], "answered", "{outcome}");
    assert!(
        outcome["route"]["sop"]
            .as_str()
            .unwrap()
            .starts_with("card-delivery@")
    );
    let reply = outcome["reply"].as_str().unwrap();
    assert!(reply.starts_with("[primary]"), "{reply}");

    // The prompt is the SOP's, with its steps, the output schema and the customer's words.
    let body = &a.seen()[0].body;
    let system = body["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("Northwind Bank cards assistant") && system.contains("JSON Schema"));
    assert_eq!(
        body["messages"].as_array().unwrap().last().unwrap()["content"],
        CARD_DELIVERY
    );
    assert_eq!(body["response_format"]["type"], "json_schema");

    let record = decision(&app, &outcome).await.llm.expect("llm record").0;
    assert_eq!(record["draft"], "llm");
    assert_eq!(record["route"], "router");
    assert_eq!(record["provider"], "primary");
    assert_eq!(record["calls"][0]["outcome"], "ok");
    assert!(record["tokens_in"].as_u64().unwrap() > 0);
    assert!(record["cost"].as_f64().unwrap() > 0.0);

    // The conversation history reaches the model on the next message.
    let conversation = outcome["conversation_id"].as_str().unwrap();
    app.message_in(
        Some(conversation),
        "cust-1",
        "It has been two weeks since you sent it.",
    )
    .await;
    let messages = a.seen()[1].body["messages"].as_array().unwrap().clone();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
}

#[tokio::test]
async fn no_message_is_lost_when_every_provider_fails() {
    let (a, b) = (LlmServer::start("a").await, LlmServer::start("b").await);
    a.set_default(Behaviour::status(503));
    b.set_default(Behaviour::Reset);
    let app = app_with(&[&a, &b], |_| {}).await;
    let outcome = app.message("cust-2", CARD_DELIVERY).await;
    assert_eq!(outcome["outcome"], "queued", "{outcome}");
    assert_eq!(outcome["reasons"], json!(["llm_unavailable"]));
    assert!(
        !outcome["reply"].as_str().unwrap().is_empty(),
        "holding reply"
    );

    let review: Value = app
        .get(&format!(
            "/v1/reviews/{}",
            outcome["review_id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    let draft = review["item"]["draft"].as_str().unwrap_or_default();
    assert!(
        draft.contains("Track delivery"),
        "template draft for the reviewer: {review}"
    );
    let conversation = app.conversation(&outcome["conversation_id"]).await;
    assert_eq!(conversation["messages"][0]["body"], CARD_DELIVERY);
    let record = decision(&app, &outcome).await.llm.unwrap().0;
    assert_eq!(record["draft"], "template");
    assert_eq!(record["calls"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn invalid_output_gets_one_repair_then_goes_to_review() {
    let a = LlmServer::start("a").await;
    // Repaired on the second try: answered.
    a.push([Behaviour::content("Sure, here is a reply")]);
    let app = app_with(&[&a], |_| {}).await;
    let outcome = app.message("cust-3", CARD_DELIVERY).await;
    assert_eq!(outcome["outcome"], "answered", "{outcome}");
    let repair = &a.seen()[1].body["messages"];
    let last = repair.as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap();
    assert!(
        last.contains("not valid JSON"),
        "the repair prompt names the error: {last}"
    );

    // Invalid twice: review with the template draft.
    a.push([
        Behaviour::content(r#"{"reply": "  "}"#),
        Behaviour::content(r#"{"reply": 42}"#),
    ]);
    let outcome = app.message("cust-4", CARD_DELIVERY).await;
    assert_eq!(outcome["outcome"], "queued");
    assert_eq!(outcome["reasons"], json!(["schema_failure"]));
    let record = decision(&app, &outcome).await;
    assert!(record.draft.unwrap().contains("Track delivery"));
}

#[tokio::test]
async fn the_model_can_escalate_but_never_cancel_an_escalation() {
    let a = LlmServer::start("a").await;
    a.push([Behaviour::content(
        r#"{"reply": "I have flagged this for a colleague.", "escalate": true}"#,
    )]);
    let app = app_with(&[&a], |_| {}).await;
    let outcome = app.message("cust-5", CARD_DELIVERY).await;
    assert_eq!(outcome["outcome"], "queued");
    assert_eq!(outcome["reasons"], json!(["model_escalated"]));
    let record = decision(&app, &outcome).await;
    assert_eq!(
        record.draft.as_deref(),
        Some("I have flagged this for a colleague.")
    );

    // A rule-required review never reaches the model at all.
    let before = a.requests();
    let outcome = app
        .message(
            "cust-6",
            "My card hasn't arrived yet, I want to speak to a human",
        )
        .await;
    assert_eq!(outcome["outcome"], "queued");
    assert!(
        outcome["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("flag:human_requested"))
    );
    assert_eq!(a.requests(), before);
}

#[tokio::test]
async fn refusals_and_client_errors_go_to_review_without_retry() {
    let (a, b) = (LlmServer::start("a").await, LlmServer::start("b").await);
    a.push([Behaviour::Refuse, Behaviour::status(400)]);
    let app = app_with(&[&a, &b], |_| {}).await;
    let outcome = app.message("cust-7", CARD_DELIVERY).await;
    assert_eq!(outcome["outcome"], "queued");
    assert_eq!(outcome["reasons"], json!(["llm_refused"]));
    assert_eq!(b.requests(), 0, "a refusal is not asked of another model");

    let outcome = app.message("cust-7b", CARD_DELIVERY).await;
    assert_eq!(
        outcome["outcome"], "answered",
        "a 4xx falls back: {outcome}"
    );
    assert_eq!(a.requests(), 2, "neither is retried on the same provider");
}

/// Posts a message asking for server-sent events; returns `(event, data)` pairs.
async fn post_streaming(app: &support::TestApp, body: Value) -> Vec<(String, Value)> {
    let response = app
        .client
        .post(app.url("/v1/messages"))
        .bearer_auth(&app.key)
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event = Some(name.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            Some((event?, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

#[tokio::test]
async fn replies_stream_token_by_token_and_end_with_the_outcome() {
    let a = LlmServer::start("a").await;
    a.set_default(Behaviour::Stream {
        content: Some(json!({"reply": "Your card is on its way. It usually takes 3–5 business days.", "escalate": false}).to_string()),
        chunk_chars: 5,
        gap: Duration::from_millis(5),
    });
    let app = app_with(&[&a], |_| {}).await;
    let events = post_streaming(
        &app,
        json!({ "customer": { "id": "cust-8" }, "text": CARD_DELIVERY }),
    )
    .await;
    let (last, outcome) = events.last().unwrap();
    assert_eq!(last, "outcome");
    assert_eq!(outcome["outcome"], "answered", "{outcome}");
    let deltas: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e == "delta")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert!(deltas.len() > 5, "streamed in pieces: {deltas:?}");
    assert_eq!(deltas.concat(), outcome["reply"].as_str().unwrap());
    assert!(
        !deltas.concat().contains('{'),
        "the client never sees the JSON"
    );
    assert_eq!(a.seen()[0].body["stream"], true);

    // The persisted reply is the validated one.
    let conversation = app.conversation(&outcome["conversation_id"]).await;
    assert_eq!(conversation["messages"][1]["body"], outcome["reply"]);
}

#[tokio::test]
async fn a_stream_cut_midway_ends_in_review_with_the_outcome_saying_so() {
    let a = LlmServer::start("a").await;
    a.set_default(Behaviour::StreamThenReset { chunks: 3 });
    let app = app_with(&[&a], |_| {}).await;
    let events = post_streaming(
        &app,
        json!({ "customer": { "id": "cust-9" }, "text": CARD_DELIVERY }),
    )
    .await;
    let (last, outcome) = events.last().unwrap();
    assert_eq!(last, "outcome");
    assert_eq!(outcome["outcome"], "queued");
    assert_eq!(outcome["reasons"], json!(["llm_unavailable"]));
}

#[tokio::test]
async fn a_stream_that_stalls_past_the_deadline_ends_in_review() {
    let a = LlmServer::start("a").await;
    a.set_default(Behaviour::Stream {
        content: None,
        chunk_chars: 10,
        gap: Duration::from_secs(5),
    });
    let app = app_with(&[&a], |c| c.llm.deadline_ms = 1_000).await;
    let started = std::time::Instant::now();
    let events = post_streaming(
        &app,
        json!({ "customer": { "id": "cust-16" }, "text": CARD_DELIVERY }),
    )
    .await;
    let (last, outcome) = events.last().unwrap();
    assert_eq!(last, "outcome");
    assert_eq!(outcome["outcome"], "queued");
    assert_eq!(outcome["reasons"], json!(["llm_unavailable"]));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "bounded by the deadline"
    );
    let record = decision(&app, outcome).await.llm.unwrap().0;
    assert_eq!(record["calls"][0]["outcome"], "timeout");
}

#[tokio::test]
async fn streaming_errors_arrive_as_problem_events() {
    let app = app_with(&[&LlmServer::start("a").await], |_| {}).await;
    let events = post_streaming(
        &app,
        json!({
            "conversation_id": "0190b3c4-0000-7000-8000-000000000000",
            "customer": { "id": "cust-10" }, "text": CARD_DELIVERY
        }),
    )
    .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "error");
    assert_eq!(events[0].1["status"], 404);
}

#[tokio::test]
async fn the_llm_classifier_decides_the_ambiguous_band_and_is_recorded() {
    let a = LlmServer::start("a").await;
    let app = app_with(&[&a], |c| {
        c.llm.classifier.enabled = true;
        // Every message is "ambiguous" here, so the path is exercised deterministically.
        c.llm.classifier.band_low = 0.0;
        c.llm.classifier.band_high = 1.0;
        c.llm.classifier.top_k = 3;
    })
    .await;
    // The test server picks the first candidate offered: the router's best.
    let outcome = app.message("cust-11", CARD_DELIVERY).await;
    assert!(
        outcome["route"]["sop"]
            .as_str()
            .unwrap()
            .starts_with("card-delivery@")
    );
    let classify = &a.seen()[0].body;
    let allowed =
        &classify["response_format"]["json_schema"]["schema"]["properties"]["intent"]["enum"];
    assert_eq!(
        allowed.as_array().unwrap().len(),
        4,
        "top 3 and none: {allowed}"
    );
    let record = decision(&app, &outcome).await.llm.unwrap().0;
    assert_eq!(record["route"], "llm");
    assert_eq!(record["calls"][0]["purpose"], "classify");

    // "none" leaves the decision to the router's own rules.
    a.push([Behaviour::content(r#"{"intent": "none"}"#)]);
    let outcome = app.message("cust-12", "hmm").await;
    let record = decision(&app, &outcome).await.llm.unwrap().0;
    assert_eq!(record["route"], "router");
    assert_eq!(outcome["outcome"], "queued");
}

#[tokio::test]
async fn a_client_that_hangs_up_cancels_the_model_call() {
    let a = LlmServer::start("a").await;
    a.set_default(Behaviour::slow(Duration::from_secs(3)));
    let app = app_with(&[&a], |_| {}).await;
    let gave_up = app
        .client
        .post(app.url("/v1/messages"))
        .bearer_auth(&app.key)
        .timeout(Duration::from_millis(400))
        .json(&json!({ "customer": { "id": "cust-15" }, "text": CARD_DELIVERY }))
        .send()
        .await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let call = &a.seen()[0];
    assert!(call.cancelled && !call.answered, "{call:?}");
}

#[tokio::test]
async fn without_providers_nothing_calls_a_model() {
    let a = LlmServer::start("a").await;
    let app = spawn_app_on(TestDb::sqlite(), |_| {}).await;
    let outcome = app.message("cust-13", CARD_DELIVERY).await;
    assert_eq!(outcome["outcome"], "answered");
    assert!(
        outcome["reply"]
            .as_str()
            .unwrap()
            .contains("Track delivery")
    );
    assert!(decision(&app, &outcome).await.llm.is_none());
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn metrics_count_llm_calls() {
    let a = LlmServer::start("metrics-a").await;
    let app = app_with(&[&a], |_| {}).await;
    app.message("cust-14", CARD_DELIVERY).await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"sopr_llm_calls_total{provider="metrics-a",outcome="ok"}"#),
        "{text}"
    );
    assert!(text.contains("sopr_llm_breaker_state"));
}
