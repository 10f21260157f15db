//! Finds the line on which each key of a YAML document appears, so that a
//! config problem can name its line. serde_yaml_ng's `Value` keeps no
//! positions, so this is a small, forgiving scanner over the text that follows
//! YAML's block structure by indentation (YAML 1.2 §6.1, §8.2) and also walks
//! single-line flow collections (`disk: {dir: x, limit: 1GB}`, §7.4).
//!
//! It runs only on text that already parsed as YAML, and it never fails: what
//! it cannot follow (multi-line flow collections, complex `?` keys, aliases)
//! simply gets no entry, and `line_of` then falls back to the nearest
//! enclosing key that was found.
//!
//! Paths look like `disk.limit`, `rules[1].pattern`, `cluster.nodes[0].addr`.

use std::collections::HashMap;

/// Key path → 1-based line number of its first occurrence.
#[derive(Debug, Default)]
pub(crate) struct KeyLines {
    lines: HashMap<String, usize>,
    /// Where a second YAML document starts, if the text holds more than one.
    second_document: Option<usize>,
}

/// The lines of `text` split at YAML line breaks: CRLF, CR, LF, and (YAML 1.1, which
/// libyaml follows, so its error lines count them) NEL, LS and PS. Like `str::split`,
/// text ending with a break yields a last, empty line.
pub(crate) fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.find(['\r', '\n', '\u{85}', '\u{2028}', '\u{2029}']) {
            Some(at) => {
                let brk = if text[at..].starts_with("\r\n") {
                    2
                } else {
                    text[at..].chars().next().map_or(1, char::len_utf8)
                };
                rest = Some(&text[at + brk..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// One open block node: a mapping key or a sequence item.
struct Frame {
    /// Column of the key, or of the `-` of a sequence item.
    indent: usize,
    /// Full path of this node.
    path: String,
    /// For sequence items: the sequence's own path and this item's index.
    item: Option<(String, usize)>,
}

impl KeyLines {
    /// Scans `text`, recording the line of every key and sequence item.
    pub(crate) fn scan(text: &str) -> KeyLines {
        let mut found = KeyLines::default();
        let mut stack: Vec<Frame> = Vec::new();
        // While inside a block scalar (`key: |`), lines indented deeper than
        // this column are its content, not keys.
        let mut block_scalar_above: Option<usize> = None;
        // A `...` marker ended a document: content after it starts another.
        let mut document_ended = false;

        for (index, raw) in yaml_lines(text).enumerate() {
            let line_no = index + 1;
            let indent = raw.len() - raw.trim_start_matches(' ').len();
            let content = strip_comment(&raw[indent..]).trim_end();

            if let Some(column) = block_scalar_above {
                if content.is_empty() || indent > column {
                    continue;
                }
                block_scalar_above = None;
            }
            if content.is_empty() {
                continue;
            }
            // Document markers and directives (§9.2, §6.8) start over. A marker is
            // `---` or `...` alone or before whitespace (`---x` is a plain scalar).
            let marker = ["---", "..."].iter().find_map(|m| {
                let after = content.strip_prefix(m)?;
                (after.is_empty() || after.starts_with([' ', '\t'])).then_some(after)
            });
            if let (0, Some(after)) = (indent, marker) {
                stack.clear();
                let started = found.lines.contains_key("");
                if content.starts_with("---") && started {
                    found.second_document.get_or_insert(line_no);
                }
                document_ended |= content.starts_with("...") && started;
                // `--- value`: the root node starts on the marker's line.
                if !after.trim().is_empty() {
                    found.record("", line_no);
                }
                continue;
            }
            if indent == 0 && content.starts_with('%') {
                continue;
            }
            if document_ended {
                found.second_document.get_or_insert(line_no);
            }
            // The root node (path "") starts on the first line with content.
            found.record("", line_no);

            let mut column = indent;
            let mut rest = content;
            // Sequence items, possibly nested on one line (`- - a`).
            while rest == "-" || rest.starts_with("- ") {
                let seq_item = open_item(&mut stack, column);
                found.record(&seq_item.path, line_no);
                stack.push(seq_item);
                let after = rest[1..].trim_start_matches(' ');
                column += rest.len() - after.len();
                rest = after;
            }
            if rest.is_empty() {
                continue;
            }

            if rest.starts_with('{') || rest.starts_with('[') {
                let base = parent_path(&stack, column);
                found.scan_flow(rest, &base, line_no);
                continue;
            }
            let Some((key, value)) = split_key(rest) else {
                // A scalar item or a continuation line: no key here.
                continue;
            };
            while stack.last().is_some_and(|frame| frame.indent >= column) {
                stack.pop();
            }
            let path = join_key(stack.last().map_or("", |frame| &frame.path), &key);
            found.record(&path, line_no);

            let value = value.trim();
            if value.starts_with('|') || value.starts_with('>') {
                block_scalar_above = Some(column);
            } else if value.starts_with('{') || value.starts_with('[') {
                found.scan_flow(value, &path, line_no);
            }
            stack.push(Frame {
                indent: column,
                path,
                item: None,
            });
        }
        found
    }

    /// The line of `path`, or of its nearest enclosing key that was found.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(&line) = self.lines.get(path) {
                return Some(line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }

    /// The line where a second document starts (serde_yaml_ng refuses such text
    /// without saying where).
    pub(crate) fn second_document(&self) -> Option<usize> {
        self.second_document
    }

    /// The first key called `name` at any depth: its path and line.
    pub(crate) fn first_key_named(&self, name: &str) -> Option<(&str, usize)> {
        self.lines
            .iter()
            .filter(|(path, _)| {
                let last = path.rsplit(['.', ']']).next().unwrap_or(path);
                last == name
            })
            .map(|(path, &line)| (path.as_str(), line))
            .min_by_key(|&(path, line)| (line, path))
    }

    fn record(&mut self, path: &str, line: usize) {
        self.lines.entry(path.to_owned()).or_insert(line);
    }

    /// Records the keys of a flow collection that starts and (usually) ends
    /// on this line; `base` is the path of the collection itself.
    fn scan_flow(&mut self, text: &str, base: &str, line: usize) {
        enum Open {
            Map { key: Option<String> },
            Seq { index: usize },
        }
        let mut stack: Vec<(Open, String)> = Vec::new();
        let mut rest = text;

        while let Some(c) = rest.chars().next() {
            match c {
                ' ' | '\t' => rest = &rest[1..],
                '{' | '[' => {
                    let path = match stack.last() {
                        None => base.to_owned(),
                        Some((Open::Map { key: Some(key) }, path)) => join_key(path, key),
                        Some((Open::Map { key: None }, path)) => path.clone(),
                        Some((Open::Seq { index }, path)) => join_index(path, *index),
                    };
                    let open = if c == '{' {
                        Open::Map { key: None }
                    } else {
                        Open::Seq { index: 0 }
                    };
                    stack.push((open, path));
                    rest = &rest[1..];
                }
                '}' | ']' => {
                    stack.pop();
                    if stack.is_empty() {
                        return;
                    }
                    rest = &rest[1..];
                }
                ',' => {
                    match stack.last_mut() {
                        Some((Open::Map { key }, _)) => *key = None,
                        Some((Open::Seq { index }, _)) => *index += 1,
                        None => return,
                    }
                    rest = &rest[1..];
                }
                ':' => rest = &rest[1..],
                _ => {
                    let (scalar, after) = take_flow_scalar(rest);
                    if after.trim_start().starts_with(':') {
                        if let Some((Open::Map { key }, path)) = stack.last_mut() {
                            self.record(&join_key(path, &scalar), line);
                            *key = Some(scalar);
                        }
                    }
                    if after.len() == rest.len() {
                        // Defensive: never loop without progress.
                        return;
                    }
                    rest = after;
                }
            }
        }
    }
}

/// Opens a sequence item whose `-` is at `column`, closing what it ends.
fn open_item(stack: &mut Vec<Frame>, column: usize) -> Frame {
    while stack.last().is_some_and(|frame| frame.indent > column) {
        stack.pop();
    }
    // A previous item of the same sequence: this is the next one.
    if let Some(Frame {
        indent,
        item: Some(_),
        ..
    }) = stack.last()
    {
        if *indent == column {
            let (seq, index) = stack.pop().and_then(|frame| frame.item).unwrap_or_default();
            return Frame {
                indent: column,
                path: join_index(&seq, index + 1),
                item: Some((seq, index + 1)),
            };
        }
    }
    // Otherwise the sequence is the value of the enclosing node (a key may
    // sit at the same column as its sequence's dashes, §8.2.1).
    let seq = stack
        .last()
        .map_or(String::new(), |frame| frame.path.clone());
    Frame {
        indent: column,
        path: join_index(&seq, 0),
        item: Some((seq, 0)),
    }
}

/// Path of the node that encloses content starting at `column`.
fn parent_path(stack: &[Frame], column: usize) -> String {
    stack
        .iter()
        .rev()
        .find(|frame| frame.indent < column || frame.item.is_some())
        .map_or(String::new(), |frame| frame.path.clone())
}

pub(crate) fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

pub(crate) fn join_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Splits `key: value` (plain or quoted key) into the key and what follows
/// the colon; `None` if the line holds no mapping key.
fn split_key(text: &str) -> Option<(String, &str)> {
    let (key, after) = match text.chars().next()? {
        quote @ ('"' | '\'') => {
            let (key, after) = take_quoted(text, quote)?;
            let after = after.trim_start_matches(' ').strip_prefix(':')?;
            (key, after)
        }
        // Flow collections, aliases, tags, block scalars: not a plain key.
        '{' | '[' | '*' | '!' | '|' | '>' | '?' => return None,
        _ => {
            let colon = find_value_colon(text)?;
            (text[..colon].trim_end().to_owned(), &text[colon + 1..])
        }
    };
    // `key:` must be followed by whitespace or the end of the line (§7.3.3).
    if after.is_empty() || after.starts_with([' ', '\t']) {
        Some((key, after))
    } else {
        None
    }
}

/// Byte offset of the first `:` that is followed by a space or ends the text.
fn find_value_colon(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len())
        .find(|&i| bytes[i] == b':' && matches!(bytes.get(i + 1), None | Some(b' ') | Some(b'\t')))
}

/// Reads a quoted scalar starting at `text[0]`; returns its (lightly
/// unescaped) contents and the text after the closing quote.
fn take_quoted(text: &str, quote: char) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if quote == '"' => {
                if let Some((_, escaped)) = chars.next() {
                    value.push(escaped);
                }
            }
            '\'' if quote == '\'' && chars.peek().is_some_and(|&(_, next)| next == '\'') => {
                chars.next();
                value.push('\'');
            }
            c if c == quote => return Some((value, &text[i + 1..])),
            c => value.push(c),
        }
    }
    None
}

