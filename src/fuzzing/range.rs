use crate::http::range::{self as ranges, RangeAnswer};

// Range (RFC 9110 §14)

/// `range::evaluate`. The input is `LEN\nFIELD` (or just a field, for a 1000-byte
/// representation); it is also evaluated against other lengths (0, 1, LEN±1, ...):
/// * Partial{start, end} only with start ≤ end < len, and exactly the bytes the single
///   range spec selects (RFC 9110 §14.1.2); evaluating `bytes=start-end` gives it again,
///   and its Content-Range (§14.4) parses back to start, end, len;
/// * Unsatisfiable only when every spec is valid and none overlaps the representation
///   (§14.1.1; 416 with `bytes */len`, which parses back);
/// * Full (ignoring Range, always allowed: §14.2) otherwise, following the documented
///   choices (several ranges, malformed, other unit, field over 1 KiB);
/// * If-Range: a field compared with itself matches unless it is a weak tag (§13.1.5).
pub fn range(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (len, field) = match text.split_once('\n') {
        Some((n, rest)) => match n.trim().parse::<u64>() {
            Ok(n) => (n, rest),
            Err(_) => (1000, &text[..]),
        },
        None => (1000, &text[..]),
    };
    for len in [
        len,
        0,
        1,
        len / 2,
        len.saturating_sub(1),
        len.saturating_add(1),
        u64::MAX,
    ] {
        check_range(field, len);
    }
    let weak = field.trim().starts_with("W/");
    assert_eq!(
        ranges::if_range_matches(field, Some(field), Some(field)),
        !weak,
        "If-Range {field:?} against itself"
    );
}

fn check_range(field: &str, len: u64) {
    let got = ranges::evaluate(Some(field), len);
    assert_eq!(got, reference_range(field, len), "{field:?} len {len}");
    match got {
        RangeAnswer::Partial { start, end } => {
            assert!(start <= end && end < len, "{start}-{end} of {len}");
            let header = ranges::content_range(start, end, len);
            assert_eq!(
                parse_content_range(&header),
                Some((Some((start, end)), len)),
                "{header}"
            );
            let canonical = format!("bytes={start}-{end}");
            assert_eq!(ranges::evaluate(Some(&canonical), len), got, "{canonical}");
        }
        RangeAnswer::Unsatisfiable => {
            let header = ranges::unsatisfied_range(len);
            assert_eq!(parse_content_range(&header), Some((None, len)), "{header}");
        }
        RangeAnswer::Full => {}
    }
    assert_eq!(ranges::evaluate(None, len), RangeAnswer::Full);
}

/// `bytes a-b/len` or `bytes */len` (RFC 9110 §14.4).
fn parse_content_range(value: &str) -> Option<(Option<(u64, u64)>, u64)> {
    let (range, len) = value.strip_prefix("bytes ")?.split_once('/')?;
    let len = len.parse().ok()?;
    if range == "*" {
        return Some((None, len));
    }
    let (a, b) = range.split_once('-')?;
    Some((Some((a.parse().ok()?, b.parse().ok()?)), len))
}

/// An independent statement of what `evaluate` answers, in 128-bit arithmetic: RFC 9110
/// §14.1.1–§14.1.2 plus chacha's documented choices (several ranges → whole body, fields
/// over 1 KiB ignored; whitespace around parts tolerated).
fn reference_range(field: &str, len: u64) -> RangeAnswer {
    const MAX_FIELD: usize = 1024;
    enum Spec {
        Satisfiable(u128, u128),
        Unsatisfiable,
    }
    fn number(s: &str) -> Option<u128> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Saturates just past u64::MAX: such a number is not accepted.
        let cap = u128::from(u64::MAX) + 1;
        let n = s
            .bytes()
            .fold(0u128, |n, d| (n * 10 + u128::from(d - b'0')).min(cap));
        (n < cap).then_some(n)
    }
    let len = u128::from(len);
    let spec = |s: &str| -> Option<Spec> {
        let dash = s.find('-')?;
        let (first, last) = (&s[..dash], &s[dash + 1..]);
        if first.trim().is_empty() {
            // suffix-range: the last n bytes.
            let n = number(last)?;
            return Some(if n == 0 || len == 0 {
                Spec::Unsatisfiable
            } else {
                Spec::Satisfiable(len - n.min(len), len - 1)
            });
        }
        let start = number(first)?;
        let end = if last.trim().is_empty() {
            None
        } else {
            Some(number(last).filter(|&e| e >= start)?)
        };
        Some(if start >= len {
            Spec::Unsatisfiable
        } else {
            Spec::Satisfiable(start, end.map_or(len - 1, |e| e.min(len - 1)))
        })
    };
    if field.len() > MAX_FIELD {
        return RangeAnswer::Full;
    }
    let Some(eq) = field.find('=') else {
        return RangeAnswer::Full;
    };
    if !field[..eq].trim().eq_ignore_ascii_case("bytes") {
        return RangeAnswer::Full;
    }
    let parts: Vec<&str> = field[eq + 1..]
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .collect();
    let mut specs = Vec::new();
    for part in &parts {
        match spec(part.trim()) {
            Some(s) => specs.push(s),
            None => return RangeAnswer::Full,
        }
    }
    let satisfiable: Vec<(u128, u128)> = specs
        .iter()
        .filter_map(|s| match s {
            Spec::Satisfiable(a, b) => Some((*a, *b)),
            Spec::Unsatisfiable => None,
        })
        .collect();
    match (specs.len(), satisfiable.as_slice()) {
        (0, _) => RangeAnswer::Full,
        (_, []) => RangeAnswer::Unsatisfiable,
        (1, [(a, b)]) => RangeAnswer::Partial {
            start: *a as u64,
            end: *b as u64,
        },
        _ => RangeAnswer::Full,
    }
}
