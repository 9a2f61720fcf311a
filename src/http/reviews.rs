//! The review queue over JSON: list, inspect, claim, heartbeat, release and
//! resolve. The console (HTML) and Slack use the same `ReviewService`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use uuid::Uuid;

use super::AppState;
use super::auth::AuthTenant;
use super::error::{ApiError, ApiJson};
use crate::review::{Action, effective_state};
use crate::store::{ReviewFilter, ReviewItem, ReviewState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/reviews", get(list))
        .route("/v1/reviews/claim", post(claim_next))
        .route("/v1/reviews/{id}", get(show))
        .route("/v1/reviews/{id}/events", get(events))
        .route("/v1/reviews/{id}/claim", post(claim))
        .route("/v1/reviews/{id}/heartbeat", post(heartbeat))
        .route("/v1/reviews/{id}/release", post(release))
        .route("/v1/reviews/{id}/resolve", post(resolve))
        .route("/v1/reviews/{id}/reroute", post(reroute))
        .route("/v1/reviews/{id}/request-info", post(request_info))
        .route("/v1/reviews/{id}/assign", post(assign))
        .route("/v1/spot-checks", get(spot_checks))
        .route("/v1/spot-checks/{id}", get(spot_check))
        .route("/v1/spot-checks/{id}/label", post(label_spot_check))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpotCheckLabel {
    reviewer: String,
    /// The intent the message was about: the routed one when the answer was
    /// right, another SOP's intent, or `oos` when no SOP covers it.
    intent: String,
}

/// The spot checks to label (`?state=pending`, the default, oldest first) or
/// the labelled ones (`?state=labelled`, latest first), with the accuracy
/// the labels of the last `?days=` (30) show.
async fn spot_checks(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let labelled = match query.get("state").map(String::as_str) {
        None | Some("pending") => false,
        Some("labelled") => true,
        Some(other) => {
            return Err(ApiError::field(
                "state",
                format!("`{other}` is not one of pending, labelled"),
            ));
        }
    };
    let limit = limit_of(&query)?;
    let days = match query.get("days") {
        None => 30,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=3660).contains(&n) => n,
            _ => return Err(ApiError::field("days", "must be an integer from 1 to 3660")),
        },
    };
    let items = state.store.spot_checks(tenant.id, labelled, limit).await?;
    let groups = state
        .store
        .spot_check_counts(tenant.id, Utc::now() - chrono::Duration::days(days))
        .await?;
    let report = crate::review::SpotCheckReport::new(&groups, state.config.routing.target_accuracy);
    Ok(Json(json!({
        "items": items,
        "summary": report.total,
        "by_sop": report.by_sop,
        "days": days,
    })))
}

fn spot_check_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("spot check {id} not found")))
}

async fn spot_check(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let check = state
        .store
        .spot_check(tenant.id, spot_check_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("spot check {id} not found")))?;
    Ok(Json(json!(check)))
}

async fn label_spot_check(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
    ApiJson(body, _): ApiJson<SpotCheckLabel>,
) -> Result<Json<Value>, ApiError> {
    let check = state
        .reviews
        .label_spot_check(tenant.id, spot_check_id(&id)?, &body.reviewer, &body.intent)
        .await
        .map_err(|err| match err {
            crate::review::ReviewError::NotFound => {
                ApiError::NotFound(format!("spot check {id} not found"))
            }
            other => other.into(),
        })?;
    Ok(Json(json!(check)))
}

/// `?limit=`: 1 to 500, 50 when absent.
fn limit_of(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    match query.get("limit") {
        None => Ok(50),
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=500).contains(&n) => Ok(n),
            _ => Err(ApiError::field("limit", "must be an integer from 1 to 500")),
        },
    }
}

#[derive(Debug, Deserialize)]
struct ReviewerRequest {
    reviewer: String,
}

