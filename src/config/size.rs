//! Human-readable byte sizes (`disk.limit`), parsed exactly like the original
//! chacha, which uses go-humanize v1.0.1 `ParseBytes`:
//!
//! * a number made of ASCII digits, `.` and `,` (commas are thousands
//!   separators and are dropped: `1,005.03 MB`);
//! * then an optional unit, case-insensitive, optionally separated by spaces;
//!   SI units are powers of 1000 (`KB`, `MB`, `GB`, ... `EB`, or bare `K`, `M`,
//!   `G`), IEC units powers of 1024 (`KiB` ... `EiB`, or bare `Ki`, `Mi`, `Gi`);
//!   `B` or nothing means bytes;
//! * fractions are truncated to whole bytes (`1.5TB` = 1.5e12 bytes).

/// Unit suffixes (lowercased) and their multipliers, as in go-humanize's
/// `bytesSizeTable`.
const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", KB),
    ("kb", KB),
    ("ki", KIB),
    ("kib", KIB),
    ("m", KB.pow(2)),
    ("mb", KB.pow(2)),
    ("mi", KIB.pow(2)),
    ("mib", KIB.pow(2)),
    ("g", KB.pow(3)),
    ("gb", KB.pow(3)),
    ("gi", KIB.pow(3)),
    ("gib", KIB.pow(3)),
    ("t", KB.pow(4)),
    ("tb", KB.pow(4)),
    ("ti", KIB.pow(4)),
    ("tib", KIB.pow(4)),
    ("p", KB.pow(5)),
    ("pb", KB.pow(5)),
    ("pi", KIB.pow(5)),
    ("pib", KIB.pow(5)),
    ("e", KB.pow(6)),
    ("eb", KB.pow(6)),
    ("ei", KIB.pow(6)),
    ("eib", KIB.pow(6)),
];

const KB: u64 = 1000;
const KIB: u64 = 1024;

/// Parses a size such as `50GB`, `512MB`, `1.5TB`, `10GiB` or `100` into bytes.
///
/// The error is a complete message naming the input, e.g.
/// `cannot parse size "50XB": unknown unit "XB" ...`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let input = s.trim();
    let number_end = input
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .unwrap_or(input.len());
    let number: String = input[..number_end].chars().filter(|&c| c != ',').collect();
    let unit = input[number_end..].trim();

    let Some(&(_, multiplier)) = UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
    else {
        return Err(format!(
            "cannot parse size {s:?}: unknown unit {unit:?} (expected e.g. 512MB, 50GB, 10GiB)"
        ));
    };
    if !number.bytes().any(|b| b.is_ascii_digit()) {
        return Err(format!(
            "cannot parse size {s:?}: expected a number with an optional unit (e.g. 50GB)"
        ));
    }
    let too_large = || format!("cannot parse size {s:?}: too large");

    // Whole numbers are computed exactly; go-humanize goes through float64,
    // which only differs above 2^53 bytes.
    if !number.contains('.') {
        let value: u64 = number.parse().map_err(|_| too_large())?;
        return value.checked_mul(multiplier).ok_or_else(too_large);
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("cannot parse size {s:?}: malformed number {number:?}"))?;
    let bytes = value * multiplier as f64;
    if bytes >= u64::MAX as f64 {
        return Err(too_large());
    }
    // Truncation toward zero, like Go's uint64(float64).
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    const GIB: u64 = 1 << 30;

    #[test]
    fn accepts_what_go_humanize_accepts() {
        let cases: &[(&str, u64)] = &[
            ("50GB", 50_000_000_000),
            ("512MB", 512_000_000),
            ("1.5TB", 1_500_000_000_000),
            ("10GiB", 10 * GIB),
            ("100", 100),
            ("0", 0),
            ("1KiB", 1024),
            ("1KB", 1000),
            ("42B", 42),
            // Case-insensitive, bare unit letters, spaces before the unit.
            ("50gb", 50_000_000_000),
            ("10gib", 10 * GIB),
            ("10GIB", 10 * GIB),
            ("42 MB", 42_000_000),
            ("42 mib", 42 * (1 << 20)),
            ("42M", 42_000_000),
            ("42mi", 42 * (1 << 20)),
            ("1g", 1_000_000_000),
            ("1Gi", GIB),
            ("2T", 2_000_000_000_000),
            ("1PB", 1_000_000_000_000_000),
            ("1EiB", 1 << 60),
            // Fractions truncate to whole bytes.
            ("42.5MB", 42_500_000),
            ("42.5MiB", 44_564_480),
            ("1.5B", 1),
            (".5KB", 500),
            ("1.KB", 1000),
            // Thousands separators (go-humanize bug #42).
            ("1,005.03 MB", 1_005_030_000),
            ("1,000", 1000),
        ];
        for &(input, want) in cases {
            assert_eq!(parse_size(input), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for input in [
            "", "GB", "50XB", "84 JB", "-5GB", "+5GB", "1.2.3GB", ".", "1e5", "0x10", "16EiB",
            "20EB", "ten", "5 G B",
        ] {
            let err = parse_size(input).expect_err(input);
            assert!(
                err.starts_with(&format!("cannot parse size {input:?}")),
                "{input:?}: {err}"
            );
        }
    }

    #[test]
    fn unknown_unit_is_named() {
        let err = parse_size("50XB").unwrap_err();
        assert!(err.contains(r#"unknown unit "XB""#), "{err}");
    }
}
