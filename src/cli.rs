//! The `sopr` command line. Each subcommand only wires library pieces together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, Overrides};
use crate::routing::dataset::Examples;
use crate::sop::{self, Severity};

#[derive(Debug, Parser)]
#[command(
    name = "sopr",
    version,
    about = "Customer-support agents governed by versioned SOP files, with a human review queue",
    long_about = "sopr answers customer-support messages with specialised agents governed by versioned SOP files \
                  (YAML in sops/), and puts every case it should not answer alone in a human review queue.\n\n\
                  Configuration: embedded defaults, then sopr.toml (or --config), then SOPR_* environment \
                  variables (SOPR_DATABASE_URL sets database.url), then these flags. See sopr.example.toml."
)]
pub struct Cli {
    /// Configuration file [default: sopr.toml when present]
    #[arg(long, global = true, env = "SOPR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Database URL, overriding the config: sqlite://sopr.db or postgres://user:pass@host/db
    #[arg(long, global = true, value_name = "URL")]
    pub database: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service: message API, review API, health checks.
    ///
    /// Applies migrations (unless database.migrate_on_start = false), loads and validates the SOPs,
    /// loads the stored router model for the current training data (or trains and stores one), and
    /// on an empty database creates the demo tenant and prints its API key once.
    Serve {
        /// Address to listen on, e.g. 0.0.0.0:8080 [default: server.listen]
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<String>,
        /// Folder of SOP files [default: sops.dir]
        #[arg(long, value_name = "DIR")]
        sops: Option<PathBuf>,
    },
    /// Apply pending database migrations and exit.
    ///
    /// Safe to run while replicas are up: migrations take a database lock.
    Migrate,
    /// Work with SOP files.
    #[command(subcommand)]
    Sops(SopsCommand),
    /// Manage tenant API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage the reviewers and admins who work a tenant's review queue.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Print the effective configuration (all sources merged), with secrets masked.
    PrintConfig,
    /// Train the router and store the model in the database.
    ///
    /// Trains on the active SOPs' examples, the CSV files in routing.training_data and any --data
    /// files, calibrates on a held-out 15%, and stores the model under a version derived from the
    /// data and options. `serve` loads the stored model whose version matches its own training
    /// data (SOP examples + routing.training_data), so list files there to serve with them.
    ///
    /// It then compares the model with the one promoted last (the one serve routed with) as a
    /// starting serve does, and exits with status 1 when serve would refuse it as worse beyond
    /// routing.retrain_max_drop: a check for data changes before they reach serve.
    Train {
        /// Extra labelled CSV (`text,intent` or `text,category`); repeatable
        #[arg(long, value_name = "FILE.csv")]
        data: Vec<PathBuf>,
    },
    /// List the stored router models; pin one to roll back or freeze routing.
    #[command(subcommand)]
    Router(RouterCommand),
    /// Export reviewers' labels of customer messages as CSV, to measure or train the router.
    #[command(subcommand)]
    Feedback(FeedbackCommand),
    /// Train the router on one labelled CSV and measure it on another.
    ///
    /// Prints accuracy, macro-F1, calibration error (ECE), a risk–coverage table (coverage reached
    /// at 95/98/99% accuracy, accuracy at 70/80/90% coverage), out-of-scope recall, precision and
    /// AUROC when the test has `oos` rows, and classification latency. CSV files need a header
    /// with a `text` column and an `intent` or `category` column (separated by commas, tabs or
    /// semicolons). Use --data with --holdout to split
    /// one file (stratified, fixed seed) instead of --train/--test, --data with --folds K to
    /// cross-validate (K models, each tested on the share it did not see, every row tested once),
    /// or --sops DIR to train on (or with --folds, cross-validate) a SOP folder's examples, with
    /// --train FILE beside them as `routing.training_data`. With --sops every test message also
    /// goes through serve's review rules as configured (SOP thresholds and policies, margin,
    /// flags, a tenant's topic lists with --tenant): the share answered, its accuracy, and why
    /// the rest would go to review. Test rows whose intent the training data lacks count as
    /// `oos`; --unknown-intents makes a share of the intents unknown on purpose.
    Eval {
        /// Training CSV (with --sops, trained on beside the SOP examples, as
        /// `routing.training_data` is in `serve`)
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present_any = ["data", "sops", "folds"],
            conflicts_with = "data"
        )]
        train: Option<PathBuf>,
        /// Train on the examples of the active SOPs in this folder instead (what `serve` learns
        /// from them): how well they route the labelled messages of --test, or with --folds how
        /// well they tell their intents apart
        #[arg(long, value_name = "DIR", conflicts_with = "data")]
        sops: Option<PathBuf>,
        /// With --sops, screen the test messages as this tenant's: its own topic lists
        /// (`[screen.tenants.<name>]`) on top of the deployment's
        #[arg(long, value_name = "NAME", requires = "sops")]
        tenant: Option<String>,
        /// Test CSV
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present_any = ["data", "folds"],
            conflicts_with = "data"
        )]
        test: Option<PathBuf>,
        /// One CSV to split into train and test
        #[arg(long, value_name = "FILE")]
        data: Option<PathBuf>,
        /// Share of --data held out for the test, per intent
        #[arg(long, default_value_t = 0.2, value_name = "FRACTION")]
        holdout: f64,
        /// Cross-validate --data (or --sops) instead: split it into K folds per intent and test
        /// each on a model trained on the others (a steadier measure than one split, K times the
        /// training)
        #[arg(long, value_name = "K", conflicts_with_all = ["holdout", "train", "test"])]
        folds: Option<usize>,
        /// Also measure out-of-scope detection: hold out this share of the intents (chosen by the
        /// seed) from training, so that their test rows count as `oos`
        #[arg(long, value_name = "SHARE")]
        unknown_intents: Option<f64>,
        /// Seed for the split and training [default: routing.seed]
        #[arg(long)]
        seed: Option<u64>,
        /// Abstain below the threshold that reaches this accuracy on the calibration split
        /// [default: routing.target_accuracy, else 0.99]
        #[arg(long, value_name = "ACCURACY")]
        target_accuracy: Option<f64>,
        /// Hidden units of the network added to the linear model, 0 for none
        /// [default: routing.network_hidden]
        #[arg(long, value_name = "UNITS")]
        network_hidden: Option<usize>,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum FeedbackCommand {
    /// Write the messages reviewers labelled as CSV: the labelled traffic to measure the router on.
    ///
    /// One row per review item with a label (its latest) and per labelled spot check, the labels
    /// routing.learn_from_feedback draws on: text, intent (the reviewer's; `oos` when no SOP
    /// covers the message), routed_intent and confidence (what the router said), tenant,
    /// labelled_at, source (`review` or `spot_check`), action, reviewer and id (the review item's
    /// or the spot check's). `sopr eval --sops sops --test FILE` then measures how the SOPs'
    /// examples route real messages and why serve would send them to review; `sopr eval --data
    /// FILE --folds 5` how well the labels can be learnt; `sopr train --data FILE` trains on them.
    ///
    /// Review items are not a sample of all traffic: many reached a reviewer because the router
    /// was unsure of them, so the router's accuracy on them is usually lower than on the messages
    /// it answers. Spot checks (review.spot_check_share) are a random sample of the automatic
    /// answers: `--source spot-check` exports those alone. Card numbers, IBANs, national ids,
    /// emails and phone numbers are masked as in serve's logs unless --raw.
    Export {
        /// Only this tenant's messages [default: every tenant's]
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        /// Only labels given at or after this time: an RFC 3339 timestamp
        /// (2026-11-01T09:00:00Z) or a date (2026-11-01, from midnight UTC)
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Write to this file instead of standard output
        #[arg(long, value_name = "FILE.csv")]
        out: Option<PathBuf>,
        /// Keep the messages' text as stored, personal data included
        #[arg(long)]
        raw: bool,
        /// Only labels from review items, or only from spot checks of automatic answers
        /// [default: both]
        #[arg(long, value_enum)]
        source: Option<LabelSource>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LabelSource {
    Review,
    SpotCheck,
}

impl LabelSource {
    /// The `source` column's value.
    fn as_str(self) -> &'static str {
        match self {
            LabelSource::Review => "review",
            LabelSource::SpotCheck => "spot_check",
        }
    }
}

/// What `sopr feedback export` writes.
struct ExportRequest<'a> {
    tenant: Option<&'a str>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    source: Option<LabelSource>,
    out: Option<&'a std::path::Path>,
    raw: bool,
}

