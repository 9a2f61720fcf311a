//! Queue, item, audit and history pages, and the form actions on an item.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Redirect, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::session::ConsoleUser;
use super::{Page, ago, escape, message_page, render, render_status, sla_label, unavailable};
use crate::http::AppState;
use crate::review::{Action, ReviewError, effective_state};
use crate::routing::screen;
use crate::sop::{Priority, Sop};
use crate::store::{QueueQuery, ReviewItem, ReviewState};

const QUEUE_LIMIT: i64 = 200;

/// Messages a redirect may ask a page to show (`?notice=`), by code, so no
/// text comes from the URL.
const NOTICES: &[(&str, &str)] = &[
    (
        "resolved",
        "Sent. The reply is in the customer's conversation.",
    ),
    ("rejected", "Closed without a reply."),
    (
        "waiting",
        "Question sent. The item waits for the customer's answer.",
    ),
    ("released", "Released back to the queue."),
    ("empty", "Nothing to claim: no open item in the queue."),
];

fn notice(code: Option<&str>) -> Option<&'static str> {
    code.and_then(|c| NOTICES.iter().find(|(k, _)| *k == c).map(|(_, v)| *v))
}

fn priority_name(rank: i32) -> &'static str {
    Priority::from_rank(rank).as_str()
}

fn find_sop(state: &AppState, sop_ref: Option<&str>) -> Option<Arc<Sop>> {
    let sop_ref = sop_ref?;
    state
        .pipeline
        .sops()
        .versions
        .iter()
        .find(|s| s.reference() == sop_ref)
        .cloned()
}

fn parse_id(id: &str) -> Option<Uuid> {
    Uuid::parse_str(id).ok()
}

/// What a user may see of a customer's text: admins see it whole, reviewers
/// with card numbers, IBANs, national ids, emails and phones masked.
fn visible(user: &ConsoleUser, text: &str) -> String {
    if user.is_admin() {
        text.to_string()
    } else {
        screen::mask_pii(text)
    }
}

/// The text as HTML (masked as the role requires), with what each flag
/// matched wrapped in `<mark>`.
fn highlight(user: &ConsoleUser, text: &str, flags: &[(String, String)]) -> String {
    let shown = visible(user, text);
    let lower = shown.to_ascii_lowercase();
    let mut spans: Vec<(usize, usize, String)> = Vec::new();
    if user.is_admin() {
        spans.extend(
            screen::pii_spans(&shown)
                .into_iter()
                .map(|(name, r)| (r.start, r.end, name.to_string())),
        );
    }
    for (name, evidence) in flags {
        let needle = evidence.trim().to_ascii_lowercase();
        if needle.is_empty() {
            continue;
        }
        let mut from = 0;
        while let Some(at) = lower[from..].find(&needle) {
            let start = from + at;
            spans.push((start, start + needle.len(), name.clone()));
            from = start + needle.len();
        }
    }
    spans.sort_by_key(|s| (s.0, std::cmp::Reverse(s.1)));
    let mut out = String::with_capacity(shown.len() + 32);
    let mut at = 0;
    for (start, end, name) in spans {
        if start < at || !shown.is_char_boundary(start) || !shown.is_char_boundary(end) {
            continue;
        }
        out.push_str(&escape(&shown[at..start]));
        out.push_str(&format!(
            "<mark class=\"flag\" title=\"{}\">{}</mark>",
            escape(&name),
            escape(&shown[start..end])
        ));
        at = end;
    }
    out.push_str(&escape(&shown[at..]));
    out
}

