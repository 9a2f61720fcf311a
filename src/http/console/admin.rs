//! User management for admins: list the workspace's users, add one, disable
//! or re-enable an account. Disabling ends the user's sessions at once.

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::session::ConsoleUser;
use super::{Page, message_page, render_status};
use crate::http::AppState;
use crate::store::{StoreError, User};
use crate::users::{UserRole, hash_password, normalise_email};

fn forbidden(user: &ConsoleUser) -> Response {
    message_page(
        StatusCode::FORBIDDEN,
        user,
        "Admins only",
        "Only an admin of this workspace can manage users.",
    )
}

async fn users_page(
    state: &AppState,
    user: &ConsoleUser,
    status: StatusCode,
    error: Option<&str>,
    notice: Option<&str>,
) -> Response {
    let users = match state.store.list_users(user.tenant_id()).await {
        Ok(users) => users,
        Err(err) => {
            tracing::error!(error = %err, "cannot list users");
            return message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                user,
                "Unavailable",
                "The database did not answer.",
            );
        }
    };
    let now = Utc::now();
    let rows: Vec<_> = users
        .iter()
        .map(|u| {
            json!({
                "email": u.email,
                "role": u.role,
                "created": u.created_at.format("%Y-%m-%d").to_string(),
                "disabled": u.disabled_at.is_some(),
                "locked": u.locked_until.is_some_and(|t| t > now),
                "me": u.id == user.user.id,
            })
        })
        .collect();
    let mut page = Page::for_user("Users", user, "users");
    page.insert("users", &rows);
    page.insert("error", &error);
    page.insert("notice", &notice);
    render_status(status, "users.html", &page)
}

pub async fn users(State(state): State<AppState>, user: ConsoleUser) -> Response {
    if !user.is_admin() {
        return forbidden(&user);
    }
    users_page(&state, &user, StatusCode::OK, None, None).await
}

#[derive(Debug, Deserialize)]
pub struct AddUserForm {
    #[serde(default, rename = "_csrf")]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
}

