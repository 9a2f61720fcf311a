//! The router on real data: Banking77 (read from ../shared/datasets, never
//! copied here), calibration, stored models, and the abstention rules.

mod support;

use std::path::PathBuf;

use sopr::routing::Classifier;
use sopr::routing::calibration::softmax;
use sopr::routing::classifier::TrainOptions;
use sopr::routing::dataset::{read_csv, stratified_split};
use sopr::routing::eval::{Scored, ece, report};

fn banking77() -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/banking77/train.csv");
    assert!(
        path.is_file(),
        "Banking77 is expected at {} (the shared datasets folder beside the checkout)",
        path.display()
    );
    path
}

/// The split and model `sopr eval --data …/train.csv --holdout 0.2` uses.
#[test]
fn banking77_accuracy_and_calibration_stay_above_their_floors() {
    let all = read_csv(&banking77()).unwrap();
    assert!(all.len() > 10_000);
    let (train, test) = stratified_split(&all, 0.2, 42);
    let options = TrainOptions {
        target_accuracy: Some(0.99),
        ..TrainOptions::default()
    };
    let model = Classifier::train(&train, &options).unwrap();
    let calibration = model
        .calibration()
        .expect("enough data to calibrate")
        .clone();
    let threshold = calibration
        .threshold
        .expect("a threshold reaches 99% on held-out data");
    let scored: Vec<Scored> = test
        .iter()
        .map(|(label, text)| {
            let (predicted, confidence) = model.classify(text)[0].clone();
            Scored {
                label: label.clone(),
                predicted,
                confidence,
                abstained: confidence < threshold,
            }
        })
        .collect();
    let r = report(&scored);
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    // Floors a little under what this model measures (0.921 accuracy, 0.921
    // macro-F1, 0.014 ECE, 0.62 coverage at 99%), so a regression fails here.
    assert!(r.accuracy >= 0.915, "accuracy {}", r.accuracy);
    assert!(r.macro_f1 >= 0.914, "macro-F1 {}", r.macro_f1);
    assert!(r.ece <= 0.03, "ECE {}", r.ece);
    assert!(
        r.coverage_at_accuracy["0.99"] >= 0.60,
        "coverage at 99%: {:?}",
        r.coverage_at_accuracy
    );
    // The threshold chosen on held-out data keeps its promise on unseen data
    // within noise (0.987 measured).
    assert!(
        r.auto_accuracy >= 0.98,
        "auto-answered accuracy {}",
        r.auto_accuracy
    );
    assert!(calibration.ece_after <= calibration.ece_before + 1e-9);
}

/// Few examples per intent, as a new deployment's SOP examples: temperature
/// scaling alone leaves the top probability well above accuracy there; the
/// top-label rescaling after it must bring it closer, without changing which
/// intent ranks first.
#[test]
fn small_data_confidence_stays_close_to_accuracy() {
    let all = read_csv(&banking77()).unwrap();
    // About 8 examples per intent to train on, the rest (9,400 rows) to test.
    let (test, train) = stratified_split(&all, 0.06, 3);
    assert!(train.len() < 1_000 && test.len() > 9_000, "{}", train.len());
    let options = TrainOptions {
        target_accuracy: Some(0.98),
        ..TrainOptions::default()
    };
    let model = Classifier::train(&train, &options).unwrap();
    let calibration = model
        .calibration()
        .expect("calibrated on cross-fitted scores");
    let threshold = calibration.threshold.expect("a threshold for 0.98");
    let index = |label: &str| model.labels().iter().position(|l| l == label);
    let (mut rescaled, mut temperature_only) = (Vec::new(), Vec::new());
    for (label, text) in &test {
        let ranked = model.classify(text);
        let total: f64 = ranked.iter().map(|r| r.1).sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        let probs = softmax(&model.logits(text), calibration.temperature);
        let best = (0..probs.len()).fold(0, |b, i| if probs[i] > probs[b] { i } else { b });
        assert_eq!(model.labels()[best], ranked[0].0, "{text}");
        let correct = index(label) == Some(best);
        rescaled.push((ranked[0].1, correct));
        temperature_only.push((f64::from(probs[best]), correct));
    }
    // The threshold chosen for 0.98 on cross-fitted scores of 604 examples
    // keeps its promise on the 9,400 messages the model never saw. Measured:
    // 0.9850 of 20.5% answered; chosen by the held-out share correct alone,
    // 0.9624 of 32.0%.
    let answered: Vec<bool> = rescaled
        .iter()
        .filter(|(confidence, _)| *confidence >= threshold)
        .map(|(_, correct)| *correct)
        .collect();
    let auto_accuracy = answered.iter().filter(|c| **c).count() as f64 / answered.len() as f64;
    let auto_coverage = answered.len() as f64 / test.len() as f64;
    let (after, before) = (ece(rescaled.into_iter()), ece(temperature_only.into_iter()));
    eprintln!(
        "test ECE {before:.4} with the temperature alone, {after:.4} rescaled; \
         answered {auto_coverage:.4} at {auto_accuracy:.4}; {calibration:?}"
    );
    assert!(auto_accuracy >= 0.97, "{auto_accuracy}");
    assert!(auto_coverage >= 0.1, "{auto_coverage}");
    // Measured: 0.0220 with the temperature alone, 0.0092 rescaled.
    assert!(after <= 0.02, "ECE {after}");
    assert!(
        after < before - 0.005,
        "ECE {after} rescaled against {before}"
    );
}

