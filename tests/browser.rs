//! The reviewer console in a real browser: headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`). Two reviewers sign
//! in; a customer message appears in the queue without a reload; one claims it
//! with the keyboard, edits the draft and sends it; the other cannot take it;
//! the customer's conversation has the reply; a post without the CSRF token is
//! refused. Screenshots of the queue, item and dashboard pages (wide and
//! narrow) are saved under `target/tmp/console-screenshots/`.
//!
//! Without chromedriver the test is skipped with a message, unless `CI` is
//! set, where it fails: `.ci/run` installs the browser.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::console::add_user;
use support::{TestApp, TestDb, spawn_app_on};

const PASSWORD: &str = "correct horse battery";

/// Finds a program on the PATH (or the variable's value, when set).
fn program(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(var) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// chromedriver, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Option<(Driver, PathBuf)> {
    let driver = program("SOPR_CHROMEDRIVER", &["chromedriver"]);
    let browser = program(
        "SOPR_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let (Some(driver), Some(browser)) = (driver, browser) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs a browser: apt-get install chromium chromium-driver (or set SOPR_CHROMEDRIVER and SOPR_CHROMIUM)"
        );
        eprintln!(
            "SKIPPED: no chromedriver/chromium on PATH; install chromium and chromium-driver to run the browser tests"
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let driver = Driver {
        child: Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
        url: format!("http://127.0.0.1:{port}"),
    };
    sopr::llm::install_crypto_provider();
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{}/status", driver.url)).send().await
            && r.status().is_success()
        {
            return Some((driver, browser));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start");
}

async fn browser(driver: &Driver, chromium: &PathBuf) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--window-size=1280,900"
            ]
        }
    });
    let caps = match caps {
        Value::Object(map) => map,
        _ => unreachable!(),
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("browser session")
}

fn shots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    let path = shots_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// Types into the form field with this id, replacing what it held.
async fn fill(client: &Client, id: &str, text: &str) {
    let field = client.find(Locator::Id(id)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn sign_in(client: &Client, app: &TestApp, email: &str) {
    client.goto(&app.url("/console/login")).await.unwrap();
    fill(client, "tenant", &app.tenant.name).await;
    fill(client, "email", email).await;
    fill(client, "password", PASSWORD).await;
    client
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("queue"))
        .await
        .expect("the queue page after signing in");
}

/// Presses one key on the page (not in a form field).
async fn press(client: &Client, key: char) {
    let keys = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: key })
        .then(KeyAction::Up { value: key });
    client.perform_actions(keys).await.unwrap();
}

/// The page's path and query.
async fn path_of(client: &Client, app: &TestApp) -> String {
    let url = client.current_url().await.unwrap();
    url.as_str()
        .strip_prefix(&app.base)
        .unwrap_or(url.as_str())
        .to_string()
}

