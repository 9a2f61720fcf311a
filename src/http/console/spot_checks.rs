//! Spot checks: automatically answered messages sampled
//! (`review.spot_check_share`) for a reviewer to say which intent they were
//! about, after the reply went out. Their labels measure the accuracy of
//! automatic answers on live traffic.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{Duration, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::session::ConsoleUser;
use super::{Page, ago, message_page, render, unavailable};
use crate::http::AppState;
use crate::review::{ReviewError, SopSpotCheckSummary, SpotCheckReport, SpotCheckSummary};
use crate::routing::eval::OUT_OF_SCOPE;
use crate::routing::screen;
use crate::store::SpotCheck;

/// The period the page's and the dashboard's accuracy covers.
pub const SUMMARY_DAYS: i64 = 30;
const PENDING_SHOWN: i64 = 50;
const LABELLED_SHOWN: i64 = 20;

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    notice: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct LabelForm {
    #[serde(default, rename = "_csrf")]
    csrf: String,
    #[serde(default)]
    intent: String,
}

/// One sentence on what the labels of the last `days` days say, for the
/// spot-check page and the dashboard.
pub fn summary_sentence(summary: &SpotCheckSummary, days: i64, share: f64) -> String {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    if share <= 0.0 && summary.sampled == 0 {
        return "Spot checks are off (review.spot_check_share = 0): nothing measures automatic answers on live traffic.".into();
    }
    let (Some(accuracy), Some([low, high])) = (summary.accuracy, summary.interval) else {
        return format!(
            "{} automatic answer{} sampled in {days} d, none labelled yet.",
            summary.sampled,
            if summary.sampled == 1 { "" } else { "s" }
        );
    };
    let mut sentence = format!(
        "{} of {} spot-checked automatic answers in {days} d were routed right: {} (95% interval {}–{}).",
        summary.right,
        summary.labelled,
        pct(accuracy),
        pct(low),
        pct(high)
    );
    if let Some(target) = summary.target {
        sentence += &if summary.below_target {
            format!(
                " Below the {} that routing.target_accuracy promises, beyond chance: look at the wrong ones and retrain.",
                pct(target)
            )
        } else if low >= target {
            format!(" Above the {} target.", pct(target))
        } else {
            format!(
                " Consistent with the {} target; more labels narrow the interval.",
                pct(target)
            )
        };
    }
    sentence
}

/// The spot checks of the last `SUMMARY_DAYS` days, in all and per SOP version.
pub async fn report(
    state: &AppState,
    tenant: Uuid,
) -> Result<SpotCheckReport, crate::store::StoreError> {
    let groups = state
        .store
        .spot_check_counts(tenant, Utc::now() - Duration::days(SUMMARY_DAYS))
        .await?;
    Ok(SpotCheckReport::new(
        &groups,
        state.config.routing.target_accuracy,
    ))
}

/// A SOP version's line of the page's table.
fn sop_row(s: &SopSpotCheckSummary) -> Value {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    json!({
        "sop_ref": s.sop_ref,
        "sampled": s.summary.sampled,
        "labelled": s.summary.labelled,
        "right": s.summary.right,
        "accuracy": s.summary.accuracy.map(pct),
        "interval": s.summary.interval.map(|[low, high]| format!("{}–{}", pct(low), pct(high))),
        "below_target": s.summary.below_target,
    })
}

fn row(user: &ConsoleUser, check: &SpotCheck, now: chrono::DateTime<Utc>) -> Value {
    // As in the queue: reviewers see personal data masked, admins in full.
    let shown = |text: &str| {
        if user.is_admin() {
            text.to_string()
        } else {
            screen::mask_pii(text)
        }
    };
    json!({
        "id": check.id,
        "text": shown(&check.text),
        "reply": check.reply.as_deref().map(shown),
        "routed_intent": check.routed_intent,
        "confidence": format!("{:.1}%", 100.0 * check.confidence),
        "sop_ref": check.sop_ref,
        "answered_ago": ago(check.created_at, now),
        "answered_at": check.created_at.to_rfc3339(),
        "label": check.label_intent,
        "right": check.label_intent.is_some() && check.label_intent == check.routed_intent,
        "reviewer": check.reviewer,
        "labelled_ago": check.labelled_at.map(|t| ago(t, now)),
    })
}

