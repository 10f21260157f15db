//! Content integrity for OCI blobs: a URL whose path ends in `/blobs/sha256:<64 hex>`
//! names its own SHA-256 (OCI image spec, "Digests"); a fill of such a URL is hashed as
//! it streams and committed only if the digest matches.

use ring::digest::{Context, SHA256};

/// The SHA-256 a blob URL's path promises, if it is one.
pub fn expected_sha256(path_and_query: &str) -> Option<[u8; 32]> {
    let path = path_and_query.split(['?', '#']).next().unwrap_or("");
    let idx = path.rfind("/blobs/sha256:")?;
    let hex = &path[idx + "/blobs/sha256:".len()..];
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Hashes a body as it streams and compares it with the expected digest at the end.
pub struct Verifier {
    expected: [u8; 32],
    ctx: Context,
}

impl Verifier {
    pub fn new(expected: [u8; 32]) -> Self {
        Verifier {
            expected,
            ctx: Context::new(&SHA256),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    /// True when the bytes seen so far hash to the expected digest.
    pub fn matches(&self) -> bool {
        self.ctx.clone().finish().as_ref() == self.expected
    }
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn blob_urls() {
        let d = expected_sha256(&format!("/v2/a/b/blobs/sha256:{EMPTY}")).unwrap();
        assert_eq!(hex(&d), EMPTY);
        assert!(expected_sha256(&format!("/v2/a/b/blobs/sha256:{EMPTY}?x=1")).is_some());
        assert!(expected_sha256(&format!("/v2/a/b/manifests/sha256:{EMPTY}")).is_none());
        assert!(expected_sha256("/v2/a/b/blobs/sha256:abc").is_none());
        assert!(expected_sha256(&format!("/v2/a/b/blobs/sha256:{}", "g".repeat(64))).is_none());
        assert!(expected_sha256(&format!("/v2/a/b/blobs/sha256:{EMPTY}/x")).is_none());
    }

    #[test]
    fn verifier_checks_streamed_bytes() {
        let mut v = Verifier::new(expected_sha256(&format!("/blobs/sha256:{EMPTY}")).unwrap());
        assert!(v.matches());
        v.update(b"x");
        assert!(!v.matches());
        // sha256("abc") in two pieces
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let mut v = Verifier::new(expected_sha256(&format!("/blobs/sha256:{abc}")).unwrap());
        v.update(b"a");
        v.update(b"bc");
        assert!(v.matches());
    }
}
