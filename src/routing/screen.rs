//! The screen: sensitivity flags raised from the text alone, independent of the
//! classifier, so a misrouted message still cannot skip a required review.
//! Flags are named `family.kind` (`pii.card_number`, `topic.fraud`) or a bare
//! name (`human_requested`). Detectors favour precision where a checksum exists
//! (Luhn for card numbers, ISO 13616 mod-97 for IBANs) and recall elsewhere: a
//! false flag costs a review, a missed one can cost a customer.
//!
//! Topics (`topic.<name>`) come from phrase lists: built-in defaults, merged
//! with `[screen.topics]` from the config, plus a SOP's own `screen.topics`
//! for messages routed to that SOP. A [`Screen`] compiles them once at start.
//! The screen only raises flags; whether a flag forces review is decided by
//! `escalation.force_review_flags` and the SOP's `on_flags`, in `pipeline`.
//! Evidence of a PII flag is always masked, and [`mask_pii`] is what logs use:
//! nothing here may hand out an unmasked card number, IBAN or national id.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::config::ScreenConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flag {
    pub name: String,
    /// The matched text, masked when it is PII, so it is safe to log and show.
    pub evidence: String,
}

/// The built-in topic lists, each raising `topic.<name>`. `[screen.topics]`
/// adds phrases (or topics) to these unless `screen.replace_default_topics`.
/// `fraud` is the regex the screen shipped with, written as phrases (plus
/// `defraud*` and `hackers`, which it missed).
pub const DEFAULT_TOPICS: &[(&str, &[&str])] = &[
    (
        "fraud",
        &[
            "fraud*",
            "defraud*",
            "scam*",
            "phish*",
            "unauthorised",
            "unauthorized",
            "hacked",
            "hacker",
            "hackers",
            "stolen money",
            "stolen funds",
            "stolen identity",
            "identity theft",
            "someone used",
            "someone is using",
            "someone has used",
            "someone took",
            "someone stole",
            "not me who",
        ],
    ),
    (
        "legal_threat",
        &[
            "lawyer*",
            "solicitor*",
            "my attorney",
            "an attorney",
            "attorneys",
            "sue you",
            "sue your*",
            "sue the",
            "sue them",
            "will sue",
            "i'll sue",
            "going to sue",
            "gonna sue",
            "suing",
            "sued",
            "lawsuit*",
            "legal action",
            "legal proceedings",
            "legal advice",
            "legal team",
            "take you to court",
            "taking you to court",
            "see you in court",
            "go to court",
            "going to court",
            "court action",
            "court case",
            "court claim",
            "county court",
            "small claims",
            "litigation",
            "class action",
            "letter before action",
            "cease and desist",
        ],
    ),
    (
        "regulator_complaint",
        &[
            "ombudsman",
            "fca",
            "financial conduct authority",
            "prudential regulation authority",
            "cfpb",
            "consumer financial protection bureau",
            "fdic",
            "finra",
            "bafin",
            "attorney general",
            "financial regulator",
            "the regulator",
            "regulators",
            "regulatory body",
            "trading standards",
            "better business bureau",
            "report you to",
            "reporting you to",
            "report this to",
            "report your bank",
        ],
    ),
    (
        "self_harm",
        &[
            "kill myself",
            "killing myself",
            "end my life",
            "ending my life",
            "end it all",
            "take my own life",
            "taking my own life",
            "don't want to live",
            "do not want to live",
            "don't want to be alive",
            "don't want to be here anymore",
            "want to die",
            "wanna die",
            "better off dead",
            "suicid*",
            "self harm*",
            "harm myself",
            "hurt myself",
            "hurting myself",
            "no reason to live",
            "nothing to live for",
            "not worth living",
            "no point in living",
            "no point living",
        ],
    ),
];

/// Longest accepted topic phrase, in characters.
pub const MAX_PHRASE_CHARS: usize = 200;

static CARD_CANDIDATE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").expect("static regex is valid"));
/// Country code, check digits and BBAN, either compact or in groups of four.
/// Later groups may swallow a following word; `iban_end` cuts it off again.
static IBAN_CANDIDATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"\b[A-Za-z]{2}[0-9]{2}(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,4})?)\b",
    )
        .expect("static regex is valid")
});
static SSN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b([0-9]{3})([- ])([0-9]{2})([- ])([0-9]{4})\b").expect("static regex is valid")
});
static NINO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b([A-Za-z]{2}) ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?([A-Da-d])\b")
        .expect("static regex is valid")
});
/// A number right after one of these words is a reference, not a national id.
static REFERENCE_BEFORE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(?:\b(?:ref|reference|order|invoice|transaction|txn|tracking|ticket|case|confirmation|booking|account|acct|policy|payment|receipt|serial|parcel|shipment)|#)\s*(?:(?:no|nr|num|number|id)\b\.?)?\s*[:#.]?\s*$",
    )
    .expect("static regex is valid")
});
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b")
        .expect("static regex is valid")
});
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}")
        .expect("static regex is valid")
});
static HUMAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?ix)
        \b(?:speak|talk|chat|connect\s+me|put\s+me\s+through)\b[^.?!]{0,25}\b(?:human|person|someone\s+real|real\s+person|agent|advisor|adviser|operator|representative|rep|manager|supervisor|staff|member\s+of\s+staff)\b
        | \b(?:human|real\s+person|live\s+agent|actual\s+person)\s+(?:please|pls|now)\b
        | \b(?:i\s+(?:want|need)|give\s+me|get\s+me)\s+(?:a|an|to\s+speak\s+to\s+a)?\s*(?:human|real\s+person|live\s+agent|person|representative)\b
        | \bnot\s+(?:a|another)\s+(?:bot|robot|machine)\b
        | \bstop\s+(?:the\s+)?bot\b",
    )
    .expect("static regex is valid")
});

static DEFAULT_SCREEN: LazyLock<Screen> = LazyLock::new(|| {
    Screen::from_config(&ScreenConfig::default())
        .expect("the built-in topic lists compile (unit-tested)")
});

