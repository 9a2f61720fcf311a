//! Every store behaviour, on SQLite always and on Postgres when
//! `SOPR_TEST_DATABASE_URL` is set. Both backends must give the same answers.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{Duration, Utc};
use serde_json::json;
use sopr::store::*;
use support::{TestDb, databases};
use uuid::Uuid;

async fn store_for(db: &TestDb) -> Arc<dyn Store> {
    let store = sopr::store::connect(db.url(), 40).await.expect("connect");
    store.migrate().await.expect("migrate");
    // Migrations are idempotent.
    store.migrate().await.expect("migrate twice");
    store
}

async fn tenant(store: &dyn Store) -> Tenant {
    store
        .ensure_tenant(&format!("t-{}", Uuid::now_v7().simple()))
        .await
        .unwrap()
        .0
}

fn decision(conversation_id: Uuid, message_id: Uuid, outcome: &str) -> Decision {
    Decision {
        id: Uuid::now_v7(),
        conversation_id,
        message_id,
        intent: Some("card_arrival".into()),
        confidence: 0.42,
        top_intents: sqlx::types::Json(json!([{ "intent": "card_arrival", "probability": 0.42 }])),
        flags: sqlx::types::Json(json!([])),
        sop_ref: Some("card-delivery@1#abcdefabcdef".into()),
        model_version: "test".into(),
        outcome: outcome.into(),
        reasons: sqlx::types::Json(json!(["low_confidence"])),
        draft: Some("draft reply".into()),
        timings: sqlx::types::Json(json!({})),
        llm: None,
        created_at: Utc::now(),
    }
}

fn message(role: Role, body: &str, key: Option<(&str, &str)>) -> NewMessage {
    NewMessage {
        id: Uuid::now_v7(),
        role,
        body: body.into(),
        metadata: None,
        idempotency: key.map(|(k, h)| Idempotency {
            key: k.into(),
            request_hash: h.into(),
            response: json!({ "outcome": "queued", "key": k }),
        }),
        created_at: Utc::now(),
    }
}

/// Writes a new conversation with one customer message and (optionally) a review item.
async fn exchange(
    store: &dyn Store,
    tenant: Uuid,
    plan: &str,
    priority: i32,
    due_in_min: i64,
) -> (Uuid, Option<Uuid>) {
    let conversation_id = Uuid::now_v7();
    let now = Utc::now();
    let inbound = message(Role::Customer, "where is my card", None);
    let d = decision(
        conversation_id,
        inbound.id,
        if plan == "review" {
            "queued"
        } else {
            "answered"
        },
    );
    let review_id = Uuid::now_v7();
    let review = if plan == "review" {
        ReviewPlan::Create(NewReviewItem {
            id: review_id,
            priority,
            reasons: json!(["low_confidence"]),
            draft: Some("draft reply".into()),
            due_at: now + Duration::minutes(due_in_min),
        })
    } else {
        ReviewPlan::None
    };
    store
        .record_exchange(&Exchange {
            spot_check: (plan == "spot_check").then_some(review_id),
            tenant_id: tenant,
            new_conversation: Some(Conversation {
                id: conversation_id,
                tenant_id: tenant,
                customer_id: "cust".into(),
                customer_name: None,
                customer_email: None,
                channel: Some("web".into()),
                created_at: now,
                updated_at: now,
            }),
            conversation_id,
            inbound,
            decision: d,
            reply: Some(message(Role::Bot, "holding", None)),
            notifications: Vec::new(),
            review,
        })
        .await
        .unwrap();
    // A review item's id, or a spot check's.
    (
        conversation_id,
        (plan == "review" || plan == "spot_check").then_some(review_id),
    )
}

fn claim(reviewer: &str, lease_secs: i64) -> Claim {
    let now = Utc::now();
    Claim {
        reviewer: reviewer.into(),
        now,
        lease_until: now + Duration::seconds(lease_secs),
    }
}

#[tokio::test]
async fn tenants_and_api_keys() {
    for db in databases().await {
        let store = store_for(&db).await;
        let before = store.tenant_count().await.unwrap();
        let (t, created) = store.ensure_tenant("acme").await.unwrap();
        assert!(created, "{}", db.label());
        let (again, created) = store.ensure_tenant("acme").await.unwrap();
        assert!(!created);
        assert_eq!(t.id, again.id);
        assert_eq!(store.tenant_count().await.unwrap(), before + 1);
        store
            .insert_api_key(t.id, "sopr_abc", "hash-1")
            .await
            .unwrap();
        assert_eq!(
            store.tenant_for_key("hash-1").await.unwrap().unwrap().id,
            t.id
        );
        assert!(store.tenant_for_key("hash-2").await.unwrap().is_none());
        assert!(matches!(
            store.insert_api_key(t.id, "x", "hash-1").await,
            Err(StoreError::Conflict(_))
        ));
    }
}

#[tokio::test]
async fn console_sessions_expire_end_with_the_user_and_count_failed_sign_ins() {
    for db in databases().await {
        let label = db.label();
        let store = store_for(&db).await;
        let acme = tenant(store.as_ref()).await;
        let user = User {
            id: Uuid::now_v7(),
            tenant_id: acme.id,
            email: "bea@example.com".into(),
            role: "reviewer".into(),
            password_hash: "$argon2id$v=19$stub".into(),
            created_at: Utc::now(),
            disabled_at: None,
            failed_logins: 0,
            locked_until: None,
        };
        store.create_user(&user).await.unwrap();
        let now = Utc::now();
        let session = |hash: &str, expires: chrono::DateTime<Utc>| NewSession {
            token_hash: hash.into(),
            tenant_id: acme.id,
            user_id: user.id,
            csrf_token: format!("csrf-{hash}"),
            created_at: now,
            expires_at: expires,
        };
        store
            .create_session(&session("live", now + Duration::hours(1)))
            .await
            .unwrap();
        store
            .create_session(&session("old", now - Duration::seconds(1)))
            .await
            .unwrap();
        let live = store
            .session("live", now)
            .await
            .unwrap()
            .expect("live session");
        assert_eq!(live.user.email, "bea@example.com", "{label}");
        assert_eq!(live.csrf_token, "csrf-live", "{label}");
        assert!(
            store.session("old", now).await.unwrap().is_none(),
            "{label}: expired"
        );
        assert!(
            store.session("nope", now).await.unwrap().is_none(),
            "{label}"
        );
        assert_eq!(
            store.delete_expired_sessions(now).await.unwrap(),
            1,
            "{label}"
        );

        // A disabled user's sessions stop working.
        store
            .set_user_disabled(acme.id, "bea@example.com", Some(now))
            .await
            .unwrap();
        assert!(
            store.session("live", now).await.unwrap().is_none(),
            "{label}"
        );
        store
            .set_user_disabled(acme.id, "bea@example.com", None)
            .await
            .unwrap();
        assert!(
            store.session("live", now).await.unwrap().is_some(),
            "{label}"
        );
        store.delete_user_sessions(user.id).await.unwrap();
        assert!(
            store.session("live", now).await.unwrap().is_none(),
            "{label}"
        );

        // Failed sign-ins count up; a lock holds until cleared.
        assert_eq!(
            store.record_failed_login(user.id).await.unwrap(),
            1,
            "{label}"
        );
        assert_eq!(
            store.record_failed_login(user.id).await.unwrap(),
            2,
            "{label}"
        );
        store
            .lock_user(user.id, now + Duration::minutes(5))
            .await
            .unwrap();
        let locked = store.user_by_id(acme.id, user.id).await.unwrap().unwrap();
        assert_eq!(locked.failed_logins, 2, "{label}");
        assert!(locked.locked_until.is_some_and(|t| t > now), "{label}");
        store.clear_failed_logins(user.id).await.unwrap();
        let cleared = store
            .user_by_email(acme.id, "bea@example.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (cleared.failed_logins, cleared.locked_until),
            (0, None),
            "{label}"
        );
        // A new password also clears a lock.
        store.record_failed_login(user.id).await.unwrap();
        store
            .lock_user(user.id, now + Duration::minutes(5))
            .await
            .unwrap();
        store
            .set_user_password(acme.id, "bea@example.com", "new")
            .await
            .unwrap();
        let reset = store.user_by_id(acme.id, user.id).await.unwrap().unwrap();
        assert_eq!(
            (reset.failed_logins, reset.locked_until),
            (0, None),
            "{label}"
        );
    }
}

