//! HTTP: the JSON API for chat frontends and reviewers. Each area has its own
//! `router()`; they are merged here with the shared layers (request ids,
//! tracing, body limit, timeout, panic catching, problem+json for 5xx).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::{HeaderName, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde_json::json;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::review::ReviewService;
use crate::store::Store;

mod api;
mod auth;
pub mod console;
pub mod error;
mod reviews;
pub mod slack;

/// Shared clients, cloned into every handler.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub pipeline: Arc<Pipeline>,
    pub reviews: Arc<ReviewService>,
    pub config: Arc<Config>,
    /// Slack, when configured: the actions endpoint verifies and answers with it.
    pub slack: Option<Arc<crate::notify::slack::Slack>>,
}

#[derive(Clone, Default)]
struct MakeRequestUuid;

impl MakeRequestId for MakeRequestUuid {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        uuid::Uuid::now_v7()
            .to_string()
            .parse()
            .ok()
            .map(RequestId::new)
    }
}

pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let max_body = state.config.server.max_body_bytes;
    let timeout = Duration::from_secs(state.config.server.request_timeout_secs);
    let console_enabled = state.config.console.enabled;
    let mut router = Router::new()
        .merge(api::router())
        .merge(reviews::router())
        .merge(slack::router());
    if console_enabled {
        router = router.merge(console::router());
    }
    router
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::new())
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout))
        .layer(middleware::from_fn(error::hide_server_errors))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.tenant_count().await {
        Ok(_) => Json(json!({
            "status": "ready",
            "database": state.store.backend(),
            "router_model": state.pipeline.classifier().version(),
        }))
        .into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            error::problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Database unavailable",
                json!({}),
            )
        }
    }
}

async fn metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::metrics().render(),
    )
        .into_response()
}

async fn not_found() -> error::ApiError {
    error::ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> Response {
    error::problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        json!({ "detail": "this endpoint does not accept that method" }),
    )
}