/// A topic list that cannot be used, with the topic it belongs to (and the
/// tenant, for a list under `[screen.tenants.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicError {
    pub topic: String,
    pub tenant: Option<String>,
    pub message: String,
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(tenant) = &self.tenant {
            write!(f, "tenant `{tenant}`, ")?;
        }
        write!(f, "topic `{}`: {}", self.topic, self.message)
    }
}

impl std::error::Error for TopicError {}

impl TopicError {
    /// The config key at fault: `screen.topics.<topic>` or
    /// `screen.tenants.<tenant>.topics.<topic>`.
    pub fn config_key(&self) -> String {
        match &self.tenant {
            Some(tenant) => format!("screen.tenants.{tenant}.topics.{}", self.topic),
            None => format!("screen.topics.{}", self.topic),
        }
    }
}

/// Compiled topic lists: one case-insensitive regex per topic.
#[derive(Debug, Clone, Default)]
pub struct Topics(Vec<Topic>);

#[derive(Debug, Clone)]
struct Topic {
    /// `topic.<name>`
    flag: String,
    pattern: Regex,
}

impl Topics {
    /// Compiles `name → phrases`. Names are `[a-z_]+`; each list needs at least
    /// one phrase; see [`phrase_pattern`] for what a phrase may contain.
    pub fn compile(topics: &BTreeMap<String, Vec<String>>) -> Result<Topics, TopicError> {
        let mut compiled = Vec::with_capacity(topics.len());
        for (name, phrases) in topics {
            let error = |message: String| TopicError {
                topic: name.clone(),
                tenant: None,
                message,
            };
            if !is_valid_topic_name(name) {
                return Err(error(format!(
                    "`{name}` is not a topic name: use lowercase letters and `_` only"
                )));
            }
            if phrases.is_empty() {
                return Err(error("give at least one phrase".into()));
            }
            let alternatives = phrases
                .iter()
                .map(|p| phrase_pattern(p).map_err(&error))
                .collect::<Result<Vec<_>, _>>()?;
            let pattern = Regex::new(&format!("(?i)(?:{})", alternatives.join("|")))
                .map_err(|e| error(format!("the phrases do not compile: {e}")))?;
            compiled.push(Topic {
                flag: format!("topic.{name}"),
                pattern,
            });
        }
        Ok(Topics(compiled))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds a flag for each topic with a phrase in `text` (first match as evidence).
    fn scan(&self, text: &str, flags: &mut Vec<Flag>) {
        for topic in &self.0 {
            if let Some(m) = topic.pattern.find(text) {
                add_flag(flags, &topic.flag, m.as_str().to_string());
            }
        }
    }
}

/// A topic name as `[screen.topics]` and SOP files may write it: `^[a-z_]+$`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// The regex for one phrase. Matching is case-insensitive and on word
/// boundaries; spaces and hyphens between words match any run of spaces or
/// hyphens (`self harm` matches `self-harm`); an apostrophe is optional and may
/// be typographic (`don't` matches `dont` and `don’t`); a `*` at the end of a
/// word matches any ending (`scam*` matches `scammed`). Everything else is literal.
pub fn phrase_pattern(phrase: &str) -> Result<String, String> {
    let trimmed = phrase.trim();
    if trimmed.is_empty() {
        return Err("a phrase is empty".into());
    }
    if trimmed.chars().count() > MAX_PHRASE_CHARS {
        return Err(format!(
            "phrase `{trimmed}` is longer than {MAX_PHRASE_CHARS} characters"
        ));
    }
    if !trimmed.chars().any(char::is_alphanumeric) {
        return Err(format!("phrase `{trimmed}` has no letter or digit"));
    }
    let words: Vec<&str> = trimmed
        .split(|c: char| c.is_whitespace() || c == '-')
        .filter(|w| !w.is_empty())
        .collect();
    let mut parts = Vec::with_capacity(words.len());
    for word in &words {
        let (stem, wildcard) = match word.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (*word, false),
        };
        if stem.contains('*') || (wildcard && !stem.ends_with(is_word_char)) {
            return Err(format!(
                "phrase `{trimmed}`: `*` may only end a word (`refund*`)"
            ));
        }
        let mut part = String::new();
        for c in stem.chars() {
            if c == '\'' || c == '’' {
                part.push_str("['’]?");
            } else {
                part.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
            }
        }
        if wildcard {
            part.push_str(r"\w*");
        }
        parts.push(part);
    }
    let mut pattern = parts.join(r"[\s\-]+");
    if trimmed.starts_with(is_word_char) {
        pattern.insert_str(0, r"\b");
    }
    if trimmed.ends_with(is_word_char) || trimmed.ends_with('*') {
        pattern.push_str(r"\b");
    }
    Ok(pattern)
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The topic lists a config yields: the built-in ones (unless
/// `replace_default_topics`), each extended by `[screen.topics]`, duplicates
/// dropped. Merging this result again changes nothing, so `print-config` can
/// show it.
pub fn effective_topics(config: &ScreenConfig) -> BTreeMap<String, Vec<String>> {
    let mut topics: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if !config.replace_default_topics {
        for (name, phrases) in DEFAULT_TOPICS {
            topics.insert(
                (*name).to_string(),
                phrases.iter().map(|p| (*p).to_string()).collect(),
            );
        }
    }
    for (name, phrases) in &config.topics {
        let list = topics.entry(name.clone()).or_default();
        for phrase in phrases {
            if !list.contains(phrase) {
                list.push(phrase.clone());
            }
        }
    }
    topics
}

/// Every detector, compiled once: built at start from the config (and the SOP
/// folder) and shared by all requests.
#[derive(Debug, Clone)]
pub struct Screen {
    topics: Topics,
    /// Topics of one tenant, keyed by its name.
    by_tenant: HashMap<String, Topics>,
    /// Topics of one SOP version, keyed by its `id@version#hash` reference.
    by_sop: HashMap<String, Topics>,
}

impl Default for Screen {
    /// The built-in detectors and topic lists; compiled once per process.
    fn default() -> Self {
        DEFAULT_SCREEN.clone()
    }
}

impl Screen {
    pub fn from_config(config: &ScreenConfig) -> Result<Screen, TopicError> {
        // Checked before merging, where an empty list would vanish silently.
        for (name, phrases) in &config.topics {
            if phrases.is_empty() {
                return Err(TopicError {
                    topic: name.clone(),
                    tenant: None,
                    message: "give at least one phrase (to drop a built-in topic, set \
                              screen.replace_default_topics = true and list the topics to keep)"
                        .into(),
                });
            }
        }
        let mut by_tenant = HashMap::new();
        for (tenant, own) in &config.tenants {
            let in_tenant = |mut err: TopicError| {
                err.tenant = Some(tenant.clone());
                err
            };
            let compiled = Topics::compile(&own.topics).map_err(in_tenant)?;
            if !compiled.is_empty() {
                by_tenant.insert(tenant.clone(), compiled);
            }
        }
        Ok(Screen {
            topics: Topics::compile(&effective_topics(config))?,
            by_tenant,
            by_sop: HashMap::new(),
        })
    }

    /// Adds a SOP version's own topics, raised only for messages routed to it.
    pub fn add_sop_topics(
        &mut self,
        sop_reference: &str,
        topics: &BTreeMap<String, Vec<String>>,
    ) -> Result<(), TopicError> {
        let compiled = Topics::compile(topics)?;
        if !compiled.is_empty() {
            self.by_sop.insert(sop_reference.to_string(), compiled);
        }
        Ok(())
    }

    /// Runs every detector over the text. Flags are unique by name, in a stable
    /// order: PII, `human_requested`, then topics by name.
    pub fn screen(&self, text: &str) -> Vec<Flag> {
        let mut flags = pii_flags(text);
        if let Some(m) = HUMAN.find(text) {
            add_flag(&mut flags, "human_requested", m.as_str().to_string());
        }
        self.topics.scan(text, &mut flags);
        flags
    }

    /// [`Screen::screen`] for a message of this tenant: then the tenant's own
    /// topics by name, those the deployment's lists did not already raise.
    pub fn screen_for_tenant(&self, tenant: &str, text: &str) -> Vec<Flag> {
        let mut flags = self.screen(text);
        if let Some(topics) = self.by_tenant.get(tenant) {
            topics.scan(text, &mut flags);
        }
        flags
    }

    /// Adds the flags of the routed SOP's own topics (none if it has none).
    pub fn screen_for_sop(&self, sop_reference: &str, text: &str, flags: &mut Vec<Flag>) {
        if let Some(topics) = self.by_sop.get(sop_reference) {
            topics.scan(text, flags);
        }
    }
}

/// The built-in screen over `text`. The service uses a [`Screen`] built from
/// its config instead, so configured topics count there.
pub fn screen(text: &str) -> Vec<Flag> {
    DEFAULT_SCREEN.screen(text)
}

fn add_flag(flags: &mut Vec<Flag>, name: &str, evidence: String) {
    if !flags.iter().any(|f| f.name == name) {
        flags.push(Flag {
            name: name.into(),
            evidence,
        });
    }
}

fn overlaps(spans: &[Range<usize>], start: usize, end: usize) -> bool {
    spans.iter().any(|r| r.start < end && start < r.end)
}

fn pii_flags(text: &str) -> Vec<Flag> {
    let mut flags = Vec::new();
    for (name, range) in pii_spans(text) {
        let s = &text[range];
        let evidence = match name {
            "pii.iban" => mask_iban(s),
            "pii.national_id" => mask_national_id(s),
            "pii.email" => mask_email(s),
            _ => mask_digits(s),
        };
        add_flag(&mut flags, name, evidence);
    }
    flags
}

/// Every PII match in `text` that raises a flag, with its flag name, in flag
/// order (cards, IBANs, national ids, emails, phones), each kind by position.
/// The console uses the spans to highlight what fired.
pub fn pii_spans(text: &str) -> Vec<(&'static str, Range<usize>)> {
    // Most specific first: IBAN digits can look like a card or a phone number,
    // and an SSN like a phone number; a span claimed once is not reused.
    let ibans = find_ibans(text);
    let mut taken: Vec<Range<usize>> = ibans.clone();
    let mut cards = Vec::new();
    for m in CARD_CANDIDATE.find_iter(text) {
        if overlaps(&taken, m.start(), m.end()) {
            continue;
        }
        let digits: Vec<u8> = m
            .as_str()
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect();
        if (13..=19).contains(&digits.len()) && luhn_valid(&digits) {
            cards.push(m.range());
        }
    }
    taken.extend(cards.iter().cloned());
    let phones: Vec<Range<usize>> = PHONE.find_iter(text).map(|m| m.range()).collect();
    let ids = find_national_ids(text, &taken, &phones);
    taken.extend(ids.iter().cloned());

    let mut spans: Vec<(&'static str, Range<usize>)> = Vec::new();
    spans.extend(cards.into_iter().map(|r| ("pii.card_number", r)));
    spans.extend(ibans.into_iter().map(|r| ("pii.iban", r)));
    spans.extend(ids.into_iter().map(|r| ("pii.national_id", r)));
    spans.extend(EMAIL.find_iter(text).map(|m| ("pii.email", m.range())));
    for r in phones {
        let s = &text[r.clone()];
        let digits = s.bytes().filter(u8::is_ascii_digit).count();
        if !overlaps(&taken, r.start, r.end)
            && (8..=15).contains(&digits)
            && !looks_like_amount_or_date(s)
        {
            spans.push(("pii.phone", r));
        }
    }
    spans
}

/// Spans of checksum-valid IBANs.
fn find_ibans(text: &str) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(m) = IBAN_CANDIDATE.find_at(text, at) {
        match iban_end(m.as_str()) {
            Some(len) => {
                found.push(m.start()..m.start() + len);
                at = m.start() + len;
            }
            // `XX12 GB82 WEST …`: the real IBAN may start at a later group.
            None => at = m.as_str().find(' ').map_or(m.end(), |i| m.start() + i + 1),
        }
    }
    found
}

/// Length of the longest prefix of a candidate, cut between groups, that is a
/// valid IBAN. Compact candidates are taken whole.
fn iban_end(candidate: &str) -> Option<usize> {
    let mut cuts: Vec<usize> = candidate.match_indices(' ').map(|(i, _)| i).collect();
    cuts.push(candidate.len());
    cuts.into_iter()
        .rev()
        .find(|&end| iban_valid(&candidate[..end]))
}

/// IBAN lengths by country (SWIFT IBAN registry). Other country codes may be
/// 15–34 characters long; the checksum still applies.
#[rustfmt::skip]
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24), ("AE", 23), ("AL", 28), ("AT", 20), ("AZ", 28), ("BA", 20), ("BE", 16),
    ("BG", 22), ("BH", 22), ("BI", 27), ("BR", 29), ("BY", 28), ("CH", 21), ("CR", 22),
    ("CY", 28), ("CZ", 24), ("DE", 22), ("DJ", 27), ("DK", 18), ("DO", 28), ("EE", 20),
    ("EG", 29), ("ES", 24), ("FI", 18), ("FK", 18), ("FO", 18), ("FR", 27), ("GB", 22),
    ("GE", 22), ("GI", 23), ("GL", 18), ("GR", 27), ("GT", 28), ("HN", 28), ("HR", 21),
    ("HU", 28), ("IE", 22), ("IL", 23), ("IQ", 23), ("IS", 26), ("IT", 27), ("JO", 30),
    ("KW", 30), ("KZ", 20), ("LB", 28), ("LC", 32), ("LI", 21), ("LT", 20), ("LU", 20),
    ("LV", 21), ("LY", 25), ("MC", 27), ("MD", 24), ("ME", 22), ("MK", 19), ("MN", 20),
    ("MR", 27), ("MT", 31), ("MU", 30), ("NI", 28), ("NL", 18), ("NO", 15), ("OM", 23),
    ("PK", 24), ("PL", 28), ("PS", 29), ("PT", 25), ("QA", 29), ("RO", 24), ("RS", 22),
    ("RU", 33), ("SA", 24), ("SC", 31), ("SD", 18), ("SE", 24), ("SI", 19), ("SK", 24),
    ("SM", 27), ("SO", 23), ("ST", 25), ("SV", 28), ("TL", 23), ("TN", 24), ("TR", 26),
    ("UA", 29), ("VA", 22), ("VG", 24), ("XK", 20), ("YE", 30),
];

