//! Just enough DER writing to wrap legacy private keys in PKCS#8.
//!
//! rcgen built on `ring` only reads PKCS#8 ("PRIVATE KEY"), but operators
//! commonly hold SEC1 ("EC PRIVATE KEY", RFC 5915) or PKCS#1 ("RSA PRIVATE
//! KEY", RFC 8017 appendix A.1.2) files. PKCS#8 (RFC 5958 section 2) is only
//! an envelope around those same structures plus an algorithm identifier,
//! so wrapping is lossless.

/// DER tags (X.690 section 8).
const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_SEQUENCE: u8 = 0x30;

/// AlgorithmIdentifier for rsaEncryption (RFC 8017 appendix C): OID
/// 1.2.840.113549.1.1.1 with NULL parameters.
const ALG_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// AlgorithmIdentifier contents for id-ecPublicKey (RFC 5480 section 2.1.1)
/// with the named curve prime256v1 (1.2.840.10045.3.1.7).
const ALG_EC_P256: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // id-ecPublicKey
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, // prime256v1
];

/// Same for secp384r1 (1.3.132.0.34).
const ALG_EC_P384: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // id-ecPublicKey
    0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, // secp384r1
];

/// Named curves a SEC1 key may be on, most common first.
pub(super) const EC_CURVES: &[(&str, &[u8])] = &[("P-256", ALG_EC_P256), ("P-384", ALG_EC_P384)];

/// Appends a DER tag-length-value.
fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        // Long form (X.690 section 8.1.3.5): 0x80 | number of length octets.
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

/// `PrivateKeyInfo ::= SEQUENCE { version 0, algorithm, privateKey OCTET STRING }`.
fn pkcs8(alg_contents: &[u8], inner_key: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(inner_key.len() + 32);
    tlv(&mut body, TAG_INTEGER, &[0]);
    tlv(&mut body, TAG_SEQUENCE, alg_contents);
    tlv(&mut body, TAG_OCTET_STRING, inner_key);
    let mut out = Vec::with_capacity(body.len() + 4);
    tlv(&mut out, TAG_SEQUENCE, &body);
    out
}

/// Wraps a PKCS#1 RSAPrivateKey in PKCS#8.
pub(super) fn pkcs8_from_pkcs1(rsa_private_key: &[u8]) -> Vec<u8> {
    pkcs8(ALG_RSA, rsa_private_key)
}

/// Wraps a SEC1 ECPrivateKey in PKCS#8 for the curve `alg` (from [`EC_CURVES`]).
pub(super) fn pkcs8_from_sec1(alg: &[u8], ec_private_key: &[u8]) -> Vec<u8> {
    pkcs8(alg, ec_private_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lengths() {
        let mut v = Vec::new();
        tlv(&mut v, 0x04, &[1, 2, 3]);
        assert_eq!(v, [0x04, 3, 1, 2, 3]);

        let mut v = Vec::new();
        tlv(&mut v, 0x04, &[0u8; 200]);
        assert_eq!(&v[..3], &[0x04, 0x81, 200]);
        assert_eq!(v.len(), 3 + 200);

        let mut v = Vec::new();
        tlv(&mut v, 0x04, &[0u8; 1200]);
        assert_eq!(&v[..4], &[0x04, 0x82, 0x04, 0xb0]);
    }

    #[test]
    fn pkcs8_envelope_layout() {
        let der = pkcs8_from_pkcs1(&[0xaa; 3]);
        // SEQUENCE { INTEGER 0, SEQUENCE { rsaEncryption, NULL }, OCTET STRING aa aa aa }
        let mut want = vec![0x30, 3 + 2 + ALG_RSA.len() as u8 + 5, 0x02, 0x01, 0x00];
        want.push(0x30);
        want.push(ALG_RSA.len() as u8);
        want.extend_from_slice(ALG_RSA);
        want.extend_from_slice(&[0x04, 3, 0xaa, 0xaa, 0xaa]);
        assert_eq!(der, want);
    }
}
