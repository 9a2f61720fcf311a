//! Typed settings. Sources, later ones winning: embedded defaults → `sopr.toml`
//! (or the file `--config`/`SOPR_CONFIG` names) → `SOPR_*` environment variables
//! → command-line overrides. `SOPR_DATABASE_URL` sets `database.url`: the part
//! before the first `_` is the section; `__` may be used to nest explicitly.
//! After merging, `validate()` rejects anything a person would have to debug at
//! runtime, naming the key at fault. Secrets are `SecretString` and never printed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub sops: SopsConfig,
    pub routing: RoutingConfig,
    pub escalation: EscalationConfig,
    pub screen: ScreenConfig,
    pub messages: MessagesConfig,
    pub review: ReviewConfig,
    pub console: ConsoleConfig,
    pub notify: NotifyConfig,
    pub bootstrap: BootstrapConfig,
    pub log: LogConfig,
    pub llm: LlmConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP server binds.
    pub listen: String,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Whole-request timeout, in seconds.
    pub request_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path.db` (created if missing) or `postgres://user:pass@host/db`.
    #[serde(serialize_with = "serialize_url")]
    pub url: SecretString,
    pub max_connections: u32,
    /// Apply migrations when `serve` starts. Defaults to on; for Postgres with
    /// several replicas, run `sopr migrate` once instead and turn this off.
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SopsConfig {
    /// Folder of SOP YAML files (and `agents.yaml`).
    pub dir: PathBuf,
}

/// Beyond this the network costs more per message than it could add.
pub const MAX_NETWORK_HIDDEN: usize = 512;

/// More training threads than this is a typo, not a machine.
pub const MAX_TRAIN_THREADS: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Threshold used by SOPs that do not set `escalation.min_confidence`.
    pub default_min_confidence: f64,
    /// Seed for training; the same seed and data give the same model.
    pub seed: u64,
    /// When set, the threshold is chosen from held-out data so that
    /// automatically answered traffic reaches this accuracy; an SOP's own
    /// `min_confidence` still acts as a floor.
    pub target_accuracy: Option<f64>,
    /// A message whose two best intents are closer than this goes to review.
    pub min_margin: f64,
    /// Extra labelled CSV files (`text,intent` or `text,category`) to train on,
    /// on top of the SOP examples.
    pub training_data: Vec<PathBuf>,
    /// Also train on reviewers' decisions: the customer message of each
    /// resolved or rerouted item with the intent the reviewer confirmed or
    /// chose (the latest decision per item, newest `feedback_max_examples`),
    /// when that intent belongs to an active SOP. The model is shared by all
    /// tenants, so this mixes tenants' messages into one model (it keeps
    /// hashed features, not text). `serve` and `sopr train` retrain when the
    /// feedback has changed.
    pub learn_from_feedback: bool,
    pub feedback_max_examples: u32,
    /// While `serve` runs, how often to check whether the training data
    /// (feedback, the `training_data` files) asks for a new model, and if so
    /// load or train it and route with it; 0 checks only at start.
    pub retrain_every_minutes: u32,
    /// A model retrained while serving replaces the one in use only if it is
    /// not worse by more than this: its held-out accuracy, and with
    /// `target_accuracy` the held-out share its calibrated confidences would
    /// answer (`retrain::worse_by`), may fall at most this much (0.03 = 3
    /// points). 1 accepts any model.
    pub retrain_max_drop: f64,
    /// Threads a retrain while serving may use, 0 for one per core. Training
    /// at start uses every core; while serving, fewer threads leave cores to
    /// the requests (the retrain takes longer). The model is the same.
    pub retrain_threads: usize,
    /// Hidden units of the small neural network whose scores the router adds
    /// to its linear model's; 0 routes with the linear model alone. 128 units
    /// were 0.2 points more accurate on average over five Banking77 splits
    /// (not on every split), at about 2 µs more per message and 1.5 s more
    /// training.
    pub network_hidden: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    /// Flags that force review under every SOP (`pii.*` matches a family).
    pub force_review_flags: Vec<String>,
}

/// What the screen looks for beyond its built-in detectors. The built-in
/// topic lists live in `routing::screen::DEFAULT_TOPICS`, not here, so that a
/// `[screen.topics]` entry adds to a list instead of silently replacing it
/// (figment replaces arrays wholesale).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ScreenConfig {
    /// Topic name (`[a-z_]+`) → phrases; a phrase in a message raises
    /// `topic.<name>`. Added to the built-in list of the same name, if any.
    pub topics: BTreeMap<String, Vec<String>>,
    /// Drop the built-in topic lists and use only `topics`.
    pub replace_default_topics: bool,
    /// By tenant name: topic lists raised only for that tenant's messages, on
    /// top of the deployment's (a tenant's `fraud` list adds phrases to
    /// `topic.fraud` for its messages alone).
    pub tenants: BTreeMap<String, TenantScreenConfig>,
}

/// One tenant's own screening (`[screen.tenants.<name>]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantScreenConfig {
    /// Topic name (`[a-z_]+`) → phrases, as in `[screen.topics]`.
    pub topics: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagesConfig {
    /// Longest accepted customer message, in characters.
    pub max_text_chars: usize,
    /// Tera template sent when a case is queued and its SOP has no `response.holding`.
    pub holding_reply: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// How long a claim lasts without renewal, in seconds.
    pub lease_secs: u64,
    /// SLA for items whose SOP sets none (and for unrouted messages), in minutes.
    pub default_sla_minutes: u32,
    /// Flag (or `family.*`) → the least priority of an item it fires on. The
    /// item gets the highest of its SOP's priority and its flags'. Entries in
    /// the file add to (or override) the defaults.
    pub flag_priority: BTreeMap<String, crate::sop::Priority>,
    /// Share of automatically answered messages sampled as spot checks for
    /// reviewers to label after the reply went out (0 = none, 0.02 = 2%):
    /// the accuracy of automatic answers on live traffic.
    pub spot_check_share: f64,
}

/// The reviewer console under `/console`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console. The JSON API works either way.
    pub enabled: bool,
    /// How long a sign-in lasts, in hours.
    pub session_hours: u32,
    /// When session cookies get the `Secure` attribute.
    pub secure_cookies: SecureCookies,
    /// Failed sign-ins in a row after which an account is locked.
    pub lockout_after: u32,
    /// First lock, in seconds; each further failure doubles it, up to `lockout_max_secs`.
    pub lockout_secs: u64,
    pub lockout_max_secs: u64,
    /// How often an open console page checks the queue for changes, in milliseconds.
    pub live_poll_ms: u64,
}

