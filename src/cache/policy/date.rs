//! HTTP-date parsing (RFC 9110 §5.6.7), for If-Modified-Since against Last-Modified.

const SECONDS_PER_DAY: i64 = 86_400;
/// RFC 850 two-digit years below this are 20xx, the rest 19xx. RFC 9110 §5.6.7 asks for
/// "not more than 50 years in the future", which needs the clock; a fixed pivot keeps this
/// pure and only misreads dates older than 1970 or after 2069.
const RFC850_CENTURY_PIVOT: i64 = 70;
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const DAY_NAMES_LONG: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Seconds since the Unix epoch of an HTTP-date (RFC 9110 §5.6.7) in any of its three
/// forms: IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, RFC 850
/// `Sunday, 06-Nov-94 08:49:37 GMT`, asctime `Sun Nov  6 08:49:37 1994`.
/// The day name is checked to be one, not to agree with the date.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Some((day_name, rest)) = s.split_once(',') {
        let parts: Vec<&str> = rest.split_ascii_whitespace().collect();
        match parts.as_slice() {
            [day, month, year, time, "GMT"] if DAY_NAMES.contains(&day_name) => {
                date_time(year, month, day, time)
            }
            [date, time, "GMT"] if DAY_NAMES_LONG.contains(&day_name) => {
                let mut date = date.split('-');
                let (Some(day), Some(month), Some(yy), None) =
                    (date.next(), date.next(), date.next(), date.next())
                else {
                    return None;
                };
                if yy.len() != 2 {
                    return None;
                }
                let yy: i64 = digits(yy)?;
                let year = if yy < RFC850_CENTURY_PIVOT {
                    2000 + yy
                } else {
                    1900 + yy
                };
                date_time(&year.to_string(), month, day, time)
            }
            _ => None,
        }
    } else {
        match s.split_ascii_whitespace().collect::<Vec<_>>().as_slice() {
            [day_name, month, day, time, year] if DAY_NAMES.contains(day_name) => {
                date_time(year, month, day, time)
            }
            _ => None,
        }
    }
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn date_time(year: &str, month: &str, day: &str, time: &str) -> Option<i64> {
    if year.len() != 4 || !(1..=2).contains(&day.len()) {
        return None;
    }
    let year = digits(year)?;
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let day = digits(day)?;
    let mut hms = time.split(':');
    let (Some(h), Some(m), Some(sec), None) = (hms.next(), hms.next(), hms.next(), hms.next())
    else {
        return None;
    };
    if h.len() != 2 || m.len() != 2 || sec.len() != 2 {
        return None;
    }
    let (h, m, sec) = (digits(h)?, digits(m)?, digits(sec)?);
    // Seconds up to 60 for a leap second (RFC 5322 §3.3 via RFC 9110 §5.6.7).
    if day < 1 || day > days_in_month(year, month) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * SECONDS_PER_DAY + h * 3600 + m * 60 + sec)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_table() {
        // RFC 9110 §5.6.7's example instant.
        const T: i64 = 784_111_777;
        let cases: &[(&str, Option<i64>)] = &[
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(T)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", Some(T)),
            ("Sun Nov  6 08:49:37 1994", Some(T)),
            ("Sun Nov 06 08:49:37 1994", Some(T)),
            ("  Sun, 06 Nov 1994 08:49:37 GMT ", Some(T)),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(0)),
            ("Thursday, 01-Jan-70 00:00:00 GMT", Some(0)),
            ("Saturday, 01-Jan-00 00:00:00 GMT", Some(946_684_800)),
            ("Thu, 29 Feb 2024 12:00:00 GMT", Some(1_709_208_000)),
            ("Wed, 31 Dec 1969 23:59:59 GMT", Some(-1)),
            ("Sun, 06 Nov 1994 08:49:60 GMT", Some(T + 23)),
            ("Wed, 29 Feb 2023 12:00:00 GMT", None),
            ("Sun, 31 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 24:00:00 GMT", None),
            ("Sun, 06 Nov 1994 08:60:00 GMT", None),
            ("Sun, 06 Nov 94 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 08:49:37 UTC", None),
            ("Sun, 06 Nov 1994 08:49:37", None),
            ("Sun, 06 nov 1994 08:49:37 GMT", None),
            ("Sunday, 06 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06-Nov-94 08:49:37 GMT", None),
            ("Sunday, 06-Nov-1994 08:49:37 GMT", None),
            ("Sun Nov  6 08:49:37 94", None),
            ("Foo, 06 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 8:49:37 GMT", None),
            ("Sun, +6 Nov 1994 08:49:37 GMT", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_http_date(text), *want, "{text:?}");
        }
    }
}
