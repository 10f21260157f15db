//! `X-Chacha-Metadata`: base64 of a JSON object describing a KV entry. The original
//! (`internal/cache/cache.go`) defines only `{"etag": "..."}` (omitted when empty); Go's
//! decoder ignores unknown fields, so ours adds what a non-owner needs to rebuild the
//! full response: `status` and the stored `headers` as `[name, value]` pairs. Header
//! values are bytes; they travel as JSON strings with one char per byte (Latin-1), so
//! any value round-trips exactly.

use serde::{Deserialize, Serialize};

use crate::cache::meta::EntryMeta;
use crate::http::field;
use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};

/// The JSON object of `X-Chacha-Metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The stored `ETag` field value (quotes included), as the original's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub etag: String,
    /// Ours: the stored status (200 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Ours: the stored header fields, Latin-1 encoded values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// The inverse of [`latin1`]; a char above U+00FF (not written by us) keeps its UTF-8.
fn from_latin1(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match u8::try_from(c as u32) {
            Ok(b) => out.push(b),
            Err(_) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

impl Metadata {
    /// Describes a stored response (its key travels separately, in `X-Chacha-Key`).
    pub fn of_entry(meta: &EntryMeta) -> Metadata {
        let etag = meta
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("etag"))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .unwrap_or("")
            .trim()
            .to_string();
        Metadata {
            etag,
            status: Some(meta.status),
            headers: meta
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), latin1(v)))
                .collect(),
        }
    }

    /// The entry to store for `key`. An entry written by the original's client carries
    /// only an ETag: it becomes a 200 with that one field.
    pub fn to_entry(&self, key: String) -> EntryMeta {
        let mut headers: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), from_latin1(v)))
            .collect();
        if !self.etag.is_empty() && !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("etag")) {
            headers.push(("ETag".to_string(), self.etag.clone().into_bytes()));
        }
        EntryMeta {
            key,
            status: self.status.unwrap_or(200),
            headers,
            ..Default::default()
        }
    }

    /// The `X-Chacha-Metadata` field value.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("metadata serialises");
        BASE64.encode(&json)
    }

    /// Parses an `X-Chacha-Metadata` field value. Its header fields are replayed verbatim
    /// to every client served the entry, so each name must be a token (RFC 9110 §5.1) and
    /// each value, the ETag included, a field-value (§5.5: no CR, LF, NUL or other
    /// control); the status must be a final status code (RFC 9110 §15). Anything else is an
    /// error: a KV PUT gets 400 and nothing is stored, a KV GET answer is unusable.
    pub fn decode(field: &[u8]) -> Result<Metadata, String> {
        let json = BASE64
            .decode(field.trim_ascii())
            .map_err(|e| format!("X-Chacha-Metadata: {e}"))?;
        let md: Metadata =
            serde_json::from_slice(&json).map_err(|e| format!("X-Chacha-Metadata: {e}"))?;
        md.validate()
            .map_err(|e| format!("X-Chacha-Metadata: {e}"))?;
        Ok(md)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(status) = self.status {
            if !(200..=599).contains(&status) {
                return Err(format!("invalid status {status}"));
            }
        }
        let values: Vec<Vec<u8>> = self.headers.iter().map(|(_, v)| from_latin1(v)).collect();
        let etag = ("ETag", self.etag.as_bytes());
        let fields = self.headers.iter().zip(&values);
        field::check_fields(
            std::iter::once(etag).chain(fields.map(|((n, _), v)| (n.as_str(), v.as_slice()))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_the_originals_shape() {
        // Go: json.Marshal(cache.Metadata{ETag: "\"abc\""}), base64.StdEncoding.
        let go = BASE64.encode(br#"{"etag":"\"abc\""}"#);
        let md = Metadata::decode(go.as_bytes()).unwrap();
        assert_eq!(md.etag, "\"abc\"");
        let entry = md.to_entry("k".into());
        assert_eq!(entry.status, 200);
        assert_eq!(entry.headers, vec![("ETag".into(), b"\"abc\"".to_vec())]);
        // Empty ETag is omitted, like `omitempty`.
        assert_eq!(
            BASE64
                .decode(Metadata::default().encode().as_bytes())
                .unwrap(),
            b"{}"
        );
        // Unknown fields are ignored, as Go's decoder does.
        let extra = BASE64.encode(br#"{"etag":"x","future":[1,{"a":null}]}"#);
        assert_eq!(Metadata::decode(extra.as_bytes()).unwrap().etag, "x");
    }

    #[test]
    fn round_trips_a_stored_response_exactly() {
        let meta = EntryMeta {
            key: "http://o/x".into(),
            status: 200,
            headers: vec![
                ("ETag".into(), b"\"v1\"".to_vec()),
                ("Content-Type".into(), b"text/plain".to_vec()),
                ("X-Bytes".into(), vec![0x80, 0xff, b'"', b'\\', 0xc3, 0xa9]),
            ],
            ..Default::default()
        };
        let md = Metadata::decode(Metadata::of_entry(&meta).encode().as_bytes()).unwrap();
        assert_eq!(md.etag, "\"v1\"");
        assert_eq!(md.to_entry(meta.key.clone()), meta);
    }

    #[test]
    fn refuses_malformed_fields() {
        assert!(Metadata::decode(b"not base64!").is_err());
        assert!(Metadata::decode(BASE64.encode(b"{").as_bytes()).is_err());
        assert!(Metadata::decode(BASE64.encode(br#"{"etag":5}"#).as_bytes()).is_err());
    }

    #[test]
    fn refuses_fields_that_would_split_a_response() {
        let decode = |json: &str| Metadata::decode(BASE64.encode(json.as_bytes()).as_bytes());
        let cases = [
            (
                r#"{"etag":"\"v\"","headers":[["X-A","1"]],"status":200}"#,
                true,
            ),
            (
                r#"{"headers":[["X-A","1\r\nSet-Cookie: injected=1"]]}"#,
                false,
            ),
            (r#"{"headers":[["X-A","1\nb"]]}"#, false),
            (r#"{"headers":[["X-A","\u0000"]]}"#, false),
            (r#"{"headers":[["X-A\r\nSet-Cookie","1"]]}"#, false),
            (r#"{"headers":[["Bad Name","1"]]}"#, false),
            (r#"{"headers":[["","1"]]}"#, false),
            (r#"{"etag":"\"v\"\r\nSet-Cookie: injected=1"}"#, false),
            (r#"{"headers":[["X-A","caf\u00e9"]]}"#, true),
            (r#"{"status":99}"#, false),
            (r#"{"status":600}"#, false),
            (r#"{"status":404}"#, true),
        ];
        for (json, ok) in cases {
            assert_eq!(decode(json).is_ok(), ok, "{json}: {:?}", decode(json));
        }
    }
}
