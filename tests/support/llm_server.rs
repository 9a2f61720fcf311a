//! A local OpenAI-compatible server for tests and benchmarks: raw HTTP/1.1 on
//! 127.0.0.1, so that it can misbehave the way real providers do — slow
//! answers, 5xx, 429 with `Retry-After`, connections reset mid-request,
//! malformed bodies, schema-invalid content, slow token streams — and record
//! whether the client gave up on a request (to prove cancellation).
//!
//! Behaviours are queued per server (`push`) and fall back to a default
//! (`set_default`). With no script it answers every request validly: the
//! reply schema gets `{"reply": …, "escalate": false}`, an intent choice
//! gets the first allowed intent.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 after `delay`. `content: None` makes a valid answer for the request's schema.
    Reply {
        content: Option<String>,
        delay: Duration,
    },
    /// An error status after `delay`, with `Retry-After` when given (seconds).
    Status {
        code: u16,
        retry_after: Option<u64>,
        delay: Duration,
    },
    /// Close the connection without answering.
    Reset,
    /// 200 with a body that is not a chat completion.
    Malformed,
    /// 200 with a refusal and `finish_reason: content_filter`.
    Refuse,
    /// Stream the content (auto when `None`) in chunks of `chunk_chars`
    /// characters, `gap` apart, for requests that ask for a stream.
    Stream {
        content: Option<String>,
        chunk_chars: usize,
        gap: Duration,
    },
    /// Stream `chunks` pieces of the content, then cut the connection.
    StreamThenReset { chunks: usize },
}

impl Behaviour {
    pub fn ok() -> Self {
        Behaviour::Reply {
            content: None,
            delay: Duration::ZERO,
        }
    }

    pub fn slow(delay: Duration) -> Self {
        Behaviour::Reply {
            content: None,
            delay,
        }
    }

    pub fn content(content: impl Into<String>) -> Self {
        Behaviour::Reply {
            content: Some(content.into()),
            delay: Duration::ZERO,
        }
    }

