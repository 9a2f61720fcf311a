//! The screen: sensitivity flags raised from the text alone, independent of the
//! classifier, so a misrouted message still cannot skip a required review.
//! Flags are named `family.kind` (`pii.card_number`, `topic.fraud`) or a bare
//! name (`human_requested`). Detectors favour precision where a checksum exists
//! (Luhn for card numbers) and recall elsewhere: a false flag costs a review, a
//! missed one can cost a customer.

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flag {
    pub name: String,
    /// The matched text, masked when it is PII, so it is safe to log and show.
    pub evidence: String,
}

static CARD_CANDIDATE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b\d(?:[ -]?\d){12,18}\b").expect("static regex is valid"));
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
static FRAUD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(?:fraud\w*|scam\w*|phish\w*|unauthori[sz]ed|hack(?:ed|er)|stolen\s+(?:money|funds|identity)|identity\s+theft|someone\s+(?:used|is\s+using|has\s+used|took|stole)|not\s+me\s+who)\b",
    )
    .expect("static regex is valid")
});

/// Runs every detector over the text. Flags are unique by name, in a stable order.
pub fn screen(text: &str) -> Vec<Flag> {
    let mut flags: Vec<Flag> = Vec::new();
    let mut add = |name: &str, evidence: String| {
        if !flags.iter().any(|f| f.name == name) {
            flags.push(Flag {
                name: name.into(),
                evidence,
            });
        }
    };
    let mut card_spans = Vec::new();
    for m in CARD_CANDIDATE.find_iter(text) {
        let digits: Vec<u8> = m
            .as_str()
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| b - b'0')
            .collect();
        if (13..=19).contains(&digits.len()) && luhn_valid(&digits) {
            card_spans.push(m.range());
            add("pii.card_number", mask_digits(m.as_str()));
        }
    }
    for m in EMAIL.find_iter(text) {
        add("pii.email", mask_email(m.as_str()));
    }
    for m in PHONE.find_iter(text) {
        let overlaps_card = card_spans
            .iter()
            .any(|r| r.start < m.end() && m.start() < r.end);
        let digits = m.as_str().bytes().filter(u8::is_ascii_digit).count();
        if !overlaps_card && (8..=15).contains(&digits) && !looks_like_amount_or_date(m.as_str()) {
            add("pii.phone", mask_digits(m.as_str()));
        }
    }
    if let Some(m) = HUMAN.find(text) {
        add("human_requested", m.as_str().to_string());
    }
    if let Some(m) = FRAUD.find(text) {
        add("topic.fraud", m.as_str().to_string());
    }
    flags
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

fn mask_email(s: &str) -> String {
    match s.split_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('*')),
        None => "***".into(),
    }
}

/// The text with every PII match masked: what logs and previews may show.
pub fn mask_pii(text: &str) -> String {
    let out = CARD_CANDIDATE.replace_all(text, |c: &regex::Captures| mask_digits(&c[0]));
    let out = EMAIL.replace_all(&out, |c: &regex::Captures| mask_email(&c[0]));
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

    fn names(text: &str) -> Vec<String> {
        screen(text).into_iter().map(|f| f.name).collect()
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
    fn masking_hides_pii() {
        let masked =
            mask_pii("card 4539 1488 0343 6467, mail jane@example.com, phone +44 7700 900123");
        assert!(!masked.contains("4539"));
        assert!(!masked.contains("jane@"));
        assert!(!masked.contains("7700"));
        assert!(masked.contains("6467"));
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