#[test]
fn the_router_survives_hostile_input() {
    let all = read_csv(&banking77()).unwrap();
    let (train, _) = stratified_split(&all, 0.5, 1);
    let model = Classifier::train_uncalibrated(
        &train,
        &TrainOptions {
            epochs: 3,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    let huge = "my card ".repeat(12_500); // 100 KB
    for text in [
        "",
        "   ",
        "🙂🙂🙂🙂",
        "0123456789",
        "кредитная карта 卡 بطاقة",
        huge.as_str(),
        "\u{0}\u{200b}\u{feff}",
    ] {
        let ranked = model.classify(text);
        assert_eq!(ranked.len(), model.labels().len());
        let total: f64 = ranked.iter().map(|r| r.1).sum();
        assert!((total - 1.0).abs() < 1e-3, "{total}");
        assert!(ranked.iter().all(|r| r.1.is_finite()));
    }
}

#[tokio::test]
async fn serve_reuses_the_stored_model_for_the_same_training_data() {
    for db in support::databases().await {
        let config = support::test_config(db.url());
        let first = sopr::service::build(config.clone()).await.unwrap();
        let version = first.state.pipeline.classifier().version().to_string();
        let stored = first
            .state
            .store
            .router_model(&version)
            .await
            .unwrap()
            .expect("model stored");
        let loaded = Classifier::from_bytes(&stored).unwrap();
        assert_eq!(loaded.version(), version, "{}", db.label());
        let second = sopr::service::build(config).await.unwrap();
        assert_eq!(second.state.pipeline.classifier().version(), version);
        let text = "my card has not arrived";
        assert_eq!(
            second.state.pipeline.classifier().classify(text),
            first.state.pipeline.classifier().classify(text)
        );
    }
}

#[tokio::test]
async fn intents_too_close_to_call_go_to_review() {
    // A margin no route can have (a near-copy of a training example gets
    // 0.9998 from the demo model): every message is ambiguous.
    let app = support::spawn_app_on(support::TestDb::sqlite(), |c| {
        c.routing.min_margin = 0.999_999
    })
    .await;
    let out = app
        .message("c", "what is the exchange rate for dollars")
        .await;
    assert_eq!(out["outcome"], "queued", "{out}");
    assert!(
        out["reasons"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("ambiguous_route")),
        "{out}"
    );
}

/// Queues `text` (it asks for a human), claims it as alice and resolves it
/// with an edited reply labelled with each of `intents` in turn; returns
/// the resolve responses.
async fn review_with_label(
    app: &support::TestApp,
    customer: &str,
    text: &str,
    intents: &[&str],
) -> Vec<reqwest::Response> {
    let case = app.message(customer, text).await;
    assert_eq!(case["outcome"], "queued", "{case}");
    let id = case["review_id"].as_str().unwrap();
    let claim = app
        .post(
            &format!("/v1/reviews/{id}/claim"),
            &serde_json::json!({ "reviewer": "alice" }),
        )
        .await;
    assert_eq!(claim.status(), 200);
    let mut responses = Vec::new();
    for intent in intents {
        responses.push(
            app.post(
                &format!("/v1/reviews/{id}/resolve"),
                &serde_json::json!({ "reviewer": "alice", "action": "edit", "reply": "Done.", "intent": intent }),
            )
            .await,
        );
    }
    responses
}

#[tokio::test]
async fn reviewer_decisions_train_the_router_when_enabled() {
    for db in support::databases().await {
        let app = support::spawn_app_on(db, |c| c.routing.learn_from_feedback = true).await;
        let (sops, _) = sopr::sop::SopSet::load(&support::sops_dir()).unwrap();
        let intent = sops.active().next().unwrap().file.intents[0].clone();
        let text = "I want a human: the thing with my account from yesterday";
        let resolved = review_with_label(&app, "cust-1", text, &[&intent]).await;
        assert_eq!(resolved[0].status(), 200);

        let mut config = (*app.config).clone();
        let examples = sopr::service::training_set(app.store.as_ref(), &config, &sops, &[])
            .await
            .unwrap();
        assert_eq!(
            examples.last(),
            Some(&(intent.clone(), text.to_string())),
            "the reviewer's label is a training example"
        );

        // A message no SOP covers, labelled `oos`: the router learns it as
        // off-topic traffic. An intent no active SOP has is refused.
        let off_topic = "I want a human: do you sell travel insurance for my dog";
        let mut resolved =
            review_with_label(&app, "cust-2", off_topic, &["pet_insurance", "oos"]).await;
        let accepted = resolved.pop().unwrap();
        let refused = resolved.pop().unwrap();
        assert_eq!(refused.status(), 422);
        let body: serde_json::Value = refused.json().await.unwrap();
        assert!(
            body.to_string()
                .contains("`oos` labels a message no SOP covers"),
            "{body}"
        );
        assert_eq!(accepted.status(), 200);
        let examples = sopr::service::training_set(app.store.as_ref(), &config, &sops, &[])
            .await
            .unwrap();
        assert!(
            examples.contains(&("oos".to_string(), off_topic.to_string()))
                && examples.contains(&(intent.clone(), text.to_string())),
            "both reviewer labels are training examples"
        );

        let with_feedback = sopr::service::build(config.clone()).await.unwrap();
        config.routing.learn_from_feedback = false;
        let without = sopr::service::build(config).await.unwrap();
        assert_ne!(
            with_feedback.state.pipeline.classifier().version(),
            without.state.pipeline.classifier().version(),
            "feedback makes a different model"
        );
    }
}

/// The probability `model` gives `intent` for `text`.
fn probability(model: &Classifier, text: &str, intent: &str) -> f64 {
    model
        .classify(text)
        .into_iter()
        .find(|(i, _)| i == intent)
        .map_or(0.0, |r| r.1)
}

/// Takes the training lease of `version` as another replica ("elsewhere")
/// would while it trains; returns the lease's name.
async fn hold_training_lease(store: &dyn sopr::store::Store, version: &str) -> String {
    let lease = sopr::retrain::training_lease(version);
    let now = chrono::Utc::now();
    let until = now + chrono::Duration::seconds(60);
    assert!(
        store
            .try_lease(&lease, "elsewhere", now, until)
            .await
            .unwrap()
    );
    lease
}

#[tokio::test]
async fn reviewer_labels_reach_the_running_router_without_a_restart() {
    for db in support::databases().await {
        let label = db.label();
        let app = support::spawn_app_on(db, |c| c.routing.learn_from_feedback = true).await;
        let retrainer = &app.retrainer;
        assert_eq!(
            retrainer.run_once().await.unwrap(),
            sopr::retrain::Retrained::Unchanged,
            "{label}"
        );
        // A second replica on the same database.
        let replica = sopr::service::build((*app.config).clone()).await.unwrap();
        let replica_retrainer = &replica.retrainer;
        let before = current(&app).await;
        assert_eq!(before, replica.state.pipeline.classifier().version());

        // Reviewers label a wording the SOP examples do not have.
        let (sops, _) = sopr::sop::SopSet::load(&support::sops_dir()).unwrap();
        let intent = sops.active().last().unwrap().file.intents[0].clone();
        let wording = "the zorblax gadget frobnicated my plastic";
        let old_model = replica.state.pipeline.classifier();
        let old_probability = probability(&old_model, wording, &intent);
        for (i, text) in [
            "I want a human: the zorblax gadget frobnicated my plastic",
            "I want a human: zorblax frobnicated again",
            "I want a human, why does the zorblax gadget frobnicate",
        ]
        .into_iter()
        .enumerate()
        {
            let resolved = review_with_label(&app, &format!("z{i}"), text, &[&intent]).await;
            assert_eq!(resolved[0].status(), 200, "{label}");
        }

        // Another replica holds the lease for the new model: this one waits.
        let config = (*app.config).clone();
        let examples = sopr::service::training_set(app.store.as_ref(), &config, &sops, &[])
            .await
            .unwrap();
        let version = Classifier::version_for(&examples, &sopr::retrain::train_options(&config));
        let lease = hold_training_lease(app.store.as_ref(), &version).await;
        assert_eq!(
            retrainer.run_once().await.unwrap(),
            sopr::retrain::Retrained::Busy,
            "{label}"
        );
        assert_eq!(current(&app).await, before, "{label}: still the old model");
        app.store.release_lease(&lease, "elsewhere").await.unwrap();

        // Free again: this replica trains, stores and switches.
        assert_eq!(
            retrainer.run_once().await.unwrap(),
            sopr::retrain::Retrained::Trained(version.clone()),
            "{label}"
        );
        assert_eq!(current(&app).await, version, "{label}");
        assert!(app.store.router_model(&version).await.unwrap().is_some());
        // The next message is routed, and recorded, with the new model.
        assert_eq!(routed_with(&app, "z9").await, version, "{label}");
        // The replica loads the stored model rather than training it again.
        assert_eq!(
            replica_retrainer.run_once().await.unwrap(),
            sopr::retrain::Retrained::Loaded(version.clone()),
            "{label}"
        );
        let new_model = replica.state.pipeline.classifier();
        assert_eq!(new_model.version(), version);
        let new_probability = probability(&new_model, wording, &intent);
        assert!(
            new_probability > old_probability + 0.2,
            "{label}: {intent} {old_probability} -> {new_probability}"
        );
        assert_eq!(
            retrainer.run_once().await.unwrap(),
            sopr::retrain::Retrained::Unchanged
        );
    }
}

#[tokio::test]
async fn a_starting_replica_waits_for_the_model_another_is_training() {
    let db = support::TestDb::sqlite();
    let config = support::test_config(db.url());
    let store = sopr::service::connect_store(&config).await.unwrap();
    store.migrate().await.unwrap();
    let (sops, _) = sopr::sop::SopSet::load(&support::sops_dir()).unwrap();
    let examples = sops.training_examples();
    let options = sopr::retrain::train_options(&config);
    let version = Classifier::version_for(&examples, &options);
    let lease = hold_training_lease(store.as_ref(), &version).await;
    let waiting = {
        let (store, config, examples) = (store.clone(), config.clone(), examples.clone());
        tokio::spawn(async move {
            sopr::retrain::load_or_train_router(&store, &config, &examples, &|_, _, _| {})
                .await
                .unwrap()
        })
    };
    // The other replica finishes: it stores the model and lets the lease go.
    let model = Classifier::train(&examples, &options).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "it waits while the lease is held");
    store
        .save_router_model(&sopr::store::RouterModelRecord {
            version: version.clone(),
            examples: examples.len() as i64,
            labels: model.labels().len() as i64,
            metrics: serde_json::json!({}),
            model: model.to_bytes(),
        })
        .await
        .unwrap();
    let (loaded, trained) = waiting.await.unwrap();
    assert!(!trained, "the waiting replica loads the other's model");
    assert_eq!(loaded.version(), version);
    store.release_lease(&lease, "elsewhere").await.unwrap();

    // A lease left by a replica that stopped lapses; the next one trains.
    let mut other = config.clone();
    other.routing.seed = 7;
    let version = Classifier::version_for(&examples, &sopr::retrain::train_options(&other));
    let lease = sopr::retrain::training_lease(&version);
    let lapsed = chrono::Utc::now() - chrono::Duration::seconds(1);
    assert!(
        store
            .try_lease(
                &lease,
                "stopped",
                lapsed - chrono::Duration::seconds(30),
                lapsed
            )
            .await
            .unwrap()
    );
    let (model, trained) =
        sopr::retrain::load_or_train_router(&store, &other, &examples, &|_, _, _| {})
            .await
            .unwrap();
    assert!(trained);
    assert_eq!(model.version(), version);
}

#[tokio::test]
async fn an_edited_training_file_is_picked_up_and_a_worse_model_is_not_used_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("extra.csv");
    std::fs::write(
        &file,
        "text,intent\nwhere is my parcel of cards,card_arrival\n",
    )
    .unwrap();
    let data = file.clone();
    let app = support::spawn_app_on(support::TestDb::sqlite(), move |c| {
        c.routing.training_data = vec![data]
    })
    .await;
    let retrainer = &app.retrainer;
    let before = app.store.router_model(&current(&app).await).await.unwrap();
    assert!(before.is_some());

    // A file that no longer reads is an error; the model in use stays.
    std::fs::write(&file, "words,nothing\nno columns sopr knows,x\n").unwrap();
    let err = retrainer.run_once().await.unwrap_err();
    assert!(format!("{err:#}").contains("extra.csv"), "{err:#}");
    let version = current(&app).await;
    let out = app.message("c1", "my card has not arrived").await;
    assert_eq!(out["route"]["intent"], "card_arrival", "{out}");

    // Fixed and extended: the next check trains on it.
    std::fs::write(
        &file,
        "text,intent\nwhere is my parcel of cards,card_arrival\nthe courier lost my card,card_arrival\n",
    )
    .unwrap();
    let retrained = retrainer.run_once().await.unwrap();
    let sopr::retrain::Retrained::Trained(new) = retrained else {
        panic!("{retrained:?}")
    };
    assert_ne!(new, version);
    assert_eq!(current(&app).await, new);

    // A file whose labels are noise makes a worse model: it is stored, but
    // the model in use stays, at every later check too.
    std::fs::write(&file, support::noise_csv(400)).unwrap();
    for _ in 0..2 {
        let retrained = retrainer.run_once().await.unwrap();
        let sopr::retrain::Retrained::Rejected { version, reason } = &retrained else {
            panic!("{retrained:?}")
        };
        assert!(reason.contains("held-out accuracy"), "{reason}");
        assert!(app.store.router_model(version).await.unwrap().is_some());
        assert_eq!(current(&app).await, new, "the model in use stays");
    }

    // A restart does not undo that: the model promoted last routes on.
    assert_eq!(
        app.store.promoted_router_model().await.unwrap().as_deref(),
        Some(new.as_str())
    );
    let restarted = sopr::service::build((*app.config).clone()).await.unwrap();
    assert_eq!(restarted.state.pipeline.classifier().version(), new);

    // When the data changes the intents to route between, only a model
    // trained on it knows them: it is used, worse or not, and promoted.
    let mut noise = std::fs::read_to_string(&file).unwrap();
    for i in 0..30 {
        noise.push_str(&format!("a brand new kind of request {i},made_up_intent\n"));
    }
    std::fs::write(&file, noise).unwrap();
    let restarted = sopr::service::build((*app.config).clone()).await.unwrap();
    let model = restarted.state.pipeline.classifier();
    assert!(model.labels().iter().any(|l| l == "made_up_intent"));
    assert_eq!(
        app.store.promoted_router_model().await.unwrap().as_deref(),
        Some(model.version())
    );
}