/// Reads a scalar inside a flow collection; it ends at `,`, `]`, `}` or at
/// a `:` followed by a space or a flow indicator.
fn take_flow_scalar(text: &str) -> (String, &str) {
    if let Some(quote @ ('"' | '\'')) = text.chars().next() {
        return take_quoted(text, quote).unwrap_or_else(|| (text.to_owned(), ""));
    }
    let bytes = text.as_bytes();
    let end = (0..bytes.len())
        .find(|&i| match bytes[i] {
            b',' | b']' | b'}' | b'[' | b'{' => true,
            b':' => matches!(
                bytes.get(i + 1),
                None | Some(b' ' | b'\t' | b',' | b']' | b'}')
            ),
            _ => false,
        })
        .unwrap_or(bytes.len());
    (text[..end].trim_end().to_owned(), &text[end..])
}

/// Drops a trailing `# comment`: a `#` outside quotes that starts the text or
/// follows whitespace (§6.6).
fn strip_comment(text: &str) -> &str {
    let bytes = text.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(b'"') if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => {
                let after_separator = i == 0 || b" \t[{,:-".contains(&bytes[i - 1]);
                if b == b'#' && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
                    return &text[..i];
                }
                // Quotes only open a scalar at its start, not mid-word (`don't`).
                if (b == b'"' || b == b'\'') && after_separator {
                    quote = Some(b);
                }
            }
        }
        i += 1;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> KeyLines {
        KeyLines::scan(text)
    }

    #[test]
    fn block_mappings_and_sequences() {
        let text = "\
# comment
addr: 127.0.0.1:8080   # trailing comment

disk:
  dir: /tmp/x
  limit: 50GB
rules:
- pattern: a
  ignore-parameters:
    - X
    - Y
-   pattern: 'b # not a comment'
    ignore-authorization-header: true
cluster:
  secret: \"s # x\"
  nodes:
    - addr: 1.2.3.4:80
    - {addr: 1.2.3.5:80}
";
        let found = lines(text);
        let want = [
            ("addr", 2),
            ("disk", 4),
            ("disk.dir", 5),
            ("disk.limit", 6),
            ("rules", 7),
            ("rules[0]", 8),
            ("rules[0].pattern", 8),
            ("rules[0].ignore-parameters", 9),
            ("rules[0].ignore-parameters[0]", 10),
            ("rules[0].ignore-parameters[1]", 11),
            ("rules[1].pattern", 12),
            ("rules[1].ignore-authorization-header", 13),
            ("cluster", 14),
            ("cluster.secret", 15),
            ("cluster.nodes[0].addr", 17),
            ("cluster.nodes[1]", 18),
            ("cluster.nodes[1].addr", 18),
        ];
        for (path, line) in want {
            assert_eq!(found.line_of(path), Some(line), "{path}");
        }
    }

    #[test]
    fn missing_keys_fall_back_to_the_enclosing_key() {
        let found = lines("addr: x\ndisk:\n  dir: y\n");
        assert_eq!(found.line_of("disk.limit"), Some(2));
        assert_eq!(found.line_of("disk.limit[3].x"), Some(2));
        assert_eq!(found.line_of("workers"), None);
    }

    #[test]
    fn flow_mappings_and_quoted_keys() {
        let text = "\
disk: {dir: ./c, limit: 1GB}
\"tls-interceptor\": {'cert': a.pem, key: b.pem, ports: [443, 8443]}
rules: {paths: [{pattern: 'x, y', ignore-parameters: [a, b]}, {pattern: z}]}
addr: '[::1]:0'
";
        let found = lines(text);
        let want = [
            ("disk.dir", 1),
            ("disk.limit", 1),
            ("tls-interceptor.cert", 2),
            ("tls-interceptor.ports", 2),
            ("rules.paths", 3),
            ("rules.paths[0].pattern", 3),
            ("rules.paths[0].ignore-parameters", 3),
            ("rules.paths[1].pattern", 3),
            ("addr", 4),
        ];
        for (path, line) in want {
            assert_eq!(found.line_of(path), Some(line), "{path}");
        }
    }

    #[test]
    fn block_scalars_are_not_scanned_for_keys() {
        let text = "\
cluster:
  secret: |
    fake: 1
    also: 2
  nodes: []
workers: 2
";
        let found = lines(text);
        assert_eq!(found.line_of("cluster.fake"), Some(1));
        assert_eq!(found.line_of("cluster.secret"), Some(2));
        assert_eq!(found.line_of("cluster.nodes"), Some(5));
        assert_eq!(found.line_of("workers"), Some(6));
    }

    #[test]
    fn sequence_dashes_at_the_key_column_and_nested_dashes() {
        let text = "\
rules:
- pattern: a
- pattern: b
  ignore-parameters:
  - p
  - q
workers: 1
matrix:
- - x
  - y
";
        let found = lines(text);
        assert_eq!(found.line_of("rules[1].pattern"), Some(3));
        assert_eq!(found.line_of("rules[1].ignore-parameters[1]"), Some(6));
        assert_eq!(found.line_of("workers"), Some(7));
        assert_eq!(found.line_of("matrix[0][1]"), Some(10));
    }

    #[test]
    fn comments_respect_quotes() {
        assert_eq!(strip_comment("a: 'x # y' # z"), "a: 'x # y' ");
        assert_eq!(strip_comment("a: don't # z"), "a: don't ");
        assert_eq!(strip_comment("a: b#c"), "a: b#c");
        assert_eq!(strip_comment("# all"), "");
    }
}
