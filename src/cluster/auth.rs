//! The KV protocol's authentication: HTTP Basic (RFC 7617) with an empty user name and
//! the cluster secret as password, as the original's client sends it
//! (`SetBasicAuth("", secret)`) and its server checks it (`BasicAuth()` then
//! `subtle.ConstantTimeCompare`).

use super::base64;

/// The `Authorization` field value a node sends to its peers.
pub fn header_value(secret: &str) -> String {
    format!("Basic {}", base64::encode(format!(":{secret}").as_bytes()))
}

/// The password of a `Basic` credential (RFC 7617 §2: scheme case-insensitive, then
/// `base64(user ":" password)`); `None` when the field is not one.
pub fn basic_password(value: &[u8]) -> Option<Vec<u8>> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::decode(rest.trim_ascii()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// Compares in time that depends only on `provided`'s length, never on where the bytes
/// first differ (so the secret cannot be guessed byte by byte from response times).
pub fn constant_time_eq(provided: &[u8], secret: &[u8]) -> bool {
    let mut diff = (provided.len() != secret.len()) as u8;
    for (i, &b) in provided.iter().enumerate() {
        let s = if secret.is_empty() {
            0
        } else {
            secret[i % secret.len()]
        };
        diff |= b ^ s;
    }
    std::hint::black_box(diff) == 0
}

/// Whether an `Authorization` field carries `secret`.
pub fn authorized(field: Option<&[u8]>, secret: &str) -> bool {
    field
        .and_then(basic_password)
        .is_some_and(|p| constant_time_eq(&p, secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_the_original_client_sends() {
        let v = header_value("s3cret");
        assert_eq!(v, "Basic OnMzY3JldA==");
        assert!(authorized(Some(v.as_bytes()), "s3cret"));
        // A user name is ignored, like Go's BasicAuth; scheme case does not matter.
        let with_user = format!("basic {}", base64::encode(b"node:s3cret"));
        assert!(authorized(Some(with_user.as_bytes()), "s3cret"));
    }

    #[test]
    fn refuses_wrong_missing_or_malformed_credentials() {
        assert!(!authorized(None, "s3cret"));
        assert!(!authorized(
            Some(header_value("wrong").as_bytes()),
            "s3cret"
        ));
        assert!(!authorized(
            Some(header_value("s3cret-").as_bytes()),
            "s3cret"
        ));
        assert!(!authorized(
            Some(header_value("s3cre").as_bytes()),
            "s3cret"
        ));
        assert!(!authorized(Some(header_value("").as_bytes()), "s3cret"));
        assert!(!authorized(Some(b"Bearer OnMzY3JldA=="), "s3cret"));
        assert!(!authorized(Some(b"Basic"), "s3cret"));
        assert!(!authorized(Some(b"Basic !!!!"), "s3cret"));
        // No colon: not a Basic credential.
        let no_colon = format!("Basic {}", base64::encode(b"s3cret"));
        assert!(!authorized(Some(no_colon.as_bytes()), "s3cret"));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcabc", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(constant_time_eq(b"", b""));
    }
}
