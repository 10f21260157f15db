//! Direct-connect tokens, wire-compatible with the original's
//! (`internal/server/handle_direct_connect.go`): a JWT (RFC 7519) signed with HS256
//! (RFC 7518 §3.2) under the cluster secret, with `iss` `chacha`, `aud`
//! `["direct-connect"]`, `sub` the cache key, `nbf` the minting time and `exp` ten
//! minutes later, checked with ten seconds of leeway. Ours adds one private claim,
//! [`VALIDATOR_CLAIM`]: the validator of the entry the token was minted for, so that
//! a replaced entry is never served under an old token. The original ignores claims
//! it does not know, and a token it minted (no such claim) is bound to its key only.
//!
//! Pure: minting and checking; the 307 is made in `proxy::cached`, the
//! `GET /direct-connect` answered in `proxy::direct_connect`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::cache::meta::EntryMeta;

pub const ISSUER: &str = "chacha";
pub const AUDIENCE: &str = "direct-connect";
/// How long a token is valid after it is minted.
pub const VALIDITY: Duration = Duration::from_secs(10 * 60);
/// Clock skew tolerated on `nbf` and `exp` between nodes.
pub const LEEWAY: Duration = Duration::from_secs(10);
/// Ours: the validator of the entry the token names (see [`validator_of`]).
pub const VALIDATOR_CLAIM: &str = "chacha-validator";
/// The path the owner serves tokens at, and the query parameter carrying one.
pub const PATH: &str = "/direct-connect";
pub const QUERY_PARAM: &str = "token";

/// The claims, in the order the original (golang-jwt's `RegisteredClaims`) writes them.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    /// The original writes an array; a single string is as valid (RFC 7519 §4.1.3).
    aud: serde_json::Value,
    exp: u64,
    nbf: u64,
    #[serde(
        rename = "chacha-validator",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    validator: Option<String>,
}

/// What a valid token grants: the key, and the entry validator it is bound to (`None`:
/// minted by the original, bound to the key only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key: String,
    pub validator: Option<String>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token for `key`'s entry of validator `validator`, valid from now for [`VALIDITY`].
pub fn mint(secret: &str, key: &str, validator: &str) -> String {
    mint_at(secret, key, Some(validator), now_secs())
}

/// [`mint`] at Unix time `now` (`validator` `None`: as the original mints).
pub fn mint_at(secret: &str, key: &str, validator: Option<&str>, now: u64) -> String {
    let claims = Claims {
        iss: ISSUER.to_string(),
        sub: key.to_string(),
        aud: serde_json::json!([AUDIENCE]),
        exp: now + VALIDITY.as_secs(),
        nbf: now,
        validator: validator.map(str::to_string),
    };
    // Header `{"typ":"JWT","alg":"HS256"}`; HMAC cannot fail on a byte key.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing does not fail")
}

/// Checks `token` against the cluster secret: HS256 only (`alg` `none` or any other
/// algorithm is refused), a valid signature, `iss`, `aud`, `sub`, `nbf` and `exp` (with
/// [`LEEWAY`]). The error is the 401's one-line reason.
pub fn verify(secret: &str, token: &str) -> Result<Grant, String> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = LEEWAY.as_secs();
    v.validate_nbf = true;
    v.validate_exp = true;
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    let data =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &v)
            .map_err(|e| {
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "expired".to_string(),
                    ErrorKind::ImmatureSignature => "not valid yet".to_string(),
                    ErrorKind::InvalidSignature => "signature mismatch".to_string(),
                    ErrorKind::InvalidAudience => "mismatched audience".to_string(),
                    ErrorKind::InvalidIssuer => "invalid issuer".to_string(),
                    ErrorKind::InvalidAlgorithm => {
                        "signing method not allowed (HS256 only)".to_string()
                    }
                    ErrorKind::MissingRequiredClaim(c) => format!("missing {c}"),
                    _ => e.to_string(),
                };
                format!("direct connect token is invalid: {why}")
            })?;
    if data.claims.sub.is_empty() {
        return Err("direct connect token is invalid: empty subject".into());
    }
    Ok(Grant {
        key: data.claims.sub,
        validator: data.claims.validator,
    })
}

/// The validator a token binds an entry by: its strong `ETag` when it has one (the same
/// strong ETag names the same bytes, RFC 9110 §8.8.1, so a refill of the same object
/// keeps its tokens valid), else a digest of its stored status and header fields (a
/// refill with any other field differs). A digest, so the token stays short.
pub fn validator_of(meta: &EntryMeta) -> String {
    let mut h = Xxh3::new();
    let etag = meta
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.trim_ascii())
        .filter(|v| !v.starts_with(b"W/"));
    match etag {
        Some(tag) => {
            h.update(b"etag\0");
            h.update(tag);
        }
        None => {
            h.update(b"head\0");
            h.update(&meta.status.to_be_bytes());
            for (n, v) in &meta.headers {
                h.update(n.to_ascii_lowercase().as_bytes());
                h.update(b"\0");
                h.update(v);
                h.update(b"\0");
            }
        }
    }
    format!("{:016x}", h.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_and_carry_the_validator() {
        let t = mint("s3cret", "https://h/blob", "abc");
        let g = verify("s3cret", &t).unwrap();
        assert_eq!(g.key, "https://h/blob");
        assert_eq!(g.validator.as_deref(), Some("abc"));
        assert!(verify("other", &t).unwrap_err().contains("signature"));
    }

    #[test]
    fn original_tokens_verify_unbound_and_time_is_checked() {
        let now = now_secs();
        let g = verify("s", &mint_at("s", "k", None, now)).unwrap();
        assert_eq!(g.validator, None);
        // Expired beyond the leeway; inside the leeway still fine.
        let old = now - VALIDITY.as_secs() - 60;
        assert!(verify("s", &mint_at("s", "k", None, old))
            .unwrap_err()
            .contains("expired"));
        let edge = now - VALIDITY.as_secs() - 5;
        assert!(verify("s", &mint_at("s", "k", None, edge)).is_ok());
        let future = now + 120;
        assert!(verify("s", &mint_at("s", "k", None, future))
            .unwrap_err()
            .contains("not valid yet"));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
        let now = now_secs();
        let claims = format!(
            r#"{{"iss":"chacha","sub":"k","aud":["direct-connect"],"exp":{},"nbf":{now}}}"#,
            now + 600
        );
        let t = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(claims)
        );
        assert!(verify("s", &t).is_err());
    }

    #[test]
    fn validator_prefers_a_strong_etag() {
        let mut a = EntryMeta {
            status: 200,
            headers: vec![
                ("ETag".into(), b"\"v1\"".to_vec()),
                ("Date".into(), b"x".to_vec()),
            ],
            ..Default::default()
        };
        let v1 = validator_of(&a);
        a.headers[1].1 = b"y".to_vec();
        assert_eq!(v1, validator_of(&a), "same strong ETag, same validator");
        a.headers[0].1 = b"\"v2\"".to_vec();
        assert_ne!(v1, validator_of(&a));
        a.headers[0].1 = b"W/\"v2\"".to_vec();
        let weak = validator_of(&a);
        a.headers[1].1 = b"z".to_vec();
        assert_ne!(weak, validator_of(&a), "no strong ETag: every field counts");
    }
}
