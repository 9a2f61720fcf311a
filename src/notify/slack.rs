//! Slack: review items posted to channels, kept up to date, and acted on.
//!
//! A `slack` outbox row either posts a message about an item (events
//! `review.created`, `review.sla_warning`, `review.sla_breached`) or
//! re-renders every message already posted about it (`review.updated`,
//! written whenever the item is claimed, released, resolved or reassigned,
//! wherever that happened). Messages are rendered from the item as it is at
//! delivery time, so a late or repeated delivery shows the current state.
//!
//! With a bot token messages go through `chat.postMessage` with Block Kit
//! buttons (Claim, Approve draft, Open in console), their channel id and
//! `ts` are stored, and `chat.update` keeps them current; a channel with an
//! incoming webhook gets the same message without buttons. Button clicks
//! arrive at `POST /slack/actions` ([`crate::http::slack`]), signed by Slack
//! ([`verify`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use super::DeliveryError;
use crate::config::{NotifyConfig, env_value};
use crate::review::effective_state;
use crate::sop::{Priority, SopSet};
use crate::store::{Notification, ReviewItem, ReviewState, SlackMessage, Store};

/// Requests older (or newer) than this are refused, as Slack recommends.
pub const MAX_SKEW_SECS: i64 = 300;
/// How long a Slack user's email, as `users.info` gave it, is trusted.
const EMAIL_CACHE: Duration = Duration::from_secs(600);

/// Why a `/slack/actions` request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignatureError {
    #[error("the {0} header is missing")]
    Missing(&'static str),
    #[error("the {0} header is malformed")]
    Malformed(&'static str),
    #[error("the request timestamp is more than 5 minutes away from now")]
    Stale,
    #[error("the signature does not match the request")]
    Mismatch,
}

impl SignatureError {
    /// The header at fault.
    pub fn header(&self) -> &'static str {
        match self {
            SignatureError::Missing(h) | SignatureError::Malformed(h) => h,
            SignatureError::Stale => "X-Slack-Request-Timestamp",
            SignatureError::Mismatch => "X-Slack-Signature",
        }
    }
}

/// `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}`, as Slack signs requests.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// Checks a request Slack signed: the timestamp within [`MAX_SKEW_SECS`] of
/// `now` and the signature over this exact body, compared in constant time.
pub fn verify(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    const TS: &str = "X-Slack-Request-Timestamp";
    const SIG: &str = "X-Slack-Signature";
    let timestamp = timestamp.ok_or(SignatureError::Missing(TS))?.trim();
    let signature = signature.ok_or(SignatureError::Missing(SIG))?.trim();
    let seconds: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::Malformed(TS))?;
    if (now - seconds).abs() > MAX_SKEW_SECS {
        return Err(SignatureError::Stale);
    }
    let digest = signature
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::Malformed(SIG))?;
    mac(secret, timestamp, body)
        .verify_slice(&digest)
        .map_err(|_| SignatureError::Mismatch)
}

/// What a message about an item shows, read from the store at delivery time.
#[derive(Debug, Clone)]
pub struct ItemView {
    pub item: ReviewItem,
    pub sop_title: String,
    pub intent: Option<String>,
    pub confidence: f64,
    pub flags: Vec<String>,
    /// The customer's message, PII masked, at most 280 characters.
    pub excerpt: String,
}

/// `&`, `<` and `>` escaped, as Slack's mrkdwn requires.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A Slack date token that each reader sees in their own time zone.
fn slack_date(at: DateTime<Utc>) -> String {
    format!(
        "<!date^{}^{{date_short_pretty}} {{time}}|{}>",
        at.timestamp(),
        at.format("%Y-%m-%d %H:%M UTC")
    )
}

/// The button value: which item, in which tenant.
pub fn button_value(tenant_id: Uuid, review_id: Uuid) -> String {
    format!("{tenant_id}:{review_id}")
}

