//! Keeps the router's model current. At start, and then every
//! `routing.retrain_every_minutes` while serving, sopr works out the model
//! version its training data asks for (the SOP examples, the
//! `routing.training_data` files, reviewer feedback with
//! `routing.learn_from_feedback`), loads that model from the database or
//! trains and stores it, and routes the following messages with it.
//!
//! Replicas share the stored models. Training is deterministic, so two
//! replicas training the same version store the same bytes; a lease in the
//! database only spares the others the work: while one replica trains, the
//! rest wait for its model and load it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;

use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::routing::Classifier;
use crate::routing::classifier::{Progress, TrainOptions};
use crate::sop::SopSet;
use crate::store::{RouterModelRecord, Store};

/// How many stored router models survive pruning.
const KEEP_ROUTER_MODELS: i64 = 5;

/// How long a training lease lasts unless renewed; its holder renews it a
/// third of the way through, so a stopped replica holds others up this long.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// How often a replica waiting for another's model looks for it.
const WAIT_POLL: Duration = Duration::from_secs(1);

/// After `Retrained::Busy`, the retrainer looks again this soon rather than
/// a whole interval later.
const BUSY_RETRY: Duration = Duration::from_secs(15);

pub fn train_options(config: &Config) -> TrainOptions {
    TrainOptions {
        seed: config.routing.seed,
        target_accuracy: config.routing.target_accuracy,
        mlp_hidden: config.routing.network_hidden,
        ..TrainOptions::default()
    }
}

/// Names this process as a lease holder.
fn holder() -> String {
    format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple())
}

/// The lease a replica holds while it trains the model `version`.
pub fn training_lease(version: &str) -> String {
    format!("router.train.{version}")
}

/// A held training lease, renewed in the background until released or dropped.
struct Lease {
    store: Arc<dyn Store>,
    name: String,
    holder: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// `Ok(None)` when another replica holds it.
    async fn take(
        store: &Arc<dyn Store>,
        name: String,
        holder: &str,
    ) -> Result<Option<Lease>, crate::store::StoreError> {
        let now = Utc::now();
        if !store.try_lease(&name, holder, now, now + LEASE_TTL).await? {
            return Ok(None);
        }
        let renewal = {
            let (store, name, holder) = (store.clone(), name.clone(), holder.to_string());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE_TTL / 3).await;
                    let now = Utc::now();
                    if let Err(err) = store.try_lease(&name, &holder, now, now + LEASE_TTL).await {
                        tracing::warn!(error = %err, lease = %name, "cannot renew the training lease");
                    }
                }
            })
        };
        Ok(Some(Lease {
            store: store.clone(),
            name,
            holder: holder.to_string(),
            renewal,
        }))
    }

    async fn release(self) {
        self.renewal.abort();
        if let Err(err) = self.store.release_lease(&self.name, &self.holder).await {
            // It lapses on its own.
            tracing::warn!(error = %err, lease = %self.name, "cannot release the training lease");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

/// The stored model with this version, if there is one and it is readable.
async fn load_stored(store: &dyn Store, version: &str) -> anyhow::Result<Option<Classifier>> {
    let Some(bytes) = store.router_model(version).await? else {
        return Ok(None);
    };
    match Classifier::from_bytes(&bytes) {
        Ok(model) => {
            tracing::info!(
                model = model.version(),
                "router model loaded from the database"
            );
            Ok(Some(model))
        }
        Err(err) => {
            tracing::warn!(error = %err, "stored router model unusable; training a new one");
            Ok(None)
        }
    }
}

/// Stores a model trained on `examples` examples and prunes old ones.
async fn save_trained(
    store: &dyn Store,
    model: &Classifier,
    examples: usize,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let metrics = serde_json::json!({
        "calibration": model.calibration(),
        "train_ms": elapsed.as_millis() as u64,
    });
    store
        .save_router_model(&RouterModelRecord {
            version: model.version().to_string(),
            examples: examples as i64,
            labels: model.labels().len() as i64,
            metrics,
            model: model.to_bytes(),
        })
        .await?;
    // Models are large (megabytes); keep a few recent ones so a rollback of the
    // SOPs or data finds its model again, and drop the rest.
    let pruned = store.prune_router_models(KEEP_ROUTER_MODELS).await?;
    if pruned > 0 {
        tracing::info!(pruned, "older router models deleted");
    }
    tracing::info!(
        model = model.version(),
        intents = model.labels().len(),
        examples,
        ms = elapsed.as_millis() as u64,
        temperature = model.calibration().map(|c| c.temperature),
        holdout_ece = model.calibration().map(|c| c.ece_after),
        "router trained and stored"
    );
    Ok(())
}

/// Takes the training lease for `version`. `Ok(None)`: another replica holds
/// it. A store that cannot lease (say, a failing query) does not stop
/// training: the lease only saves work, so this then trains without one.
async fn take_lease(store: &Arc<dyn Store>, version: &str, holder: &str) -> Option<Option<Lease>> {
    match Lease::take(store, training_lease(version), holder).await {
        Ok(lease) => Some(lease),
        Err(err) => {
            tracing::warn!(error = %err, "cannot take the router training lease; training without it");
            None
        }
    }
}

/// Loads the stored model trained on exactly these examples and options, or
/// trains one and stores it. When another replica is training that version,
/// waits for its model instead (or takes over if its lease lapses). Returns
/// the model and whether this call trained it.
pub async fn load_or_train_router(
    store: &Arc<dyn Store>,
    config: &Config,
    examples: &[(String, String)],
    progress: &Progress<'_>,
) -> anyhow::Result<(Classifier, bool)> {
    let options = train_options(config);
    let version = Classifier::version_for(examples, &options);
    let holder = holder();
    let mut waiting = false;
    let lease = loop {
        if let Some(model) = load_stored(store.as_ref(), &version).await? {
            return Ok((model, false));
        }
        match take_lease(store, &version, &holder).await {
            Some(None) => {
                if !waiting {
                    tracing::info!(
                        model = %version,
                        "another replica is training this router model; waiting for it"
                    );
                    waiting = true;
                }
                tokio::time::sleep(WAIT_POLL).await;
            }
            Some(Some(lease)) => break Some(lease),
            None => break None,
        }
    };
    // The holder before us may have stored it just before giving the lease up.
    if let Some(model) = load_stored(store.as_ref(), &version).await? {
        if let Some(lease) = lease {
            lease.release().await;
        }
        return Ok((model, false));
    }
    let started = Instant::now();
    let trained = Classifier::train_with_progress(examples, &options, progress)
        .context("cannot train the router");
    let saved = match &trained {
        Ok(model) => save_trained(store.as_ref(), model, examples.len(), started.elapsed()).await,
        Err(_) => Ok(()),
    };
    if let Some(lease) = lease {
        lease.release().await;
    }
    let model = trained?;
    saved?;
    Ok((model, true))
}

/// What one [`Retrainer::run_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retrained {
    /// The training data has not changed: the model in use is current.
    Unchanged,
    /// Another replica had stored the model for the new data; it is in use now.
    Loaded(String),
    /// This replica trained and stored the model for the new data; it is in use now.
    Trained(String),
    /// Another replica is training the model for the new data.
    Busy,
}

impl Retrained {
    fn label(&self) -> &'static str {
        match self {
            Retrained::Unchanged => "unchanged",
            Retrained::Loaded(_) => "loaded",
            Retrained::Trained(_) => "trained",
            Retrained::Busy => "busy",
        }
    }
}

