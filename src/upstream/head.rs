//! Reading a response head from an origin or peer connection: one set of rules for
//! interim (1xx) responses, shared by the origin client and the KV client.

use std::time::{Duration, Instant};

use super::{UpStream, UpstreamError};
use crate::http::{parse_response, Parsed, ResponseHead, MAX_HEAD_BYTES};
use crate::stream::BufConn;

/// What to do with an interim response (RFC 9110 §15.2). chacha never sends `Upgrade`
/// (it is hop-by-hop and stripped, RFC 9110 §7.6.1), so a `101 Switching Protocols` is
/// never an answer to its request (RFC 9110 §15.2.2: a server only switches when asked),
/// nor is any interim status whose meaning we do not know: its bytes after the head
/// could be anything. Only `100 Continue` (§15.2.1) and `103 Early Hints` (RFC 8297)
/// are skipped.
pub fn check_interim(status: u16) -> Result<(), UpstreamError> {
    match status {
        100 | 103 => Ok(()),
        101 => Err(UpstreamError::Protocol(
            "unsolicited 101 Switching Protocols (no upgrade was requested)".into(),
        )),
        s => Err(UpstreamError::Protocol(format!(
            "unexpected interim response {s}"
        ))),
    }
}

/// Reads a final response head before `deadline` (`limit` names it in the timeout
/// error), skipping 100 and 103 and refusing other 1xx ([`check_interim`]). `received`
/// tells whether any byte arrived (a reused connection that closes before any byte is
/// retried by the caller). The connection's body-read timeout is suspended meanwhile:
/// the head has its own deadline.
pub async fn read_final_head(
    up: &mut BufConn<UpStream>,
    deadline: Instant,
    limit: Duration,
    received: &mut bool,
) -> Result<ResponseHead, UpstreamError> {
    let body_timeout = up.io.read_timeout();
    up.io.set_read_timeout(None);
    let result = read_head_inner(up, deadline, limit, received).await;
    up.io.set_read_timeout(body_timeout);
    result
}

async fn read_head_inner(
    up: &mut BufConn<UpStream>,
    deadline: Instant,
    limit: Duration,
    received: &mut bool,
) -> Result<ResponseHead, UpstreamError> {
    loop {
        if !up.buffered().is_empty() {
            *received = true;
            match parse_response(up.buffered()) {
                Ok(Parsed::Complete(head, n)) => {
                    up.consume(n);
                    if (100..200).contains(&head.status) {
                        check_interim(head.status)?;
                        continue;
                    }
                    return Ok(head);
                }
                Ok(Parsed::Partial) if up.buffered().len() > MAX_HEAD_BYTES => {
                    return Err(UpstreamError::Protocol("response head too large".into()))
                }
                Ok(Parsed::Partial) => {}
                Err(e) => return Err(UpstreamError::Protocol(e.to_string())),
            }
        }
        match monoio::time::timeout_at(deadline.into(), up.fill()).await {
            Err(_) => return Err(UpstreamError::HeadTimeout(limit)),
            Ok(Ok(0)) => return Err(UpstreamError::Closed("end of stream".into())),
            Ok(Err(e)) => return Err(UpstreamError::Closed(e.to_string())),
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interim_rules() {
        assert!(check_interim(100).is_ok());
        assert!(check_interim(103).is_ok());
        for s in [101, 102, 104, 150, 199] {
            assert!(
                matches!(check_interim(s), Err(UpstreamError::Protocol(_))),
                "{s}"
            );
        }
    }
}