pub async fn add_user(
    State(state): State<AppState>,
    user: ConsoleUser,
    Form(form): Form<AddUserForm>,
) -> Response {
    if let Err(refused) = user.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    if !user.is_admin() {
        return forbidden(&user);
    }
    let (state_ref, user_ref) = (&state, &user);
    let invalid = |message: String| async move {
        users_page(
            state_ref,
            user_ref,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(&message),
            None,
        )
        .await
    };
    let email = match normalise_email(&form.email) {
        Ok(email) => email,
        Err(err) => return invalid(format!("`email`: {err}")).await,
    };
    let role = match form.role.as_str() {
        "reviewer" => UserRole::Reviewer,
        "admin" => UserRole::Admin,
        other => return invalid(format!("`role`: `{other}` is not reviewer or admin")).await,
    };
    let password = form.password.clone();
    let hash = match tokio::task::spawn_blocking(move || hash_password(&password)).await {
        Ok(Ok(hash)) => hash,
        Ok(Err(err)) => return invalid(format!("`password`: {err}")).await,
        Err(_) => return invalid("`password`: could not be hashed".into()).await,
    };
    let new = User {
        id: uuid::Uuid::now_v7(),
        tenant_id: user.tenant_id(),
        email: email.clone(),
        role: role.as_str().into(),
        password_hash: hash,
        created_at: Utc::now(),
        disabled_at: None,
        failed_logins: 0,
        locked_until: None,
    };
    match state.store.create_user(&new).await {
        Ok(()) => {
            tracing::info!(admin = %user.reviewer(), user = %email, role = role.as_str(), "user added in the console");
            users_page(
                &state,
                &user,
                StatusCode::OK,
                None,
                Some(&format!("Added {email} as {}.", role.as_str())),
            )
            .await
        }
        Err(StoreError::Conflict(_)) => {
            invalid(format!("`email`: {email} already has an account here")).await
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot add user");
            message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &user,
                "Unavailable",
                "The database did not answer; the user was not added.",
            )
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct UserStateForm {
    #[serde(default, rename = "_csrf")]
    csrf: String,
    #[serde(default)]
    email: String,
    /// `disable` or `enable`.
    #[serde(default)]
    action: String,
}

pub async fn set_user_state(
    State(state): State<AppState>,
    user: ConsoleUser,
    Form(form): Form<UserStateForm>,
) -> Response {
    if let Err(refused) = user.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    if !user.is_admin() {
        return forbidden(&user);
    }
    let email = form.email.trim().to_lowercase();
    if email == user.reviewer() {
        return users_page(
            &state,
            &user,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("You cannot disable your own account."),
            None,
        )
        .await;
    }
    let disabled_at = match form.action.as_str() {
        "disable" => Some(Utc::now()),
        "enable" => None,
        _ => {
            return users_page(
                &state,
                &user,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("`action` must be disable or enable."),
                None,
            )
            .await;
        }
    };
    let tenant = user.tenant_id();
    let result = async {
        let Some(target) = state.store.user_by_email(tenant, &email).await? else {
            return Ok(false);
        };
        state
            .store
            .set_user_disabled(tenant, &email, disabled_at)
            .await?;
        if disabled_at.is_some() {
            state.store.delete_user_sessions(target.id).await?;
        }
        Ok::<_, StoreError>(true)
    }
    .await;
    match result {
        Ok(true) => {
            tracing::info!(admin = %user.reviewer(), user = %email, action = %form.action, "user state changed in the console");
            Redirect::to("/console/users").into_response()
        }
        Ok(false) => {
            users_page(
                &state,
                &user,
                StatusCode::NOT_FOUND,
                Some("No such user."),
                None,
            )
            .await
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot change user state");
            message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &user,
                "Unavailable",
                "The database did not answer; nothing changed.",
            )
        }
    }
}

/// The outbox as admins see it: dead letters with their last error and a
/// retry button, and the most recent deliveries.
pub async fn notifications(State(state): State<AppState>, user: ConsoleUser) -> Response {
    if !user.is_admin() {
        return forbidden(&user);
    }
    let tenant = user.tenant_id();
    let rows = async {
        let dead = state.store.list_notifications(tenant, "dead", 100).await?;
        let pending = state
            .store
            .list_notifications(tenant, "pending", 100)
            .await?;
        let delivered = state
            .store
            .list_notifications(tenant, "delivered", 20)
            .await?;
        Ok::<_, StoreError>((dead, pending, delivered))
    }
    .await;
    let (dead, pending, delivered) = match rows {
        Ok(rows) => rows,
        Err(err) => {
            tracing::error!(error = %err, "cannot list notifications");
            return message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &user,
                "Unavailable",
                "The database did not answer.",
            );
        }
    };
    let now = Utc::now();
    let view = |rows: &[crate::store::Notification]| -> Vec<serde_json::Value> {
        rows.iter()
            .map(|n| {
                json!({
                    "id": n.id,
                    "channel": n.channel,
                    "target": n.target,
                    "event": n.event,
                    "attempts": n.attempts,
                    "error": n.last_error,
                    "review_id": n.review_id,
                    "created": super::ago(n.created_at, now),
                    "next": (n.state == "pending").then(|| super::sla_label(n.next_attempt_at, now).replace("due in", "next try in").replace("breached", "due")),
                })
            })
            .collect()
    };
    let mut page = Page::for_user("Notifications", &user, "notifications");
    page.insert("dead", &view(&dead));
    page.insert("pending", &view(&pending));
    page.insert("delivered", &view(&delivered));
    render_status(StatusCode::OK, "notifications.html", &page)
}

#[derive(Debug, Deserialize)]
pub struct RetryForm {
    #[serde(default, rename = "_csrf")]
    csrf: String,
    #[serde(default)]
    id: String,
}

pub async fn retry_notification(
    State(state): State<AppState>,
    user: ConsoleUser,
    Form(form): Form<RetryForm>,
) -> Response {
    if let Err(refused) = user.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    if !user.is_admin() {
        return forbidden(&user);
    }
    let Ok(id) = uuid::Uuid::parse_str(form.id.trim()) else {
        return message_page(
            StatusCode::NOT_FOUND,
            &user,
            "Not found",
            "There is no such notification.",
        );
    };
    match state
        .store
        .retry_notification(user.tenant_id(), id, Utc::now())
        .await
    {
        Ok(true) => {
            tracing::info!(admin = %user.reviewer(), notification = %id, "dead letter retried from the console");
            Redirect::to("/console/notifications").into_response()
        }
        Ok(false) => message_page(
            StatusCode::NOT_FOUND,
            &user,
            "Not found",
            "There is no such dead letter (it may have been retried already).",
        ),
        Err(err) => {
            tracing::error!(error = %err, "cannot retry notification");
            message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &user,
                "Unavailable",
                "The database did not answer; nothing changed.",
            )
        }
    }
}
