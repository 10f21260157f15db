//! The KV protocol between nodes: how other nodes read and write the entries a node
//! owns. Wire-compatible with the original's (`internal/server/handle_kv.go`,
//! `internal/cache/kv`): origin-form requests to the node's own address,
//!
//! - `GET /` with `X-Chacha-Key: base64(key)` → `200` with
//!   `X-Chacha-Metadata: base64(JSON)` and the body, or `404`;
//! - `PUT /` with `X-Chacha-Key` and `X-Chacha-Metadata`, the body streamed in
//!   (Content-Length or chunked) → `200` once the entry is committed;
//!
//! both with `Authorization: Basic base64(":" + secret)`: `401` for a missing or wrong
//! secret (checked first, before anything touches the disk), `400` for malformed
//! headers. Ours in addition:
//!
//! - a GET of a key that is being filled (locally, or by another node's PUT) streams it
//!   read-while-write (chunked when its length is unknown);
//! - `X-Chacha-Fill: claim` on a GET miss registers a pending fill for the requester
//!   (answered `404` with `X-Chacha-Fill: claimed`): until its PUT arrives, other
//!   requests for the key wait for it instead of fetching the origin themselves;
//! - `DELETE /` drops the entry and any claim on the key (`200`, or `404` if there was
//!   neither);
//! - a PUT of a key that another fill is writing gets `409` (the body is not read; the
//!   connection closes): the entry being written is the same object.

//!
//! This module holds the protocol's names and rules; [`client`] is a non-owner's side
//! (requests to a key's owner, the health watch); the server side is the handler in
//! `proxy::kv`, which serves the owner's disk.

pub mod client;

use std::time::Duration;

use crate::config::Timeouts;
use crate::http::RequestHead;
use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};

pub const KEY_HEADER: &str = "X-Chacha-Key";
pub const METADATA_HEADER: &str = "X-Chacha-Metadata";
/// Ours: fill coordination between nodes (`claim` in a GET, `claimed` in its 404).
pub const FILL_HEADER: &str = "X-Chacha-Fill";
pub const FILL_CLAIM: &str = "claim";
pub const FILL_CLAIMED: &str = "claimed";
/// How long a claim outlives the longest origin exchange a claimant may wait for
/// (connect + upstream-head): past that the claimant is presumed dead.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(5);

/// Whether an origin-form request is for the KV protocol (in cluster mode). Like the
/// original, any GET other than `/health`, `/direct-connect` (and ours, `/metrics`) is a
/// KV GET, any PUT a KV PUT.
pub fn is_kv_request(head: &RequestHead) -> bool {
    let path = head.target.split('?').next().unwrap_or("");
    match head.method.as_str() {
        "GET" => path != "/health" && path != "/metrics" && path != super::token::PATH,
        "PUT" | "DELETE" => true,
        _ => false,
    }
}

/// How long a claim stays valid.
pub fn claim_ttl(timeouts: &Timeouts) -> Duration {
    timeouts.connect + timeouts.upstream_head + CLAIM_MARGIN
}

/// The key a KV request names (`X-Chacha-Key`, base64 of UTF-8); the error is the 400's
/// one-line reason.
pub fn key_of(head: &RequestHead) -> Result<String, String> {
    let Some(field) = head.headers.get(KEY_HEADER) else {
        return Err(format!(
            "failed to determine the key: no {KEY_HEADER} header"
        ));
    };
    let bytes = BASE64
        .decode(field.trim_ascii())
        .map_err(|e| format!("failed to determine the key: {KEY_HEADER}: {e}"))?;
    match String::from_utf8(bytes) {
        Ok(k) if !k.is_empty() => Ok(k),
        _ => Err(format!(
            "failed to determine the key: {KEY_HEADER} is empty or not UTF-8"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, Parsed};

    fn head(raw: &str) -> RequestHead {
        match parse_request(raw.as_bytes()) {
            Ok(Parsed::Complete(h, _)) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kv_requests_are_told_apart_from_health() {
        assert!(is_kv_request(&head("GET / HTTP/1.1\r\nHost: n\r\n\r\n")));
        assert!(is_kv_request(&head("PUT / HTTP/1.1\r\nHost: n\r\n\r\n")));
        assert!(is_kv_request(&head("DELETE / HTTP/1.1\r\nHost: n\r\n\r\n")));
        assert!(!is_kv_request(&head(
            "GET /health HTTP/1.1\r\nHost: n\r\n\r\n"
        )));
        assert!(!is_kv_request(&head("POST / HTTP/1.1\r\nHost: n\r\n\r\n")));
    }

    #[test]
    fn keys_must_be_base64_utf8_and_present() {
        let ok = head("GET / HTTP/1.1\r\nX-Chacha-Key: aHR0cDovL28veA==\r\n\r\n");
        assert_eq!(key_of(&ok).unwrap(), "http://o/x");
        for bad in [
            "",
            "X-Chacha-Key: \r\n",
            "X-Chacha-Key: !!\r\n",
            "X-Chacha-Key: /w==\r\n",
        ] {
            let h = head(&format!("GET / HTTP/1.1\r\n{bad}\r\n"));
            assert!(key_of(&h).is_err(), "{bad:?}");
        }
    }
}