/// Notifications: a transactional outbox delivered by a dispatcher inside
/// `serve` (every replica runs one; rows are leased, so each goes out once).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Run the dispatcher in `serve`. Rows are written either way.
    pub dispatch: bool,
    /// How often the dispatcher looks for due rows, in milliseconds.
    pub poll_ms: u64,
    /// How long a dispatcher holds a row it is delivering, in seconds; a row
    /// whose delivery was cut short (a crash) is tried again after it.
    pub lease_secs: u64,
    /// Attempts before a row goes to the dead-letter state.
    pub max_attempts: u32,
    /// Backoff: full jitter over base × 2^attempt, capped, in milliseconds.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Base URL of the console, for links in notifications.
    pub console_url: String,
    /// Delivered rows are deleted after this many days (dead and pending rows stay).
    pub keep_delivered_days: u32,
    pub smtp: SmtpConfig,
    pub sla: SlaLadderConfig,
    /// Chat-frontend webhooks, one per tenant.
    pub webhooks: Vec<WebhookConfig>,
    pub slack: SlackConfig,
}

/// Slack: new review items (and SLA warnings) posted to the channels SOPs
/// name as `slack:#channel`. With a bot token, messages carry Claim / Approve
/// draft / Open in console buttons and are updated whenever the item is
/// claimed or resolved; a channel with an incoming webhook gets a plain
/// message instead. Secrets are read from the named environment variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// Slack Web API base URL.
    pub api_url: String,
    /// Environment variable holding the bot token (`xoxb-…`, scopes
    /// `chat:write`, and `users:read.email` to match reviewers by email).
    /// Empty: no bot.
    pub bot_token_env: String,
    /// Environment variable holding the app's signing secret. Set, it turns
    /// on `POST /slack/actions` (the app's Interactivity request URL).
    pub signing_secret_env: String,
    /// Channel → environment variable holding an incoming-webhook URL, used
    /// for that channel instead of the bot (no buttons, no updates).
    pub incoming_webhooks: BTreeMap<String, String>,
    /// Slack user id → sopr user email, for people whose Slack email differs
    /// from their console email (checked before asking Slack).
    pub users: BTreeMap<String, String>,
    /// Per-request timeout, in milliseconds.
    pub timeout_ms: u64,
}

/// The SLA escalation ladder: who hears of items nobody has claimed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlaLadderConfig {
    /// At this fraction of its SLA, an item still unclaimed is announced to
    /// its SOP's `escalation.backup_notify` targets. 0 turns this step off.
    pub warn_fraction: f64,
    /// Targets told when an item breaches its SLA unclaimed (`email:ADDRESS`).
    pub breach_notify: Vec<String>,
}

/// Email over SMTP. Off while `url` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465` (TLS),
    /// `smtp://host:25` (no TLS); user and password in the URL authenticate.
    #[serde(serialize_with = "serialize_url")]
    pub url: SecretString,
    /// The From header, e.g. `sopr <sopr@example.com>`.
    pub from: String,
    pub timeout_secs: u64,
}

/// A tenant's chat-frontend webhook, signed per the Standard Webhooks convention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Tenant name.
    pub tenant: String,
    pub url: String,
    /// Environment variable holding the signing secret (`whsec_` + base64, or any string).
    pub secret_env: String,
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_webhook_timeout_ms() -> u64 {
    10_000
}

/// `auto`: `Secure` when the request came over HTTPS (a TLS proxy in front
/// sets `X-Forwarded-Proto: https`); `always` / `never` force it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecureCookies {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapConfig {
    /// On an empty database, `serve` creates this tenant and prints an API key
    /// for it once. Empty disables.
    pub demo_tenant: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `sopr=debug,tower_http=info`.
    pub level: String,
    /// `pretty` for people, `json` for log pipelines.
    pub format: LogFormat,
}

/// LLM mode. Off while `providers` is empty: agents then draft from their
/// templates only and sopr makes no network call. With providers, an SOP that
/// has a `response.llm` block drafts with a model; everything else is unchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// Time budget of one customer message, from arrival to its decision, in
    /// milliseconds. Every LLM step gets what is left of it.
    pub deadline_ms: u64,
    /// Part of the deadline kept for what follows the LLM (persisting the
    /// decision), in milliseconds.
    pub reserve_ms: u64,
    /// Most tokens the model may write per call.
    pub max_output_tokens: u32,
    pub temperature: f32,
    /// Earlier messages of the conversation given to the model.
    pub history_messages: usize,
    /// Named OpenAI-compatible endpoints (`[[llm.providers]]`).
    pub providers: Vec<ProviderConfig>,
    /// Default strategy; an SOP's `response.llm.strategy` overrides it.
    pub strategy: StrategyConfig,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub classifier: LlmClassifierConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Name used by strategies, metrics and decision records.
    pub name: String,
    /// API root, e.g. `https://api.openai.com/v1` or `http://localhost:11434/v1`.
    pub base_url: String,
    pub model: String,
    /// Name of the environment variable that holds the API key. The key itself
    /// never goes in a file. Unset for local servers that need none.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Most calls in flight to this provider at once.
    #[serde(default = "default_provider_concurrency")]
    pub max_concurrency: usize,
    /// Longest one call may take, in milliseconds (the message deadline may cut it shorter).
    #[serde(default = "default_provider_timeout_ms")]
    pub timeout_ms: u64,
    /// Price per 1,000 prompt tokens, in your currency, for cost accounting.
    #[serde(default)]
    pub price_input_per_1k: f64,
    /// Price per 1,000 completion tokens.
    #[serde(default)]
    pub price_output_per_1k: f64,
    /// How JSON output is requested: `json_schema` (structured outputs),
    /// `json_object` (JSON mode) or `none` (prompt only). The reply is
    /// validated against the schema whatever the mode.
    #[serde(default)]
    pub output_mode: OutputMode,
}

fn default_provider_concurrency() -> usize {
    16
}

fn default_provider_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    #[default]
    JsonSchema,
    JsonObject,
    None,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StrategyConfig {
    /// `fallback`: providers in order, the next one only when one fails;
    /// `race`: all at once, first valid answer wins, the others are cancelled;
    /// `hedge`: the next provider is asked only when the first has not
    /// answered after `hedge_delay_ms`.
    pub mode: StrategyMode,
    /// Provider names in order of preference; empty means every provider in
    /// the order of `[[llm.providers]]`.
    pub providers: Vec<String>,
    /// Hedge delay in milliseconds. Unset: the first provider's observed p95
    /// latency (500 ms until it has answered 20 times).
    pub hedge_delay_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StrategyMode {
    #[default]
    Fallback,
    Race,
    Hedge,
}

/// Retries of transient failures (connection errors, timeouts, 429, 5xx) on one provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per provider, the first included.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled each time, with full jitter.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open a provider's circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before one trial call is let through.
    pub open_secs: u64,
}