#[tokio::test]
async fn every_replica_follows_a_pinned_model_until_it_is_unpinned() {
    use sopr::retrain::Retrained;
    for db in support::databases().await {
        let label = db.label();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("extra.csv");
        let mut rows = "text,intent\nwhere is my parcel of cards,card_arrival\n".to_string();
        std::fs::write(&file, &rows).unwrap();
        let data = file.clone();
        // On the demo's 400 examples, one row more or less moves held-out
        // accuracy by a point or three: this test is not about that check.
        let app = support::spawn_app_on(db, move |c| {
            c.routing.training_data = vec![data];
            c.routing.retrain_max_drop = 0.2;
        })
        .await;
        let first = current(&app).await;
        rows.push_str("the courier lost my card,card_arrival\n");
        std::fs::write(&file, &rows).unwrap();
        let Retrained::Trained(second) = app.retrainer.run_once().await.unwrap() else {
            panic!("{label}: trains on the new row")
        };
        // A replica that never retrains follows pins all the same.
        let mut config = (*app.config).clone();
        config.routing.retrain_every_minutes = 0;
        let replica = sopr::service::build(config.clone()).await.unwrap();
        assert_eq!(replica.state.pipeline.classifier().version(), second);
        assert_eq!(app.retrainer.follow_pin().await.unwrap(), None, "{label}");

        // Rolled back: both replicas switch at their next look.
        assert!(
            app.store
                .pin_router_model(&first, chrono::Utc::now(), Some("rollback"))
                .await
                .unwrap()
        );
        assert_eq!(
            app.retrainer.follow_pin().await.unwrap(),
            Some(Retrained::Pinned(first.clone())),
            "{label}"
        );
        assert_eq!(current(&app).await, first, "{label}");
        assert_eq!(app.retrainer.follow_pin().await.unwrap(), None);
        assert_eq!(
            replica.retrainer.follow_pin().await.unwrap(),
            Some(Retrained::Pinned(first.clone()))
        );
        assert_eq!(replica.state.pipeline.classifier().version(), first);
        assert_eq!(routed_with(&app, "p1").await, first, "{label}");

        // While pinned, new data trains nothing, at a retrain or a start.
        rows.push_str("my new card is still not here,card_arrival\n");
        std::fs::write(&file, &rows).unwrap();
        let (sops, _) = sopr::sop::SopSet::load(&support::sops_dir()).unwrap();
        let examples = sopr::service::training_set(app.store.as_ref(), &config, &sops, &[])
            .await
            .unwrap();
        let third = Classifier::version_for(&examples, &sopr::retrain::train_options(&config));
        assert_eq!(
            app.retrainer.run_once().await.unwrap(),
            Retrained::Pinned(first.clone()),
            "{label}"
        );
        let started = sopr::service::build(config.clone()).await.unwrap();
        assert_eq!(started.state.pipeline.classifier().version(), first);
        assert!(
            app.store.router_model(&third).await.unwrap().is_none(),
            "{label}: nothing trained while pinned"
        );
        assert_eq!(current(&app).await, first);

        // Unpinned: back to the model for the data, trained by one replica
        // and loaded by the other. A failure (here, a file that no longer
        // reads) keeps the pinned model until the next look succeeds.
        std::fs::write(&file, "words,nothing\nno columns sopr knows,x\n").unwrap();
        assert_eq!(
            app.store.unpin_router_model().await.unwrap().as_deref(),
            Some(first.as_str())
        );
        let err = app.retrainer.follow_pin().await.unwrap_err();
        assert!(format!("{err:#}").contains("extra.csv"), "{err:#}");
        assert_eq!(current(&app).await, first, "{label}");
        std::fs::write(&file, &rows).unwrap();
        assert_eq!(
            app.retrainer.follow_pin().await.unwrap(),
            Some(Retrained::Trained(third.clone())),
            "{label}"
        );
        assert_eq!(current(&app).await, third);
        assert_eq!(
            replica.retrainer.follow_pin().await.unwrap(),
            Some(Retrained::Loaded(third.clone()))
        );
        assert_eq!(replica.retrainer.follow_pin().await.unwrap(), None);
        assert_eq!(
            app.store.promoted_router_model().await.unwrap().as_deref(),
            Some(third.as_str())
        );

        // A pinned model that no longer loads is ignored, once, not retried.
        let broken = sopr::store::RouterModelRecord {
            version: "lr10-000000000000".into(),
            examples: 1,
            labels: 1,
            metrics: serde_json::json!({}),
            model: b"not a model".to_vec(),
        };
        app.store.save_router_model(&broken).await.unwrap();
        assert!(
            app.store
                .pin_router_model(&broken.version, chrono::Utc::now(), None)
                .await
                .unwrap()
        );
        assert_eq!(
            app.retrainer.follow_pin().await.unwrap(),
            Some(Retrained::Unchanged),
            "{label}"
        );
        assert_eq!(app.retrainer.follow_pin().await.unwrap(), None);
        assert_eq!(current(&app).await, third);
        let started = sopr::service::build(config).await.unwrap();
        assert_eq!(started.state.pipeline.classifier().version(), third);
    }
}

/// The router model a message from `customer` is routed with, as its
/// decision records it.
async fn routed_with(app: &support::TestApp, customer: &str) -> String {
    let out = app.message(customer, "my card has not arrived").await;
    let id = out["decision_id"].as_str().unwrap().parse().unwrap();
    let decision = app.store.decision(app.tenant.id, id).await.unwrap();
    decision.unwrap().model_version
}

/// The router model `app` routes with, as `/readyz` reports it.
async fn current(app: &support::TestApp) -> String {
    let body: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    body["router_model"].as_str().unwrap().to_string()
}