pub async fn page(
    State(state): State<AppState>,
    user: ConsoleUser,
    Query(query): Query<PageQuery>,
) -> Response {
    let tenant = user.tenant_id();
    let data = async {
        let pending = state
            .store
            .spot_checks(tenant, false, PENDING_SHOWN)
            .await?;
        let labelled = state
            .store
            .spot_checks(tenant, true, LABELLED_SHOWN)
            .await?;
        let report = report(&state, tenant).await?;
        Ok::<_, crate::store::StoreError>((pending, labelled, report))
    }
    .await;
    let (pending, labelled, report) = match data {
        Ok(data) => data,
        Err(err) => return unavailable(&user, err),
    };
    let now = Utc::now();
    let mut intents: Vec<&str> = state
        .pipeline
        .sops()
        .active()
        .flat_map(|s| s.file.intents.iter().map(String::as_str))
        .collect();
    intents.sort_unstable();
    intents.dedup();
    let mut page = Page::for_user("Spot checks", &user, "spot-checks");
    page.insert(
        "sentence",
        &summary_sentence(
            &report.total,
            SUMMARY_DAYS,
            state.config.review.spot_check_share,
        ),
    );
    page.insert(
        "by_sop",
        &report.by_sop.iter().map(sop_row).collect::<Vec<_>>(),
    );
    page.insert(
        "notice",
        &(query.notice.as_deref() == Some("labelled")).then_some("Label saved."),
    );
    page.insert(
        "pending",
        &pending
            .iter()
            .map(|c| row(&user, c, now))
            .collect::<Vec<_>>(),
    );
    page.insert(
        "labelled",
        &labelled
            .iter()
            .map(|c| row(&user, c, now))
            .collect::<Vec<_>>(),
    );
    page.insert("intents", &intents);
    page.insert("oos", OUT_OF_SCOPE);
    render("spot_checks.html", &page)
}

pub async fn label(
    State(state): State<AppState>,
    user: ConsoleUser,
    Path(id): Path<String>,
    Form(form): Form<LabelForm>,
) -> Response {
    if let Err(refused) = user.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let not_found = || {
        message_page(
            StatusCode::NOT_FOUND,
            &user,
            "Not found",
            "There is no such spot check in this workspace.",
        )
    };
    let Ok(id) = Uuid::parse_str(&id) else {
        return not_found();
    };
    match state
        .reviews
        .label_spot_check(user.tenant_id(), id, user.reviewer(), &form.intent)
        .await
    {
        Ok(_) => Redirect::to("/console/spot-checks?notice=labelled").into_response(),
        Err(ReviewError::NotFound) => not_found(),
        Err(ReviewError::Invalid { field, message }) => message_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            &user,
            "Not saved",
            &format!("`{field}` {message}"),
        ),
        Err(ReviewError::Conflict(message)) => {
            message_page(StatusCode::CONFLICT, &user, "Not saved", &message)
        }
        Err(ReviewError::Store(err)) => unavailable(&user, err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SpotCheckCounts;

    fn summary(labelled: i64, right: i64, target: Option<f64>) -> SpotCheckSummary {
        SpotCheckSummary::new(
            SpotCheckCounts {
                sampled: 40,
                labelled,
                right,
            },
            target,
        )
    }

    #[test]
    fn the_sentence_says_what_the_labels_show_against_the_target() {
        let off = SpotCheckSummary::new(SpotCheckCounts::default(), None);
        assert!(summary_sentence(&off, 30, 0.0).starts_with("Spot checks are off"));
        assert_eq!(
            summary_sentence(&summary(0, 0, Some(0.98)), 30, 0.05),
            "40 automatic answers sampled in 30 d, none labelled yet."
        );
        let s = summary_sentence(&summary(200, 196, Some(0.98)), 30, 0.05);
        assert!(
            s.starts_with("196 of 200 spot-checked automatic answers in 30 d were routed right: 98.0% (95% interval 95.0%–99.2%).")
                && s.ends_with("Consistent with the 98.0% target; more labels narrow the interval."),
            "{s}"
        );
        let s = summary_sentence(&summary(200, 180, Some(0.98)), 30, 0.05);
        assert!(s.contains("Below the 98.0%"), "{s}");
        let s = summary_sentence(&summary(400, 400, Some(0.98)), 30, 0.05);
        assert!(s.ends_with("Above the 98.0% target."), "{s}");
        let s = summary_sentence(&summary(10, 9, None), 30, 0.05);
        assert!(s.ends_with(").") && !s.contains("target"), "{s}");
    }
}