/// The LLM as a second opinion for the router's ambiguous band. Off by default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmClassifierConfig {
    pub enabled: bool,
    /// Messages whose router confidence lies in `[band_low, band_high)` are
    /// shown to the model with the `top_k` candidate intents. When it picks
    /// one, that choice routes the message and counts as confident; flags and
    /// SOP rules still apply. Outside the band the router alone decides.
    pub band_low: f64,
    pub band_high: f64,
    pub top_k: usize,
    /// Strategy for classification calls; unset uses `[llm.strategy]`.
    pub strategy: Option<StrategyConfig>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig {
                listen: "127.0.0.1:8080".into(),
                max_body_bytes: 64 * 1024,
                request_timeout_secs: 30,
            },
            database: DatabaseConfig {
                url: SecretString::from("sqlite://sopr.db"),
                max_connections: 16,
                migrate_on_start: true,
            },
            sops: SopsConfig { dir: PathBuf::from("sops") },
            routing: RoutingConfig {
                default_min_confidence: 0.6,
                seed: 42,
                target_accuracy: None,
                min_margin: 0.1,
                training_data: Vec::new(),
                learn_from_feedback: false,
                feedback_max_examples: 20_000,
                retrain_every_minutes: 60,
                retrain_max_drop: 0.03,
                retrain_threads: 1,
                network_hidden: 128,
            },
            escalation: EscalationConfig {
                force_review_flags: vec![
                    "pii.*".into(),
                    "human_requested".into(),
                    "topic.fraud".into(),
                    "topic.legal_threat".into(),
                    "topic.self_harm".into(),
                    "topic.regulator_complaint".into(),
                ],
            },
            screen: ScreenConfig {
                topics: BTreeMap::new(),
                replace_default_topics: false,
                tenants: BTreeMap::new(),
            },
            messages: MessagesConfig {
                max_text_chars: 4000,
                holding_reply: "Thanks {{ customer.name | default(value=\"for your message\") }}. A member of our team will \
                                look at this and reply here shortly."
                    .into(),
            },
            review: ReviewConfig {
                lease_secs: 600,
                default_sla_minutes: 240,
                spot_check_share: 0.0,
                flag_priority: [
                    ("topic.self_harm", crate::sop::Priority::Urgent),
                    ("topic.fraud", crate::sop::Priority::High),
                    ("topic.legal_threat", crate::sop::Priority::High),
                    ("topic.regulator_complaint", crate::sop::Priority::High),
                    ("pii.card_number", crate::sop::Priority::High),
                ]
                .into_iter()
                .map(|(flag, p)| (flag.to_string(), p))
                .collect(),
            },
            console: ConsoleConfig {
                enabled: true,
                session_hours: 12,
                secure_cookies: SecureCookies::Auto,
                lockout_after: 5,
                lockout_secs: 30,
                lockout_max_secs: 900,
                live_poll_ms: 1000,
            },
            notify: NotifyConfig {
                dispatch: true,
                poll_ms: 1000,
                lease_secs: 60,
                max_attempts: 10,
                backoff_base_ms: 1000,
                backoff_max_ms: 600_000,
                console_url: "http://127.0.0.1:8080".into(),
                keep_delivered_days: 7,
                smtp: SmtpConfig {
                    url: SecretString::from(String::new()),
                    from: "sopr <sopr@localhost>".into(),
                    timeout_secs: 10,
                },
                sla: SlaLadderConfig {
                    warn_fraction: 0.5,
                    breach_notify: Vec::new(),
                },
                webhooks: Vec::new(),
                slack: SlackConfig {
                    api_url: "https://slack.com/api".into(),
                    bot_token_env: String::new(),
                    signing_secret_env: String::new(),
                    incoming_webhooks: BTreeMap::new(),
                    users: BTreeMap::new(),
                    timeout_ms: 10_000,
                },
            },
            bootstrap: BootstrapConfig {
                demo_tenant: "demo".into(),
            },
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Pretty,
            },
            llm: LlmConfig {
                deadline_ms: 8_000,
                reserve_ms: 250,
                max_output_tokens: 600,
                temperature: 0.2,
                history_messages: 10,
                providers: Vec::new(),
                strategy: StrategyConfig::default(),
                retry: RetryConfig {
                    max_attempts: 3,
                    initial_backoff_ms: 100,
                    max_backoff_ms: 2_000,
                },
                breaker: BreakerConfig {
                    failure_threshold: 5,
                    open_secs: 30,
                },
                classifier: LlmClassifierConfig {
                    enabled: false,
                    band_low: 0.3,
                    band_high: 0.6,
                    top_k: 5,
                    strategy: None,
                },
            },
        }
    }
}

macro_rules! impl_default_from_config {
    ($($ty:ident => $($field:ident).+),* $(,)?) => {
        $(impl Default for $ty {
            fn default() -> Self {
                Config::default().$($field).+
            }
        })*
    };
}

impl_default_from_config!(
    ServerConfig => server,
    DatabaseConfig => database,
    SopsConfig => sops,
    RoutingConfig => routing,
    EscalationConfig => escalation,
    ScreenConfig => screen,
    MessagesConfig => messages,
    ReviewConfig => review,
    ConsoleConfig => console,
    NotifyConfig => notify,
    SmtpConfig => notify.smtp,
    SlaLadderConfig => notify.sla,
    SlackConfig => notify.slack,
    BootstrapConfig => bootstrap,
    LogConfig => log,
    LlmConfig => llm,
    RetryConfig => llm.retry,
    BreakerConfig => llm.breaker,
    LlmClassifierConfig => llm.classifier,
);

