//! Wiring of one running sopr: connect the store, load SOPs, train the router,
//! bootstrap a demo tenant on an empty database. `serve` and the test suite
//! both build the service through here, so tests run what operators run.

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::http::AppState;
use crate::pipeline::Pipeline;
use crate::review::ReviewService;
use crate::sop::{Severity, SopSet};
use crate::store::{self, SopVersionRecord, Store};

pub struct Service {
    pub state: AppState,
    /// Delivers the outbox; `None` when `notify.dispatch` is off. `serve`
    /// spawns it beside the HTTP server.
    pub dispatcher: Option<crate::notify::Dispatcher>,
    /// Keeps the router's model current while serving (retraining every
    /// `routing.retrain_every_minutes` unless 0, following pins always).
    /// `serve` spawns it too.
    pub retrainer: crate::retrain::Retrainer,
    /// `(tenant, key)` when this start created the demo tenant; the key is shown once.
    pub bootstrap_key: Option<(String, String)>,
}

pub async fn connect_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    use secrecy::ExposeSecret;
    store::connect(
        config.database.url.expose_secret(),
        config.database.max_connections,
    )
    .await
    .with_context(|| {
        format!(
            "cannot connect to database {}",
            config.database_url_masked()
        )
    })
}

pub async fn build(config: Config) -> anyhow::Result<Service> {
    config.validate()?;
    crate::telemetry::metrics();
    crate::llm::install_crypto_provider();
    let config = Arc::new(config);
    let store = connect_store(&config).await?;
    if config.database.migrate_on_start {
        store
            .migrate()
            .await
            .context("cannot apply database migrations")?;
    }
    let (sops, diagnostics) = SopSet::load(&config.sops.dir)?;
    for d in diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
    {
        tracing::warn!("{d}");
    }
    record_sop_versions(store.as_ref(), &sops).await?;

    let examples = training_set(store.as_ref(), &config, &sops, &[]).await?;
    let classifier = crate::retrain::model_at_start(&store, &config, &examples).await?;

    let llm = build_llm(&config, &sops)?;
    let bootstrap_key = bootstrap(store.as_ref(), &config).await?;
    report_screen_tenants(store.as_ref(), &config).await?;
    report_notify_targets(&config, &sops);
    let sops = Arc::new(sops);
    let notifier = Arc::new(crate::notify::Notifier::new(&config.notify, store.clone()));
    crate::notify::check_targets(&config.notify, &sops)
        .map_err(|err| anyhow::anyhow!("invalid notification targets: {err}"))?;
    // One Slack client for the dispatcher and `/slack/actions`, so they share
    // the cache of Slack users' emails.
    let slack = crate::notify::slack::Slack::new(&config.notify, store.clone(), sops.clone())
        .map_err(|err| anyhow::anyhow!("cannot set up Slack: {err}"))?
        .map(Arc::new);
    let dispatcher = if config.notify.dispatch {
        Some(
            crate::notify::Dispatcher::new(
                &config.notify,
                store.clone(),
                sops.clone(),
                notifier.clone(),
                slack.clone(),
                config.review.default_sla_minutes,
            )
            .map_err(|err| anyhow::anyhow!("cannot build the notification dispatcher: {err}"))?,
        )
    } else {
        None
    };
    let pipeline = Arc::new(Pipeline::new(
        store.clone(),
        sops.clone(),
        Arc::new(classifier),
        config.clone(),
        llm,
        notifier.clone(),
    )?);
    let retrainer = crate::retrain::Retrainer::new(
        store.clone(),
        config.clone(),
        sops.clone(),
        pipeline.clone(),
    );
    let reviews = Arc::new(ReviewService::new(
        store.clone(),
        sops,
        &config.review,
        notifier,
    ));
    Ok(Service {
        state: AppState {
            store,
            pipeline,
            reviews,
            config,
            slack,
        },
        bootstrap_key,
        dispatcher,
        retrainer,
    })
}

/// Says at start which `[screen.tenants.<name>]` lists name no tenant yet:
/// a typo would otherwise leave that tenant's topics silently unscreened.
async fn report_screen_tenants(store: &dyn Store, config: &Config) -> anyhow::Result<()> {
    for name in config.screen.tenants.keys() {
        if store.tenant_by_name(name).await?.is_none() {
            tracing::warn!(
                tenant = %name,
                "screen.tenants.{name} names no tenant (yet): its topics apply once `sopr keys create --tenant {name}` creates it"
            );
        }
    }
    Ok(())
}

/// Says at start when SOP `notify` targets will not be delivered: email
/// without `notify.smtp.url`, Slack without any `notify.slack` settings
/// (once Slack is set up, [`crate::notify::check_targets`] refuses to start
/// while a named channel cannot be reached).
fn report_notify_targets(config: &Config, sops: &SopSet) {
    use secrecy::ExposeSecret;
    let targets: Vec<&str> = sops
        .active()
        .flat_map(|s| s.file.escalation.notify.iter().map(String::as_str))
        .collect();
    let email = targets.iter().filter(|t| t.starts_with("email:")).count();
    let slack = targets.iter().filter(|t| t.starts_with("slack:")).count();
    let s = &config.notify.slack;
    if slack > 0 && !s.bot() && s.incoming_webhooks.is_empty() {
        tracing::info!(
            targets = slack,
            "SOPs name Slack targets but notify.slack has no bot token or incoming webhook: no Slack message is sent"
        );
    }
    if email > 0 && config.notify.smtp.url.expose_secret().is_empty() {
        tracing::info!(
            targets = email,
            "SOPs name email targets but notify.smtp.url is empty: no email is sent"
        );
    }
}