    pub fn status(code: u16) -> Self {
        Behaviour::Status {
            code,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub body: Value,
    pub received: Instant,
    /// The client closed the connection before the answer was sent.
    pub cancelled: bool,
    pub answered: bool,
    /// When the answer started going out: `answered_at - received` is the
    /// server's own share of a call's latency.
    pub answered_at: Option<Instant>,
}

#[derive(Default)]
struct State {
    script: Mutex<VecDeque<Behaviour>>,
    default: Mutex<Option<Behaviour>>,
    seen: Mutex<Vec<Seen>>,
}

#[derive(Clone)]
pub struct LlmServer {
    pub name: String,
    /// The API root to configure as a provider's `base_url`.
    pub base_url: String,
    state: Arc<State>,
}

impl LlmServer {
    pub async fn start(name: &str) -> LlmServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = LlmServer {
            name: name.to_string(),
            base_url: format!("http://127.0.0.1:{port}/v1"),
            state: Arc::new(State::default()),
        };
        let handle = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle.clone().connection(stream));
            }
        });
        server
    }

    /// Queues behaviours for the next requests, in order.
    pub fn push(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.state.script.lock().unwrap().extend(behaviours);
    }

    pub fn set_default(&self, behaviour: Behaviour) {
        *self.state.default.lock().unwrap() = Some(behaviour);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    fn next_behaviour(&self) -> Behaviour {
        let scripted = self.state.script.lock().unwrap().pop_front();
        scripted
            .or_else(|| self.state.default.lock().unwrap().clone())
            .unwrap_or_else(Behaviour::ok)
    }

    async fn connection(self, mut stream: TcpStream) {
        let mut buffer = Vec::new();
        loop {
            let Some(body) = read_request(&mut stream, &mut buffer).await else {
                return;
            };
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let index = {
                let mut seen = self.state.seen.lock().unwrap();
                seen.push(Seen {
                    body: body.clone(),
                    received: Instant::now(),
                    cancelled: false,
                    answered: false,
                    answered_at: None,
                });
                seen.len() - 1
            };
            let keep_open = self.respond(&mut stream, &body, index).await;
            if !keep_open {
                return;
            }
        }
    }

    /// Waits `delay` unless the client hangs up first; false if it did.
    async fn wait(&self, stream: &mut TcpStream, delay: Duration, index: usize) -> bool {
        if delay.is_zero() {
            return true;
        }
        let mut probe = [0u8; 1];
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            _ = stream.read(&mut probe) => {
                self.state.seen.lock().unwrap()[index].cancelled = true;
                false
            }
        }
    }

    fn answered(&self, index: usize) {
        let mut seen = self.state.seen.lock().unwrap();
        seen[index].answered = true;
        seen[index].answered_at = Some(Instant::now());
    }

    async fn respond(&self, stream: &mut TcpStream, body: &Value, index: usize) -> bool {
        let wants_stream = body["stream"] == json!(true);
        let behaviour = self.next_behaviour();
        match behaviour {
            Behaviour::Reset => false,
            Behaviour::Malformed => {
                self.answered(index);
                write_response(stream, 200, &[], b"{\"choices\": [oops").await
            }
            Behaviour::Refuse => {
                self.answered(index);
                let mut refusal = completion(&self.name, body, "");
                refusal["choices"][0]["message"] = json!({ "role": "assistant", "content": null, "refusal": "I can't help with that." });
                refusal["choices"][0]["finish_reason"] = json!("content_filter");
                write_response(stream, 200, &[], refusal.to_string().as_bytes()).await
            }
            Behaviour::Status {
                code,
                retry_after,
                delay,
            } => {
                if !self.wait(stream, delay, index).await {
                    return false;
                }
                let retry = retry_after.map(|s| ("Retry-After", s.to_string()));
                let error = json!({"error": {"message": format!("injected {code}"), "type": "test", "param": null, "code": null}});
                self.answered(index);
                write_response(stream, code, retry.as_slice(), error.to_string().as_bytes()).await
            }
            Behaviour::Reply { content, delay } if !wants_stream => {
                if !self.wait(stream, delay, index).await {
                    return false;
                }
                let content = content.unwrap_or_else(|| self.auto_content(body));
                self.answered(index);
                let completion = completion(&self.name, body, &content);
                write_response(stream, 200, &[], completion.to_string().as_bytes()).await
            }
            Behaviour::Reply { content, delay } => {
                if !self.wait(stream, delay, index).await {
                    return false;
                }
                let content = content.unwrap_or_else(|| self.auto_content(body));
                self.stream_reply(stream, body, &content, 12, Duration::ZERO, None, index)
                    .await
            }
            Behaviour::Stream {
                content,
                chunk_chars,
                gap,
            } => {
                let content = content.unwrap_or_else(|| self.auto_content(body));
                self.stream_reply(stream, body, &content, chunk_chars, gap, None, index)
                    .await
            }
            Behaviour::StreamThenReset { chunks } => {
                let content = self.auto_content(body);
                self.stream_reply(
                    stream,
                    body,
                    &content,
                    8,
                    Duration::ZERO,
                    Some(chunks),
                    index,
                )
                .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_reply(
        &self,
        stream: &mut TcpStream,
        body: &Value,
        content: &str,
        chunk_chars: usize,
        gap: Duration,
        cut_after: Option<usize>,
        index: usize,
    ) -> bool {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return false;
        }
        let chars: Vec<char> = content.chars().collect();
        for (i, piece) in chars.chunks(chunk_chars.max(1)).enumerate() {
            if cut_after == Some(i) {
                return false;
            }
            if i > 0 && !self.wait(stream, gap, index).await {
                return false;
            }
            let text: String = piece.iter().collect();
            let chunk = json!({
                "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}],
            });
            if stream
                .write_all(format!("data: {chunk}\n\n").as_bytes())
                .await
                .is_err()
            {
                return false;
            }
        }
        let done = json!({
            "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        });
        let usage = json!({
            "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0,
            "model": body["model"], "choices": [],
            "usage": usage(body, content),
        });
        self.answered(index);
        let _ = stream
            .write_all(format!("data: {done}\n\ndata: {usage}\n\ndata: [DONE]\n\n").as_bytes())
            .await;
        false
    }

    /// A valid answer for the schema the request carries (or the reply schema).
    fn auto_content(&self, body: &Value) -> String {
        let schema = &body["response_format"]["json_schema"]["schema"];
        if let Some(intents) = schema["properties"]["intent"]["enum"].as_array() {
            return json!({ "intent": intents.first().cloned().unwrap_or(Value::Null) })
                .to_string();
        }
        let last_user = body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default();
        let excerpt: String = last_user.chars().take(60).collect();
        json!({
            "reply": format!("[{}] Thanks for your message about \"{excerpt}\". Here is what to do next.", self.name),
            "escalate": false,
        })
        .to_string()
    }
}

fn usage(body: &Value, content: &str) -> Value {
    let prompt = body["messages"].to_string().len() / 4;
    let completion = content.len() / 4;
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

fn completion(name: &str, body: &Value, content: &str) -> Value {
    json!({
        "id": format!("chatcmpl-{name}"),
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "finish_reason": "stop",
        }],
        "usage": usage(body, content),
    })
}

/// Reads one request; returns its body, or `None` when the client closed.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let header_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[header_end..header_end + length].to_vec();
    buffer.drain(..header_end + length);
    Some(body)
}

/// Writes a whole response; true when the connection may be reused.
async fn write_response(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> bool {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await.is_ok()
}