impl NotifyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        if !(50..=60_000).contains(&self.poll_ms) {
            return invalid("notify.poll_ms".into(), "must be from 50 to 60000".into());
        }
        if self.max_attempts == 0 {
            return invalid("notify.max_attempts".into(), "must be positive".into());
        }
        if self.lease_secs == 0 {
            return invalid("notify.lease_secs".into(), "must be positive".into());
        }
        if !(0.0..1.0).contains(&self.sla.warn_fraction) {
            return invalid(
                "notify.sla.warn_fraction".into(),
                "must be at least 0 and below 1".into(),
            );
        }
        for (i, target) in self.sla.breach_notify.iter().enumerate() {
            if !crate::notify::is_valid_target(target) {
                return invalid(
                    format!("notify.sla.breach_notify[{i}]"),
                    format!(
                        "`{target}` is not a target such as `email:leads@example.com` or `slack:#support`"
                    ),
                );
            }
        }
        if self.keep_delivered_days == 0 {
            return invalid(
                "notify.keep_delivered_days".into(),
                "must be positive".into(),
            );
        }
        if self.backoff_base_ms == 0 || self.backoff_max_ms < self.backoff_base_ms {
            return invalid(
                "notify.backoff_base_ms".into(),
                "must be positive and at most notify.backoff_max_ms".into(),
            );
        }
        if !(self.console_url.starts_with("http://") || self.console_url.starts_with("https://")) {
            return invalid(
                "notify.console_url".into(),
                format!("`{}` must be an http:// or https:// URL", self.console_url),
            );
        }
        let smtp = self.smtp.url.expose_secret();
        if !smtp.is_empty() {
            if let Err(err) = crate::notify::email::check_url(&self.smtp) {
                return invalid("notify.smtp.url".into(), err);
            }
            if self.smtp.from.parse::<lettre::message::Mailbox>().is_err() {
                return invalid(
                    "notify.smtp.from".into(),
                    format!(
                        "`{}` is not an address such as `sopr <sopr@example.com>`",
                        self.smtp.from
                    ),
                );
            }
        }
        if self.smtp.timeout_secs == 0
            || (!smtp.is_empty() && self.smtp.timeout_secs >= self.lease_secs)
        {
            return invalid(
                "notify.smtp.timeout_secs".into(),
                "must be positive and shorter than notify.lease_secs".into(),
            );
        }
        let mut tenants = std::collections::HashSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let key = |field: &str| format!("notify.webhooks[{i}].{field}");
            if w.tenant.trim().is_empty() || !tenants.insert(w.tenant.as_str()) {
                return invalid(
                    key("tenant"),
                    format!("`{}` must be non-empty and unique", w.tenant),
                );
            }
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return invalid(
                    key("url"),
                    format!("`{}` must be an http:// or https:// URL", w.url),
                );
            }
            if let Err(message) = crate::notify::webhook::secret_from_env(&w.secret_env) {
                return invalid(key("secret_env"), message);
            }
            if w.timeout_ms == 0 || w.timeout_ms >= self.lease_secs.saturating_mul(1000) {
                return invalid(
                    key("timeout_ms"),
                    "must be positive and shorter than notify.lease_secs".into(),
                );
            }
        }
        self.slack.validate(self.lease_secs)
    }
}

impl SlackConfig {
    /// Whether a bot token is configured (buttons, updates, `/slack/actions`).
    pub fn bot(&self) -> bool {
        !self.bot_token_env.trim().is_empty()
    }

    /// Whether `slack:CHANNEL` can be delivered: by the bot, or by an
    /// incoming webhook for that channel.
    pub fn can_post(&self, channel: &str) -> bool {
        self.bot() || self.incoming_webhook_env(channel).is_some()
    }

    /// The variable holding the channel's incoming-webhook URL (keys may be
    /// written with or without `#`).
    pub fn incoming_webhook_env(&self, channel: &str) -> Option<&str> {
        let name = channel.trim_start_matches('#');
        self.incoming_webhooks
            .iter()
            .find(|(k, _)| k.trim_start_matches('#') == name)
            .map(|(_, v)| v.as_str())
    }

    fn validate(&self, lease_secs: u64) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        let any = self.bot() || !self.incoming_webhooks.is_empty();
        if any && !(self.api_url.starts_with("http://") || self.api_url.starts_with("https://")) {
            return invalid(
                "notify.slack.api_url".into(),
                format!("`{}` must be an http:// or https:// URL", self.api_url),
            );
        }
        for (key, var) in [
            ("bot_token_env", &self.bot_token_env),
            ("signing_secret_env", &self.signing_secret_env),
        ] {
            if !var.trim().is_empty() && env_value(var).is_none() {
                return invalid(
                    format!("notify.slack.{key}"),
                    format!("environment variable `{var}` is not set"),
                );
            }
        }
        for (channel, var) in &self.incoming_webhooks {
            let key = format!("notify.slack.incoming_webhooks.{channel}");
            if !crate::notify::is_valid_target(&format!("slack:{channel}")) {
                return invalid(key, format!("`{channel}` is not a channel name"));
            }
            match env_value(var) {
                None => {
                    return invalid(key, format!("environment variable `{var}` is not set"));
                }
                Some(url) if !(url.starts_with("https://") || url.starts_with("http://")) => {
                    return invalid(
                        key,
                        format!("environment variable `{var}` does not hold an http(s) URL"),
                    );
                }
                Some(_) => {}
            }
        }
        for (user, email) in &self.users {
            let key = format!("notify.slack.users.{user}");
            if user.is_empty() || !user.chars().all(|c| c.is_ascii_alphanumeric()) {
                return invalid(key, "must be a Slack user id such as `U012AB3CD`".into());
            }
            if email.parse::<lettre::Address>().is_err() {
                return invalid(key, format!("`{email}` is not an email address"));
            }
        }
        if self.timeout_ms == 0 || (any && self.timeout_ms >= lease_secs.saturating_mul(1000)) {
            return invalid(
                "notify.slack.timeout_ms".into(),
                "must be positive and shorter than notify.lease_secs".into(),
            );
        }
        Ok(())
    }
}

/// A non-empty environment variable's value.
pub fn env_value(var: &str) -> Option<String> {
    std::env::var(var.trim())
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A setting that cannot work, with the key that holds it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Load(Box<figment::Error>),
    #[error("invalid config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// Command-line values that override every other source.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub database_url: Option<String>,
    pub listen: Option<String>,
    pub sops_dir: Option<PathBuf>,
}

