//! The screen over real HTTP: PII and sensitive topics force review whatever
//! the router thinks, with evidence masked wherever a reviewer or a log sees it.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{TestDb, spawn_app, spawn_app_for, spawn_app_on};

fn has(list: &Value, item: &str) -> bool {
    list.as_array().unwrap().iter().any(|v| v == item)
}

#[tokio::test]
async fn an_iban_forces_review_and_reviewers_see_it_masked() {
    let app = spawn_app().await;
    let out = app
        .message(
            "cust-iban",
            "My card hasn't arrived. Refund the fee to GB82 WEST 1234 5698 7654 32 please",
        )
        .await;
    assert_eq!(out["outcome"], "queued", "{out}");
    assert_eq!(out["flags"], json!(["pii.iban"]), "{out}");
    assert!(has(&out["reasons"], "flag:pii.iban"), "{out}");

    let detail: Value = app
        .get(&format!(
            "/v1/reviews/{}",
            out["review_id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    let flags = &detail["decision"]["flags"];
    assert_eq!(
        flags,
        &json!([{ "name": "pii.iban", "evidence": "GB** **** **** **** **54 32" }]),
        "{detail}"
    );

    // One wrong check digit: not an IBAN, so nothing to force review for.
    let out = app
        .message(
            "cust-iban-2",
            "My new card still hasn't arrived, ref GB83 WEST 1234 5698 7654 32",
        )
        .await;
    assert!(!has(&out["flags"], "pii.iban"), "{out}");
}

#[tokio::test]
async fn national_ids_and_default_sensitive_topics_force_review() {
    let app = spawn_app().await;
    for (text, flag) in [
        (
            "My card hasn't arrived, my SSN is 123-45-6789 if you need it",
            "pii.national_id",
        ),
        (
            "Still no card after three weeks. I'm taking you to court.",
            "topic.legal_threat",
        ),
        (
            "My card never came and I'll report you to the financial ombudsman",
            "topic.regulator_complaint",
        ),
        (
            "my card hasn't arrived and honestly I don't want to live anymore",
            "topic.self_harm",
        ),
    ] {
        let out = app.message("cust-topics", text).await;
        assert!(has(&out["flags"], flag), "{text}: {out}");
        assert!(
            has(&out["reasons"], &format!("flag:{flag}")),
            "{text}: {out}"
        );
        assert_eq!(out["outcome"], "queued", "{text}: {out}");
    }
}

#[tokio::test]
async fn a_configured_topic_forces_review() {
    let app = spawn_app_on(TestDb::sqlite(), |config| {
        config.screen.topics.insert(
            "vulnerable".into(),
            vec!["bereavement".into(), "lost my job".into()],
        );
        config
            .escalation
            .force_review_flags
            .push("topic.vulnerable".into());
    })
    .await;
    let routine = "My new card still hasn't arrived, it's been 10 days";
    let out = app.message("cust-v1", routine).await;
    assert_eq!(out["outcome"], "answered", "{out}");

    let out = app
        .message("cust-v2", &format!("{routine}. I just lost my job"))
        .await;
    assert_eq!(out["outcome"], "queued", "{out}");
    assert_eq!(out["flags"], json!(["topic.vulnerable"]), "{out}");
    assert!(has(&out["reasons"], "flag:topic.vulnerable"), "{out}");

    // The built-in lists still apply next to the configured one.
    let out = app
        .message("cust-v3", &format!("{routine}. This is a scam"))
        .await;
    assert!(has(&out["flags"], "topic.fraud"), "{out}");
}

#[tokio::test]
async fn a_tenants_own_topics_fire_only_for_its_messages() {
    let app = spawn_app_for(TestDb::sqlite(), "acme", |config| {
        let acme = config.screen.tenants.entry("acme".into()).or_default();
        acme.topics
            .insert("vulnerable".into(), vec!["lost my job".into()]);
        acme.topics
            .insert("fraud".into(), vec!["account takeover".into()]);
        config
            .escalation
            .force_review_flags
            .push("topic.vulnerable".into());
    })
    .await;
    let other_key = sopr::service::create_key(app.store.as_ref(), "globex")
        .await
        .unwrap();
    let other = |text: &str| {
        let body = json!({ "customer": { "id": "cust-g" }, "text": text });
        let request = app
            .client
            .post(app.url("/v1/messages"))
            .bearer_auth(&other_key)
            .json(&body)
            .send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()
        }
    };
    let routine = "My new card still hasn't arrived, it's been 10 days";

    for (phrase, flag) in [
        ("I just lost my job", "topic.vulnerable"),
        ("Could this be an account takeover?", "topic.fraud"),
    ] {
        let text = format!("{routine}. {phrase}");
        let out = app.message("cust-a", &text).await;
        assert_eq!(out["outcome"], "queued", "{out}");
        assert_eq!(out["flags"], json!([flag]), "{out}");
        assert!(has(&out["reasons"], &format!("flag:{flag}")), "{out}");

        // The same words from another tenant raise nothing.
        let out = other(&text).await;
        assert_eq!(out["flags"], json!([]), "{out}");
        assert_eq!(out["outcome"], "answered", "{out}");
    }

    // The deployment's lists still apply to the tenant with lists of its own.
    let out = app
        .message("cust-a", &format!("{routine}. This is a scam"))
        .await;
    assert_eq!(out["flags"], json!(["topic.fraud"]), "{out}");
}

/// The demo SOPs, with card-delivery given a topic of its own.
fn sops_with_courier_topic() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("sops");
    for entry in std::fs::read_dir(demo).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let file = dir.path().join("card-delivery.v1.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let text = text.replacen(
        "\nsteps:\n",
        "\nscreen:\n  topics:\n    courier:\n      - courier*\n      - left it with a neighbour\n\nsteps:\n",
        1,
    );
    let text = text.replacen(
        "  notify:\n    - slack:#cards-escalations\n",
        "  on_flags:\n    - topic.courier\n  notify:\n    - slack:#cards-escalations\n",
        1,
    );
    std::fs::write(&file, text).unwrap();
    dir
}

#[tokio::test]
async fn a_sops_own_topic_fires_only_for_messages_routed_to_it() {
    let sops = sops_with_courier_topic();
    let app = spawn_app_on(TestDb::sqlite(), |config| {
        config.sops.dir = sops.path().to_path_buf();
    })
    .await;
    let out = app
        .message(
            "cust-c1",
            "My new card still hasn't arrived, it's been 10 days. Was the courier late?",
        )
        .await;
    assert!(
        out["route"]["sop"]
            .as_str()
            .unwrap()
            .starts_with("card-delivery@1#"),
        "{out}"
    );
    assert_eq!(out["flags"], json!(["topic.courier"]), "{out}");
    assert!(has(&out["reasons"], "flag:topic.courier"), "{out}");
    assert_eq!(out["outcome"], "queued", "{out}");

    // The same word under another SOP raises nothing.
    let out = app
        .message(
            "cust-c2",
            "What exchange rate do you use for euros to dollars? I need to pay a courier",
        )
        .await;
    assert!(
        out["route"]["sop"]
            .as_str()
            .unwrap()
            .starts_with("exchange-rate@1#"),
        "{out}"
    );
    assert_eq!(out["flags"], json!([]), "{out}");
}

/// The demo SOPs with card-delivery's `screen` block replaced by `block`.
fn sops_with_screen_block(block: &str) -> tempfile::TempDir {
    let dir = sops_with_courier_topic();
    let file = dir.path().join("card-delivery.v1.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let start = text.find("\nscreen:\n").unwrap() + 1;
    let end = text.find("\nsteps:\n").unwrap() + 1;
    std::fs::write(
        &file,
        format!("{}{block}\n{}", &text[..start], &text[end..]),
    )
    .unwrap();
    dir
}

#[test]
fn sop_topics_are_checked_by_the_lint() {
    let ok = sops_with_courier_topic();
    let report = sopr::sop::lint(ok.path());
    assert!(!report.has_errors(), "{:?}", report.diagnostics);

    for (block, field, says) in [
        (
            "screen:\n  topics:\n    Courier:\n      - courier",
            "/screen/topics",
            "Courier",
        ),
        (
            "screen:\n  topics:\n    courier: []",
            "/screen/topics/courier",
            "",
        ),
        (
            "screen:\n  topics:\n    courier:\n      - re*fund",
            "/screen/topics/courier",
            "`*` may only end a word",
        ),
        (
            "screen:\n  topic:\n    courier:\n      - courier",
            "/screen",
            "topic",
        ),
    ] {
        let dir = sops_with_screen_block(block);
        let report = sopr::sop::lint(dir.path());
        let errors: Vec<String> = report.errors().map(|d| d.to_string()).collect();
        assert!(
            report.errors().any(|d| d.field.as_deref() == Some(field)
                && d.message.contains(says)
                && d.file.ends_with("card-delivery.v1.yaml")
                && d.line.is_some()),
            "{block}: {errors:?}"
        );
    }
}