#[tokio::test]
async fn reviewers_work_the_queue_in_a_browser() {
    let Some((driver, chromium)) = start_driver().await else {
        return;
    };
    let app = spawn_app_on(TestDb::sqlite(), |c| c.console.live_poll_ms = 200).await;
    add_user(&app, "bea@example.com", "reviewer", PASSWORD).await;
    add_user(&app, "cal@example.com", "reviewer", PASSWORD).await;
    let bea = browser(&driver, &chromium).await;
    let cal = browser(&driver, &chromium).await;

    sign_in(&bea, &app, "bea@example.com").await;
    bea.find(Locator::Id("queue-empty"))
        .await
        .expect("an empty queue to start");
    // A marker that a reload would wipe.
    bea.execute("window.__stillHere = true;", vec![])
        .await
        .unwrap();

    // A customer writes; the case appears on the open page by itself.
    let case = app
        .message(
            "cust-7",
            "My card 4111 1111 1111 1111 has not arrived and I want to talk to a human",
        )
        .await;
    assert_eq!(case["outcome"], "queued", "{case}");
    let id = case["review_id"].as_str().unwrap().to_string();
    let row = format!("tr.row[data-id=\"{id}\"]");
    bea.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(&row))
        .await
        .expect("the new case appears live");
    let not_reloaded = bea
        .execute("return window.__stillHere === true;", vec![])
        .await
        .unwrap();
    assert_eq!(
        not_reloaded,
        json!(true),
        "the queue updated without a reload"
    );
    let listed = bea
        .find(Locator::Css(&row))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !listed.contains("4111 1111 1111 1111"),
        "the card number is masked: {listed}"
    );
    screenshot(&bea, "queue").await;

    // The second reviewer opens the same case.
    sign_in(&cal, &app, "cal@example.com").await;
    cal.goto(&app.url(&format!("/console/items/{id}")))
        .await
        .unwrap();
    cal.find(Locator::Id("claim"))
        .await
        .expect("a claim button");

    // `n` claims the next case and opens it.
    press(&bea, 'n').await;
    bea.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("reply"))
        .await
        .expect("the editor of the claimed case");
    assert_eq!(path_of(&bea, &app).await, format!("/console/items/{id}"));
    let highlighted = bea
        .find(Locator::Css("mark.flag"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(highlighted, "**** **** **** 1111");
    screenshot(&bea, "item").await;

    // The other reviewer's open page learns of the claim by itself (it
    // reloads, as nothing was typed there) and cannot take the case.
    let mut disabled = None;
    for _ in 0..100 {
        if let Ok(claim) = cal.find(Locator::Id("claim")).await {
            disabled = claim.attr("disabled").await.ok().flatten();
            if disabled.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        disabled.is_some(),
        "the claim button is disabled once bea holds the case"
    );
    let holder = cal
        .find(Locator::Id("item-state"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(holder.contains("bea@example.com"), "{holder}");
    cal.execute(
        "document.getElementById('claim').closest('form').submit();",
        vec![],
    )
    .await
    .unwrap();
    let refused = cal
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("action-error"))
        .await
        .expect("an error instead of a second claim")
        .text()
        .await
        .unwrap();
    assert!(!refused.is_empty());
    let state: Value = app
        .get(&format!("/v1/reviews/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        state["item"]["claimed_by"], "bea@example.com",
        "still bea's"
    );

    // Edit the draft and send it with Ctrl+Enter.
    let reply = "Hello, your new card was posted yesterday and arrives within 3 days.";
    fill(&bea, "reply", reply).await;
    let send = KeyActions::new("keyboard".into())
        .then(KeyAction::Down {
            value: Key::Control.into(),
        })
        .then(KeyAction::Down {
            value: Key::Enter.into(),
        })
        .then(KeyAction::Up {
            value: Key::Enter.into(),
        })
        .then(KeyAction::Up {
            value: Key::Control.into(),
        });
    bea.perform_actions(send).await.unwrap();
    bea.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("notice"))
        .await
        .expect("back on the queue with a notice");
    assert_eq!(path_of(&bea, &app).await, "/console/queue?notice=resolved");
    assert!(
        bea.find(Locator::Css(&row)).await.is_err(),
        "the case left the queue"
    );

    // The customer's conversation has the reply.
    let last = app.last_message(&case["conversation_id"]).await;
    assert_eq!(last["role"], "reviewer");
    assert_eq!(last["body"], reply);

    // A post without the CSRF token is refused, even with the session cookie.
    let status = bea
        .execute_async(
            "const done = arguments[0]; \
             fetch('/console/next', { method: 'POST', credentials: 'same-origin', body: new URLSearchParams({ reviewer: 'x' }) }).then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));

    bea.goto(&app.url("/console/dashboard?days=1"))
        .await
        .unwrap();
    let charts = bea.find_all(Locator::Css("figure svg")).await.unwrap();
    assert!(charts.len() >= 5, "dashboard charts: {}", charts.len());
    screenshot(&bea, "dashboard").await;
    bea.goto(&app.url(&format!("/console/items/{id}/audit")))
        .await
        .unwrap();
    let audit = bea
        .find(Locator::Id("audit"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        audit.contains("resolved.edit") && audit.contains("bea@example.com"),
        "{audit}"
    );

    // Narrow screens: no sideways scrolling.
    bea.set_window_size(390, 844).await.unwrap();
    for (path, name) in [
        ("/console/queue", "queue-narrow"),
        (&*format!("/console/items/{id}"), "item-narrow"),
    ] {
        bea.goto(&app.url(path)).await.unwrap();
        let overflow = bea
            .execute(
                "return document.documentElement.scrollWidth - window.innerWidth;",
                vec![],
            )
            .await
            .unwrap();
        screenshot(&bea, name).await;
        assert!(
            overflow.as_i64().unwrap_or(0) <= 1,
            "{path} scrolls sideways by {overflow}px"
        );
    }

    bea.close().await.unwrap();
    cal.close().await.unwrap();
}
