//! Agents draft replies. In template mode (the offline default) an agent renders
//! its SOP's `response.template` with the message context; the same draft is
//! what a reviewer sees when the case is queued. Drafting never decides whether
//! the draft is sent: `pipeline` does.

use serde::Serialize;
use uuid::Uuid;

use crate::sop::{Sop, SopSet};

/// What a template may refer to. Keep in step with the SOP authoring guide in the README.
#[derive(Debug, Clone, Serialize)]
pub struct DraftContext<'a> {
    pub customer: CustomerView<'a>,
    pub message: MessageView<'a>,
    pub conversation: ConversationView,
    pub intent: &'a str,
    pub confidence: f64,
    pub flags: Vec<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CustomerView<'a> {
    pub id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageView<'a> {
    pub text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationView {
    pub id: Uuid,
}

impl DraftContext<'_> {
    /// The Tera context for one SOP: the message fields plus `sop` and `steps`.
    pub fn for_sop(&self, sop: Option<&Sop>) -> tera::Context {
        let mut context = tera::Context::from_serialize(self).unwrap_or_default();
        if let Some(sop) = sop {
            context.insert(
                "sop",
                &serde_json::json!({ "id": sop.file.id, "version": sop.file.version, "title": sop.file.title }),
            );
            context.insert("steps", &sop.file.steps);
        }
        context
    }
}

/// Renders the SOP's reply template (template mode).
pub fn draft(sops: &SopSet, sop: &Sop, context: &DraftContext<'_>) -> Result<String, String> {
    sops.render_reply(sop, &context.for_sop(Some(sop)))
}

fn sample(
    name: Option<&'static str>,
    email: Option<&'static str>,
    channel: Option<&'static str>,
) -> tera::Context {
    let ctx = DraftContext {
        customer: CustomerView {
            id: "cust-123",
            name,
            email,
        },
        message: MessageView {
            text: "I lost my card yesterday, can you help?",
            channel,
        },
        conversation: ConversationView { id: Uuid::nil() },
        intent: "lost_or_stolen_card",
        confidence: 0.93,
        flags: vec![],
    };
    let mut context = ctx.for_sop(None);
    context.insert(
        "sop",
        &serde_json::json!({ "id": "sample-sop", "version": 1, "title": "Sample SOP" }),
    );
    context.insert("steps", &Vec::<String>::new());
    context
}

/// A context with every optional field present, for checking templates.
pub fn sample_context() -> tera::Context {
    sample(Some("Alex"), Some("alex@example.com"), Some("web"))
}

/// A context with every optional field missing: templates must survive it.
pub fn minimal_sample_context() -> tera::Context {
    sample(None, None, None)
}
