//! Email notifications with lettre over SMTP (STARTTLS, TLS or plain, with
//! optional auth, all from `notify.smtp.url`). Bodies are plain text and HTML
//! from the tera templates in `web/templates/email/`. The outbox row id is
//! the `Message-ID`, so a retry after a crash carries the same id.

use std::sync::LazyLock;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart, header};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use super::DeliveryError;
use crate::config::SmtpConfig;
use crate::store::Notification;

const TEMPLATES: &[(&str, &str)] = &[
    (
        "review_created.txt",
        include_str!("../../web/templates/email/review_created.txt"),
    ),
    (
        "review_created.html",
        include_str!("../../web/templates/email/review_created.html"),
    ),
    (
        "review_sla.txt",
        include_str!("../../web/templates/email/review_sla.txt"),
    ),
    (
        "review_sla.html",
        include_str!("../../web/templates/email/review_sla.html"),
    ),
];

static TERA: LazyLock<Result<tera::Tera, String>> = LazyLock::new(|| {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![".html"]);
    tera.add_raw_templates(TEMPLATES.iter().copied())
        .map_err(|err| crate::sop::tera_error_chain(&err))?;
    Ok(tera)
});

/// Checks that the URL describes a usable SMTP transport (at start, without
/// connecting or spawning anything).
pub fn check_url(config: &SmtpConfig) -> Result<(), String> {
    builder(config).map(|_| ())
}

fn builder(
    config: &SmtpConfig,
) -> Result<lettre::transport::smtp::AsyncSmtpTransportBuilder, String> {
    AsyncSmtpTransport::<Tokio1Executor>::from_url(config.url.expose_secret()).map_err(|err| {
        format!("not a usable SMTP URL ({err}); e.g. smtp://user:pass@host:587?tls=required")
    })
}

/// The SMTP transport (a connection pool: needs the tokio runtime).
fn transport(config: &SmtpConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    Ok(builder(config)?
        .timeout(Some(Duration::from_secs(config.timeout_secs)))
        .build())
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// `None` when email is off (no `notify.smtp.url`).
    pub fn new(config: &SmtpConfig) -> Result<Option<Mailer>, String> {
        if config.url.expose_secret().is_empty() {
            return Ok(None);
        }
        let from = config
            .from
            .parse()
            .map_err(|err| format!("notify.smtp.from: {err}"))?;
        Ok(Some(Mailer {
            transport: transport(config)?,
            from,
        }))
    }

    pub async fn deliver(&self, n: &Notification) -> Result<(), DeliveryError> {
        let to: Mailbox = n.target.parse().map_err(|err| {
            DeliveryError::Permanent(format!("`{}` is not an email address: {err}", n.target))
        })?;
        let message = render(&self.from, to, n).map_err(DeliveryError::Permanent)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(err) if err.is_permanent() => Err(DeliveryError::Permanent(format!(
                "SMTP refused the message: {err}"
            ))),
            Err(err) => Err(DeliveryError::Transient(format!(
                "SMTP delivery failed: {err}"
            ))),
        }
    }
}

/// The email for an outbox row: subject from the payload, text and HTML
/// bodies from the event's templates.
pub fn render(from: &Mailbox, to: Mailbox, n: &Notification) -> Result<Message, String> {
    let tera = TERA.as_ref().map_err(Clone::clone)?;
    // The payload may name its template; else it is the event's name.
    let event = match n.payload.0.get("template").and_then(|t| t.as_str()) {
        Some(template) => template.to_string(),
        None => n.event.replace('.', "_"),
    };
    let context = tera::Context::from_value(n.payload.0.clone()).map_err(|err| err.to_string())?;
    let text = tera
        .render(&format!("{event}.txt"), &context)
        .map_err(|err| crate::sop::tera_error_chain(&err))?;
    let html = tera
        .render(&format!("{event}.html"), &context)
        .map_err(|err| crate::sop::tera_error_chain(&err))?;
    let subject = n
        .payload
        .0
        .get("subject")
        .and_then(|s| s.as_str())
        .unwrap_or("sopr notification");
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .message_id(Some(format!("<{}@sopr>", n.id)))
        .header(header::MIME_VERSION_1_0)
        .multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_compile() {
        if let Err(err) = &*TERA {
            panic!("{err}");
        }
    }

    /// Every event the notifier emails renders, with the payload it writes.
    #[test]
    fn every_emailed_event_renders() {
        let store_less = |event: &str, payload: serde_json::Value| Notification {
            id: uuid::Uuid::now_v7(),
            tenant_id: uuid::Uuid::nil(),
            review_id: None,
            channel: "email".into(),
            target: "a@example.com".into(),
            event: event.into(),
            payload: sqlx::types::Json(payload),
            state: "pending".into(),
            attempts: 1,
            next_attempt_at: chrono::Utc::now(),
            last_error: None,
            created_at: chrono::Utc::now(),
            delivered_at: None,
        };
        let from: Mailbox = "sopr <sopr@example.com>".parse().unwrap();
        let to: Mailbox = "a@example.com".parse().unwrap();
        let created = serde_json::json!({
            "subject": "s", "review_id": "r", "sop_ref": "x@1", "sop_title": "X", "priority": "high",
            "reasons": ["human_requested"], "flags": [], "intent": "i", "confidence": "90%",
            "excerpt": "e", "due_at": "d", "link": "http://l"
        });
        let ladder = serde_json::json!({
            "template": "review_sla", "subject": "s", "headline": "h", "review_id": "r",
            "sop_ref": "none", "sop_title": "X", "priority": "high", "due_at": "d", "link": "http://l"
        });
        for (event, payload) in [
            ("review.created", created),
            ("review.sla_warning", ladder.clone()),
            ("review.sla_breached", ladder),
        ] {
            let message = render(&from, to.clone(), &store_less(event, payload));
            assert!(message.is_ok(), "{event}: {:?}", message.err());
        }
    }
}
