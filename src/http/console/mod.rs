//! The reviewer console: server-rendered HTML pages under `/console`, built
//! with tera templates from `web/templates` and the script and stylesheet in
//! `web/static`. Both are compiled into the binary, so the console works
//! wherever the binary runs.
//!
//! Pages read through the `Store` and act through the same `ReviewService` as
//! the JSON API, so the queue's rules (claims, leases, versions, audit,
//! feedback) are the same whichever way a reviewer works. Live updates are
//! Server-Sent Events (`/console/live`) that announce a queue change; the
//! page then fetches the fresh rows. Each connection watches the database,
//! so changes made through any replica show up.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use tera::Tera;

use super::AppState;
use session::ConsoleUser;

mod admin;
pub mod charts;
mod dashboard;
mod live;
mod pages;
mod session;
mod spot_checks;

/// Templates, compiled into the binary.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "base.html",
        include_str!("../../../web/templates/base.html"),
    ),
    (
        "login.html",
        include_str!("../../../web/templates/login.html"),
    ),
    (
        "queue.html",
        include_str!("../../../web/templates/queue.html"),
    ),
    (
        "queue_rows.html",
        include_str!("../../../web/templates/queue_rows.html"),
    ),
    (
        "item.html",
        include_str!("../../../web/templates/item.html"),
    ),
    (
        "audit.html",
        include_str!("../../../web/templates/audit.html"),
    ),
    (
        "history.html",
        include_str!("../../../web/templates/history.html"),
    ),
    (
        "dashboard.html",
        include_str!("../../../web/templates/dashboard.html"),
    ),
    (
        "users.html",
        include_str!("../../../web/templates/users.html"),
    ),
    (
        "message.html",
        include_str!("../../../web/templates/message.html"),
    ),
    (
        "notifications.html",
        include_str!("../../../web/templates/notifications.html"),
    ),
    (
        "spot_checks.html",
        include_str!("../../../web/templates/spot_checks.html"),
    ),
];

/// Static assets: name, content type, body.
const STATIC: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/static/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/static/console.js"),
    ),
];

static TERA: LazyLock<Result<Tera, String>> = LazyLock::new(|| {
    let mut tera = Tera::default();
    tera.autoescape_on(vec![".html"]);
    tera.add_raw_templates(TEMPLATES.iter().copied())
        .map_err(|err| crate::sop::tera_error_chain(&err))?;
    Ok(tera)
});

/// A short content hash, appended to asset URLs so browsers may cache them.
static ASSET_VERSION: LazyLock<String> = LazyLock::new(|| {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for (_, _, body) in STATIC {
        hasher.update(body.as_bytes());
    }
    hex::encode(&hasher.finalize()[..6])
});

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/queue") }))
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/queue") }),
        )
        .route(
            "/console/login",
            get(session::login_page).post(session::login),
        )
        .route("/console/logout", post(session::logout))
        .route("/console/queue", get(pages::queue))
        .route("/console/queue/rows", get(pages::queue_rows))
        .route("/console/next", post(pages::claim_next))
        .route("/console/live", get(live::events))
        .route("/console/items/{id}", get(pages::item))
        .route("/console/items/{id}/state", get(pages::item_state))
        .route("/console/items/{id}/audit", get(pages::audit))
        .route("/console/items/{id}/heartbeat", post(pages::heartbeat))
        .route("/console/items/{id}/{action}", post(pages::act))
        .route("/console/history", get(pages::history))
        .route("/console/spot-checks", get(spot_checks::page))
        .route("/console/spot-checks/{id}", post(spot_checks::label))
        .route("/console/dashboard", get(dashboard::page))
        .route("/console/users", get(admin::users).post(admin::add_user))
        .route("/console/users/state", post(admin::set_user_state))
        .route("/console/notifications", get(admin::notifications))
        .route(
            "/console/notifications/retry",
            post(admin::retry_notification),
        )
        .route("/console/static/{file}", get(asset))
        .layer(axum::middleware::map_response(security_headers))
}

/// Console pages allow only their own scripts, styles and images, and may not be framed.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn asset(Path(file): Path<String>) -> Response {
    match STATIC.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// The context of one page: its title, and the signed-in user when there is one.
