//! A stand-in for Slack on 127.0.0.1:0, speaking its wire protocol: the Web
//! API methods sopr calls (`chat.postMessage`, `chat.update`, `users.info`,
//! bearer token checked, `{"ok": …}` answers), an incoming webhook, and the
//! `response_url` interactions answer to. It records every call and can fail
//! the next N Web API calls with 500.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub const TOKEN: &str = "xoxb-test-token";

#[derive(Debug, Clone)]
pub struct Call {
    /// `chat.postMessage`, `chat.update`, `users.info`, `incoming` or `respond`.
    pub method: String,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    fail_next: u32,
    /// Slack user id → email, for `users.info`.
    emails: HashMap<String, String>,
    /// Messages by ts: what each one shows now.
    messages: HashMap<String, Value>,
    next_ts: u64,
}

pub struct SlackApi {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlackApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = Arc<Mutex<Inner>>;

fn authorised(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

fn failing(inner: &mut Inner) -> bool {
    if inner.fail_next > 0 {
        inner.fail_next -= 1;
        return true;
    }
    false
}

async fn web_api(
    State(inner): State<Shared>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut inner = inner.lock().unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    inner.calls.push(Call {
        method: method.clone(),
        body: body.clone(),
    });
    if failing(&mut inner) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "upstream trouble").into_response();
    }
    if !authorised(&headers) {
        return axum::Json(json!({ "ok": false, "error": "invalid_auth" })).into_response();
    }
    if body["text"].as_str().is_none_or(str::is_empty) || !body["blocks"].is_array() {
        return axum::Json(json!({ "ok": false, "error": "invalid_blocks" })).into_response();
    }
    let answer = match method.as_str() {
        "chat.postMessage" => {
            let channel = body["channel"].as_str().unwrap_or_default();
            if channel == "#no-such-channel" {
                json!({ "ok": false, "error": "channel_not_found" })
            } else {
                inner.next_ts += 1;
                let ts = format!("1700000000.{:06}", inner.next_ts);
                inner.messages.insert(ts.clone(), body.clone());
                json!({ "ok": true, "channel": format!("C{}", channel.trim_start_matches('#').to_uppercase().replace('-', "")), "ts": ts, "message": body })
            }
        }
        "chat.update" => {
            let ts = body["ts"].as_str().unwrap_or_default().to_string();
            if inner.messages.contains_key(&ts)
                && body["channel"].as_str().is_some_and(|c| c.starts_with('C'))
            {
                inner.messages.insert(ts.clone(), body.clone());
                json!({ "ok": true, "channel": body["channel"], "ts": ts })
            } else {
                json!({ "ok": false, "error": "message_not_found" })
            }
        }
        _ => json!({ "ok": false, "error": "unknown_method" }),
    };
    axum::Json(answer).into_response()
}

async fn users_info(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = inner.lock().unwrap();
    let user = query.get("user").cloned().unwrap_or_default();
    inner.calls.push(Call {
        method: "users.info".into(),
        body: json!({ "user": user }),
    });
    if failing(&mut inner) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if !authorised(&headers) {
        return axum::Json(json!({ "ok": false, "error": "invalid_auth" })).into_response();
    }
    axum::Json(match inner.emails.get(&user) {
        Some(email) => json!({ "ok": true, "user": { "id": user, "profile": { "email": email } } }),
        None => json!({ "ok": false, "error": "user_not_found" }),
    })
    .into_response()
}

async fn record(
    State(inner): State<Shared>,
    Path(kind): Path<String>,
    body: axum::body::Bytes,
) -> &'static str {
    inner.lock().unwrap().calls.push(Call {
        method: kind,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    "ok"
}

impl SlackApi {
    pub async fn start() -> SlackApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/api/users.info", get(users_info))
            .route("/api/{method}", post(web_api))
            .route("/hooks/{kind}", post(record))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SlackApi {
            url: format!("http://{addr}"),
            inner,
            task,
        }
    }

    /// The Web API base URL (`notify.slack.api_url`).
    pub fn api_url(&self) -> String {
        format!("{}/api", self.url)
    }

    /// An incoming-webhook URL; its posts are recorded as `incoming`.
    pub fn incoming_url(&self) -> String {
        format!("{}/hooks/incoming", self.url)
    }

    /// A `response_url` for interactions; its posts are recorded as `respond`.
    pub fn response_url(&self) -> String {
        format!("{}/hooks/respond", self.url)
    }

    pub fn fail_next(&self, n: u32) {
        self.inner.lock().unwrap().fail_next = n;
    }

    pub fn add_user(&self, slack_id: &str, email: &str) {
        self.inner
            .lock()
            .unwrap()
            .emails
            .insert(slack_id.into(), email.into());
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.inner
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// What the message with this ts shows now.
    pub fn message(&self, ts: &str) -> Option<Value> {
        self.inner.lock().unwrap().messages.get(ts).cloned()
    }

    /// The ts of every message posted so far, oldest first.
    pub fn posted(&self) -> Vec<String> {
        let mut ts: Vec<String> = self
            .inner
            .lock()
            .unwrap()
            .messages
            .keys()
            .cloned()
            .collect();
        ts.sort();
        ts
    }

    /// Waits up to 15 s until `done` holds for the stand-in.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&SlackApi) -> bool) {
        for _ in 0..300 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for Slack: {what}");
    }
}
