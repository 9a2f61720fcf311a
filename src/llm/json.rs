//! The model's output is data, not text: it must parse as JSON and satisfy the
//! SOP's `output_schema` before anything reads it. `ReplyScanner` pulls the
//! `reply` string out of a JSON object while it is still streaming, so a
//! client can show the words as they come without ever seeing the JSON.

use serde_json::Value;

/// Parses a model answer as JSON. Tolerates one Markdown code fence around
/// it, which models add even in JSON mode; nothing else is repaired here.
pub fn parse(text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .unwrap_or(trimmed);
    serde_json::from_str(unfenced.trim()).map_err(|e| format!("not valid JSON: {e}"))
}

/// Parses and validates; the error lists what is wrong in words a model can act on.
pub fn parse_valid(text: &str, validator: &jsonschema::Validator) -> Result<Value, String> {
    let value = parse(text)?;
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("at {at}: {e}")
            }
        })
        .collect();
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(format!(
            "does not match the output schema: {}",
            errors.join("; ")
        ))
    }
}

/// Incremental reader of the top-level `"reply": "…"` string of a JSON object
/// being streamed. Feed chunks; each call returns the newly decoded text.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    buffer: String,
    /// Byte offset in `buffer` where the reply's string content starts.
    start: Option<usize>,
    /// Byte offset up to which the content has been decoded.
    pos: usize,
    finished: bool,
}

impl ReplyScanner {
    pub fn push(&mut self, chunk: &str) -> String {
        self.buffer.push_str(chunk);
        if self.finished {
            return String::new();
        }
        if self.start.is_none() {
            self.start = find_reply_start(&self.buffer);
            self.pos = self.start.unwrap_or(0);
        }
        if self.start.is_none() {
            return String::new();
        }
        let mut out = String::new();
        let bytes = self.buffer.as_bytes();
        while self.pos < bytes.len() {
            match bytes[self.pos] {
                b'"' => {
                    self.finished = true;
                    break;
                }
                b'\\' => {
                    let Some((decoded, used)) = decode_escape(&self.buffer[self.pos..]) else {
                        break; // the escape is cut by the chunk boundary
                    };
                    out.push_str(&decoded);
                    self.pos += used;
                }
                _ => {
                    let c = self.buffer[self.pos..].chars().next().unwrap_or_default();
                    out.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
        out
    }
}

/// Where the string value of the `"reply"` key begins (just after its quote).
fn find_reply_start(buffer: &str) -> Option<usize> {
    buffer.match_indices("\"reply\"").find_map(|(key, _)| {
        let rest = &buffer[key + 7..];
        let after = rest.trim_start().strip_prefix(':')?.trim_start();
        after
            .starts_with('"')
            .then(|| buffer.len() - after.len() + 1)
    })
}

/// Decodes one JSON escape at the start of `s`; `None` if it is incomplete.
fn decode_escape(s: &str) -> Option<(String, usize)> {
    let bytes = s.as_bytes();
    let kind = *bytes.get(1)?;
    let simple = match kind {
        b'n' => Some('\n'),
        b't' => Some('\t'),
        b'r' => Some('\r'),
        b'b' => Some('\u{8}'),
        b'f' => Some('\u{c}'),
        b'"' => Some('"'),
        b'\\' => Some('\\'),
        b'/' => Some('/'),
        b'u' => None,
        _ => Some('\u{fffd}'),
    };
    if let Some(c) = simple {
        return Some((c.to_string(), 2));
    }
    let unit = |at: usize| -> Option<u16> { u16::from_str_radix(s.get(at..at + 4)?, 16).ok() };
    let first = unit(2)?;
    if (0xD800..0xDC00).contains(&first) {
        // A surrogate pair needs the second half before it can be decoded.
        if s.len() < 12 {
            return None;
        }
        let second = if s.get(6..8) == Some("\\u") {
            unit(8)
        } else {
            None
        };
        return Some(match second {
            Some(low) => (String::from_utf16_lossy(&[first, low]), 12),
            None => ("\u{fffd}".into(), 6),
        });
    }
    Some((String::from_utf16_lossy(&[first]), 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fenced_json_and_names_schema_errors() {
        let schema = serde_json::json!({
            "type": "object", "required": ["reply"],
            "properties": { "reply": { "type": "string" }, "escalate": { "type": "boolean" } }
        });
        let validator = jsonschema::validator_for(&schema).unwrap();
        let ok = parse_valid("```json\n{\"reply\": \"hi\"}\n```", &validator).unwrap();
        assert_eq!(ok["reply"], "hi");
        let err = parse_valid(r#"{"reply": 3, "escalate": "yes"}"#, &validator).unwrap_err();
        assert!(err.contains("/reply") && err.contains("/escalate"), "{err}");
        assert!(
            parse_valid("Sure! Here you go", &validator)
                .unwrap_err()
                .starts_with("not valid JSON")
        );
    }

    #[test]
    fn scanner_decodes_the_reply_across_any_chunking() {
        let json = r#"{"kind": "reply", "escalate": false, "reply": "Hi \"Ana\",\nyour card\u00e9 \ud83d\ude00 is on its way.", "x": 1}"#;
        let expected = "Hi \"Ana\",\nyour cardé 😀 is on its way.";
        for size in 1..=json.len() {
            let mut scanner = ReplyScanner::default();
            let mut out = String::new();
            let mut rest = json;
            while !rest.is_empty() {
                let mut cut = size.min(rest.len());
                while !rest.is_char_boundary(cut) {
                    cut += 1;
                }
                out.push_str(&scanner.push(&rest[..cut]));
                rest = &rest[cut..];
            }
            assert_eq!(out, expected, "chunk size {size}");
        }
    }

    #[test]
    fn scanner_waits_for_the_reply_key() {
        let mut scanner = ReplyScanner::default();
        assert_eq!(scanner.push(r#"{"repl"#), "");
        assert_eq!(scanner.push(r#"y" : "ok"#), "ok");
        assert_eq!(scanner.push(r#"ay"}"#), "ay");
    }
}
