//! Test harness: a real sopr on a real database, bound to 127.0.0.1:0.
//! SQLite always; Postgres too when `SOPR_TEST_DATABASE_URL` names a server
//! (each test gets its own throw-away database, dropped afterwards).
#![allow(dead_code)]

pub mod console;
pub mod llm_server;
pub mod slack_api;
pub mod smtp_server;
pub mod webhook_receiver;

use std::path::PathBuf;
use std::sync::Arc;

use secrecy::SecretString;
use serde_json::{Value, json};
use sopr::config::Config;
use sopr::store::{Store, Tenant};
use sqlx::Connection;

/// A database that exists for one test.
pub enum TestDb {
    Sqlite {
        url: String,
        _dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        admin_url: String,
        name: String,
    },
}

impl TestDb {
    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            TestDb::Sqlite { .. } => "sqlite",
            TestDb::Postgres { .. } => "postgres",
        }
    }

    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("sopr.db").display());
        TestDb::Sqlite { url, _dir: dir }
    }

    pub async fn postgres(admin_url: &str) -> TestDb {
        let name = format!("sopr_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(admin_url)
            .await
            .expect("connect to SOPR_TEST_DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create throw-away database");
        let url = with_database(admin_url, &name);
        TestDb::Postgres {
            url,
            admin_url: admin_url.to_string(),
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres {
            admin_url, name, ..
        } = self
        {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop runs outside async context: use a private runtime on a thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// `postgres://u@h:5432/db?x=y` with the database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let root = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// Every backend this run can test: SQLite, plus Postgres when configured.
pub async fn databases() -> Vec<TestDb> {
    let mut dbs = vec![TestDb::sqlite()];
    if let Ok(url) = std::env::var("SOPR_TEST_DATABASE_URL")
        && !url.trim().is_empty()
    {
        dbs.push(TestDb::postgres(url.trim()).await);
    }
    dbs
}

/// A `text,intent` file of `rows` rows whose labels are noise: near-identical
/// texts spread over the demo SOPs' intents, so a model trained with them is
/// much worse on held-out data than one without.
pub fn noise_csv(rows: usize) -> String {
    let (sops, _) = sopr::sop::SopSet::load(&sops_dir()).unwrap();
    let intents: Vec<String> = sops.active().flat_map(|s| s.file.intents.clone()).collect();
    let mut noise = String::from("text,intent\n");
    for i in 0..rows {
        let intent = &intents[(i * 7) % intents.len()];
        noise.push_str(&format!(
            "my card or transfer or rate question {i},{intent}\n"
        ));
    }
    noise
}

pub fn sops_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sops")
}

pub fn test_config(db_url: &str) -> Config {
    let mut config = Config::default();
    config.database.url = SecretString::from(db_url.to_string());
    config.database.max_connections = 40;
    config.sops.dir = sops_dir();
    config.bootstrap.demo_tenant = String::new();
    config.server.listen = "127.0.0.1:0".into();
    config.log.level = "warn".into();
    config
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub key: String,
    pub tenant: Tenant,
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// The service's retrainer, not running: tests call `run_once` and `follow_pin`.
    pub retrainer: sopr::retrain::Retrainer,
    pub db: TestDb,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_on(TestDb::sqlite(), |_| {}).await
}

/// Starts sopr on `db`, with a tenant and API key of its own.
pub async fn spawn_app_on(db: TestDb, configure: impl FnOnce(&mut Config)) -> TestApp {
    let tenant_name = format!("tenant-{}", uuid::Uuid::now_v7().simple());
    spawn_app_for(db, &tenant_name, |config| configure(config)).await
}

/// Like `spawn_app_on`, with a tenant of this name (for settings that name it).
pub async fn spawn_app_for(
    db: TestDb,
    tenant_name: &str,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    let mut config = test_config(db.url());
    configure(&mut config);
    sopr::telemetry::init(&config.log);
    let service = sopr::service::build(config).await.expect("service builds");
    let store = service.state.store.clone();
    let config = service.state.config.clone();
    let key = sopr::service::create_key(store.as_ref(), tenant_name)
        .await
        .expect("api key");
    let (tenant, _) = store.ensure_tenant(tenant_name).await.expect("tenant");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    if let Some(dispatcher) = service.dispatcher {
        tokio::spawn(dispatcher.run());
    }
    tokio::spawn(sopr::serve(listener, service.state, std::future::pending()));
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        key,
        tenant,
        store,
        config,
        retrainer: service.retrainer,
        db,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("request")
    }

    /// The conversation `id` (a JSON string, as the API returns it) with its messages.
    pub async fn conversation(&self, id: &Value) -> Value {
        let id = id.as_str().expect("conversation id is a string");
        let response = self.get(&format!("/v1/conversations/{id}")).await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("json body")
    }

    /// The newest message of conversation `id` (a JSON string).
    pub async fn last_message(&self, id: &Value) -> Value {
        let conversation = self.conversation(id).await;
        conversation["messages"]
            .as_array()
            .and_then(|m| m.last())
            .cloned()
            .expect("the conversation has messages")
    }

    /// Posts a customer message and returns the JSON outcome (asserting 201).
    pub async fn message(&self, customer: &str, text: &str) -> Value {
        self.message_in(None, customer, text).await
    }

    pub async fn message_in(
        &self,
        conversation: Option<&str>,
        customer: &str,
        text: &str,
    ) -> Value {
        let mut body = json!({ "customer": { "id": customer, "name": "Sam" }, "text": text });
        if let Some(c) = conversation {
            body["conversation_id"] = json!(c);
        }
        let response = self.post("/v1/messages", &body).await;
        let status = response.status();
        let value: Value = response.json().await.expect("json body");
        assert_eq!(status, 201, "unexpected response: {value}");
        value
    }
}

/// Reads a problem+json response, asserting its status and content type.
pub async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], status);
    body
}

