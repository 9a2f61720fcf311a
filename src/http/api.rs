//! The chat-frontend API: post a customer message, read a conversation.
//!
//! A client that sends `Accept: text/event-stream` gets the answer as
//! server-sent events: `delta` events with pieces of an LLM reply as it is
//! written (`{"text": …}`), then one `outcome` event with the same body the
//! JSON call returns — or one `error` event with a problem+json body. The
//! `outcome` is authoritative: a streamed reply can still end in review (for
//! example when the model's output fails its schema), and then `outcome` says
//! `queued` and carries the holding reply to show instead. Closing the stream
//! cancels the work, as closing a JSON request does; nothing is stored then,
//! and a retry with the same `Idempotency-Key` starts afresh.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::AppState;
use super::auth::AuthTenant;
use super::error::{ApiError, ApiJson};
use crate::pipeline::{Customer, Inbound};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(post_message))
        .route("/v1/conversations/{id}", get(get_conversation))
}

/// Unknown fields are refused: a typo such as `conversationId` must not
/// silently start a new conversation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageRequest {
    conversation_id: Option<Uuid>,
    customer: CustomerRequest,
    text: String,
    channel: Option<String>,
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomerRequest {
    id: String,
    name: Option<String>,
    email: Option<String>,
}

const MAX_IDEMPOTENCY_KEY: usize = 255;
const MAX_SHORT_FIELD: usize = 200;

async fn post_message(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    headers: HeaderMap,
    ApiJson(body, raw): ApiJson<MessageRequest>,
) -> Result<Response, ApiError> {
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v.to_str().ok().map(str::trim).unwrap_or_default();
            if key.is_empty()
                || key.len() > MAX_IDEMPOTENCY_KEY
                || !key.chars().all(|c| c.is_ascii_graphic())
            {
                return Err(ApiError::field(
                    "Idempotency-Key",
                    format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
                ));
            }
            Some(key.to_string())
        }
    };
    let max_chars = state.config.messages.max_text_chars;
    let text = body.text.trim();
    if text.is_empty() {
        return Err(ApiError::field("text", "must not be empty"));
    }
    if text.chars().count() > max_chars {
        return Err(ApiError::field(
            "text",
            format!("must be at most {max_chars} characters"),
        ));
    }
    let short = |field: &str, value: &Option<String>| -> Result<Option<String>, ApiError> {
        match value.as_deref().map(str::trim) {
            Some(v) if v.chars().count() > MAX_SHORT_FIELD => Err(ApiError::field(
                field,
                format!("must be at most {MAX_SHORT_FIELD} characters"),
            )),
            Some("") | None => Ok(None),
            Some(v) => Ok(Some(v.to_string())),
        }
    };
    let customer_id = short("customer.id", &Some(body.customer.id.clone()))?
        .ok_or_else(|| ApiError::field("customer.id", "must not be empty"))?;
    let email = short("customer.email", &body.customer.email)?;
    if let Some(email) = &email
        && !email.contains('@')
    {
        return Err(ApiError::field("customer.email", "is not an email address"));
    }
    if body.metadata.as_ref().is_some_and(|m| !m.is_object()) {
        return Err(ApiError::field("metadata", "must be a JSON object"));
    }
    // serde_json sorts object keys, so the same body always hashes the same.
    let request_hash = hex::encode(Sha256::digest(raw.to_string().as_bytes()));
    let inbound = Inbound {
        conversation_id: body.conversation_id,
        customer: Customer {
            id: customer_id,
            name: short("customer.name", &body.customer.name)?,
            email,
        },
        text: text.to_string(),
        channel: short("channel", &body.channel)?,
        metadata: body.metadata,
        idempotency_key,
        request_hash,
    };
    let wants_stream = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_stream {
        return Ok(stream_message(state, tenant, inbound));
    }
    let (outcome, replayed) = state.pipeline.handle(&tenant, &inbound).await?;
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut response = (status, Json(outcome)).into_response();
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            "true".parse().expect("static header value"),
        );
    }
    Ok(response)
}

async fn get_conversation(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::NotFound(format!("conversation {id} not found"));
    let conversation_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let conversation = state
        .store
        .conversation(tenant.id, conversation_id)
        .await?
        .ok_or_else(not_found)?;
    let messages = state
        .store
        .conversation_messages(tenant.id, conversation_id)
        .await?;
    let open_review = state
        .store
        .open_review_for_conversation(tenant.id, conversation_id)
        .await?;
    Ok(Json(json!({
        "conversation": conversation,
        "messages": messages,
        "open_review_id": open_review.map(|r| r.id),
    })))
}

/// Aborts the message's task when the SSE response is dropped (client gone).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the message in a task that sends reply pieces over a channel; the
/// stream relays them as `delta` events until the task ends (dropping its
/// sender), then sends its result as the `outcome` or `error` event.
fn stream_message(state: AppState, tenant: crate::store::Tenant, inbound: Inbound) -> Response {
    let (deltas, received) = tokio::sync::mpsc::unbounded_channel::<String>();
    let task = tokio::spawn(async move {
        state
            .pipeline
            .handle_streaming(&tenant, &inbound, Some(&deltas))
            .await
    });
    let events =
        futures::stream::unfold(Some((received, AbortOnDrop(task))), |running| async move {
            let (mut received, mut task) = running?;
            if let Some(text) = received.recv().await {
                let event = Event::default()
                    .event("delta")
                    .json_data(json!({ "text": text }));
                return Some((event, Some((received, task))));
            }
            let result = match (&mut task.0).await {
                Ok(result) => result.map_err(ApiError::from),
                Err(err) => Err(ApiError::Internal(anyhow::anyhow!(
                    "message task failed: {err}"
                ))),
            };
            Some((final_event(result).await, None))
        })
        .map(|event| {
            Ok::<_, std::convert::Infallible>(
                event.unwrap_or_else(|_| Event::default().event("error").data("{}")),
            )
        });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The last event of a stream: the outcome, or the problem+json body of the error.
async fn final_event(
    result: Result<(crate::pipeline::Outcome, bool), ApiError>,
) -> Result<Event, axum::Error> {
    match result {
        Ok((outcome, replayed)) => {
            let mut body = serde_json::to_value(&outcome).unwrap_or_default();
            body["replayed"] = json!(replayed);
            Event::default().event("outcome").json_data(body)
        }
        Err(err) => {
            let response = err.into_response();
            let status = response.status().as_u16();
            let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            let mut body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            body["status"] = json!(status);
            Event::default().event("error").json_data(body)
        }
    }
}