fn excerpt(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() <= max {
        s
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

fn flag_pairs(flags: &Value) -> Vec<(String, String)> {
    flags
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| {
                    Some((
                        f.get("name")?.as_str()?.to_string(),
                        f.get("evidence")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Default, Deserialize, Serialize, Clone)]
pub struct QueueParams {
    #[serde(default)]
    state: String,
    #[serde(default)]
    sop: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    priority: String,
    #[serde(default)]
    flag: String,
    #[serde(default)]
    breached: Option<String>,
    #[serde(default)]
    mine: Option<String>,
    #[serde(default, skip_serializing)]
    notice: Option<String>,
}

#[derive(Debug, Serialize)]
struct QueueRowView {
    id: Uuid,
    short_id: String,
    state: &'static str,
    priority: &'static str,
    sop_ref: Option<String>,
    sop_title: Option<String>,
    agent: Option<String>,
    intent: Option<String>,
    confidence: String,
    flags: Vec<String>,
    reasons: Vec<String>,
    excerpt: String,
    /// Empty while the SLA is paused.
    due_at: String,
    sla: String,
    breached: bool,
    claimed_by: Option<String>,
    mine: bool,
    messages: i32,
    age: String,
}

async fn queue_page(
    state: &AppState,
    user: &ConsoleUser,
    params: &QueueParams,
) -> Result<Page, Response> {
    let now = Utc::now();
    let sops = state.pipeline.sops();
    let filter_state = match params.state.as_str() {
        "" => None,
        "open" => Some(ReviewState::Open),
        "claimed" => Some(ReviewState::Claimed),
        "waiting" => Some(ReviewState::Waiting),
        _ => None,
    };
    let mut sop_ids: Option<BTreeSet<String>> = None;
    if !params.sop.is_empty() {
        sop_ids = Some([params.sop.clone()].into());
    }
    if !params.agent.is_empty() {
        let of_agent: BTreeSet<String> = sops
            .versions
            .iter()
            .filter(|s| s.file.agent == params.agent)
            .map(|s| s.id().to_string())
            .collect();
        sop_ids = Some(match sop_ids {
            Some(ids) => ids.intersection(&of_agent).cloned().collect(),
            None => of_agent,
        });
    }
    let query = QueueQuery {
        state: filter_state,
        sop_ids: sop_ids.map(|s| s.into_iter().collect()),
        priority: Priority::ALL
            .iter()
            .find(|p| p.as_str() == params.priority)
            .map(|p| p.rank()),
        breached: params.breached.is_some(),
        claimed_by: params.mine.is_some().then(|| user.reviewer().to_string()),
        flag: Some(params.flag.trim().to_string()).filter(|f| !f.is_empty()),
        limit: QUEUE_LIMIT,
    };
    let store_err = |err: crate::store::StoreError| {
        tracing::error!(error = %err, "console queue query failed");
        message_page(
            StatusCode::SERVICE_UNAVAILABLE,
            user,
            "Queue unavailable",
            "The database did not answer. The page will work again once it does.",
        )
    };
    let rows = state
        .store
        .list_queue(user.tenant_id(), &query, now)
        .await
        .map_err(store_err)?;
    let counts = state
        .store
        .queue_counts(user.tenant_id(), user.reviewer(), now)
        .await
        .map_err(store_err)?;
    let views: Vec<QueueRowView> = rows
        .iter()
        .map(|row| {
            let item = &row.item;
            let sop = find_sop(state, item.sop_ref.as_deref());
            let live_state = effective_state(item, now);
            QueueRowView {
                id: item.id,
                short_id: item.id.to_string()[..8].to_string(),
                state: live_state.as_str(),
                priority: priority_name(item.priority),
                sop_ref: item.sop_ref.clone(),
                sop_title: sop.as_ref().map(|s| s.file.title.clone()),
                agent: sop.as_ref().map(|s| s.file.agent.clone()),
                intent: row.intent.clone(),
                confidence: format!("{:.0}%", row.confidence * 100.0),
                flags: flag_pairs(&row.flags).into_iter().map(|(n, _)| n).collect(),
                // Flags show as chips of their own.
                reasons: string_list(&item.reasons)
                    .into_iter()
                    .filter(|r| !r.starts_with("flag:"))
                    .collect(),
                excerpt: excerpt(&visible(user, &row.message), 140),
                due_at: if live_state == ReviewState::Waiting {
                    String::new()
                } else {
                    item.due_at.to_rfc3339()
                },
                sla: if live_state == ReviewState::Waiting {
                    "SLA paused while waiting".into()
                } else {
                    sla_label(item.due_at, now)
                },
                breached: live_state != ReviewState::Waiting && item.due_at < now,
                claimed_by: (live_state == ReviewState::Claimed)
                    .then(|| item.claimed_by.clone())
                    .flatten(),
                mine: live_state == ReviewState::Claimed
                    && item.claimed_by.as_deref() == Some(user.reviewer()),
                messages: item.message_count,
                age: ago(item.created_at, now),
            }
        })
        .collect();
    let active: Vec<Value> = sops
        .active()
        .map(|s| json!({ "id": s.id(), "title": s.file.title }))
        .collect();
    let agents: BTreeSet<&str> = sops
        .versions
        .iter()
        .map(|s| s.file.agent.as_str())
        .collect();
    let mut page = Page::for_user("Queue", user, "queue");
    page.insert("rows", &views);
    page.insert("counts", &counts);
    page.insert("filters", params);
    page.insert(
        "filtered",
        &(filter_state.is_some()
            || query.sop_ids.is_some()
            || query.priority.is_some()
            || query.breached
            || query.claimed_by.is_some()
            || query.flag.is_some()),
    );
    page.insert("limit", &QUEUE_LIMIT);
    page.insert("sops", &active);
    page.insert("agents", &agents);
    page.insert("priorities", &Priority::ALL.map(Priority::as_str));
    page.insert("notice", &notice(params.notice.as_deref()));
    page.insert("live_poll_ms", &state.config.console.live_poll_ms);
    Ok(page)
}

pub async fn queue(
    State(state): State<AppState>,
    user: ConsoleUser,
    Query(params): Query<QueueParams>,
) -> Response {
    match queue_page(&state, &user, &params).await {
        Ok(page) => render("queue.html", &page),
        Err(response) => response,
    }
}

/// The queue's counts and rows alone, fetched by the page on a live update.
pub async fn queue_rows(
    State(state): State<AppState>,
    user: ConsoleUser,
    Query(params): Query<QueueParams>,
) -> Response {
    match queue_page(&state, &user, &params).await {
        Ok(page) => render("queue_rows.html", &page),
        Err(response) => response,
    }
}

#[derive(Debug, Deserialize)]
pub struct ItemQuery {
    notice: Option<String>,
}

pub async fn item(
    State(state): State<AppState>,
    user: ConsoleUser,
    Path(id): Path<String>,
    Query(query): Query<ItemQuery>,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return not_found(&user);
    };
    match item_page(&state, &user, id, None, None).await {
        Ok(mut page) => {
            page.insert("notice", &notice(query.notice.as_deref()));
            render("item.html", &page)
        }
        Err(response) => response,
    }
}

fn not_found(user: &ConsoleUser) -> Response {
    message_page(
        StatusCode::NOT_FOUND,
        user,
        "Not found",
        "There is no such review item in your workspace.",
    )
}

/// The item page's context. `error` is shown above the actions, and
/// `reply` replaces the draft in the editor (so a failed send keeps the
/// reviewer's text).
async fn item_page(
    state: &AppState,
    user: &ConsoleUser,
    id: Uuid,
    error: Option<&str>,
    reply: Option<&str>,
) -> Result<Page, Response> {
    let tenant = user.tenant_id();
    let now = Utc::now();
    let item = match state.store.review(tenant, id).await {
        Ok(Some(item)) => item,
        Ok(None) => return Err(not_found(user)),
        Err(err) => return Err(unavailable(user, err)),
    };
    let decision = state
        .store
        .decision(tenant, item.decision_id)
        .await
        .map_err(|e| unavailable(user, e))?;
    let messages = state
        .store
        .conversation_messages(tenant, item.conversation_id)
        .await
        .map_err(|e| unavailable(user, e))?;
    let conversation = state
        .store
        .conversation(tenant, item.conversation_id)
        .await
        .map_err(|e| unavailable(user, e))?;
    let flags = decision
        .as_ref()
        .map(|d| flag_pairs(&d.flags.0))
        .unwrap_or_default();
    let message_views: Vec<Value> = messages
        .iter()
        .map(|m| {
            let body = if m.role == "customer" {
                highlight(user, &m.body, &flags)
            } else {
                escape(&m.body)
            };
            json!({
                "role": m.role,
                "html": body,
                "at": m.created_at.to_rfc3339(),
                "ago": ago(m.created_at, now),
            })
        })
        .collect();
    let top: Vec<Value> = decision
        .as_ref()
        .and_then(|d| d.top_intents.0.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let p = t.get("probability").and_then(Value::as_f64).unwrap_or(0.0);
            json!({
                "intent": t.get("intent").and_then(Value::as_str).unwrap_or("?"),
                "percent": format!("{:.1}", p * 100.0),
                "width": (p * 100.0).clamp(0.0, 100.0).round() as i64,
            })
        })
        .collect();
    let sop = find_sop(state, item.sop_ref.as_deref());
    let sops = state.pipeline.sops();
    let active: Vec<Value> = sops
        .active()
        .map(|s| json!({ "id": s.id(), "title": s.file.title, "intents": s.file.intents }))
        .collect();
    let live_state = effective_state(&item, now);
    let mine =
        live_state == ReviewState::Claimed && item.claimed_by.as_deref() == Some(user.reviewer());
    let users = if user.is_admin() {
        state
            .store
            .list_users(tenant)
            .await
            .map_err(|e| unavailable(user, e))?
            .into_iter()
            .filter(|u| u.disabled_at.is_none())
            .map(|u| u.email)
            .collect()
    } else {
        Vec::new()
    };
    let flag_views: Vec<Value> = flags
        .iter()
        .map(|(name, evidence)| json!({ "name": name, "evidence": visible(user, evidence) }))
        .collect();
    let mut page = Page::for_user(
        &format!("Item {}", &item.id.to_string()[..8]),
        user,
        "queue",
    );
    page.insert(
        "item",
        &json!({
            "id": item.id,
            "short_id": item.id.to_string()[..8],
            "state": live_state.as_str(),
            "version": item.version,
            "priority": priority_name(item.priority),
            "sop_ref": item.sop_ref,
            "reasons": string_list(&item.reasons.0),
            "due_at": item.due_at.to_rfc3339(),
            "sla": sla_label(item.due_at, now),
            "breached": item.due_at < now && item.state != "resolved" && item.waiting_since.is_none(),
            "claimed_by": (live_state == ReviewState::Claimed).then_some(item.claimed_by.as_deref()).flatten(),
            "lease_expires_at": item.lease_expires_at.map(|t| t.to_rfc3339()),
            "resolution": item.resolution,
            "resolved_by": item.resolved_by,
            "resolved_at": item.resolved_at.map(|t| t.to_rfc3339()),
            "final_reply": item.final_reply.as_deref().map(|r| visible(user, r)),
            "has_draft": item.draft.is_some(),
            "created_ago": ago(item.created_at, now),
        }),
    );
    page.insert("mine", &mine);
    page.insert(
        "editor",
        &reply
            .map(str::to_string)
            .or_else(|| item.draft.clone())
            .unwrap_or_default(),
    );
    page.insert("messages", &message_views);
    page.insert(
        "customer",
        &conversation
            .map(|c| json!({ "id": c.customer_id, "name": c.customer_name, "channel": c.channel })),
    );
    page.insert(
        "decision",
        &decision.as_ref().map(|d| {
            json!({
                "intent": d.intent,
                "confidence": format!("{:.1}", d.confidence * 100.0),
                "model_version": d.model_version,
                "route": d.llm.as_ref().and_then(|l| l.0.get("route").cloned()),
                "route_unsure": crate::review::route_was_unsure(d),
            })
        }),
    );
    page.insert("top", &top);
    page.insert("flags", &flag_views);
    page.insert(
        "sop",
        &sop.map(|s| {
            json!({
                "ref": s.reference(),
                "id": s.id(),
                "version": s.file.version,
                "title": s.file.title,
                "description": s.file.description,
                "agent": s.file.agent,
                "steps": s.file.steps,
                "intents": s.file.intents,
            })
        }),
    );
    page.insert("active_sops", &active);
    page.insert("users", &users);
    page.insert("error", &error);
    page.insert("notice", &None::<&str>);
    page.insert("lease_secs", &state.config.review.lease_secs);
    page.insert("live_poll_ms", &state.config.console.live_poll_ms);
    Ok(page)
}

/// The item's version and state, for the page's live check.
pub async fn item_state(
    State(state): State<AppState>,
    user: ConsoleUser,
    Path(id): Path<String>,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match state.store.review(user.tenant_id(), id).await {
        Ok(Some(item)) => {
            let live = effective_state(&item, Utc::now());
            Json(json!({
                "version": item.version,
                "state": live.as_str(),
                "claimed_by": (live == ReviewState::Claimed).then_some(item.claimed_by),
            }))
            .into_response()
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(err) => {
            tracing::error!(error = %err, "item state query failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// Lease renewal while the item page is open (sent by the page's script).
pub async fn heartbeat(
    State(state): State<AppState>,
    user: ConsoleUser,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refused) = user.check_csrf_header(&headers) {
        return refused.into_response();
    }
    let Some(id) = parse_id(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match state
        .reviews
        .renew(user.tenant_id(), id, user.reviewer())
        .await
    {
        Ok(item) => {
            Json(json!({ "lease_expires_at": item.lease_expires_at, "version": item.version }))
                .into_response()
        }
        Err(ReviewError::Conflict(message)) => {
            (StatusCode::CONFLICT, Json(json!({ "detail": message }))).into_response()
        }
        Err(ReviewError::NotFound) => StatusCode::NOT_FOUND.into_response(),
        Err(err) => {
            tracing::error!(error = %err, "heartbeat failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

pub async fn claim_next(
    State(state): State<AppState>,
    user: ConsoleUser,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(refused) = user.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    match state
        .reviews
        .claim_next(user.tenant_id(), user.reviewer())
        .await
    {
        Ok(Some(item)) => Redirect::to(&format!("/console/items/{}", item.id)).into_response(),
        Ok(None) => Redirect::to("/console/queue?notice=empty").into_response(),
        Err(err) => unavailable(&user, err),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ActionForm {
    #[serde(default, rename = "_csrf")]
    csrf: String,
    #[serde(default)]
    version: Option<i64>,
    #[serde(default)]
    reply: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    sop: String,
    #[serde(default)]
    intent: String,
    #[serde(default)]
    question: String,
    #[serde(default)]
    assignee: String,
}

/// Every action on an item: a form post that redirects on success (so a
/// reload does not repeat it) and shows the item again with the error, and
/// the reviewer's text kept, when it fails.
pub async fn act(
    State(state): State<AppState>,
    user: ConsoleUser,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Err(refused) = user.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let Some(id) = parse_id(&id) else {
        return not_found(&user);
    };
    let (tenant, me) = (user.tenant_id(), user.reviewer());
    let reviews = &state.reviews;
    let intent = Some(form.intent.trim().to_string()).filter(|i| !i.is_empty());
    let item_url = format!("/console/items/{id}");
    let result: Result<String, ReviewError> = match action.as_str() {
        "claim" => reviews
            .claim_item(tenant, id, me)
            .await
            .map(|_| item_url.clone()),
        "release" => reviews
            .release(tenant, id, me)
            .await
            .map(|_| "/console/queue?notice=released".into()),
        "approve" => reviews
            .resolve(tenant, id, me, Action::Approve, intent, form.version)
            .await
            .map(|_| "/console/queue?notice=resolved".into()),
        "send" => reviews
            .resolve(
                tenant,
                id,
                me,
                Action::Edit {
                    reply: form.reply.clone(),
                },
                intent,
                form.version,
            )
            .await
            .map(|_| "/console/queue?notice=resolved".into()),
        "reject" => reviews
            .resolve(
                tenant,
                id,
                me,
                Action::Reject {
                    reason: form.reason.clone(),
                },
                intent,
                form.version,
            )
            .await
            .map(|_| "/console/queue?notice=rejected".into()),
        "reroute" => reviews
            .reroute(tenant, id, me, &form.sop, intent, form.version)
            .await
            .map(|_| item_url.clone()),
        "request-info" => reviews
            .request_info(tenant, id, me, &form.question, form.version)
            .await
            .map(|_| "/console/queue?notice=waiting".into()),
        "assign" => {
            let assignee = form.assignee.trim();
            // Assigning takes the item from whoever holds it: admins only
            // (a reviewer takes a free item with Claim).
            if !user.is_admin() {
                return message_page(
                    StatusCode::FORBIDDEN,
                    &user,
                    "Not allowed",
                    "Only an admin can give an item to someone else. Claim it to take it yourself.",
                );
            }
            match state
                .store
                .user_by_email(tenant, &assignee.to_lowercase())
                .await
            {
                Ok(Some(u)) if u.disabled_at.is_none() => {}
                Ok(_) => {
                    return retry_item(
                        &state,
                        &user,
                        id,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "`assignee` must be an enabled user of this workspace.",
                        &form,
                    )
                    .await;
                }
                Err(err) => return unavailable(&user, err),
            }
            reviews
                .assign(tenant, id, me, &assignee.to_lowercase())
                .await
                .map(|_| item_url.clone())
        }
        _ => return not_found(&user),
    };
    match result {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(ReviewError::NotFound) => not_found(&user),
        Err(ReviewError::Conflict(message)) => {
            retry_item(&state, &user, id, StatusCode::CONFLICT, &message, &form).await
        }
        Err(ReviewError::Invalid { field, message }) => {
            retry_item(
                &state,
                &user,
                id,
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("`{field}` {message}"),
                &form,
            )
            .await
        }
        Err(ReviewError::Store(err)) => unavailable(&user, err),
    }
}

async fn retry_item(
    state: &AppState,
    user: &ConsoleUser,
    id: Uuid,
    status: StatusCode,
    error: &str,
    form: &ActionForm,
) -> Response {
    let reply = Some(form.reply.as_str()).filter(|r| !r.trim().is_empty());
    match item_page(state, user, id, Some(error), reply).await {
        Ok(page) => render_status(status, "item.html", &page),
        Err(response) => response,
    }
}

pub async fn audit(
    State(state): State<AppState>,
    user: ConsoleUser,
    Path(id): Path<String>,
) -> Response {
    let Some(id) = parse_id(&id) else {
        return not_found(&user);
    };
    let tenant = user.tenant_id();
    let item: ReviewItem = match state.store.review(tenant, id).await {
        Ok(Some(item)) => item,
        Ok(None) => return not_found(&user),
        Err(err) => return unavailable(&user, err),
    };
    let events = match state.store.review_events(tenant, id).await {
        Ok(events) => events,
        Err(err) => return unavailable(&user, err),
    };
    let feedback = match state.store.review_feedback(tenant, id).await {
        Ok(f) => f,
        Err(err) => return unavailable(&user, err),
    };
    let now = Utc::now();
    let views: Vec<Value> = events
        .iter()
        .map(|e| {
            let data = &e.data.0;
            let text = |key: &str| -> Option<String> {
                data.get(key).filter(|v| !v.is_null()).map(|v| match v {
                    Value::String(s) => visible(&user, s),
                    other => visible(
                        &user,
                        &serde_json::to_string_pretty(other).unwrap_or_default(),
                    ),
                })
            };
            let mut rest = data.clone();
            if let Some(obj) = rest.as_object_mut() {
                obj.remove("before");
                obj.remove("after");
            }
            json!({
                "kind": e.kind,
                "actor": e.actor,
                "at": e.created_at.to_rfc3339(),
                "ago": ago(e.created_at, now),
                "before": text("before"),
                "after": text("after"),
                "details": visible(&user, &serde_json::to_string_pretty(&rest).unwrap_or_default()),
            })
        })
        .collect();
    let feedback_views: Vec<Value> = feedback
        .iter()
        .map(|f| json!({ "action": f.action, "predicted": f.predicted_intent, "label": f.label_intent, "reviewer": f.reviewer, "sop_ref": f.sop_ref, "at": f.created_at.to_rfc3339() }))
        .collect();
    let mut page = Page::for_user(
        &format!("Audit of {}", &id.to_string()[..8]),
        &user,
        "history",
    );
    page.insert("item", &json!({ "id": item.id, "short_id": item.id.to_string()[..8], "state": effective_state(&item, now).as_str(), "sop_ref": item.sop_ref }));
    page.insert("events", &views);
    page.insert("feedback", &feedback_views);
    render("audit.html", &page)
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    #[serde(default)]
    q: String,
}

pub async fn history(
    State(state): State<AppState>,
    user: ConsoleUser,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let q: String = query.q.chars().take(200).collect();
    let items = match state.store.search_resolved(user.tenant_id(), &q, 100).await {
        Ok(items) => items,
        Err(err) => return unavailable(&user, err),
    };
    let now = Utc::now();
    let rows: Vec<Value> = items
        .iter()
        .map(|i| {
            json!({
                "id": i.id,
                "short_id": i.id.to_string()[..8],
                "sop_ref": i.sop_ref,
                "resolution": i.resolution,
                "resolved_by": i.resolved_by,
                "resolved_ago": i.resolved_at.map(|t| ago(t, now)),
                "resolved_at": i.resolved_at.map(|t| t.to_rfc3339()),
                "reply": i.final_reply.as_deref().map(|r| excerpt(&visible(&user, r), 160)),
                "breached": i.resolved_at.is_some_and(|t| t > i.due_at),
            })
        })
        .collect();
    let mut page = Page::for_user("History", &user, "history");
    page.insert("q", &q);
    page.insert("rows", &rows);
    render("history.html", &page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::User;

    fn user(role: &str) -> ConsoleUser {
        ConsoleUser {
            user: User {
                id: Uuid::nil(),
                tenant_id: Uuid::nil(),
                email: "a@example.com".into(),
                role: role.into(),
                password_hash: String::new(),
                created_at: Utc::now(),
                disabled_at: None,
                failed_logins: 0,
                locked_until: None,
            },
            csrf_token: "t".into(),
        }
    }

    #[test]
    fn reviewers_see_pii_masked_and_highlighted() {
        let text = "My card 4111 1111 1111 1111 was stolen <b>fraud</b>";
        let flags = screen::screen(text);
        let pairs: Vec<(String, String)> = flags
            .iter()
            .map(|f| (f.name.clone(), f.evidence.clone()))
            .collect();
        let html = highlight(&user("reviewer"), text, &pairs);
        assert!(!html.contains("4111 1111 1111 1111"), "{html}");
        assert!(
            html.contains(
                "<mark class=\"flag\" title=\"pii.card_number\">**** **** **** 1111</mark>"
            ),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt;"), "escaped: {html}");
        let admin = highlight(&user("admin"), text, &pairs);
        assert!(admin.contains(">4111 1111 1111 1111</mark>"), "{admin}");
    }

    #[test]
    fn topic_matches_are_marked_case_insensitively() {
        let pairs = vec![("topic.fraud".to_string(), "fraud".to_string())];
        let html = highlight(&user("reviewer"), "This is FRAUD, pure fraud", &pairs);
        assert_eq!(html.matches("<mark").count(), 2, "{html}");
        assert!(html.contains(">FRAUD</mark>"));
    }

    #[test]
    fn notices_come_from_a_fixed_list() {
        assert!(notice(Some("resolved")).is_some());
        assert_eq!(notice(Some("<script>")), None);
    }
}
