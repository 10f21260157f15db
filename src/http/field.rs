//! Syntax checks for header fields that did not come through the parser: entry files read
//! from disk and the KV protocol's `X-Chacha-Metadata` carry names and values that are
//! written verbatim into responses, so a CR or LF in them would split a response.

/// RFC 9110 §5.1 / §5.6.2: a field name is a `token`, one or more `tchar`.
pub fn is_field_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| is_tchar(b))
}

/// RFC 9110 §5.6.2: `tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
/// "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 §5.5: a field value is `field-vchar` (VCHAR or obs-text, 0x80–0xFF) with SP and
/// HTAB between them: no CR, LF, NUL or other control character. SP/HTAB at the ends are
/// accepted (they cannot change where a field ends; the parser trims them anyway).
pub fn is_field_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| matches!(b, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff))
}

/// Checks a whole list of fields; the error names the first bad one (its name escaped).
pub fn check_fields<'a>(
    fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<(), String> {
    for (name, value) in fields {
        if !is_field_name(name.as_bytes()) {
            return Err(format!(
                "invalid header field name {:?}",
                name.escape_debug()
            ));
        }
        if !is_field_value(value) {
            return Err(format!(
                "invalid value of header field {name} (control characters)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_tokens() {
        for good in ["ETag", "x-a", "A1!#$%&'*+-.^_`|~"] {
            assert!(is_field_name(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "", "a b", "a:b", "a\r\nb", "a\n", "(x)", "a\"", "a/b", "é", "a\0", "a\t",
        ] {
            assert!(!is_field_name(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn field_values_have_no_controls() {
        let good: &[&[u8]] = &[
            b"",
            b"\"v1\"",
            b"a b\tc",
            b" padded ",
            &[0x80, 0xff, b'x'],
            b"text/plain; charset=utf-8",
        ];
        for v in good {
            assert!(is_field_value(v), "{v:?}");
        }
        let bad: &[&[u8]] = &[
            b"a\r\nSet-Cookie: injected=1",
            b"a\nb",
            b"a\rb",
            b"\0",
            b"a\x7f",
            b"\x1b[31m",
        ];
        for v in bad {
            assert!(!is_field_value(v), "{v:?}");
        }
    }

    #[test]
    fn check_fields_names_the_first_bad_field() {
        let ok = [("ETag", &b"\"x\""[..]), ("X-A", &b""[..])];
        assert_eq!(check_fields(ok), Ok(()));
        let bad_value = [("ETag", &b"\"x\""[..]), ("X-A", &b"1\r\nB: 2"[..])];
        assert!(check_fields(bad_value).unwrap_err().contains("X-A"));
        let bad_name = [("X\r\nB", &b"1"[..])];
        assert!(check_fields(bad_name).unwrap_err().contains("name"));
    }
}
