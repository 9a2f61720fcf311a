//! The one error shape of the HTTP API: `application/problem+json` (RFC 9457).
//! 4xx bodies say what is wrong and which field; 5xx bodies carry only the
//! request id, and the cause chain is logged once under that id.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::pipeline::PipelineError;
use crate::review::ReviewError;
use crate::store::StoreError;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{detail}")]
    Invalid {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let (field, message) = (field.into(), message.into());
        ApiError::Invalid {
            detail: format!("`{field}` {message}"),
            errors: vec![FieldError { field, message }],
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-request",
                "Malformed request",
            ),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::Invalid { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid request",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }
}

pub fn problem(status: StatusCode, slug: &str, title: &str, extra: Value) -> Response {
    let mut body = json!({ "type": format!("urn:sopr:problem:{slug}"), "title": title, "status": status.as_u16() });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let mut extra = json!({});
        match &self {
            ApiError::Internal(err) => {
                // Logged here, once, inside the request span that carries the id.
                tracing::error!(error = format!("{err:#}"), "request failed");
            }
            ApiError::Invalid { detail, errors } => {
                extra = json!({ "detail": detail, "errors": errors });
            }
            other => extra = json!({ "detail": other.to_string() }),
        }
        let mut response = problem(status, slug, title, extra);
        if matches!(self, ApiError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ApiError::NotFound("not found".into()),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            StoreError::Other(err) => ApiError::Internal(err),
        }
    }
}

impl From<PipelineError> for ApiError {
    fn from(err: PipelineError) -> Self {
        match err {
            PipelineError::ConversationNotFound(_) => ApiError::NotFound(err.to_string()),
            PipelineError::CustomerMismatch { .. } => {
                ApiError::field("customer.id", "does not match the conversation's customer")
            }
            PipelineError::IdempotencyKeyReused => ApiError::Invalid {
                detail: err.to_string(),
                errors: vec![FieldError {
                    field: "Idempotency-Key".into(),
                    message: "was already used with a different request body".into(),
                }],
            },
            PipelineError::Store(err) => err.into(),
        }
    }
}

impl From<ReviewError> for ApiError {
    fn from(err: ReviewError) -> Self {
        match err {
            ReviewError::NotFound => ApiError::NotFound(err.to_string()),
            ReviewError::Conflict(message) => ApiError::Conflict(message),
            ReviewError::Invalid { field, message } => ApiError::field(field, message),
            ReviewError::Store(err) => err.into(),
        }
    }
}

/// `Json<T>` with our error shape and the path of the field at fault.
pub struct ApiJson<T>(pub T, pub Value);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<Value>::from_request(req, state)
            .await
            .map_err(|rejection| match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                    "expected `Content-Type: application/json`".into(),
                ),
                JsonRejection::JsonSyntaxError(err) => {
                    ApiError::BadRequest(format!("malformed JSON: {}", root_cause(&err)))
                }
                JsonRejection::BytesRejection(err)
                    if err.status() == StatusCode::PAYLOAD_TOO_LARGE =>
                {
                    ApiError::PayloadTooLarge("request body too large".into())
                }
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::PayloadTooLarge(other.body_text())
                }
                other => ApiError::BadRequest(other.body_text()),
            })?;
        let parsed = serde_path_to_error::deserialize::<_, T>(&value).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner().to_string();
            let (field, message) = describe_serde_error(&path, &inner);
            ApiError::field(field, message)
        })?;
        Ok(ApiJson(parsed, value))
    }
}

fn root_cause(err: &dyn std::error::Error) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Turns serde's `missing field `id`` at path `customer` into (`customer.id`, "is required").
fn describe_serde_error(path: &str, message: &str) -> (String, String) {
    let join = |path: &str, field: &str| {
        if path == "." || path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(field) = rest.split('`').next()
    {
        return (join(path, field), "is required".into());
    }
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some(field) = rest.split('`').next()
    {
        // The path already ends at the unknown field.
        let field = if path.ends_with(field) {
            path.to_string()
        } else {
            join(path, field)
        };
        return (field, "is not a known field".into());
    }
    let field = if path == "." || path.is_empty() {
        "body".to_string()
    } else {
        path.to_string()
    };
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_string();
    (field, message)
}

/// Rewrites every 5xx body (including panics and timeouts) to a problem that
/// carries only the request id.
pub async fn hide_server_errors(req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let response = next.run(req).await;
    if !response.status().is_server_error() {
        return response;
    }
    let status = response.status();
    let mut rewritten = problem(
        status,
        if status == StatusCode::SERVICE_UNAVAILABLE {
            "unavailable"
        } else {
            "internal"
        },
        status.canonical_reason().unwrap_or("Server error"),
        json!({ "request_id": request_id }),
    );
    if let Some(v) = response.headers().get("x-request-id") {
        rewritten.headers_mut().insert("x-request-id", v.clone());
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::describe_serde_error;

    #[test]
    fn names_the_missing_field() {
        assert_eq!(
            describe_serde_error(".", "missing field `text`"),
            ("text".into(), "is required".into())
        );
        assert_eq!(
            describe_serde_error("customer", "missing field `id`"),
            ("customer.id".into(), "is required".into())
        );
        assert_eq!(
            describe_serde_error(
                "conversation_id",
                "UUID parsing failed: invalid length at line 1 column 5"
            )
            .0,
            "conversation_id"
        );
    }
}