/// ISO 13616: country code, two check digits, alphanumeric BBAN, the length
/// the country uses, and the whole (rotated, letters as 10–35) ≡ 1 mod 97.
/// Spaces are ignored and letters may be lowercase.
pub fn iban_valid(iban: &str) -> bool {
    let iban: Vec<u8> = iban
        .bytes()
        .filter(|b| *b != b' ')
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if !(15..=34).contains(&iban.len())
        || !iban[..2].iter().all(u8::is_ascii_uppercase)
        || !iban[2..4].iter().all(u8::is_ascii_digit)
        || !iban[4..].iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    if let Some((_, len)) = IBAN_LENGTHS
        .iter()
        .find(|(c, _)| c.as_bytes() == &iban[..2])
        && *len != iban.len()
    {
        return false;
    }
    // 00, 01 and 99 are never issued (98 − n mod 97 lies in 2..=98).
    if matches!(&iban[2..4], b"00" | b"01" | b"99") {
        return false;
    }
    let remainder = iban[4..].iter().chain(&iban[..4]).fold(0u32, |acc, &b| {
        if b.is_ascii_digit() {
            (acc * 10 + u32::from(b - b'0')) % 97
        } else {
            (acc * 100 + u32::from(b - b'A') + 10) % 97
        }
    });
    remainder == 1
}

