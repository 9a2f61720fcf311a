//! The chat-frontend path over real HTTP: POST /v1/messages and its errors.

mod support;

use serde_json::{Value, json};
use support::{problem, spawn_app};

#[tokio::test]
async fn a_clear_routine_question_is_answered_from_its_sop() {
    let app = spawn_app().await;
    let out = app
        .message(
            "cust-1",
            "My new card still hasn't arrived, it's been 10 days",
        )
        .await;
    assert_eq!(out["outcome"], "answered", "{out}");
    assert_eq!(out["route"]["intent"], "card_arrival");
    let sop = out["route"]["sop"].as_str().unwrap();
    assert!(
        sop.starts_with("card-delivery@1#") && sop.len() == "card-delivery@1#".len() + 12,
        "{sop}"
    );
    assert!(out["route"]["confidence"].as_f64().unwrap() >= 0.6);
    assert!(
        out["reply"].as_str().unwrap().contains("Sam"),
        "template used the customer's name: {out}"
    );
    assert!(out.get("review_id").is_none());
    assert_eq!(out["flags"], json!([]));

    // Persisted: the conversation holds the customer's message then the bot reply.
    let conv = app.conversation(&out["conversation_id"]).await;
    let roles: Vec<&str> = conv["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["customer", "bot"]);
    assert_eq!(conv["messages"][1]["body"], out["reply"]);
}

#[tokio::test]
async fn low_confidence_goes_to_review_with_a_holding_reply() {
    let app = spawn_app().await;
    let out = app
        .message("cust-2", "the weather is lovely today isn't it")
        .await;
    assert_eq!(out["outcome"], "queued", "{out}");
    assert!(
        out["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("low_confidence")),
        "{out}"
    );
    assert!(out["review_id"].is_string());
    assert!(
        out["reply"]
            .as_str()
            .unwrap()
            .contains("A member of our team"),
        "{out}"
    );
    // A guessed SOP does not lend its holding reply or urgency to the case.
    let review_id = uuid::Uuid::parse_str(out["review_id"].as_str().unwrap()).unwrap();
    let item = app
        .store
        .review(app.tenant.id, review_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(item.priority, sopr::sop::Priority::Normal.rank());
}

#[tokio::test]
async fn pii_forces_review_even_when_the_router_is_sure() {
    let app = spawn_app().await;
    let out = app
        .message("cust-3", "My card 4539 1488 0343 6467 has not arrived yet")
        .await;
    assert_eq!(out["outcome"], "queued", "{out}");
    assert_eq!(out["flags"], json!(["pii.card_number"]));
    assert!(
        out["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("flag:pii.card_number"))
    );
    // A 16-digit number that fails Luhn is not a card number.
    let out = app
        .message(
            "cust-3b",
            "My card hasn't arrived, the order ref is 4539 1488 0343 6468",
        )
        .await;
    assert!(
        !out["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("pii.card_number")),
        "{out}"
    );
}

#[tokio::test]
async fn always_review_sops_are_queued_with_their_own_holding_reply() {
    let app = spawn_app().await;
    let out = app
        .message("cust-4", "I think my card details have been compromised")
        .await;
    assert_eq!(out["route"]["intent"], "compromised_card", "{out}");
    assert_eq!(out["outcome"], "queued");
    assert!(
        out["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("always_review"))
    );
    assert!(
        out["reply"].as_str().unwrap().contains("security team"),
        "SOP holding reply: {out}"
    );
}

#[tokio::test]
async fn asking_for_a_human_is_always_honoured() {
    let app = spawn_app().await;
    let out = app
        .message(
            "cust-5",
            "how long does a card take to arrive? actually I want to speak to a human",
        )
        .await;
    assert_eq!(out["outcome"], "queued", "{out}");
    assert!(
        out["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("human_requested"))
    );
    // Operators see why messages go to people, and the router's confidence.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"sopr_review_reasons_total{reason="flag:human_requested"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"sopr_router_confidence_bucket{le="0.99"}"#)
            && metrics.contains("sopr_router_confidence_count"),
        "{metrics}"
    );
}

#[tokio::test]
async fn follow_ups_join_the_open_review_and_the_bot_stays_silent() {
    let app = spawn_app().await;
    let first = app
        .message("cust-6", "I want to talk to a real person about my card")
        .await;
    assert_eq!(first["outcome"], "queued");
    let conv = first["conversation_id"].as_str().unwrap();
    // A question the bot could answer on its own is still held for the reviewer.
    let second = app
        .message_in(
            Some(conv),
            "cust-6",
            "also, what is the exchange rate for dollars?",
        )
        .await;
    assert_eq!(second["outcome"], "queued", "{second}");
    assert_eq!(second["review_id"], first["review_id"]);
    assert!(
        second.get("reply").is_none(),
        "no second holding reply: {second}"
    );
    assert_eq!(second["reasons"][0], "open_review");
    let review_id = uuid::Uuid::parse_str(first["review_id"].as_str().unwrap()).unwrap();
    let item = app
        .store
        .review(app.tenant.id, review_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(item.message_count, 2);
    let open = app.store.list_reviews(
        app.tenant.id,
        &sopr::store::ReviewFilter {
            state: None,
            limit: 10,
        },
        chrono::Utc::now(),
    );
    assert_eq!(
        open.await.unwrap().len(),
        1,
        "one open item per conversation"
    );
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_first_response_and_writes_nothing() {
    let app = spawn_app().await;
    let body =
        json!({ "customer": { "id": "cust-7" }, "text": "what is the exchange rate for euros" });
    let send = |body: Value| {
        app.client
            .post(app.url("/v1/messages"))
            .bearer_auth(&app.key)
            .header("Idempotency-Key", "retry-123")
            .json(&body)
            .send()
    };
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send(body.clone()).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again);
    let conv = uuid::Uuid::parse_str(first["conversation_id"].as_str().unwrap()).unwrap();
    assert_eq!(
        app.store
            .conversation_messages(app.tenant.id, conv)
            .await
            .unwrap()
            .len(),
        2
    );

    // Same key, another body: refused, nothing written.
    let other = send(json!({ "customer": { "id": "cust-7" }, "text": "a different question" }))
        .await
        .unwrap();
    let body = problem(other, 422).await;
    assert_eq!(body["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(
        app.store
            .conversation_messages(app.tenant.id, conv)
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn concurrent_retries_with_one_key_write_one_message() {
    let app = spawn_app().await;
    let body = json!({ "customer": { "id": "cust-8" }, "text": "how long does a transfer take" });
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            app.client
                .post(app.url("/v1/messages"))
                .bearer_auth(&app.key)
                .header("Idempotency-Key", "same-key")
                .json(&body)
                .send()
        })
        .collect();
    let mut responses = Vec::new();
    for r in futures::future::join_all(tasks).await {
        let r = r.unwrap();
        assert!(r.status() == 201 || r.status() == 200, "{}", r.status());
        responses.push(r.json::<Value>().await.unwrap());
    }
    assert!(
        responses.windows(2).all(|w| w[0] == w[1]),
        "all retries see one response"
    );
}

#[tokio::test]
async fn every_input_error_is_a_problem_naming_the_field() {
    let app = spawn_app().await;
    let raw = |body: &'static str, content_type: &'static str| {
        app.client
            .post(app.url("/v1/messages"))
            .bearer_auth(&app.key)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    // Malformed JSON.
    let body = problem(
        raw("{\"customer\": ", "application/json").await.unwrap(),
        400,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );
    // Not JSON at all.
    problem(
        raw("text=hi", "application/x-www-form-urlencoded")
            .await
            .unwrap(),
        415,
    )
    .await;
    // Each refused body names the field at fault, with its path.
    let long = "a".repeat(app.config.messages.max_text_chars + 1);
    let cases = [
        // Missing fields.
        (json!({ "customer": { "id": "c" } }), "text"),
        (json!({ "customer": {}, "text": "hi" }), "customer.id"),
        // Wrong types and empty values.
        (json!({ "customer": { "id": "c" }, "text": 5 }), "text"),
        (json!({ "customer": { "id": "c" }, "text": "   " }), "text"),
        (
            json!({ "customer": { "id": " " }, "text": "hi" }),
            "customer.id",
        ),
        (
            json!({ "customer": { "id": "c" }, "text": "hi", "conversation_id": "nope" }),
            "conversation_id",
        ),
        // A misspelt field is refused rather than silently ignored.
        (
            json!({ "customer": { "id": "c" }, "text": "hi", "conversationId": "x" }),
            "conversationId",
        ),
        (
            json!({ "customer": { "id": "c" }, "text": "hi", "metadata": [1] }),
            "metadata",
        ),
        (
            json!({ "customer": { "id": "c", "email": "not-an-address" }, "text": "hi" }),
            "customer.email",
        ),
        // Text longer than messages.max_text_chars.
        (json!({ "customer": { "id": "c" }, "text": long }), "text"),
    ];
    for (body, field) in cases {
        let problem = problem(app.post("/v1/messages", &body).await, 422).await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{problem}"
        );
    }
    // Body larger than server.max_body_bytes.
    let huge = "a".repeat(app.config.server.max_body_bytes + 10);
    problem(
        app.post(
            "/v1/messages",
            &json!({ "customer": { "id": "c" }, "text": huge }),
        )
        .await,
        413,
    )
    .await;
    // Unknown conversation.
    let body = problem(
        app.post(
            "/v1/messages",
            &json!({ "customer": { "id": "c" }, "text": "hi", "conversation_id": uuid::Uuid::now_v7() }),
        )
        .await,
        404,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("conversation"));
    // Someone else's conversation.
    let first = app
        .message("owner", "what is the exchange rate for euros")
        .await;
    let body = problem(
        app.post(
            "/v1/messages",
            &json!({ "customer": { "id": "intruder" }, "text": "hi", "conversation_id": first["conversation_id"] }),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "customer.id");
    // Bad idempotency key.
    let r = app
        .client
        .post(app.url("/v1/messages"))
        .bearer_auth(&app.key)
        .header("Idempotency-Key", "x".repeat(300))
        .json(&json!({ "customer": { "id": "c" }, "text": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(r, 422).await["errors"][0]["field"],
        "Idempotency-Key"
    );
}

#[tokio::test]
async fn requests_without_a_valid_key_are_unauthorized() {
    let app = spawn_app().await;
    let body = json!({ "customer": { "id": "c" }, "text": "hi" });
    let none = app
        .client
        .post(app.url("/v1/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    problem(none, 401).await;
    let wrong = app
        .client
        .post(app.url("/v1/messages"))
        .bearer_auth("sopr_nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    problem(wrong, 401).await;
    // Another tenant's conversation is invisible.
    let out = app
        .message("c", "what is the exchange rate for euros")
        .await;
    let other_key = sopr::service::create_key(app.store.as_ref(), "someone-else")
        .await
        .unwrap();
    let r = app
        .client
        .get(app.url(&format!(
            "/v1/conversations/{}",
            out["conversation_id"].as_str().unwrap()
        )))
        .bearer_auth(other_key)
        .send()
        .await
        .unwrap();
    problem(r, 404).await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_problems_and_every_response_has_a_request_id() {
    let app = spawn_app().await;
    let r = app.get("/v1/nothing-here").await;
    assert!(r.headers().contains_key("x-request-id"));
    problem(r, 404).await;
    let r = app
        .client
        .delete(app.url("/v1/messages"))
        .send()
        .await
        .unwrap();
    problem(r, 405).await;
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["database"], "sqlite");
}

#[tokio::test]
async fn odd_but_valid_text_gets_a_clear_decision() {
    let app = spawn_app().await;
    for text in ["🙂🙂🙂", "0000000000", "Где моя карта?", "卡没到", "?!"] {
        let out = app.message("odd", text).await;
        assert_eq!(out["outcome"], "queued", "{text}: {out}");
    }
}

#[tokio::test]
async fn a_database_failure_is_a_500_with_only_a_request_id() {
    let app = spawn_app().await;
    // Break the database under the running service.
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(app.db.url())
        .await
        .unwrap();
    sqlx::query("ALTER TABLE decisions RENAME TO decisions_gone")
        .execute(&mut conn)
        .await
        .unwrap();
    let r = app
        .post(
            "/v1/messages",
            &json!({ "customer": { "id": "c" }, "text": "what is the exchange rate" }),
        )
        .await;
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = problem(r, 500).await;
    assert_eq!(body["request_id"], request_id.as_str());
    assert!(body.get("detail").is_none(), "no internals leak: {body}");
    assert!(!body.to_string().contains("decisions"), "{body}");
}

#[tokio::test]
async fn sensitive_flags_raise_the_priority_of_the_review_item() {
    let app = spawn_app().await;
    let priority = |out: &Value| {
        let id = out["review_id"].as_str().unwrap().to_string();
        let app = &app;
        async move {
            let detail: Value = app
                .get(&format!("/v1/reviews/{id}"))
                .await
                .json()
                .await
                .unwrap();
            detail["item"]["priority"].as_i64().unwrap()
        }
    };
    // Unrouted, no flag: normal.
    let plain = app.message("cust-p1", "hmm").await;
    assert_eq!(plain["outcome"], "queued");
    assert_eq!(priority(&plain).await, 1);
    // Fraud is at least high (2), whatever the SOP says.
    let fraud = app
        .message(
            "cust-p2",
            "I think this is fraud, someone is using my account",
        )
        .await;
    assert!(
        fraud["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("topic.fraud")),
        "{fraud}"
    );
    assert!(priority(&fraud).await >= 2);
    // A follow-up that mentions self-harm makes the open item urgent (3).
    let conversation = plain["conversation_id"].as_str().unwrap();
    let follow = app
        .message_in(
            Some(conversation),
            "cust-p1",
            "honestly I want to end my life",
        )
        .await;
    assert_eq!(follow["outcome"], "queued");
    assert!(
        follow["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("topic.self_harm")),
        "{follow}"
    );
    assert_eq!(priority(&plain).await, 3);
}
