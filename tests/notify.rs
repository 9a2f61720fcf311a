//! Notifications end to end against real local peers: a chat frontend's
//! webhook endpoint (HTTP) and an SMTP server. Rows are written with what
//! they announce and delivered by the dispatcher, with retries, dead letters
//! and the same id across retries.

mod support;

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use support::smtp_server::{SmtpBehaviour, SmtpServer};
use support::webhook_receiver::{Answer, WebhookReceiver};
use support::{TestApp, TestDb, spawn_app_for};

const SECRET_ENV: &str = "SOPR_TEST_WEBHOOK_SECRET";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An app whose tenant has a webhook to `receiver`, with fast retries.
async fn app_with_webhook(
    receiver: &WebhookReceiver,
    configure: impl FnOnce(&mut sopr::config::Config),
) -> TestApp {
    set_secret();
    let tenant = format!("tenant-{}", uuid::Uuid::now_v7().simple());
    let url = receiver.url.clone();
    let name = tenant.clone();
    spawn_app_for(TestDb::sqlite(), &tenant, move |c| {
        c.notify.poll_ms = 50;
        c.notify.backoff_base_ms = 20;
        c.notify.backoff_max_ms = 100;
        c.notify.webhooks = vec![sopr::config::WebhookConfig {
            tenant: name,
            url,
            secret_env: SECRET_ENV.into(),
            timeout_ms: 2_000,
        }];
        configure(c);
    })
    .await
}

fn set_secret() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once, before any service of this test binary reads the
        // environment, to a value that never changes.
        unsafe { std::env::set_var(SECRET_ENV, SECRET) };
    });
}

/// Checks a delivery's Standard Webhooks signature with the shared secret.
fn verify(headers: &std::collections::HashMap<String, String>, body: &[u8]) {
    let id = &headers["webhook-id"];
    let timestamp = &headers["webhook-timestamp"];
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(headers["webhook-signature"], expected, "signature");
    let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "fresh timestamp");
}

async fn outbox(app: &TestApp, state: &str) -> Vec<sopr::store::Notification> {
    app.store
        .list_notifications(app.tenant.id, state, 100)
        .await
        .unwrap()
}

/// The rows in `state` once there are `n` of them, or after 10 s whatever
/// there is: a peer sees a delivery a moment before the dispatcher records it.
async fn outbox_of(app: &TestApp, state: &str, n: usize) -> Vec<sopr::store::Notification> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = outbox(app, state).await;
        if rows.len() == n || std::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn replies_reach_the_chat_frontend_signed() {
    let receiver = WebhookReceiver::start().await;
    let app = app_with_webhook(&receiver, |_| {}).await;

    let answered = app
        .message("cust-1", "What is the exchange rate for euros today?")
        .await;
    let queued = app
        .message("cust-2", "I want to speak to a human about my card")
        .await;
    assert_eq!(queued["outcome"], "queued", "{queued}");
    let got = receiver.wait_for(2).await;
    assert_eq!(got.len(), 2, "the bot's answer and the holding reply");
    for d in &got {
        verify(&d.headers, &d.body);
        assert_eq!(d.headers["content-type"], "application/json");
    }
    let bodies: Vec<Value> = got.iter().map(|d| d.json()).collect();
    let first = bodies
        .iter()
        .find(|b| b["data"]["conversation_id"] == answered["conversation_id"])
        .expect("the answered conversation");
    assert_eq!(first["type"], "message.created");
    assert_eq!(first["data"]["role"], "bot");

    // A reviewer's reply goes out the same way, naming the review item.
    let id = queued["review_id"].as_str().unwrap();
    app.post("/v1/reviews/claim", &json!({ "reviewer": "alice" }))
        .await;
    let resolved = app
        .post(
            &format!("/v1/reviews/{id}/resolve"),
            &json!({ "reviewer": "alice", "action": "edit", "reply": "We blocked the card; a new one is on its way." }),
        )
        .await;
    assert_eq!(resolved.status(), 200);
    let got = receiver.wait_for(3).await;
    let reply = got[2].json();
    verify(&got[2].headers, &got[2].body);
    assert_eq!(reply["data"]["role"], "reviewer");
    assert_eq!(reply["data"]["review_id"], id);
    assert_eq!(
        reply["data"]["body"],
        "We blocked the card; a new one is on its way."
    );
    assert_eq!(reply["data"]["conversation_id"], queued["conversation_id"]);
    assert_eq!(outbox_of(&app, "delivered", 3).await.len(), 3);
}