#[tokio::test]
async fn users_are_unique_per_tenant_by_email() {
    for db in databases().await {
        let store = store_for(&db).await;
        let (acme, other) = (tenant(store.as_ref()).await, tenant(store.as_ref()).await);
        let user = |tenant: &Tenant, email: &str, role: &str| User {
            id: Uuid::now_v7(),
            tenant_id: tenant.id,
            email: email.into(),
            role: role.into(),
            password_hash: "$argon2id$v=19$stub".into(),
            created_at: Utc::now(),
            disabled_at: None,
            failed_logins: 0,
            locked_until: None,
        };
        store
            .create_user(&user(&acme, "bea@example.com", "reviewer"))
            .await
            .unwrap();
        store
            .create_user(&user(&acme, "ana@example.com", "admin"))
            .await
            .unwrap();
        // The same person may work for another tenant.
        store
            .create_user(&user(&other, "ana@example.com", "reviewer"))
            .await
            .unwrap();
        let duplicate = store
            .create_user(&user(&acme, "ana@example.com", "reviewer"))
            .await;
        assert!(
            matches!(&duplicate, Err(StoreError::Conflict(name)) if name == "users_email"),
            "{}: {duplicate:?}",
            db.label()
        );

        let listed: Vec<(String, String)> = store
            .list_users(acme.id)
            .await
            .unwrap()
            .into_iter()
            .map(|u| (u.email, u.role))
            .collect();
        assert_eq!(
            listed,
            [
                ("ana@example.com".into(), "admin".into()),
                ("bea@example.com".into(), "reviewer".into())
            ],
            "{}",
            db.label()
        );
        assert!(
            store
                .set_user_password(acme.id, "ana@example.com", "new-hash")
                .await
                .unwrap()
        );
        assert!(
            !store
                .set_user_password(acme.id, "nobody@example.com", "x")
                .await
                .unwrap()
        );
        let ana = store
            .user_by_email(acme.id, "ana@example.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ana.password_hash, "new-hash");
        let theirs = store
            .user_by_email(other.id, "ana@example.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(theirs.role, "reviewer", "{}", db.label());
        assert!(
            store
                .user_by_email(acme.id, "nobody@example.com")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store.tenant_by_name(&acme.name).await.unwrap().unwrap().id,
            acme.id
        );
        assert!(
            store
                .tenant_by_name("no-such-tenant")
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test]
async fn router_models_are_stored_by_version_and_pruned_oldest_first() {
    for db in databases().await {
        let store = store_for(&db).await;
        for i in 0..4u8 {
            let record = RouterModelRecord {
                version: format!("v{i}"),
                examples: 10,
                labels: 2,
                metrics: json!({ "i": i }),
                model: vec![i; 1000],
            };
            store.save_router_model(&record).await.unwrap();
            // The same version again keeps the first copy.
            store
                .save_router_model(&RouterModelRecord {
                    model: vec![9],
                    ..record
                })
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            store.router_model("v2").await.unwrap(),
            Some(vec![2u8; 1000]),
            "{}",
            db.label()
        );
        assert!(store.router_model("nope").await.unwrap().is_none());
        let listed = store.router_models(3).await.unwrap();
        let versions: Vec<&str> = listed.iter().map(|m| m.version.as_str()).collect();
        assert_eq!(versions, ["v3", "v2", "v1"], "{}", db.label());
        assert_eq!(listed[1].metrics.0, json!({ "i": 2 }));
        assert_eq!((listed[1].examples, listed[1].labels), (10, 2));
        assert_eq!(listed[1].promoted_at, None);

        // The latest promotion counts; pruning keeps that model however old.
        assert_eq!(store.promoted_router_model().await.unwrap(), None);
        let now = Utc::now();
        assert!(store.promote_router_model("v0", now).await.unwrap());
        assert!(
            store
                .promote_router_model("v1", now + Duration::seconds(1))
                .await
                .unwrap()
        );
        assert!(!store.promote_router_model("nope", now).await.unwrap());
        assert_eq!(
            store.promoted_router_model().await.unwrap().as_deref(),
            Some("v1"),
            "{}",
            db.label()
        );
        assert_eq!(store.prune_router_models(2).await.unwrap(), 1);
        assert!(store.router_model("v0").await.unwrap().is_none());
        assert!(store.router_model("v1").await.unwrap().is_some());
        assert!(store.router_model("v3").await.unwrap().is_some());
        assert_eq!(store.prune_router_models(2).await.unwrap(), 0);
        let listed = store.router_models(3).await.unwrap();
        let promoted = listed.iter().find(|m| m.version == "v1").unwrap();
        assert_eq!(
            promoted.promoted_at.map(|t| t.timestamp()),
            Some((now + Duration::seconds(1)).timestamp())
        );
        // The later promotion wins.
        store
            .promote_router_model("v3", now + Duration::seconds(2))
            .await
            .unwrap();
        assert_eq!(
            store.promoted_router_model().await.unwrap().as_deref(),
            Some("v3")
        );
        assert_eq!(store.prune_router_models(2).await.unwrap(), 1, "v1 goes");
    }
}

#[tokio::test]
async fn one_router_model_is_pinned_until_unpinned_and_pruning_keeps_it() {
    for db in databases().await {
        let store = store_for(&db).await;
        let label = db.label();
        for i in 0..4u8 {
            store
                .save_router_model(&RouterModelRecord {
                    version: format!("v{i}"),
                    examples: 10,
                    labels: 2,
                    metrics: json!({}),
                    model: vec![i; 10],
                })
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(store.pinned_router_model().await.unwrap(), None, "{label}");
        assert_eq!(store.unpin_router_model().await.unwrap(), None, "{label}");

        // Pinning a missing model changes nothing.
        let now = Utc::now();
        assert!(!store.pin_router_model("nope", now, None).await.unwrap());
        assert_eq!(store.pinned_router_model().await.unwrap(), None);

        // A pin counts as a promotion at the same moment.
        store.promote_router_model("v3", now).await.unwrap();
        let later = now + Duration::seconds(1);
        assert!(
            store
                .pin_router_model("v0", later, Some("a bad retrain"))
                .await
                .unwrap(),
            "{label}"
        );
        assert_eq!(
            store.pinned_router_model().await.unwrap().as_deref(),
            Some("v0"),
            "{label}"
        );
        assert_eq!(
            store.promoted_router_model().await.unwrap().as_deref(),
            Some("v0"),
            "{label}"
        );
        let listed = store.router_models(10).await.unwrap();
        let v0 = listed.iter().find(|m| m.version == "v0").unwrap();
        assert_eq!(v0.pinned_at.map(|t| t.timestamp()), Some(later.timestamp()));
        assert_eq!(v0.promoted_at, v0.pinned_at);
        assert_eq!(v0.pin_reason.as_deref(), Some("a bad retrain"));
        assert!(
            listed
                .iter()
                .filter(|m| m.version != "v0")
                .all(|m| m.pinned_at.is_none())
        );

        // Another pin replaces it: one model is pinned at a time.
        assert!(
            store
                .pin_router_model("v1", later + Duration::seconds(1), None)
                .await
                .unwrap()
        );
        let pinned: Vec<String> = store
            .router_models(10)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.pinned_at.is_some())
            .map(|m| m.version)
            .collect();
        assert_eq!(pinned, ["v1"], "{label}");
        let listed = store.router_models(10).await.unwrap();
        assert!(listed.iter().all(|m| m.pin_reason.is_none()), "{label}");

        // Pruning keeps the pinned model, however old; promoted last is v1 too.
        store
            .promote_router_model("v3", later + Duration::seconds(2))
            .await
            .unwrap();
        assert_eq!(store.prune_router_models(1).await.unwrap(), 2, "{label}");
        let left: Vec<String> = store
            .router_models(10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(left, ["v3", "v1"], "{label}");

        // Unpinning names the model it unpinned, which stays promoted.
        assert_eq!(
            store.unpin_router_model().await.unwrap().as_deref(),
            Some("v1"),
            "{label}"
        );
        assert_eq!(store.pinned_router_model().await.unwrap(), None);
        assert_eq!(store.unpin_router_model().await.unwrap(), None);
        let v1 = store.router_models(10).await.unwrap().remove(1);
        assert!(v1.promoted_at.is_some() && v1.pinned_at.is_none());
    }
}

#[tokio::test]
async fn a_lease_has_one_holder_until_it_lapses_or_is_released() {
    for db in databases().await {
        let store = store_for(&db).await;
        let label = db.label();
        let now = Utc::now();
        let until = now + Duration::seconds(30);
        assert!(
            store.try_lease("job", "a", now, until).await.unwrap(),
            "{label}"
        );
        // Held by `a`: `b` is refused, `a` renews.
        assert!(
            !store.try_lease("job", "b", now, until).await.unwrap(),
            "{label}"
        );
        let later = now + Duration::seconds(20);
        assert!(
            store
                .try_lease("job", "a", later, later + Duration::seconds(30))
                .await
                .unwrap(),
            "{label}"
        );
        // Renewed to 50 s: still held at 40 s, lapsed at 51 s.
        let at = |s| now + Duration::seconds(s);
        assert!(
            !store.try_lease("job", "b", at(40), at(70)).await.unwrap(),
            "{label}"
        );
        assert!(
            store.try_lease("job", "b", at(51), at(81)).await.unwrap(),
            "{label}"
        );
        assert!(
            !store.try_lease("job", "a", at(52), at(82)).await.unwrap(),
            "{label}"
        );
        // Another name is independent.
        assert!(
            store.try_lease("other", "a", at(52), at(82)).await.unwrap(),
            "{label}"
        );
        // Only the holder's release frees it.
        store.release_lease("job", "a").await.unwrap();
        assert!(
            !store.try_lease("job", "c", at(53), at(83)).await.unwrap(),
            "{label}"
        );
        store.release_lease("job", "b").await.unwrap();
        assert!(
            store.try_lease("job", "c", at(53), at(83)).await.unwrap(),
            "{label}"
        );
    }
}

#[tokio::test]
async fn sop_versions_are_recorded_once_per_hash() {
    for db in databases().await {
        let store = store_for(&db).await;
        let rec = |hash: &str| SopVersionRecord {
            sop_id: "card-delivery".into(),
            version: 1,
            hash: hash.into(),
            status: "active".into(),
            agent: "cards".into(),
            title: "Card delivery".into(),
            content: "id: card-delivery".into(),
        };
        store.record_sop_versions(&[rec("aaa")]).await.unwrap();
        store.record_sop_versions(&[rec("aaa")]).await.unwrap();
        store.record_sop_versions(&[rec("bbb")]).await.unwrap();
        let hashes = store.sop_version_hashes("card-delivery").await.unwrap();
        assert_eq!(
            hashes,
            vec![(1, "aaa".to_string()), (1, "bbb".to_string())],
            "{}",
            db.label()
        );
    }
}

#[tokio::test]
async fn an_exchange_is_written_atomically_with_its_review_item() {
    for db in databases().await {
        let store = store_for(&db).await;
        let t = tenant(store.as_ref()).await;
        let (conv, review) = exchange(store.as_ref(), t.id, "review", 1, 60).await;
        let review = review.unwrap();
        let msgs = store.conversation_messages(t.id, conv).await.unwrap();
        assert_eq!(
            msgs.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(),
            ["customer", "bot"]
        );
        let item = store
            .open_review_for_conversation(t.id, conv)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(item.id, review);
        assert_eq!(item.state, "open");
        assert_eq!(item.version, 1);
        let decision = store
            .decision(t.id, item.decision_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            decision.sop_ref.as_deref(),
            Some("card-delivery@1#abcdefabcdef")
        );
        assert_eq!(decision.top_intents.0[0]["intent"], "card_arrival");
        let events = store.review_events(t.id, review).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["created"]
        );
        // Other tenants see nothing.
        let other = tenant(store.as_ref()).await;
        assert!(store.conversation(other.id, conv).await.unwrap().is_none());
        assert!(store.review(other.id, review).await.unwrap().is_none());
        assert!(
            store
                .conversation_messages(other.id, conv)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn a_failed_exchange_writes_nothing() {
    for db in databases().await {
        let store = store_for(&db).await;
        let t = tenant(store.as_ref()).await;
        let (conv, _) = exchange(store.as_ref(), t.id, "review", 1, 60).await;
        // A second open item on the same conversation violates the one-open rule:
        // the whole exchange, message included, must roll back.
        let inbound = message(Role::Customer, "second", None);
        let result = store
            .record_exchange(&Exchange {
                spot_check: None,
                tenant_id: t.id,
                new_conversation: None,
                conversation_id: conv,
                decision: decision(conv, inbound.id, "queued"),
                inbound,
                reply: None,
                notifications: Vec::new(),
                review: ReviewPlan::Create(NewReviewItem {
                    id: Uuid::now_v7(),
                    priority: 1,
                    reasons: json!([]),
                    draft: None,
                    due_at: Utc::now(),
                }),
            })
            .await;
        match result {
            Err(StoreError::Conflict(name)) => {
                assert_eq!(name, "review_items_one_open", "{}", db.label())
            }
            other => panic!("{}: expected conflict, got {other:?}", db.label()),
        }
        assert_eq!(
            store.conversation_messages(t.id, conv).await.unwrap().len(),
            2
        );
    }
}

#[tokio::test]
async fn joining_an_open_item_appends_and_audits() {
    for db in databases().await {
        let store = store_for(&db).await;
        let t = tenant(store.as_ref()).await;
        let (conv, review) = exchange(store.as_ref(), t.id, "review", 1, 60).await;
        let review = review.unwrap();
        let inbound = message(Role::Customer, "any news?", None);
        store
            .record_exchange(&Exchange {
                spot_check: None,
                tenant_id: t.id,
                new_conversation: None,
                conversation_id: conv,
                decision: decision(conv, inbound.id, "joined"),
                inbound,
                reply: None,
                notifications: Vec::new(),
                review: ReviewPlan::Join {
                    review_id: review,
                    priority: 0,
                    resume_due_at: None,
                },
            })
            .await
            .unwrap();
        let item = store.review(t.id, review).await.unwrap().unwrap();
        assert_eq!(item.message_count, 2, "{}", db.label());
        assert_eq!(item.version, 2);
        let kinds: Vec<String> = store
            .review_events(t.id, review)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["created", "customer_message"]);
    }
}

#[tokio::test]
async fn idempotency_keys_are_unique_per_tenant() {
    for db in databases().await {
        let store = store_for(&db).await;
        let t = tenant(store.as_ref()).await;
        let conv = Uuid::now_v7();
        let now = Utc::now();
        let write = |tenant_id: Uuid, conversation: Uuid, new: bool| {
            let inbound = message(Role::Customer, "hi", Some(("key-1", "hash-1")));
            Exchange {
                spot_check: None,
                tenant_id,
                new_conversation: new.then(|| Conversation {
                    id: conversation,
                    tenant_id,
                    customer_id: "c".into(),
                    customer_name: None,
                    customer_email: None,
                    channel: None,
                    created_at: now,
                    updated_at: now,
                }),
                conversation_id: conversation,
                decision: decision(conversation, inbound.id, "answered"),
                inbound,
                reply: None,
                notifications: Vec::new(),
                review: ReviewPlan::None,
            }
        };
        store
            .record_exchange(&write(t.id, conv, true))
            .await
            .unwrap();
        let replay = store
            .idempotent_replay(t.id, "key-1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(replay.request_hash, "hash-1");
        assert_eq!(replay.response["key"], "key-1");
        assert!(
            store
                .idempotent_replay(t.id, "key-2")
                .await
                .unwrap()
                .is_none()
        );
        match store.record_exchange(&write(t.id, conv, false)).await {
            Err(StoreError::Conflict(name)) => {
                assert_eq!(name, "messages_idempotency", "{}", db.label())
            }
            other => panic!("expected conflict, got {other:?}"),
        }
        // The same key is free in another tenant.
        let other = tenant(store.as_ref()).await;
        store
            .record_exchange(&write(other.id, Uuid::now_v7(), true))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn claim_next_takes_the_most_urgent_item_first() {
    for db in databases().await {
        let store = store_for(&db).await;
        let t = tenant(store.as_ref()).await;
        let (_, low) = exchange(store.as_ref(), t.id, "review", 0, 10).await;
        let (_, high_late) = exchange(store.as_ref(), t.id, "review", 2, 120).await;
        let (_, high_soon) = exchange(store.as_ref(), t.id, "review", 2, 30).await;
        let (_, normal) = exchange(store.as_ref(), t.id, "review", 1, 5).await;
        let listed: Vec<Uuid> = store
            .list_reviews(
                t.id,
                &ReviewFilter {
                    state: None,
                    limit: 10,
                },
                Utc::now(),
            )
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        let expected = vec![
            high_soon.unwrap(),
            high_late.unwrap(),
            normal.unwrap(),
            low.unwrap(),
        ];
        assert_eq!(listed, expected, "{}", db.label());
        let mut claimed = Vec::new();
        while let Some(item) = store
            .claim_next_review(t.id, &claim("alice", 600))
            .await
            .unwrap()
        {
            assert_eq!(item.state, "claimed");
            assert_eq!(item.claimed_by.as_deref(), Some("alice"));
            claimed.push(item.id);
        }
        assert_eq!(claimed, expected);
        let open = store.list_reviews(
            t.id,
            &ReviewFilter {
                state: Some(ReviewState::Open),
                limit: 10,
            },
            Utc::now(),
        );
        assert!(open.await.unwrap().is_empty());
        let mine = store.list_reviews(
            t.id,
            &ReviewFilter {
                state: Some(ReviewState::Claimed),
                limit: 10,
            },
            Utc::now(),
        );
        assert_eq!(mine.await.unwrap().len(), 4);
    }
}

#[tokio::test]
async fn a_claimed_item_cannot_be_taken_until_released() {
    for db in databases().await {
        let store = store_for(&db).await;
        let t = tenant(store.as_ref()).await;
        let (_, review) = exchange(store.as_ref(), t.id, "review", 1, 60).await;
        let id = review.unwrap();
        store
            .claim_review(t.id, id, &claim("alice", 600))
            .await
            .unwrap();
        assert!(matches!(
            store.claim_review(t.id, id, &claim("bob", 600)).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(
            store
                .claim_next_review(t.id, &claim("bob", 600))
                .await
                .unwrap()
                .is_none()
        );
        // Re-claiming your own item renews it without changing its version.
        let first = store.review(t.id, id).await.unwrap().unwrap();
        let again = store
            .claim_review(t.id, id, &claim("alice", 900))
            .await
            .unwrap();
        assert_eq!(again.version, first.version, "{}", db.label());
        assert!(again.lease_expires_at > first.lease_expires_at);
        let renewed = store
            .renew_review_lease(t.id, id, &claim("alice", 1200))
            .await
            .unwrap();
        assert!(renewed.lease_expires_at.unwrap() > Utc::now() + Duration::seconds(1000));
        assert!(matches!(
            store.renew_review_lease(t.id, id, &claim("bob", 60)).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            store.release_review(t.id, id, "bob", Utc::now()).await,
            Err(StoreError::Conflict(_))
        ));
        let released = store
            .release_review(t.id, id, "alice", Utc::now())
            .await
            .unwrap();
        assert_eq!(released.state, "open");
        assert!(released.claimed_by.is_none());
        let taken = store
            .claim_review(t.id, id, &claim("bob", 600))
            .await
            .unwrap();
        assert_eq!(taken.claimed_by.as_deref(), Some("bob"), "{}", db.label());
        let kinds: Vec<String> = store
            .review_events(t.id, id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["created", "claimed", "released", "claimed"]);
        assert!(matches!(
            store
                .claim_review(t.id, Uuid::now_v7(), &claim("bob", 60))
                .await,
            Err(StoreError::NotFound)
        ));
    }
}

#[tokio::test]
async fn an_expired_lease_makes_the_item_claimable_again() {
    for db in databases().await {
        let store = store_for(&db).await;
        let t = tenant(store.as_ref()).await;
        // A less urgent open item: the expired claim must still come first.
        let (_, low) = exchange(store.as_ref(), t.id, "review", 0, 600).await;
        let (_, review) = exchange(store.as_ref(), t.id, "review", 1, 60).await;
        let id = review.unwrap();
        // Alice's lease ran out a second ago.
        store
            .claim_review(t.id, id, &claim("alice", -1))
            .await
            .unwrap();
        let open = store.list_reviews(
            t.id,
            &ReviewFilter {
                state: Some(ReviewState::Open),
                limit: 10,
            },
            Utc::now(),
        );
        assert_eq!(
            open.await.unwrap().len(),
            2,
            "{}: expired claim counts as open",
            db.label()
        );
        let next = store
            .claim_next_review(t.id, &claim("bob", 600))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            next.id,
            id,
            "{}: the more urgent expired claim first",
            db.label()
        );
        assert_eq!(next.claimed_by.as_deref(), Some("bob"));
        let then = store
            .claim_next_review(t.id, &claim("bob", 600))
            .await
            .unwrap();
        assert_eq!(then.map(|i| i.id), low);
        let events = store.review_events(t.id, id).await.unwrap();
        let expired = events
            .iter()
            .find(|e| e.kind == "lease_expired")
            .expect("lease expiry is logged");
        assert_eq!(expired.data.0["previous"], "alice");
        // Alice can no longer resolve it.
        let r = resolution(id, "alice", None);
        assert!(matches!(
            store.resolve_review(t.id, &r).await,
            Err(StoreError::Conflict(_))
        ));
    }
}

fn resolution(id: Uuid, reviewer: &str, expected_version: Option<i64>) -> Resolution {
    Resolution {
        review_id: id,
        reviewer: reviewer.into(),
        expected_version,
        action: "edit".into(),
        final_reply: Some("Here is what happened…".into()),
        reply_message: Some(message(Role::Reviewer, "Here is what happened…", None)),
        event: NewReviewEvent {
            id: Uuid::now_v7(),
            actor: reviewer.into(),
            kind: "resolved.edit".into(),
            data: json!({ "before": "draft reply", "after": "Here is what happened…" }),
        },
        feedback: NewFeedback {
            id: Uuid::now_v7(),
            label_intent: Some("card_delivery_estimate".into()),
        },
        notifications: vec![notification(Some(id), None)],
        now: Utc::now(),
    }
}

/// A webhook outbox row.
fn notification(review_id: Option<Uuid>, dedupe_key: Option<&str>) -> NewNotification {
    NewNotification {
        id: Uuid::now_v7(),
        review_id,
        channel: "webhook".into(),
        target: "acme".into(),
        event: "message.created".into(),
        payload: json!({ "type": "message.created", "data": { "body": "Here is what happened…" } }),
        dedupe_key: dedupe_key.map(String::from),
    }
}

#[tokio::test]
async fn resolving_writes_reply_audit_and_feedback_once() {
    for db in databases().await {
        let store = store_for(&db).await;
        let t = tenant(store.as_ref()).await;
        let (conv, review) = exchange(store.as_ref(), t.id, "review", 1, 60).await;
        let id = review.unwrap();
        // Unclaimed items cannot be resolved.
        assert!(matches!(
            store
                .resolve_review(t.id, &resolution(id, "alice", None))
                .await,
            Err(StoreError::Conflict(_))
        ));
        let claimed = store
            .claim_review(t.id, id, &claim("alice", 600))
            .await
            .unwrap();
        // A stale version is refused and changes nothing.
        let stale = store
            .resolve_review(t.id, &resolution(id, "alice", Some(claimed.version - 1)))
            .await;
        assert!(
            matches!(stale, Err(StoreError::Conflict(_))),
            "{}",
            db.label()
        );
        let resolved = store
            .resolve_review(t.id, &resolution(id, "alice", Some(claimed.version)))
            .await
            .unwrap();
        assert_eq!(resolved.state, "resolved");
        assert_eq!(resolved.resolution.as_deref(), Some("edit"));
        assert_eq!(resolved.resolved_by.as_deref(), Some("alice"));
        assert!(resolved.lease_expires_at.is_none());
        // A second resolve (double click, second replica) is refused.
        assert!(matches!(
            store
                .resolve_review(t.id, &resolution(id, "alice", None))
                .await,
            Err(StoreError::Conflict(_))
        ));
        let msgs = store.conversation_messages(t.id, conv).await.unwrap();
        assert_eq!(msgs.last().unwrap().role, "reviewer");
        assert_eq!(msgs.last().unwrap().body, "Here is what happened…");
        assert_eq!(msgs.len(), 3);
        let events = store.review_events(t.id, id).await.unwrap();
        let last = events.last().unwrap();
        assert_eq!(
            (last.kind.as_str(), last.actor.as_str()),
            ("resolved.edit", "alice")
        );
        assert_eq!(last.data.0["before"], "draft reply");
        let feedback = store.review_feedback(t.id, id).await.unwrap();
        assert_eq!(feedback.len(), 1);
        assert_eq!(feedback[0].customer_text, "where is my card");
        assert_eq!(
            feedback[0].predicted_intent.as_deref(),
            Some("card_arrival")
        );
        assert_eq!(
            feedback[0].label_intent.as_deref(),
            Some("card_delivery_estimate")
        );
        assert_eq!(feedback[0].draft.as_deref(), Some("draft reply"));
        assert_eq!(
            feedback[0].sop_ref.as_deref(),
            Some("card-delivery@1#abcdefabcdef")
        );
        // The conversation may open a new item now.
        assert!(
            store
                .open_review_for_conversation(t.id, conv)
                .await
                .unwrap()
                .is_none()
        );
        let listed = store.list_reviews(
            t.id,
            &ReviewFilter {
                state: Some(ReviewState::Resolved),
                limit: 5,
            },
            Utc::now(),
        );
        assert_eq!(listed.await.unwrap()[0].id, id);
    }
}

#[tokio::test]
async fn thirty_two_concurrent_claimers_never_share_an_item() {
    for db in databases().await {
        let store = store_for(&db).await;
        let t = tenant(store.as_ref()).await;
        let items = 2_000;
        for i in 0..items {
            exchange(store.as_ref(), t.id, "review", i % 4, 60).await;
        }
        let mut tasks = Vec::new();
        for worker in 0..32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let me = format!("reviewer-{worker}");
                let mut mine = Vec::new();
                loop {
                    match store.claim_next_review(t.id, &claim(&me, 600)).await {
                        Ok(Some(item)) => {
                            assert_eq!(item.claimed_by.as_deref(), Some(me.as_str()));
                            store
                                .resolve_review(t.id, &resolution(item.id, &me, Some(item.version)))
                                .await
                                .unwrap();
                            mine.push(item.id);
                        }
                        Ok(None) => break,
                        Err(err) => panic!("claim failed: {err:?}"),
                    }
                }
                mine
            }));
        }
        let mut seen = HashSet::new();
        let mut total = 0;
        for task in tasks {
            for id in task.await.unwrap() {
                total += 1;
                assert!(seen.insert(id), "{}: item {id} claimed twice", db.label());
            }
        }
        assert_eq!(
            total,
            items as usize,
            "{}: every item resolved exactly once",
            db.label()
        );
        let left = store
            .list_reviews(
                t.id,
                &ReviewFilter {
                    state: None,
                    limit: 500,
                },
                Utc::now(),
            )
            .await
            .unwrap();
        assert!(left.is_empty());
        // No audit event is lost: each item has exactly created, claimed,
        // resolved in its trail, and one feedback row.
        for id in &seen {
            let kinds: Vec<String> = store
                .review_events(t.id, *id)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.kind)
                .collect();
            assert_eq!(kinds, ["created", "claimed", "resolved.edit"]);
            assert_eq!(store.review_feedback(t.id, *id).await.unwrap().len(), 1);
        }
    }
}

#[tokio::test]
async fn outbox_rows_are_written_with_what_they_announce_and_leased_once() {
    for db in databases().await {
        let label = db.label();
        let store = store_for(&db).await;
        let t = tenant(store.as_ref()).await;
        let (_, review) = exchange(store.as_ref(), t.id, "review", 1, 60).await;
        let id = review.unwrap();
        let now = Utc::now();
        // A refused resolve writes no row; a resolve writes its row once.
        assert!(
            store
                .resolve_review(t.id, &resolution(id, "alice", None))
                .await
                .is_err()
        );
        assert!(
            store
                .claim_notifications(now, now + Duration::seconds(60), 10)
                .await
                .unwrap()
                .is_empty(),
            "{label}"
        );
        let claim = Claim {
            reviewer: "alice".into(),
            now,
            lease_until: now + Duration::minutes(5),
        };
        let item = store.claim_review(t.id, id, &claim).await.unwrap();
        store
            .resolve_review(t.id, &resolution(id, "alice", Some(item.version)))
            .await
            .unwrap();
        let now = Utc::now();
        let leased = store
            .claim_notifications(now, now + Duration::seconds(60), 10)
            .await
            .unwrap();
        assert_eq!(leased.len(), 1, "{label}");
        assert_eq!(
            (leased[0].review_id, leased[0].attempts),
            (Some(id), 1),
            "{label}"
        );
        assert_eq!(
            leased[0].payload.0["data"]["body"], "Here is what happened…",
            "{label}"
        );
        // Leased rows are not handed out again until the lease runs out.
        assert!(
            store
                .claim_notifications(now, now + Duration::seconds(60), 10)
                .await
                .unwrap()
                .is_empty(),
            "{label}"
        );
        let later = now + Duration::seconds(61);
        let again = store
            .claim_notifications(later, later + Duration::seconds(60), 10)
            .await
            .unwrap();
        assert_eq!(
            (again.len(), again[0].attempts),
            (1, 2),
            "{label}: an expired lease hands the row out again"
        );

        // Retry later, then dead, then back to pending from the console.
        let row = again[0].id;
        let retry_at = later + Duration::seconds(30);
        store
            .finish_notification(
                row,
                &DeliveryOutcome::Retry {
                    at: retry_at,
                    error: "503".into(),
                },
                later,
            )
            .await
            .unwrap();
        assert!(
            store
                .claim_notifications(later, later, 10)
                .await
                .unwrap()
                .is_empty(),
            "{label}: not due yet"
        );
        let due = store
            .claim_notifications(retry_at, retry_at + Duration::seconds(60), 10)
            .await
            .unwrap();
        assert_eq!(due.len(), 1, "{label}");
        store
            .finish_notification(
                row,
                &DeliveryOutcome::Dead {
                    error: "gave up".into(),
                },
                retry_at,
            )
            .await
            .unwrap();
        let dead = store.list_notifications(t.id, "dead", 10).await.unwrap();
        assert_eq!(
            (dead.len(), dead[0].last_error.as_deref()),
            (1, Some("gave up")),
            "{label}"
        );
        assert!(
            store.retry_notification(t.id, row, retry_at).await.unwrap(),
            "{label}"
        );
        assert!(
            !store.retry_notification(t.id, row, retry_at).await.unwrap(),
            "{label}: only dead rows"
        );
        let revived = store
            .claim_notifications(retry_at, retry_at + Duration::seconds(60), 10)
            .await
            .unwrap();
        assert_eq!(
            (revived.len(), revived[0].attempts),
            (1, 1),
            "{label}: attempts start over"
        );
        store
            .finish_notification(row, &DeliveryOutcome::Delivered, retry_at)
            .await
            .unwrap();
        let delivered = store
            .list_notifications(t.id, "delivered", 10)
            .await
            .unwrap();
        assert!(delivered[0].delivered_at.is_some(), "{label}");

        assert_eq!(
            store.notification_backlog().await.unwrap(),
            (0, 0),
            "{label}"
        );
        // Delivered rows are kept until the retention passes.
        assert_eq!(
            store.prune_notifications(retry_at).await.unwrap(),
            0,
            "{label}"
        );
        assert_eq!(
            store
                .prune_notifications(retry_at + Duration::seconds(1))
                .await
                .unwrap(),
            1,
            "{label}"
        );
        assert!(
            store
                .list_notifications(t.id, "delivered", 10)
                .await
                .unwrap()
                .is_empty()
        );

        // A step with a dedupe key is written once, whoever enqueues it.
        let rows = [notification(Some(id), Some(&format!("sla-half:{id}")))];
        assert_eq!(
            store.enqueue_notifications(t.id, &rows, now).await.unwrap(),
            1,
            "{label}"
        );
        let rows = [notification(Some(id), Some(&format!("sla-half:{id}")))];
        assert_eq!(
            store.enqueue_notifications(t.id, &rows, now).await.unwrap(),
            0,
            "{label}"
        );
        assert_eq!(
            store.notification_backlog().await.unwrap(),
            (1, 0),
            "{label}"
        );
    }
}

#[tokio::test]
async fn slack_messages_are_kept_per_item_and_signed_requests_are_accepted_once() {
    for db in databases().await {
        let store = store_for(&db).await;
        let t = tenant(store.as_ref()).await;
        let (_, review) = exchange(store.as_ref(), t.id, "review", 1, 60).await;
        let id = review.unwrap();
        let posted_by = Uuid::now_v7();
        let message = sopr::store::SlackMessage {
            channel: "C0CARDS".into(),
            ts: "1700000000.000100".into(),
            tenant_id: t.id,
            review_id: id,
            notification_id: posted_by,
            event: "review.created".into(),
            created_at: Utc::now(),
            shown_version: 0,
        };
        assert!(store.slack_message_for(posted_by).await.unwrap().is_none());
        store.record_slack_message(&message).await.unwrap();
        // Recording the same message again (a retried delivery) is harmless.
        store.record_slack_message(&message).await.unwrap();
        let found = store.slack_message_for(posted_by).await.unwrap().unwrap();
        assert_eq!(
            (found.channel.as_str(), found.ts.as_str()),
            ("C0CARDS", "1700000000.000100")
        );
        let all = store.slack_messages(t.id, id).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].event, "review.created");
        let other = tenant(store.as_ref()).await;
        assert!(
            store.slack_messages(other.id, id).await.unwrap().is_empty(),
            "per tenant"
        );

        // What the message shows against what the item is.
        let day_ago = Utc::now() - Duration::days(1);
        let soon = Utc::now() + Duration::minutes(1);
        store
            .mark_slack_shown("C0CARDS", "1700000000.000100", 1)
            .await
            .unwrap();
        let claim = sopr::store::Claim {
            reviewer: "alice".into(),
            now: Utc::now(),
            lease_until: Utc::now() + Duration::minutes(15),
        };
        let claimed = store.claim_review(t.id, id, &claim).await.unwrap();
        assert!(claimed.version > 1, "{}", claimed.version);
        assert_eq!(
            store.stale_slack_items(day_ago, soon, 10).await.unwrap(),
            vec![(t.id, id, claimed.version)],
            "the claim is not shown yet"
        );
        assert!(
            store
                .stale_slack_items(day_ago, claimed.updated_at, 10)
                .await
                .unwrap()
                .is_empty(),
            "changed too recently"
        );
        assert!(
            store
                .stale_slack_items(soon, soon, 10)
                .await
                .unwrap()
                .is_empty(),
            "posted before the look-back"
        );
        store
            .mark_slack_shown("C0CARDS", "1700000000.000100", claimed.version)
            .await
            .unwrap();
        // An older version recorded late does not go back.
        store
            .mark_slack_shown("C0CARDS", "1700000000.000100", claimed.version - 1)
            .await
            .unwrap();
        assert!(
            store
                .stale_slack_items(day_ago, soon, 10)
                .await
                .unwrap()
                .is_empty()
        );

        let now = Utc::now();
        let window = Duration::minutes(10);
        assert!(
            store
                .remember_slack_request("v0=aa", now, now - window)
                .await
                .unwrap()
        );
        assert!(
            !store
                .remember_slack_request("v0=aa", now, now - window)
                .await
                .unwrap(),
            "a replay"
        );
        assert!(
            store
                .remember_slack_request("v0=bb", now, now - window)
                .await
                .unwrap()
        );
        // Once the window has passed the signature is forgotten (its
        // timestamp is stale by then, so it is refused before this).
        let later = now + Duration::minutes(11);
        assert!(
            store
                .remember_slack_request("v0=cc", later, later - window)
                .await
                .unwrap()
        );
        assert!(
            store
                .remember_slack_request("v0=aa", later, later - window)
                .await
                .unwrap()
        );
    }
}

#[tokio::test]
async fn feedback_examples_take_each_items_latest_label_newest_first() {
    for db in databases().await {
        let store = store_for(&db).await;
        let t = tenant(store.as_ref()).await;
        let labels = [Some("card_arrival"), None, Some("lost_or_stolen_card")];
        for (i, label) in labels.into_iter().enumerate() {
            let (_, review) = exchange(store.as_ref(), t.id, "review", 1, 60).await;
            let id = review.unwrap();
            let reviewer = format!("r{i}");
            store
                .claim_review(t.id, id, &claim(&reviewer, 600))
                .await
                .unwrap();
            if i == 2 {
                // Rerouted with one label, then resolved with another: the last counts.
                store
                    .reroute_review(
                        t.id,
                        &Reroute {
                            review_id: id,
                            reviewer: reviewer.clone(),
                            expected_version: None,
                            sop_ref: "card-delivery@1".into(),
                            draft: None,
                            priority: 1,
                            due_at: Utc::now() + Duration::minutes(60),
                            event: NewReviewEvent {
                                id: Uuid::now_v7(),
                                actor: reviewer.clone(),
                                kind: "rerouted".into(),
                                data: json!({}),
                            },
                            feedback: NewFeedback {
                                id: Uuid::now_v7(),
                                label_intent: Some("card_delivery_estimate".into()),
                            },
                            now: Utc::now(),
                        },
                    )
                    .await
                    .unwrap();
            }
            let mut r = resolution(id, &reviewer, None);
            r.feedback.label_intent = label.map(String::from);
            store.resolve_review(t.id, &r).await.unwrap();
        }
        let examples = store.feedback_examples(100).await.unwrap();
        let got: Vec<&str> = examples.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            got,
            ["card_arrival", "lost_or_stolen_card"],
            "{}",
            db.label()
        );
        assert!(examples.iter().all(|(_, text)| text == "where is my card"));
        let newest = store.feedback_examples(1).await.unwrap();
        assert_eq!(newest[0].0, "lost_or_stolen_card");
    }
}

#[tokio::test]
async fn labelled_messages_carry_the_routers_decision_per_tenant_and_since() {
    for db in databases().await {
        let label = db.label();
        let store = store_for(&db).await;
        let (t1, t2) = (tenant(store.as_ref()).await, tenant(store.as_ref()).await);
        let now = Utc::now();
        // (tenant, reviewer's label, labelled how long ago, rerouted first)
        let plan = [
            (&t1, Some("card_arrival"), 120, true),
            (&t1, None, 100, false),
            (&t1, Some("oos"), 60, false),
            (&t2, Some("card_delivery_estimate"), 0, false),
        ];
        for (t, intent, minutes_ago, rerouted) in plan {
            let (_, review) = exchange(store.as_ref(), t.id, "review", 1, 60).await;
            let id = review.unwrap();
            store
                .claim_review(t.id, id, &claim("ana", 600))
                .await
                .unwrap();
            let at = now - Duration::minutes(minutes_ago);
            if rerouted {
                // An older label of the same item: only the latest counts.
                store
                    .reroute_review(
                        t.id,
                        &Reroute {
                            review_id: id,
                            reviewer: "ana".into(),
                            expected_version: None,
                            sop_ref: "card-delivery@1".into(),
                            draft: None,
                            priority: 1,
                            due_at: now + Duration::minutes(60),
                            event: NewReviewEvent {
                                id: Uuid::now_v7(),
                                actor: "ana".into(),
                                kind: "rerouted".into(),
                                data: json!({}),
                            },
                            feedback: NewFeedback {
                                id: Uuid::now_v7(),
                                label_intent: Some("lost_or_stolen_card".into()),
                            },
                            now: at - Duration::minutes(1),
                        },
                    )
                    .await
                    .unwrap();
            }
            let mut r = resolution(id, "ana", None);
            r.feedback.label_intent = intent.map(String::from);
            r.now = at;
            store.resolve_review(t.id, &r).await.unwrap();
        }
        // A spot check of t1 labelled 30 minutes ago: exported beside them.
        let (_, check) = exchange(store.as_ref(), t1.id, "spot_check", 1, 60).await;
        let check = check.unwrap();
        store
            .label_spot_check(
                t1.id,
                check,
                "card_delivery_estimate",
                "bo",
                now - Duration::minutes(30),
            )
            .await
            .unwrap()
            .unwrap();
        let intents = |rows: &[LabelledMessage]| -> Vec<String> {
            rows.iter().map(|r| r.intent.clone()).collect()
        };
        let epoch = chrono::DateTime::UNIX_EPOCH;
        let all = store.labelled_messages(None, epoch).await.unwrap();
        let all: Vec<LabelledMessage> = all
            .into_iter()
            .filter(|r| r.tenant == t1.name || r.tenant == t2.name)
            .collect();
        assert_eq!(
            intents(&all),
            [
                "card_arrival",
                "oos",
                "card_delivery_estimate",
                "card_delivery_estimate"
            ],
            "{label}: oldest first, the latest label of each item, none for an item without one"
        );
        let spot = &all[2];
        assert_eq!(
            (
                spot.id,
                spot.source.as_str(),
                spot.action.as_str(),
                spot.reviewer.as_str()
            ),
            (check, "spot_check", "label", "bo"),
            "{label}"
        );
        assert_eq!(spot.routed_intent.as_deref(), Some("card_arrival"));
        assert_eq!(
            (all[3].source.as_str(), all[3].tenant.as_str()),
            ("review", t2.name.as_str())
        );
        let first = &all[0];
        assert_eq!(first.tenant, t1.name, "{label}");
        assert_eq!(first.text, "where is my card", "{label}");
        assert_eq!(
            first.routed_intent.as_deref(),
            Some("card_arrival"),
            "{label}"
        );
        assert!(
            (first.confidence - 0.42).abs() < 1e-9,
            "{label}: {}",
            first.confidence
        );
        assert_eq!(
            (first.action.as_str(), first.reviewer.as_str()),
            ("edit", "ana")
        );
        assert!(
            (first.labelled_at - (now - Duration::minutes(120)))
                .num_seconds()
                .abs()
                < 2,
            "{label}: {}",
            first.labelled_at
        );
        let of_t1 = store.labelled_messages(Some(t1.id), epoch).await.unwrap();
        assert_eq!(
            intents(&of_t1),
            ["card_arrival", "oos", "card_delivery_estimate"],
            "{label}"
        );
        assert_eq!(of_t1[0].source, "review", "{label}");
        let recent = now - Duration::minutes(90);
        let since = store.labelled_messages(None, recent).await.unwrap();
        assert!(
            since.iter().all(|r| r.labelled_at >= recent) && since.len() >= 2,
            "{label}"
        );
        let of_t2 = store.labelled_messages(Some(t2.id), recent).await.unwrap();
        assert_eq!(intents(&of_t2), ["card_delivery_estimate"], "{label}");
        let of_t1_later = store
            .labelled_messages(Some(t1.id), now - Duration::minutes(20))
            .await
            .unwrap();
        assert!(of_t1_later.is_empty(), "{label}: {of_t1_later:?}");
    }
}

#[tokio::test]
async fn spot_checks_wait_for_a_label_that_counts_and_teaches() {
    for db in databases().await {
        let label = db.label();
        let store = store_for(&db).await;
        let (t, other) = (tenant(store.as_ref()).await, tenant(store.as_ref()).await);
        let mut ids = Vec::new();
        for _ in 0..3 {
            let (_, id) = exchange(store.as_ref(), t.id, "spot_check", 1, 60).await;
            ids.push(id.unwrap());
        }
        exchange(store.as_ref(), t.id, "answer", 1, 60).await;
        let pending = store.spot_checks(t.id, false, 10).await.unwrap();
        assert_eq!(
            pending.iter().map(|c| c.id).collect::<Vec<_>>(),
            ids,
            "{label}: oldest first, only the sampled answers"
        );
        let first = &pending[0];
        assert_eq!(first.text, "where is my card", "{label}");
        assert_eq!(first.routed_intent.as_deref(), Some("card_arrival"));
        assert!((first.confidence - 0.42).abs() < 1e-9);
        assert_eq!(
            first.reply.as_deref(),
            Some("draft reply"),
            "{label}: the reply sent"
        );
        assert!(first.label_intent.is_none() && first.labelled_at.is_none());
        let since = Utc::now() - Duration::days(1);
        assert_eq!(
            SpotCheckCounts::total(&store.spot_check_counts(t.id, since).await.unwrap()),
            SpotCheckCounts {
                sampled: 3,
                labelled: 0,
                right: 0
            },
            "{label}"
        );

        // Another tenant neither sees nor labels them.
        assert!(store.spot_check(other.id, ids[0]).await.unwrap().is_none());
        let now = Utc::now();
        assert!(
            store
                .label_spot_check(other.id, ids[0], "card_arrival", "eve", now)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .spot_checks(other.id, false, 10)
                .await
                .unwrap()
                .is_empty()
        );

        // Right, wrong, then the wrong one corrected.
        let right = store
            .label_spot_check(t.id, ids[0], "card_arrival", "ana", now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (right.label_intent.as_deref(), right.reviewer.as_deref()),
            (Some("card_arrival"), Some("ana"))
        );
        store
            .label_spot_check(t.id, ids[1], "oos", "ana", now + Duration::seconds(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            SpotCheckCounts::total(&store.spot_check_counts(t.id, since).await.unwrap()),
            SpotCheckCounts {
                sampled: 3,
                labelled: 2,
                right: 1
            },
            "{label}"
        );
        store
            .label_spot_check(
                t.id,
                ids[1],
                "card_arrival",
                "bo",
                now + Duration::seconds(2),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            SpotCheckCounts::total(&store.spot_check_counts(t.id, since).await.unwrap()),
            SpotCheckCounts {
                sampled: 3,
                labelled: 2,
                right: 2
            },
            "{label}: a second label replaces the first"
        );
        let labelled = store.spot_checks(t.id, true, 10).await.unwrap();
        assert_eq!(
            labelled
                .iter()
                .map(|c| (c.id, c.reviewer.as_deref()))
                .collect::<Vec<_>>(),
            [(ids[1], Some("bo")), (ids[0], Some("ana"))],
            "{label}: latest label first"
        );
        assert_eq!(store.spot_checks(t.id, false, 10).await.unwrap().len(), 1);
        let groups = store.spot_check_counts(t.id, since).await.unwrap();
        assert_eq!(
            groups
                .iter()
                .map(|g| (g.sop_ref.as_deref(), g.counts.labelled))
                .collect::<Vec<_>>(),
            [(Some("card-delivery@1#abcdefabcdef"), 2)],
            "{label}: per SOP version that answered"
        );
        assert_eq!(
            SpotCheckCounts::total(
                &store
                    .spot_check_counts(t.id, Utc::now() + Duration::minutes(1))
                    .await
                    .unwrap()
            ),
            SpotCheckCounts::default(),
            "{label}: counted by when they were sampled"
        );

        // Labels teach the router like reviewers' decisions do.
        let examples = store.feedback_examples(100).await.unwrap();
        assert_eq!(
            examples,
            [
                ("card_arrival".to_string(), "where is my card".to_string()),
                ("card_arrival".to_string(), "where is my card".to_string()),
            ],
            "{label}"
        );
    }
}