/// `--since`: an RFC 3339 timestamp, or a date meaning its midnight UTC.
fn parse_since(value: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let value = value.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map(|day| day.and_time(chrono::NaiveTime::MIN).and_utc())
        .map_err(|_| {
            format!("`{value}` is neither an RFC 3339 timestamp (2026-11-01T09:00:00Z) nor a date (2026-11-01)")
        })
}

#[derive(Debug, Subcommand)]
pub enum SopsCommand {
    /// Lint a folder of SOP files and exit non-zero on any error.
    ///
    /// Checks: YAML syntax, the JSON Schema (sops/sop.schema.json), duplicate id@version, more than
    /// one active version per id, agents not declared in agents.yaml, intents claimed by two active
    /// SOPs, examples that do not match intents, and templates that fail to compile or to render
    /// with a sample context (with and without the customer's name and email). Warns about intents
    /// with fewer than 15 examples and examples listed under two intents.
    Check {
        /// Folder to check [default: sops.dir]
        dir: Option<PathBuf>,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum RouterCommand {
    /// List the stored router models, newest first.
    ///
    /// For each: version, when stored, training examples and intents, held-out accuracy and
    /// calibration error, the share of held-out messages its routing.target_accuracy threshold
    /// answers, and whether it is pinned or promoted. Replicas route with the pinned model if
    /// there is one, else normally with the model promoted last (the latest that passed the
    /// routing.retrain_max_drop check).
    List {
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Make every serve replica route with a stored model, whatever its training data asks for.
    ///
    /// For rolling back to a model that worked, or for keeping routing as it is while training
    /// data is fixed. Running replicas switch within 10 seconds (after a retrain in progress
    /// ends), starting ones use it, and none retrains until `sopr router unpin`. No "not worse"
    /// check applies: pinning is a decision. Warns when the model lacks intents of the active
    /// SOPs: their messages go to other intents or to review while it is pinned.
    Pin {
        /// Model version as `sopr router list` shows it, or a unique start of it (with or
        /// without the `lr11-` kind)
        version: String,
        /// Why, for the other operators and reviewers: shown by `router list`, on the console's
        /// dashboard and in serve's log when a replica switches
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Lift the pin: replicas go back to the model for their training data.
    ///
    /// Each replica loads or trains that model within 10 seconds and switches to it unless it is
    /// worse than the pinned one beyond routing.retrain_max_drop (then it keeps the pinned one,
    /// as it would a refused retrain). To accept a model the check refuses, pin it, then unpin.
    Unpin,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key for a tenant (creating the tenant if needed).
    ///
    /// Prints only the new key on stdout; it is stored hashed and cannot be shown again.
    Create {
        /// Tenant name
        #[arg(long, value_name = "NAME")]
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a reviewer or admin to an existing tenant.
    ///
    /// The password is asked for twice when stdin is a terminal; otherwise the first line of stdin
    /// is the password (`printf '%s\n' "$PASSWORD" | sopr users add ...`). It must be at least 12
    /// characters and is stored only as an argon2id hash.
    Add {
        /// Tenant name (create it first with `sopr keys create --tenant NAME`)
        #[arg(long, value_name = "NAME")]
        tenant: String,
        /// Sign-in email; compared case-insensitively
        #[arg(long, value_name = "EMAIL")]
        email: String,
        /// reviewer: works the queue; admin: also manages users, sees every queue, reassigns
        #[arg(long, value_enum, default_value = "reviewer")]
        role: crate::users::UserRole,
    },
    /// List a tenant's users (email, role, created, disabled).
    List {
        /// Tenant name
        #[arg(long, value_name = "NAME")]
        tenant: String,
    },
    /// Set a new password for a user; read like `users add`. Clears a sign-in lockout and signs
    /// the user out of every console session.
    SetPassword {
        /// Tenant name
        #[arg(long, value_name = "NAME")]
        tenant: String,
        #[arg(long, value_name = "EMAIL")]
        email: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut overrides = Overrides {
        database_url: cli.database.clone(),
        ..Overrides::default()
    };
    if let Command::Serve { listen, sops } = &cli.command {
        overrides.listen = listen.clone();
        overrides.sops_dir = sops.clone();
    }
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    crate::telemetry::init(&config.log);
    match cli.command {
        Command::Serve { .. } => serve(config).await,
        Command::Migrate => {
            let store = crate::service::connect_store(&config).await?;
            store.migrate().await.context("cannot apply migrations")?;
            eprintln!("migrations applied to {}", config.database_url_masked());
            Ok(ExitCode::SUCCESS)
        }
        Command::Sops(SopsCommand::Check { dir, format }) => {
            Ok(check_sops(&dir.unwrap_or(config.sops.dir), format))
        }
        Command::Keys(KeysCommand::Create { tenant }) => {
            let tenant = tenant.trim();
            anyhow::ensure!(!tenant.is_empty(), "--tenant must not be empty");
            let store = crate::service::connect_store(&config).await?;
            if config.database.migrate_on_start {
                store.migrate().await.context("cannot apply migrations")?;
            }
            let key = crate::service::create_key(store.as_ref(), tenant).await?;
            println!("{key}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Users(command) => users(config, command).await,
        Command::Train { data } => train(config, &data).await,
        Command::Router(command) => router(config, command).await,
        Command::Feedback(FeedbackCommand::Export {
            tenant,
            since,
            out,
            raw,
            source,
        }) => {
            let request = ExportRequest {
                tenant: tenant.as_deref(),
                since,
                source,
                out: out.as_deref(),
                raw,
            };
            export_feedback(config, &request).await
        }
        Command::Eval {
            train,
            sops,
            tenant,
            test,
            data,
            holdout,
            folds,
            unknown_intents,
            seed,
            target_accuracy,
            network_hidden,
            format,
        } => {
            let target_accuracy = target_accuracy
                .or(config.routing.target_accuracy)
                .unwrap_or(0.99);
            anyhow::ensure!(
                (0.5..1.0).contains(&target_accuracy),
                "--target-accuracy must be in [0.5, 1)"
            );
            let seed = seed.unwrap_or(config.routing.seed);
            let network_hidden = network_hidden.unwrap_or(config.routing.network_hidden);
            anyhow::ensure!(
                network_hidden <= crate::config::MAX_NETWORK_HIDDEN,
                "--network-hidden must be at most {}",
                crate::config::MAX_NETWORK_HIDDEN
            );
            if let Some(share) = unknown_intents {
                anyhow::ensure!(
                    share > 0.0 && share <= 0.5,
                    "--unknown-intents must be a share above 0 and at most 0.5"
                );
            }
            let options = crate::routing::classifier::TrainOptions {
                seed,
                target_accuracy: Some(target_accuracy),
                mlp_hidden: network_hidden,
                ..Default::default()
            };
            let unknown_of = |examples: &[(String, String)]| -> anyhow::Result<Vec<String>> {
                let Some(share) = unknown_intents else {
                    return Ok(Vec::new());
                };
                let unknown = crate::routing::dataset::choose_intents(examples, share, seed);
                anyhow::ensure!(
                    !unknown.is_empty(),
                    "--unknown-intents needs at least 3 intents in the training data"
                );
                Ok(unknown)
            };
            if let Some(name) = &tenant {
                let known = &config.screen.tenants;
                anyhow::ensure!(
                    known.contains_key(name),
                    "--tenant {name}: the config has no [screen.tenants.{name}] topic lists{}",
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (it has: {})",
                            known.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    }
                );
            }
            let sop_set = match &sops {
                Some(dir) => Some(crate::sop::SopSet::load(dir)?.0),
                None => None,
            };
            // With a SOP folder, each test message also goes through serve's
            // review rules, as configured.
            let rules = match &sop_set {
                Some(set) => Some(ServeRules {
                    screen: crate::pipeline::screen_for(&config, set)?,
                    sops: set,
                    config: &config,
                    tenant: tenant.as_deref(),
                }),
                None => None,
            };
            // Held-out intents leave training only: `eval_run` scores every
            // test row of an intent the model never learnt as `oos`.
            let run = |mut train: Examples, test: Examples, unknown: &[String]| {
                train.retain(|(label, _)| unknown.binary_search(label).is_err());
                eval_run(&train, &test, &options, rules.as_ref())
            };
            let sop_examples = || sop_set.as_ref().map(|set| set.training_examples());
            if let Some(k) = folds {
                anyhow::ensure!(
                    (2..=MAX_EVAL_FOLDS).contains(&k),
                    "--folds must be between 2 and {MAX_EVAL_FOLDS}"
                );
                let all = match (&data, sop_examples()) {
                    (Some(data), _) => crate::routing::dataset::read_csv(data)?,
                    (None, Some(examples)) => examples,
                    (None, None) => {
                        anyhow::bail!("--folds cross-validates --data FILE or --sops DIR")
                    }
                };
                let unknown = unknown_of(&all)?;
                let fold_of = crate::routing::dataset::stratified_folds(&all, k, seed);
                let mut runs = Vec::with_capacity(k);
                for fold in 0..k {
                    let (train, test) = crate::routing::dataset::fold_split(&all, &fold_of, fold);
                    runs.push(run(train, test, &unknown).with_context(|| {
                        format!("fold {} of {k}: cannot train on the other folds", fold + 1)
                    })?);
                }
                return eval(&runs, &unknown, sop_set.as_ref(), target_accuracy, format);
            }
            let (train, test) = match (data, train, test) {
                (Some(data), _, _) => {
                    anyhow::ensure!(
                        (0.01..=0.9).contains(&holdout),
                        "--holdout must be between 0.01 and 0.9"
                    );
                    let all = crate::routing::dataset::read_csv(&data)?;
                    let (train, test) =
                        crate::routing::dataset::stratified_split(&all, holdout, seed);
                    // Each intent keeps at least one example to train on.
                    anyhow::ensure!(
                        !test.is_empty(),
                        "{}: a {holdout} test share of {} rows is empty (every intent keeps at least one row for training); use more rows, a larger --holdout, or --train and --test",
                        data.display(),
                        all.len()
                    );
                    (train, test)
                }
                (None, Some(train), Some(test)) => {
                    let mut examples = sop_examples().unwrap_or_default();
                    examples.extend(crate::routing::dataset::read_csv(&train)?);
                    (examples, crate::routing::dataset::read_csv(&test)?)
                }
                (None, None, Some(test)) if let Some(examples) = sop_examples() => {
                    (examples, crate::routing::dataset::read_csv(&test)?)
                }
                _ => anyhow::bail!("give --train (or --sops) and --test, or --data"),
            };
            let unknown = unknown_of(&train)?;
            let run = run(train, test, &unknown)?;
            eval(&[run], &unknown, sop_set.as_ref(), target_accuracy, format)
        }
        Command::PrintConfig => {
            print!("{}", config.to_masked_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let listen: SocketAddr = config.server.listen.parse().context("server.listen")?;
    let service = crate::service::build(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    if let Some((tenant, key)) = &service.bootstrap_key {
        eprintln!(
            "\n  Created tenant `{tenant}`. Its API key (shown only this once):\n\n    {key}\n\n  \
             Try: curl -s localhost:{}/v1/messages -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \
             -d '{{\"customer\":{{\"id\":\"c1\"}},\"text\":\"my card has not arrived\"}}'\n",
            listen.port()
        );
    }
    tracing::info!(listen = %listener.local_addr()?, database = service.state.store.backend().as_str(), "sopr listening");
    // Rows left undelivered at shutdown stay in the outbox for the next start.
    let dispatcher = service.dispatcher.map(|d| tokio::spawn(d.run()));
    let retrainer = Some(tokio::spawn(service.retrainer.run()));
    crate::http::serve(listener, service.state, shutdown_signal()).await?;
    for task in [dispatcher, retrainer].into_iter().flatten() {
        task.abort();
    }
    tracing::info!("sopr stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: draining in-flight requests");
}

/// Prints the lint report; the exit code is 1 when any error was found.
pub fn check_sops(dir: &std::path::Path, format: Format) -> ExitCode {
    let report = sop::lint(dir);
    let errors = report.errors().count();
    let warnings = report.diagnostics.len() - errors;
    match format {
        Format::Json => {
            let out = serde_json::json!({
                "dir": dir,
                "ok": errors == 0,
                "errors": errors,
                "warnings": warnings,
                "diagnostics": report.diagnostics,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Format::Text => {
            for d in &report.diagnostics {
                println!("{d}");
            }
            match &report.set {
                Some(set) => {
                    let active = set.active().count();
                    let intents: usize = set.active().map(|s| s.file.intents.len()).sum();
                    println!(
                        "{}: {} SOP versions ({active} active, {intents} intents, {} agents), {} examples; {warnings} warning(s)",
                        dir.display(),
                        set.versions.len(),
                        set.agents.len(),
                        set.training_examples().len()
                    );
                }
                None => println!(
                    "{}: {errors} error(s), {warnings} warning(s)",
                    dir.display()
                ),
            }
        }
    }
    if report
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Error)
    {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Intents `eval` asks for per message when it times classification: what
/// routing asks for with the default `llm.classifier.top_k`.
const EVAL_TOP_K: usize = 5;

/// Most folds `sopr eval --folds` accepts.
const MAX_EVAL_FOLDS: usize = 20;

/// One trained model measured on one test set.
struct EvalRun {
    model: String,
    train_examples: usize,
    train_secs: f64,
    calibration: Option<crate::routing::calibration::Calibration>,
    scored: Vec<crate::routing::eval::Scored>,
    /// Test rows whose intent the model never learnt, scored as `oos`.
    unseen: usize,
    /// Microseconds per message.
    latencies: Vec<f64>,
    /// Per test row (with `--sops`), why serve's rules would send it to
    /// review; empty when it would be answered.
    reasons: Vec<Vec<crate::pipeline::Reason>>,
}

/// What `serve` decides with, for `sopr eval --sops`.
struct ServeRules<'a> {
    sops: &'a crate::sop::SopSet,
    screen: crate::routing::Screen,
    config: &'a Config,
    /// Whose topic lists screen the messages besides the deployment's.
    tenant: Option<&'a str>,
}

fn eval_run(
    train: &[(String, String)],
    test: &[(String, String)],
    options: &crate::routing::classifier::TrainOptions,
    rules: Option<&ServeRules>,
) -> anyhow::Result<EvalRun> {
    use crate::routing::eval::{OUT_OF_SCOPE, Scored};
    let started = std::time::Instant::now();
    let model = crate::routing::Classifier::train(train, options)?;
    let train_secs = started.elapsed().as_secs_f64();
    let calibration = model.calibration().cloned();
    let auto_threshold = rules.and_then(|r| crate::pipeline::auto_threshold(&model, r.config));
    let mut reasons = Vec::new();
    let threshold = calibration
        .as_ref()
        .and_then(|c| c.threshold)
        .unwrap_or(1.01);
    let mut latencies = Vec::with_capacity(test.len());
    let mut scored = Vec::with_capacity(test.len());
    let known: std::collections::HashSet<&str> =
        model.labels().iter().map(String::as_str).collect();
    let mut unseen = 0;
    for (label, text) in test {
        // No model can name an intent it never learnt: such a row is a
        // message no intent covers, which the router should abstain on.
        let label = if known.contains(label.as_str()) || label == OUT_OF_SCOPE {
            label
        } else {
            unseen += 1;
            OUT_OF_SCOPE
        };
        let t = std::time::Instant::now();
        // The call routing makes per message: the top intents of all 77.
        let ranked = model.classify_top(text, EVAL_TOP_K);
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
        if let Some(r) = rules {
            reasons.push(crate::pipeline::reasons_for(
                text,
                &ranked,
                r.sops,
                &r.screen,
                r.tenant,
                auto_threshold,
                r.config,
            ));
        }
        let (predicted, confidence) = ranked.first().cloned().unwrap_or_default();
        scored.push(Scored {
            label: label.to_string(),
            // As in `serve`: no SOP answers `oos`, so a message routed there
            // goes to review whatever its confidence.
            abstained: confidence < threshold || predicted == OUT_OF_SCOPE,
            predicted,
            confidence,
        });
    }
    Ok(EvalRun {
        model: model.version().to_string(),
        train_examples: train.len(),
        train_secs,
        calibration,
        scored,
        unseen,
        latencies,
        reasons,
    })
}

/// What serve's rules did with the test rows (`sopr eval --sops`).
#[derive(serde::Serialize)]
struct ServeOutcome {
    /// Share of the test rows answered without review.
    answered: f64,
    /// Of the answered rows, the share routed to their labelled intent, and
    /// to the SOP that answers it.
    accuracy: f64,
    sop_accuracy: f64,
    /// Answered rows whose intent no active SOP covers (`oos` included):
    /// replies to questions the SOPs were not written for.
    answered_uncovered: usize,
    /// Test rows per review reason; a row may have several.
    reasons: std::collections::BTreeMap<String, usize>,
}

fn serve_outcome(runs: &[EvalRun], sops: &crate::sop::SopSet) -> Option<ServeOutcome> {
    let rows: Vec<_> = runs
        .iter()
        .flat_map(|run| run.scored.iter().zip(&run.reasons))
        .collect();
    if rows.is_empty() {
        return None;
    }
    let sop_of = |intent: &str| sops.for_intent(intent).map(|sop| sop.id());
    let answered: Vec<_> = rows
        .iter()
        .filter(|(_, reasons)| reasons.is_empty())
        .map(|(s, _)| s)
        .collect();
    let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let mut reasons = std::collections::BTreeMap::new();
    for (_, row) in &rows {
        let mut names: Vec<String> = row.iter().map(ToString::to_string).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            *reasons.entry(name).or_insert(0) += 1;
        }
    }
    Some(ServeOutcome {
        answered: share(answered.len(), rows.len()),
        accuracy: share(
            answered.iter().filter(|s| s.predicted == s.label).count(),
            answered.len(),
        ),
        sop_accuracy: share(
            answered
                .iter()
                .filter(|s| sop_of(&s.label).is_some_and(|sop| sop_of(&s.predicted) == Some(sop)))
                .count(),
            answered.len(),
        ),
        answered_uncovered: answered
            .iter()
            .filter(|s| sop_of(&s.label).is_none())
            .count(),
        reasons,
    })
}

/// Prints the report over all `runs`' test rows: one run for a split, one
/// per fold when cross-validating. `unknown` are the intents held out of
/// training by `--unknown-intents`; `sops` are the SOPs trained on (with
/// `--sops`), for the SOP-level accuracy.
fn eval(
    runs: &[EvalRun],
    unknown: &[String],
    sops: Option<&crate::sop::SopSet>,
    target_accuracy: f64,
    format: Format,
) -> anyhow::Result<ExitCode> {
    use crate::routing::eval::{percentile, report};
    let scored: Vec<_> = runs.iter().flat_map(|r| r.scored.iter().cloned()).collect();
    let mut latencies: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let r = report(&scored);
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    let train_secs: f64 = runs.iter().map(|r| r.train_secs).sum();
    let unseen: usize = runs.iter().map(|r| r.unseen).sum();
    let sop_accuracy = sops.map(|set| {
        crate::routing::eval::sop_accuracy(&scored, |intent| {
            set.for_intent(intent).map(|sop| sop.id())
        })
    });
    let served = sops.and_then(|set| serve_outcome(runs, set));
    match format {
        Format::Json => {
            let mut v = serde_json::to_value(&r)?;
            v["train_seconds"] = serde_json::json!(train_secs);
            v["latency_us"] = serde_json::json!({ "p50": p50, "p99": p99 });
            if !unknown.is_empty() {
                v["unknown_intents"] = serde_json::json!(unknown);
            }
            v["unseen_test_rows"] = serde_json::json!(unseen);
            if let Some(a) = sop_accuracy {
                v["sop_accuracy"] = serde_json::json!(a);
            }
            if let Some(served) = &served {
                v["serve_rules"] = serde_json::to_value(served)?;
            }
            match runs {
                [run] => {
                    v["train_examples"] = serde_json::json!(run.train_examples);
                    v["model"] = serde_json::json!(run.model);
                    v["calibration"] = serde_json::json!(run.calibration);
                }
                runs => {
                    v["folds"] = runs
                        .iter()
                        .map(|run| {
                            serde_json::json!({
                                "model": run.model,
                                "train_examples": run.train_examples,
                                "train_seconds": run.train_secs,
                                "test_examples": run.scored.len(),
                                "accuracy": report(&run.scored).accuracy,
                                "calibration": run.calibration,
                            })
                        })
                        .collect();
                }
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Text => {
            if runs.len() > 1 {
                println!(
                    "cross-validation  {} folds, each row tested once by a model that did not see it; training {train_secs:.2}s in all",
                    runs.len()
                );
            }
            for (i, run) in runs.iter().enumerate() {
                if runs.len() > 1 {
                    println!(
                        "fold {}            accuracy {:.4} on {} rows",
                        i + 1,
                        report(&run.scored).accuracy,
                        run.scored.len()
                    );
                }
                print_eval_run(run, target_accuracy);
            }
            if !unknown.is_empty() {
                println!(
                    "unknown intents   {} held out of training: {}",
                    unknown.len(),
                    unknown.join(", ")
                );
            }
            if unseen > 0 {
                println!(
                    "unseen intents    {unseen} test rows have intents the training data lacks: counted as oos"
                );
            }
            println!("test examples     {}", r.examples);
            if r.in_scope_examples == 0 {
                println!("accuracy          none measured: every test row is out of scope");
            } else {
                println!("accuracy          {:.4}", r.accuracy);
                if let Some(a) = sop_accuracy {
                    println!(
                        "SOP accuracy      {a:.4} (routed to the SOP that answers the intent)"
                    );
                }
                println!("macro-F1          {:.4}", r.macro_f1);
                println!("ECE               {:.4}", r.ece);
                for (acc, cov) in &r.coverage_at_accuracy {
                    println!("coverage @ acc {acc}   {cov:.4}");
                }
                for (cov, acc) in &r.accuracy_at_coverage {
                    println!("accuracy @ cov {cov}   {acc:.4}");
                }
                if runs.iter().all(|run| run.calibration.is_none()) {
                    println!("auto-answered     none: no threshold without calibration");
                } else if r.auto_coverage == 0.0 {
                    println!(
                        "auto-answered     none: the threshold from calibration answers no test message"
                    );
                } else {
                    println!(
                        "auto-answered     {:.4} of test traffic at accuracy {:.4} (threshold from calibration)",
                        r.auto_coverage, r.auto_accuracy
                    );
                }
            }
            if let Some(oos) = &r.out_of_scope {
                println!(
                    "out-of-scope      {} rows, recall {:.4}, precision {:.4}, AUROC {:.4}",
                    oos.examples, oos.recall, oos.precision, oos.auroc
                );
            }
            if let Some(served) = &served {
                println!(
                    "serve's rules     answered {:.4} of test traffic at accuracy {:.4} (SOP accuracy {:.4}); {} of them about intents no SOP covers",
                    served.answered,
                    served.accuracy,
                    served.sop_accuracy,
                    served.answered_uncovered
                );
                let mut reasons: Vec<(&String, &usize)> = served.reasons.iter().collect();
                reasons.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                if !reasons.is_empty() {
                    let listed: Vec<String> = reasons
                        .iter()
                        .map(|(name, n)| format!("{name} {n}"))
                        .collect();
                    println!("review because    {}", listed.join(", "));
                }
            }
            println!("latency           p50 {p50:.1}µs  p99 {p99:.1}µs");
            let weakest: Vec<_> = r
                .intents
                .iter()
                .take(WEAKEST_INTENTS)
                .filter(|i| i.f1 < 1.0)
                .collect();
            if !weakest.is_empty() {
                println!(
                    "weakest intents   (F1, precision, recall, share answered, test rows; all with --format json)"
                );
                for i in weakest {
                    println!(
                        "  {}: {:.3}, {:.3}, {:.3}, {:.3}, {}",
                        i.intent, i.f1, i.precision, i.recall, i.answered, i.support
                    );
                }
            }
            if !r.confused.is_empty() {
                println!("most confused     (true -> predicted: errors, of which answered)");
                for c in &r.confused {
                    println!(
                        "  {} -> {}: {}, {}",
                        c.label, c.predicted, c.count, c.answered
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Intents listed under "weakest intents" in `sopr eval`'s text report.
const WEAKEST_INTENTS: usize = 10;

/// The model and calibration lines of one `sopr eval` run.
fn print_eval_run(run: &EvalRun, target_accuracy: f64) {
    println!(
        "model {}  trained on {} examples in {:.2}s",
        run.model, run.train_examples, run.train_secs
    );
    let Some(c) = &run.calibration else {
        println!(
            "calibration       none: fewer than 20 training examples could be scored by a model that did not see them"
        );
        return;
    };
    println!(
        "calibration       T={:.3}, top-label slope {:.3} intercept {:.3}, on {} held-out examples, ECE {:.4} -> {:.4}",
        c.temperature,
        c.top_label.slope,
        c.top_label.intercept,
        c.holdout_examples,
        c.ece_before,
        c.ece_after
    );
    match (c.threshold, c.coverage) {
        (Some(t), Some(cov)) => println!(
            "threshold         {t:.4} for {target_accuracy} accuracy (held-out coverage {cov:.4})"
        ),
        _ => println!(
            "threshold         none reaches {target_accuracy} accuracy on the held-out data"
        ),
    }
}

async fn train(config: Config, extra: &[PathBuf]) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let store = crate::service::connect_store(&config).await?;
    if config.database.migrate_on_start {
        store.migrate().await.context("cannot apply migrations")?;
    }
    let (sops, _) = crate::sop::SopSet::load(&config.sops.dir)?;
    let examples = crate::service::training_set(store.as_ref(), &config, &sops, extra).await?;
    let intents: std::collections::BTreeSet<&str> =
        examples.iter().map(|(l, _)| l.as_str()).collect();
    eprintln!(
        "training on {} examples of {} intents",
        examples.len(),
        intents.len()
    );
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>12} [{bar:30}] epoch {pos}/{len} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    // The calibration and final fits train side by side: the bar follows
    // the final one (the larger, so the last to finish).
    let progress = |phase: &str, epoch: usize, epochs: usize| match &bar {
        Some(_) if phase != "final" => {}
        Some(bar) => {
            bar.set_message("training");
            bar.set_length(epochs as u64);
            bar.set_position(epoch as u64);
        }
        None if epoch == epochs => eprintln!("{phase}: {epochs} epochs done"),
        None => {}
    };
    let started = std::time::Instant::now();
    let (model, trained) =
        crate::retrain::load_or_train_router(&store, &config, &examples, &progress).await?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    println!(
        "model       {} ({})",
        model.version(),
        if trained {
            "trained and stored"
        } else {
            "already stored for this data; reused"
        }
    );
    println!("intents     {}", model.labels().len());
    println!("examples    {}", examples.len());
    println!("time        {:.2}s", started.elapsed().as_secs_f64());
    match model.calibration() {
        Some(c) => {
            println!(
                "calibration T={:.3}, top-label slope {:.3} intercept {:.3}, on {} held-out examples: accuracy {:.4}, ECE {:.4} -> {:.4}",
                c.temperature,
                c.top_label.slope,
                c.top_label.intercept,
                c.holdout_examples,
                c.holdout_accuracy,
                c.ece_before,
                c.ece_after
            );
            if let (Some(target), None) = (c.target_accuracy, c.threshold) {
                println!(
                    "threshold   none reaches {target} accuracy on held-out data: serve would send every message to review"
                );
            }
            if let (Some(target), Some(t), Some(cov)) = (c.target_accuracy, c.threshold, c.coverage)
            {
                println!(
                    "threshold   {t:.4} reaches {target} accuracy on {:.1}% of held-out traffic",
                    cov * 100.0
                );
            }
        }
        None => println!("calibration none (fewer than 20 held-out examples)"),
    }
    if let Some(pinned) = store.pinned_router_model().await? {
        println!(
            "pinned      {pinned}: serve routes with it until `sopr router unpin`, then as follows"
        );
    }
    use crate::retrain::AgainstPromoted;
    Ok(
        match crate::retrain::against_promoted(store.as_ref(), &config, &model).await? {
            AgainstPromoted::Nothing => {
                println!("promoted    none yet: serve starts with the model for its data");
                ExitCode::SUCCESS
            }
            AgainstPromoted::Same => {
                println!("promoted    this model: serve routes with it");
                ExitCode::SUCCESS
            }
            AgainstPromoted::Passes(version) => {
                println!(
                    "promoted    {version}; this model is not worse beyond routing.retrain_max_drop, so serve would switch to it"
                );
                ExitCode::SUCCESS
            }
            AgainstPromoted::Refused { promoted, reason } => {
                println!(
                    "promoted    {}; this model is worse ({reason}), so serve would keep routing with that one",
                    promoted.version()
                );
                eprintln!(
                    "error: the model for this data is worse than the one promoted last; check the data, or accept it with `sopr router pin {}` then `sopr router unpin`",
                    model.version()
                );
                ExitCode::from(1)
            }
        },
    )
}

async fn router(config: Config, command: RouterCommand) -> anyhow::Result<ExitCode> {
    let store = crate::service::connect_store(&config).await?;
    if config.database.migrate_on_start {
        store.migrate().await.context("cannot apply migrations")?;
    }
    match command {
        RouterCommand::List { format } => {
            let models = store.router_models(ROUTER_MODELS_LISTED).await?;
            let promoted = store.promoted_router_model().await?;
            print_router_models(&models, promoted.as_deref(), format)?;
        }
        RouterCommand::Pin { version, reason } => {
            let reason = reason
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty());
            let models = store.router_models(ROUTER_MODELS_LISTED).await?;
            let version = match_version(&models, &version)?;
            let bytes = store
                .router_model(&version)
                .await?
                .with_context(|| format!("router model {version} is no longer stored"))?;
            let model = crate::routing::Classifier::from_bytes(&bytes).with_context(|| {
                format!("router model {version} cannot be loaded by this sopr, so replicas could not route with it")
            })?;
            warn_missing_intents(&config, &model);
            anyhow::ensure!(
                store
                    .pin_router_model(&version, chrono::Utc::now(), reason.as_deref())
                    .await?,
                "router model {version} is no longer stored"
            );
            println!("{version}");
            eprintln!(
                "pinned {version}: serve replicas route with it within {} s and do not retrain until `sopr router unpin`",
                crate::retrain::PIN_POLL.as_secs()
            );
        }
        RouterCommand::Unpin => match store.unpin_router_model().await? {
            Some(version) => eprintln!(
                "unpinned {version}: within {} s, serve replicas go back to the model for their training data, unless it is worse than {version} beyond routing.retrain_max_drop",
                crate::retrain::PIN_POLL.as_secs()
            ),
            None => eprintln!("no router model was pinned"),
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// More than the store keeps (five, the promoted and the pinned one).
const ROUTER_MODELS_LISTED: i64 = 100;

/// The stored version `given` names: the whole version, or a unique start of
/// it, with or without the model kind (`lr11-`).
async fn export_feedback(config: Config, request: &ExportRequest<'_>) -> anyhow::Result<ExitCode> {
    let ExportRequest {
        tenant,
        since,
        source,
        out,
        raw,
    } = *request;
    let store = crate::service::connect_store(&config).await?;
    if config.database.migrate_on_start {
        store.migrate().await.context("cannot apply migrations")?;
    }
    let tenant_id = match tenant {
        Some(name) => Some(
            store
                .tenant_by_name(name.trim())
                .await?
                .with_context(|| format!("--tenant {name}: no such tenant"))?
                .id,
        ),
        None => None,
    };
    let mut scope = tenant.map_or(String::new(), |name| format!(" of tenant {}", name.trim()));
    if let Some(since) = since {
        scope += &format!(
            " since {}",
            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    if let Some(source) = source {
        scope += match source {
            LabelSource::Review => " from review items",
            LabelSource::SpotCheck => " from spot checks",
        };
    }
    let since = since.unwrap_or(chrono::DateTime::UNIX_EPOCH);
    let mut rows = store.labelled_messages(tenant_id, since).await?;
    if let Some(source) = source {
        rows.retain(|r| r.source == source.as_str());
    }
    let sink: Box<dyn std::io::Write> = match out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut writer = csv::Writer::from_writer(sink);
    writer.write_record([
        "text",
        "intent",
        "routed_intent",
        "confidence",
        "tenant",
        "labelled_at",
        "source",
        "action",
        "reviewer",
        "id",
    ])?;
    for row in &rows {
        let text = if raw {
            row.text.clone()
        } else {
            crate::routing::screen::mask_pii(&row.text)
        };
        writer.write_record([
            text.as_str(),
            &row.intent,
            row.routed_intent.as_deref().unwrap_or(""),
            &format!("{:.4}", row.confidence),
            &row.tenant,
            &row.labelled_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            &row.source,
            &row.action,
            &row.reviewer,
            &row.id.to_string(),
        ])?;
    }
    writer.flush().context("cannot write the export")?;
    eprintln!("{}", export_summary(&rows, &scope, out));
    Ok(ExitCode::SUCCESS)
}

/// What `feedback export` wrote, and how often the router's intent was the
/// reviewer's: on review items (mostly messages it was unsure of) and on spot
/// checks (a sample of its automatic answers), apart.
fn export_summary(
    rows: &[crate::store::LabelledMessage],
    scope: &str,
    out: Option<&std::path::Path>,
) -> String {
    let to = out.map_or(String::new(), |p| format!(" to {}", p.display()));
    if rows.is_empty() {
        return format!(
            "no labelled messages{scope}{to}: reviewers label a message when they resolve or reroute its review item, or label a spot check"
        );
    }
    let tenants: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.tenant.as_str()).collect();
    // One tenant's export says which in `scope`.
    let of_tenants = if scope.starts_with(" of tenant ") {
        String::new()
    } else {
        format!(
            " of {} tenant{}",
            tenants.len(),
            if tenants.len() == 1 { "" } else { "s" }
        )
    };
    let part = |source: LabelSource, (one, many): (&str, &str), kept: &str| {
        let of: Vec<_> = rows
            .iter()
            .filter(|r| r.source == source.as_str())
            .collect();
        let same = of
            .iter()
            .filter(|r| r.routed_intent.as_deref() == Some(r.intent.as_str()))
            .count();
        (!of.is_empty()).then(|| {
            format!(
                "{} {}, {kept} for {same} ({:.1}%)",
                of.len(),
                if of.len() == 1 { one } else { many },
                100.0 * same as f64 / of.len() as f64
            )
        })
    };
    let parts: Vec<String> = [
        part(
            LabelSource::Review,
            ("from a review item", "from review items"),
            "the router's intent kept",
        ),
        part(
            LabelSource::SpotCheck,
            (
                "spot check of automatic answers",
                "spot checks of automatic answers",
            ),
            "routed right",
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    let oos = rows.iter().filter(|r| r.intent == "oos").count();
    format!(
        "exported {} labelled message{}{of_tenants}{scope}{to}: {}; {oos} labelled `oos` (no SOP covers them)",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        parts.join("; "),
    )
}

fn match_version(
    models: &[crate::store::RouterModelSummary],
    given: &str,
) -> anyhow::Result<String> {
    let given = given.trim();
    anyhow::ensure!(
        !given.is_empty(),
        "give a model version (`sopr router list` shows them)"
    );
    let hash = |v: &str| v.split_once('-').map_or(v, |(_, h)| h).to_string();
    if let Some(m) = models.iter().find(|m| m.version == given) {
        return Ok(m.version.clone());
    }
    let found: Vec<&str> = models
        .iter()
        .filter(|m| m.version.starts_with(given) || hash(&m.version).starts_with(given))
        .map(|m| m.version.as_str())
        .collect();
    match found[..] {
        [one] => Ok(one.to_string()),
        [] => anyhow::bail!(
            "no stored router model `{given}`; `sopr router list` shows the {} stored",
            models.len()
        ),
        _ => anyhow::bail!(
            "`{given}` names {} models: {}",
            found.len(),
            found.join(", ")
        ),
    }
}

/// Warns on stderr about intents of the active SOPs that `model` does not
/// route to. The SOP folder may not be readable where the command runs.
fn warn_missing_intents(config: &Config, model: &crate::routing::Classifier) {
    let sops = match crate::sop::SopSet::load(&config.sops.dir) {
        Ok((sops, _)) => sops,
        Err(err) => {
            eprintln!(
                "note: cannot read the SOPs in {} to compare their intents with the model's: {err:#}",
                config.sops.dir.display()
            );
            return;
        }
    };
    let known: std::collections::BTreeSet<&str> =
        model.labels().iter().map(String::as_str).collect();
    let missing: std::collections::BTreeSet<&str> = sops
        .active()
        .flat_map(|sop| sop.file.intents.iter().map(String::as_str))
        .filter(|intent| !known.contains(intent))
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "warning: the model does not know {} intent(s) of the active SOPs ({}): while it is pinned, their messages are routed to other intents or to review",
            missing.len(),
            missing.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
}

fn print_router_models(
    models: &[crate::store::RouterModelSummary],
    promoted: Option<&str>,
    format: Format,
) -> anyhow::Result<()> {
    use crate::routing::calibration::Calibration;
    let calibration = |m: &crate::store::RouterModelSummary| -> Option<Calibration> {
        serde_json::from_value(m.metrics.0.get("calibration")?.clone()).ok()
    };
    match format {
        Format::Json => {
            let rows: Vec<_> = models
                .iter()
                .map(|m| {
                    let c = calibration(m);
                    serde_json::json!({
                        "version": m.version,
                        "stored_at": m.created_at,
                        "examples": m.examples,
                        "intents": m.labels,
                        "holdout_accuracy": c.as_ref().map(|c| c.holdout_accuracy),
                        "ece": c.as_ref().map(|c| c.ece_after),
                        "target_accuracy": c.as_ref().and_then(|c| c.target_accuracy),
                        "threshold": c.as_ref().and_then(|c| c.threshold),
                        "coverage": c.as_ref().and_then(|c| c.coverage),
                        "promoted_at": m.promoted_at,
                        "promoted_last": promoted == Some(m.version.as_str()),
                        "pinned_at": m.pinned_at,
                        "pin_reason": m.pin_reason,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Format::Text => {
            if models.is_empty() {
                eprintln!("no router model is stored yet: `sopr serve` or `sopr train` stores one");
                return Ok(());
            }
            println!(
                "{:<18} {:<17} {:>8} {:>7} {:>8} {:>6}  {:<16} STATE",
                "VERSION", "STORED (UTC)", "EXAMPLES", "INTENTS", "ACCURACY", "ECE", "ANSWERED"
            );
            for m in models {
                let c = calibration(m);
                let answered = match c.as_ref().map(|c| (c.target_accuracy, c.coverage)) {
                    Some((Some(target), Some(coverage))) => {
                        format!("{:.1}% at {target}", 100.0 * coverage)
                    }
                    Some((Some(target), None)) => format!("none at {target}"),
                    _ => "-".into(),
                };
                let mut state = Vec::new();
                if m.pinned_at.is_some() {
                    state.push(match &m.pin_reason {
                        Some(reason) => format!("pinned ({reason})"),
                        None => "pinned".to_string(),
                    });
                }
                if let Some(at) = m.promoted_at {
                    state.push(format!(
                        "promoted {}{}",
                        at.format("%Y-%m-%d %H:%M"),
                        if promoted == Some(m.version.as_str()) {
                            " (last)"
                        } else {
                            ""
                        }
                    ));
                }
                println!(
                    "{:<18} {:<17} {:>8} {:>7} {:>8} {:>6}  {:<16} {}",
                    m.version,
                    m.created_at.format("%Y-%m-%d %H:%M"),
                    m.examples,
                    m.labels,
                    c.as_ref().map_or("-".into(), |c| format!(
                        "{:.1}%",
                        100.0 * c.holdout_accuracy
                    )),
                    c.as_ref()
                        .map_or("-".into(), |c| format!("{:.3}", c.ece_after)),
                    answered,
                    state.join(", ")
                );
            }
        }
    }
    Ok(())
}

async fn users(config: Config, command: UsersCommand) -> anyhow::Result<ExitCode> {
    use crate::users::{hash_password, normalise_email};

    let store = crate::service::connect_store(&config).await?;
    if config.database.migrate_on_start {
        store.migrate().await.context("cannot apply migrations")?;
    }
    let tenant_of = |name: String| {
        let store = store.clone();
        async move {
            let name = name.trim().to_string();
            store.tenant_by_name(&name).await?.with_context(|| {
                format!("no tenant `{name}`; create it with `sopr keys create --tenant {name}`")
            })
        }
    };
    match command {
        UsersCommand::Add {
            tenant,
            email,
            role,
        } => {
            let tenant = tenant_of(tenant).await?;
            let email = normalise_email(&email)?;
            let password_hash = hash_password(&read_password()?)?;
            let user = crate::store::User {
                id: uuid::Uuid::now_v7(),
                tenant_id: tenant.id,
                email: email.clone(),
                role: role.as_str().into(),
                password_hash,
                created_at: chrono::Utc::now(),
                disabled_at: None,
                failed_logins: 0,
                locked_until: None,
            };
            match store.create_user(&user).await {
                Err(crate::store::StoreError::Conflict(_)) => {
                    anyhow::bail!("tenant `{}` already has a user {email}", tenant.name)
                }
                other => other?,
            }
            eprintln!(
                "added {} {email} to tenant `{}`",
                role.as_str(),
                tenant.name
            );
        }
        UsersCommand::List { tenant } => {
            let tenant = tenant_of(tenant).await?;
            for user in store.list_users(tenant.id).await? {
                let disabled = user
                    .disabled_at
                    .map(|t| format!("  disabled {}", t.format("%Y-%m-%d")))
                    .unwrap_or_default();
                println!(
                    "{}\t{}\t{}{disabled}",
                    user.email,
                    user.role,
                    user.created_at.format("%Y-%m-%d")
                );
            }
        }
        UsersCommand::SetPassword { tenant, email } => {
            let tenant = tenant_of(tenant).await?;
            let email = normalise_email(&email)?;
            let hash = hash_password(&read_password()?)?;
            anyhow::ensure!(
                store.set_user_password(tenant.id, &email, &hash).await?,
                "tenant `{}` has no user {email}",
                tenant.name
            );
            if let Some(user) = store.user_by_email(tenant.id, &email).await? {
                store.delete_user_sessions(user.id).await?;
            }
            eprintln!("password of {email} changed; their console sessions ended");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A new password: asked twice on a terminal, else the first line of stdin.
fn read_password() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal};

    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Password again: ")?;
        anyhow::ensure!(first == again, "the passwords do not match");
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!password.is_empty(), "no password on stdin");
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_timestamp_with_any_offset_or_a_date() {
        let utc = |s: &str| parse_since(s).map(|t| t.to_rfc3339());
        assert_eq!(
            utc("2026-11-01T10:30:00+01:00").unwrap(),
            "2026-11-01T09:30:00+00:00"
        );
        assert_eq!(utc(" 2026-11-01 ").unwrap(), "2026-11-01T00:00:00+00:00");
        for bad in ["2026-13-01", "yesterday", "2026-11-01 09:00", ""] {
            let err = utc(bad).unwrap_err();
            assert!(
                err.contains("neither an RFC 3339 timestamp"),
                "{bad}: {err}"
            );
        }
    }
}
