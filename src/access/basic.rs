//! The `Basic` authentication scheme (RFC 7617), as `Authorization` (the KV protocol) and
//! `Proxy-Authorization` (RFC 9110 §11.7.1) carry it.

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};

/// The decoded `user ":" password` of a `Basic` credential (RFC 7617 §2: the scheme is
/// case-insensitive, then one or more spaces and the base64 token68); `None` when the
/// field is not one or has no colon. `user` is everything before the first colon
/// (RFC 7617 §2: a user-id cannot contain one), the password everything after it.
pub fn credentials(value: &[u8]) -> Option<Credentials> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = BASE64.decode(rest.trim_ascii()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(Credentials { decoded, colon })
}

/// A decoded `Basic` credential.
pub struct Credentials {
    /// `user ":" password` as sent.
    decoded: Vec<u8>,
    colon: usize,
}

impl Credentials {
    pub fn user(&self) -> &[u8] {
        &self.decoded[..self.colon]
    }

    pub fn password(&self) -> &[u8] {
        &self.decoded[self.colon + 1..]
    }

    /// `user ":" password`, as sent.
    pub fn as_bytes(&self) -> &[u8] {
        &self.decoded
    }
}

/// The `Authorization`/`Proxy-Authorization` value for `user` and `password`.
pub fn header_value(user: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:{password}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_user_and_password() {
        // RFC 7617 §2's example.
        let c = credentials(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==").unwrap();
        assert_eq!(c.user(), b"Aladdin");
        assert_eq!(c.password(), b"open sesame");
        assert_eq!(
            header_value("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        // The password may hold colons; the scheme is case-insensitive.
        let c =
            credentials(format!("bAsIc  {}", &header_value("u", "a:b")[6..]).as_bytes()).unwrap();
        assert_eq!((c.user(), c.password()), (&b"u"[..], &b"a:b"[..]));
    }

    #[test]
    fn refuses_what_is_not_a_basic_credential() {
        for bad in [
            &b""[..],
            b"Basic",
            b"Basic ",
            b"Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
            b"Basic !!!!",
            // base64 is strict (RFC 4648 §3.5 canonical: no bits past the data, padding
            // only at the end), as Go's StdEncoding that the original decodes with.
            b"Basic Zh==",
            b"Basic Zg",
            b"Basic Zg==Zg==",
            // "s3cret": no colon.
            b"Basic czNjcmV0",
        ] {
            assert!(
                credentials(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
