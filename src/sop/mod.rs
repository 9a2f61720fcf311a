//! SOP files: the contract between support operations and the agents. One YAML
//! file per SOP version, validated against `sops/sop.schema.json`, with Tera
//! templates compiled at load. A loaded `SopSet` answers "which active SOP owns
//! this intent" and renders its templates; every version carries the SHA-256 of
//! its file so a decision can name the exact text that governed it.
//!
//! This module never talks to the database or the network: `sopr sops check`
//! runs it on a folder alone.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod locate;

/// The JSON Schema every SOP file must satisfy; also shipped as `sops/sop.schema.json`.
pub const SCHEMA: &str = include_str!("../../sops/sop.schema.json");

/// Name of the file that declares the agents in a SOP folder.
pub const AGENTS_FILE: &str = "agents.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Draft,
    #[default]
    Active,
    Retired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

impl Priority {
    /// Sort key stored on review items (higher is more urgent).
    pub fn rank(self) -> i32 {
        self as i32
    }

    /// Every priority, least urgent first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Urgent,
    ];

    /// The name SOP files and the console use.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// The priority a stored rank stands for (out-of-range ranks clamp).
    pub fn from_rank(rank: i32) -> Priority {
        match rank {
            i32::MIN..=0 => Priority::Low,
            1 => Priority::Normal,
            2 => Priority::High,
            _ => Priority::Urgent,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    pub min_confidence: Option<f64>,
    #[serde(default)]
    pub always_review: bool,
    #[serde(default)]
    pub on_flags: Vec<String>,
    #[serde(default)]
    pub priority: Priority,
    pub sla_minutes: Option<u32>,
    #[serde(default)]
    pub notify: Vec<String>,
    /// Targets told when an item is still unclaimed at `notify.sla.warn_fraction` of its SLA.
    #[serde(default)]
    pub backup_notify: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmResponse {
    pub system: String,
    pub output_schema: Option<Value>,
    /// Overrides `[llm.strategy]` for this SOP.
    pub strategy: Option<crate::config::StrategyConfig>,
}

impl LlmResponse {
    /// The schema the model's answer must satisfy: the SOP's own, or a reply
    /// with an optional request to escalate.
    pub fn schema(&self) -> Value {
        self.output_schema.clone().unwrap_or_else(|| {
            serde_json::json!({
                "type": "object",
                "required": ["reply"],
                "properties": {
                    "reply": { "type": "string", "minLength": 1 },
                    "escalate": { "type": "boolean" }
                }
            })
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub template: String,
    pub holding: Option<String>,
    pub llm: Option<LlmResponse>,
}

/// Screening that applies only to messages routed to this SOP.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SopScreen {
    /// Topic name → phrases, raising `topic.<name>`; same phrase syntax as
    /// `[screen.topics]` in the config. They force review only when listed in
    /// `escalation.on_flags` (or `escalation.force_review_flags`).
    #[serde(default)]
    pub topics: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Examples {
    List(Vec<String>),
    ByIntent(BTreeMap<String, Vec<String>>),
}

/// The file as written, after schema validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SopFile {
    pub id: String,
    pub version: u32,
    #[serde(default)]
    pub status: Status,
    pub title: String,
    pub description: Option<String>,
    pub agent: String,
    pub intents: Vec<String>,
    pub examples: Examples,
    pub escalation: Escalation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<SopScreen>,
    pub steps: Vec<String>,
    pub response: Response,
}

/// One loaded SOP version.
#[derive(Debug, Clone)]
pub struct Sop {
    pub file: SopFile,
    pub path: PathBuf,
    /// Hex SHA-256 of the file's bytes.
    pub hash: String,
    /// The file's text, kept so the store can record exactly what governed a decision.
    pub content: String,
}

impl Sop {
    pub fn id(&self) -> &str {
        &self.file.id
    }

    /// `id@version#hash12`: what a decision records.
    pub fn reference(&self) -> String {
        format!(
            "{}@{}#{}",
            self.file.id,
            self.file.version,
            &self.hash[..12]
        )
    }

    /// `(intent, utterance)` pairs for training the router.
    pub fn examples(&self) -> Vec<(String, String)> {
        example_places(self)
            .into_iter()
            .map(|(intent, text, _)| (intent.to_string(), text.to_string()))
            .collect()
    }

    fn template_name(&self, part: &str) -> String {
        format!("{}@{}/{part}", self.file.id, self.file.version)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsFile {
    agents: Vec<Agent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a SOP folder, pointing at the file, field and line.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// JSON pointer of the field at fault (`/escalation/min_confidence`), if any.
    pub field: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, " [{field}]")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The SOPs of one folder, ready to serve.
pub struct SopSet {
    pub dir: PathBuf,
    pub agents: Vec<Agent>,
    /// Every loaded version (draft, active and retired), sorted by id then version.
    pub versions: Vec<Arc<Sop>>,
    active_by_intent: HashMap<String, Arc<Sop>>,
    tera: tera::Tera,
}

impl fmt::Debug for SopSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SopSet")
            .field("dir", &self.dir)
            .field("versions", &self.versions.len())
            .finish()
    }
}

/// Loading failed; the diagnostics say where.
#[derive(Debug, thiserror::Error)]
#[error("{} error(s) in SOP folder {}:\n{}", .errors.len(), .dir.display(), render_list(.errors))]
pub struct LoadError {
    pub dir: PathBuf,
    pub errors: Vec<Diagnostic>,
}

fn render_list(items: &[Diagnostic]) -> String {
    items
        .iter()
        .map(|d| format!("  {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Result of linting a folder: diagnostics plus the set when there were no errors.
pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
    pub set: Option<SopSet>,
}

impl Report {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

impl SopSet {
    /// Loads and validates a folder; any error fails the load.
    pub fn load(dir: &Path) -> Result<(SopSet, Vec<Diagnostic>), LoadError> {
        let report = lint(dir);
        match report.set {
            Some(set) => Ok((set, report.diagnostics)),
            None => Err(LoadError {
                dir: dir.to_path_buf(),
                errors: report
                    .diagnostics
                    .into_iter()
                    .filter(|d| d.severity == Severity::Error)
                    .collect(),
            }),
        }
    }

    /// The active SOP that owns an intent.
    pub fn for_intent(&self, intent: &str) -> Option<&Arc<Sop>> {
        self.active_by_intent.get(intent)
    }

    pub fn active(&self) -> impl Iterator<Item = &Arc<Sop>> {
        self.versions
            .iter()
            .filter(|s| s.file.status == Status::Active)
    }

    /// Every `(intent, utterance)` of the active SOPs.
    pub fn training_examples(&self) -> Vec<(String, String)> {
        self.active().flat_map(|s| s.examples()).collect()
    }

    pub fn render_reply(&self, sop: &Sop, context: &tera::Context) -> Result<String, String> {
        self.tera
            .render(&sop.template_name("reply"), context)
            .map(|s| s.trim().to_string())
            .map_err(|e| tera_error_chain(&e))
    }

    /// The SOP's LLM system prompt, if it has an LLM block.
    pub fn render_llm_system(
        &self,
        sop: &Sop,
        context: &tera::Context,
    ) -> Option<Result<String, String>> {
        sop.file.response.llm.as_ref()?;
        Some(
            self.tera
                .render(&sop.template_name("llm-system"), context)
                .map(|s| s.trim().to_string())
                .map_err(|e| tera_error_chain(&e)),
        )
    }

    /// The SOP's own holding reply, if it has one.
    pub fn render_holding(
        &self,
        sop: &Sop,
        context: &tera::Context,
    ) -> Option<Result<String, String>> {
        sop.file.response.holding.as_ref()?;
        Some(
            self.tera
                .render(&sop.template_name("holding"), context)
                .map(|s| s.trim().to_string())
                .map_err(|e| tera_error_chain(&e)),
        )
    }
}

/// Tera errors keep the useful part (line, variable) in the source chain.
pub fn tera_error_chain(err: &tera::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.join(": ")
}

/// SHA-256 of a file's bytes, hex.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lints a folder: every check `sopr sops check` runs. Never panics on bad input.
pub fn lint(dir: &Path) -> Report {
    let mut diags = Vec::new();
    let mut error = |file: &Path, field: Option<String>, line: Option<usize>, message: String| {
        diags.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            field,
            line,
            message,
        })
    };

    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            error(
                dir,
                None,
                None,
                format!("cannot read the SOP folder: {err}"),
            );
            return Report {
                diagnostics: diags,
                set: None,
            };
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    paths.sort();

    let schema_value: Value = match serde_json::from_str(SCHEMA) {
        Ok(v) => v,
        Err(err) => {
            error(
                dir,
                None,
                None,
                format!("built-in SOP schema is not JSON: {err}"),
            );
            return Report {
                diagnostics: diags,
                set: None,
            };
        }
    };
    let validator = match jsonschema::validator_for(&schema_value) {
        Ok(v) => v,
        Err(err) => {
            error(
                dir,
                None,
                None,
                format!("built-in SOP schema is invalid: {err}"),
            );
            return Report {
                diagnostics: diags,
                set: None,
            };
        }
    };

    let agents_path = dir.join(AGENTS_FILE);
    let agents = match std::fs::read_to_string(&agents_path) {
        Ok(text) => match serde_yaml_ng::from_str::<AgentsFile>(&text) {
            Ok(file) => file.agents,
            Err(err) => {
                error(
                    &agents_path,
                    None,
                    err.location().map(|l| l.line()),
                    format!("invalid agents file: {err}"),
                );
                Vec::new()
            }
        },
        Err(_) => {
            error(
                &agents_path,
                None,
                None,
                "missing: declare the agents (`agents: [{id, title}]`) that SOPs may name".into(),
            );
            Vec::new()
        }
    };

    let mut sops: Vec<Sop> = Vec::new();
    for path in paths
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n != AGENTS_FILE))
    {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(err) => {
                error(path, None, None, format!("cannot read: {err}"));
                continue;
            }
        };
        let Ok(text) = String::from_utf8(bytes.clone()) else {
            error(path, None, None, "not valid UTF-8".into());
            continue;
        };
        let value: Value = match serde_yaml_ng::from_str(&text) {
            Ok(v) => v,
            Err(err) => {
                error(
                    path,
                    None,
                    err.location().map(|l| l.line()),
                    format!("invalid YAML: {err}"),
                );
                continue;
            }
        };
        let mut schema_ok = true;
        for err in validator.iter_errors(&value) {
            schema_ok = false;
            let pointer = err.instance_path().to_string();
            let line = locate::line_of(&text, &pointer);
            let field = if pointer.is_empty() {
                None
            } else {
                Some(pointer)
            };
            error(path, field, line, err.to_string());
        }
        if !schema_ok {
            continue;
        }
        let file: SopFile = match serde_json::from_value(value) {
            Ok(f) => f,
            Err(err) => {
                error(
                    path,
                    None,
                    None,
                    format!("does not match the SOP format: {err}"),
                );
                continue;
            }
        };
        sops.push(Sop {
            file,
            path: path.clone(),
            hash: content_hash(&bytes),
            content: text,
        });
    }

    cross_check(&sops, &agents, &mut diags);
    shared_examples(&sops, &mut diags);
    let mut tera = tera::Tera::default();
    compile_templates(&sops, &mut tera, &mut diags);

    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Report {
            diagnostics: diags,
            set: None,
        };
    }
    let versions: Vec<Arc<Sop>> = {
        let mut v: Vec<Arc<Sop>> = sops.into_iter().map(Arc::new).collect();
        v.sort_by(|a, b| (a.id(), a.file.version).cmp(&(b.id(), b.file.version)));
        v
    };
    let mut active_by_intent = HashMap::new();
    for sop in versions.iter().filter(|s| s.file.status == Status::Active) {
        for intent in &sop.file.intents {
            active_by_intent.insert(intent.clone(), sop.clone());
        }
    }
    if active_by_intent.is_empty() {
        diags.push(Diagnostic {
            severity: Severity::Error,
            file: dir.to_path_buf(),
            field: None,
            line: None,
            message: "no active SOP: the router needs at least one".into(),
        });
        return Report {
            diagnostics: diags,
            set: None,
        };
    }
    Report {
        diagnostics: diags,
        set: Some(SopSet {
            dir: dir.to_path_buf(),
            agents,
            versions,
            active_by_intent,
            tera,
        }),
    }
}

/// Each example of a SOP with its intent and its JSON pointer in the file.
fn example_places(sop: &Sop) -> Vec<(&str, &str, String)> {
    match &sop.file.examples {
        Examples::List(items) => {
            let intent = sop.file.intents.first().map_or("", String::as_str);
            items
                .iter()
                .enumerate()
                .map(|(i, text)| (intent, text.as_str(), format!("/examples/{i}")))
                .collect()
        }
        Examples::ByIntent(map) => map
            .iter()
            .flat_map(|(intent, items)| {
                items.iter().enumerate().map(move |(i, text)| {
                    (
                        intent.as_str(),
                        text.as_str(),
                        format!("/examples/{intent}/{i}"),
                    )
                })
            })
            .collect(),
    }
}

/// Warns about an example that active SOPs list under two intents (the same
/// words, whatever the case and punctuation): the router learns both intents
/// from the same message and cannot tell them apart on messages like it.
fn shared_examples(sops: &[Sop], diags: &mut Vec<Diagnostic>) {
    let mut first: HashMap<String, (&str, &Sop)> = HashMap::new();
    for sop in sops.iter().filter(|s| s.file.status == Status::Active) {
        for (intent, text, pointer) in example_places(sop) {
            let words = crate::routing::classifier::tokens(text).join(" ");
            let (other, owner) = *first.entry(words).or_insert((intent, sop));
            if other == intent {
                continue;
            }
            let place = if std::ptr::eq(owner, sop) {
                "in this SOP".to_string()
            } else {
                format!("in SOP `{}` ({})", owner.file.id, owner.path.display())
            };
            diags.push(Diagnostic {
                severity: Severity::Warning,
                file: sop.path.clone(),
                line: locate::line_of(&sop.content, &pointer),
                field: Some(pointer),
                message: format!(
                    "example `{text}` of intent `{intent}` is also an example of `{other}` {place}: \
                     the router cannot tell the two apart on messages like it; keep it under one intent"
                ),
            });
        }
    }
}

/// Minimum hand-written examples per intent below which the router is warned about.
const MIN_EXAMPLES_PER_INTENT: usize = 15;

fn cross_check(sops: &[Sop], agents: &[Agent], diags: &mut Vec<Diagnostic>) {
    let mut push = |severity, sop: &Sop, pointer: &str, message: String| {
        diags.push(Diagnostic {
            severity,
            file: sop.path.clone(),
            field: Some(pointer.to_string()),
            line: locate::line_of(&sop.content, pointer),
            message,
        });
    };
    let mut seen: HashMap<(&str, u32), &Sop> = HashMap::new();
    let mut active: HashMap<&str, &Sop> = HashMap::new();
    let mut intent_owner: HashMap<&str, &Sop> = HashMap::new();
    for sop in sops {
        let f = &sop.file;
        if let Some(other) = seen.insert((f.id.as_str(), f.version), sop) {
            push(
                Severity::Error,
                sop,
                "/version",
                format!(
                    "duplicate SOP {}@{}: also defined in {}",
                    f.id,
                    f.version,
                    other.path.display()
                ),
            );
        }
        if !agents.is_empty() && !agents.iter().any(|a| a.id == f.agent) {
            let known: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();
            push(
                Severity::Error,
                sop,
                "/agent",
                format!(
                    "unknown agent `{}` (declared in {AGENTS_FILE}: {})",
                    f.agent,
                    known.join(", ")
                ),
            );
        }
        match &f.examples {
            Examples::List(items) if f.intents.len() > 1 => push(
                Severity::Error,
                sop,
                "/examples",
                format!(
                    "this SOP has {} intents, so examples must be a map from intent to utterances",
                    f.intents.len()
                ),
            ),
            Examples::ByIntent(map) => {
                for key in map.keys().filter(|k| !f.intents.contains(k)) {
                    push(
                        Severity::Error,
                        sop,
                        &format!("/examples/{key}"),
                        format!("examples for `{key}`, which is not in this SOP's intents"),
                    );
                }
                for intent in f.intents.iter().filter(|i| !map.contains_key(*i)) {
                    push(
                        Severity::Error,
                        sop,
                        "/examples",
                        format!("intent `{intent}` has no examples"),
                    );
                }
            }
            Examples::List(_) => {}
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (intent, _) in sop.examples() {
            *counts.entry(intent).or_default() += 1;
        }
        for (intent, n) in counts.iter().filter(|(_, n)| **n < MIN_EXAMPLES_PER_INTENT) {
            push(
                Severity::Warning,
                sop,
                "/examples",
                format!(
                    "intent `{intent}` has only {n} examples; the router needs at least {MIN_EXAMPLES_PER_INTENT} to route it reliably"
                ),
            );
        }
        if let Some(schema) = f
            .response
            .llm
            .as_ref()
            .and_then(|l| l.output_schema.as_ref())
        {
            if let Err(err) = jsonschema::validator_for(schema) {
                push(
                    Severity::Error,
                    sop,
                    "/response/llm/output_schema",
                    format!("not a valid JSON Schema: {err}"),
                );
            } else if !requires_reply_string(schema) {
                push(
                    Severity::Error,
                    sop,
                    "/response/llm/output_schema",
                    "must require a `reply` property of type string: it is what the customer receives".into(),
                );
            }
        }
        if let Some(own) = &f.screen
            && let Err(err) = crate::routing::screen::Topics::compile(&own.topics)
        {
            push(
                Severity::Error,
                sop,
                &format!("/screen/topics/{}", err.topic),
                err.message,
            );
        }
        if f.status != Status::Active {
            continue;
        }
        if let Some(other) = active.insert(f.id.as_str(), sop) {
            push(
                Severity::Error,
                sop,
                "/status",
                format!(
                    "SOP `{}` has two active versions ({} and {} in {}); retire or draft one",
                    f.id,
                    f.version,
                    other.file.version,
                    other.path.display()
                ),
            );
        }
        for (i, intent) in f.intents.iter().enumerate() {
            if let Some(other) = intent_owner.insert(intent.as_str(), sop)
                && other.file.id != f.id
            {
                push(
                    Severity::Error,
                    sop,
                    &format!("/intents/{i}"),
                    format!(
                        "intent `{intent}` is also claimed by active SOP `{}` ({})",
                        other.file.id,
                        other.path.display()
                    ),
                );
            }
        }
    }
}

fn compile_templates(sops: &[Sop], tera: &mut tera::Tera, diags: &mut Vec<Diagnostic>) {
    for sop in sops {
        let r = &sop.file.response;
        let parts = [
            ("reply", Some(&r.template), "/response/template"),
            ("holding", r.holding.as_ref(), "/response/holding"),
            (
                "llm-system",
                r.llm.as_ref().map(|l| &l.system),
                "/response/llm/system",
            ),
        ];
        for (part, source, pointer) in parts {
            let Some(source) = source else { continue };
            let field_line = locate::line_of(&sop.content, pointer);
            let mut report = |message: String, template_line: Option<usize>| {
                // Block scalars start on the line after the key.
                let line = match (field_line, template_line) {
                    (Some(f), Some(t)) => Some(f + t),
                    (f, _) => f,
                };
                diags.push(Diagnostic {
                    severity: Severity::Error,
                    file: sop.path.clone(),
                    field: Some(pointer.to_string()),
                    line,
                    message,
                });
            };
            let name = sop.template_name(part);
            if let Err(err) = tera.add_raw_template(&name, source) {
                let message = tera_error_chain(&err);
                report(
                    format!("template does not compile: {message}"),
                    template_line(&message),
                );
                continue;
            }
            for (label, context) in [
                ("a full sample context", crate::agent::sample_context()),
                (
                    "a customer without name or email",
                    crate::agent::minimal_sample_context(),
                ),
            ] {
                let mut context = context;
                context.insert("steps", &sop.file.steps);
                if let Err(err) = tera.render(&name, &context) {
                    report(
                        format!(
                            "template fails to render with {label}: {}",
                            tera_error_chain(&err)
                        ),
                        None,
                    );
                    break;
                }
            }
        }
    }
}

/// An object schema that lists `reply` in `required` with `type: string`.
fn requires_reply_string(schema: &Value) -> bool {
    let required = schema["required"]
        .as_array()
        .is_some_and(|r| r.iter().any(|v| v == "reply"));
    required && schema["properties"]["reply"]["type"] == "string"
}

/// Tera reports parse errors as `--> line:col`.
fn template_line(message: &str) -> Option<usize> {
    let rest = &message[message.find("--> ")? + 4..];
    rest.split(':').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_template_line_in_tera_message() {
        assert_eq!(template_line("Failed to parse 'x'\n --> 3:7\n  |"), Some(3));
        assert_eq!(template_line("no location"), None);
    }
}