/// The inverse of [`button_value`].
pub fn parse_button_value(value: &str) -> Option<(Uuid, Uuid)> {
    let (tenant, review) = value.split_once(':')?;
    Some((tenant.parse().ok()?, review.parse().ok()?))
}

/// The message (`text` fallback and Block Kit `blocks`) for an item. `event`
/// picks the headline; `buttons` is false for incoming webhooks.
pub fn render(
    view: &ItemView,
    event: &str,
    console_url: &str,
    buttons: bool,
    now: DateTime<Utc>,
) -> Value {
    let item = &view.item;
    let priority = Priority::from_rank(item.priority).as_str();
    let state = effective_state(item, now);
    let headline = match event {
        "review.sla_warning" => "SLA warning: ",
        "review.sla_breached" => "SLA breached: ",
        _ => "Needs review: ",
    };
    let title = truncate(&format!("{headline}{}", view.sop_title), 150);
    let link = format!("{console_url}/console/items/{}", item.id);
    let status = match state {
        ReviewState::Resolved => format!(
            ":white_check_mark: Resolved by {} ({}){}",
            escape(item.resolved_by.as_deref().unwrap_or("someone")),
            escape(item.resolution.as_deref().unwrap_or("closed")),
            item.resolved_at
                .map(|t| format!(" {}", slack_date(t)))
                .unwrap_or_default()
        ),
        ReviewState::Claimed => format!(
            ":lock: Claimed by {}",
            escape(item.claimed_by.as_deref().unwrap_or("someone"))
        ),
        ReviewState::Waiting => ":hourglass_flowing_sand: Waiting for the customer's answer".into(),
        ReviewState::Open => ":inbox_tray: Open: nobody has claimed it yet".into(),
    };
    let text = match state {
        ReviewState::Resolved => format!(
            "{} case resolved by {}: {}",
            priority,
            item.resolved_by.as_deref().unwrap_or("someone"),
            view.sop_title
        ),
        _ => format!(
            "{priority} case {}{}",
            headline.to_lowercase(),
            view.sop_title
        ),
    };
    let breached =
        state != ReviewState::Resolved && state != ReviewState::Waiting && item.due_at < now;
    let reasons: Vec<String> = item
        .reasons
        .0
        .as_array()
        .map(|a| a.iter().filter_map(|r| r.as_str()).map(escape).collect())
        .unwrap_or_default();
    let field = |label: &str, value: String| json!({ "type": "mrkdwn", "text": truncate(&format!("*{label}*\n{value}"), 2000) });
    let fields = vec![
        field("Priority", priority.to_string()),
        field(
            "SLA",
            format!(
                "due {}{}",
                slack_date(item.due_at),
                if breached { " (breached)" } else { "" }
            ),
        ),
        field(
            "SOP",
            format!("`{}`", escape(item.sop_ref.as_deref().unwrap_or("none"))),
        ),
        field(
            "Confidence",
            format!(
                "{} ({:.0}%)",
                escape(view.intent.as_deref().unwrap_or("no intent")),
                view.confidence * 100.0
            ),
        ),
        field(
            "Flags",
            if view.flags.is_empty() {
                "none".into()
            } else {
                view.flags
                    .iter()
                    .map(|f| escape(f))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        field(
            "Why",
            if reasons.is_empty() {
                "-".into()
            } else {
                reasons.join(", ")
            },
        ),
    ];
    let quoted = escape(&view.excerpt)
        .lines()
        .map(|l| format!(">{l}"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut blocks = vec![
        json!({ "type": "header", "text": { "type": "plain_text", "text": title } }),
        json!({ "type": "section", "fields": fields }),
        json!({ "type": "section", "text": { "type": "mrkdwn", "text": truncate(&format!("*Customer wrote*\n{quoted}"), 3000) } }),
        json!({ "type": "context", "elements": [ { "type": "mrkdwn", "text": status } ] }),
    ];
    let value = button_value(item.tenant_id, item.id);
    let mut actions = Vec::new();
    if buttons && state != ReviewState::Resolved {
        // Claim stays while someone holds the item: a lease that runs out
        // changes nothing Slack hears about, and a click on a held item is
        // refused with who holds it.
        actions.push(json!({
            "type": "button", "action_id": "claim", "value": value,
            "text": { "type": "plain_text", "text": "Claim" },
        }));
        if item.draft.is_some() {
            actions.push(json!({
                "type": "button", "action_id": "approve", "value": value, "style": "primary",
                "text": { "type": "plain_text", "text": "Approve draft" },
                "confirm": {
                    "title": { "type": "plain_text", "text": "Send the draft?" },
                    "text": { "type": "mrkdwn", "text": truncate(&format!("The customer will get:\n>{}", escape(item.draft.as_deref().unwrap_or_default()).replace('\n', "\n>")), 300) },
                    "confirm": { "type": "plain_text", "text": "Send" },
                    "deny": { "type": "plain_text", "text": "Cancel" },
                },
            }));
        }
    }
    actions.push(json!({
        "type": "button", "action_id": "open", "url": link,
        "text": { "type": "plain_text", "text": "Open in console" },
    }));
    blocks.push(json!({ "type": "actions", "block_id": "sopr_review", "elements": actions }));
    json!({ "text": text, "blocks": blocks })
}

/// Slack's answer to a Web API call, or why there was none worth having.
fn classify_api_error(method: &str, error: &str) -> DeliveryError {
    let message = format!("Slack {method} answered `{error}`");
    match error {
        "ratelimited"
        | "rate_limited"
        | "internal_error"
        | "fatal_error"
        | "service_unavailable"
        | "request_timeout"
        | "team_added_to_org" => DeliveryError::Transient(message),
        _ => DeliveryError::Permanent(message),
    }
}

/// The Slack client shared by the dispatcher and the actions endpoint.
pub struct Slack {
    http: reqwest::Client,
    api_url: String,
    bot_token: Option<SecretString>,
    signing_secret: Option<SecretString>,
    /// Channel name (without `#`) → incoming-webhook URL.
    hooks: HashMap<String, SecretString>,
    users: BTreeMap<String, String>,
    timeout: Duration,
    console_url: String,
    store: Arc<dyn Store>,
    sops: Arc<SopSet>,
    emails: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl Slack {
    /// `None` when Slack is not configured at all. Secrets are read from
    /// their environment variables (checked when the config was validated).
    pub fn new(
        config: &NotifyConfig,
        store: Arc<dyn Store>,
        sops: Arc<SopSet>,
    ) -> Result<Option<Slack>, String> {
        let c = &config.slack;
        let secret = |key: &str, var: &str| -> Result<Option<SecretString>, String> {
            if var.trim().is_empty() {
                return Ok(None);
            }
            env_value(var)
                .map(|v| Some(SecretString::from(v)))
                .ok_or_else(|| {
                    format!("notify.slack.{key}: environment variable `{var}` is not set")
                })
        };
        let bot_token = secret("bot_token_env", &c.bot_token_env)?;
        let signing_secret = secret("signing_secret_env", &c.signing_secret_env)?;
        let mut hooks = HashMap::new();
        for (channel, var) in &c.incoming_webhooks {
            let url = secret(&format!("incoming_webhooks.{channel}"), var)?
                .ok_or_else(|| format!("notify.slack.incoming_webhooks.{channel} is empty"))?;
            hooks.insert(channel.trim_start_matches('#').to_string(), url);
        }
        if bot_token.is_none() && signing_secret.is_none() && hooks.is_empty() {
            return Ok(None);
        }
        Ok(Some(Slack {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|err| format!("cannot build the Slack HTTP client: {err}"))?,
            api_url: c.api_url.trim_end_matches('/').to_string(),
            bot_token,
            signing_secret,
            hooks,
            users: c.users.clone(),
            timeout: Duration::from_millis(c.timeout_ms),
            console_url: config.console_url.trim_end_matches('/').to_string(),
            store,
            sops,
            emails: Mutex::new(HashMap::new()),
        }))
    }

    /// The signing secret, when `/slack/actions` is on.
    pub fn signing_secret(&self) -> Option<&[u8]> {
        self.signing_secret
            .as_ref()
            .map(|s| s.expose_secret().as_bytes())
    }

    /// Delivers one `slack` outbox row.
    pub async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        let review_id = n
            .review_id
            .ok_or_else(|| DeliveryError::Permanent("a Slack row without a review item".into()))?;
        match n.event.as_str() {
            "review.updated" => self.update_all(n.tenant_id, review_id).await,
            _ => self.post(n, review_id).await,
        }
    }

    async fn view(&self, tenant_id: Uuid, review_id: Uuid) -> Result<ItemView, DeliveryError> {
        let transient =
            |err: crate::store::StoreError| DeliveryError::Transient(format!("store: {err}"));
        let item = self
            .store
            .review(tenant_id, review_id)
            .await
            .map_err(transient)?
            .ok_or_else(|| DeliveryError::Permanent("the review item no longer exists".into()))?;
        let decision = self
            .store
            .decision(tenant_id, item.decision_id)
            .await
            .map_err(transient)?;
        let excerpt = match &decision {
            Some(d) => self
                .store
                .conversation_messages(tenant_id, item.conversation_id)
                .await
                .map_err(transient)?
                .into_iter()
                .find(|m| m.id == d.message_id)
                .map(|m| {
                    crate::routing::screen::mask_pii(&m.body.chars().take(280).collect::<String>())
                })
                .unwrap_or_default(),
            None => String::new(),
        };
        let sop_title = item
            .sop_ref
            .as_deref()
            .and_then(|r| self.sops.versions.iter().find(|s| s.reference() == r))
            .map_or_else(|| "Unrouted message".to_string(), |s| s.file.title.clone());
        Ok(ItemView {
            sop_title,
            intent: decision.as_ref().and_then(|d| d.intent.clone()),
            confidence: decision.as_ref().map_or(0.0, |d| d.confidence),
            flags: decision
                .as_ref()
                .and_then(|d| d.flags.0.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|f| f["name"].as_str().map(str::to_string))
                .collect(),
            excerpt,
            item,
        })
    }

    async fn post(&self, n: &Notification, review_id: Uuid) -> Result<(), DeliveryError> {
        let channel = n.target.trim();
        let view = self.view(n.tenant_id, review_id).await?;
        if let Some(url) = self.hooks.get(channel.trim_start_matches('#')) {
            let message = render(&view, &n.event, &self.console_url, false, Utc::now());
            return self.incoming_webhook(url, &message).await;
        }
        if self.bot_token.is_none() {
            return Err(DeliveryError::Permanent(format!(
                "no bot token and no incoming webhook for Slack channel `{channel}`"
            )));
        }
        // A retry after a crash between posting and finishing the row finds
        // the message and does not post it again.
        let (posted, earlier) = match self.store.slack_message_for(n.id).await {
            Ok(Some(message)) => (message, true),
            Ok(None) => {
                let mut message = render(&view, &n.event, &self.console_url, true, Utc::now());
                message["channel"] = json!(channel);
                message["unfurl_links"] = json!(false);
                let answer = self.api("chat.postMessage", &message).await?;
                let (Some(channel_id), Some(ts)) =
                    (answer["channel"].as_str(), answer["ts"].as_str())
                else {
                    return Err(DeliveryError::Transient(
                        "Slack chat.postMessage answered without channel and ts".into(),
                    ));
                };
                let record = SlackMessage {
                    channel: channel_id.to_string(),
                    ts: ts.to_string(),
                    tenant_id: n.tenant_id,
                    review_id,
                    notification_id: n.id,
                    event: n.event.clone(),
                    created_at: Utc::now(),
                    shown_version: view.item.version,
                };
                self.store
                    .record_slack_message(&record)
                    .await
                    .map_err(|err| DeliveryError::Transient(format!("store: {err}")))?;
                (record, false)
            }
            Err(err) => return Err(DeliveryError::Transient(format!("store: {err}"))),
        };
        // The item may have moved on while the message was on its way (a
        // claim whose update found no message yet): show where it is now.
        let now = self.view(n.tenant_id, review_id).await?;
        if earlier || now.item.version != view.item.version {
            self.update(&now, &posted).await?;
        }
        Ok(())
    }

    /// Records the item version a message shows, so the dispatcher's
    /// reconciliation leaves it alone. A failure here only means one more
    /// `chat.update` later.
    async fn shown(&self, message: &SlackMessage, version: i64) {
        if let Err(err) = self
            .store
            .mark_slack_shown(&message.channel, &message.ts, version)
            .await
        {
            tracing::warn!(channel = %message.channel, ts = %message.ts, error = %err, "cannot record what the Slack message shows");
        }
    }

    async fn update_all(&self, tenant_id: Uuid, review_id: Uuid) -> Result<(), DeliveryError> {
        let messages = self
            .store
            .slack_messages(tenant_id, review_id)
            .await
            .map_err(|err| DeliveryError::Transient(format!("store: {err}")))?;
        if messages.is_empty() {
            return Ok(());
        }
        let view = self.view(tenant_id, review_id).await?;
        for message in &messages {
            self.update(&view, message).await?;
        }
        Ok(())
    }

    async fn update(&self, view: &ItemView, message: &SlackMessage) -> Result<(), DeliveryError> {
        let mut body = render(view, &message.event, &self.console_url, true, Utc::now());
        body["channel"] = json!(message.channel);
        body["ts"] = json!(message.ts);
        match self.api("chat.update", &body).await {
            Ok(_) => {}
            // Deleted by someone in Slack: nothing left to keep current.
            Err(DeliveryError::Permanent(err))
                if err.contains("message_not_found")
                    || err.contains("channel_not_found")
                    || err.contains("cant_update_message") =>
            {
                tracing::info!(channel = %message.channel, ts = %message.ts, error = %err, "Slack message can no longer be updated");
            }
            Err(err) => return Err(err),
        }
        self.shown(message, view.item.version).await;
        Ok(())
    }

    /// Calls a Web API method with the bot token and returns Slack's answer
    /// when it says `ok`.
    async fn api(&self, method: &str, body: &Value) -> Result<Value, DeliveryError> {
        let token = self
            .bot_token
            .as_ref()
            .ok_or_else(|| DeliveryError::Permanent("no Slack bot token".into()))?;
        let response = self
            .http
            .post(format!("{}/{method}", self.api_url))
            .timeout(self.timeout)
            .bearer_auth(token.expose_secret())
            .json(body)
            .send()
            .await
            .map_err(|err| {
                DeliveryError::Transient(format!("Slack {method} failed: {}", err.without_url()))
            })?;
        self.answer(method, response).await
    }

    async fn answer(
        &self,
        method: &str,
        response: reqwest::Response,
    ) -> Result<Value, DeliveryError> {
        let status = response.status();
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(DeliveryError::Transient(format!(
                "Slack {method} answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(DeliveryError::Permanent(format!(
                "Slack {method} answered {status}"
            )));
        }
        let answer: Value = response.json().await.map_err(|err| {
            DeliveryError::Transient(format!(
                "Slack {method} answered with no JSON: {}",
                err.without_url()
            ))
        })?;
        if answer["ok"].as_bool() == Some(true) {
            Ok(answer)
        } else {
            Err(classify_api_error(
                method,
                answer["error"].as_str().unwrap_or("unknown_error"),
            ))
        }
    }

    async fn incoming_webhook(
        &self,
        url: &SecretString,
        message: &Value,
    ) -> Result<(), DeliveryError> {
        let response = self
            .http
            .post(url.expose_secret())
            .timeout(self.timeout)
            .json(message)
            .send()
            .await
            // The URL is the secret: keep it out of errors and logs.
            .map_err(|err| {
                DeliveryError::Transient(format!(
                    "Slack incoming webhook failed: {}",
                    err.without_url()
                ))
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.as_u16() == 429 || status.is_server_error() {
            Err(DeliveryError::Transient(format!(
                "Slack incoming webhook answered {status}"
            )))
        } else {
            Err(DeliveryError::Permanent(format!(
                "Slack incoming webhook answered {status}"
            )))
        }
    }

    /// The email of a Slack user: from `notify.slack.users`, else from
    /// `users.info` (scope `users:read.email`), remembered for ten minutes.
    pub async fn user_email(&self, user_id: &str) -> Result<Option<String>, DeliveryError> {
        if let Some(email) = self.users.get(user_id) {
            return Ok(Some(email.to_lowercase()));
        }
        if self.bot_token.is_none() {
            return Ok(None);
        }
        if let Some((email, at)) = self
            .emails
            .lock()
            .ok()
            .and_then(|c| c.get(user_id).cloned())
            && at.elapsed() < EMAIL_CACHE
        {
            return Ok(email);
        }
        let token = self
            .bot_token
            .as_ref()
            .map(|t| t.expose_secret().to_string());
        let response = self
            .http
            .get(format!("{}/users.info", self.api_url))
            .query(&[("user", user_id)])
            .timeout(self.timeout)
            .bearer_auth(token.unwrap_or_default())
            .send()
            .await
            .map_err(|err| {
                DeliveryError::Transient(format!("Slack users.info failed: {}", err.without_url()))
            })?;
        let email = match self.answer("users.info", response).await {
            Ok(answer) => answer["user"]["profile"]["email"]
                .as_str()
                .map(str::to_lowercase),
            Err(DeliveryError::Permanent(_)) => None,
            Err(err) => return Err(err),
        };
        if let Ok(mut cache) = self.emails.lock() {
            cache.insert(user_id.to_string(), (email.clone(), Instant::now()));
        }
        Ok(email)
    }

    /// Tells the person who clicked something only they see, through the
    /// interaction's `response_url`. Best effort: the click itself is done.
    pub async fn respond_ephemeral(&self, response_url: &str, text: &str) {
        let result = self
            .http
            .post(response_url)
            .timeout(self.timeout)
            .json(&json!({ "response_type": "ephemeral", "replace_original": false, "text": text }))
            .send()
            .await;
        if let Err(err) = result {
            tracing::warn!(error = %err.without_url(), "Slack response_url failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_like_slacks_documentation() {
        // The worked example from Slack's "Verifying requests from Slack".
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let signature = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(sign(secret, "1531420618", body), signature);
        assert_eq!(
            verify(
                secret,
                Some("1531420618"),
                Some(signature),
                body,
                1531420618 + 60
            ),
            Ok(())
        );
    }

    #[test]
    fn refuses_what_slack_did_not_sign_just_now() {
        let secret = b"s3cret";
        let body = b"payload=%7B%7D";
        let now = 1_700_000_000;
        let ts = now.to_string();
        let good = sign(secret, &ts, body);
        assert_eq!(verify(secret, Some(&ts), Some(&good), body, now), Ok(()));
        assert_eq!(
            verify(b"other", Some(&ts), Some(&good), body, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                secret,
                Some(&ts),
                Some(&good),
                b"payload=%7B%22x%22%7D",
                now
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                secret,
                Some(&ts),
                Some(&good),
                body,
                now + MAX_SKEW_SECS + 1
            ),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(secret, None, Some(&good), body, now),
            Err(SignatureError::Missing("X-Slack-Request-Timestamp"))
        );
        assert_eq!(
            verify(secret, Some(&ts), None, body, now),
            Err(SignatureError::Missing("X-Slack-Signature"))
        );
        assert_eq!(
            verify(secret, Some("yesterday"), Some(&good), body, now),
            Err(SignatureError::Malformed("X-Slack-Request-Timestamp"))
        );
        assert_eq!(
            verify(secret, Some(&ts), Some("v1=abc"), body, now),
            Err(SignatureError::Malformed("X-Slack-Signature"))
        );
    }

    #[test]
    fn button_values_round_trip() {
        let (t, r) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(parse_button_value(&button_value(t, r)), Some((t, r)));
        assert_eq!(parse_button_value("nope"), None);
    }

    fn view(state: &str, claimed_by: Option<&str>) -> ItemView {
        let now = Utc::now();
        ItemView {
            item: ReviewItem {
                id: Uuid::now_v7(),
                tenant_id: Uuid::now_v7(),
                conversation_id: Uuid::now_v7(),
                decision_id: Uuid::now_v7(),
                state: state.into(),
                priority: 2,
                sop_ref: Some("card-lost@3".into()),
                reasons: sqlx::types::Json(json!(["sensitive_content"])),
                draft: Some("We <blocked> your card.".into()),
                due_at: now + chrono::Duration::minutes(30),
                claimed_by: claimed_by.map(str::to_string),
                lease_expires_at: claimed_by.map(|_| now + chrono::Duration::minutes(5)),
                resolution: (state == "resolved").then(|| "approve".into()),
                final_reply: None,
                resolved_by: (state == "resolved").then(|| "ana@example.com".into()),
                resolved_at: (state == "resolved").then_some(now),
                message_count: 1,
                version: 1,
                created_at: now,
                updated_at: now,
                waiting_since: None,
            },
            sop_title: "Lost or stolen card".into(),
            intent: Some("lost_or_stolen_card".into()),
            confidence: 0.83,
            flags: vec!["topic.fraud".into()],
            excerpt: "someone used my card <script> & more".into(),
        }
    }

    fn action_ids(message: &Value) -> Vec<String> {
        message["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().unwrap().clone())
            .map(|e| e["action_id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn open_items_offer_claim_and_approve_and_escape_customer_text() {
        let v = view("open", None);
        let m = render(
            &v,
            "review.created",
            "https://sopr.example.com",
            true,
            Utc::now(),
        );
        assert_eq!(action_ids(&m), ["claim", "approve", "open"]);
        let all = m.to_string();
        assert!(all.contains("&lt;script&gt; &amp; more"), "{all}");
        assert!(!all.contains("<script>"));
        assert!(all.contains("card-lost@3") && all.contains("83%") && all.contains("topic.fraud"));
        assert!(all.contains(&format!(
            "https://sopr.example.com/console/items/{}",
            v.item.id
        )));
        assert!(
            m["text"]
                .as_str()
                .unwrap()
                .contains("high case needs review")
        );
    }

    #[test]
    fn claimed_items_say_who_holds_them_and_resolved_ones_lose_their_buttons() {
        let claimed = render(
            &view("claimed", Some("bo@example.com")),
            "review.created",
            "http://c",
            true,
            Utc::now(),
        );
        assert_eq!(action_ids(&claimed), ["claim", "approve", "open"]);
        assert!(claimed.to_string().contains("Claimed by bo@example.com"));
        let resolved = render(
            &view("resolved", None),
            "review.created",
            "http://c",
            true,
            Utc::now(),
        );
        assert_eq!(action_ids(&resolved), ["open"]);
        assert!(
            resolved
                .to_string()
                .contains("Resolved by ana@example.com (approve)")
        );
        let hook = render(
            &view("open", None),
            "review.sla_warning",
            "http://c",
            false,
            Utc::now(),
        );
        assert_eq!(action_ids(&hook), ["open"]);
        assert!(
            hook.to_string()
                .contains("SLA warning: Lost or stolen card")
        );
    }
}
