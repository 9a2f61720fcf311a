//! Console sign-in: sessions, CSRF tokens and the lockout after repeated
//! failed sign-ins.
//!
//! The session cookie carries 32 random bytes; the database keeps only their
//! SHA-256, so a copy of the table cannot be used to sign in. Cookies are
//! `HttpOnly`, `SameSite=Lax`, and `Secure` when the request came over HTTPS
//! (see `console.secure_cookies`). Every state-changing request must carry the
//! session's CSRF token, as the `_csrf` form field or the `X-CSRF-Token`
//! header; the sign-in form itself is protected by a double-submit cookie.

use axum::Form;
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use chrono::{Duration, Utc};
use rand::RngCore;
use serde::Deserialize;
use uuid::Uuid;

use super::{Page, render_status};
use crate::config::SecureCookies;
use crate::http::AppState;
use crate::store::{NewSession, User};
use crate::users::UserRole;

pub const SESSION_COOKIE: &str = "sopr_session";
const LOGIN_CSRF_COOKIE: &str = "sopr_login_csrf";

/// A signed-in reviewer or admin.
#[derive(Debug, Clone)]
pub struct ConsoleUser {
    pub user: User,
    pub csrf_token: String,
}

impl ConsoleUser {
    pub fn is_admin(&self) -> bool {
        self.user.role == UserRole::Admin.as_str()
    }

    /// The name the review queue records for this user.
    pub fn reviewer(&self) -> &str {
        &self.user.email
    }

    pub fn tenant_id(&self) -> Uuid {
        self.user.tenant_id
    }

    /// Checks a submitted CSRF token against the session's.
    pub fn check_csrf(&self, submitted: &str) -> Result<(), CsrfRefused> {
        if constant_time_eq(submitted.as_bytes(), self.csrf_token.as_bytes()) {
            Ok(())
        } else {
            Err(CsrfRefused)
        }
    }

    /// Checks the `X-CSRF-Token` header (for the console's script requests).
    pub fn check_csrf_header(&self, headers: &HeaderMap) -> Result<(), CsrfRefused> {
        let token = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        self.check_csrf(token)
    }
}

/// A state-changing request without the right CSRF token: 403.
#[derive(Debug)]
pub struct CsrfRefused;

impl IntoResponse for CsrfRefused {
    fn into_response(self) -> Response {
        csrf_refused()
    }
}

fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "This form has expired or did not come from the console. Go back, reload the page and try again.",
    )
        .into_response()
}

impl<S> FromRequestParts<S> for ConsoleUser
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let jar = CookieJar::from_headers(&parts.headers);
        let to_login = || {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .filter(|p| parts.method == axum::http::Method::GET && p.starts_with("/console"))
                .unwrap_or("/console/queue");
            let mut target = url_encode(next);
            target.insert_str(0, "/console/login?next=");
            if parts.headers.contains_key("x-csrf-token") {
                // A script request: say so instead of redirecting.
                return (StatusCode::UNAUTHORIZED, "sign in again").into_response();
            }
            Redirect::to(&target).into_response()
        };
        let Some(token) = jar.get(SESSION_COOKIE).map(|c| c.value().to_string()) else {
            return Err(to_login());
        };
        match state.store.session(&hash_token(&token), Utc::now()).await {
            Ok(Some(session)) => Ok(ConsoleUser {
                user: session.user,
                csrf_token: session.csrf_token,
            }),
            Ok(None) => Err(to_login()),
            Err(err) => {
                tracing::error!(error = %err, "cannot read console session");
                Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The database is unavailable; try again shortly.",
                )
                    .into_response())
            }
        }
    }
}

/// Minimal percent-encoding for a `next=` parameter.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where to go after signing in: only a console path, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/console") && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/console/queue",
    }
}

pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn hash_token(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    match state.config.console.secure_cookies {
        SecureCookies::Always => true,
        SecureCookies::Never => false,
        SecureCookies::Auto => headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.eq_ignore_ascii_case("https")),
    }
}

fn cookie(
    name: &'static str,
    value: String,
    secure: bool,
    max_age: Option<Duration>,
) -> Cookie<'static> {
    let mut c = Cookie::build((name, value))
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .build();
    if let Some(age) = max_age {
        c.set_max_age(cookie::time::Duration::seconds(age.num_seconds()));
    }
    c
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

pub async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
    axum::extract::Query(query): axum::extract::Query<LoginQuery>,
) -> Response {
    let token = random_token();
    let jar = jar.add(cookie(
        LOGIN_CSRF_COOKIE,
        token.clone(),
        secure(&state, &headers),
        Some(Duration::hours(1)),
    ));
    let page = login_view(&state, &token, safe_next(query.next.as_deref()), None, "");
    (jar, render_status(StatusCode::OK, "login.html", &page)).into_response()
}

fn login_view(state: &AppState, csrf: &str, next: &str, error: Option<&str>, email: &str) -> Page {
    let mut page = Page::anonymous("Sign in");
    page.insert("csrf_token", csrf);
    page.insert("next", next);
    page.insert("error", &error);
    page.insert("email", email);
    page.insert("tenant", &state.config.bootstrap.demo_tenant);
    page
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
    #[serde(default, rename = "_csrf")]
    csrf: String,
}

