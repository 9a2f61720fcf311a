//! A console user over plain HTTP: signs in through the login form, keeps the
//! session cookie, and reads CSRF tokens from the pages it gets.

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Response, StatusCode};

use super::TestApp;

/// Adds a user to the app's tenant.
pub async fn add_user(app: &TestApp, email: &str, role: &str, password: &str) {
    add_user_in(app, app.tenant.id, email, role, password).await;
}

/// Adds a user to any tenant of the app's database.
pub async fn add_user_in(
    app: &TestApp,
    tenant_id: uuid::Uuid,
    email: &str,
    role: &str,
    password: &str,
) {
    let user = sopr::store::User {
        id: uuid::Uuid::now_v7(),
        tenant_id,
        email: email.into(),
        role: role.into(),
        password_hash: sopr::users::hash_password(password).expect("hash"),
        created_at: chrono::Utc::now(),
        disabled_at: None,
        failed_logins: 0,
        locked_until: None,
    };
    app.store.create_user(&user).await.expect("create user");
}

pub struct ConsoleClient {
    pub base: String,
    pub client: reqwest::Client,
    /// `name=value` pairs sent as the Cookie header.
    pub cookies: Vec<(String, String)>,
    pub csrf: String,
}

/// The value of `name="_csrf" value="…"` in a page (or `data-csrf`).
pub fn csrf_in(html: &str) -> Option<String> {
    for marker in ["name=\"_csrf\" value=\"", "data-csrf=\""] {
        if let Some(at) = html.find(marker) {
            let rest = &html[at + marker.len()..];
            return rest.split('"').next().map(String::from);
        }
    }
    None
}

impl ConsoleClient {
    pub fn new(app: &TestApp) -> ConsoleClient {
        ConsoleClient {
            base: app.base.clone(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookies: Vec::new(),
            csrf: String::new(),
        }
    }

    /// Signs in, asserting success.
    pub async fn login(app: &TestApp, email: &str, password: &str) -> ConsoleClient {
        let mut c = ConsoleClient::new(app);
        let response = c.try_login(&app.tenant.name, email, password).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "sign-in failed");
        let page = c.get("/console/queue").await;
        assert_eq!(page.status(), 200);
        c.csrf = csrf_in(&page.text().await.unwrap()).expect("csrf token on the queue page");
        c
    }

    /// Loads the sign-in form and submits it.
    pub async fn try_login(&mut self, tenant: &str, email: &str, password: &str) -> Response {
        let form = self.get("/console/login").await;
        assert_eq!(form.status(), 200);
        let token = csrf_in(&form.text().await.unwrap()).expect("login csrf");
        self.post_form(
            "/console/login",
            &[
                ("_csrf", token.as_str()),
                ("tenant", tenant),
                ("email", email),
                ("password", password),
            ],
        )
        .await
    }

    fn remember(&mut self, response: &Response) {
        for value in response.headers().get_all(SET_COOKIE) {
            let value = value.to_str().unwrap_or_default();
            let pair = value.split(';').next().unwrap_or_default();
            if let Some((name, v)) = pair.split_once('=') {
                self.cookies.retain(|(n, _)| n != name);
                let expired = value.to_ascii_lowercase().contains("max-age=0") || v.is_empty();
                if !expired {
                    self.cookies.push((name.to_string(), v.to_string()));
                }
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn get(&mut self, path: &str) -> Response {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .send()
            .await
            .expect("request");
        self.remember(&response);
        response
    }

    /// GET, asserting 200, returning the body.
    pub async fn page(&mut self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.unwrap()
    }

    pub async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> Response {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .form(form)
            .send()
            .await
            .expect("request");
        self.remember(&response);
        response
    }

    /// Posts a console form with the session's CSRF token added.
    pub async fn act(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        let csrf = self.csrf.clone();
        let mut form: Vec<(&str, &str)> = vec![("_csrf", csrf.as_str())];
        form.extend_from_slice(fields);
        self.post_form(path, &form).await
    }
}

/// Where a redirect points.
pub fn location(response: &Response) -> String {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}