impl Config {
    /// Loads the layered configuration. `file` is the explicit `--config`; without
    /// it `sopr.toml` in the working directory is read when present.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        figment = match file {
            Some(path) => figment.merge(Toml::file_exact(path)),
            None => figment.merge(Toml::file("sopr.toml")),
        };
        figment = figment.merge(env_provider());
        if let Some(url) = &overrides.database_url {
            figment = figment.merge(Serialized::default("database.url", url));
        }
        if let Some(listen) = &overrides.listen {
            figment = figment.merge(Serialized::default("server.listen", listen));
        }
        if let Some(dir) = &overrides.sops_dir {
            figment = figment.merge(Serialized::default("sops.dir", dir));
        }
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: key.to_string(),
                message,
            })
        };
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return invalid(
                "server.listen",
                format!(
                    "`{}` is not an ADDR:PORT socket address",
                    self.server.listen
                ),
            );
        }
        if self.server.max_body_bytes < 1024 {
            return invalid("server.max_body_bytes", "must be at least 1024".into());
        }
        if self.server.request_timeout_secs == 0 {
            return invalid("server.request_timeout_secs", "must be positive".into());
        }
        if crate::store::Backend::from_url(self.database.url.expose_secret()).is_none() {
            return invalid(
                "database.url",
                format!(
                    "`{}` must start with sqlite:// or postgres://",
                    self.database_url_masked()
                ),
            );
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.routing.default_min_confidence) {
            return invalid(
                "routing.default_min_confidence",
                "must be between 0 and 1".into(),
            );
        }
        if let Some(target) = self.routing.target_accuracy
            && !(0.5..1.0).contains(&target)
        {
            return invalid(
                "routing.target_accuracy",
                "must be at least 0.5 and below 1".into(),
            );
        }
        if self.routing.network_hidden > MAX_NETWORK_HIDDEN {
            return invalid(
                "routing.network_hidden",
                format!("must be at most {MAX_NETWORK_HIDDEN}"),
            );
        }
        if self.routing.retrain_every_minutes > 43_200 {
            return invalid(
                "routing.retrain_every_minutes",
                "must be at most 43200 (30 days); 0 retrains only at start".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.routing.retrain_max_drop) {
            return invalid(
                "routing.retrain_max_drop",
                "must be between 0 and 1; 1 accepts any retrained model".into(),
            );
        }
        if self.routing.retrain_threads > MAX_TRAIN_THREADS {
            return invalid(
                "routing.retrain_threads",
                format!("must be at most {MAX_TRAIN_THREADS}; 0 uses one per core"),
            );
        }
        if !(0.0..1.0).contains(&self.routing.min_margin) {
            return invalid(
                "routing.min_margin",
                "must be at least 0 and below 1".into(),
            );
        }
        for file in &self.routing.training_data {
            if !file.is_file() {
                return invalid(
                    "routing.training_data",
                    format!("{} is not a readable file", file.display()),
                );
            }
        }
        for flag in &self.escalation.force_review_flags {
            if !crate::routing::screen::is_valid_flag_pattern(flag) {
                return invalid(
                    "escalation.force_review_flags",
                    format!("`{flag}` is not a flag name such as `pii.card_number` or `pii.*`"),
                );
            }
        }
        if let Err(err) = crate::routing::screen::Screen::from_config(&self.screen) {
            return invalid(&err.config_key(), err.message);
        }
        if self.messages.max_text_chars == 0 {
            return invalid("messages.max_text_chars", "must be positive".into());
        }
        for context in [
            crate::agent::sample_context(),
            crate::agent::minimal_sample_context(),
        ] {
            if let Err(err) = tera::Tera::one_off(&self.messages.holding_reply, &context, false) {
                return invalid("messages.holding_reply", crate::sop::tera_error_chain(&err));
            }
        }
        if self.review.lease_secs < 10 {
            return invalid("review.lease_secs", "must be at least 10 seconds".into());
        }
        if self.review.default_sla_minutes == 0 {
            return invalid("review.default_sla_minutes", "must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.review.spot_check_share) {
            return invalid(
                "review.spot_check_share",
                "must be a share from 0 (none) to 1 (every automatic answer)".into(),
            );
        }
        if !(1..=24 * 30).contains(&self.console.session_hours) {
            return invalid("console.session_hours", "must be from 1 to 720".into());
        }
        if self.console.lockout_after == 0 {
            return invalid("console.lockout_after", "must be positive".into());
        }
        if self.console.lockout_secs == 0
            || self.console.lockout_max_secs < self.console.lockout_secs
        {
            return invalid(
                "console.lockout_secs",
                "must be positive and at most console.lockout_max_secs".into(),
            );
        }
        if !(100..=60_000).contains(&self.console.live_poll_ms) {
            return invalid("console.live_poll_ms", "must be from 100 to 60000".into());
        }
        self.notify.validate()?;
        for flag in self.review.flag_priority.keys() {
            if !crate::routing::screen::is_valid_flag_pattern(flag) {
                return invalid(
                    &format!("review.flag_priority.{flag}"),
                    "is not a flag name such as `topic.fraud` or `pii.*`".into(),
                );
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid(
                "log.level",
                format!("`{}` is not a valid log filter", self.log.level),
            );
        }
        self.llm.validate()
    }

    /// The database URL with any password replaced by `***`.
    pub fn database_url_masked(&self) -> String {
        mask_url(self.database.url.expose_secret())
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml_string(self)
    }
}

impl LlmConfig {
    pub fn enabled(&self) -> bool {
        !self.providers.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        if self.deadline_ms < 100 {
            return invalid("llm.deadline_ms".into(), "must be at least 100".into());
        }
        if self.reserve_ms >= self.deadline_ms {
            return invalid(
                "llm.reserve_ms".into(),
                "must be smaller than llm.deadline_ms".into(),
            );
        }
        if self.max_output_tokens == 0 {
            return invalid("llm.max_output_tokens".into(), "must be positive".into());
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return invalid("llm.temperature".into(), "must be between 0 and 2".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let key = |field: &str| format!("llm.providers[{i}].{field}");
            if p.name.trim().is_empty() || !names.insert(p.name.as_str()) {
                return invalid(
                    key("name"),
                    format!("`{}` must be non-empty and unique", p.name),
                );
            }
            if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                return invalid(
                    key("base_url"),
                    format!("`{}` must be an http:// or https:// URL", p.base_url),
                );
            }
            if p.model.trim().is_empty() {
                return invalid(key("model"), "must not be empty".into());
            }
            if let Some(var) = &p.api_key_env {
                let value = std::env::var(var).unwrap_or_default();
                let value = value.trim();
                if value.is_empty() {
                    return invalid(
                        key("api_key_env"),
                        format!("environment variable `{var}` is not set"),
                    );
                }
                // It goes into an HTTP header: a stray control character would
                // fail every call. The value itself is never printed.
                if !value.chars().all(|c| c.is_ascii_graphic()) {
                    return invalid(
                        key("api_key_env"),
                        format!(
                            "environment variable `{var}` holds characters an API key cannot have"
                        ),
                    );
                }
            }
            if p.max_concurrency == 0 {
                return invalid(key("max_concurrency"), "must be positive".into());
            }
            if p.timeout_ms == 0 {
                return invalid(key("timeout_ms"), "must be positive".into());
            }
            if p.price_input_per_1k < 0.0 || p.price_output_per_1k < 0.0 {
                return invalid(
                    key("price_input_per_1k"),
                    "prices must not be negative".into(),
                );
            }
        }
        self.check_strategy("llm.strategy", &self.strategy)?;
        if let Some(strategy) = &self.classifier.strategy {
            self.check_strategy("llm.classifier.strategy", strategy)?;
        }
        if self.retry.max_attempts == 0 {
            return invalid("llm.retry.max_attempts".into(), "must be at least 1".into());
        }
        if self.retry.max_backoff_ms < self.retry.initial_backoff_ms {
            return invalid(
                "llm.retry.max_backoff_ms".into(),
                "must be at least llm.retry.initial_backoff_ms".into(),
            );
        }
        if self.breaker.failure_threshold == 0 {
            return invalid(
                "llm.breaker.failure_threshold".into(),
                "must be at least 1".into(),
            );
        }
        let c = &self.classifier;
        if !(0.0 <= c.band_low && c.band_low < c.band_high && c.band_high <= 1.0) {
            return invalid(
                "llm.classifier.band_low".into(),
                "the band must satisfy 0 <= band_low < band_high <= 1".into(),
            );
        }
        if c.top_k < 2 {
            return invalid("llm.classifier.top_k".into(), "must be at least 2".into());
        }
        if c.enabled && !self.enabled() {
            return invalid(
                "llm.classifier.enabled".into(),
                "needs at least one [[llm.providers]] entry".into(),
            );
        }
        Ok(())
    }

    /// Checks a strategy's provider names; `key` is where it was configured.
    pub fn check_strategy(&self, key: &str, strategy: &StrategyConfig) -> Result<(), ConfigError> {
        let invalid = |message: String| {
            Err(ConfigError::Invalid {
                key: format!("{key}.providers"),
                message,
            })
        };
        for name in &strategy.providers {
            if !self.providers.iter().any(|p| &p.name == name) {
                return invalid(format!("no provider named `{name}` in [[llm.providers]]"));
            }
        }
        let count = if strategy.providers.is_empty() {
            self.providers.len()
        } else {
            strategy.providers.len()
        };
        if self.enabled() && strategy.mode != StrategyMode::Fallback && count < 2 {
            return invalid(
                format!("`{:?}` needs at least two providers", strategy.mode).to_lowercase(),
            );
        }
        Ok(())
    }
}

/// Sections a `SOPR_*` variable may set. Other `SOPR_*` variables (`SOPR_CONFIG`,
/// `SOPR_TEST_*`, or `SOPR_PORT` and `SOPR_SERVICE_HOST` that Kubernetes injects
/// for a Service named `sopr`) are not configuration and are ignored; a typo in
/// a key of a known section still stops the start.
const SECTIONS: &[&str] = &[
    "server",
    "database",
    "sops",
    "routing",
    "escalation",
    "screen",
    "messages",
    "review",
    "console",
    "notify",
    "bootstrap",
    "log",
    "llm",
];

fn env_provider() -> Env {
    Env::prefixed("SOPR_")
        .filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|s| {
                key.strip_prefix(s)
                    .is_some_and(|rest| rest.starts_with('_'))
            })
        })
        .map(|key| {
            let key = key.as_str().to_ascii_lowercase();
            if key.contains("__") {
                key.replace("__", ".").into()
            } else {
                key.replacen('_', ".", 1).into()
            }
        })
}