/// Spans of US Social Security numbers and UK National Insurance numbers,
/// outside the spans already `taken` (IBANs, cards) and not part of a longer
/// phone number.
fn find_national_ids(
    text: &str,
    taken: &[Range<usize>],
    phones: &[Range<usize>],
) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    for c in SSN.captures_iter(text) {
        let m = c.get(0).expect("group 0 is the whole match");
        let (start, end) = (m.start(), m.end());
        let in_longer_phone = phones
            .iter()
            .any(|p| p.start <= start && end <= p.end && (p.start, p.end) != (start, end));
        if c[2] == c[4]
            && ssn_in_issued_range(&c[1], &c[3], &c[5])
            && standalone_number(text, start, end)
            && !in_longer_phone
            && !overlaps(taken, start, end)
            && !REFERENCE_BEFORE.is_match(&text[..start])
        {
            found.push(start..end);
        }
    }
    for c in NINO.captures_iter(text) {
        let m = c.get(0).expect("group 0 is the whole match");
        let s = m.as_str();
        // `on 12 34 56 a` is prose; a spaced NINO is written in capitals.
        let spaced_lowercase = s.contains(' ') && s.bytes().any(|b| b.is_ascii_lowercase());
        if nino_prefix_allocated(&c[1])
            && !spaced_lowercase
            && !overlaps(taken, m.start(), m.end())
            && !REFERENCE_BEFORE.is_match(&text[..m.start()])
        {
            found.push(m.range());
        }
    }
    found.sort_by_key(|r| r.start);
    found
}

