//! `GET /direct-connect?token=…` on a key's owner: the other end of direct-connect's 307
//! (made in `proxy::cached`), wire-compatible with the original's
//! (`internal/server/handle_direct_connect.go`). The token
//! ([`crate::cluster::token`]) names a key; the owner serves it from its disk like any
//! hit (zero-copy from the file, `Range` → 206 and `If-Range` per RFC 9110 §14.2 and
//! §13.1.5, so a client resumes a cut download here), or, while a fill is still writing
//! it, read-while-write. Answers:
//! - 401 for a missing, malformed, forged (other secret), expired, not-yet-valid,
//!   wrong-issuer or wrong-audience token, with the reason on one line;
//! - 404 when no entry (nor fill) for the key is on this node, and without a cluster;
//! - 410 when the entry was replaced since the token was minted (ours: the token's
//!   validator claim differs from the entry's): that token will never serve again, the
//!   client goes back through the proxy (RFC 9110 §15.5.11);
//! - 200/206/304/416 with the stored head and body otherwise.

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use super::serve::{serve_entry, serve_fill, wait_for_head};
use super::{Outcome, ProxyError, Worker};
use crate::cache::key::key_hash;
use crate::cache::meta::EntryMeta;
use crate::cluster::token;
use crate::http::{Headers, RequestHead, ResponseHead, Version};
use crate::proxy::Op;
use crate::stream::BufConn;

/// Serves one `GET /direct-connect` (the dispatch checked method and path).
pub async fn handle<S: AsyncReadRent + AsyncWriteRent>(
    conn: &mut BufConn<S>,
    head: RequestHead,
    w: &Worker,
) -> Outcome {
    let refuse = |status: u16, reason: String| Outcome::Failed {
        error: ProxyError::DirectConnect(status, reason),
        close: false,
        op: Op::DirectConnect,
    };
    let Some(cluster) = &w.cluster else {
        let msg = "direct connect request received, but cluster mode is not configured";
        return refuse(404, msg.into());
    };
    let Some(tok) = token_of(&head.target).filter(|t| !t.is_empty()) else {
        return refuse(401, "direct connect token is missing or is empty".into());
    };
    let grant = match token::verify(&cluster.secret, tok) {
        Ok(g) => g,
        Err(reason) => return refuse(401, reason),
    };
    let Some(store) = &w.store else {
        return refuse(404, format!("no cache entry found for key {}", grant.key));
    };
    let hash = key_hash(&grant.key);
    // The entry is served as stored: the 304 that validated it went to the node that
    // minted the token, moments ago.
    let not_modified = ResponseHead {
        version: Version::Http11,
        status: 304,
        reason: String::new(),
        headers: Headers::default(),
    };
    let out = if let Some(open) = w.open_entries.lookup(store, hash, &grant.key).await {
        if let Err(reason) = bound(&grant, &open.entry.meta) {
            return refuse(410, reason);
        }
        serve_entry(conn, &head, open, &not_modified, w).await
    } else {
        // A fill still writing the key (the minting node saw it through a KV GET).
        let fill = store.fills.get(hash).filter(|f| f.key == grant.key);
        let Some((fill, info)) = (match fill {
            Some(f) => wait_for_head(&f, w).await.map(|i| (f, i)),
            None => None,
        }) else {
            return refuse(404, format!("no cache entry found for key {}", grant.key));
        };
        if let Err(reason) = bound(&grant, &info.meta) {
            return refuse(410, reason);
        }
        serve_fill(conn, &head, &fill, &info, &not_modified, w).await
    };
    as_direct_connect(out)
}

/// Whether the entry is the one the token was minted for. A token of the original's
/// (no validator claim) is bound to its key only, as there.
fn bound(grant: &token::Grant, meta: &EntryMeta) -> Result<(), String> {
    match &grant.validator {
        Some(v) if *v != token::validator_of(meta) => Err(format!(
            "the entry for key {} was replaced since this direct connect token was issued",
            grant.key
        )),
        _ => Ok(()),
    }
}

/// The `token` query parameter of an origin-form target (a JWT is base64url and dots:
/// nothing in it is percent-encoded).
fn token_of(target: &str) -> Option<&str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .find_map(|p| p.strip_prefix(token::QUERY_PARAM)?.strip_prefix('='))
}

/// Logs and counts what the serving functions did as a direct-connect answer.
fn as_direct_connect(out: Outcome) -> Outcome {
    match out {
        Outcome::Done(mut ex) => {
            ex.op = Op::DirectConnect;
            Outcome::Done(ex)
        }
        Outcome::Failed { error, close, .. } => Outcome::Failed {
            error,
            close,
            op: Op::DirectConnect,
        },
        Outcome::Aborted {
            status,
            bytes,
            reason,
            ..
        } => Outcome::aborted(status, bytes, Op::DirectConnect, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::token_of;

    #[test]
    fn token_parameter() {
        assert_eq!(token_of("/direct-connect?token=a.b.c"), Some("a.b.c"));
        assert_eq!(token_of("/direct-connect?x=1&token=a.b&y"), Some("a.b"));
        assert_eq!(token_of("/direct-connect?tokens=a"), None);
        assert_eq!(token_of("/direct-connect"), None);
        assert_eq!(token_of("/direct-connect?token="), Some(""));
    }
}