fn serialize_url<S: serde::Serializer>(url: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    // Defaults are fed back through serde by figment, so the real value must
    // survive serialisation; masking happens only when printing.
    s.serialize_str(url.expose_secret())
}

fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((auth, host)) => (Some(auth), host),
        None => (None, rest),
    };
    let host = mask_query_password(host);
    match auth.map(|a| a.split_once(':')) {
        Some(Some((user, _))) => format!("{scheme}://{user}:***@{host}"),
        Some(None) => format!("{scheme}://{}@{host}", auth.unwrap_or_default()),
        None => format!("{scheme}://{host}"),
    }
}

fn mask_query_password(rest: &str) -> String {
    let Some((path, query)) = rest.split_once('?') else {
        return rest.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

fn toml_string(config: &Config) -> String {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    if let Some(db) = value.get_mut("database").and_then(|d| d.as_object_mut()) {
        db.insert(
            "url".into(),
            serde_json::Value::String(config.database_url_masked()),
        );
    }
    if let Some(smtp) = value
        .get_mut("notify")
        .and_then(|n| n.get_mut("smtp"))
        .and_then(|s| s.as_object_mut())
    {
        smtp.insert(
            "url".into(),
            serde_json::Value::String(mask_url(config.notify.smtp.url.expose_secret())),
        );
    }
    // Show the topic lists the screen really uses, built-in ones included.
    // Loading this output again gives the same lists: merging is idempotent.
    if let Some(screen) = value.get_mut("screen").and_then(|s| s.as_object_mut()) {
        screen.insert(
            "topics".into(),
            serde_json::to_value(crate::routing::screen::effective_topics(&config.screen))
                .unwrap_or_default(),
        );
    }
    let mut out = String::new();
    if let Some(sections) = value.as_object() {
        for (section, body) in sections {
            toml_table(&mut out, section, body);
        }
    }
    out
}

/// `[name]` with its plain keys, then each nested table as `[name.key]`.
fn toml_table(out: &mut String, name: &str, body: &serde_json::Value) {
    out.push_str(&format!("[{name}]\n"));
    let Some(body) = body.as_object() else {
        out.push('\n');
        return;
    };
    let is_table = |v: &serde_json::Value| v.is_object();
    let is_table_array = |v: &serde_json::Value| {
        v.as_array()
            .is_some_and(|items| !items.is_empty() && items.iter().all(is_table))
    };
    for (key, v) in body
        .iter()
        .filter(|(_, v)| !is_table(v) && !is_table_array(v))
    {
        if v.is_null() {
            // TOML has no null: an unset optional key is shown commented out.
            out.push_str(&format!("# {key} = (unset)\n"));
        } else {
            out.push_str(&format!("{} = {}\n", toml_key(key), toml_value(v)));
        }
    }
    out.push('\n');
    for (key, v) in body.iter().filter(|(_, v)| is_table(v)) {
        toml_table(out, &format!("{name}.{key}"), v);
    }
    for (key, items) in body.iter().filter(|(_, v)| is_table_array(v)) {
        for item in items.as_array().into_iter().flatten() {
            // `[[a.b]]` then the entry's keys; entries here have no nested tables.
            let mut entry = String::new();
            toml_table(&mut entry, &format!("{name}.{key}"), item);
            out.push_str(&format!("[{}", entry.replacen('\n', "]\n", 1)));
        }
    }
}

/// A bare key when TOML allows one, else a quoted key (`"topic.fraud"`).
fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        serde_json::Value::String(key.to_string()).to_string()
    }
}