/// Area 000, 666 and 900–999, group 00 and serial 0000 are never issued.
fn ssn_in_issued_range(area: &str, group: &str, serial: &str) -> bool {
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// Not glued to other number-like text: `X-123-45-6789`, `$123 45 6789`,
/// `123-45-6789-01` and `123-45-6789.50` are something else.
fn standalone_number(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let mut after = text[end..].chars();
    let next = after.next();
    let next_next = after.next();
    let glued_before = before.is_some_and(|c| "-+/.#$£€(_".contains(c));
    let glued_after = match next {
        Some('-' | '/' | '_') => true,
        Some('.' | ',') => next_next.is_some_and(|c| c.is_ascii_digit()),
        _ => false,
    };
    !glued_before && !glued_after
}

/// HMRC: D, F, I, Q, U and V are not used as either prefix letter, O not as
/// the second, and BG, GB, KN, NK, NT, TN and ZZ are never allocated.
fn nino_prefix_allocated(prefix: &str) -> bool {
    let prefix = prefix.to_ascii_uppercase();
    let b = prefix.as_bytes();
    b.len() == 2
        && !b"DFIQUV".contains(&b[0])
        && !b"DFIQUVO".contains(&b[1])
        && !["BG", "GB", "KN", "NK", "NT", "TN", "ZZ"].contains(&prefix.as_str())
}

/// Luhn checksum over digits (most significant first).
pub fn luhn_valid(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn looks_like_amount_or_date(s: &str) -> bool {
    // 2024-05-01, 01.05.2024 and 1.234.567 are not phone numbers.
    let parts: Vec<&str> = s
        .split(['-', '.', '/', ' '])
        .filter(|p| !p.is_empty())
        .collect();
    (parts.len() == 3
        && parts.iter().any(|p| p.len() == 4)
        && parts.iter().all(|p| p.len() <= 4)
        && !s.contains(' '))
        || (s.contains('.') && parts.iter().skip(1).all(|p| p.len() == 3))
}

/// Keeps the last four digits: `**** **** **** 1234`.
pub fn mask_digits(s: &str) -> String {
    let total = s.bytes().filter(u8::is_ascii_digit).count();
    let mut seen = 0;
    s.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen + 4 > total { c } else { '*' }
            } else {
                c
            }
        })
        .collect()
}

/// Masks letters and digits except the first `keep_first` and last `keep_last`.
fn mask_alnum(s: &str, keep_first: usize, keep_last: usize) -> String {
    let total = s.chars().filter(char::is_ascii_alphanumeric).count();
    let mut seen = 0;
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                seen += 1;
                if seen <= keep_first || seen + keep_last > total {
                    c
                } else {
                    '*'
                }
            } else {
                c
            }
        })
        .collect()
}

/// Keeps the country code and the last four characters: `GB** **** **** **** **54 32`.
pub fn mask_iban(s: &str) -> String {
    mask_alnum(s, 2, 4)
}

/// An SSN keeps its last four digits (`***-**-6789`), a National Insurance
/// number its last two digits and suffix letter (`******56C`).
pub fn mask_national_id(s: &str) -> String {
    if s.bytes().any(|b| b.is_ascii_alphabetic()) {
        mask_alnum(s, 0, 3)
    } else {
        mask_digits(s)
    }
}

fn mask_email(s: &str) -> String {
    match s.split_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
        None => "***".into(),
    }
}

/// The text with every PII match masked: what logs and previews may show.
/// Masks by shape, without the checksums the flags need: an IBAN or card
/// number with a typo is still the customer's data.
pub fn mask_pii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut at = 0;
    while let Some(m) = IBAN_CANDIDATE.find_at(text, at) {
        // A valid IBAN is masked up to its end, so a word the candidate
        // swallowed stays readable; anything else is masked whole.
        let end = m.start() + iban_end(m.as_str()).unwrap_or(m.len());
        out.push_str(&text[last..m.start()]);
        out.push_str(&mask_iban(&text[m.start()..end]));
        last = end;
        at = end;
    }
    out.push_str(&text[last..]);
    let out = CARD_CANDIDATE.replace_all(&out, |c: &regex::Captures| mask_digits(&c[0]));
    let out = EMAIL.replace_all(&out, |c: &regex::Captures| mask_email(&c[0]));
    let out = NINO.replace_all(&out, |c: &regex::Captures| mask_national_id(&c[0]));
    let out = SSN.replace_all(&out, |c: &regex::Captures| mask_digits(&c[0]));
    PHONE
        .replace_all(&out, |c: &regex::Captures| {
            let m = &c[0];
            if m.bytes().filter(u8::is_ascii_digit).count() >= 8 {
                mask_digits(m)
            } else {
                m.to_string()
            }
        })
        .into_owned()
}

/// Whether `pattern` (a flag name or `family.*`) matches `flag`.
pub fn flag_matches(pattern: &str, flag: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(family) => flag
            .strip_prefix(family)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == flag,
    }
}

