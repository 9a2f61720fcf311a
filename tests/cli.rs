//! The `sopr` binary as operators and scripts use it.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sopr() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sopr"));
    cmd.env_remove("SOPR_DATABASE_URL")
        .env_remove("SOPR_CONFIG")
        .env("NO_COLOR", "1");
    cmd
}

fn temp_db() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("sopr.db").display());
    (dir, url)
}

#[test]
fn keys_create_prints_only_a_new_key() {
    let (_dir, url) = temp_db();
    let run = || {
        let out = sopr()
            .args(["--database", &url, "keys", "create", "--tenant", "acme"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (a, b) = (run(), run());
    for key in [&a, &b] {
        let key = key.strip_suffix('\n').expect("one line");
        assert!(
            key.starts_with("sopr_") && key.len() == 69 && !key.contains(char::is_whitespace),
            "{key:?}"
        );
    }
    assert_ne!(a, b, "every call makes a new key for the same tenant");
    let out = sopr()
        .args(["--database", &url, "keys", "create", "--tenant", " "])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Runs `sopr --database URL args…` with `stdin` piped in; returns (success, stdout, stderr).
fn run_with_stdin(url: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = sopr()
        .args(["--database", url])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn users_add_hashes_the_password_from_stdin_and_refuses_mistakes() {
    let (_dir, url) = temp_db();
    let add = |email: &str, role: &str, password: &str| {
        run_with_stdin(
            &url,
            &[
                "users", "add", "--tenant", "acme", "--email", email, "--role", role,
            ],
            &format!("{password}\n"),
        )
    };
    let (ok, _, err) = add("ana@example.com", "admin", "a long enough password");
    assert!(!ok);
    assert!(
        err.contains("no tenant `acme`") && err.contains("sopr keys create"),
        "{err}"
    );

    run_with_stdin(&url, &["keys", "create", "--tenant", "acme"], "");
    let (ok, _, err) = add(" Ana@Example.com ", "admin", "a long enough password");
    assert!(ok, "{err}");
    assert!(err.contains("added admin ana@example.com"), "{err}");
    let (ok, _, err) = add("ana@example.com", "reviewer", "another long password");
    assert!(
        !ok && err.contains("already has a user ana@example.com"),
        "{err}"
    );
    let (ok, _, err) = add("bea@example.com", "reviewer", "short");
    assert!(!ok && err.contains("12 to 1024 characters"), "{err}");
    let (ok, _, err) = add("not-an-email", "reviewer", "a long enough password");
    assert!(!ok && err.contains("not an email address"), "{err}");

    let (ok, out, _) = run_with_stdin(&url, &["users", "list", "--tenant", "acme"], "");
    assert!(ok);
    assert!(out.starts_with("ana@example.com\tadmin\t"), "{out}");
    assert_eq!(out.lines().count(), 1);

    let set_password = |email: &str| {
        run_with_stdin(
            &url,
            &[
                "users",
                "set-password",
                "--tenant",
                "acme",
                "--email",
                email,
            ],
            "a brand new password\n",
        )
    };
    let (ok, _, err) = set_password("ANA@example.com");
    assert!(ok, "{err}");
    let (ok, _, err) = set_password("zed@example.com");
    assert!(!ok && err.contains("has no user zed@example.com"), "{err}");
}

#[test]
fn print_config_masks_secrets_and_bad_config_names_the_key() {
    let out = sopr()
        .args([
            "--database",
            "postgres://sopr:hunter2@db.internal:5432/sopr",
            "print-config",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        text.contains("postgres://sopr:***@db.internal:5432/sopr"),
        "{text}"
    );
    assert!(!text.contains("hunter2"));

    let out = sopr()
        .env("SOPR_REVIEW_LEASE_SECS", "1")
        .arg("print-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("review.lease_secs"));
    let out = sopr()
        .args(["--database", "mysql://x/y", "print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database.url"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sopr.toml");
    std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:9000\"\ntypo = 1\n").unwrap();
    let out = sopr()
        .arg("--config")
        .arg(&file)
        .arg("print-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("typo"));
}

#[test]
fn every_command_explains_itself() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["sops", "check", "--help"],
        vec!["keys", "create", "--help"],
        vec!["print-config", "--help"],
        vec!["train", "--help"],
        vec!["eval", "--help"],
        vec!["router", "list", "--help"],
        vec!["router", "pin", "--help"],
        vec!["router", "unpin", "--help"],
        vec!["feedback", "export", "--help"],
    ] {
        let out = sopr().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: sopr"), "{args:?}: {text}");
    }
    let out = sopr().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("--listen <ADDR:PORT>")
            && text.contains("--sops <DIR>")
            && text.contains("--database <URL>")
    );
}

/// `serve` on `url` with the demo SOPs, once it listens.
fn serve(url: &str) -> support::Serve {
    let sops = concat!(env!("CARGO_MANIFEST_DIR"), "/sops");
    let mut command = sopr();
    command.args([
        "--database",
        url,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--sops",
        sops,
    ]);
    support::Serve::start(command)
}

/// Starts `serve`, returns the key it printed (if any) once it is listening, then stops it.
fn serve_once(url: &str) -> Option<String> {
    serve(url).key.clone()
}

#[test]
fn serve_bootstraps_a_demo_tenant_once() {
    let (_dir, url) = temp_db();
    let key = serve_once(&url).expect("first start prints the demo key");
    assert_eq!(key.len(), 69);
    assert!(serve_once(&url).is_none(), "the key is shown only once");
}

/// Runs `sopr eval args…`; returns (success, stdout, stderr).
fn eval(args: &[&str]) -> (bool, String, String) {
    let out = sopr().arg("eval").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The four intents of the `eval` tests, each with its own four words.
const EVAL_INTENTS: [(&str, [&str; 4]); 4] = [
    ("card_arrival", ["card", "arrive", "post", "delivery"]),
    ("exchange_rate", ["rate", "euro", "dollars", "convert"]),
    ("top_up", ["top", "up", "add", "money"]),
    ("close_account", ["close", "account", "leave", "delete"]),
];

/// A `text,intent` file of 30 rows per intent, each row two of its words.
fn labelled_csv(dir: &std::path::Path, intents: &[(&str, [&str; 4])]) -> String {
    let csv = dir.join("data.csv");
    let mut rows = String::from("text,intent\n");
    for (intent, words) in intents {
        for i in 0..30 {
            rows += &format!(
                "\"{} {}, please {i}\",{intent}\n",
                words[i % 4],
                words[(i + 1) % 4]
            );
        }
    }
    std::fs::write(&csv, rows).unwrap();
    csv.to_str().unwrap().to_string()
}

#[test]
fn eval_measures_a_split_and_cross_validates_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let csv = labelled_csv(dir.path(), &EVAL_INTENTS);
    let csv = csv.as_str();

    let (ok, out, err) = eval(&["--data", csv, "--seed", "3", "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["examples"], 24, "20% of 30 rows per intent: {v}");
    assert!(v["accuracy"].as_f64().unwrap() > 0.9, "{v}");
    assert!(v["model"].as_str().unwrap().starts_with("lr11-"), "{v}");
    // 96 training rows: small enough to calibrate on all of them, cross-validated.
    assert_eq!(v["calibration"]["holdout_examples"], 96, "{v}");
    for key in ["0.95", "0.98", "0.99"] {
        assert!(v["coverage_at_accuracy"].get(key).is_some(), "{v}");
    }
    assert!(v["latency_us"]["p99"].as_f64().unwrap() > 0.0);

    let (ok, out, err) = eval(&["--data", csv, "--folds", "4", "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["examples"], 120, "every row tested once: {v}");
    let folds = v["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 4);
    for fold in folds {
        assert_eq!(fold["test_examples"], 30, "{fold}");
        assert_eq!(fold["train_examples"], 90, "{fold}");
    }

    let (ok, out, err) = eval(&["--data", csv, "--folds", "4"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("cross-validation  4 folds")
            && out.contains("\nfold 4 ")
            && out.contains("\naccuracy "),
        "{out}"
    );

    // One of the four intents unknown: out of every training set, and its
    // rows (which share no word with the others) are the test's `oos`.
    let (ok, out, err) = eval(&[
        "--data",
        csv,
        "--folds",
        "4",
        "--unknown-intents",
        "0.25",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let unknown = v["unknown_intents"].as_array().unwrap();
    assert_eq!(unknown.len(), 1, "{v}");
    assert_eq!(v["examples"], 120, "{v}");
    let oos = &v["out_of_scope"];
    assert_eq!(oos["examples"], 30, "{v}");
    assert_eq!(v["unseen_test_rows"], 30, "{v}");
    assert!(oos["recall"].as_f64().unwrap() >= 0.9, "{v}");
    assert!(oos["auroc"].as_f64().unwrap() >= 0.9, "{v}");
    for fold in v["folds"].as_array().unwrap() {
        assert!(
            (66..=68).contains(&fold["train_examples"].as_u64().unwrap()),
            "90 rows less the unknown intent's: {fold}"
        );
    }
    let (ok, out, err) = eval(&["--data", csv, "--unknown-intents", "0.25"]);
    assert!(ok, "{err}");
    let line = format!(
        "unknown intents   1 held out of training: {}\nunseen intents    6 test rows have intents the training data lacks: counted as oos\n",
        unknown[0].as_str().unwrap()
    );
    assert!(out.contains(&line), "{out}");
    assert!(out.contains("\nout-of-scope      6 rows, recall "), "{out}");
    // Trained on the demo SOPs' examples: two of the file's intents are
    // theirs, the other two they lack, so those rows are out of scope.
    let sops = concat!(env!("CARGO_MANIFEST_DIR"), "/sops");
    let (ok, out, err) = eval(&["--sops", sops, "--test", csv, "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["unseen_test_rows"], 60, "{v}");
    assert_eq!(v["out_of_scope"]["examples"], 60, "{v}");
    assert_eq!(v["examples"], 120, "{v}");
    let accuracy = v["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.5, "card_arrival, exchange_rate: {v}");
    // Each in-scope intent's scores, weakest first.
    let intents = v["intents"].as_array().unwrap();
    let names: std::collections::BTreeSet<&str> = intents
        .iter()
        .map(|i| i["intent"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["card_arrival", "exchange_rate"].into(), "{v}");
    assert!(
        intents[0]["f1"].as_f64() <= intents[1]["f1"].as_f64(),
        "{v}"
    );
    assert_eq!(intents[0]["support"], 30, "{v}");
    // Routed to the right SOP at least as often as to the right intent.
    assert!(v["sop_accuracy"].as_f64().unwrap() >= accuracy, "{v}");
    let (ok, out, err) = eval(&["--sops", sops, "--test", csv]);
    assert!(ok, "{err}");
    assert!(
        out.contains("\nunseen intents    60 test rows have intents the training data lacks"),
        "{out}"
    );
    assert!(out.contains("\nSOP accuracy      "), "{out}");
    let (ok, _, err) = eval(&["--sops", sops]);
    assert!(!ok && err.contains("--test"), "{err}");
    // Cross-validating the SOP examples themselves: every example tested once.
    let (ok, out, err) = eval(&["--sops", sops, "--folds", "3", "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let folds = v["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 3, "{v}");
    let tested: u64 = folds
        .iter()
        .map(|f| f["test_examples"].as_u64().unwrap())
        .sum();
    assert!(tested > 100 && v["examples"] == tested, "{v}");
    assert_eq!(v["unseen_test_rows"], 0, "{v}");
    let (ok, _, err) = eval(&["--folds", "3"]);
    assert!(
        !ok && err.contains("--folds cross-validates --data FILE or --sops DIR"),
        "{err}"
    );

    let (ok, _, err) = eval(&["--data", csv, "--unknown-intents", "0.6"]);
    assert!(!ok && err.contains("--unknown-intents must be"), "{err}");

    let (ok, _, err) = eval(&["--data", csv, "--folds", "1"]);
    assert!(
        !ok && err.contains("--folds must be between 2 and 20"),
        "{err}"
    );
    let (ok, _, err) = eval(&["--train", csv, "--test", csv, "--folds", "3"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}

#[test]
fn eval_counts_routing_to_oos_as_review() {
    // Known off-topic traffic labelled `oos` in training: the router learns
    // it like an intent, and no SOP answers it, so a message routed there
    // goes to review however confident the model is.
    let dir = tempfile::tempdir().unwrap();
    let mut intents = EVAL_INTENTS.to_vec();
    intents.push(("oos", ["weather", "football", "recipe", "poem"]));
    let csv = labelled_csv(dir.path(), &intents);
    let csv = csv.as_str();
    let (ok, out, err) = eval(&["--data", csv, "--seed", "3", "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let oos = &v["out_of_scope"];
    assert_eq!(oos["examples"], 6, "{v}");
    assert_eq!(oos["recall"], 1.0, "every oos row routed to oos: {v}");
    assert_eq!(oos["auroc"], 1.0, "{v}");
    assert_eq!(v["unseen_test_rows"], 0, "{v}");
    assert!(v["auto_coverage"].as_f64().unwrap() > 0.5, "{v}");
    // The training-time threshold decides only rows it could answer: the
    // 24 of 120 held-out `oos` rows are not among them.
    let covered = v["calibration"]["coverage"].as_f64().unwrap();
    assert!(covered > 0.5 && covered <= 0.8, "{v}");

    // A test file of off-topic rows only: nothing in scope to measure.
    let off_topic = dir.path().join("off-topic.csv");
    std::fs::write(
        &off_topic,
        "text,intent\nweather poem,oos\nfootball recipe,oos\n",
    )
    .unwrap();
    let off_topic = off_topic.to_str().unwrap();
    let (ok, out, err) = eval(&["--train", csv, "--test", off_topic]);
    assert!(ok, "{err}");
    assert!(
        out.contains("\naccuracy          none measured: every test row is out of scope\n")
            && !out.contains("macro-F1")
            && out.contains("\nout-of-scope      2 rows, recall 1.0000"),
        "{out}"
    );
    let (ok, out, err) = eval(&["--train", csv, "--test", off_topic, "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["examples"].as_u64(), v["in_scope_examples"].as_u64()),
        (Some(2), Some(0))
    );

    // A missing file is named once, with the cause once.
    let (ok, _, err) = eval(&["--train", csv, "--test", "no-such-file.csv"]);
    assert!(!ok, "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    assert!(err.starts_with("error: no-such-file.csv: "), "{err}");
}

#[test]
fn eval_with_sops_applies_serves_review_rules() {
    let dir = tempfile::tempdir().unwrap();
    let sops = concat!(env!("CARGO_MANIFEST_DIR"), "/sops");
    let test = dir.path().join("test.csv");
    std::fs::write(
        &test,
        "text,intent\n\
         my card still has not arrived,card_arrival\n\
         my card 4111 1111 1111 1111 has not arrived yet,card_arrival\n\
         I want to close my account,close_account\n\
         what will the weather be like in paris tomorrow,small_talk\n",
    )
    .unwrap();
    let test = test.to_str().unwrap();
    let (ok, out, err) = eval(&["--sops", sops, "--test", test, "--format", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let served = &v["serve_rules"];
    // Only the plain card question is answered: the card number is PII, the
    // close-account SOP always goes to a person, and the weather has no SOP.
    assert_eq!(served["answered"], 0.25, "{v}");
    assert_eq!(served["accuracy"], 1.0, "{v}");
    assert_eq!(served["answered_uncovered"], 0, "{v}");
    assert_eq!(served["reasons"]["flag:pii.card_number"], 1, "{v}");
    assert_eq!(served["reasons"]["always_review"], 1, "{v}");

    // As a tenant whose own fraud list catches the plain card question, that
    // one goes to review too; the deployment's lists alone do not catch it.
    let config = dir.path().join("sopr.toml");
    std::fs::write(
        &config,
        "[screen.tenants.acme.topics]\nfraud = [\"still has not arrived\"]\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let as_tenant = |tenant: &str| {
        eval(&[
            "--config", config, "--sops", sops, "--test", test, "--tenant", tenant, "--format",
            "json",
        ])
    };
    let (ok, out, err) = as_tenant("acme");
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["serve_rules"]["answered"], 0.0, "{v}");
    assert_eq!(v["serve_rules"]["reasons"]["flag:topic.fraud"], 1, "{v}");
    let (ok, _, err) = as_tenant("acme-typo");
    assert!(
        !ok,
        "an unknown tenant is an error, not the deployment's lists"
    );
    assert!(
        err.contains("--tenant acme-typo: the config has no [screen.tenants.acme-typo] topic lists (it has: acme)"),
        "{err}"
    );
    let (ok, out, err) = eval(&["--config", config, "--sops", sops, "--test", test]);
    assert!(ok, "{err}");
    assert!(out.contains("answered 0.2500"), "{out}");

    // Labelled traffic beside the SOP examples (as routing.training_data):
    // the intent no SOP answers is learnt, and routed there it is no_route.
    let train = dir.path().join("train.csv");
    let mut rows = String::from("text,intent\n");
    for topic in ["weather", "football", "recipe", "holiday", "film"] {
        for ask in [
            "what about the",
            "tell me about the",
            "how is the",
            "any news on the",
        ] {
            rows += &format!("{ask} {topic} today,small_talk\n");
        }
    }
    std::fs::write(&train, rows).unwrap();
    let train = train.to_str().unwrap();
    let (ok, out, err) = eval(&["--sops", sops, "--train", train, "--test", test]);
    assert!(ok, "{err}");
    assert!(
        out.contains("\nserve's rules     answered 0.2500 of test traffic at accuracy 1.0000")
            && out.contains("no_route 1"),
        "{out}"
    );
}

#[test]
fn eval_says_what_too_little_data_leaves_unmeasured() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.csv");
    std::fs::write(
        &tiny,
        "text,intent\ncard not here,card_arrival\neuro rate,exchange_rate\n",
    )
    .unwrap();
    let tiny = tiny.to_str().unwrap();

    // A split that leaves nothing to test on is refused, with the way out.
    let (ok, out, err) = eval(&["--data", tiny]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("tiny.csv: a 0.2 test share of 2 rows is empty")
            && err.contains("--train and --test"),
        "{err}"
    );

    // Too few examples to calibrate: no threshold, said as such rather
    // than as an auto-answered share of 0 at accuracy 0.
    let (ok, out, err) = eval(&["--train", tiny, "--test", tiny]);
    assert!(ok, "{err}");
    assert!(
        out.contains("\ncalibration       none: fewer than 20 training examples")
            && out.contains("\nauto-answered     none: no threshold without calibration\n")
            && out.contains("\naccuracy          1.0000\n"),
        "{out}"
    );

    // Two intents worded alike: no threshold reaches 99%, so nothing is answered.
    let alike = labelled_csv(
        dir.path(),
        &[
            ("card_arrival", ["card", "arrive", "post", "delivery"]),
            (
                "card_delivery_estimate",
                ["card", "arrive", "post", "delivery"],
            ),
        ],
    );
    let (ok, out, err) = eval(&["--data", &alike]);
    assert!(ok, "{err}");
    assert!(
        out.contains("\nthreshold         none reaches 0.99 accuracy on the held-out data\n")
            && out.contains(
                "\nauto-answered     none: the threshold from calibration answers no test message\n"
            ),
        "{out}"
    );

    // Cross-validation names the fold that cannot be trained.
    let (ok, _, err) = eval(&["--data", tiny, "--folds", "2"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("fold 1 of 2: cannot train on the other folds: need at least two intents"),
        "{err}"
    );
}

/// Runs `sopr --database URL train args…`; returns (exit code, stdout, stderr).
fn train(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    run_on(url, "train", args)
}

/// Runs `sopr --database URL router args…`; returns (exit code, stdout, stderr).
fn router(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    run_on(url, "router", args)
}

fn run_on(url: &str, command: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = sopr()
        .args(["--database", url, command])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The version on the `model` line `sopr train` prints.
fn model_of(train_out: &str) -> String {
    train_out
        .lines()
        .find_map(|l| l.strip_prefix("model       "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no model line: {train_out}"))
        .to_string()
}

#[tokio::test]
async fn train_and_router_pin_say_what_serve_routes_with() {
    let (dir, url) = temp_db();
    let (code, out, err) = train(&url, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("\npromoted    none yet: serve starts with the model for its data\n"),
        "{out}"
    );
    let version = model_of(&out);

    // As a start of serve does.
    let store = sopr::store::connect(&url, 1).await.unwrap();
    assert!(
        store
            .promote_router_model(&version, chrono::Utc::now())
            .await
            .unwrap()
    );
    let (code, out, _) = train(&url, &[]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("(already stored for this data; reused)")
            && out.contains("\npromoted    this model: serve routes with it\n"),
        "{out}"
    );

    // A few more good rows: serve would switch.
    let good = dir.path().join("good.csv");
    std::fs::write(
        &good,
        "text,intent\nwhere is my parcel of cards,card_arrival\nthe courier lost my card,card_arrival\n",
    )
    .unwrap();
    let (code, out, err) = train(&url, &["--data", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!(
            "\npromoted    {version}; this model is not worse beyond routing.retrain_max_drop, so serve would switch to it\n"
        )),
        "{out}"
    );

    // Labels that are noise: stored, but serve would refuse it (status 1).
    let noisy = dir.path().join("noise.csv");
    std::fs::write(&noisy, support::noise_csv(400)).unwrap();
    let (code, out, err) = train(&url, &["--data", noisy.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains(&format!(
            "\npromoted    {version}; this model is worse (held-out accuracy "
        )) && out.contains("so serve would keep routing with that one\n"),
        "{out}"
    );
    assert!(
        err.contains("error: the model for this data is worse than the one promoted last")
            && err.contains("sopr router pin"),
        "{err}"
    );
    assert!(out.contains("(trained and stored)"), "{out}");
    let refused = model_of(&out);

    // The operator accepts it on purpose: pin (by a start of its hash), then unpin.
    let listed = router(&url, &["list"]);
    assert_eq!(listed.0, Some(0), "{listed:?}");
    assert!(listed.1.starts_with("VERSION "), "{}", listed.1);
    assert_eq!(listed.1.lines().count(), 1 + 3, "{}", listed.1);
    assert!(
        listed
            .1
            .lines()
            .any(|l| l.starts_with(&version) && l.contains("promoted ") && l.ends_with(" (last)")),
        "{}",
        listed.1
    );
    let (code, _, err) = router(&url, &["pin", "nope"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no stored router model `nope`"), "{err}");
    let (code, _, err) = router(&url, &["pin", "lr"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("`lr` names 3 models"), "{err}");
    let hash = refused.split_once('-').unwrap().1;
    let (code, out, err) = router(&url, &["pin", &hash[..8], "--reason", "accepted by ops"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), refused);
    assert!(
        err.contains("within 10 s") && !err.contains("warning"),
        "{err}"
    );
    let (code, out, _) = train(&url, &["--data", noisy.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "\npinned      {refused}: serve routes with it until `sopr router unpin`, then as follows\npromoted    this model: serve routes with it\n"
        )),
        "{out}"
    );
    let (_, json, _) = router(&url, &["list", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let pinned: Vec<&serde_json::Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["pinned_at"].is_null())
        .collect();
    assert_eq!(pinned.len(), 1, "{json}");
    assert_eq!(pinned[0]["version"], refused.as_str());
    assert_eq!(pinned[0]["promoted_last"], true);
    assert_eq!(pinned[0]["pin_reason"], "accepted by ops");
    let (_, text, _) = router(&url, &["list"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&refused) && l.contains(" pinned (accepted by ops), promoted ")),
        "{text}"
    );
    assert!(
        pinned[0]["holdout_accuracy"].as_f64().unwrap() < 0.7,
        "{json}"
    );
    let (code, _, err) = router(&url, &["unpin"]);
    assert_eq!(code, Some(0));
    assert!(err.starts_with(&format!("unpinned {refused}: ")), "{err}");
    let (_, _, err) = router(&url, &["unpin"]);
    assert_eq!(err.trim(), "no router model was pinned");
    let (code, out, _) = train(&url, &["--data", noisy.to_str().unwrap()]);
    assert_eq!(code, Some(0), "accepted: {out}");
    assert!(!out.contains("pinned "), "{out}");

    // A model without an intent of the active SOPs is pinned with a warning.
    let fewer = dir.path().join("sops");
    std::fs::create_dir(&fewer).unwrap();
    for entry in std::fs::read_dir(support::sops_dir()).unwrap() {
        let path = entry.unwrap().path();
        if !path.ends_with("exchange-rate.v1.yaml") {
            std::fs::copy(&path, fewer.join(path.file_name().unwrap())).unwrap();
        }
    }
    let out = sopr()
        .args(["--database", &url, "train"])
        .env("SOPR_SOPS__DIR", &fewer)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    let without = model_of(&out);
    let (code, _, err) = router(&url, &["pin", &without]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(
            "warning: the model does not know 2 intent(s) of the active SOPs (exchange_charge, exchange_rate)"
        ),
        "{err}"
    );
}

/// The router model `serve` at `addr` routes with, and its `/metrics`.
async fn routing(client: &reqwest::Client, addr: &str) -> (String, String) {
    let ready = support::get_text(client, &format!("http://{addr}/readyz")).await;
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    let metrics = support::get_text(client, &format!("http://{addr}/metrics")).await;
    (ready["router_model"].as_str().unwrap().to_string(), metrics)
}

/// Waits (up to a minute) until `serve` at `addr` routes with `version`;
/// returns its `/metrics` then.
async fn until_routing(client: &reqwest::Client, addr: &str, version: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (now, metrics) = routing(client, addr).await;
        if now == version {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "still routing with {now}, not {version}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_running_serve_follows_a_pin_and_its_lifting() {
    let (dir, url) = temp_db();
    let (_, out, _) = train(&url, &[]);
    let demo = model_of(&out);
    let extra = dir.path().join("extra.csv");
    std::fs::write(
        &extra,
        "text,intent\nwhere is my parcel of cards,card_arrival\n",
    )
    .unwrap();
    let (_, out, _) = train(&url, &["--data", extra.to_str().unwrap()]);
    let other = model_of(&out);
    assert_ne!(demo, other);

    let serve = serve(&url);
    sopr::llm::install_crypto_provider();
    let client = reqwest::Client::new();
    let (now, metrics) = routing(&client, &serve.addr).await;
    assert_eq!(now, demo, "the model for its data");
    assert!(metrics.contains("sopr_router_pinned 0"), "{metrics}");

    let (code, _, err) = router(&url, &["pin", &other, "--reason", "rolled back by ops"]);
    assert_eq!(code, Some(0), "{err}");
    let metrics = until_routing(&client, &serve.addr, &other).await;
    let logged = serve.log_lines("router model pinned");
    assert!(
        logged.len() == 1 && logged[0].contains(r#"reason="rolled back by ops""#),
        "{logged:?}"
    );
    assert!(metrics.contains("sopr_router_pinned 1"), "{metrics}");
    assert!(
        metrics.contains(r#"sopr_router_retrains_total{outcome="pinned"} 1"#),
        "{metrics}"
    );

    let (code, _, err) = router(&url, &["unpin"]);
    assert_eq!(code, Some(0), "{err}");
    let metrics = until_routing(&client, &serve.addr, &demo).await;
    assert!(metrics.contains("sopr_router_pinned 0"), "{metrics}");
    assert!(
        metrics.contains(r#"sopr_router_retrains_total{outcome="loaded"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn feedback_export_writes_what_reviewers_labelled_for_eval() {
    for db in support::databases().await {
        let label = db.label();
        let app = support::spawn_app_on(db, |c| c.review.spot_check_share = 1.0).await;
        let url = app.db.url().to_string();
        // (message, reviewer's resolution): a card number in a request for a
        // person, an off-topic message, and one left unlabelled.
        let cases = [
            (
                "I want a human, my card 4111 1111 1111 1111 never arrived",
                serde_json::json!({ "action": "edit", "intent": "card_arrival", "reply": "It is on its way." }),
            ),
            (
                "what's the weather like in paris tomorrow? I want a person",
                serde_json::json!({ "action": "reject", "intent": "oos", "reason": "off topic" }),
            ),
            (
                "let me talk to a real person please",
                serde_json::json!({ "action": "reject", "reason": "spam" }),
            ),
        ];
        for (i, (text, resolution)) in cases.iter().enumerate() {
            let case = app.message(&format!("c{i}"), text).await;
            let review = case["review_id"]
                .as_str()
                .unwrap_or_else(|| panic!("{case}"));
            let r = app
                .post(
                    &format!("/v1/reviews/{review}/claim"),
                    &serde_json::json!({ "reviewer": "ana" }),
                )
                .await;
            assert_eq!(r.status(), 200, "{label}");
            let mut body = resolution.clone();
            body["reviewer"] = "ana".into();
            let r = app
                .post(&format!("/v1/reviews/{review}/resolve"), &body)
                .await;
            assert_eq!(r.status(), 200, "{label}: {}", r.text().await.unwrap());
        }
        // An automatic answer, spot-checked and found right, after them.
        let answered = app
            .message("c9", "My new card still hasn't arrived, it's been 10 days")
            .await;
        assert_eq!(answered["outcome"], "answered", "{label}: {answered}");
        let checks: serde_json::Value = app.get("/v1/spot-checks").await.json().await.unwrap();
        let check = checks["items"][0]["id"].as_str().unwrap().to_string();
        let r = app
            .post(
                &format!("/v1/spot-checks/{check}/label"),
                &serde_json::json!({ "reviewer": "ana", "intent": "card_arrival" }),
            )
            .await;
        assert_eq!(r.status(), 200, "{label}");
        let header =
            "text,intent,routed_intent,confidence,tenant,labelled_at,source,action,reviewer,id";

        // Standard output, masked.
        let (code, out, err) = run_on(&url, "feedback", &["export"]);
        assert_eq!(code, Some(0), "{label}: {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{label}: {out}");
        assert!(
            lines[3].contains(",card_arrival,card_arrival,")
                && lines[3].ends_with(&format!(",spot_check,label,ana,{check}")),
            "{label}: {out}"
        );
        assert_eq!(lines[0], header);
        assert!(
            lines[1].starts_with(
                "\"I want a human, my card **** **** **** 1111 never arrived\",card_arrival,"
            ),
            "{label}: {out}"
        );
        assert!(
            lines[1].contains(&format!(",{},", app.tenant.name)),
            "{out}"
        );
        assert!(lines[1].contains(",review,edit,ana,"), "{out}");
        assert!(
            lines[2].contains(",oos,") && lines[2].contains(",review,reject,ana,"),
            "{out}"
        );
        assert!(
            !out.contains("4111 1111"),
            "{label}: the card number is masked: {out}"
        );
        assert!(
            err.contains("exported 3 labelled messages of 1 tenant: 2 from review items, the router's intent kept for 1 (50.0%); 1 spot check of automatic answers, routed right for 1 (100.0%); 1 labelled `oos`"),
            "{label}: {err}"
        );

        // One source only.
        let (code, out, err) = run_on(&url, "feedback", &["export", "--source", "spot-check"]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.contains(",spot_check,label,ana,"), "{out}");
        assert!(err.contains("from spot checks"), "{err}");
        let (code, out, err) = run_on(&url, "feedback", &["export", "--source", "review"]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(!out.contains("spot_check"), "{out}");

        // A file, as stored, of one tenant.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("labelled.csv");
        let file_arg = file.to_str().unwrap();
        let tenant = app.tenant.name.clone();
        let (code, out, err) = run_on(
            &url,
            "feedback",
            &["export", "--raw", "--tenant", &tenant, "--out", file_arg],
        );
        assert_eq!(code, Some(0), "{label}: {err}");
        assert!(out.is_empty(), "{out}");
        let written = std::fs::read_to_string(&file).unwrap();
        assert!(
            written.contains("4111 1111 1111 1111"),
            "{label}: {written}"
        );
        assert_eq!(written.lines().count(), 4, "{written}");
        assert!(
            err.contains(&format!("of tenant {tenant}")) && err.contains(file_arg),
            "{err}"
        );

        // Filters that match nothing, and mistakes.
        let (code, out, err) = run_on(&url, "feedback", &["export", "--since", "2999-01-01"]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(out.trim(), header);
        assert!(
            err.contains("no labelled messages since 2999-01-01T00:00:00Z"),
            "{err}"
        );
        let (code, _, err) = run_on(&url, "feedback", &["export", "--since", "last week"]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("neither an RFC 3339 timestamp"), "{err}");
        let (code, _, err) = run_on(&url, "feedback", &["export", "--tenant", "nobody"]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("--tenant nobody: no such tenant"), "{err}");

        // `sopr eval` measures the SOPs on the export as it is.
        let (code, out, err) = run_on(
            &url,
            "eval",
            &[
                "--sops",
                support::sops_dir().to_str().unwrap(),
                "--test",
                file_arg,
            ],
        );
        assert_eq!(code, Some(0), "{label}: {err}");
        assert!(out.contains("test examples     3"), "{out}");
        assert!(out.contains("out-of-scope      1 rows"), "{out}");
    }
}