#[tokio::test]
async fn a_failing_frontend_gets_the_message_once_it_recovers() {
    let receiver = WebhookReceiver::start().await;
    receiver.answer(Answer::FailNext(3));
    let app = app_with_webhook(&receiver, |_| {}).await;
    app.message("cust-1", "What is the exchange rate for euros today?")
        .await;
    let got = receiver.wait_for(4).await;
    assert_eq!(got.len(), 4, "three 500s, then delivered");
    let ids: Vec<&String> = got.iter().map(|d| &d.headers["webhook-id"]).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one id across retries: {ids:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.deliveries().len(),
        4,
        "nothing more once delivered"
    );
    let delivered = outbox_of(&app, "delivered", 1).await;
    assert_eq!((delivered.len(), delivered[0].attempts), (1, 4));
}

#[tokio::test]
async fn refusals_and_exhausted_retries_are_dead_letters_that_can_be_retried() {
    let receiver = WebhookReceiver::start().await;
    receiver.answer(Answer::Status(410));
    let app = app_with_webhook(&receiver, |c| c.notify.max_attempts = 3).await;
    app.message("cust-1", "What is the exchange rate for euros today?")
        .await;
    receiver.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.deliveries().len(), 1, "a 4xx is not retried");
    let dead = outbox_of(&app, "dead", 1).await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].last_error.as_deref().unwrap().contains("410"),
        "{:?}",
        dead[0].last_error
    );

    receiver.answer(Answer::Status(503));
    app.message("cust-2", "What is the exchange rate for dollars today?")
        .await;
    receiver.wait_for(4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.deliveries().len(),
        4,
        "three attempts for the second row"
    );
    let dead = outbox_of(&app, "dead", 2).await;
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().any(|d| {
        d.last_error
            .as_deref()
            .unwrap()
            .contains("gave up after 3 attempts")
    }));

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"sopr_notifications_total{channel="webhook",outcome="dead"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("sopr_notifications_dead"),
        "the backlog gauge"
    );

    // An admin retries from the console once the frontend is fixed.
    receiver.answer(Answer::Ok);
    support::console::add_user(&app, "ada@example.com", "admin", "correct horse battery").await;
    support::console::add_user(&app, "rui@example.com", "reviewer", "correct horse battery").await;
    let mut ada =
        support::console::ConsoleClient::login(&app, "ada@example.com", "correct horse battery")
            .await;
    let page = ada.page("/console/notifications").await;
    assert!(
        page.contains("gave up after 3 attempts"),
        "dead letters are listed"
    );
    let mut rui =
        support::console::ConsoleClient::login(&app, "rui@example.com", "correct horse battery")
            .await;
    let row = dead[0].id.to_string();
    let refused = rui
        .act("/console/notifications/retry", &[("id", row.as_str())])
        .await;
    assert_eq!(refused.status(), 403, "admins only");
    let retried = ada
        .act("/console/notifications/retry", &[("id", row.as_str())])
        .await;
    assert_eq!(retried.status(), 303);
    receiver.wait_for(5).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(outbox_of(&app, "dead", 1).await.len(), 1);
    assert_eq!(outbox_of(&app, "delivered", 1).await.len(), 1);
}

#[tokio::test]
async fn new_cases_are_emailed_to_the_sops_targets() {
    let smtp = SmtpServer::start().await;
    smtp.require_auth("sopr", "mail-pass");
    let addr = smtp.addr;
    let app = spawn_app_for(TestDb::sqlite(), "emails", |c| {
        c.notify.poll_ms = 50;
        c.notify.console_url = "https://review.example.com/".into();
        c.notify.smtp.url = format!("smtp://sopr:mail-pass@{addr}").into();
        c.notify.smtp.from = "sopr <sopr@bank.example>".into();
    })
    .await;
    let case = app
        .message("cust-1", "I sent money to my friend with card 4111 1111 1111 1111 but nothing arrived, I want a human")
        .await;
    assert_eq!(case["outcome"], "queued", "{case}");
    let mail = smtp.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(mail.len(), 1, "one email for the new case");
    let mail = &mail[0];
    assert_eq!(mail.to, ["transfers-oncall@example.com"]);
    assert_eq!(mail.auth, Some(("sopr".into(), "mail-pass".into())));
    let id = case["review_id"].as_str().unwrap();
    assert_eq!(
        mail.header("Message-ID")
            .unwrap()
            .trim_matches(['<', '>'])
            .split('@')
            .next()
            .unwrap()
            .len(),
        36
    );
    assert!(mail.header("Subject").unwrap().contains("priority"));
    assert!(
        mail.header("Content-Type")
            .unwrap()
            .starts_with("multipart/alternative")
    );
    // The bodies are quoted-printable: undo soft line breaks and `=3D`.
    let body = mail.data.replace("=\r\n", "").replace("=3D", "=");
    assert!(
        body.contains(&format!("https://review.example.com/console/items/{id}")),
        "a console link: {body}"
    );
    assert!(
        !body.contains("4111 1111 1111 1111"),
        "the excerpt is masked"
    );
    assert!(body.contains("**** **** **** 1111"), "{body}");
}

