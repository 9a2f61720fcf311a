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
//!
//! A retrained model replaces the one in use only if it is not worse, by its
//! held-out measurements, than `routing.retrain_max_drop` allows (see
//! [`worse_by`]): a training file with shifted labels or a run of wrong
//! reviewer labels would otherwise send most traffic to review (a change of
//! the intents themselves is not compared, see [`refusal`]). The model that
//! passed last is recorded as promoted, and a starting replica applies the
//! same check against it ([`model_at_start`]), so a restart does not undo
//! what a running replica refused.
//!
//! An operator can pin a stored model (`sopr router pin`): every replica
//! then routes with it, at start and within [`PIN_POLL`] while serving, and
//! none retrains until the pin is lifted (`sopr router unpin`). Then each
//! goes back to the model for its training data, checked against the pinned
//! one like any retrained model ([`Retrainer::follow_pin`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;

use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::routing::Classifier;
use crate::routing::calibration::Calibration;
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

/// How often a serving replica looks for a pin (or its lifting) in the
/// database: a pin takes effect everywhere within this, or when a retrain in
/// progress ends.
pub const PIN_POLL: Duration = Duration::from_secs(10);

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
            tracing::warn!(error = %err, model = version, "stored router model cannot be loaded");
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

/// Takes the training lease for `version`: `Some(Some(lease))`, or
/// `Some(None)` when another replica holds it. `None`: the store could not
/// lease (say, a failing query); that does not stop training, since the lease
/// only saves work, so the caller then trains without one.
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

/// The pinned version (`sopr router pin`), if one is. A failure to read it
/// counts as none (and is logged), like the promoted one in
/// [`against_promoted`].
async fn pinned_version(store: &dyn Store) -> Option<String> {
    store.pinned_router_model().await.unwrap_or_else(|err| {
        tracing::warn!(error = %err, "cannot read whether a router model is pinned; assuming none is");
        None
    })
}

/// The pinned model, if one is pinned and its stored bytes load. A pin that
/// does not load is logged (a model stored by an older sopr that reads it no
/// more) and counts as none.
async fn pinned_model(store: &dyn Store) -> anyhow::Result<Option<Classifier>> {
    let Some(version) = pinned_version(store).await else {
        return Ok(None);
    };
    let model = load_stored(store, &version).await?;
    if model.is_none() {
        tracing::warn!(
            model = %version,
            "the pinned router model cannot be loaded; ignoring the pin: pin another model or run `sopr router unpin`"
        );
    }
    Ok(model)
}

/// Why `version` was pinned, as the operator said (`sopr router pin
/// --reason`), for the log; read only when a replica switches to it.
async fn pin_reason(store: &dyn Store, version: &str) -> Option<String> {
    let models = store.router_models(KEEP_ROUTER_MODELS + 2).await.ok()?;
    models
        .into_iter()
        .find(|m| m.version == version)
        .and_then(|m| m.pin_reason)
}

/// The model `serve` starts routing with: the pinned one, if an operator
/// pinned one (`sopr router pin`). Otherwise the one for the training data as
/// it is now (loaded or trained, see [`load_or_train_router`]), unless
/// [`refusal`] refuses it against the model promoted last, the one replicas
/// routed with before: then that one. The model chosen is recorded as
/// promoted.
pub async fn model_at_start(
    store: &Arc<dyn Store>,
    config: &Config,
    examples: &[(String, String)],
) -> anyhow::Result<Classifier> {
    if let Some(model) = pinned_model(store.as_ref()).await? {
        report_pinned(true);
        let reason = pin_reason(store.as_ref(), model.version()).await;
        tracing::info!(
            model = model.version(),
            reason,
            "routing with the pinned router model; retraining waits for `sopr router unpin`"
        );
        return Ok(model);
    }
    let (model, _) = load_or_train_router(store, config, examples, &|_, _, _| {}).await?;
    if let AgainstPromoted::Refused { promoted, reason } =
        against_promoted(store.as_ref(), config, &model).await?
    {
        tracing::warn!(
            promoted = promoted.version(),
            rejected = model.version(),
            reason,
            "the router model for the training data is worse than the one promoted last beyond routing.retrain_max_drop; routing with the promoted one: check the training data and reviewer labels"
        );
        metrics::counter!("sopr_router_retrains_total", "outcome" => "rejected").increment(1);
        return Ok(*promoted);
    }
    record_promotion(store.as_ref(), model.version()).await;
    report_pinned(false);
    Ok(model)
}

