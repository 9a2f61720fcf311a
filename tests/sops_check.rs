//! `sopr sops check`: passes on the demo set, fails with a useful message
//! (file, field, line) on broken ones.

use std::path::Path;
use std::process::Command;

fn sopr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sopr"))
}

fn demo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sops")
}

/// A copy of the demo folder with one file replaced or added.
fn broken(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(demo()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    edit(dir.path());
    dir
}

fn check(dir: &Path) -> (bool, String) {
    let out = sopr().args(["sops", "check"]).arg(dir).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn replace_in(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} does not contain {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn the_demo_set_passes() {
    let (ok, text) = check(&demo());
    assert!(ok, "{text}");
    assert!(text.contains("15 active"), "{text}");
    let json = sopr()
        .args(["sops", "check", "--format", "json"])
        .arg(demo())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["errors"], 0);
}

#[test]
fn yaml_syntax_errors_name_the_line() {
    let dir = broken(|d| {
        replace_in(
            d,
            "cancel-transfer.v1.yaml",
            "title:",
            "title: [unclosed\n  x: :",
        )
    });
    let (ok, text) = check(dir.path());
    assert!(!ok);
    assert!(
        text.contains("cancel-transfer.v1.yaml:") && text.contains("invalid YAML"),
        "{text}"
    );
}

#[test]
fn schema_violations_name_the_field_and_line() {
    let dir = broken(|d| {
        replace_in(
            d,
            "exchange-rate.v1.yaml",
            "min_confidence: ",
            "min_confidence: 7 #",
        )
    });
    let (ok, text) = check(dir.path());
    assert!(!ok);
    let line = text
        .lines()
        .find(|l| l.contains("exchange-rate.v1.yaml"))
        .expect("names the file");
    assert!(line.contains("[/escalation/min_confidence]"), "{text}");
    let source = std::fs::read_to_string(dir.path().join("exchange-rate.v1.yaml")).unwrap();
    let expected = source
        .lines()
        .position(|l| l.contains("min_confidence: 7"))
        .unwrap()
        + 1;
    assert!(
        line.contains(&format!("exchange-rate.v1.yaml:{expected} ")),
        "line {expected}: {text}"
    );
}

#[test]
fn unknown_fields_and_missing_fields_are_errors() {
    let dir = broken(|d| {
        replace_in(
            d,
            "exchange-rate.v1.yaml",
            "steps:",
            "stpes_typo: 1\nsteps:",
        )
    });
    let (ok, text) = check(dir.path());
    assert!(!ok && text.contains("stpes_typo"), "{text}");
}

#[test]
fn duplicate_versions_are_errors() {
    let dir = broken(|d| {
        std::fs::copy(
            d.join("cancel-transfer.v1.yaml"),
            d.join("cancel-transfer-copy.yaml"),
        )
        .unwrap();
    });
    let (ok, text) = check(dir.path());
    assert!(!ok);
    assert!(text.contains("duplicate SOP cancel-transfer@1"), "{text}");
}

#[test]
fn unknown_agents_are_errors() {
    let dir = broken(|d| replace_in(d, "exchange-rate.v1.yaml", "agent: fees", "agent: treasury"));
    let (ok, text) = check(dir.path());
    assert!(!ok);
    assert!(
        text.contains("unknown agent `treasury`") && text.contains("[/agent]"),
        "{text}"
    );
}

#[test]
fn an_intent_claimed_by_two_active_sops_is_an_error() {
    let dir = broken(|d| {
        let text = std::fs::read_to_string(d.join("cancel-transfer.v1.yaml")).unwrap();
        let text = text.replacen("id: cancel-transfer", "id: cancel-transfer-too", 1);
        std::fs::write(d.join("cancel-transfer-too.v1.yaml"), text).unwrap();
    });
    let (ok, text) = check(dir.path());
    assert!(!ok);
    assert!(
        text.contains("intent `cancel_transfer` is also claimed by active SOP"),
        "{text}"
    );
}

#[test]
fn two_active_versions_of_one_sop_are_an_error() {
    let dir = broken(|d| {
        replace_in(
            d,
            "card-lost-or-stolen.v1.yaml",
            "status: retired",
            "status: active",
        )
    });
    let (ok, text) = check(dir.path());
    assert!(!ok);
    assert!(text.contains("has two active versions"), "{text}");
}

#[test]
fn templates_that_do_not_compile_are_errors_with_a_line() {
    let dir = broken(|d| replace_in(d, "exchange-rate.v1.yaml", "Hi {{", "Hi {% if %}{{"));
    let (ok, text) = check(dir.path());
    assert!(!ok);
    assert!(
        text.contains("[/response/template]") && text.contains("does not compile"),
        "{text}"
    );
}

#[test]
fn templates_that_fail_to_render_are_errors() {
    // Uses the customer's name without a default: breaks for anonymous customers.
    let dir = broken(|d| {
        replace_in(
            d,
            "exchange-rate.v1.yaml",
            "template: |",
            "template: |\n    Dear {{ customer.name }},",
        )
    });
    let (ok, text) = check(dir.path());
    assert!(!ok);
    assert!(
        text.contains("fails to render with a customer without name or email"),
        "{text}"
    );
}

#[test]
fn a_missing_agents_file_and_a_missing_folder_are_errors() {
    let dir = broken(|d| std::fs::remove_file(d.join("agents.yaml")).unwrap());
    let (ok, text) = check(dir.path());
    assert!(
        !ok && text.contains("agents.yaml") && text.contains("missing"),
        "{text}"
    );
    let (ok, text) = check(Path::new("/definitely/not/here"));
    assert!(!ok && text.contains("cannot read the SOP folder"), "{text}");
}

#[test]
fn serve_refuses_to_start_on_a_broken_folder() {
    let dir = broken(|d| replace_in(d, "exchange-rate.v1.yaml", "agent: fees", "agent: treasury"));
    let db = tempfile::tempdir().unwrap();
    let out = sopr()
        .args([
            "--database",
            &format!("sqlite://{}", db.path().join("x.db").display()),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sops",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown agent `treasury`"));
}

#[test]
fn an_output_schema_without_a_reply_string_is_refused() {
    let dir = broken(|d| {
        replace_in(
            d,
            "card-delivery.v1.yaml",
            "      required: [reply]",
            "      required: [answer]",
        )
    });
    let (ok, text) = check(dir.path());
    assert!(!ok);
    assert!(
        text.contains("card-delivery.v1.yaml:")
            && text.contains("/response/llm/output_schema")
            && text.contains("`reply`"),
        "{text}"
    );
}

#[test]
fn an_example_under_two_intents_is_a_warning() {
    let dir = broken(|d| {
        // The same words as verify-identity's "verify identity".
        replace_in(
            d,
            "card-delivery.v1.yaml",
            "    - card not arrived\n",
            "    - card not arrived\n    - Verify identity!\n",
        );
        // Under both intents of one SOP.
        replace_in(
            d,
            "verify-identity.v1.yaml",
            "    - why do you need my ID\n",
            "    - why do you need my ID\n    - How do I verify my identity?\n",
        );
    });
    let (ok, text) = check(dir.path());
    assert!(ok, "warnings only: {text}");
    assert!(text.contains("2 warning(s)"), "{text}");
    assert!(
        text.contains(
            "example `verify identity` of intent `verify_my_identity` is also an example of `card_arrival` in SOP `card-delivery`"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "example `How do I verify my identity?` of intent `why_verify_identity` is also an example of `verify_my_identity` in this SOP"
        ),
        "{text}"
    );
}