#[tokio::test]
async fn email_waits_for_an_smtp_server_that_is_down_then_goes_out_once() {
    // Find a free port, then leave it closed: the server is down at start.
    let addr = SmtpServer::start().await.addr;
    let app = spawn_app_for(TestDb::sqlite(), "late-smtp", |c| {
        c.notify.poll_ms = 50;
        c.notify.backoff_base_ms = 50;
        c.notify.backoff_max_ms = 200;
        c.notify.smtp.url = format!("smtp://{addr}").into();
    })
    .await;
    let case = app
        .message(
            "cust-1",
            "My transfer never arrived at my friend's bank, I want a human",
        )
        .await;
    assert_eq!(case["outcome"], "queued", "{case}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pending = outbox(&app, "pending").await;
    assert_eq!(pending.len(), 1, "still waiting");
    assert!(pending[0].attempts >= 2, "retried: {}", pending[0].attempts);
    assert!(
        pending[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("SMTP")
    );

    let smtp = SmtpServer::start_on(addr).await;
    smtp.set_behaviour(SmtpBehaviour::TempFailNext(1));
    let mail = smtp.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(mail.len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(smtp.received().len(), 1, "exactly once");
    assert_eq!(smtp.refused(), 1, "a 451 is retried too");
    assert_eq!(outbox_of(&app, "delivered", 1).await.len(), 1);
}

/// `sopr serve` as a child process with this config file, once it listens.
fn start_serve(config: &std::path::Path) -> support::Serve {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sopr"));
    command
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env(SECRET_ENV, SECRET);
    support::Serve::start(command)
}

#[tokio::test]
async fn a_delivery_cut_short_by_a_crash_goes_out_after_restart_under_the_same_id() {
    sopr::llm::install_crypto_provider();
    let receiver = WebhookReceiver::start().await;
    // The first delivery hangs: the process dies while it is in flight.
    receiver.answer(Answer::Hold(Duration::from_secs(30)));
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("sopr.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\n[database]\nurl = \"sqlite://{db}\"\n\n[sops]\ndir = \"{sops}\"\n\n\
             [bootstrap]\ndemo_tenant = \"crash\"\n\n[notify]\npoll_ms = 50\nlease_secs = 2\n\n\
             [[notify.webhooks]]\ntenant = \"crash\"\nurl = \"{url}\"\nsecret_env = \"{SECRET_ENV}\"\ntimeout_ms = 1500\n",
            db = dir.path().join("sopr.db").display(),
            sops = concat!(env!("CARGO_MANIFEST_DIR"), "/sops"),
            url = receiver.url,
        ),
    )
    .unwrap();
    let mut first = start_serve(&config);
    let (addr, key) = (first.addr.clone(), first.key.clone().expect("the demo key"));
    let client = reqwest::Client::new();
    let out: Value = client
        .post(format!("http://{addr}/v1/messages"))
        .bearer_auth(&key)
        .json(&json!({ "customer": { "id": "c1" }, "text": "What is the exchange rate for euros today?" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(out["outcome"], "answered", "{out}");
    assert_eq!(receiver.wait_for(1).await.len(), 1, "delivery started");
    first.child.kill().expect("SIGKILL");
    first.child.wait().unwrap();

    receiver.answer(Answer::Ok);
    let second = start_serve(&config);
    let got = receiver.wait_for(2).await;
    drop(second);
    assert_eq!(got.len(), 2, "retried after the restart");
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
    assert_eq!(
        receiver.distinct_ids(),
        1,
        "a receiver that honours the id keeps one message"
    );
    verify(&got[1].headers, &got[1].body);
    let store = sopr::store::connect(
        &format!("sqlite://{}", dir.path().join("sopr.db").display()),
        1,
    )
    .await
    .unwrap();
    let tenant = store.tenant_by_name("crash").await.unwrap().unwrap();
    let delivered = store
        .list_notifications(tenant.id, "delivered", 10)
        .await
        .unwrap();
    assert_eq!((delivered.len(), delivered[0].attempts), (1, 2));
}

/// The repository's SOPs in a temporary folder, with a backup target added
/// to the transfer SOPs.
fn sops_with_backup_target() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(support::sops_dir()).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if text.contains("    - email:transfers-oncall@example.com\n") {
            text = text.replace(
                "    - email:transfers-oncall@example.com\n",
                "    - email:transfers-oncall@example.com\n  backup_notify:\n    - email:transfers-leads@example.com\n",
            );
            assert!(text.contains("backup_notify"));
        }
        std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
    }
    dir
}

#[tokio::test]
async fn the_sla_ladder_warns_the_backup_then_announces_the_breach_once() {
    let smtp = SmtpServer::start().await;
    let addr = smtp.addr;
    let sops = sops_with_backup_target();
    let sops_dir = sops.path().to_path_buf();
    let app = spawn_app_for(TestDb::sqlite(), "ladder", |c| {
        c.sops.dir = sops_dir;
        // The test walks the ladder itself, at chosen times.
        c.notify.dispatch = false;
        c.notify.smtp.url = format!("smtp://{addr}").into();
        c.notify.sla.breach_notify = vec!["email:support-leads@example.com".into()];
    })
    .await;
    let (set, _) = sopr::sop::SopSet::load(sops.path()).unwrap();
    let set = std::sync::Arc::new(set);
    let replica = |store| {
        let notifier = std::sync::Arc::new(sopr::notify::Notifier::new(&app.config.notify, store));
        sopr::notify::Dispatcher::new(
            &app.config.notify,
            app.store.clone(),
            set.clone(),
            notifier,
            None,
            app.config.review.default_sla_minutes,
        )
        .unwrap()
    };
    let (one, two) = (replica(app.store.clone()), replica(app.store.clone()));

    let case = app
        .message(
            "cust-1",
            "My transfer never arrived at my friend's bank, I want a human",
        )
        .await;
    assert_eq!(case["outcome"], "queued", "{case}");
    let id = case["review_id"].as_str().unwrap();
    // A claimed item is not escalated.
    let claimed = app
        .message(
            "cust-2",
            "I sent money but the recipient says nothing arrived, get me a person",
        )
        .await;
    app.post(
        &format!(
            "/v1/reviews/{}/claim",
            claimed["review_id"].as_str().unwrap()
        ),
        &json!({ "reviewer": "alice" }),
    )
    .await;
    let item: Value = app
        .get(&format!("/v1/reviews/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let parse = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let (created, due) = (
        parse(&item["item"]["created_at"]),
        parse(&item["item"]["due_at"]),
    );
    let email_rows = |rows: Vec<sopr::store::Notification>, event: &str| {
        rows.into_iter()
            .filter(|n| n.event == event)
            .collect::<Vec<_>>()
    };
    // The new-item email is there from the start.
    one.run_once().await.unwrap();
    assert_eq!(
        smtp.wait_for(2, Duration::from_secs(10)).await.len(),
        2,
        "two new-item emails"
    );

    assert_eq!(
        one.ladder_round(created + (due - created) / 4)
            .await
            .unwrap(),
        0,
        "too early"
    );
    let warn_time = created + (due - created) * 3 / 5;
    assert_eq!(
        one.ladder_round(warn_time).await.unwrap(),
        1,
        "past half its SLA, unclaimed"
    );
    assert_eq!(
        two.ladder_round(warn_time).await.unwrap(),
        0,
        "another replica sends it no second time"
    );
    assert_eq!(one.ladder_round(warn_time).await.unwrap(), 0);
    one.run_once().await.unwrap();
    let mail = smtp.wait_for(3, Duration::from_secs(10)).await;
    let pending = outbox(&app, "pending").await;
    assert_eq!(
        mail.len(),
        3,
        "sop {} pending {pending:?}",
        item["item"]["sop_ref"]
    );
    let warning = &mail[2];
    assert_eq!(warning.to, ["transfers-leads@example.com"]);
    assert!(
        warning
            .header("Subject")
            .unwrap()
            .contains("still unclaimed"),
        "{:?}",
        warning.header("Subject")
    );
    // The app's own dispatcher may be the one delivering it: wait for its record.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while email_rows(outbox(&app, "delivered").await, "review.sla_warning").is_empty()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        email_rows(outbox(&app, "delivered").await, "review.sla_warning").len(),
        1
    );

    let breach_time = due + chrono::Duration::minutes(1);
    assert_eq!(
        two.ladder_round(breach_time).await.unwrap(),
        1,
        "the breach, announced once"
    );
    assert_eq!(one.ladder_round(breach_time).await.unwrap(), 0);
    two.run_once().await.unwrap();
    let mail = smtp.wait_for(4, Duration::from_secs(10)).await;
    assert_eq!(mail.len(), 4, "nothing for the claimed item");
    assert_eq!(mail[3].to, ["support-leads@example.com"]);
    assert!(mail[3].header("Subject").unwrap().contains("breached"));
    let body = mail[3].data.replace("=\r\n", "").replace("=3D", "=");
    assert!(body.contains(&format!("/console/items/{id}")), "{body}");
    assert_eq!(
        one.ladder_round(breach_time + chrono::Duration::hours(1))
            .await
            .unwrap(),
        0,
        "the ladder ends"
    );
}