/// How a model compares with the one promoted last (see [`model_at_start`]).
pub enum AgainstPromoted {
    /// No model is promoted yet (or the promoted one is no longer stored).
    Nothing,
    /// The model is the promoted one.
    Same,
    /// It may replace the promoted model, whose version this is.
    Passes(String),
    /// It may not replace `promoted`, for `reason`.
    Refused {
        promoted: Box<Classifier>,
        reason: String,
    },
}

/// Compares `model` with the model promoted last, as a starting replica does.
/// A failure to read which model that is counts as none promoted (and is
/// logged): the check guards against bad data, and must not stop a start.
pub async fn against_promoted(
    store: &dyn Store,
    config: &Config,
    model: &Classifier,
) -> anyhow::Result<AgainstPromoted> {
    let version = match store.promoted_router_model().await {
        Ok(Some(version)) => version,
        Ok(None) => return Ok(AgainstPromoted::Nothing),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read which router model was promoted; not comparing with it");
            return Ok(AgainstPromoted::Nothing);
        }
    };
    if version == model.version() {
        return Ok(AgainstPromoted::Same);
    }
    let Some(promoted) = load_stored(store, &version).await? else {
        return Ok(AgainstPromoted::Nothing);
    };
    Ok(
        match refusal(&promoted, model, config.routing.retrain_max_drop) {
            Some(reason) => AgainstPromoted::Refused {
                promoted: Box::new(promoted),
                reason,
            },
            None => AgainstPromoted::Passes(version),
        },
    )
}

/// Why `candidate` may not replace `current`: [`worse_by`], when both route
/// between the same intents. When the intents differ, someone added or
/// removed one (an SOP, a training file's label, reviewers' first `oos`):
/// only the new model knows the new set, and accuracies over different sets
/// do not compare.
fn refusal(current: &Classifier, candidate: &Classifier, max_drop: f64) -> Option<String> {
    if current.labels() != candidate.labels() {
        tracing::info!(
            from = current.version(),
            to = candidate.version(),
            intents = candidate.labels().len(),
            "the intents to route between changed; the model for the new intents is not compared with the one before"
        );
        return None;
    }
    worse_by(current.calibration(), candidate.calibration(), max_drop)
}

/// Records `version` as promoted. A failure is logged only: the record serves
/// the check at the next start, and routing goes on with the model either way.
async fn record_promotion(store: &dyn Store, version: &str) {
    match store.promote_router_model(version, Utc::now()).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            model = version,
            "cannot record the router model as promoted: it is not stored"
        ),
        Err(err) => {
            tracing::warn!(error = %err, model = version, "cannot record the router model as promoted")
        }
    }
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
    /// The model for the new data (stored) is worse than the one in use by
    /// more than `routing.retrain_max_drop`; the one in use stays.
    Rejected { version: String, reason: String },
    /// An operator pinned this model (`sopr router pin`): it is in use, and
    /// nothing was retrained.
    Pinned(String),
}

