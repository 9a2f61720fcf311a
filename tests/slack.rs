//! Slack end to end against a local stand-in that speaks Slack's wire
//! protocol (`tests/support/slack_api.rs`): new cases are posted with
//! buttons, outages are retried, messages follow the item wherever it is
//! handled, button clicks act through the review rules, and `/slack/actions`
//! accepts only what Slack signed, once.

mod support;

use serde_json::{Value, json};
use support::console::{ConsoleClient, add_user};
use support::slack_api::{SlackApi, TOKEN};
use support::{TestApp, TestDb, databases, problem, spawn_app_on};

const BOT_ENV: &str = "SOPR_TEST_SLACK_BOT_TOKEN";
const SIGNING_ENV: &str = "SOPR_TEST_SLACK_SIGNING_SECRET";
const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const PASSWORD: &str = "correct horse battery";

fn set_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once, before any service of this test binary reads the
        // environment, to values that never change.
        unsafe {
            std::env::set_var(BOT_ENV, TOKEN);
            std::env::set_var(SIGNING_ENV, SIGNING_SECRET);
        }
    });
}

/// An app posting to `slack` with a bot token and interactivity on.
async fn app_with_slack(db: TestDb, slack: &SlackApi) -> TestApp {
    set_env();
    let api_url = slack.api_url();
    spawn_app_on(db, move |c| {
        c.notify.poll_ms = 50;
        c.notify.backoff_base_ms = 20;
        c.notify.backoff_max_ms = 100;
        c.notify.console_url = "https://review.example.com".into();
        c.notify.slack.api_url = api_url;
        c.notify.slack.bot_token_env = BOT_ENV.into();
        c.notify.slack.signing_secret_env = SIGNING_ENV.into();
        c.notify.slack.users = [("U0BOB".to_string(), "bob@example.com".to_string())].into();
    })
    .await
}

async fn queue_case(app: &TestApp, customer: &str) -> (Value, String) {
    let case = app
        .message(
            customer,
            "I lost my card 4111 1111 1111 1111 and I want to speak to a human",
        )
        .await;
    assert_eq!(case["outcome"], "queued", "{case}");
    let id = case["review_id"].as_str().unwrap().to_string();
    (case, id)
}