/// The LLM layer, when providers are configured. Checks that every SOP's own
/// strategy names configured providers, and says when SOPs ask for LLM mode
/// that is not configured.
fn build_llm(config: &Config, sops: &SopSet) -> anyhow::Result<Option<Arc<crate::llm::Llm>>> {
    let with_llm: Vec<_> = sops
        .active()
        .filter(|s| s.file.response.llm.is_some())
        .collect();
    let Some(llm) =
        crate::llm::Llm::from_config(&config.llm).context("cannot build the LLM clients")?
    else {
        if !with_llm.is_empty() {
            tracing::info!(
                sops = with_llm.len(),
                "SOPs have an LLM block but no [[llm.providers]] is configured: template mode"
            );
        }
        return Ok(None);
    };
    for sop in &sops.versions {
        if let Some(strategy) = sop
            .file
            .response
            .llm
            .as_ref()
            .and_then(|l| l.strategy.as_ref())
        {
            config
                .llm
                .check_strategy("response.llm.strategy", strategy)
                .with_context(|| format!("in {}", sop.path.display()))?;
        }
    }
    tracing::info!(
        providers = ?config.llm.providers.iter().map(|p| &p.name).collect::<Vec<_>>(),
        strategy = ?config.llm.strategy.mode,
        sops = with_llm.len(),
        "LLM mode on"
    );
    Ok(Some(Arc::new(llm)))
}

/// The router's training set: the active SOPs' examples, the CSV files in
/// `routing.training_data`, and `extra` files (from `sopr train --data`).
pub fn training_examples(
    config: &Config,
    sops: &SopSet,
    extra: &[std::path::PathBuf],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut examples = sops.training_examples();
    for file in config.routing.training_data.iter().chain(extra) {
        examples.extend(crate::routing::dataset::read_csv(file)?);
    }
    Ok(examples)
}

/// [`training_examples`] plus, with `routing.learn_from_feedback`, what
/// reviewers decided: each labelled item's customer message with the intent
/// they confirmed or chose, when an active SOP still has that intent.
pub async fn training_set(
    store: &dyn Store,
    config: &Config,
    sops: &SopSet,
    extra: &[std::path::PathBuf],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut examples = training_examples(config, sops, extra)?;
    if config.routing.learn_from_feedback {
        let feedback = store
            .feedback_examples(i64::from(config.routing.feedback_max_examples))
            .await
            .context("cannot read reviewer feedback for training")?;
        let before = examples.len();
        // Messages reviewers labelled `oos` teach the router the traffic no
        // SOP covers, which it then sends to review (no_route).
        examples.extend(feedback.into_iter().filter(|(intent, text)| {
            !text.trim().is_empty()
                && (sops.for_intent(intent).is_some()
                    || intent == crate::routing::eval::OUT_OF_SCOPE)
        }));
        tracing::info!(
            examples = examples.len() - before,
            "training on reviewer feedback too"
        );
    }
    Ok(examples)
}

/// Records every loaded version; warns when a version's text changed in place.
async fn record_sop_versions(store: &dyn Store, sops: &SopSet) -> anyhow::Result<()> {
    for sop in &sops.versions {
        let known = store.sop_version_hashes(sop.id()).await?;
        if known
            .iter()
            .any(|(v, h)| *v == i64::from(sop.file.version) && *h != sop.hash)
        {
            tracing::warn!(
                sop = sop.id(),
                version = sop.file.version,
                "this SOP version's file changed since it was first served; bump `version` so decisions stay traceable"
            );
        }
    }
    let records: Vec<SopVersionRecord> = sops
        .versions
        .iter()
        .map(|s| SopVersionRecord {
            sop_id: s.file.id.clone(),
            version: i64::from(s.file.version),
            hash: s.hash.clone(),
            status: serde_json::to_value(s.file.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            agent: s.file.agent.clone(),
            title: s.file.title.clone(),
            content: s.content.clone(),
        })
        .collect();
    store.record_sop_versions(&records).await?;
    Ok(())
}

async fn bootstrap(store: &dyn Store, config: &Config) -> anyhow::Result<Option<(String, String)>> {
    let name = config.bootstrap.demo_tenant.trim();
    if name.is_empty() || store.tenant_count().await? > 0 {
        return Ok(None);
    }
    let key = create_key(store, name).await?;
    Ok(Some((name.to_string(), key)))
}

/// Creates the tenant if needed and a new API key for it; returns the key.
pub async fn create_key(store: &dyn Store, tenant: &str) -> anyhow::Result<String> {
    let (tenant, _) = store.ensure_tenant(tenant).await?;
    let (key, hash) = crate::keys::generate();
    store
        .insert_api_key(tenant.id, &crate::keys::display_prefix(&key), &hash)
        .await?;
    Ok(key)
}