impl Retrained {
    fn label(&self) -> &'static str {
        match self {
            Retrained::Unchanged => "unchanged",
            Retrained::Loaded(_) => "loaded",
            Retrained::Trained(_) => "trained",
            Retrained::Busy => "busy",
            Retrained::Rejected { .. } => "rejected",
            Retrained::Pinned(_) => "pinned",
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
    /// The pinned version this replica routes with, while it does: when the
    /// pin is lifted, [`Retrainer::follow_pin`] goes back to the data's model.
    following_pin: std::sync::Mutex<Option<String>>,
    /// The last refusal, `(candidate, current, reason)`: while the data asks
    /// for that model and the same one routes, it is refused again without
    /// loading it (a model is megabytes).
    refused: std::sync::Mutex<Option<(String, String, String)>>,
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
            following_pin: std::sync::Mutex::new(None),
            refused: std::sync::Mutex::new(None),
        }
    }

    /// Every [`PIN_POLL`], [`Retrainer::follow_pin`]; every
    /// `routing.retrain_every_minutes` (unless 0), [`Retrainer::run_once`],
    /// and after `Busy` sooner. A failed retrain is logged and counted; a
    /// failing look for a pin is warned about once until one succeeds. The
    /// model in use stays either way.
    pub async fn run(self) {
        let every = match self.config.routing.retrain_every_minutes {
            0 => None,
            m => Some(Duration::from_secs(60 * u64::from(m))),
        };
        let mut next_retrain = every.map(|every| Instant::now() + every);
        // A database outage (or a training file that no longer reads, after
        // an unpin) fails every look for a pin: say so once.
        let mut pin_checks_fail = false;
        loop {
            let until_retrain =
                next_retrain.map_or(PIN_POLL, |at| at.saturating_duration_since(Instant::now()));
            tokio::time::sleep(until_retrain.min(PIN_POLL)).await;
            match self.follow_pin().await {
                Err(err) if !pin_checks_fail => {
                    pin_checks_fail = true;
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "cannot follow a router model pin or its lifting; the current model stays in use, and the next look tries again"
                    );
                }
                Err(_) => {}
                Ok(_) => pin_checks_fail = false,
            }
            let (Some(every), Some(at)) = (every, next_retrain) else {
                continue;
            };
            if Instant::now() < at {
                continue;
            }
            let wait = match self.run_once().await {
                Ok(Retrained::Busy) => BUSY_RETRY.min(every),
                Ok(_) => every,
                Err(err) => {
                    failed(&err);
                    every
                }
            };
            next_retrain = Some(Instant::now() + wait);
        }
    }

    /// Follows `sopr router pin` and `unpin` between retrains: switches to a
    /// newly pinned model, and once the pin this replica followed is lifted,
    /// goes back to the model for the training data ([`Retrainer::run_once`]),
    /// which must not be worse than the pinned one. `None`: nothing changed.
    /// An error (the database, or training after the pin is lifted) changes
    /// nothing, and the next look tries again.
    pub async fn follow_pin(&self) -> anyhow::Result<Option<Retrained>> {
        let pinned = self.store.pinned_router_model().await?;
        let followed = self.following().clone();
        match pinned {
            Some(version) if version == self.pipeline.classifier().version() => {
                *self.following() = Some(version);
                Ok(None)
            }
            // Tried and failed already (logged then); lifting or another pin ends it.
            Some(version) if followed.as_deref() == Some(version.as_str()) => Ok(None),
            Some(_) => self.run_once().await.map(Some),
            None if followed.is_some() => {
                // Until it succeeds, the next look tries again.
                let outcome = self.run_once().await?;
                *self.following() = None;
                report_pinned(false);
                Ok(Some(outcome))
            }
            None => Ok(None),
        }
    }

    fn following(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.following_pin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn last_refusal(&self) -> std::sync::MutexGuard<'_, Option<(String, String, String)>> {
        self.refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Routes with the pinned model if one is pinned ([`Retrained::Pinned`]);
    /// otherwise reads the training data once and, when it asks for another
    /// model version than the one in use, loads or trains that model and
    /// switches to it.
    pub async fn run_once(&self) -> anyhow::Result<Retrained> {
        let outcome = match self.pinned().await? {
            Some(outcome) => outcome,
            None => {
                let examples = crate::service::training_set(
                    self.store.as_ref(),
                    &self.config,
                    &self.sops,
                    &[],
                )
                .await?;
                let options = train_options(&self.config);
                let version = Classifier::version_for(&examples, &options);
                self.update(examples, options, version).await?
            }
        };
        metrics::counter!("sopr_router_retrains_total", "outcome" => outcome.label()).increment(1);
        Ok(outcome)
    }

    /// With a model pinned (and loadable), switches to it if it is not in use
    /// yet: `Pinned`.
    async fn pinned(&self) -> anyhow::Result<Option<Retrained>> {
        let Some(version) = pinned_version(self.store.as_ref()).await else {
            return Ok(None);
        };
        *self.following() = Some(version.clone());
        let current = self.pipeline.classifier();
        if current.version() != version {
            let Some(model) = pinned_model(self.store.as_ref()).await? else {
                return Ok(None);
            };
            let reason = pin_reason(self.store.as_ref(), &version).await;
            tracing::info!(
                from = current.version(),
                to = model.version(),
                reason,
                "router model pinned; routing with it until `sopr router unpin`"
            );
            self.pipeline.replace_classifier(Arc::new(model));
        }
        report_pinned(true);
        Ok(Some(Retrained::Pinned(version)))
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
        let refused = self.last_refusal().clone();
        if let Some((_, _, reason)) = refused
            .filter(|(candidate, from, _)| *candidate == version && from == current.version())
        {
            tracing::warn!(
                current = current.version(),
                rejected = %version,
                reason,
                "the router's training data still asks for a model worse than the current one beyond routing.retrain_max_drop; check the training data and reviewer labels"
            );
            return Ok(Retrained::Rejected { version, reason });
        }
        if let Some(model) = load_stored(self.store.as_ref(), &version).await? {
            return Ok(self
                .promote(&current, model, Retrained::Loaded(version))
                .await);
        }
        let lease = match take_lease(&self.store, &version, &self.holder).await {
            Some(None) => return Ok(Retrained::Busy),
            Some(Some(lease)) => Some(lease),
            None => None,
        };
        let options = TrainOptions {
            threads: self.config.routing.retrain_threads,
            ..options
        };
        let result = self.train(examples, options, &version).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        let (model, trained) = result?;
        let outcome = if trained {
            Retrained::Trained(version)
        } else {
            Retrained::Loaded(version)
        };
        Ok(self.promote(&current, model, outcome).await)
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

    /// Switches to `model` and records it as promoted, unless it is worse than
    /// `current` (then `Rejected`) or a model was pinned meanwhile (then
    /// that one: `Pinned`).
    async fn promote(
        &self,
        current: &Classifier,
        model: Classifier,
        outcome: Retrained,
    ) -> Retrained {
        // A retrain takes seconds; an operator may have pinned a model since
        // it began. The model trained is stored either way.
        if let Ok(Some(pinned)) = self.pinned().await {
            return pinned;
        }
        if let Some(reason) = refusal(current, &model, self.config.routing.retrain_max_drop) {
            tracing::warn!(
                current = current.version(),
                rejected = model.version(),
                reason,
                "retrained router model not used: worse than the current one beyond routing.retrain_max_drop; check the training data and reviewer labels"
            );
            *self.last_refusal() = Some((
                model.version().to_string(),
                current.version().to_string(),
                reason.clone(),
            ));
            return Retrained::Rejected {
                version: model.version().to_string(),
                reason,
            };
        }
        tracing::info!(
            from = current.version(),
            to = model.version(),
            threshold = model.calibration().and_then(|c| c.threshold),
            "router model replaced"
        );
        record_promotion(self.store.as_ref(), model.version()).await;
        self.pipeline.replace_classifier(Arc::new(model));
        outcome
    }
}

/// `sopr_router_pinned`: 1 while this replica routes with a pinned model, so
/// a pin left in place shows on a dashboard (and can alert).
fn report_pinned(pinned: bool) {
    metrics::gauge!("sopr_router_pinned").set(if pinned { 1.0 } else { 0.0 });
}

/// Logs and counts a failed retrain.
fn failed(err: &anyhow::Error) {
    metrics::counter!("sopr_router_retrains_total", "outcome" => "failed").increment(1);
    tracing::error!(
        error = format!("{err:#}"),
        "router retraining failed; the current model stays in use"
    );
}

/// Why a `candidate` model is worse than the `current` one by more than
/// `max_drop`, from what calibration measured on each one's held-out data:
/// its accuracy fell, or (with a target accuracy) the share of messages it
/// would answer fell. `None`: it may replace the current one. The held-out
/// shares of two models trained on nearly the same data are nearly the same
/// examples (`dataset::stable_split`), but new data can be harder (reviewer
/// labels come from the cases the router was unsure of); `max_drop` is the
/// allowance for that. The share answered is compared as the calibrated
/// confidences estimate it (`Calibration::coverage_by_confidence`), not as
/// the threshold's share: on 4,000 Banking77 rows plus 1–10 more, a 0.98
/// target, 9 of 24 such harmless retrains answered more than 3 points less
/// by the threshold, and none by the confidences. A current model without
/// calibration gives nothing to compare with, and shares answered count
/// only when both models were calibrated for the same target accuracy.
pub fn worse_by(
    current: Option<&Calibration>,
    candidate: Option<&Calibration>,
    max_drop: f64,
) -> Option<String> {
    let current = current?;
    let Some(candidate) = candidate else {
        return Some("it has too little held-out data to be calibrated".into());
    };
    if candidate.holdout_accuracy < current.holdout_accuracy - max_drop {
        return Some(format!(
            "held-out accuracy {:.3}, against {:.3}",
            candidate.holdout_accuracy, current.holdout_accuracy
        ));
    }
    // Shares answered at different targets (the setting changed between
    // starts) do not compare.
    if let Some(target) = candidate
        .target_accuracy
        .filter(|t| Some(*t) == current.target_accuracy)
    {
        // No threshold reaching the target answers nothing, whatever the
        // confidences estimate.
        if candidate.threshold.is_none() && current.threshold.is_some() {
            return Some(format!(
                "no threshold reaches the {target} target on its held-out data: it would answer nothing"
            ));
        }
        // A model stored before the estimate existed has only the
        // threshold's share, which is compared with the other's.
        let (now, then, measure) = match (
            candidate.coverage_by_confidence,
            current.coverage_by_confidence,
        ) {
            (Some(now), Some(then)) => (now, then, "share its confidences would answer"),
            _ => (
                candidate.coverage.unwrap_or(0.0),
                current.coverage.unwrap_or(0.0),
                "share answered",
            ),
        };
        if now < then - max_drop {
            return Some(format!(
                "held-out {measure} at the {target} target {now:.3}, against {then:.3}"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::calibration::TopLabel;

    fn calibration(accuracy: f64, coverage: Option<f64>) -> Calibration {
        Calibration {
            temperature: 1.0,
            top_label: TopLabel::IDENTITY,
            holdout_examples: 500,
            holdout_accuracy: accuracy,
            ece_before: 0.05,
            ece_after: 0.02,
            target_accuracy: coverage.map(|_| 0.98),
            threshold: coverage.map(|_| 0.9),
            coverage,
            coverage_by_confidence: None,
        }
    }

    #[test]
    fn a_retrained_model_may_be_a_little_worse_but_not_more() {
        let current = calibration(0.90, None);
        let worse = |c: Calibration| worse_by(Some(&current), Some(&c), 0.03);
        assert_eq!(worse(calibration(0.88, None)), None, "within the allowance");
        assert_eq!(worse(calibration(0.95, None)), None);
        let reason = worse(calibration(0.86, None)).unwrap();
        assert_eq!(reason, "held-out accuracy 0.860, against 0.900");
        // No calibration: nothing to compare with, or nothing measured.
        assert_eq!(worse_by(None, Some(&calibration(0.2, None)), 0.03), None);
        assert!(worse_by(Some(&current), None, 0.03).is_some());
        // 1 accepts anything calibrated.
        assert_eq!(
            worse_by(Some(&current), Some(&calibration(0.0, None)), 1.0),
            None
        );

        // With a target, the share answered counts too.
        let current = calibration(0.90, Some(0.60));
        let worse = |c: Calibration| worse_by(Some(&current), Some(&c), 0.03);
        assert_eq!(worse(calibration(0.90, Some(0.58))), None);
        let reason = worse(calibration(0.91, Some(0.50))).unwrap();
        assert!(reason.contains("0.500, against 0.600"), "{reason}");
        // No threshold reaching the target answers nothing.
        let none_reached = Calibration {
            threshold: None,
            coverage: None,
            ..calibration(0.90, Some(0.60))
        };
        assert!(worse(none_reached).is_some());
        // Both estimated by their confidences: those shares compare, not
        // the thresholds'.
        let by_confidence = |threshold_share: f64, share: f64| Calibration {
            coverage_by_confidence: Some(share),
            ..calibration(0.90, Some(threshold_share))
        };
        let current = by_confidence(0.60, 0.62);
        let worse = |c: Calibration| worse_by(Some(&current), Some(&c), 0.03);
        assert_eq!(worse(by_confidence(0.50, 0.60)), None);
        let reason = worse(by_confidence(0.62, 0.55)).unwrap();
        assert_eq!(
            reason,
            "held-out share its confidences would answer at the 0.98 target 0.550, against 0.620"
        );
        // Against a model stored before the estimate, the thresholds' shares.
        let older = calibration(0.90, Some(0.60));
        let worse = |c: Calibration| worse_by(Some(&older), Some(&c), 0.03);
        assert_eq!(worse(by_confidence(0.58, 0.40)), None);
        assert!(worse(by_confidence(0.50, 0.70)).is_some());
        // A candidate that no threshold lets answer is worse, whatever its
        // confidences estimate.
        let answers_nothing = Calibration {
            threshold: None,
            coverage: None,
            ..by_confidence(0.0, 0.62)
        };
        let reason = worse_by(Some(&current), Some(&answers_nothing), 0.03).unwrap();
        assert!(reason.contains("would answer nothing"), "{reason}");

        // At another target (the setting changed), only accuracy compares.
        let other_target = Calibration {
            target_accuracy: Some(0.95),
            ..calibration(0.90, Some(0.10))
        };
        assert_eq!(worse(other_target), None);
    }
}