pub struct Page(tera::Context);

impl Page {
    pub fn anonymous(title: &str) -> Page {
        let mut ctx = tera::Context::new();
        ctx.insert("title", title);
        ctx.insert("asset_version", ASSET_VERSION.as_str());
        ctx.insert("user", &None::<()>);
        Page(ctx)
    }

    /// A page for a signed-in user; `nav` names the menu entry to mark current.
    pub fn for_user(title: &str, user: &ConsoleUser, nav: &str) -> Page {
        let mut page = Page::anonymous(title);
        page.insert(
            "user",
            &serde_json::json!({
                "email": user.user.email,
                "role": user.user.role,
                "is_admin": user.is_admin(),
            }),
        );
        page.insert("csrf_token", &user.csrf_token);
        page.insert("nav", nav);
        page
    }

    pub fn insert<T: serde::Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        self.0.insert(key, value);
    }
}

pub fn render_status(status: StatusCode, template: &str, page: &Page) -> Response {
    let rendered = match &*TERA {
        Ok(tera) => tera
            .render(template, &page.0)
            .map_err(|err| crate::sop::tera_error_chain(&err)),
        Err(err) => Err(err.clone()),
    };
    match rendered {
        Ok(html) => (status, Html(html)).into_response(),
        Err(err) => {
            tracing::error!(template, error = %err, "console template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be rendered.",
            )
                .into_response()
        }
    }
}

pub fn render(template: &str, page: &Page) -> Response {
    render_status(StatusCode::OK, template, page)
}

/// A page with only a heading and a message, for errors and notices.
/// The page for a database that did not answer: logged, and nothing changed.
pub fn unavailable(user: &ConsoleUser, err: impl std::fmt::Display) -> Response {
    tracing::error!(error = %err, "console page failed on the database");
    message_page(
        StatusCode::SERVICE_UNAVAILABLE,
        user,
        "Unavailable",
        "The database did not answer. Try again shortly; nothing was changed.",
    )
}

pub fn message_page(
    status: StatusCode,
    user: &ConsoleUser,
    title: &str,
    message: &str,
) -> Response {
    let mut page = Page::for_user(title, user, "");
    page.insert("message", message);
    render_status(status, "message.html", &page)
}

/// Escapes HTML and XML specials and drops control characters (invalid in
/// XML), for markup built outside the templates (charts, highlighted text).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `4 min`, `2 h 5 min`, `3 d 4 h`: a duration for people.
pub fn format_duration_secs(secs: i64) -> String {
    let secs = secs.abs();
    if secs < 60 {
        return format!("{secs} s");
    }
    let mins = secs / 60;
    if mins < 60 {
        return format!("{mins} min");
    }
    let (h, m) = (mins / 60, mins % 60);
    if h < 24 {
        return if m == 0 {
            format!("{h} h")
        } else {
            format!("{h} h {m} min")
        };
    }
    let (d, h) = (h / 24, h % 24);
    if h == 0 {
        format!("{d} d")
    } else {
        format!("{d} d {h} h")
    }
}

/// `due in 12 min` or `breached 5 min ago`.
pub fn sla_label(due: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (due - now).num_seconds();
    if secs >= 0 {
        format!("due in {}", format_duration_secs(secs))
    } else {
        format!("breached {} ago", format_duration_secs(secs))
    }
}

/// `3 min ago` for a past instant.
pub fn ago(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{} ago",
        format_duration_secs((now - at).num_seconds().max(0))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_compile() {
        if let Err(err) = &*TERA {
            panic!("{err}");
        }
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(format_duration_secs(42), "42 s");
        assert_eq!(format_duration_secs(-300), "5 min");
        assert_eq!(format_duration_secs(3600), "1 h");
        assert_eq!(format_duration_secs(3900), "1 h 5 min");
        assert_eq!(format_duration_secs(90_000), "1 d 1 h");
        let now = Utc::now();
        assert_eq!(
            sla_label(now + chrono::Duration::minutes(12), now),
            "due in 12 min"
        );
        assert_eq!(
            sla_label(now - chrono::Duration::minutes(5), now),
            "breached 5 min ago"
        );
    }
}
