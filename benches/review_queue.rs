//! Review queue throughput on Postgres: 16 reviewers claim-next and resolve
//! as fast as they can from a queue of 100,000 pending items.
//!
//! Needs a Postgres server: `SOPR_BENCH_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) names one where a
//! throw-away database is created and dropped afterwards. Items are seeded in
//! bulk with SQL (conversation, customer message, decision, open review item,
//! mixed priorities and due times), then the workers run for 20 s. Prints
//! claim+resolve operations per second and claim/resolve latency percentiles.
//! Run with `cargo bench --bench review_queue`. `ITEMS`, `WORKERS` and
//! `SECONDS` change the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use sopr::store::{Claim, NewFeedback, NewMessage, NewReviewEvent, Resolution, Role};
use sqlx::Connection;
use uuid::Uuid;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(root, _)| root);
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

const SEED: [&str; 4] = [
    "INSERT INTO conversations (id, tenant_id, customer_id, created_at, updated_at) \
     SELECT md5('c' || g)::uuid, $1, 'cust-' || g, now(), now() FROM generate_series(1, $2) g",
    "INSERT INTO messages (id, tenant_id, conversation_id, role, body, created_at) \
     SELECT md5('m' || g)::uuid, $1, md5('c' || g)::uuid, 'customer', 'my card has not arrived ' || g, now() \
     FROM generate_series(1, $2) g",
    "INSERT INTO decisions (id, tenant_id, conversation_id, message_id, intent, confidence, top_intents, flags, sop_ref, \
     model_version, outcome, reasons, draft, timings, created_at) \
     SELECT md5('d' || g)::uuid, $1, md5('c' || g)::uuid, md5('m' || g)::uuid, 'card_arrival', 0.4, '[]', '[]', \
     'card-delivery@1#bench', 'bench', 'queued', '[\"low_confidence\"]', 'Your card is on its way.', '{}', now() \
     FROM generate_series(1, $2) g",
    "INSERT INTO review_items (id, tenant_id, conversation_id, decision_id, state, priority, sop_ref, reasons, draft, \
     due_at, message_count, version, created_at, updated_at) \
     SELECT md5('r' || g)::uuid, $1, md5('c' || g)::uuid, md5('d' || g)::uuid, 'open', g % 4, 'card-delivery@1#bench', \
     '[\"low_confidence\"]', 'Your card is on its way.', now() + (g % 240) * interval '1 minute', 1, 0, now(), now() \
     FROM generate_series(1, $2) g",
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let admin = std::env::var("SOPR_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let items = env_or("ITEMS", 100_000) as i64;
    let workers = env_or("WORKERS", 16) as usize;
    let seconds = env_or("SECONDS", 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let name = format!("sopr_bench_{}", Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to SOPR_BENCH_DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let url = with_database(&admin, &name);
        let store = sopr::store::connect(&url, workers as u32 + 4)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        let (tenant, _) = store.ensure_tenant("bench").await.expect("tenant");

        let started = Instant::now();
        let mut seed = sqlx::PgConnection::connect(&url).await.expect("seed connection");
        for sql in SEED {
            sqlx::query(sql)
                .bind(tenant.id)
                .bind(items)
                .execute(&mut seed)
                .await
                .expect("seed");
        }
        sqlx::query("ANALYZE").execute(&mut seed).await.expect("analyze");
        println!(
            "review queue on Postgres: {items} pending items seeded in {:.1} s; {workers} workers for {seconds} s",
            started.elapsed().as_secs_f64()
        );

        let store = Arc::new(store);
        let until = Instant::now() + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..workers)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let me = format!("reviewer-{w}");
                    let (mut claims, mut resolves) = (Vec::new(), Vec::new());
                    while Instant::now() < until {
                        let now = Utc::now();
                        let claim = Claim {
                            reviewer: me.clone(),
                            now,
                            lease_until: now + chrono::Duration::minutes(10),
                        };
                        let t = Instant::now();
                        let Some(item) = store
                            .claim_next_review(tenant.id, &claim)
                            .await
                            .expect("claim")
                        else {
                            break;
                        };
                        claims.push(t.elapsed().as_secs_f64() * 1e3);
                        let reply = "Here is what happened.".to_string();
                        let resolution = Resolution {
                            review_id: item.id,
                            reviewer: me.clone(),
                            expected_version: Some(item.version),
                            action: "edit".into(),
                            final_reply: Some(reply.clone()),
                            reply_message: Some(NewMessage {
                                id: Uuid::now_v7(),
                                role: Role::Reviewer,
                                body: reply,
                                metadata: None,
                                idempotency: None,
                                created_at: Utc::now(),
                            }),
                            event: NewReviewEvent {
                                id: Uuid::now_v7(),
                                actor: me.clone(),
                                kind: "resolved.edit".into(),
                                data: json!({ "after": "Here is what happened." }),
                            },
                            feedback: NewFeedback {
                                id: Uuid::now_v7(),
                                label_intent: Some("card_arrival".into()),
                            },
                            notifications: Vec::new(),
                            now: Utc::now(),
                        };
                        let t = Instant::now();
                        store
                            .resolve_review(tenant.id, &resolution)
                            .await
                            .expect("resolve");
                        resolves.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    (claims, resolves)
                })
            })
            .collect();
        let began = Instant::now();
        let (mut claims, mut resolves) = (Vec::new(), Vec::new());
        for task in tasks {
            let (c, r) = task.await.expect("worker");
            claims.extend(c);
            resolves.extend(r);
        }
        let elapsed = began.elapsed().as_secs_f64();
        claims.sort_by(f64::total_cmp);
        resolves.sort_by(f64::total_cmp);
        println!(
            "  {} claim+resolve in {elapsed:.1} s: {:.0} per second",
            resolves.len(),
            resolves.len() as f64 / elapsed
        );
        for (label, values) in [("claim", &claims), ("resolve", &resolves)] {
            println!(
                "  {label:<8} p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
                percentile(values, 0.5),
                percentile(values, 0.9),
                percentile(values, 0.99),
                percentile(values, 1.0)
            );
        }
        drop(store);
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    });
}
