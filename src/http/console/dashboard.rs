//! The dashboard: how the queue and the SOPs are doing over a window of days.
//! Queue depth over time, SLA breaches, escalation rate and reviewer override
//! rate per SOP version, and median times to first claim and to resolution,
//! as inline SVG charts (see `charts`) with the numbers beside them; and the
//! router: the model this replica routes with and the recently stored ones.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::json;

use super::charts::{self, Bar, Format, Series};
use super::session::ConsoleUser;
use super::{Page, ago, format_duration_secs, render};
use crate::config::Config;
use crate::http::AppState;
use crate::routing::Classifier;
use crate::routing::calibration::Calibration;
use crate::store::{OutcomeCount, ReviewTimeline, RouterModelSummary};

/// Stored router models listed (the store keeps five).
const ROUTER_MODELS_LISTED: i64 = 5;

/// Points on the queue-depth line.
const DEPTH_POINTS: i64 = 48;

#[derive(Debug, Deserialize)]
pub struct DashboardQuery {
    days: Option<i64>,
}

/// `card-delivery@2#abc…` → `card-delivery@2`: versions are what people compare.
fn version_label(sop_ref: Option<&str>) -> String {
    match sop_ref {
        Some(r) => r.split('#').next().unwrap_or(r).to_string(),
        None => "(no SOP)".into(),
    }
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// Items waiting at `t`: created by then and not yet resolved.
fn depth_at(items: &[ReviewTimeline], t: DateTime<Utc>) -> usize {
    items
        .iter()
        .filter(|i| i.created_at <= t && i.resolved_at.is_none_or(|r| r > t))
        .count()
}

fn breached(item: &ReviewTimeline, now: DateTime<Utc>) -> bool {
    match item.resolved_at {
        Some(resolved) => resolved > item.due_at,
        // The SLA is paused while the item waits for the customer.
        None => item.waiting_since.is_none() && item.due_at < now,
    }
}

/// Everything the page shows, computed from the rows; separate from the
/// handler so that it can be tested without a database.
pub fn summarise(
    items: &[ReviewTimeline],
    outcomes: &[OutcomeCount],
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> serde_json::Value {
    let window = now - since;
    let step = window / i32::try_from(DEPTH_POINTS).unwrap_or(48);
    let depth: Vec<(f64, f64)> = (0..=DEPTH_POINTS)
        .map(|i| {
            let t = since + step * i32::try_from(i).unwrap_or(0);
            let hours_ago = (now - t).num_minutes() as f64 / 60.0;
            (-hours_ago, depth_at(items, t) as f64)
        })
        .collect();
    let hours = window.num_hours().max(1) as f64;
    let ticks: Vec<(f64, String)> = (0..=4)
        .map(|i| {
            let h = hours * f64::from(4 - i) / 4.0;
            let label = if h == 0.0 {
                "now".to_string()
            } else if hours > 48.0 {
                format!("-{:.0} d", h / 24.0)
            } else {
                format!("-{h:.0} h")
            };
            (-h, label)
        })
        .collect();
    let depth_chart = charts::line_chart(
        "Items waiting for a reviewer",
        &ticks,
        &[Series {
            label: "waiting".into(),
            points: depth,
        }],
        Format::Count,
    );

    // Per SOP version: escalation rate from decisions, the rest from items.
    #[derive(Default)]
    struct PerSop {
        decisions: i64,
        escalated: i64,
        resolved: i64,
        overridden: i64,
        breached: i64,
        items: i64,
        to_claim: Vec<f64>,
        to_resolve: Vec<f64>,
    }
    let mut per: BTreeMap<String, PerSop> = BTreeMap::new();
    for o in outcomes {
        let entry = per.entry(version_label(o.sop_ref.as_deref())).or_default();
        entry.decisions += o.count;
        if o.outcome != "answered" {
            entry.escalated += o.count;
        }
    }
    let (mut to_claim, mut to_resolve) = (Vec::new(), Vec::new());
    let (mut breaches, mut in_window) = (0, 0);
    for item in items.iter().filter(|i| i.created_at >= since) {
        in_window += 1;
        let entry = per
            .entry(version_label(item.sop_ref.as_deref()))
            .or_default();
        entry.items += 1;
        if breached(item, now) {
            breaches += 1;
            entry.breached += 1;
        }
        if let Some(claimed) = item.first_claimed_at {
            let mins = (claimed - item.created_at).num_seconds() as f64 / 60.0;
            to_claim.push(mins);
            entry.to_claim.push(mins);
        }
        if let Some(resolved) = item.resolved_at {
            let mins = (resolved - item.created_at).num_seconds() as f64 / 60.0;
            to_resolve.push(mins);
            entry.to_resolve.push(mins);
            entry.resolved += 1;
            if matches!(item.resolution.as_deref(), Some("edit" | "reject")) {
                entry.overridden += 1;
            }
        }
    }
    let open_breached = items
        .iter()
        .filter(|i| i.resolved_at.is_none() && breached(i, now))
        .count();
    let rate = |part: i64, whole: i64| {
        if whole > 0 {
            part as f64 / whole as f64
        } else {
            0.0
        }
    };
    let escalation: Vec<Bar> = per
        .iter()
        .filter(|(_, p)| p.decisions > 0)
        .map(|(label, p)| Bar {
            label: label.clone(),
            value: rate(p.escalated, p.decisions),
            note: Some(format!("{} of {}", p.escalated, p.decisions)),
        })
        .collect();
    let overrides: Vec<Bar> = per
        .iter()
        .filter(|(_, p)| p.resolved > 0)
        .map(|(label, p)| Bar {
            label: label.clone(),
            value: rate(p.overridden, p.resolved),
            note: Some(format!("{} of {}", p.overridden, p.resolved)),
        })
        .collect();
    let sla: Vec<Bar> = per
        .iter()
        .filter(|(_, p)| p.items > 0)
        .map(|(label, p)| Bar {
            label: label.clone(),
            value: rate(p.breached, p.items),
            note: Some(format!("{} of {}", p.breached, p.items)),
        })
        .collect();
    let mut resolve_bars: Vec<Bar> = Vec::new();
    for (label, p) in per.iter_mut() {
        if let Some(m) = median(&mut p.to_resolve) {
            let claim = median(&mut p.to_claim)
                .map(|c| format!("claimed after {}", format_duration_secs((c * 60.0) as i64)));
            resolve_bars.push(Bar {
                label: label.clone(),
                value: m,
                note: claim,
            });
        }
    }
    let minutes = |m: Option<f64>| {
        m.map_or_else(
            || "–".to_string(),
            |m| format_duration_secs((m * 60.0).round() as i64),
        )
    };
    json!({
        "depth_chart": depth_chart,
        "escalation_chart": charts::bar_chart("Escalation rate per SOP version", &escalation, Some(1.0), Format::Percent),
        "override_chart": charts::bar_chart("Reviewer override rate per SOP version (edited or rejected)", &overrides, Some(1.0), Format::Percent),
        "sla_chart": charts::bar_chart("SLA breaches per SOP version", &sla, Some(1.0), Format::Percent),
        "resolve_chart": charts::bar_chart("Median time to resolution per SOP version", &resolve_bars, None, Format::Minutes),
        "waiting_now": depth_at(items, now),
        "items": in_window,
        "breaches": breaches,
        "open_breached": open_breached,
        "median_to_claim": minutes(median(&mut to_claim)),
        "median_to_resolve": minutes(median(&mut to_resolve)),
        "decisions": outcomes.iter().map(|o| o.count).sum::<i64>(),
        "escalated": outcomes.iter().filter(|o| o.outcome != "answered").map(|o| o.count).sum::<i64>(),
    })
}

fn percent(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// What calibration measured, as the dashboard shows it.
fn calibration_view(c: Option<&Calibration>) -> serde_json::Value {
    let Some(c) = c else {
        return json!({
            "holdout": "–", "accuracy": "–", "ece": "–",
            "threshold": "not calibrated (too little data)",
        });
    };
    let threshold = match (c.target_accuracy, c.threshold, c.coverage) {
        (Some(target), Some(t), coverage) => format!(
            "{t:.3} for {}: {} of held-out messages answered",
            percent(target),
            coverage.map_or_else(|| "–".into(), percent)
        ),
        (Some(target), None, _) => format!("none reaches {}: all to review", percent(target)),
        (None, _, _) => "per SOP (no routing.target_accuracy)".into(),
    };
    json!({
        "holdout": c.holdout_examples,
        "accuracy": percent(c.holdout_accuracy),
        "ece": format!("{:.3}", c.ece_after),
        "threshold": threshold,
    })
}

/// The model this replica routes with, the stored ones, and when it retrains.
fn router_view(
    current: &Classifier,
    stored: &[RouterModelSummary],
    config: &Config,
    now: DateTime<Utc>,
) -> serde_json::Value {
    let routing = &config.routing;
    let pinned = stored.iter().find(|m| m.pinned_at.is_some());
    let schedule = match (pinned, routing.retrain_every_minutes) {
        (Some(m), _) => format!(
            "An operator pinned {} {} (sopr router pin){}: replicas route with it and do not retrain until it is unpinned.",
            m.version,
            m.pinned_at.map_or_else(String::new, |at| ago(at, now)),
            m.pin_reason
                .as_deref()
                .map_or_else(String::new, |reason| format!(
                    ", saying \u{201c}{reason}\u{201d}"
                ))
        ),
        (None, m) => match m {
            0 => "Its training data is read only at start (routing.retrain_every_minutes = 0)."
                .to_string(),
            m => format!(
                "Every {} it reads its training data again; when the data changed it switches to the new model, unless that one is more than {:.0} points worse on held-out data (routing.retrain_max_drop).",
                format_duration_secs(i64::from(m) * 60),
                100.0 * routing.retrain_max_drop
            ),
        },
    };
    let feedback = if routing.learn_from_feedback {
        "Reviewers' intent labels are part of its training data."
    } else {
        "Reviewers' intent labels are not part of its training data (routing.learn_from_feedback is off)."
    };
    let models: Vec<_> = stored
        .iter()
        .map(|m| {
            let calibration: Option<Calibration> = m
                .metrics
                .0
                .get("calibration")
                .and_then(|c| serde_json::from_value(c.clone()).ok());
            let train_ms = m.metrics.0.get("train_ms").and_then(|t| t.as_u64());
            json!({
                "version": m.version,
                "current": m.version == current.version(),
                "stored_at": m.created_at.to_rfc3339(),
                "stored_ago": ago(m.created_at, now),
                "promoted_ago": m.promoted_at.map(|at| ago(at, now)),
                "pinned": m.pinned_at.is_some(),
                "examples": m.examples,
                "intents": m.labels,
                "training": train_ms.map_or_else(|| "–".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
                "calibration": calibration_view(calibration.as_ref()),
            })
        })
        .collect();
    json!({
        "version": current.version(),
        "intents": current.labels().len(),
        "calibration": calibration_view(current.calibration()),
        "schedule": schedule,
        "feedback": feedback,
        "models": models,
    })
}

pub async fn page(
    State(state): State<AppState>,
    user: ConsoleUser,
    Query(query): Query<DashboardQuery>,
) -> Response {
    let days = query.days.unwrap_or(7).clamp(1, 90);
    let now = Utc::now();
    let since = now - Duration::days(days);
    let tenant = user.tenant_id();
    let data = async {
        let items = state.store.review_timelines(tenant, since).await?;
        let outcomes = state.store.decision_outcomes(tenant, since).await?;
        let models = state.store.router_models(ROUTER_MODELS_LISTED).await?;
        let spot_checks = super::spot_checks::report(&state, tenant).await?.total;
        Ok::<_, crate::store::StoreError>((items, outcomes, models, spot_checks))
    }
    .await;
    let (items, outcomes, models, spot_checks) = match data {
        Ok(data) => data,
        Err(err) => return super::unavailable(&user, err),
    };
    let mut page = Page::for_user("Dashboard", &user, "dashboard");
    page.insert("days", &days);
    page.insert("day_choices", &[1, 7, 30, 90]);
    page.insert("stats", &summarise(&items, &outcomes, since, now));
    page.insert(
        "router",
        &router_view(&state.pipeline.classifier(), &models, &state.config, now),
    );
    page.insert(
        "spot_checks",
        &super::spot_checks::summary_sentence(
            &spot_checks,
            super::spot_checks::SUMMARY_DAYS,
            state.config.review.spot_check_share,
        ),
    );
    render("dashboard.html", &page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(
        sop: &str,
        created_mins_ago: i64,
        claimed_after: Option<i64>,
        resolved_after: Option<i64>,
        resolution: Option<&str>,
        sla_mins: i64,
        now: DateTime<Utc>,
    ) -> ReviewTimeline {
        let created = now - Duration::minutes(created_mins_ago);
        ReviewTimeline {
            sop_ref: Some(format!("{sop}#abcdef012345")),
            state: if resolved_after.is_some() {
                "resolved".into()
            } else {
                "open".into()
            },
            resolution: resolution.map(String::from),
            created_at: created,
            due_at: created + Duration::minutes(sla_mins),
            first_claimed_at: claimed_after.map(|m| created + Duration::minutes(m)),
            resolved_at: resolved_after.map(|m| created + Duration::minutes(m)),
            waiting_since: None,
        }
    }

    #[test]
    fn router_view_reads_each_models_calibration() {
        let examples: Vec<(String, String)> = (0..40)
            .flat_map(|i| {
                [
                    ("card".to_string(), format!("my card {i} has not arrived")),
                    (
                        "rate".to_string(),
                        format!("exchange rate number {i} please"),
                    ),
                ]
            })
            .collect();
        let options = crate::routing::classifier::TrainOptions {
            target_accuracy: Some(0.95),
            ..Default::default()
        };
        let model = Classifier::train(&examples, &options).unwrap();
        let calibration = serde_json::to_value(model.calibration().unwrap()).unwrap();
        let now = Utc::now();
        let stored = |version: &str, metrics: serde_json::Value| RouterModelSummary {
            version: version.into(),
            examples: 80,
            labels: 2,
            metrics: sqlx::types::Json(metrics),
            created_at: now - Duration::minutes(5),
            promoted_at: (version != "lr10-older").then(|| now - Duration::minutes(3)),
            pinned_at: None,
            pin_reason: None,
        };
        let models = [
            stored(
                model.version(),
                json!({ "calibration": calibration, "train_ms": 1234 }),
            ),
            stored("lr10-older", json!({ "calibration": null })),
        ];
        let mut config = Config::default();
        let view = router_view(&model, &models, &config, now);
        assert_eq!(view["version"], model.version());
        assert_eq!(view["models"][0]["current"], true);
        assert_eq!(view["models"][0]["training"], "1.2 s");
        assert_eq!(view["models"][0]["stored_ago"], "5 min ago");
        assert_eq!(view["models"][0]["promoted_ago"], "3 min ago");
        assert_eq!(view["models"][1]["promoted_ago"], serde_json::Value::Null);
        let threshold = view["models"][0]["calibration"]["threshold"]
            .as_str()
            .unwrap();
        assert!(threshold.contains("for 95.0%"), "{threshold}");
        assert_eq!(view["models"][0]["calibration"], view["calibration"]);
        assert_eq!(view["models"][1]["current"], false);
        assert_eq!(
            view["models"][1]["calibration"]["threshold"],
            "not calibrated (too little data)"
        );
        assert!(view["schedule"].as_str().unwrap().starts_with("Every 1 h"));
        config.routing.retrain_every_minutes = 0;
        config.routing.learn_from_feedback = true;
        let view = router_view(&model, &models, &config, now);
        assert!(view["schedule"].as_str().unwrap().contains("only at start"));
        assert_eq!(
            view["feedback"],
            "Reviewers' intent labels are part of its training data."
        );
        assert_eq!(view["models"][1]["pinned"], false);

        // A pin says so, whatever the schedule.
        let mut models = models;
        models[1].pinned_at = Some(now - Duration::minutes(2));
        let view = router_view(&model, &models, &config, now);
        assert_eq!(view["models"][1]["pinned"], true);
        assert_eq!(
            view["schedule"],
            "An operator pinned lr10-older 2 min ago (sopr router pin): replicas route with it and do not retrain until it is unpinned."
        );
        models[1].pin_reason = Some("refunds misrouted since 10:00".into());
        let view = router_view(&model, &models, &config, now);
        assert_eq!(
            view["schedule"],
            "An operator pinned lr10-older 2 min ago (sopr router pin), saying \u{201c}refunds misrouted since 10:00\u{201d}: replicas route with it and do not retrain until it is unpinned."
        );
    }

    #[test]
    fn rates_and_medians_per_sop_version() {
        let now = Utc::now();
        let since = now - Duration::days(1);
        let items = vec![
            item("a@1", 120, Some(2), Some(10), Some("approve"), 60, now),
            item("a@1", 100, Some(4), Some(90), Some("edit"), 60, now),
            item("b@2", 30, None, None, None, 10, now),
        ];
        let outcomes = vec![
            OutcomeCount {
                sop_ref: Some("a@1#abcdef012345".into()),
                outcome: "answered".into(),
                count: 8,
            },
            OutcomeCount {
                sop_ref: Some("a@1#abcdef012345".into()),
                outcome: "queued".into(),
                count: 2,
            },
        ];
        let s = summarise(&items, &outcomes, since, now);
        assert_eq!(s["items"], 3);
        assert_eq!(s["breaches"], 2, "one resolved late, one open past due");
        assert_eq!(s["open_breached"], 1);
        assert_eq!(s["waiting_now"], 1);
        // An item waiting for the customer is not breached: its SLA is paused.
        let mut waiting = items.clone();
        waiting[2].waiting_since = Some(now - Duration::minutes(25));
        let s2 = summarise(&waiting, &outcomes, since, now);
        assert_eq!(
            (s2["breaches"].as_i64(), s2["open_breached"].as_i64()),
            (Some(1), Some(0))
        );
        assert_eq!(s["median_to_claim"], "3 min");
        assert_eq!(s["median_to_resolve"], "50 min");
        let escalation = s["escalation_chart"].as_str().unwrap();
        assert!(
            escalation.contains("a@1") && escalation.contains("20%"),
            "{escalation}"
        );
        let overrides = s["override_chart"].as_str().unwrap();
        assert!(
            overrides.contains("50%") && overrides.contains("1 of 2"),
            "{overrides}"
        );
    }

    #[test]
    fn depth_counts_what_was_waiting_at_each_time() {
        let now = Utc::now();
        let items = vec![
            item("a@1", 120, None, Some(60), Some("approve"), 600, now),
            item("a@1", 30, None, None, None, 600, now),
        ];
        assert_eq!(depth_at(&items, now - Duration::minutes(90)), 1);
        assert_eq!(depth_at(&items, now - Duration::minutes(45)), 0);
        assert_eq!(depth_at(&items, now), 1);
    }
}