/// Every `text` in a message's blocks, joined: what a reader sees.
fn shown(message: &Value) -> String {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("text", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    walk(&message["blocks"], &mut out);
    out.join("\n")
}

fn buttons(message: &Value) -> Vec<String> {
    message["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().unwrap().clone())
        .map(|e| e["action_id"].as_str().unwrap().to_string())
        .collect()
}

fn button_value(message: &Value, action: &str) -> String {
    message["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().unwrap().clone())
        .find(|e| e["action_id"] == action)
        .and_then(|e| e["value"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no {action} button in {message}"))
}

/// A `block_actions` interaction as Slack sends it: form-encoded `payload`.
fn click(slack: &SlackApi, user: &str, action: &str, value: &str) -> Vec<u8> {
    let payload = json!({
        "type": "block_actions",
        "user": { "id": user, "username": user.to_lowercase(), "team_id": "T0SOPR" },
        "team": { "id": "T0SOPR" },
        "response_url": slack.response_url(),
        "actions": [ { "action_id": action, "block_id": "sopr_review", "value": value, "type": "button" } ],
    });
    serde_urlencoded::to_string([("payload", payload.to_string())])
        .unwrap()
        .into_bytes()
}

fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

async fn send(app: &TestApp, body: &[u8], headers: &[(&str, String)]) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/slack/actions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.unwrap()
}

/// Sends `body` signed the way Slack signs, now.
async fn send_signed(app: &TestApp, body: &[u8]) -> reqwest::Response {
    let ts = chrono::Utc::now().timestamp().to_string();
    let sig = signature(SIGNING_SECRET, &ts, body);
    send(
        app,
        body,
        &[
            ("x-slack-request-timestamp", ts),
            ("x-slack-signature", sig),
        ],
    )
    .await
}

async fn item(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/reviews/{id}"))
        .await
        .json::<Value>()
        .await
        .unwrap()["item"]
        .clone()
}

/// Waits until the one message posted shows `text`.
async fn message_shows(slack: &SlackApi, text: &str) -> Value {
    let want = text.to_string();
    slack
        .wait_until(&format!("the message to show `{text}`"), move |s| {
            s.posted()
                .first()
                .and_then(|ts| s.message(ts))
                .is_some_and(|m| shown(&m).contains(&want))
        })
        .await;
    slack.message(&slack.posted()[0]).unwrap()
}

#[tokio::test]
async fn new_cases_are_posted_with_buttons_and_follow_the_item_wherever_it_is_handled() {
    let slack = SlackApi::start().await;
    // Slack is down for the first two attempts.
    slack.fail_next(2);
    let app = app_with_slack(TestDb::sqlite(), &slack).await;
    let (_, id) = queue_case(&app, "cust-1").await;

    slack
        .wait_until("one message posted", |s| s.posted().len() == 1)
        .await;
    let posts = slack.calls("chat.postMessage");
    assert_eq!(posts.len(), 3, "two failures, then one post");
    let post = &posts[2].body;
    assert!(post["channel"].as_str().unwrap().starts_with('#'), "{post}");
    let text = shown(post);
    assert!(text.contains("Needs review: "), "{text}");
    assert!(text.contains("*Priority*") && text.contains("*SLA*") && text.contains("*SOP*"));
    assert!(text.contains("human_requested"), "flags: {text}");
    assert!(
        text.contains("**** **** **** 1111"),
        "masked excerpt: {text}"
    );
    assert!(!post.to_string().contains("4111 1111 1111 1111"));
    assert_eq!(buttons(post), ["claim", "approve", "open"]);
    assert!(
        post.to_string()
            .contains(&format!("https://review.example.com/console/items/{id}"))
    );

    // Claimed through the JSON API: the message says so.
    let r = app
        .post(
            &format!("/v1/reviews/{id}/claim"),
            &json!({ "reviewer": "alice" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    message_shows(&slack, "Claimed by alice").await;

    // Released, then resolved: back to open, then resolved with no buttons
    // but the link.
    let r = app
        .post(
            &format!("/v1/reviews/{id}/release"),
            &json!({ "reviewer": "alice" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    message_shows(&slack, "nobody has claimed it").await;
    app.post(
        &format!("/v1/reviews/{id}/claim"),
        &json!({ "reviewer": "alice" }),
    )
    .await;
    let r = app
        .post(
            &format!("/v1/reviews/{id}/resolve"),
            &json!({ "reviewer": "alice", "action": "approve" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let message = message_shows(&slack, "Resolved by alice (approve)").await;
    assert_eq!(buttons(&message), ["open"]);
    assert_eq!(slack.posted().len(), 1, "updated in place, never re-posted");
    let dead = app
        .store
        .list_notifications(app.tenant.id, "dead", 10)
        .await
        .unwrap();
    assert!(dead.is_empty(), "{dead:?}");
}

#[tokio::test]
async fn a_reviewer_claims_and_approves_from_slack_and_the_console_shows_it_resolved() {
    for db in databases().await {
        let slack = SlackApi::start().await;
        let app = app_with_slack(db, &slack).await;
        add_user(&app, "ana@example.com", "reviewer", PASSWORD).await;
        add_user(&app, "bob@example.com", "reviewer", PASSWORD).await;
        // Ana is found by her Slack email; Bob through notify.slack.users.
        slack.add_user("U0ANA", "Ana@Example.com");
        let (case, id) = queue_case(&app, "cust-1").await;
        let message = message_shows(&slack, "nobody has claimed it").await;
        let value = button_value(&message, "claim");

        // Someone Slack knows but sopr does not is told so, and nothing happens.
        let r = send_signed(&app, &click(&slack, "U0EVE", "claim", &value)).await;
        assert_eq!(r.status(), 200);
        slack
            .wait_until("a reply to Eve", |s| !s.calls("respond").is_empty())
            .await;
        let told = &slack.calls("respond")[0].body;
        assert_eq!(told["response_type"], "ephemeral");
        assert!(
            told["text"].as_str().unwrap().contains("not linked"),
            "{told}"
        );
        assert_eq!(item(&app, &id).await["state"], "open");

        // Ana claims from Slack.
        let r = send_signed(&app, &click(&slack, "U0ANA", "claim", &value)).await;
        assert_eq!(r.status(), 200);
        let claimed = item(&app, &id).await;
        assert_eq!(claimed["state"], "claimed");
        assert_eq!(claimed["claimed_by"], "ana@example.com");
        message_shows(&slack, "Claimed by ana@example.com").await;

        // Bob may not approve what Ana holds: the same rule as everywhere.
        let r = send_signed(&app, &click(&slack, "U0BOB", "approve", &value)).await;
        assert_eq!(r.status(), 200);
        slack
            .wait_until("a reply to Bob", |s| s.calls("respond").len() == 2)
            .await;
        let told = &slack.calls("respond")[1].body;
        assert!(
            told["text"].as_str().unwrap().starts_with("Not done"),
            "{told}"
        );
        assert_eq!(item(&app, &id).await["claimed_by"], "ana@example.com");

        // Ana approves the draft from Slack: the customer gets it.
        let r = send_signed(&app, &click(&slack, "U0ANA", "approve", &value)).await;
        assert_eq!(r.status(), 200);
        let resolved = item(&app, &id).await;
        assert_eq!(resolved["state"], "resolved", "{resolved}");
        assert_eq!(resolved["resolution"], "approve");
        assert_eq!(resolved["resolved_by"], "ana@example.com");
        let last = app.last_message(&case["conversation_id"]).await;
        assert_eq!(last["role"], "reviewer");
        assert_eq!(last["body"], resolved["final_reply"]);
        message_shows(&slack, "Resolved by ana@example.com").await;

        // The console shows it resolved, with the same audit trail.
        let mut ana = ConsoleClient::login(&app, "ana@example.com", PASSWORD).await;
        let page = ana.page(&format!("/console/items/{id}")).await;
        assert!(page.contains("resolved"), "{page}");
        let audit = ana.page(&format!("/console/items/{id}/audit")).await;
        assert!(audit.contains("resolved.approve") && audit.contains("ana@example.com"));
        let history = ana.page("/console/history").await;
        assert!(history.contains(&id), "{history}");
    }
}

#[tokio::test]
async fn slack_actions_accept_only_what_slack_signed_and_only_once() {
    let slack = SlackApi::start().await;
    let app = app_with_slack(TestDb::sqlite(), &slack).await;
    add_user(&app, "ana@example.com", "reviewer", PASSWORD).await;
    slack.add_user("U0ANA", "ana@example.com");
    let (_, id) = queue_case(&app, "cust-1").await;
    let message = message_shows(&slack, "nobody has claimed it").await;
    let body = click(&slack, "U0ANA", "claim", &button_value(&message, "claim"));
    let now = chrono::Utc::now().timestamp();
    let ts = now.to_string();

    let refused = |field: &'static str| {
        move |p: Value| {
            assert_eq!(p["errors"][0]["field"], field, "{p}");
        }
    };
    // Missing headers.
    let r = send(
        &app,
        &body,
        &[("x-slack-signature", signature(SIGNING_SECRET, &ts, &body))],
    )
    .await;
    refused("X-Slack-Request-Timestamp")(problem(r, 401).await);
    let r = send(&app, &body, &[("x-slack-request-timestamp", ts.clone())]).await;
    refused("X-Slack-Signature")(problem(r, 401).await);
    // Signed with another secret.
    let r = send(
        &app,
        &body,
        &[
            ("x-slack-request-timestamp", ts.clone()),
            ("x-slack-signature", signature("not the secret", &ts, &body)),
        ],
    )
    .await;
    refused("X-Slack-Signature")(problem(r, 401).await);
    // Signed correctly, but six minutes ago.
    let old = (now - 360).to_string();
    let r = send(
        &app,
        &body,
        &[
            ("x-slack-request-timestamp", old.clone()),
            ("x-slack-signature", signature(SIGNING_SECRET, &old, &body)),
        ],
    )
    .await;
    refused("X-Slack-Request-Timestamp")(problem(r, 401).await);
    // A valid signature over another body.
    let other = click(&slack, "U0ANA", "approve", &button_value(&message, "claim"));
    let r = send(
        &app,
        &other,
        &[
            ("x-slack-request-timestamp", ts.clone()),
            ("x-slack-signature", signature(SIGNING_SECRET, &ts, &body)),
        ],
    )
    .await;
    refused("X-Slack-Signature")(problem(r, 401).await);
    assert_eq!(item(&app, &id).await["state"], "open", "nothing happened");

    // The real thing works once; the same request again is a replay.
    let headers = [
        ("x-slack-request-timestamp", ts.clone()),
        ("x-slack-signature", signature(SIGNING_SECRET, &ts, &body)),
    ];
    let r = send(&app, &body, &headers).await;
    assert_eq!(r.status(), 200);
    assert_eq!(item(&app, &id).await["claimed_by"], "ana@example.com");
    let r = send(&app, &body, &headers).await;
    refused("X-Slack-Signature")(problem(r, 409).await);

    // Signed garbage is a clear 400.
    let r = send_signed(&app, b"payload=not-json").await;
    refused("payload")(problem(r, 400).await);
}

#[tokio::test]
async fn interactivity_is_off_without_a_signing_secret() {
    let app = support::spawn_app().await;
    let r = send(&app, b"payload=%7B%7D", &[]).await;
    let p = problem(r, 404).await;
    assert!(p["detail"].as_str().unwrap().contains("signing_secret_env"));
}

#[tokio::test]
async fn channels_with_an_incoming_webhook_get_a_plain_message_and_unreachable_channels_stop_serve()
{
    let slack = SlackApi::start().await;
    const HOOK_ENV: &str = "SOPR_TEST_SLACK_INCOMING_WEBHOOK";
    // SAFETY: only this test reads this variable, and it is set before the
    // service that reads it is built.
    unsafe { std::env::set_var(HOOK_ENV, slack.incoming_url()) };
    let channels = [
        "#cards-escalations",
        "#transfers-escalations",
        "#account-escalations",
        "#fees-escalations",
        "#security-incidents",
    ];
    // A channel the demo SOPs name has no way to Slack: serve refuses to start.
    let mut config = support::test_config("sqlite::memory:");
    config.notify.slack.incoming_webhooks = channels[1..]
        .iter()
        .map(|c| (c.to_string(), HOOK_ENV.to_string()))
        .collect();
    let err = sopr::service::build(config).await.err().expect("refused");
    assert!(
        format!("{err:#}").contains("slack:#cards-escalations"),
        "{err:#}"
    );

    let db = TestDb::sqlite();
    let app = spawn_app_on(db, |c| {
        c.notify.poll_ms = 50;
        c.notify.slack.incoming_webhooks = channels
            .iter()
            .map(|c| (c.to_string(), HOOK_ENV.to_string()))
            .collect();
    })
    .await;
    queue_case(&app, "cust-1").await;
    slack
        .wait_until("the incoming webhook to be called", |s| {
            !s.calls("incoming").is_empty()
        })
        .await;
    let hook = &slack.calls("incoming")[0].body;
    assert!(shown(hook).contains("Needs review: "), "{hook}");
    assert_eq!(buttons(hook), ["open"], "a link, no buttons without a bot");
    assert!(hook.get("channel").is_none());
    assert!(slack.calls("chat.postMessage").is_empty());
}

/// A second dispatcher on the app's database, as another replica runs it.
fn replica(app: &TestApp) -> sopr::notify::Dispatcher {
    let (sops, _) = sopr::sop::SopSet::load(&support::sops_dir()).unwrap();
    let notifier = std::sync::Arc::new(sopr::notify::Notifier::new(
        &app.config.notify,
        app.store.clone(),
    ));
    let sops = std::sync::Arc::new(sops);
    let client =
        sopr::notify::slack::Slack::new(&app.config.notify, app.store.clone(), sops.clone())
            .unwrap()
            .map(std::sync::Arc::new);
    sopr::notify::Dispatcher::new(
        &app.config.notify,
        app.store.clone(),
        sops,
        notifier,
        client,
        app.config.review.default_sla_minutes,
    )
    .unwrap()
}

#[tokio::test]
async fn a_claim_whose_slack_update_was_never_queued_is_repaired_once_the_item_settles() {
    set_env();
    for db in databases().await {
        let slack = SlackApi::start().await;
        let api_url = slack.api_url();
        let app = spawn_app_on(db, move |c| {
            c.notify.poll_ms = 50;
            c.notify.slack.api_url = api_url;
            c.notify.slack.bot_token_env = BOT_ENV.into();
        })
        .await;
        claim_reaches_slack_without_its_own_update(&app, &slack).await;
    }
}

async fn claim_reaches_slack_without_its_own_update(app: &TestApp, slack: &SlackApi) {
    let (_, id) = queue_case(app, "cust-1").await;
    slack
        .wait_until("the new case posted", |s| s.posted().len() == 1)
        .await;
    // The stand-in sees the post a moment before sopr records it: wait for the record.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app
        .store
        .list_notifications(app.tenant.id, "delivered", 10)
        .await
        .unwrap()
        .is_empty()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let replica = replica(app);
    let now = chrono::Utc::now();
    assert_eq!(
        replica
            .slack_round(now + chrono::Duration::minutes(1))
            .await
            .unwrap(),
        0,
        "the message shows the item as it is"
    );

    // The claim commits, but the process stops before queueing its update:
    // the store alone, without the review service that announces it.
    let claim = sopr::store::Claim {
        reviewer: "alice".into(),
        now,
        lease_until: now + chrono::Duration::minutes(15),
    };
    app.store
        .claim_review(app.tenant.id, id.parse().unwrap(), &claim)
        .await
        .unwrap();
    assert_eq!(
        replica.slack_round(chrono::Utc::now()).await.unwrap(),
        0,
        "an item that just changed is left to its own update"
    );
    let settled = chrono::Utc::now() + sopr::notify::SLACK_SETTLE + chrono::Duration::seconds(1);
    assert_eq!(replica.slack_round(settled).await.unwrap(), 1);
    assert_eq!(
        replica.slack_round(settled).await.unwrap(),
        0,
        "one update per version, however many rounds or replicas"
    );
    let ts = slack.posted()[0].clone();
    slack
        .wait_until("the message to show the claim", |s| {
            shown(&s.message(&ts).unwrap()).contains("Claimed by alice")
        })
        .await;
    assert_eq!(slack.calls("chat.update").len(), 1);
    // Delivered: the message records that it shows the item's version (the
    // stand-in answers before the dispatcher records it, hence the wait).
    let look_back = chrono::Utc::now() - chrono::Duration::days(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let stale = loop {
        let stale = app
            .store
            .stale_slack_items(look_back, settled, 10)
            .await
            .unwrap();
        if stale.is_empty() || std::time::Instant::now() > deadline {
            break stale;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        stale.is_empty(),
        "the update recorded what it shows: {stale:?}"
    );
}

#[tokio::test]
async fn sla_breaches_are_posted_to_slack_once_and_kept_current_too() {
    let slack = SlackApi::start().await;
    set_env();
    let api_url = slack.api_url();
    let app = spawn_app_on(TestDb::sqlite(), move |c| {
        c.notify.poll_ms = 50;
        c.notify.slack.api_url = api_url;
        c.notify.slack.bot_token_env = BOT_ENV.into();
        c.notify.sla.breach_notify = vec!["slack:#support-leads".into()];
    })
    .await;
    let (_, id) = queue_case(&app, "cust-1").await;
    slack
        .wait_until("the new case posted", |s| s.posted().len() == 1)
        .await;

    // Another replica walks the ladder a day later, twice.
    let replica = replica(&app);
    let later = chrono::Utc::now() + chrono::Duration::days(1);
    assert_eq!(replica.ladder_round(later).await.unwrap(), 1);
    assert_eq!(replica.ladder_round(later).await.unwrap(), 0);
    slack
        .wait_until("the breach posted", |s| s.posted().len() == 2)
        .await;
    let posts = slack.calls("chat.postMessage");
    let breach = posts
        .iter()
        .find(|p| p.body["channel"] == "#support-leads")
        .expect("a post to the breach channel");
    assert!(
        shown(&breach.body).contains("SLA breached: "),
        "{:?}",
        breach.body
    );

    // A claim updates both messages.
    app.post(
        &format!("/v1/reviews/{id}/claim"),
        &json!({ "reviewer": "alice" }),
    )
    .await;
    slack
        .wait_until("both messages to show the claim", |s| {
            s.posted()
                .iter()
                .all(|ts| shown(&s.message(ts).unwrap()).contains("Claimed by alice"))
        })
        .await;
    assert_eq!(slack.calls("chat.postMessage").len(), 2);
}