#[derive(Debug, Deserialize)]
struct ResolveRequest {
    reviewer: String,
    #[serde(flatten)]
    action: Action,
    /// The intent the message really was about, for the feedback store.
    intent: Option<String>,
    /// The item version the reviewer saw; a stale one fails with 409.
    version: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RerouteRequest {
    reviewer: String,
    /// Id of the active SOP that should govern the case.
    sop: String,
    /// The message's intent among that SOP's intents (needed when it has several).
    intent: Option<String>,
    version: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignRequest {
    /// Who assigns (recorded in the audit trail).
    reviewer: String,
    /// Who gets the item.
    assignee: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InfoRequestBody {
    reviewer: String,
    /// The question sent to the customer.
    message: String,
    version: Option<i64>,
}

fn view(item: &ReviewItem) -> Value {
    let mut v = serde_json::to_value(item).unwrap_or_default();
    let now = Utc::now();
    v["state"] = json!(effective_state(item, now));
    // The SLA is paused while the item waits for the customer.
    v["breached"] =
        json!(item.state != "resolved" && item.waiting_since.is_none() && item.due_at < now);
    v
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("review item {id} not found")))
}

async fn list(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let state_filter = match query.get("state").map(String::as_str) {
        None | Some("pending") => None,
        Some("open") => Some(ReviewState::Open),
        Some("claimed") => Some(ReviewState::Claimed),
        Some("waiting") => Some(ReviewState::Waiting),
        Some("resolved") => Some(ReviewState::Resolved),
        Some(other) => {
            return Err(ApiError::field(
                "state",
                format!("`{other}` is not one of pending, open, claimed, waiting, resolved"),
            ));
        }
    };
    let limit = limit_of(&query)?;
    let filter = ReviewFilter {
        state: state_filter,
        limit,
    };
    let items = state
        .store
        .list_reviews(tenant.id, &filter, Utc::now())
        .await?;
    Ok(Json(
        json!({ "items": items.iter().map(view).collect::<Vec<_>>() }),
    ))
}

async fn show(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let item = state
        .store
        .review(tenant.id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("review item {id} not found")))?;
    let decision = state.store.decision(tenant.id, item.decision_id).await?;
    let messages = state
        .store
        .conversation_messages(tenant.id, item.conversation_id)
        .await?;
    let events = state.store.review_events(tenant.id, id).await?;
    let sop = item
        .sop_ref
        .as_deref()
        .and_then(|r| state.pipeline.sops().versions.iter().find(|s| s.reference() == r))
        .map(|s| json!({ "ref": s.reference(), "title": s.file.title, "agent": s.file.agent, "steps": s.file.steps }));
    Ok(Json(json!({
        "item": view(&item),
        "decision": decision,
        "sop": sop,
        "messages": messages,
        "events": events,
    })))
}

async fn events(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    if state.store.review(tenant.id, id).await?.is_none() {
        return Err(ApiError::NotFound(format!("review item {id} not found")));
    }
    let events = state.store.review_events(tenant.id, id).await?;
    Ok(Json(json!({ "events": events })))
}

async fn claim_next(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    ApiJson(body, _): ApiJson<ReviewerRequest>,
) -> Result<Response, ApiError> {
    match state.reviews.claim_next(tenant.id, &body.reviewer).await? {
        Some(item) => Ok(Json(view(&item)).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn claim(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
    ApiJson(body, _): ApiJson<ReviewerRequest>,
) -> Result<Json<Value>, ApiError> {
    let item = state
        .reviews
        .claim_item(tenant.id, parse_id(&id)?, &body.reviewer)
        .await?;
    Ok(Json(view(&item)))
}

async fn heartbeat(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
    ApiJson(body, _): ApiJson<ReviewerRequest>,
) -> Result<Json<Value>, ApiError> {
    let item = state
        .reviews
        .renew(tenant.id, parse_id(&id)?, &body.reviewer)
        .await?;
    Ok(Json(view(&item)))
}

async fn release(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
    ApiJson(body, _): ApiJson<ReviewerRequest>,
) -> Result<Json<Value>, ApiError> {
    let item = state
        .reviews
        .release(tenant.id, parse_id(&id)?, &body.reviewer)
        .await?;
    Ok(Json(view(&item)))
}

async fn resolve(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
    ApiJson(body, _): ApiJson<ResolveRequest>,
) -> Result<Json<Value>, ApiError> {
    let item = state
        .reviews
        .resolve(
            tenant.id,
            parse_id(&id)?,
            &body.reviewer,
            body.action,
            body.intent,
            body.version,
        )
        .await?;
    Ok(Json(view(&item)))
}

async fn reroute(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
    ApiJson(body, _): ApiJson<RerouteRequest>,
) -> Result<Json<Value>, ApiError> {
    let item = state
        .reviews
        .reroute(
            tenant.id,
            parse_id(&id)?,
            &body.reviewer,
            &body.sop,
            body.intent,
            body.version,
        )
        .await?;
    Ok(Json(view(&item)))
}

async fn request_info(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
    ApiJson(body, _): ApiJson<InfoRequestBody>,
) -> Result<Json<Value>, ApiError> {
    let item = state
        .reviews
        .request_info(
            tenant.id,
            parse_id(&id)?,
            &body.reviewer,
            &body.message,
            body.version,
        )
        .await?;
    Ok(Json(view(&item)))
}

async fn assign(
    State(state): State<AppState>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
    ApiJson(body, _): ApiJson<AssignRequest>,
) -> Result<Json<Value>, ApiError> {
    let item = state
        .reviews
        .assign(tenant.id, parse_id(&id)?, &body.reviewer, &body.assignee)
        .await?;
    Ok(Json(view(&item)))
}
