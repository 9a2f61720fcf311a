//! Reviewers over the JSON API: list, inspect, claim, resolve, and what the
//! customer and the feedback store see afterwards.

mod support;

use std::collections::HashSet;

use serde_json::{Value, json};
use support::{databases, problem, spawn_app, spawn_app_on};

async fn queue_case(app: &support::TestApp, customer: &str) -> Value {
    let out = app
        .message(
            customer,
            "I want to speak to a human about a payment I don't recognise",
        )
        .await;
    assert_eq!(out["outcome"], "queued", "{out}");
    out
}

/// The item's audit trail, oldest first.
async fn events(app: &support::TestApp, id: &str) -> Vec<Value> {
    let body: Value = app
        .get(&format!("/v1/reviews/{id}/events"))
        .await
        .json()
        .await
        .unwrap();
    body["events"].as_array().unwrap().clone()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_reviewer_claims_edits_and_the_customer_gets_the_reply() {
    let app = spawn_app().await;
    let case = queue_case(&app, "cust-1").await;
    let review_id = case["review_id"].as_str().unwrap();

    let list: Value = app.get("/v1/reviews").await.json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["state"], "open");
    assert_eq!(list["items"][0]["breached"], false);

    let claimed = app
        .post("/v1/reviews/claim", &json!({ "reviewer": "alice" }))
        .await;
    assert_eq!(claimed.status(), 200);
    let claimed: Value = claimed.json().await.unwrap();
    assert_eq!(claimed["id"], review_id);
    assert_eq!(claimed["state"], "claimed");
    assert_eq!(claimed["claimed_by"], "alice");

    // The item page has everything a reviewer needs to decide.
    let detail: Value = app
        .get(&format!("/v1/reviews/{review_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["messages"][0]["role"], "customer");
    assert_eq!(
        detail["decision"]["top_intents"].as_array().unwrap().len(),
        3,
        "{detail}"
    );
    assert!(
        detail["decision"]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "human_requested")
    );
    assert!(detail["decision"]["sop_ref"].is_string());
    assert!(!detail["sop"]["steps"].as_array().unwrap().is_empty());
    assert!(detail["item"]["draft"].is_string());

    // Bob cannot take Alice's item, nor resolve it.
    let r = app
        .post(
            &format!("/v1/reviews/{review_id}/claim"),
            &json!({ "reviewer": "bob" }),
        )
        .await;
    problem(r, 409).await;
    let r = app
        .post(
            &format!("/v1/reviews/{review_id}/resolve"),
            &json!({ "reviewer": "bob", "action": "approve" }),
        )
        .await;
    problem(r, 409).await;
    // Nothing left to claim.
    let r = app
        .post("/v1/reviews/claim", &json!({ "reviewer": "bob" }))
        .await;
    assert_eq!(r.status(), 204);

    let hb = app
        .post(
            &format!("/v1/reviews/{review_id}/heartbeat"),
            &json!({ "reviewer": "alice" }),
        )
        .await;
    assert_eq!(hb.status(), 200);

    // A stale version is refused with 409 and the item stays claimed.
    let stale = app
        .post(
            &format!("/v1/reviews/{review_id}/resolve"),
            &json!({ "reviewer": "alice", "action": "edit", "reply": "x", "version": 1 }),
        )
        .await;
    problem(stale, 409).await;

    let reply = "Hi Sam, I've checked the payment with you: it was a pre-authorisation and has now dropped off.";
    let resolved = app
        .post(
            &format!("/v1/reviews/{review_id}/resolve"),
            &json!({ "reviewer": "alice", "action": "edit", "reply": reply, "intent": "card_payment_not_recognised", "version": claimed["version"] }),
        )
        .await;
    assert_eq!(resolved.status(), 200);
    let resolved: Value = resolved.json().await.unwrap();
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["final_reply"], reply);

    // The customer's conversation carries the reviewer's reply.
    let conv = app.conversation(&case["conversation_id"]).await;
    let last = conv["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["role"], "reviewer");
    assert_eq!(last["body"], reply);
    assert!(conv["open_review_id"].is_null());

    // Audit trail and feedback row.
    let events = events(&app, review_id).await;
    assert_eq!(kinds(&events), ["created", "claimed", "resolved.edit"]);
    let edit = &events[2];
    assert_eq!(edit["actor"], "alice");
    assert_eq!(edit["data"]["after"], reply);
    assert!(edit["data"]["before"].is_string());
    let id = uuid::Uuid::parse_str(review_id).unwrap();
    let feedback = app.store.review_feedback(app.tenant.id, id).await.unwrap();
    assert_eq!(feedback.len(), 1);
    assert_eq!(
        feedback[0].label_intent.as_deref(),
        Some("card_payment_not_recognised")
    );
    assert_eq!(feedback[0].action, "edit");
    assert_eq!(feedback[0].final_reply.as_deref(), Some(reply));

    // Once resolved, the bot answers this conversation again.
    let next = app
        .message_in(
            Some(case["conversation_id"].as_str().unwrap()),
            "cust-1",
            "thanks! and what is the exchange rate for dollars",
        )
        .await;
    assert_eq!(next["outcome"], "answered", "{next}");
}

#[tokio::test]
async fn approve_sends_the_draft_and_reject_sends_nothing() {
    let app = spawn_app().await;
    let a = app.message("cust-a", "I want to close my account").await;
    let b = app
        .message("cust-b", "I think my card has been compromised")
        .await;
    for case in [&a, &b] {
        let id = case["review_id"].as_str().unwrap();
        let r = app
            .post(
                &format!("/v1/reviews/{id}/claim"),
                &json!({ "reviewer": "carol" }),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let draft = {
        let d: Value = app
            .get(&format!("/v1/reviews/{}", a["review_id"].as_str().unwrap()))
            .await
            .json()
            .await
            .unwrap();
        d["item"]["draft"].as_str().unwrap().to_string()
    };
    let r = app
        .post(
            &format!("/v1/reviews/{}/resolve", a["review_id"].as_str().unwrap()),
            &json!({ "reviewer": "carol", "action": "approve" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let conv = app.conversation(&a["conversation_id"]).await;
    assert_eq!(
        conv["messages"].as_array().unwrap().last().unwrap()["body"],
        draft
    );

    // Reject needs a reason.
    let path = format!("/v1/reviews/{}/resolve", b["review_id"].as_str().unwrap());
    let r = app
        .post(&path, &json!({ "reviewer": "carol", "action": "reject" }))
        .await;
    assert_eq!(problem(r, 422).await["errors"][0]["field"], "reason");
    let r = app.post(&path, &json!({ "reviewer": "carol", "action": "reject", "reason": "duplicate of another case" })).await;
    assert_eq!(r.status(), 200);
    let conv = app.conversation(&b["conversation_id"]).await;
    assert_ne!(
        conv["messages"].as_array().unwrap().last().unwrap()["role"],
        "reviewer"
    );
    let feedback = app.store.review_feedback(
        app.tenant.id,
        uuid::Uuid::parse_str(b["review_id"].as_str().unwrap()).unwrap(),
    );
    let feedback = feedback.await.unwrap();
    assert_eq!(feedback[0].action, "reject");
    assert!(feedback[0].label_intent.is_none());
}

#[tokio::test]
async fn release_returns_an_item_and_bad_input_is_a_problem() {
    let app = spawn_app().await;
    let case = queue_case(&app, "cust-r").await;
    let id = case["review_id"].as_str().unwrap();
    app.post(
        &format!("/v1/reviews/{id}/claim"),
        &json!({ "reviewer": "dan" }),
    )
    .await;
    let r = app
        .post(
            &format!("/v1/reviews/{id}/release"),
            &json!({ "reviewer": "erin" }),
        )
        .await;
    problem(r, 409).await;
    let r = app
        .post(
            &format!("/v1/reviews/{id}/release"),
            &json!({ "reviewer": "dan" }),
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "open");

    let r = app
        .post(
            &format!("/v1/reviews/{id}/claim"),
            &json!({ "reviewer": "" }),
        )
        .await;
    assert_eq!(problem(r, 422).await["errors"][0]["field"], "reviewer");
    let r = app
        .post(&format!("/v1/reviews/{id}/claim"), &json!({}))
        .await;
    assert_eq!(problem(r, 422).await["errors"][0]["field"], "reviewer");
    app.post(
        &format!("/v1/reviews/{id}/claim"),
        &json!({ "reviewer": "dan" }),
    )
    .await;
    let r = app
        .post(
            &format!("/v1/reviews/{id}/resolve"),
            &json!({ "reviewer": "dan", "action": "shout" }),
        )
        .await;
    problem(r, 422).await;
    let r = app
        .post(&format!("/v1/reviews/{id}/resolve"), &json!({ "reviewer": "dan", "action": "edit", "reply": "ok", "intent": "no_such_intent" }))
        .await;
    assert_eq!(problem(r, 422).await["errors"][0]["field"], "intent");
    let r = app
        .post(
            &format!("/v1/reviews/{id}/resolve"),
            &json!({ "reviewer": "dan", "action": "edit", "reply": " " }),
        )
        .await;
    assert_eq!(problem(r, 422).await["errors"][0]["field"], "reply");
    problem(app.get("/v1/reviews/not-a-uuid").await, 404).await;
    problem(
        app.get(&format!("/v1/reviews/{}", uuid::Uuid::now_v7()))
            .await,
        404,
    )
    .await;
    assert_eq!(
        problem(app.get("/v1/reviews?state=weird").await, 422).await["errors"][0]["field"],
        "state"
    );
    assert_eq!(
        problem(app.get("/v1/reviews?limit=0").await, 422).await["errors"][0]["field"],
        "limit"
    );
    let r = app.client.get(app.url("/v1/reviews")).send().await.unwrap();
    problem(r, 401).await;
}

#[tokio::test]
async fn thirty_two_concurrent_reviewers_over_http_never_double_claim() {
    for db in databases().await {
        let label = db.label();
        let app = std::sync::Arc::new(spawn_app_on(db, |_| {}).await);
        let cases = 64;
        for i in 0..cases {
            queue_case(&app, &format!("cust-{i}")).await;
        }
        let mut tasks = Vec::new();
        for worker in 0..32 {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                let me = format!("reviewer-{worker}");
                let mut mine = Vec::new();
                loop {
                    let r = app.post("/v1/reviews/claim", &json!({ "reviewer": me })).await;
                    if r.status() == 204 {
                        break;
                    }
                    assert_eq!(r.status(), 200);
                    let item: Value = r.json().await.unwrap();
                    let id = item["id"].as_str().unwrap().to_string();
                    let done = app
                        .post(&format!("/v1/reviews/{id}/resolve"), &json!({ "reviewer": me, "action": "approve", "version": item["version"] }))
                        .await;
                    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());
                    mine.push(id);
                }
                mine
            }));
        }
        let mut seen = HashSet::new();
        for t in tasks {
            for id in t.await.unwrap() {
                assert!(seen.insert(id.clone()), "{label}: {id} claimed twice");
            }
        }
        assert_eq!(
            seen.len(),
            cases,
            "{label}: every case resolved exactly once"
        );
    }
}

#[tokio::test]
async fn reroute_redrafts_under_another_sop_and_labels_the_message() {
    for db in databases().await {
        let label = db.label();
        let app = spawn_app_on(db, |_| {}).await;
        let case = queue_case(&app, "cust-r").await;
        let id = case["review_id"].as_str().unwrap();
        let reroute = |body: Value| {
            let app = &app;
            async move { app.post(&format!("/v1/reviews/{id}/reroute"), &body).await }
        };
        let ask = json!({ "reviewer": "alice", "sop": "card-delivery", "intent": "card_arrival" });
        problem(reroute(ask.clone()).await, 409).await;

        let claimed: Value = app
            .post(
                &format!("/v1/reviews/{id}/claim"),
                &json!({ "reviewer": "alice" }),
            )
            .await
            .json()
            .await
            .unwrap();
        let body = problem(
            reroute(json!({ "reviewer": "alice", "sop": "nope" })).await,
            422,
        )
        .await;
        assert_eq!(body["errors"][0]["field"], "sop", "{label}: {body}");
        let body = problem(
            reroute(json!({ "reviewer": "alice", "sop": "card-delivery" })).await,
            422,
        )
        .await;
        assert_eq!(body["errors"][0]["field"], "intent", "{label}: {body}");
        let mut stale = ask.clone();
        stale["version"] = json!(claimed["version"].as_i64().unwrap() - 1);
        problem(reroute(stale).await, 409).await;
        let mut bob = ask.clone();
        bob["reviewer"] = json!("bob");
        problem(reroute(bob).await, 409).await;

        let response = reroute(ask).await;
        assert_eq!(response.status(), 200, "{label}");
        let item: Value = response.json().await.unwrap();
        assert!(
            item["sop_ref"]
                .as_str()
                .unwrap()
                .starts_with("card-delivery@"),
            "{item}"
        );
        assert!(
            item["draft"].as_str().unwrap().contains("Track delivery"),
            "{item}"
        );
        assert_eq!(item["state"], "claimed");
        assert_eq!(item["claimed_by"], "alice");
        assert_eq!(item["version"], claimed["version"].as_i64().unwrap() + 1);

        let trail = events(&app, id).await;
        let rerouted = trail
            .iter()
            .find(|e| e["kind"] == "rerouted")
            .expect("rerouted event");
        assert_eq!(rerouted["actor"], "alice");
        assert_eq!(rerouted["data"]["before"]["sop_ref"], case["route"]["sop"]);
        assert_eq!(rerouted["data"]["after"]["sop_ref"], item["sop_ref"]);

        let review_id = id.parse().unwrap();
        let feedback = app
            .store
            .review_feedback(app.tenant.id, review_id)
            .await
            .unwrap();
        assert_eq!(feedback.len(), 1, "{label}");
        assert_eq!(feedback[0].action, "reroute");
        assert_eq!(feedback[0].label_intent.as_deref(), Some("card_arrival"));

        // Approving sends the new draft.
        let resolved = app
            .post(
                &format!("/v1/reviews/{id}/resolve"),
                &json!({ "reviewer": "alice", "action": "approve" }),
            )
            .await;
        assert_eq!(resolved.status(), 200, "{label}");
        let last = app.last_message(&case["conversation_id"]).await;
        assert_eq!(last["role"], "reviewer");
        assert_eq!(last["body"], item["draft"]);
    }
}

#[tokio::test]
async fn asking_the_customer_parks_the_item_until_they_answer() {
    for db in databases().await {
        let label = db.label();
        let app = spawn_app_on(db, |_| {}).await;
        let case = queue_case(&app, "cust-w").await;
        let id = case["review_id"].as_str().unwrap();
        let claimed: Value = app
            .post("/v1/reviews/claim", &json!({ "reviewer": "alice" }))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(claimed["id"], id);
        let ask = |body: Value| {
            let app = &app;
            async move {
                app.post(&format!("/v1/reviews/{id}/request-info"), &body)
                    .await
            }
        };
        let body = problem(
            ask(json!({ "reviewer": "alice", "message": "  " })).await,
            422,
        )
        .await;
        assert_eq!(body["errors"][0]["field"], "message");
        problem(
            ask(json!({ "reviewer": "bob", "message": "Which card?" })).await,
            409,
        )
        .await;

        let question = "Which card is it: the one ending in the digits shown in the app?";
        let response = ask(json!({ "reviewer": "alice", "message": question })).await;
        assert_eq!(response.status(), 200, "{label}");
        let item: Value = response.json().await.unwrap();
        assert_eq!(item["state"], "waiting");
        assert!(item["claimed_by"].is_null());

        // The customer sees the question; nobody can claim-next the item meanwhile.
        let last = app.last_message(&case["conversation_id"]).await;
        assert_eq!(
            (last["role"].as_str(), last["body"].as_str()),
            (Some("reviewer"), Some(question))
        );
        let next = app
            .post("/v1/reviews/claim", &json!({ "reviewer": "bob" }))
            .await;
        assert_eq!(
            next.status(),
            204,
            "{label}: a waiting item is not claimable"
        );
        let waiting: Value = app
            .get("/v1/reviews?state=waiting")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(waiting["items"][0]["id"], id);
        let due_while_waiting = waiting["items"][0]["due_at"].as_str().unwrap().to_string();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;

        // The answer joins the item and puts it back in the queue.
        let answer = app
            .message_in(
                case["conversation_id"].as_str(),
                "cust-w",
                "The debit card, thanks",
            )
            .await;
        assert_eq!(answer["outcome"], "queued");
        assert_eq!(answer["review_id"], id);
        let next: Value = app
            .post("/v1/reviews/claim", &json!({ "reviewer": "bob" }))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(next["id"], id, "{label}");
        assert!(next["waiting_since"].is_null());
        // The SLA stood still while the customer was being waited on.
        let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
        let shift = parse(next["due_at"].as_str().unwrap()) - parse(&due_while_waiting);
        assert!(
            shift >= chrono::Duration::milliseconds(50),
            "{label}: due time moved by {shift}"
        );
        let trail = events(&app, id).await;
        assert_eq!(
            kinds(&trail),
            [
                "created",
                "claimed",
                "info_requested",
                "customer_message",
                "claimed"
            ],
            "{label}"
        );
    }
}

#[tokio::test]
async fn an_item_can_be_assigned_to_a_named_reviewer() {
    let app = spawn_app().await;
    let case = queue_case(&app, "cust-a").await;
    let id = case["review_id"].as_str().unwrap();
    app.post(
        &format!("/v1/reviews/{id}/claim"),
        &json!({ "reviewer": "alice" }),
    )
    .await;
    let assign = |body: Value| {
        let app = &app;
        async move { app.post(&format!("/v1/reviews/{id}/assign"), &body).await }
    };
    let body = problem(
        assign(json!({ "reviewer": "lead", "assignee": " " })).await,
        422,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "assignee");
    let item: Value = assign(json!({ "reviewer": "lead", "assignee": "bob" }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (item["state"].as_str(), item["claimed_by"].as_str()),
        (Some("claimed"), Some("bob"))
    );
    // Alice lost it; Bob can resolve it.
    let r = app
        .post(
            &format!("/v1/reviews/{id}/resolve"),
            &json!({ "reviewer": "alice", "action": "reject", "reason": "dup" }),
        )
        .await;
    problem(r, 409).await;
    let r = app
        .post(
            &format!("/v1/reviews/{id}/resolve"),
            &json!({ "reviewer": "bob", "action": "reject", "reason": "duplicate" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let trail = events(&app, id).await;
    let assigned = trail
        .iter()
        .find(|e| e["kind"] == "assigned")
        .unwrap()
        .clone();
    assert_eq!(assigned["actor"], "lead");
    assert_eq!(assigned["data"]["previous"], "alice");
    assert_eq!(assigned["data"]["to"], "bob");
    problem(
        assign(json!({ "reviewer": "lead", "assignee": "carol" })).await,
        409,
    )
    .await;
}

/// An edit without an intent confirms the route only when the router was
/// sure of it: rewriting the reply to a message it could not place must not
/// teach the router its own guess.
#[tokio::test]
async fn an_edit_confirms_the_route_only_when_the_router_was_sure() {
    let app = spawn_app().await;
    let label_after_edit = |text: &'static str, customer: &'static str| {
        let app = &app;
        async move {
            let case = app.message(customer, text).await;
            assert_eq!(case["outcome"], "queued", "{case}");
            let id = case["review_id"].as_str().unwrap();
            let decision = app
                .store
                .decision(
                    app.tenant.id,
                    uuid::Uuid::parse_str(case["decision_id"].as_str().unwrap()).unwrap(),
                )
                .await
                .unwrap()
                .unwrap();
            let claimed = app
                .post(
                    &format!("/v1/reviews/{id}/claim"),
                    &json!({ "reviewer": "alice" }),
                )
                .await;
            assert_eq!(claimed.status(), 200);
            let resolved = app
                .post(
                    &format!("/v1/reviews/{id}/resolve"),
                    &json!({ "reviewer": "alice", "action": "edit", "reply": "Let me look into it." }),
                )
                .await;
            assert_eq!(resolved.status(), 200);
            let feedback = app
                .store
                .review_feedback(app.tenant.id, uuid::Uuid::parse_str(id).unwrap())
                .await
                .unwrap();
            (decision, feedback[0].label_intent.clone())
        }
    };

    // Sure of the route, reviewed for another reason (a request for a human).
    let (decision, label) = label_after_edit(
        "I want to speak to a human, my card still has not arrived",
        "c-1",
    )
    .await;
    let reasons = decision.reasons.0.to_string();
    assert!(
        reasons.contains("human_requested") && !reasons.contains("low_confidence"),
        "{reasons}"
    );
    assert_eq!(
        label, decision.intent,
        "the edit confirms the routed intent"
    );
    assert!(label.is_some());

    // Unsure of the route: the edit leaves the message unlabelled.
    let (decision, label) = label_after_edit("hello? anyone there", "c-2").await;
    let reasons = decision.reasons.0.to_string();
    assert!(
        reasons.contains("low_confidence") || reasons.contains("ambiguous_route"),
        "{reasons}"
    );
    assert_eq!(label, None, "routed to {:?}", decision.intent);
}

#[tokio::test]
async fn a_share_of_automatic_answers_waits_for_a_spot_check_label() {
    for db in support::databases().await {
        let label = db.label();
        let app = support::spawn_app_on(db, |c| c.review.spot_check_share = 1.0).await;
        let answered = app
            .message(
                "cust-1",
                "My new card still hasn't arrived, it's been 10 days",
            )
            .await;
        assert_eq!(answered["outcome"], "answered", "{label}: {answered}");
        // A case that goes to a person is no automatic answer: never sampled.
        let queued = app
            .message("cust-2", "I want to speak to a human about my card")
            .await;
        assert_eq!(queued["outcome"], "queued");

        let list: Value = app.get("/v1/spot-checks").await.json().await.unwrap();
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{label}: {list}");
        let check = &items[0];
        let id = check["id"].as_str().unwrap().to_string();
        assert_eq!(check["decision_id"], answered["decision_id"]);
        assert_eq!(check["routed_intent"], "card_arrival");
        assert_eq!(check["reply"], answered["reply"], "the reply that went out");
        assert!(check["label_intent"].is_null());
        assert_eq!(list["summary"]["sampled"], 1);
        assert_eq!(list["summary"]["labelled"], 0);
        assert!(list["summary"]["accuracy"].is_null());

        // Mistakes are 4xx problems naming the field, and change nothing.
        let path = format!("/v1/spot-checks/{id}/label");
        let bad = app
            .post(
                &path,
                &json!({ "reviewer": "ana", "intent": "no_such_intent" }),
            )
            .await;
        let body = problem(bad, 422).await;
        assert!(
            body["detail"].as_str().unwrap().contains("intent"),
            "{body}"
        );
        let bad = app
            .post(&path, &json!({ "reviewer": " ", "intent": "card_arrival" }))
            .await;
        problem(bad, 422).await;
        let bad = app.post(&path, &json!({ "reviewer": "ana" })).await;
        problem(bad, 422).await;
        let missing = format!("/v1/spot-checks/{}/label", uuid::Uuid::now_v7());
        problem(
            app.post(&missing, &json!({ "reviewer": "ana", "intent": "oos" }))
                .await,
            404,
        )
        .await;
        problem(
            app.post(
                "/v1/spot-checks/nope/label",
                &json!({ "reviewer": "ana", "intent": "oos" }),
            )
            .await,
            404,
        )
        .await;
        problem(app.get("/v1/spot-checks?state=done").await, 422).await;
        problem(app.get("/v1/spot-checks?days=0").await, 422).await;
        let still: Value = app
            .get(&format!("/v1/spot-checks/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert!(still["label_intent"].is_null(), "{still}");

        // Wrong first, then corrected to right.
        let r = app
            .post(
                &path,
                &json!({ "reviewer": "ana", "intent": "card_delivery_estimate" }),
            )
            .await;
        assert_eq!(r.status(), 200, "{label}");
        let list: Value = app
            .get("/v1/spot-checks?state=labelled")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list["summary"]["right"], 0, "{list}");
        let r = app
            .post(
                &path,
                &json!({ "reviewer": "bo", "intent": "card_arrival" }),
            )
            .await;
        let labelled: Value = r.json().await.unwrap();
        assert_eq!(labelled["label_intent"], "card_arrival");
        assert_eq!(labelled["reviewer"], "bo");
        let list: Value = app
            .get("/v1/spot-checks?state=labelled")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(list["summary"]["labelled"], 1);
        assert_eq!(list["summary"]["right"], 1);
        assert_eq!(list["summary"]["accuracy"], 1.0);
        let by_sop = list["by_sop"].as_array().unwrap();
        assert_eq!(by_sop.len(), 1, "{list}");
        assert!(
            by_sop[0]["sop_ref"]
                .as_str()
                .unwrap()
                .starts_with("card-delivery@1#")
        );
        assert_eq!(
            (by_sop[0]["labelled"].as_i64(), by_sop[0]["right"].as_i64()),
            (Some(1), Some(1))
        );
        let interval = list["summary"]["interval"].as_array().unwrap();
        assert!(
            interval[0].as_f64().unwrap() < 0.3 && interval[1] == 1.0,
            "{list}"
        );
        let pending: Value = app.get("/v1/spot-checks").await.json().await.unwrap();
        assert!(pending["items"].as_array().unwrap().is_empty());
        let metrics = app.get("/metrics").await.text().await.unwrap();
        assert!(
            metrics.contains("sopr_spot_checks_total")
                && metrics.contains("sopr_spot_checks_labelled_total{verdict=\"right\"}")
                && metrics.contains("sopr_spot_checks_labelled_total{verdict=\"wrong\"}"),
            "{metrics}"
        );
    }
    // Off by default: nothing is sampled.
    let app = support::spawn_app().await;
    let answered = app
        .message(
            "cust-1",
            "My new card still hasn't arrived, it's been 10 days",
        )
        .await;
    assert_eq!(answered["outcome"], "answered");
    let list: Value = app.get("/v1/spot-checks").await.json().await.unwrap();
    assert_eq!(list["summary"]["sampled"], 0, "{list}");
}

#[tokio::test]
async fn an_answer_of_a_retired_sop_can_still_be_confirmed_right() {
    let db = support::TestDb::sqlite();
    let url = db.url().to_string();
    let before = support::spawn_app_on(db, |c| c.review.spot_check_share = 1.0).await;
    let answered = before
        .message(
            "cust-1",
            "My new card still hasn't arrived, it's been 10 days",
        )
        .await;
    assert_eq!(answered["route"]["intent"], "card_arrival", "{answered}");
    let list: Value = before.get("/v1/spot-checks").await.json().await.unwrap();
    let id = list["items"][0]["id"].as_str().unwrap().to_string();

    // The card-delivery SOP is then retired: its intents are no active SOP's.
    let sops = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(support::sops_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("card-delivery") {
            std::fs::copy(&path, sops.path().join(&name)).unwrap();
        }
    }
    let same_db = support::TestDb::Sqlite {
        url,
        _dir: tempfile::tempdir().unwrap(),
    };
    let dir = sops.path().to_path_buf();
    let after = support::spawn_app_for(same_db, &before.tenant.name, move |c| {
        c.sops.dir = dir;
    })
    .await;
    let path = format!("/v1/spot-checks/{id}/label");
    // Another of its intents is no label any more…
    let r = after
        .post(
            &path,
            &json!({ "reviewer": "ana", "intent": "card_delivery_estimate" }),
        )
        .await;
    let body = problem(r, 422).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("not an intent of any active SOP"),
        "{body}"
    );
    // …but the routed one still confirms the answer given then.
    let r = after
        .post(
            &path,
            &json!({ "reviewer": "ana", "intent": "card_arrival" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let list: Value = after
        .get("/v1/spot-checks?state=labelled")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["summary"]["right"], 1, "{list}");
}
