//! The chat-frontend API: post a customer message, read a conversation.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
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
