//! Chat-frontend webhooks, signed per the Standard Webhooks convention
//! (<https://www.standardwebhooks.com>): headers `webhook-id` (the outbox row
//! id, the same on every retry, so receivers can drop duplicates),
//! `webhook-timestamp` (Unix seconds) and `webhook-signature`
//! (`v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`).

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::DeliveryError;
use crate::config::WebhookConfig;
use crate::store::Notification;

/// The signing secret in the named environment variable: `whsec_` followed by
/// base64 is decoded (the convention's format); anything else is used as bytes.
pub fn secret_from_env(var: &str) -> Result<Vec<u8>, String> {
    parse_secret(var, &std::env::var(var).unwrap_or_default())
}

/// The secret in `value`, read from the variable `var` (named in errors).
fn parse_secret(var: &str, value: &str) -> Result<Vec<u8>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("environment variable `{var}` is not set"));
    }
    match value.strip_prefix("whsec_") {
        Some(b64) => STANDARD.decode(b64).map_err(|_| {
            format!("environment variable `{var}` starts with whsec_ but the rest is not base64")
        }),
        None => Ok(value.as_bytes().to_vec()),
    }
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn sign(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

struct Target {
    url: String,
    secret: Vec<u8>,
    timeout: Duration,
}

/// The configured webhooks, by tenant name.
pub struct Webhooks {
    http: reqwest::Client,
    targets: HashMap<String, Target>,
}

impl Webhooks {
    /// Secrets were checked when the config was validated; one that vanished
    /// since leaves its tenant without a webhook (and says so).
    pub fn new(configs: &[WebhookConfig]) -> Webhooks {
        let mut targets = HashMap::new();
        for c in configs {
            match secret_from_env(&c.secret_env) {
                Ok(secret) => {
                    targets.insert(
                        c.tenant.clone(),
                        Target {
                            url: c.url.clone(),
                            secret,
                            timeout: Duration::from_millis(c.timeout_ms),
                        },
                    );
                }
                Err(err) => tracing::error!(tenant = %c.tenant, error = %err, "webhook disabled"),
            }
        }
        Webhooks {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            targets,
        }
    }

    pub fn configured(&self, tenant: &str) -> bool {
        self.targets.contains_key(tenant)
    }

    /// POSTs the row's payload to its tenant's URL. 2xx is delivered; 408,
    /// 429, 5xx and network failures are worth retrying; other answers are not.
    pub async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        let Some(target) = self.targets.get(&n.target) else {
            return Err(DeliveryError::Permanent(format!(
                "no webhook is configured for tenant `{}`",
                n.target
            )));
        };
        let body = serde_json::to_vec(&n.payload.0).unwrap_or_default();
        let id = n.id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let response = self
            .http
            .post(&target.url)
            .timeout(target.timeout)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                sign(&target.secret, &id, timestamp, &body),
            )
            .body(body)
            .send()
            .await
            // The URL may carry a token: keep it out of errors and logs.
            .map_err(|err| {
                DeliveryError::Transient(format!("webhook request failed: {}", err.without_url()))
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            Err(DeliveryError::Transient(format!(
                "webhook answered {status}"
            )))
        } else {
            Err(DeliveryError::Permanent(format!(
                "webhook answered {status}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_standard_webhooks_reference() {
        // The example from the Standard Webhooks specification.
        let secret = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_whsec_base64_or_raw() {
        let v = "V";
        assert_eq!(
            parse_secret(v, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .len(),
            24
        );
        assert!(
            parse_secret(v, "whsec_***")
                .unwrap_err()
                .contains("not base64")
        );
        assert_eq!(parse_secret(v, " plain secret ").unwrap(), b"plain secret");
        assert!(
            parse_secret(v, "  ")
                .unwrap_err()
                .contains("`V` is not set")
        );
        assert!(secret_from_env("SOPR_TEST_WHSEC_SURELY_UNSET").is_err());
    }
}
