//! Byte ranges (RFC 9110 §14): the `Range` request field, `If-Range`, and the
//! `Content-Range` of a 206 or 416. Pure.

/// What to answer a GET for a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable Range (absent, not `bytes`, malformed, or several ranges): 200 with the
    /// whole body. Several ranges may be answered whole (RFC 9110 §14.2: a server MAY
    /// ignore Range), which keeps every response a plain byte stream.
    Full,
    /// 206 with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len` (RFC 9110 §15.5.17).
    Unsatisfiable,
}

impl RangeAnswer {
    /// `Some((self, len))` unless the answer is the whole body.
    pub fn then_len(self, len: u64) -> Option<(RangeAnswer, u64)> {
        (self != RangeAnswer::Full).then_some((self, len))
    }
}

/// Most bytes of a Range field we look at (a longer one is ignored, answered whole).
const MAX_RANGE_FIELD: usize = 1024;

/// Evaluates `Range: bytes=...` against a representation of `len` bytes (RFC 9110 §14.1.2).
pub fn evaluate(range: Option<&str>, len: u64) -> RangeAnswer {
    let Some(range) = range else {
        return RangeAnswer::Full;
    };
    if range.len() > MAX_RANGE_FIELD {
        return RangeAnswer::Full;
    }
    let Some((unit, set)) = range.split_once('=') else {
        return RangeAnswer::Full;
    };
    // Range units are case-insensitive (RFC 9110 §14.1).
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeAnswer::Full;
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if specs.is_empty() {
        return RangeAnswer::Full;
    }
    let mut satisfiable = Vec::new();
    for spec in &specs {
        match parse_spec(spec, len) {
            Spec::Invalid => return RangeAnswer::Full,
            Spec::Unsatisfiable => {}
            Spec::Range(s, e) => satisfiable.push((s, e)),
        }
    }
    match satisfiable.as_slice() {
        [] => RangeAnswer::Unsatisfiable,
        [(start, end)] if specs.len() == 1 => RangeAnswer::Partial {
            start: *start,
            end: *end,
        },
        _ => RangeAnswer::Full,
    }
}

enum Spec {
    Invalid,
    Unsatisfiable,
    Range(u64, u64),
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One `int-range` (`a-b`, `a-`) or `suffix-range` (`-n`), RFC 9110 §14.1.1.
fn parse_spec(spec: &str, len: u64) -> Spec {
    let Some((first, last)) = spec.split_once('-') else {
        return Spec::Invalid;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix: the last n bytes; n = 0 is unsatisfiable.
        return match digits(last) {
            None => Spec::Invalid,
            Some(0) => Spec::Unsatisfiable,
            Some(_) if len == 0 => Spec::Unsatisfiable,
            Some(n) => Spec::Range(len.saturating_sub(n), len - 1),
        };
    }
    let Some(start) = digits(first) else {
        return Spec::Invalid;
    };
    let end = if last.is_empty() {
        None
    } else {
        match digits(last) {
            Some(e) if e >= start => Some(e),
            // last < first is invalid (RFC 9110 §14.1.1).
            _ => return Spec::Invalid,
        }
    };
    if start >= len {
        return Spec::Unsatisfiable;
    }
    Spec::Range(start, end.map_or(len - 1, |e| e.min(len - 1)))
}

/// `If-Range` (RFC 9110 §13.1.5): the range applies only if the validator matches the
/// selected representation: an entity tag by strong comparison (a weak tag never
/// matches), a date only when it equals Last-Modified exactly.
pub fn if_range_matches(if_range: &str, etag: Option<&str>, last_modified: Option<&str>) -> bool {
    let v = if_range.trim();
    if v.starts_with('"') {
        return etag.is_some_and(|e| !e.starts_with("W/") && e.trim() == v);
    }
    if v.starts_with("W/") {
        return false;
    }
    last_modified.is_some_and(|lm| lm.trim() == v)
}

/// `Content-Range` of a 206: `bytes start-end/len`.
pub fn content_range(start: u64, end: u64, len: u64) -> String {
    format!("bytes {start}-{end}/{len}")
}

/// `Content-Range` of a 416: `bytes */len`.
pub fn unsatisfied_range(len: u64) -> String {
    format!("bytes */{len}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::*;

    #[test]
    fn range_table() {
        let len = 1000;
        let cases: &[(Option<&str>, RangeAnswer)] = &[
            (None, Full),
            (Some("bytes=0-499"), Partial { start: 0, end: 499 }),
            (
                Some("bytes=500-"),
                Partial {
                    start: 500,
                    end: 999,
                },
            ),
            (
                Some("bytes=-100"),
                Partial {
                    start: 900,
                    end: 999,
                },
            ),
            (Some("bytes=-5000"), Partial { start: 0, end: 999 }),
            (
                Some("bytes=990-5000"),
                Partial {
                    start: 990,
                    end: 999,
                },
            ),
            (Some("BYTES=1-1"), Partial { start: 1, end: 1 }),
            (Some("bytes= 7 - 9 "), Partial { start: 7, end: 9 }),
            (Some("bytes=1000-"), Unsatisfiable),
            (Some("bytes=1000-1001"), Unsatisfiable),
            (Some("bytes=-0"), Unsatisfiable),
            (Some("bytes=5-4"), Full),
            (Some("bytes=abc"), Full),
            (Some("bytes=-"), Full),
            (Some("bytes=1-2,5-6"), Full),
            (Some("bytes=1-2, 2000-3000"), Full),
            (Some("bytes=2000-3000, 4000-"), Unsatisfiable),
            (Some("items=0-1"), Full),
            (Some("bytes"), Full),
            (Some("bytes=+1-2"), Full),
            (Some("bytes=18446744073709551616-"), Full),
        ];
        for (range, want) in cases {
            assert_eq!(evaluate(*range, len), *want, "{range:?}");
        }
        assert_eq!(evaluate(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(evaluate(Some("bytes=-1"), 0), Unsatisfiable);
    }

    #[test]
    fn if_range_table() {
        let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert!(if_range_matches("\"a\"", Some("\"a\""), None));
        assert!(!if_range_matches("\"a\"", Some("\"b\""), None));
        assert!(!if_range_matches("\"a\"", Some("W/\"a\""), None));
        assert!(!if_range_matches("W/\"a\"", Some("W/\"a\""), None));
        assert!(!if_range_matches("\"a\"", None, Some(lm)));
        assert!(if_range_matches(lm, Some("\"a\""), Some(lm)));
        assert!(!if_range_matches(
            "Thu, 22 Oct 2015 07:28:00 GMT",
            None,
            Some(lm)
        ));
    }

    #[test]
    fn content_range_values() {
        assert_eq!(content_range(0, 9, 10), "bytes 0-9/10");
        assert_eq!(unsatisfied_range(10), "bytes */10");
    }
}