fn toml_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) if s.contains('\n') => format!("'''\n{s}'''"),
        serde_json::Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_in_urls() {
        assert_eq!(
            mask_url("postgres://sopr:hunter2@db:5432/sopr"),
            "postgres://sopr:***@db:5432/sopr"
        );
        assert_eq!(
            mask_url("postgres://db/sopr?password=x&sslmode=require"),
            "postgres://db/sopr?password=***&sslmode=require"
        );
        assert_eq!(mask_url("sqlite://sopr.db"), "sqlite://sopr.db");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn environment_sets_known_sections_only() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SOPR_DATABASE_URL", "postgres://u:p@h/db");
            jail.set_env("SOPR_REVIEW__LEASE_SECS", "120");
            jail.set_env("SOPR_TEST_DATABASE_URL", "postgres://elsewhere/x");
            jail.set_env("SOPR_PORT", "tcp://10.0.0.1:80");
            let config = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.database.url.expose_secret(), "postgres://u:p@h/db");
            assert_eq!(config.review.lease_secs, 120);
            jail.set_env("SOPR_SERVER_LISTN", "x");
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("listn"), "{err}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn file_values_are_validated_with_the_key_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("sopr.toml", "[routing]\ndefault_min_confidence = 1.5\n")?;
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("routing.default_min_confidence"), "{err}");
            jail.create_file("sopr.toml", "[routing]\nnetwork_hidden = 4096\n")?;
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("routing.network_hidden"), "{err}");
            jail.create_file("sopr.toml", "[server]\nlisten = \"nope\"\n")?;
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("server.listen"), "{err}");
            let overrides = Overrides {
                listen: Some("127.0.0.1:9999".into()),
                ..Overrides::default()
            };
            assert_eq!(
                Config::load(None, &overrides)
                    .map_err(|e| e.to_string())?
                    .server
                    .listen,
                "127.0.0.1:9999"
            );
            Ok(())
        });
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn the_example_file_loads_and_documents_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("sopr.example.toml");
        figment::Jail::expect_with(|_| {
            let loaded =
                Config::load(Some(&example), &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(
                serde_json::to_value(&loaded).unwrap(),
                serde_json::to_value(Config::default()).unwrap()
            );
            Ok(())
        });
    }

    fn test_provider() -> ProviderConfig {
        ProviderConfig {
            name: "a".into(),
            base_url: "http://127.0.0.1:1/v1".into(),
            model: "m".into(),
            api_key_env: None,
            max_concurrency: 4,
            timeout_ms: 1000,
            price_input_per_1k: 0.0,
            price_output_per_1k: 0.0,
            output_mode: OutputMode::JsonSchema,
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn api_keys_are_trimmed_and_must_fit_in_a_header() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SOPR_TEST_KEY_OK", "  sk-test-123\n");
            jail.set_env("SOPR_TEST_KEY_BROKEN", "sk-test\n123");
            let mut config = Config::default();
            config.llm.providers = vec![ProviderConfig {
                api_key_env: Some("SOPR_TEST_KEY_OK".into()),
                ..test_provider()
            }];
            config.validate().map_err(|e| e.to_string())?;
            config.llm.providers[0].api_key_env = Some("SOPR_TEST_KEY_BROKEN".into());
            let err = config.validate().unwrap_err().to_string();
            assert!(
                err.contains("llm.providers[0].api_key_env") && !err.contains("sk-test"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn notify_settings_name_the_key_at_fault_and_keep_secrets() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SOPR_TEST_WHSEC", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
            let check = |edit: &dyn Fn(&mut Config)| {
                let mut config = Config::default();
                edit(&mut config);
                config.validate().err().map(|e| e.to_string())
            };
            let hook = |secret_env: &str| WebhookConfig {
                tenant: "demo".into(),
                url: "https://chat.example.com/hook".into(),
                secret_env: secret_env.into(),
                timeout_ms: 5_000,
            };
            assert_eq!(
                check(&|c| c.notify.webhooks = vec![hook("SOPR_TEST_WHSEC")]),
                None
            );
            let err =
                check(&|c| c.notify.webhooks = vec![hook("SOPR_TEST_NO_SUCH_SECRET")]).unwrap();
            assert!(
                err.contains("notify.webhooks[0].secret_env") && err.contains("is not set"),
                "{err}"
            );
            let err = check(&|c| {
                c.notify.webhooks = vec![hook("SOPR_TEST_WHSEC"), hook("SOPR_TEST_WHSEC")]
            })
            .unwrap();
            assert!(err.contains("notify.webhooks[1].tenant"), "{err}");
            let err = check(&|c| {
                c.notify.webhooks = vec![WebhookConfig {
                    timeout_ms: 60_000,
                    ..hook("SOPR_TEST_WHSEC")
                }]
            })
            .unwrap();
            assert!(err.contains("notify.webhooks[0].timeout_ms"), "{err}");
            let err = check(&|c| c.notify.smtp.url = "ftp://user:hunter2@mail".to_string().into())
                .unwrap();
            assert!(
                err.contains("notify.smtp.url") && !err.contains("hunter2"),
                "{err}"
            );
            let err = check(&|c| {
                c.notify.smtp.url = "smtp://user:hunter2@mail.example.com:587?tls=required"
                    .to_string()
                    .into();
                c.notify.smtp.from = "not an address".into();
            })
            .unwrap();
            assert!(err.contains("notify.smtp.from"), "{err}");
            let printed = {
                let mut config = Config::default();
                config.notify.smtp.url = "smtp://user:hunter2@mail.example.com:587"
                    .to_string()
                    .into();
                toml_string(&config)
            };
            assert!(
                !printed.contains("hunter2"),
                "print-config masks the SMTP password"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn slack_settings_name_the_key_at_fault() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SOPR_TEST_SLACK_BOT", "xoxb-1-2-3");
            jail.set_env(
                "SOPR_TEST_SLACK_HOOK",
                "https://hooks.slack.com/services/T/B/x",
            );
            jail.set_env("SOPR_TEST_SLACK_NOT_A_URL", "T/B/x");
            let check = |edit: &dyn Fn(&mut SlackConfig)| {
                let mut config = Config::default();
                edit(&mut config.notify.slack);
                config.validate().err().map(|e| e.to_string())
            };
            let good = |c: &mut SlackConfig| {
                c.bot_token_env = "SOPR_TEST_SLACK_BOT".into();
                c.incoming_webhooks = [("#alerts".into(), "SOPR_TEST_SLACK_HOOK".into())].into();
                c.users = [("U012AB3CD".into(), "ana@example.com".into())].into();
            };
            assert_eq!(check(&good), None);
            type Breaks<'a> = Box<dyn Fn(&mut SlackConfig) + 'a>;
            let cases: Vec<(&str, Breaks)> = vec![
                (
                    "notify.slack.bot_token_env",
                    Box::new(|c| c.bot_token_env = "SOPR_TEST_SLACK_UNSET".into()),
                ),
                (
                    "notify.slack.signing_secret_env",
                    Box::new(|c| c.signing_secret_env = "SOPR_TEST_SLACK_UNSET".into()),
                ),
                (
                    "notify.slack.incoming_webhooks.#alerts",
                    Box::new(|c| {
                        c.incoming_webhooks =
                            [("#alerts".into(), "SOPR_TEST_SLACK_NOT_A_URL".into())].into()
                    }),
                ),
                (
                    "notify.slack.incoming_webhooks.#no spaces",
                    Box::new(|c| {
                        c.incoming_webhooks =
                            [("#no spaces".into(), "SOPR_TEST_SLACK_HOOK".into())].into()
                    }),
                ),
                (
                    "notify.slack.users.U012AB3CD",
                    Box::new(|c| c.users = [("U012AB3CD".into(), "ana".into())].into()),
                ),
                (
                    "notify.slack.api_url",
                    Box::new(|c| {
                        good(c);
                        c.api_url = "slack.com/api".into();
                    }),
                ),
                ("notify.slack.timeout_ms", Box::new(|c| c.timeout_ms = 0)),
            ];
            for (key, edit) in cases {
                let err = check(&*edit).unwrap_or_else(|| panic!("{key} accepted"));
                assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
                assert!(!err.contains("xoxb-1-2-3") && !err.contains("hooks.slack.com"));
            }
            Ok(())
        });
    }

    #[test]
    fn llm_settings_name_the_key_at_fault() {
        let provider = test_provider();
        type Breaks = Box<dyn Fn(&mut LlmConfig)>;
        let cases: Vec<(&str, Breaks)> = vec![
            (
                "llm.providers[1].name",
                Box::new(|c| c.providers.push(c.providers[0].clone())),
            ),
            (
                "llm.providers[0].base_url",
                Box::new(|c| c.providers[0].base_url = "localhost:8000".into()),
            ),
            (
                "llm.providers[0].api_key_env",
                Box::new(|c| c.providers[0].api_key_env = Some("SOPR_TEST_NO_SUCH_KEY".into())),
            ),
            (
                "llm.strategy.providers",
                Box::new(|c| c.strategy.providers = vec!["nope".into()]),
            ),
            (
                "llm.strategy.providers",
                Box::new(|c| c.strategy.mode = StrategyMode::Race),
            ),
            ("llm.reserve_ms", Box::new(|c| c.reserve_ms = c.deadline_ms)),
            (
                "llm.classifier.band_low",
                Box::new(|c| c.classifier.band_low = 0.9),
            ),
        ];
        for (key, breaks) in cases {
            let mut config = Config::default();
            config.llm.providers = vec![provider.clone()];
            config.validate().unwrap();
            breaks(&mut config.llm);
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
    }

    #[test]
    fn sensitive_topics_force_review_by_default() {
        let flags = Config::default().escalation.force_review_flags;
        for flag in [
            "topic.fraud",
            "topic.legal_threat",
            "topic.self_harm",
            "topic.regulator_complaint",
        ] {
            assert!(flags.iter().any(|f| f == flag), "{flag}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn screen_topics_come_from_file_and_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "sopr.toml",
                "[screen.topics]\nvulnerable = [\"bereavement\", \"lost my job\"]\n",
            )?;
            jail.set_env(
                "SOPR_SCREEN__TOPICS__DEBT",
                r#"["payday loan", "bailiffs"]"#,
            );
            jail.set_env("SOPR_SCREEN_REPLACE_DEFAULT_TOPICS", "true");
            let config = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(
                config.screen.topics["vulnerable"],
                ["bereavement", "lost my job"]
            );
            assert_eq!(config.screen.topics["debt"], ["payday loan", "bailiffs"]);
            assert!(config.screen.replace_default_topics);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn tenant_topics_come_from_file_and_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "sopr.toml",
                "[screen.tenants.acme.topics]\nvulnerable = [\"lost my job\"]\n",
            )?;
            jail.set_env(
                "SOPR_SCREEN__TENANTS__GLOBEX__TOPICS__FRAUD",
                r#"["account takeover"]"#,
            );
            let config = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            let tenants = &config.screen.tenants;
            assert_eq!(tenants["acme"].topics["vulnerable"], ["lost my job"]);
            assert_eq!(tenants["globex"].topics["fraud"], ["account takeover"]);
            assert!(config.screen.topics.is_empty(), "not the deployment's");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn bad_screen_topics_name_the_key() {
        figment::Jail::expect_with(|jail| {
            for (toml, key) in [
                ("[screen.topics]\nDebt = [\"x\"]\n", "screen.topics.Debt"),
                ("[screen.topics]\ndebt = []\n", "screen.topics.debt"),
                (
                    "[screen.topics]\nfraud = [\"ok\", \"\"]\n",
                    "screen.topics.fraud",
                ),
                (
                    "[screen.topics]\nfraud = [\"re*fund\"]\n",
                    "screen.topics.fraud",
                ),
                (
                    "[screen.tenants.acme.topics]\ndebt = []\n",
                    "screen.tenants.acme.topics.debt",
                ),
            ] {
                jail.create_file("sopr.toml", toml)?;
                let err = Config::load(None, &Overrides::default())
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(&format!("`{key}`")), "{toml}: {err}");
            }
            jail.create_file(
                "sopr.toml",
                "[screen.tenants.acme]\ntopic = { debt = [\"x\"] }\n",
            )?;
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown field: found `topic`"), "{err}");
            assert!(err.contains("screen.tenants.acme.topic"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn print_config_shows_the_topic_lists_in_use_and_reloads() {
        let mut config = Config::default();
        config
            .screen
            .topics
            .insert("vulnerable".into(), vec!["bereavement".into()]);
        let acme = config.screen.tenants.entry("acme".into()).or_default();
        acme.topics
            .insert("fraud".into(), vec!["account takeover".into()]);
        let printed = config.to_masked_toml();
        assert!(
            printed.contains("[screen]\nreplace_default_topics = false\n"),
            "{printed}"
        );
        assert!(printed.contains("\n[screen.topics]\n"), "{printed}");
        assert!(printed.contains("kill myself"), "{printed}");
        let reloaded: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(&printed))
            .extract()
            .unwrap();
        assert_eq!(
            crate::routing::screen::effective_topics(&reloaded.screen),
            crate::routing::screen::effective_topics(&config.screen)
        );
        assert_eq!(reloaded.screen.tenants, config.screen.tenants);
        reloaded.validate().unwrap();
    }

    #[test]
    fn print_config_hides_the_password() {
        let mut config = Config::default();
        config.database.url = SecretString::from("postgres://u:topsecret@h/db");
        let printed = config.to_masked_toml();
        assert!(!printed.contains("topsecret"), "{printed}");
        assert!(printed.contains("postgres://u:***@h/db"));
        assert!(!format!("{config:?}").contains("topsecret"));
    }
}
