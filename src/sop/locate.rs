//! Maps a JSON pointer (`/escalation/notify/1`) to a line in the YAML text it
//! came from, so errors can point authors at the line to fix. YAML parsers
//! used here do not keep spans; SOP files are plain block-style YAML, and this
//! walk over indentation finds the key or list item for such files. It returns
//! the deepest line it could place, or `None`.

pub fn line_of(text: &str, pointer: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize; // first line of the current node's body
    let mut end = lines.len();
    let mut parent_indent: isize = -1;
    let mut found: Option<usize> = None;
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        let hit = match segment.parse::<usize>() {
            Ok(index) => find_item(&lines, start, end, parent_indent, index),
            Err(_) => find_key(&lines, start, end, parent_indent, &segment),
        };
        let Some((line, indent)) = hit else { break };
        found = Some(line + 1);
        start = line;
        parent_indent = indent;
        end = block_end(&lines, line, indent);
    }
    found.or(if pointer.is_empty() { Some(1) } else { None })
}

fn indent_of(line: &str) -> isize {
    (line.len() - line.trim_start().len()) as isize
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

fn find_key(
    lines: &[&str],
    start: usize,
    end: usize,
    parent: isize,
    key: &str,
) -> Option<(usize, isize)> {
    let mut child_indent: Option<isize> = None;
    for (i, line) in lines.iter().enumerate().take(end).skip(start) {
        if !is_content(line) {
            continue;
        }
        let mut indent = indent_of(line);
        let mut body = line.trim_start();
        // A key on the same line as a list dash (`- id: x`).
        if let Some(rest) = body.strip_prefix("- ") {
            indent += 2;
            body = rest.trim_start();
        }
        if indent <= parent {
            continue;
        }
        let child = *child_indent.get_or_insert(indent);
        if indent != child {
            continue;
        }
        let unquoted = body.trim_start_matches(['"', '\'']);
        if let Some(rest) = unquoted.strip_prefix(key) {
            let rest = rest.trim_start_matches(['"', '\'']);
            if rest.starts_with(':') {
                return Some((i, indent));
            }
        }
    }
    None
}

fn find_item(
    lines: &[&str],
    start: usize,
    end: usize,
    parent: isize,
    index: usize,
) -> Option<(usize, isize)> {
    // Flow sequences (`[a, b]`) live on one line: point at it.
    if let Some(line) = lines.get(start)
        && line.contains('[')
    {
        return Some((start, parent));
    }
    let mut seen = 0usize;
    let mut item_indent: Option<isize> = None;
    for (i, line) in lines.iter().enumerate().take(end).skip(start + 1) {
        if !is_content(line) {
            continue;
        }
        let indent = indent_of(line);
        if line.trim_start().starts_with('-')
            && item_indent.is_none_or(|d| d == indent)
            && indent >= parent
        {
            item_indent = Some(indent);
            if seen == index {
                return Some((i, indent));
            }
            seen += 1;
        }
    }
    None
}

fn block_end(lines: &[&str], line: usize, indent: isize) -> usize {
    for (i, l) in lines.iter().enumerate().skip(line + 1) {
        if is_content(l)
            && indent_of(l) <= indent
            && !(l.trim_start().starts_with('-') && indent_of(l) == indent)
        {
            return i;
        }
    }
    lines.len()
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const DOC: &str = "id: x\nversion: 1\n# comment\nescalation:\n  min_confidence: 2\n  notify:\n    - slack:#a\n    - bogus\nsteps:\n  - one\nresponse:\n  template: |\n    hi\n";

    #[test]
    fn finds_nested_keys_and_items() {
        assert_eq!(line_of(DOC, "/version"), Some(2));
        assert_eq!(line_of(DOC, "/escalation/min_confidence"), Some(5));
        assert_eq!(line_of(DOC, "/escalation/notify/1"), Some(8));
        assert_eq!(line_of(DOC, "/steps/0"), Some(10));
        assert_eq!(line_of(DOC, "/response/template"), Some(12));
        assert_eq!(line_of(DOC, ""), Some(1));
    }

    #[test]
    fn falls_back_to_the_deepest_known_line() {
        assert_eq!(line_of(DOC, "/escalation/priority"), Some(4));
        assert_eq!(line_of(DOC, "/nothing"), None);
    }
}