/// Retrains the router while `serve` runs (see the module docs).
pub struct Retrainer {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    sops: Arc<SopSet>,
    pipeline: Arc<Pipeline>,
    holder: String,
}

impl Retrainer {
    pub fn new(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        sops: Arc<SopSet>,
        pipeline: Arc<Pipeline>,
    ) -> Retrainer {
        Retrainer {
            store,
            config,
            sops,
            pipeline,
            holder: holder(),
        }
    }

    /// Every `routing.retrain_every_minutes`, [`Retrainer::run_once`]; after
    /// `Busy`, sooner. Errors are logged and counted; the model in use stays.
    pub async fn run(self) {
        let every = Duration::from_secs(60 * u64::from(self.config.routing.retrain_every_minutes));
        let mut wait = every;
        loop {
            tokio::time::sleep(wait).await;
            wait = every;
            match self.run_once().await {
                Ok(Retrained::Busy) => wait = BUSY_RETRY.min(every),
                Ok(_) => {}
                Err(err) => {
                    metrics::counter!("sopr_router_retrains_total", "outcome" => "failed")
                        .increment(1);
                    tracing::error!(
                        error = format!("{err:#}"),
                        "router retraining failed; the current model stays in use"
                    );
                }
            }
        }
    }

    /// Reads the training data once; when it asks for another model version
    /// than the one in use, loads or trains that model and switches to it.
    pub async fn run_once(&self) -> anyhow::Result<Retrained> {
        let examples =
            crate::service::training_set(self.store.as_ref(), &self.config, &self.sops, &[])
                .await?;
        let options = train_options(&self.config);
        let version = Classifier::version_for(&examples, &options);
        let outcome = self.update(examples, options, version).await?;
        metrics::counter!("sopr_router_retrains_total", "outcome" => outcome.label()).increment(1);
        Ok(outcome)
    }

    async fn update(
        &self,
        examples: Vec<(String, String)>,
        options: TrainOptions,
        version: String,
    ) -> anyhow::Result<Retrained> {
        let current = self.pipeline.classifier();
        if current.version() == version {
            return Ok(Retrained::Unchanged);
        }
        if let Some(model) = load_stored(self.store.as_ref(), &version).await? {
            self.switch(&current, model);
            return Ok(Retrained::Loaded(version));
        }
        let lease = match take_lease(&self.store, &version, &self.holder).await {
            Some(None) => return Ok(Retrained::Busy),
            Some(Some(lease)) => Some(lease),
            None => None,
        };
        let result = self.train(examples, options, &version).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        let (model, trained) = result?;
        self.switch(&current, model);
        Ok(if trained {
            Retrained::Trained(version)
        } else {
            Retrained::Loaded(version)
        })
    }

    /// Trains off the async threads, so requests keep being served.
    async fn train(
        &self,
        examples: Vec<(String, String)>,
        options: TrainOptions,
        version: &str,
    ) -> anyhow::Result<(Classifier, bool)> {
        if let Some(model) = load_stored(self.store.as_ref(), version).await? {
            return Ok((model, false));
        }
        tracing::info!(
            model = version,
            examples = examples.len(),
            "the router's training data changed; retraining"
        );
        let started = Instant::now();
        let count = examples.len();
        let model = tokio::task::spawn_blocking(move || Classifier::train(&examples, &options))
            .await
            .context("the router training task failed")?
            .context("cannot train the router")?;
        save_trained(self.store.as_ref(), &model, count, started.elapsed()).await?;
        Ok((model, true))
    }

    fn switch(&self, current: &Classifier, model: Classifier) {
        tracing::info!(
            from = current.version(),
            to = model.version(),
            threshold = model.calibration().and_then(|c| c.threshold),
            "router model replaced"
        );
        self.pipeline.replace_classifier(Arc::new(model));
    }
}
