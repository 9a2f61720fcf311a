//! The reviewer console over HTTP: sign-in, sessions, CSRF, lockout, roles,
//! the queue's filters, item actions and the pages built on them. Runs on
//! SQLite and, when configured, Postgres. The browser tests
//! (`tests/browser.rs`) drive the same pages in Chromium.

mod support;

use serde_json::Value;
use support::console::{ConsoleClient, add_user, add_user_in, csrf_in, location};
use support::{TestApp, databases, spawn_app, spawn_app_on};

const PASSWORD: &str = "correct horse battery";

async fn queue_case(app: &TestApp, customer: &str, text: &str) -> Value {
    let out = app.message(customer, text).await;
    assert_eq!(out["outcome"], "queued", "{out}");
    out
}

fn review_id(case: &Value) -> String {
    case["review_id"].as_str().expect("review id").to_string()
}

#[tokio::test]
async fn sign_in_sets_a_safe_cookie_and_sign_out_ends_the_session() {
    let app = spawn_app().await;
    add_user(&app, "bea@example.com", "reviewer", PASSWORD).await;

    // Pages need a session.
    let mut anon = ConsoleClient::new(&app);
    let response = anon.get("/console/queue?state=open").await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        location(&response),
        "/console/login?next=/console/queue%3Fstate%3Dopen"
    );

    let mut c = ConsoleClient::new(&app);
    let wrong = c
        .try_login(&app.tenant.name, "bea@example.com", "not the password")
        .await;
    assert_eq!(wrong.status(), 401);
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("Wrong workspace, email or password.")
    );
    let unknown = c
        .try_login(&app.tenant.name, "nobody@example.com", PASSWORD)
        .await;
    assert_eq!(unknown.status(), 401, "unknown users get the same answer");

    let ok = c
        .try_login(&app.tenant.name, "BEA@example.com ", PASSWORD)
        .await;
    assert_eq!(ok.status(), 303);
    assert_eq!(location(&ok), "/console/queue");
    let cookie = ok
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("sopr_session="))
        .expect("session cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    assert!(cookie.contains("Path=/console"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    // The database keeps a hash of the token, never the token.
    let token = cookie
        .trim_start_matches("sopr_session=")
        .split(';')
        .next()
        .unwrap();
    let page = c.page("/console/queue").await;
    c.csrf = csrf_in(&page).unwrap();
    assert!(page.contains("bea@example.com"));
    assert!(!page.contains(token));

    // Behind a TLS proxy the cookie is Secure.
    let mut tls = ConsoleClient::new(&app);
    let form = tls.get("/console/login").await;
    let login_cookie = form
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let login_csrf = csrf_in(&form.text().await.unwrap()).unwrap();
    let secure = tls
        .client
        .post(format!("{}/console/login", app.base))
        .header("x-forwarded-proto", "https")
        .header("cookie", login_cookie.split(';').next().unwrap())
        .form(&[
            ("_csrf", login_csrf.as_str()),
            ("tenant", app.tenant.name.as_str()),
            ("email", "bea@example.com"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(secure.status(), 303);
    let secure_cookie = secure
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("sopr_session="))
        .expect("session cookie");
    assert!(secure_cookie.contains("Secure"), "{secure_cookie}");

    // Sign out: the cookie no longer opens anything, even if kept.
    let kept = c.cookies.clone();
    let out = c.act("/console/logout", &[]).await;
    assert_eq!(out.status(), 303);
    let mut replay = ConsoleClient::new(&app);
    replay.cookies = kept;
    assert_eq!(replay.get("/console/queue").await.status(), 303);
}

#[tokio::test]
async fn posts_without_the_csrf_token_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    add_user(&app, "bea@example.com", "reviewer", PASSWORD).await;
    let case = queue_case(&app, "cust-1", "I want to speak to a human about my card").await;
    let id = review_id(&case);
    let mut c = ConsoleClient::login(&app, "bea@example.com", PASSWORD).await;

    let no_token = c
        .post_form(&format!("/console/items/{id}/claim"), &[])
        .await;
    assert_eq!(no_token.status(), 403);
    let wrong = c
        .post_form(&format!("/console/items/{id}/claim"), &[("_csrf", "0000")])
        .await;
    assert_eq!(wrong.status(), 403);
    let next = c.post_form("/console/next", &[]).await;
    assert_eq!(next.status(), 403);
    let heartbeat = c
        .post_form(&format!("/console/items/{id}/heartbeat"), &[])
        .await;
    assert_eq!(heartbeat.status(), 403);
    let item: Value = app
        .get(&format!("/v1/reviews/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(item["item"]["state"], "open", "nothing was claimed");

    // The sign-in form is protected too (double-submit cookie).
    let mut fresh = ConsoleClient::new(&app);
    let forged = fresh
        .post_form(
            "/console/login",
            &[
                ("tenant", app.tenant.name.as_str()),
                ("email", "bea@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(forged.status(), 403);

    // With the token the same post works.
    let claimed = c.act(&format!("/console/items/{id}/claim"), &[]).await;
    assert_eq!(claimed.status(), 303);
    // The holder may label the message as one no SOP covers, for training.
    let page = c.page(&format!("/console/items/{id}")).await;
    assert!(
        page.contains("<option value=\"oos\">none of these"),
        "{page}"
    );
    // The router could not place this message (low confidence), so the page
    // says that a sent reply labels nothing unless the reviewer picks an
    // intent ...
    assert!(page.contains("<option value=\"\">not labelled"), "{page}");
    assert!(!page.contains("as routed"), "{page}");
    // ... while for a route it was sure of (here for the request for a
    // human), sending a reply confirms the routed intent.
    let sure = queue_case(
        &app,
        "cust-2",
        "I want to speak to a human, my card still has not arrived",
    )
    .await;
    let sure_id = review_id(&sure);
    let claimed = c.act(&format!("/console/items/{sure_id}/claim"), &[]).await;
    assert_eq!(claimed.status(), 303);
    let page = c.page(&format!("/console/items/{sure_id}")).await;
    assert!(
        page.contains("<option value=\"\">as routed (card_arrival)"),
        "{page}"
    );
}

#[tokio::test]
async fn repeated_failed_sign_ins_lock_the_account_for_a_while() {
    let db = support::TestDb::sqlite();
    let app = spawn_app_on(db, |c| {
        c.console.lockout_after = 3;
        c.console.lockout_secs = 1;
        c.console.lockout_max_secs = 4;
    })
    .await;
    add_user(&app, "bea@example.com", "reviewer", PASSWORD).await;
    let mut c = ConsoleClient::new(&app);
    for _ in 0..2 {
        assert_eq!(
            c.try_login(&app.tenant.name, "bea@example.com", "guess")
                .await
                .status(),
            401
        );
    }
    let third = c
        .try_login(&app.tenant.name, "bea@example.com", "guess")
        .await;
    assert_eq!(third.status(), 429);
    assert!(
        third
            .text()
            .await
            .unwrap()
            .contains("Too many failed sign-ins")
    );
    // Locked: even the right password is refused, without being checked.
    let locked = c
        .try_login(&app.tenant.name, "bea@example.com", PASSWORD)
        .await;
    assert_eq!(locked.status(), 429);
    let user = app
        .store
        .user_by_email(app.tenant.id, "bea@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.failed_logins, 3);
    assert!(user.locked_until.is_some());

    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let ok = c
        .try_login(&app.tenant.name, "bea@example.com", PASSWORD)
        .await;
    assert_eq!(ok.status(), 303, "the lock ran out");
    let user = app
        .store
        .user_by_email(app.tenant.id, "bea@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        user.failed_logins, 0,
        "a successful sign-in clears the count"
    );
    assert!(user.locked_until.is_none());
}

#[tokio::test]
async fn roles_decide_who_sees_pii_manages_users_and_reassigns() {
    let app = spawn_app().await;
    add_user(&app, "rui@example.com", "reviewer", PASSWORD).await;
    add_user(&app, "ada@example.com", "admin", PASSWORD).await;
    let case = queue_case(
        &app,
        "cust-1",
        "Someone used my card 4111 1111 1111 1111 without asking",
    )
    .await;
    let id = review_id(&case);

    let mut rui = ConsoleClient::login(&app, "rui@example.com", PASSWORD).await;
    let mut ada = ConsoleClient::login(&app, "ada@example.com", PASSWORD).await;

    let as_reviewer = rui.page(&format!("/console/items/{id}")).await;
    assert!(
        !as_reviewer.contains("4111 1111 1111 1111"),
        "reviewers see the card masked"
    );
    assert!(
        as_reviewer
            .contains("<mark class=\"flag\" title=\"pii.card_number\">**** **** **** 1111</mark>")
    );
    let queue = rui.page("/console/queue").await;
    assert!(!queue.contains("4111 1111 1111 1111"));
    let as_admin = ada.page(&format!("/console/items/{id}")).await;
    assert!(
        as_admin.contains(">4111 1111 1111 1111</mark>"),
        "admins see it, highlighted"
    );

    // Users page and assigning to others: admins only.
    assert_eq!(rui.get("/console/users").await.status(), 403);
    assert_eq!(ada.get("/console/users").await.status(), 200);
    let denied = rui
        .act(
            &format!("/console/items/{id}/assign"),
            &[("assignee", "ada@example.com")],
        )
        .await;
    assert_eq!(denied.status(), 403);
    let to_self = rui
        .act(
            &format!("/console/items/{id}/assign"),
            &[("assignee", "rui@example.com")],
        )
        .await;
    assert_eq!(
        to_self.status(),
        403,
        "assigning takes from others: admins only"
    );
    let assigned = ada
        .act(
            &format!("/console/items/{id}/assign"),
            &[("assignee", "rui@example.com")],
        )
        .await;
    assert_eq!(assigned.status(), 303);
    let item: Value = app
        .get(&format!("/v1/reviews/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(item["item"]["claimed_by"], "rui@example.com");
    let nobody = ada
        .act(
            &format!("/console/items/{id}/assign"),
            &[("assignee", "ghost@example.com")],
        )
        .await;
    assert_eq!(nobody.status(), 422);

    // Admins add users; a disabled user's sessions end at once.
    let added = ada
        .act(
            "/console/users",
            &[
                ("email", "new@example.com"),
                ("role", "reviewer"),
                ("password", "short"),
            ],
        )
        .await;
    assert_eq!(added.status(), 422, "password too short");
    let added = ada
        .act(
            "/console/users",
            &[
                ("email", "new@example.com"),
                ("role", "reviewer"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(added.status(), 200);
    let mut new = ConsoleClient::login(&app, "new@example.com", PASSWORD).await;
    let disabled = ada
        .act(
            "/console/users/state",
            &[("email", "new@example.com"), ("action", "disable")],
        )
        .await;
    assert_eq!(disabled.status(), 303);
    assert_eq!(new.get("/console/queue").await.status(), 303, "signed out");
    let mut again = ConsoleClient::new(&app);
    assert_eq!(
        again
            .try_login(&app.tenant.name, "new@example.com", PASSWORD)
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn users_see_only_their_own_tenants_items() {
    let app = spawn_app().await;
    let case = queue_case(&app, "cust-1", "I want to speak to a human please").await;
    let id = review_id(&case);
    // A second tenant on the same server, with its own reviewer.
    let (other, _) = app.store.ensure_tenant("other-bank").await.unwrap();
    add_user_in(&app, other.id, "eve@example.com", "admin", PASSWORD).await;
    let mut eve = ConsoleClient::new(&app);
    assert_eq!(
        eve.try_login("other-bank", "eve@example.com", PASSWORD)
            .await
            .status(),
        303
    );
    eve.csrf = csrf_in(&eve.page("/console/queue").await).unwrap();
    let queue = eve.page("/console/queue").await;
    assert!(!queue.contains(&id), "another tenant's item is not listed");
    assert_eq!(eve.get(&format!("/console/items/{id}")).await.status(), 404);
    assert_eq!(
        eve.act(&format!("/console/items/{id}/claim"), &[])
            .await
            .status(),
        404
    );
    // Signing in names the workspace: the same email elsewhere does not get in.
    let mut wrong_tenant = ConsoleClient::new(&app);
    assert_eq!(
        wrong_tenant
            .try_login(&app.tenant.name, "eve@example.com", PASSWORD)
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn queue_filters_and_counts_on_every_backend() {
    for db in databases().await {
        let label = db.label();
        let app = spawn_app_on(db, |_| {}).await;
        add_user(&app, "bea@example.com", "reviewer", PASSWORD).await;
        let fraud = queue_case(
            &app,
            "c1",
            "There is a fraud on my account, someone stole money",
        )
        .await;
        let human = queue_case(&app, "c2", "I want to speak to a human").await;
        let card = queue_case(
            &app,
            "c3",
            "my card number is 4111 1111 1111 1111, is it blocked?",
        )
        .await;
        let mut c = ConsoleClient::login(&app, "bea@example.com", PASSWORD).await;

        let all = c.page("/console/queue").await;
        for case in [&fraud, &human, &card] {
            assert!(
                all.contains(&review_id(case)),
                "{label}: every pending item is listed"
            );
        }
        assert!(
            all.contains("<strong data-count=\"open\">3</strong>"),
            "{label}"
        );

        let only_fraud = c.page("/console/queue?flag=topic.fraud").await;
        assert!(only_fraud.contains(&review_id(&fraud)), "{label}");
        assert!(!only_fraud.contains(&review_id(&human)), "{label}");
        let pii = c.page("/console/queue?flag=pii.card_number").await;
        assert!(
            pii.contains(&review_id(&card)) && !pii.contains(&review_id(&fraud)),
            "{label}"
        );
        // LIKE wildcards in a filter are literal.
        let wildcard = c.page("/console/queue?flag=%25").await;
        assert!(
            wildcard.contains("No item matches these filters."),
            "{label}"
        );

        // Claim one: it shows under "claimed by me" and in the counts.
        let claimed = c
            .act(&format!("/console/items/{}/claim", review_id(&human)), &[])
            .await;
        assert_eq!(claimed.status(), 303, "{label}");
        let mine = c.page("/console/queue?mine=1").await;
        assert!(
            mine.contains(&review_id(&human)) && !mine.contains(&review_id(&fraud)),
            "{label}"
        );
        assert!(
            mine.contains("<strong data-count=\"mine\">1</strong>"),
            "{label}"
        );
        let open = c.page("/console/queue?state=open").await;
        assert!(!open.contains(&review_id(&human)), "{label}");
        let rows = c.page("/console/queue/rows?state=claimed").await;
        assert!(
            rows.contains(&review_id(&human)),
            "{label}: the live fragment filters alike"
        );
        assert!(!rows.contains("<html"), "{label}: a fragment, not a page");

        let breached = c.page("/console/queue?breached=1").await;
        assert!(
            breached.contains("No item matches"),
            "{label}: nothing is past due yet"
        );
        let unknown_sop = c.page("/console/queue?sop=no-such-sop").await;
        assert!(unknown_sop.contains("No item matches"), "{label}");
    }
}

#[tokio::test]
async fn a_reviewer_works_an_item_from_the_console_on_every_backend() {
    for db in databases().await {
        let label = db.label();
        let app = spawn_app_on(db, |_| {}).await;
        add_user(&app, "bea@example.com", "reviewer", PASSWORD).await;
        add_user(&app, "cal@example.com", "reviewer", PASSWORD).await;
        let case = queue_case(
            &app,
            "cust-1",
            "I want to speak to a human about my card delivery",
        )
        .await;
        let id = review_id(&case);
        let mut bea = ConsoleClient::login(&app, "bea@example.com", PASSWORD).await;
        let mut cal = ConsoleClient::login(&app, "cal@example.com", PASSWORD).await;

        // Claim next takes the item and opens it.
        let next = bea.act("/console/next", &[]).await;
        assert_eq!(location(&next), format!("/console/items/{id}"), "{label}");
        let page = bea.page(&format!("/console/items/{id}")).await;
        assert!(
            page.contains("id=\"reply\""),
            "{label}: the editor is there"
        );
        assert!(page.contains("Route"), "{label}");
        // Another reviewer cannot take it.
        let taken = cal.act(&format!("/console/items/{id}/claim"), &[]).await;
        assert_eq!(taken.status(), 409, "{label}");
        let empty = cal.act("/console/next", &[]).await;
        assert_eq!(location(&empty), "/console/queue?notice=empty", "{label}");

        // A stale version fails with 409 and keeps what the reviewer typed.
        let stale = bea
            .act(
                &format!("/console/items/{id}/send"),
                &[("reply", "Typed with care"), ("version", "0")],
            )
            .await;
        assert_eq!(stale.status(), 409, "{label}");
        let body = stale.text().await.unwrap();
        assert!(
            body.contains("Typed with care"),
            "{label}: nothing typed is lost"
        );
        assert!(body.contains("changed since version 0"), "{label}");

        let item: Value = app
            .get(&format!("/v1/reviews/{id}"))
            .await
            .json()
            .await
            .unwrap();
        let version = item["item"]["version"].to_string();
        let sent = bea
            .act(
                &format!("/console/items/{id}/send"),
                &[
                    ("reply", "Your card is on its way; it arrives by Friday."),
                    ("version", version.as_str()),
                ],
            )
            .await;
        assert_eq!(sent.status(), 303, "{label}");
        assert_eq!(location(&sent), "/console/queue?notice=resolved");
        let queue = bea.page("/console/queue?notice=resolved").await;
        assert!(
            queue.contains("Sent. The reply is in the customer"),
            "{label}"
        );
        assert!(!queue.contains(&id), "{label}: the item left the queue");
        let last = app.last_message(&case["conversation_id"]).await;
        assert_eq!(last["role"], "reviewer", "{label}");
        assert_eq!(
            last["body"], "Your card is on its way; it arrives by Friday.",
            "{label}"
        );

        // The audit page tells the story; history finds it by the reply.
        let audit = bea.page(&format!("/console/items/{id}/audit")).await;
        for kind in ["claimed", "resolved.edit"] {
            assert!(audit.contains(kind), "{label}: {kind} in the audit trail");
        }
        assert!(
            audit.contains("Your card is on its way"),
            "{label}: the after text"
        );
        let found = bea.page("/console/history?q=ARRIVES%20BY%20friday").await;
        assert!(
            found.contains(&id[..8]),
            "{label}: search is case-insensitive"
        );
        let missing = bea.page("/console/history?q=no%25such_text").await;
        assert!(!missing.contains(&id[..8]), "{label}");
        let dashboard = bea.page("/console/dashboard?days=1").await;
        assert!(
            dashboard.matches("<svg").count() >= 5,
            "{label}: charts render"
        );
        assert!(dashboard.contains("Median time to resolution"), "{label}");
        // The router section names the model routing now, among those stored,
        // promoted when the service started.
        let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
        let model = ready["router_model"].as_str().unwrap();
        assert!(
            dashboard.contains(&format!("This replica routes with <code>{model}</code>"))
                && dashboard.contains(&format!(
                    "<code>{model}</code> <span class=\"meta\">routing now</span> \
                     <span class=\"meta\">promoted "
                )),
            "{label}: {dashboard}"
        );
        assert!(
            dashboard.contains("Every 1 h it reads its training data again"),
            "{label}"
        );
        // An operator's pin shows, with its reason.
        assert!(
            app.store
                .pin_router_model(model, chrono::Utc::now(), Some("held for the audit"))
                .await
                .unwrap()
        );
        let dashboard = bea.page("/console/dashboard?days=1").await;
        assert!(
            dashboard.contains(&format!(
                "<code>{model}</code> <span class=\"meta\">routing now</span> \
                 <strong class=\"pinned\">pinned</strong>"
            )) && dashboard.contains("saying “held for the audit”: replicas route with it"),
            "{label}: {dashboard}"
        );
    }
}

#[tokio::test]
async fn other_actions_reroute_ask_and_close_from_the_console() {
    let app = spawn_app().await;
    add_user(&app, "bea@example.com", "reviewer", PASSWORD).await;
    let mut bea = ConsoleClient::login(&app, "bea@example.com", PASSWORD).await;

    let case = queue_case(&app, "c1", "I want a human, my card never arrived").await;
    let id = review_id(&case);
    bea.act(&format!("/console/items/{id}/claim"), &[]).await;
    let bad = bea
        .act(
            &format!("/console/items/{id}/reroute"),
            &[("sop", "no-such-sop")],
        )
        .await;
    assert_eq!(bad.status(), 422);
    assert!(bad.text().await.unwrap().contains("`sop`"));
    let no_intent = bea
        .act(
            &format!("/console/items/{id}/reroute"),
            &[("sop", "card-delivery")],
        )
        .await;
    assert_eq!(
        no_intent.status(),
        422,
        "card-delivery has two intents: say which"
    );
    assert!(no_intent.text().await.unwrap().contains("`intent`"));
    let rerouted = bea
        .act(
            &format!("/console/items/{id}/reroute"),
            &[("sop", "card-delivery"), ("intent", "card_arrival")],
        )
        .await;
    assert_eq!(rerouted.status(), 303);
    let page = bea.page(&format!("/console/items/{id}")).await;
    assert!(
        page.contains("card-delivery@"),
        "the item now follows the new SOP"
    );

    let asked = bea
        .act(
            &format!("/console/items/{id}/request-info"),
            &[("question", "Which address did you give us?")],
        )
        .await;
    assert_eq!(location(&asked), "/console/queue?notice=waiting");
    let waiting = bea.page("/console/queue?state=waiting").await;
    assert!(waiting.contains(&id));
    assert!(waiting.contains("SLA paused while waiting"));

    let other = queue_case(&app, "c2", "I want to talk to a person").await;
    let other_id = review_id(&other);
    bea.act(&format!("/console/items/{other_id}/claim"), &[])
        .await;
    let empty_reason = bea
        .act(
            &format!("/console/items/{other_id}/reject"),
            &[("reason", "  ")],
        )
        .await;
    assert_eq!(empty_reason.status(), 422);
    let closed = bea
        .act(
            &format!("/console/items/{other_id}/reject"),
            &[("reason", "duplicate")],
        )
        .await;
    assert_eq!(location(&closed), "/console/queue?notice=rejected");
    let released_case = queue_case(&app, "c3", "Can a person call me?").await;
    let released_id = review_id(&released_case);
    bea.act(&format!("/console/items/{released_id}/claim"), &[])
        .await;
    let released = bea
        .act(&format!("/console/items/{released_id}/release"), &[])
        .await;
    assert_eq!(location(&released), "/console/queue?notice=released");
    assert_eq!(
        bea.act(&format!("/console/items/{released_id}/fly"), &[])
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn the_live_stream_announces_queue_changes() {
    let app = spawn_app_on(support::TestDb::sqlite(), |c| c.console.live_poll_ms = 100).await;
    add_user(&app, "bea@example.com", "reviewer", PASSWORD).await;
    let mut bea = ConsoleClient::login(&app, "bea@example.com", PASSWORD).await;
    let cookie = bea
        .cookies
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut stream = bea
        .client
        .get(format!("{}/console/live", app.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    let read_event = async |stream: &mut reqwest::Response, seen: &mut String| {
        let before = seen.matches("event: queue").count();
        while seen.matches("event: queue").count() == before {
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), stream.chunk())
                .await
                .expect("an event in time")
                .unwrap()
                .expect("stream open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    read_event(&mut stream, &mut seen).await;
    assert!(
        seen.contains("data: empty"),
        "the first event says where the queue stands: {seen}"
    );
    queue_case(&app, "c1", "I want to speak to a human").await;
    read_event(&mut stream, &mut seen).await;
    assert_eq!(seen.matches("event: queue").count(), 2, "{seen}");
    let _ = &mut bea;
}

#[tokio::test]
async fn console_pages_send_security_headers_and_assets() {
    let app = spawn_app().await;
    let mut anon = ConsoleClient::new(&app);
    let login = anon.get("/console/login").await;
    let csp = login.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(login.headers()["x-content-type-options"], "nosniff");
    let css = anon.get("/console/static/console.css").await;
    assert_eq!(css.status(), 200);
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    assert_eq!(
        anon.get("/console/static/../Cargo.toml").await.status(),
        404
    );
}

#[tokio::test]
async fn reviewers_label_spot_checks_from_the_console() {
    let app = support::spawn_app_on(support::TestDb::sqlite(), |c| {
        c.review.spot_check_share = 1.0;
        c.routing.target_accuracy = Some(0.98);
        // A deployment that lets messages with personal data be answered:
        // the page must still mask it for reviewers.
        c.escalation.force_review_flags = vec!["human_requested".into()];
    })
    .await;
    add_user(&app, "bea@example.com", "reviewer", PASSWORD).await;
    add_user(&app, "ada@example.com", "admin", PASSWORD).await;
    let answered = app
        .message(
            "cust-1",
            "My new card still hasn't arrived, it's been 10 days. Card 4111 1111 1111 1111",
        )
        .await;
    assert_eq!(answered["outcome"], "answered", "{answered}");
    // A person's case is no automatic answer: not sampled.
    let queued = app
        .message("cust-2", "I want to speak to a human about my card")
        .await;
    assert_eq!(queued["outcome"], "queued", "{queued}");
    let mut c = ConsoleClient::login(&app, "bea@example.com", PASSWORD).await;
    let page = c.page("/console/spot-checks").await;
    assert!(
        page.contains("still hasn&#x27;t arrived") || page.contains("still hasn't arrived"),
        "{page}"
    );
    assert!(
        page.contains("1 automatic answer sampled in 30 d, none labelled yet."),
        "{page}"
    );
    assert!(!page.contains("speak to a human"), "{page}");
    assert!(
        !page.contains("4111 1111 1111 1111") && page.contains("**** **** **** 1111"),
        "a reviewer sees the card number masked: {page}"
    );
    let mut admin = ConsoleClient::login(&app, "ada@example.com", PASSWORD).await;
    let whole = admin.page("/console/spot-checks").await;
    assert!(
        whole.contains("4111 1111 1111 1111"),
        "an admin sees it whole"
    );
    let list: Value = app.get("/v1/spot-checks").await.json().await.unwrap();
    let id = list["items"][0]["id"].as_str().unwrap().to_string();
    assert!(
        page.contains(&format!("action=\"/console/spot-checks/{id}\"")),
        "{page}"
    );

    let forged = c
        .post_form(
            &format!("/console/spot-checks/{id}"),
            &[("intent", "card_arrival")],
        )
        .await;
    assert_eq!(forged.status(), 403);
    let bad = c
        .act(
            &format!("/console/spot-checks/{id}"),
            &[("intent", "no_such_intent")],
        )
        .await;
    assert_eq!(bad.status(), 422);
    let missing = c
        .act(
            &format!("/console/spot-checks/{}", uuid::Uuid::now_v7()),
            &[("intent", "oos")],
        )
        .await;
    assert_eq!(missing.status(), 404);
    let still: Value = app
        .get(&format!("/v1/spot-checks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(still["label_intent"].is_null(), "nothing changed: {still}");

    let right = c
        .act(
            &format!("/console/spot-checks/{id}"),
            &[("intent", "card_arrival")],
        )
        .await;
    assert_eq!(right.status(), 303);
    assert_eq!(location(&right), "/console/spot-checks?notice=labelled");
    let page = c.page("/console/spot-checks?notice=labelled").await;
    assert!(page.contains("Label saved."), "{page}");
    assert!(page.contains("Nothing to check."), "{page}");
    assert!(
        page.contains("1 of 1 spot-checked automatic answers in 30 d were routed right: 100.0%"),
        "{page}"
    );
    assert!(page.contains("Consistent with the 98.0% target"), "{page}");
    let by_sop = &page[page.find("id=\"spot-by-sop\"").expect("the per-SOP table")..];
    assert!(
        by_sop.contains("card-delivery@1#") && by_sop.contains("1 (100.0%)"),
        "{by_sop}"
    );
    let labelled: Value = app
        .get(&format!("/v1/spot-checks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(labelled["reviewer"], "bea@example.com");
    let dashboard = c.page("/console/dashboard").await;
    assert!(
        dashboard.contains("1 of 1 spot-checked automatic answers"),
        "{dashboard}"
    );
}
