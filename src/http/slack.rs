//! `POST /slack/actions`: the Slack app's Interactivity request URL.
//!
//! Every request must carry Slack's signature over this exact body and a
//! timestamp within five minutes; each signature is accepted once (recorded
//! in the store, so a replay fails on every replica). The clicking Slack user
//! must map to an enabled sopr user of the item's tenant (`notify.slack.users`
//! or their Slack email), and acts through [`crate::review::ReviewService`]
//! under that user's email, with the same rules and audit trail as the
//! console. The message itself is brought up to date by the outbox
//! (`review.updated`); refusals are told to the clicker alone through the
//! interaction's `response_url`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::error::problem;
use crate::notify::slack::{self, Slack};
use crate::review::{Action, ReviewError, effective_state};
use crate::store::ReviewState;

pub fn router() -> Router<AppState> {
    Router::new().route("/slack/actions", post(actions))
}

#[derive(Deserialize)]
struct Form {
    payload: String,
}

#[derive(Deserialize)]
struct Interaction {
    #[serde(rename = "type")]
    kind: String,
    user: SlackUser,
    #[serde(default)]
    actions: Vec<ClickedAction>,
    #[serde(default)]
    response_url: Option<String>,
}

#[derive(Deserialize)]
struct SlackUser {
    id: String,
}

#[derive(Deserialize)]
struct ClickedAction {
    action_id: String,
    #[serde(default)]
    value: Option<String>,
}

fn refuse(status: StatusCode, slug: &str, title: &str, field: &str, detail: &str) -> Response {
    problem(
        status,
        slug,
        title,
        json!({ "detail": detail, "errors": [ { "field": field, "message": detail } ] }),
    )
}

async fn actions(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(slack) = state.slack.clone().filter(|s| s.signing_secret().is_some()) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "notify.slack.signing_secret_env",
            "Slack interactivity is off: set notify.slack.signing_secret_env",
        );
    };
    let secret = slack.signing_secret().unwrap_or_default();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature = header("x-slack-signature");
    let now = Utc::now();
    if let Err(err) = slack::verify(
        secret,
        header("x-slack-request-timestamp"),
        signature,
        &body,
        now.timestamp(),
    ) {
        metrics::counter!("sopr_slack_requests_refused_total", "reason" => "signature")
            .increment(1);
        tracing::warn!(error = %err, "refused a /slack/actions request");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "slack-signature",
            "Invalid Slack signature",
            err.header(),
            &err.to_string(),
        );
    }
    let signature = signature.unwrap_or_default().trim().to_string();
    let window = chrono::Duration::seconds(2 * slack::MAX_SKEW_SECS);
    match state
        .store
        .remember_slack_request(&signature, now, now - window)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            metrics::counter!("sopr_slack_requests_refused_total", "reason" => "replay")
                .increment(1);
            return refuse(
                StatusCode::CONFLICT,
                "slack-replay",
                "Replayed Slack request",
                "X-Slack-Signature",
                "this signed request was received already",
            );
        }
        Err(err) => return super::error::ApiError::from(err).into_response(),
    }
    let interaction = match serde_urlencoded::from_bytes::<Form>(&body)
        .map_err(|err| err.to_string())
        .and_then(|f| serde_json::from_str::<Interaction>(&f.payload).map_err(|e| e.to_string()))
    {
        Ok(i) => i,
        Err(err) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "malformed-request",
                "Malformed request",
                "payload",
                &format!("must be a form field holding a Slack interaction: {err}"),
            );
        }
    };
    // Other interactions (shortcuts, modals) are not used by sopr's messages.
    if interaction.kind != "block_actions" {
        return StatusCode::OK.into_response();
    }
    let Some(clicked) = interaction.actions.first() else {
        return StatusCode::OK.into_response();
    };
    // "Open in console" is a link; Slack reports the click anyway.
    if !matches!(clicked.action_id.as_str(), "claim" | "approve") {
        return StatusCode::OK.into_response();
    }
    let Some((tenant_id, review_id)) = clicked.value.as_deref().and_then(slack::parse_button_value)
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "Malformed request",
            "payload.actions[0].value",
            "must be the `tenant:item` value sopr put on the button",
        );
    };
    let action = clicked.action_id.clone();
    let outcome = act(
        &state,
        &slack,
        &interaction.user.id,
        tenant_id,
        review_id,
        &action,
    )
    .await;
    let label = if outcome.is_ok() { "done" } else { "refused" };
    metrics::counter!("sopr_slack_actions_total", "action" => action.clone(), "outcome" => label)
        .increment(1);
    match outcome {
        Ok(reviewer) => {
            tracing::info!(review = %review_id, action = %action, reviewer = %reviewer, "Slack action");
        }
        Err(message) => {
            tracing::info!(review = %review_id, action = %action, slack_user = %interaction.user.id, refusal = %message, "Slack action refused");
            if let Some(url) = interaction.response_url {
                tokio::spawn(async move { slack.respond_ephemeral(&url, &message).await });
            }
        }
    }
    StatusCode::OK.into_response()
}

/// Does what the button says as the sopr user behind the Slack user;
/// returns that user's email, or what to tell the clicker.
async fn act(
    state: &AppState,
    slack: &Slack,
    slack_user: &str,
    tenant_id: Uuid,
    review_id: Uuid,
    action: &str,
) -> Result<String, String> {
    let not_linked = || {
        format!(
            "Your Slack account ({slack_user}) is not linked to an enabled sopr reviewer of this workspace. \
             Ask an admin to add you with your Slack email, or to map your Slack id in notify.slack.users."
        )
    };
    let email = slack
        .user_email(slack_user)
        .await
        .map_err(|_| "sopr could not ask Slack who you are; try again.".to_string())?
        .ok_or_else(not_linked)?;
    let user = match state.store.user_by_email(tenant_id, &email).await {
        Ok(Some(user)) if user.disabled_at.is_none() => user,
        Ok(_) => return Err(not_linked()),
        Err(err) => return Err(format!("sopr could not look you up ({err}); try again.")),
    };
    let me = user.email.as_str();
    let reviews = &state.reviews;
    let result = match action {
        "claim" => reviews
            .claim_item(tenant_id, review_id, me)
            .await
            .map(|_| ()),
        _ => approve(state, tenant_id, review_id, me).await,
    };
    result.map(|()| me.to_string()).map_err(|err| match err {
        ReviewError::NotFound => "That case no longer exists.".into(),
        ReviewError::Conflict(message) => format!("Not done: {message}."),
        ReviewError::Invalid { message, .. } => format!("Not done: {message}."),
        ReviewError::Store(err) => format!("sopr could not do that ({err}); try again."),
    })
}

/// Claims the item unless the reviewer holds it already, then sends the
/// draft as it is, guarded by the version the reviewer's claim produced.
async fn approve(
    state: &AppState,
    tenant_id: Uuid,
    review_id: Uuid,
    me: &str,
) -> Result<(), ReviewError> {
    let item = state
        .store
        .review(tenant_id, review_id)
        .await?
        .ok_or(ReviewError::NotFound)?;
    let held = effective_state(&item, Utc::now()) == ReviewState::Claimed
        && item.claimed_by.as_deref() == Some(me);
    let item = if held {
        item
    } else {
        state.reviews.claim_item(tenant_id, review_id, me).await?
    };
    state
        .reviews
        .resolve(
            tenant_id,
            review_id,
            me,
            Action::Approve,
            None,
            Some(item.version),
        )
        .await
        .map(|_| ())
}