/// A provider entry pointing at a local test server.
pub fn llm_provider(server: &llm_server::LlmServer) -> sopr::config::ProviderConfig {
    sopr::config::ProviderConfig {
        name: server.name.clone(),
        base_url: server.base_url.clone(),
        model: format!("{}-model", server.name),
        api_key_env: None,
        max_concurrency: 16,
        timeout_ms: 2_000,
        price_input_per_1k: 0.001,
        price_output_per_1k: 0.002,
        output_mode: sopr::config::OutputMode::JsonSchema,
    }
}

/// A `sopr serve` child process, started from a command whose arguments and
/// environment the caller set; killed when dropped.
pub struct Serve {
    pub child: std::process::Child,
    /// Where it listens, `127.0.0.1:PORT`.
    pub addr: String,
    /// The demo tenant's key, when this start created it.
    pub key: Option<String>,
    /// Its log lines after it listens, as they come.
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Serve {
    /// Spawns `command` and waits (up to two minutes) until it listens. Its
    /// log is read to the end, so it never blocks on a full pipe nor fails
    /// writing to a closed one; the lines after it listens are printed, for
    /// a failing test's output.
    pub fn start(mut command: std::process::Command) -> Serve {
        use std::io::{BufRead, BufReader};
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start sopr serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut listening = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if listening {
                    println!("serve: {line}");
                    kept.lock().unwrap().push(line);
                } else {
                    listening = line.contains("sopr listening");
                    let _ = tx.send(line);
                }
            }
        });
        let mut key = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let Ok(line) =
                rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sopr serve did not start");
            };
            if let Some(k) = line.trim().strip_prefix("sopr_") {
                key = Some(format!("sopr_{k}"));
            }
            if line.contains("sopr listening") {
                let addr = listen_address(&line);
                return Serve {
                    child,
                    addr,
                    key,
                    log,
                };
            }
        }
    }
}

impl Serve {
    /// The log lines (after it listens) that contain `text`, once there is
    /// one (or after ten seconds, none): the log arrives through a pipe.
    pub fn log_lines(&self, text: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let found: Vec<String> = {
                let log = self.log.lock().unwrap();
                log.iter().filter(|l| l.contains(text)).cloned().collect()
            };
            if !found.is_empty() || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in serve's "sopr listening" line, JSON or text.
fn listen_address(line: &str) -> String {
    if let Ok(json) = serde_json::from_str::<Value>(line)
        && let Some(addr) = json["fields"]["listen"].as_str()
    {
        return addr.to_string();
    }
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("listen="))
        .unwrap_or_else(|| panic!("no address in {line}"))
        .to_string()
}

/// GETs `url` and returns the body as text.
pub async fn get_text(client: &reqwest::Client, url: &str) -> String {
    let response = client.get(url).send().await.expect("request");
    response.text().await.expect("body")
}
