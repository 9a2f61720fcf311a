//! A chat frontend's webhook endpoint on 127.0.0.1:0: records every POST
//! (headers and body), can fail the first N deliveries with 500, answer a
//! fixed status, or hold the response, and counts distinct `webhook-id`s the
//! way a receiver that honours the idempotency key would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

#[derive(Debug, Clone)]
pub struct Delivery {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Delivery {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    Ok,
    /// 500 for the next n requests, then 200.
    FailNext(u32),
    /// Always this status.
    Status(u16),
    /// Wait this long before answering 200 (the sender may give up first).
    Hold(Duration),
}

#[derive(Default)]
struct Inner {
    deliveries: Vec<Delivery>,
    answer: Option<Answer>,
}

pub struct WebhookReceiver {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let answer = {
        let mut inner = inner.lock().unwrap();
        inner.deliveries.push(Delivery {
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        v.to_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            body: body.to_vec(),
        });
        let answer = inner.answer.unwrap_or(Answer::Ok);
        if let Answer::FailNext(n) = answer {
            inner.answer = Some(if n > 1 {
                Answer::FailNext(n - 1)
            } else {
                Answer::Ok
            });
        }
        answer
    };
    match answer {
        Answer::Ok => StatusCode::OK,
        Answer::FailNext(_) => StatusCode::INTERNAL_SERVER_ERROR,
        Answer::Status(code) => StatusCode::from_u16(code).unwrap(),
        Answer::Hold(wait) => {
            tokio::time::sleep(wait).await;
            StatusCode::OK
        }
    }
}

impl WebhookReceiver {
    pub async fn start() -> WebhookReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver {
            url: format!("http://{addr}/hook"),
            inner,
            task,
        }
    }

    pub fn answer(&self, answer: Answer) {
        self.inner.lock().unwrap().answer = Some(answer);
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.lock().unwrap().deliveries.clone()
    }

    /// Distinct `webhook-id`s seen: what a receiver that drops duplicates keeps.
    pub fn distinct_ids(&self) -> usize {
        let ids: std::collections::HashSet<String> = self
            .deliveries()
            .iter()
            .filter_map(|d| d.headers.get("webhook-id").cloned())
            .collect();
        ids.len()
    }

    /// Waits until `n` requests arrived (or 15 s pass), returning them.
    pub async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        for _ in 0..300 {
            let seen = self.deliveries();
            if seen.len() >= n {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.deliveries()
    }
}