/// A flag name or family pattern as config and SOP files may write it.
pub fn is_valid_flag_pattern(pattern: &str) -> bool {
    static PATTERN: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"^[a-z_]+(\.[a-z_]+)*(\.\*)?$").expect("static regex is valid")
    });
    PATTERN.is_match(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TenantScreenConfig;

    fn names(text: &str) -> Vec<String> {
        screen(text).into_iter().map(|f| f.name).collect()
    }

    fn evidence(text: &str, flag: &str) -> String {
        screen(text)
            .into_iter()
            .find(|f| f.name == flag)
            .unwrap_or_else(|| panic!("no {flag} in {text:?}"))
            .evidence
    }

    fn topics(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        entries
            .iter()
            .map(|(n, ps)| (n.to_string(), ps.iter().map(|p| p.to_string()).collect()))
            .collect()
    }

    #[test]
    fn card_numbers_need_a_valid_luhn_checksum() {
        assert_eq!(
            names("my card 4539 1488 0343 6467 was declined"),
            ["pii.card_number"]
        );
        assert_eq!(names("card 4539-1488-0343-6467"), ["pii.card_number"]);
        assert_eq!(names("4111111111111111"), ["pii.card_number"]);
        // Same length, checksum off by one digit: not a card.
        assert!(
            !names("my number is 4539 1488 0343 6468").contains(&"pii.card_number".to_string())
        );
        assert!(
            names("ref 1234567890123456")
                .iter()
                .all(|n| n != "pii.card_number")
        );
    }

    #[test]
    fn card_evidence_is_masked() {
        let flags = screen("4539 1488 0343 6467");
        assert_eq!(flags[0].evidence, "**** **** **** 6467");
    }

    #[test]
    fn luhn_examples() {
        let digits = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
        assert!(luhn_valid(&digits("79927398713")));
        assert!(!luhn_valid(&digits("79927398710")));
        assert!(!luhn_valid(&[]));
    }

    #[test]
    fn iban_checksum_and_country_lengths() {
        for iban in [
            "GB82 WEST 1234 5698 7654 32",
            "DE89 3704 0044 0532 0130 00",
            "NL91ABNA0417164300",
            "FR14 2004 1010 0505 0001 3M02 606",
            "BE68 5390 0754 7034",
            "NO93 8601 1117 947",
            "ES91 2100 0418 4502 0005 1332",
            "IT60 X054 2811 1010 0000 0123 456",
            "CH93 0076 2011 6238 5295 7",
            "AT61 1904 3002 3457 3201",
            "PL61 1090 1014 0000 0712 1981 2874",
            "IE29 AIBK 9311 5212 3456 78",
            "SE45 5000 0000 0583 9825 7466",
            "gb82west12345698765432",
            // No length on file for ZZ: 15–34 characters and the checksum.
            "ZZ65123456789012",
        ] {
            assert!(iban_valid(iban), "{iban}");
        }
        // Wrong check digits.
        assert!(!iban_valid("GB83 WEST 1234 5698 7654 32"));
        assert!(!iban_valid("DE88 3704 0044 0532 0130 00"));
        // A transposed pair in the BBAN.
        assert!(!iban_valid("GB82 WEST 1234 5698 7645 32"));
        // The checksum holds but GB IBANs are 22 characters, not 20.
        assert!(!iban_valid("GB04WEST123456987654"));
        // 99 ≡ 2 (mod 97), so it passes the sum where 02 does, but is never issued.
        assert!(iban_valid("ZZ02100000000080"));
        assert!(!iban_valid("ZZ99100000000080"));
        assert!(!iban_valid("GB82 WEST"));
    }

    #[test]
    fn ibans_are_flagged_only_with_a_valid_checksum() {
        assert_eq!(
            names("please send it to GB82 WEST 1234 5698 7654 32 today"),
            ["pii.iban"]
        );
        // Its digit groups are neither a card number nor a phone number.
        assert_eq!(names("IBAN: DE89 3704 0044 0532 0130 00"), ["pii.iban"]);
        assert_eq!(names("iban nl91abna0417164300."), ["pii.iban"]);
        // A following four-letter word is not part of it.
        assert_eq!(names("BE68 5390 0754 7034 that is mine"), ["pii.iban"]);
        // A group before it that is not part of it.
        assert_eq!(names("ref XX12 GB82 WEST 1234 5698 7654 32"), ["pii.iban"]);
        for text in [
            "send it to GB83 WEST 1234 5698 7654 32 today",
            "iban DE88370400440532013000",
            "code AB12CDEF34567",
        ] {
            assert!(!names(text).contains(&"pii.iban".to_string()), "{text}");
        }
    }

    #[test]
    fn iban_evidence_keeps_country_and_last_four() {
        assert_eq!(
            evidence("GB82 WEST 1234 5698 7654 32", "pii.iban"),
            "GB** **** **** **** **54 32"
        );
        assert_eq!(
            evidence("BE68 5390 0754 7034 that is mine", "pii.iban"),
            "BE** **** **** 7034"
        );
        assert_eq!(
            evidence("NL91ABNA0417164300", "pii.iban"),
            "NL************4300"
        );
    }

    #[test]
    fn ssns_outside_the_issued_ranges_are_not_flagged() {
        assert_eq!(names("my SSN is 123-45-6789"), ["pii.national_id"]);
        assert_eq!(names("social security 123 45 6789"), ["pii.national_id"]);
        assert_eq!(
            evidence("ssn 123-45-6789", "pii.national_id"),
            "***-**-6789"
        );
        for text in [
            "ssn 000-12-3456",
            "ssn 666-12-3456",
            "ssn 912-34-5678",
            "ssn 123-00-4567",
            "ssn 123-45-0000",
        ] {
            assert!(
                !names(text).contains(&"pii.national_id".to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn national_insurance_numbers() {
        assert_eq!(names("my NI number is AB 12 34 56 C"), ["pii.national_id"]);
        assert_eq!(names("NINO: ab123456c"), ["pii.national_id"]);
        assert_eq!(
            evidence("NI AB 12 34 56 C", "pii.national_id"),
            "** ** ** 56 C"
        );
        for text in [
            // Q is never a prefix letter (HMRC's own example number), nor D, F, I, U, V.
            "QQ123456C",
            "DA123456A",
            // O is never the second letter.
            "AO123456A",
            // Never allocated.
            "GB123456A",
            "ZZ123456B",
            "TN123456D",
            // Suffix beyond D.
            "AB123456E",
            // Prose, not a spaced NINO.
            "meet me on 12 34 56 a Monday",
        ] {
            assert!(
                !names(text).contains(&"pii.national_id".to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn national_ids_are_not_dates_amounts_cards_phones_or_references() {
        for text in [
            "I paid 25 euros on 2024-05-01",
            "it was 12-05-2024 at 14:30",
            "transfer of 1.250.000 pending",
            "order ref 123-45-6789",
            "transaction #123-45-6789",
            "reference no. 123-45-6789",
            "TXN-123-45-6789",
            "see 123-45-6789-01",
            "payment ref: AB123456C",
        ] {
            assert!(
                !names(text).contains(&"pii.national_id".to_string()),
                "{text}: {:?}",
                names(text)
            );
        }
        assert!(names("I paid 25 euros on 2024-05-01").is_empty());
        assert_eq!(names("call me on +1 123-45-6789"), ["pii.phone"]);
        assert_eq!(names("card 4539 1488 0343 6467"), ["pii.card_number"]);
    }

    #[test]
    fn emails_and_phones() {
        assert_eq!(
            names("write to jane.doe@example.co.uk please"),
            ["pii.email"]
        );
        assert_eq!(names("call me on +44 7700 900123"), ["pii.phone"]);
        assert_eq!(names("my number is (020) 7946 0958"), ["pii.phone"]);
        assert!(names("I paid 25 euros on 2024-05-01").is_empty());
        assert!(names("transfer of 1.250.000 pending").is_empty());
        assert!(names("my card ends in 1234").is_empty());
    }

    #[test]
    fn human_requests() {
        for text in [
            "I want to speak to a human",
            "can I talk to a real person please",
            "Connect me with an agent",
            "human please",
            "i need a representative",
            "you're not a bot are you, I want someone real. Let me speak to someone real",
        ] {
            assert_eq!(names(text), ["human_requested"], "{text}");
        }
        for text in [
            "my card is not working",
            "human resources changed my salary account",
            "how long does a transfer take",
        ] {
            assert!(names(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn fraud_topic() {
        assert_eq!(names("I think this is a scam"), ["topic.fraud"]);
        assert_eq!(names("there's an unauthorised payment"), ["topic.fraud"]);
        assert_eq!(names("someone used my card in Spain"), ["topic.fraud"]);
        assert!(names("how much is the exchange fee").is_empty());
    }

    #[test]
    fn fraud_phrases_keep_the_old_regex_behaviour() {
        for text in [
            "this is FRAUDULENT",
            "I got scammed",
            "a phishing text",
            "unauthorized charge",
            "my account was hacked",
            "stolen   funds",
            "it was not me who paid",
        ] {
            assert_eq!(names(text), ["topic.fraud"], "{text}");
        }
        // Missed by the old regex (`\bfraud\w*`, `hack(?:ed|er)\b`).
        assert_eq!(names("they defrauded me"), ["topic.fraud"]);
        assert_eq!(names("the hackers took it"), ["topic.fraud"]);
        assert!(names("a life hack for budgeting").is_empty());
    }

    #[test]
    fn legal_regulator_and_self_harm_topics() {
        for (text, flag) in [
            (
                "I'm going to take you to court over this",
                "topic.legal_threat",
            ),
            ("my solicitor will be in touch", "topic.legal_threat"),
            ("I will sue the bank", "topic.legal_threat"),
            ("I'll be filing in small claims", "topic.legal_threat"),
            (
                "I'm complaining to the Financial Ombudsman",
                "topic.regulator_complaint",
            ),
            ("I'll report you to the FCA", "topic.regulator_complaint"),
            ("filing with the CFPB", "topic.regulator_complaint"),
            ("honestly I want to end my life", "topic.self_harm"),
            ("i dont want to live anymore", "topic.self_harm"),
            ("I don’t want to live like this", "topic.self_harm"),
            ("I've been self-harming again", "topic.self_harm"),
            ("feeling suicidal", "topic.self_harm"),
        ] {
            assert_eq!(names(text), [flag], "{text}");
        }
        for text in [
            "Sue sent me £20 yesterday",
            "the branch on Tottenham Court Road",
            "can I set up a power of attorney",
            "I'm dying to know the rate",
            "what are the fees for a regular transfer",
        ] {
            assert!(names(text).is_empty(), "{text}: {:?}", names(text));
        }
    }

    #[test]
    fn phrase_syntax() {
        let matches = |phrase: &str, text: &str| {
            Regex::new(&format!("(?i){}", phrase_pattern(phrase).unwrap()))
                .unwrap()
                .is_match(text)
        };
        assert!(matches("don't want to live", "I DONT want to live"));
        assert!(matches("self harm", "self-harm"));
        assert!(matches("refund*", "refunded"));
        assert!(matches("fca", "to the FCA."));
        assert!(!matches("fca", "fcat"));
        assert!(!matches("sue", "issue"));
        assert!(matches("a.b (c)", "x a.b (c) y"));
        assert!(!matches("a.b", "axb"));
        for bad in ["", "   ", "*", "re*fund", "-- --", &"x".repeat(201)] {
            assert!(phrase_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn configured_topics_extend_the_built_in_lists() {
        let config = ScreenConfig {
            topics: topics(&[
                ("fraud", &["chargeback abuse"]),
                ("vulnerable", &["bereavement", "lost my job"]),
            ]),
            replace_default_topics: false,
            ..ScreenConfig::default()
        };
        let screen = Screen::from_config(&config).unwrap();
        let names = |text: &str| -> Vec<String> {
            screen.screen(text).into_iter().map(|f| f.name).collect()
        };
        assert_eq!(names("this is a scam"), ["topic.fraud"]);
        assert_eq!(names("pure chargeback abuse"), ["topic.fraud"]);
        assert_eq!(names("I recently lost my job"), ["topic.vulnerable"]);
        assert_eq!(names("see you in court"), ["topic.legal_threat"]);
        // Merging twice changes nothing (what print-config relies on).
        let merged = effective_topics(&config);
        let again = effective_topics(&ScreenConfig {
            topics: merged.clone(),
            replace_default_topics: false,
            ..ScreenConfig::default()
        });
        assert_eq!(merged, again);
        assert_eq!(merged["fraud"].last().unwrap(), "chargeback abuse");
    }

    #[test]
    fn configured_topics_can_replace_the_built_in_lists() {
        let screen = Screen::from_config(&ScreenConfig {
            topics: topics(&[("fraud", &["chargeback abuse"])]),
            replace_default_topics: true,
            ..ScreenConfig::default()
        })
        .unwrap();
        let names = |text: &str| -> Vec<String> {
            screen.screen(text).into_iter().map(|f| f.name).collect()
        };
        assert!(names("this is a scam, see you in court").is_empty());
        assert_eq!(names("chargeback abuse"), ["topic.fraud"]);
        // PII and human requests do not depend on topic lists.
        assert_eq!(names("a human please"), ["human_requested"]);
    }

    #[test]
    fn bad_topic_config_names_the_topic() {
        let err = |entries: &[(&str, &[&str])]| {
            Screen::from_config(&ScreenConfig {
                topics: topics(entries),
                replace_default_topics: false,
                ..ScreenConfig::default()
            })
            .unwrap_err()
        };
        assert_eq!(err(&[("Vulnerable", &["x"])]).topic, "Vulnerable");
        assert_eq!(err(&[("debt-help", &["x"])]).topic, "debt-help");
        assert_eq!(err(&[("vulnerable", &[])]).topic, "vulnerable");
        let e = err(&[("fraud", &["ok", " "])]);
        assert_eq!(e.topic, "fraud");
        assert!(e.message.contains("empty"), "{e}");
        assert_eq!(e.config_key(), "screen.topics.fraud");
    }

    /// Topic name and phrases, as `topics` takes them.
    type Lists<'a> = &'a [(&'a str, &'a [&'a str])];

    fn tenant_lists(entries: &[(&str, Lists)]) -> ScreenConfig {
        ScreenConfig {
            tenants: entries
                .iter()
                .map(|(tenant, lists)| {
                    let own = TenantScreenConfig {
                        topics: topics(lists),
                    };
                    (tenant.to_string(), own)
                })
                .collect(),
            ..ScreenConfig::default()
        }
    }

    #[test]
    fn tenant_topics_fire_only_for_their_tenant() {
        let screen = Screen::from_config(&tenant_lists(&[
            (
                "acme",
                &[
                    ("vulnerable", &["lost my job"]),
                    ("fraud", &["account takeover"]),
                ],
            ),
            ("globex", &[("courier", &["courier*"])]),
        ]))
        .unwrap();
        let names = |tenant: &str, text: &str| -> Vec<String> {
            screen
                .screen_for_tenant(tenant, text)
                .into_iter()
                .map(|f| f.name)
                .collect()
        };
        let text = "I lost my job and fear an account takeover by the courier";
        assert_eq!(names("acme", text), ["topic.fraud", "topic.vulnerable"]);
        assert_eq!(names("globex", text), ["topic.courier"]);
        assert!(names("initech", text).is_empty());
        assert!(screen.screen(text).is_empty(), "not for the deployment");
        // The deployment's lists still apply, and a flag is raised once.
        assert_eq!(
            names("acme", "a scam and an account takeover"),
            ["topic.fraud"]
        );
        let flag = &screen.screen_for_tenant("acme", "a scam, account takeover")[0];
        assert_eq!(flag.evidence, "scam", "the deployment's match is kept");
    }

    #[test]
    fn bad_tenant_topics_name_the_tenant() {
        let err = Screen::from_config(&tenant_lists(&[("acme", &[("debt", &[])])])).unwrap_err();
        assert_eq!(err.config_key(), "screen.tenants.acme.topics.debt");
        assert_eq!(
            err.to_string(),
            "tenant `acme`, topic `debt`: give at least one phrase"
        );
        let err = Screen::from_config(&tenant_lists(&[("acme", &[("Debt", &["x"])])])).unwrap_err();
        assert_eq!(err.config_key(), "screen.tenants.acme.topics.Debt");
    }

    #[test]
    fn built_in_topics_are_valid() {
        for (name, phrases) in DEFAULT_TOPICS {
            assert!(is_valid_topic_name(name), "{name}");
            for phrase in *phrases {
                phrase_pattern(phrase).unwrap();
            }
        }
        assert!(!Screen::default().topics.is_empty());
    }

    #[test]
    fn sop_topics_fire_only_for_their_sop() {
        let mut screen = Screen::default();
        screen
            .add_sop_topics(
                "card-dispute@1#0123456789ab",
                &topics(&[("chargeback", &["chargeback*", "dispute the payment"])]),
            )
            .unwrap();
        let text = "I want to dispute the payment, it's a scam";
        let mut flags = screen.screen(text);
        screen.screen_for_sop("card-dispute@1#0123456789ab", text, &mut flags);
        let names: Vec<&str> = flags.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["topic.fraud", "topic.chargeback"]);
        assert_eq!(flags[1].evidence, "dispute the payment");

        let mut flags = screen.screen(text);
        screen.screen_for_sop("card-dispute@2#ba9876543210", text, &mut flags);
        assert_eq!(flags.len(), 1);

        let err = screen
            .add_sop_topics("x@1#0", &topics(&[("Bad", &["x"])]))
            .unwrap_err();
        assert_eq!(err.topic, "Bad");
    }

    #[test]
    fn masking_hides_pii() {
        let masked =
            mask_pii("card 4539 1488 0343 6467, mail jane@example.com, phone +44 7700 900123");
        assert!(!masked.contains("4539"));
        assert!(!masked.contains("jane@"));
        assert!(!masked.contains("7700"));
        assert!(masked.contains("6467"));
    }

    #[test]
    fn masking_hides_ibans_and_national_ids() {
        let masked = mask_pii(
            "iban GB82 WEST 1234 5698 7654 32 and BE68 5390 0754 7034 that, ssn 123-45-6789, NI AB 12 34 56 C",
        );
        assert_eq!(
            masked,
            "iban GB** **** **** **** **54 32 and BE** **** **** 7034 that, ssn ***-**-6789, NI ** ** ** 56 C"
        );
        // By shape: a mistyped IBAN or an unissued SSN is still someone's data.
        let masked = mask_pii("GB83WEST12345698765432 / 000-12-3456 / qq123456c");
        assert!(!masked.contains("WEST"), "{masked}");
        assert!(!masked.contains("000-12"), "{masked}");
        assert!(!masked.contains("qq1234"), "{masked}");
        assert_eq!(mask_pii("nothing to hide here"), "nothing to hide here");
    }

    #[test]
    fn flag_patterns() {
        assert!(flag_matches("pii.*", "pii.card_number"));
        assert!(!flag_matches("pii.*", "piiX.card"));
        assert!(flag_matches("human_requested", "human_requested"));
        assert!(!flag_matches("topic.fraud", "topic.fraudulent"));
        assert!(is_valid_flag_pattern("pii.*"));
        assert!(!is_valid_flag_pattern("PII"));
    }
}
