//! Wiring of one running sopr: connect the store, load SOPs, train the router,
//! bootstrap a demo tenant on an empty database. `serve` and the test suite
//! both build the service through here, so tests run what operators run.

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::http::AppState;
use crate::pipeline::Pipeline;
use crate::review::ReviewService;
use crate::routing::Classifier;
use crate::routing::classifier::TrainOptions;
use crate::sop::{Severity, SopSet};
use crate::store::{self, SopVersionRecord, Store};

pub struct Service {
    pub state: AppState,
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

    let examples = sops.training_examples();
    let options = TrainOptions {
        seed: config.routing.seed,
        ..TrainOptions::default()
    };
    let started = std::time::Instant::now();
    let classifier = Classifier::train(&examples, &options)
        .context("cannot train the router from the SOP examples")?;
    tracing::info!(
        model = classifier.version(),
        intents = classifier.labels().len(),
        examples = examples.len(),
        ms = started.elapsed().as_millis() as u64,
        "router trained"
    );

    let bootstrap_key = bootstrap(store.as_ref(), &config).await?;
    let sops = Arc::new(sops);
    let pipeline = Arc::new(Pipeline::new(
        store.clone(),
        sops.clone(),
        Arc::new(classifier),
        config.clone(),
    ));
    let reviews = Arc::new(ReviewService::new(
        store.clone(),
        sops,
        config.review.lease_secs,
    ));
    Ok(Service {
        state: AppState {
            store,
            pipeline,
            reviews,
            config,
        },
        bootstrap_key,
    })
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
