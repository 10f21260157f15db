//! The KV protocol's authentication: HTTP Basic (RFC 7617) with an empty user name and
//! the cluster secret as password, as the original's client sends it
//! (`SetBasicAuth("", secret)`) and its server checks it (`BasicAuth()` then
//! `subtle.ConstantTimeCompare`).

use subtle::ConstantTimeEq;

use crate::access::basic;

/// The `Authorization` field value a node sends to its peers.
pub fn header_value(secret: &str) -> String {
    basic::header_value("", secret)
}

/// The password of a `Basic` credential (RFC 7617 §2); `None` when the field is not one.
pub fn basic_password(value: &[u8]) -> Option<Vec<u8>> {
    basic::credentials(value).map(|c| c.password().to_vec())
}

/// Compares in time that does not depend on where the bytes first differ (so the secret
/// cannot be guessed byte by byte from response times): `subtle`'s `ct_eq`, as Go's
/// `subtle.ConstantTimeCompare` that the original uses. Only a length mismatch returns
/// early, which tells nothing about the bytes.
pub fn constant_time_eq(provided: &[u8], secret: &[u8]) -> bool {
    bool::from(provided.ct_eq(secret))
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
    use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};

    #[test]
    fn accepts_what_the_original_client_sends() {
        let v = header_value("s3cret");
        assert_eq!(v, "Basic OnMzY3JldA==");
        assert!(authorized(Some(v.as_bytes()), "s3cret"));
        // A user name is ignored, like Go's BasicAuth; scheme case does not matter.
        let with_user = format!("basic {}", BASE64.encode(b"node:s3cret"));
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
        let no_colon = format!("Basic {}", BASE64.encode(b"s3cret"));
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