/// Why a sign-in failed; the page shows the same words for a wrong password,
/// an unknown email and an unknown tenant.
enum LoginFailure {
    Invalid,
    Locked(i64),
    /// The database failed; nothing to show on the form.
    Unavailable,
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    jar: CookieJar,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = jar
        .get(LOGIN_CSRF_COOKIE)
        .map(|c| c.value().to_string())
        .unwrap_or_default();
    if !constant_time_eq(form.csrf.as_bytes(), expected.as_bytes()) {
        return csrf_refused();
    }
    let next = safe_next(form.next.as_deref()).to_string();
    let user = match authenticate(&state, &form).await {
        Ok(user) => user,
        Err(LoginFailure::Unavailable) => return unavailable(),
        Err(failure) => {
            let (status, message) = match failure {
                LoginFailure::Locked(secs) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "Too many failed sign-ins. Try again in {} or ask an admin to reset your password.",
                        super::format_duration_secs(secs)
                    ),
                ),
                _ => (
                    StatusCode::UNAUTHORIZED,
                    "Wrong workspace, email or password.".to_string(),
                ),
            };
            let page = login_view(&state, &form.csrf, &next, Some(&message), form.email.trim());
            return render_status(status, "login.html", &page);
        }
    };
    let token = random_token();
    let now = Utc::now();
    let lifetime = Duration::hours(i64::from(state.config.console.session_hours));
    let session = NewSession {
        token_hash: hash_token(&token),
        tenant_id: user.tenant_id,
        user_id: user.id,
        csrf_token: random_token(),
        created_at: now,
        expires_at: now + lifetime,
    };
    if let Err(err) = state.store.create_session(&session).await {
        tracing::error!(error = %err, "cannot create console session");
        return unavailable();
    }
    if let Err(err) = state.store.delete_expired_sessions(now).await {
        tracing::warn!(error = %err, "cannot prune expired console sessions");
    }
    tracing::info!(user = %user.email, tenant = %user.tenant_id, "console sign-in");
    let secure = secure(&state, &headers);
    let jar = jar
        .remove(Cookie::build(LOGIN_CSRF_COOKIE).path("/console"))
        .add(cookie(SESSION_COOKIE, token, secure, Some(lifetime)));
    (jar, Redirect::to(&next)).into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "The database is unavailable; try again shortly.",
    )
        .into_response()
}

/// Checks the credentials and applies the lockout.
async fn authenticate(state: &AppState, form: &LoginForm) -> Result<User, LoginFailure> {
    let unavailable = |err: crate::store::StoreError| {
        tracing::error!(error = %err, "sign-in failed on the database");
        LoginFailure::Unavailable
    };
    let email = crate::users::normalise_email(&form.email).ok();
    let tenant = match state.store.tenant_by_name(form.tenant.trim()).await {
        Ok(t) => t,
        Err(err) => return Err(unavailable(err)),
    };
    let user = match (&tenant, &email) {
        (Some(t), Some(e)) => match state.store.user_by_email(t.id, e).await {
            Ok(u) => u.filter(|u| u.disabled_at.is_none()),
            Err(err) => return Err(unavailable(err)),
        },
        _ => None,
    };
    let Some(user) = user else {
        // Same work as a real check, so timing does not tell which accounts exist.
        let password = form.password.clone();
        let _ = tokio::task::spawn_blocking(move || {
            crate::users::verify_password(DUMMY_HASH.as_str(), &password)
        })
        .await;
        return Err(LoginFailure::Invalid);
    };
    let now = Utc::now();
    if let Some(until) = user.locked_until.filter(|t| *t > now) {
        return Err(LoginFailure::Locked((until - now).num_seconds().max(1)));
    }
    let password = form.password.clone();
    let hash = user.password_hash.clone();
    let valid =
        tokio::task::spawn_blocking(move || crate::users::verify_password(&hash, &password))
            .await
            .unwrap_or(false);
    if valid {
        if let Err(err) = state.store.clear_failed_logins(user.id).await {
            return Err(unavailable(err));
        }
        return Ok(user);
    }
    let failures = match state.store.record_failed_login(user.id).await {
        Ok(n) => n,
        Err(err) => return Err(unavailable(err)),
    };
    tracing::warn!(user = %user.email, failures, "console sign-in failed");
    let console = &state.config.console;
    let over = u32::try_from(failures)
        .unwrap_or(0)
        .checked_sub(console.lockout_after);
    if let Some(over) = over {
        let secs = console
            .lockout_secs
            .saturating_mul(1u64 << over.min(20))
            .min(console.lockout_max_secs);
        let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
        if let Err(err) = state
            .store
            .lock_user(user.id, now + Duration::seconds(secs))
            .await
        {
            return Err(unavailable(err));
        }
        return Err(LoginFailure::Locked(secs));
    }
    Err(LoginFailure::Invalid)
}

static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    crate::users::hash_password("not a real password, only for timing").unwrap_or_default()
});

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default, rename = "_csrf")]
    pub csrf: String,
}

pub async fn logout(
    State(state): State<AppState>,
    user: ConsoleUser,
    jar: CookieJar,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = user.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    if let Some(token) = jar.get(SESSION_COOKIE).map(|c| c.value().to_string())
        && let Err(err) = state.store.delete_session(&hash_token(&token)).await
    {
        tracing::error!(error = %err, "cannot delete console session");
    }
    let jar = jar.remove(Cookie::build(SESSION_COOKIE).path("/console"));
    (jar, Redirect::to("/console/login")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_console() {
        assert_eq!(safe_next(Some("/console/items/1")), "/console/items/1");
        assert_eq!(safe_next(Some("https://evil.example")), "/console/queue");
        assert_eq!(safe_next(Some("//evil.example")), "/console/queue");
        assert_eq!(safe_next(Some("/console\\..\\x")), "/console/queue");
        assert_eq!(safe_next(None), "/console/queue");
    }

    #[test]
    fn tokens_compare_in_full() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b""));
    }

    #[test]
    fn next_is_encoded() {
        assert_eq!(
            url_encode("/console/queue?sop=a b&x=1"),
            "/console/queue%3Fsop%3Da%20b%26x%3D1"
        );
    }
}
