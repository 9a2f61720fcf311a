//! The `sopr` command line. Each subcommand only wires library pieces together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, Overrides};
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
    /// trains the router from their examples, and on an empty database creates the demo tenant and
    /// prints its API key once.
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
    /// Print the effective configuration (all sources merged), with secrets masked.
    PrintConfig,
}

#[derive(Debug, Subcommand)]
pub enum SopsCommand {
    /// Lint a folder of SOP files and exit non-zero on any error.
    ///
    /// Checks: YAML syntax, the JSON Schema (sops/sop.schema.json), duplicate id@version, more than
    /// one active version per id, agents not declared in agents.yaml, intents claimed by two active
    /// SOPs, examples that do not match intents, and templates that fail to compile or to render
    /// with a sample context (with and without the customer's name and email).
    Check {
        /// Folder to check [default: sops.dir]
        dir: Option<PathBuf>,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
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
    crate::http::serve(listener, service.state, shutdown_signal()).await?;
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
