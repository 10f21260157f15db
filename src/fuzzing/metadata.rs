use crate::cache::meta::EntryMeta;
use crate::cluster::metadata::Metadata;
use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};

// KV metadata (X-Chacha-Metadata: base64 of JSON)

/// `Metadata::decode`, on the input as the field value and on base64 of the input (so the
/// fuzzer reaches the JSON decoder with JSON):
/// * base64 is strict: any text it accepts is the canonical encoding of what it decoded;
/// * round trip: decode(encode(m)) == m for every m that decodes;
/// * bounds: the decoded strings together are no longer than the JSON they came from,
///   and there are at most one header per 7 bytes of it (`["",""]`);
/// * the entry a non-owner rebuilds from it is stable: describing that entry again and
///   rebuilding gives the same entry (status, headers byte for byte, ETag);
/// * a stored response described, encoded, decoded and rebuilt is the same response.
pub fn kv_metadata(data: &[u8]) {
    check_base64(data);
    check_metadata_field(data);
    check_metadata_field(BASE64.encode(data).as_bytes());
    check_entry_round_trip(data);
}

/// A stored response built from the input (fields separated by NUL bytes: name, value,
/// name, value, ...) travels to a non-owner exactly: every header value byte for byte
/// (RFC 9110 §5.5 allows obs-text), the status, the ETag. Fields a stricter decoder may
/// refuse are skipped; valid ones must be accepted.
fn check_entry_round_trip(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0);
    // A final status (200–599): the decoder refuses others (a stored response is never 1xx).
    let status =
        200 + (u16::from(data.first().copied().unwrap_or(0)) + data.len() as u16 % 7) % 400;
    let mut headers = Vec::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        headers.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    let entry = EntryMeta {
        key: "http://o/x".into(),
        status,
        headers,
        ..Default::default()
    };
    let field = Metadata::of_entry(&entry).encode();
    match Metadata::decode(field.as_bytes()) {
        Ok(md) => assert_eq!(md.to_entry(entry.key.clone()), entry),
        Err(why) => assert!(!valid_fields(&entry.headers), "valid fields refused: {why}"),
    }
}

/// Field names are tokens, values field-vchar, SP and HTAB without surrounding
/// whitespace (RFC 9110 §5.1, §5.5).
fn valid_fields(fields: &[(String, Vec<u8>)]) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let vchar = |b: &u8| matches!(b, 0x21..=0x7e | 0x80..=0xff);
    fields.iter().all(|(name, value)| {
        !name.is_empty()
            && name.bytes().all(tchar)
            && value.iter().all(|b| vchar(b) || matches!(b, b' ' | b'\t'))
            && value.first().is_none_or(vchar)
            && value.last().is_none_or(vchar)
    })
}

fn check_base64(text: &[u8]) {
    if let Ok(bytes) = BASE64.decode(text) {
        assert_eq!(BASE64.encode(&bytes).as_bytes(), text, "not canonical");
    }
}

fn check_metadata_field(field: &[u8]) {
    let md = match Metadata::decode(field) {
        Ok(md) => md,
        Err(why) => {
            assert!(
                why.starts_with("X-Chacha-Metadata: ") && !why.contains('\n'),
                "{why:?}"
            );
            return;
        }
    };
    let json = BASE64
        .decode(field.trim_ascii())
        .expect("decoded from valid base64");
    let text: usize = md.etag.len()
        + md.headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>();
    assert!(
        text <= json.len(),
        "{text} bytes of text from {}",
        json.len()
    );
    assert!(
        md.headers.len() * 7 <= json.len(),
        "{} headers",
        md.headers.len()
    );
    let encoded = md.encode();
    assert_eq!(Metadata::decode(encoded.as_bytes()), Ok(md.clone()));
    let entry = md.to_entry("k".into());
    assert_eq!(entry.status, md.status.unwrap_or(200));
    if !md.etag.is_empty() {
        assert!(
            entry
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("etag")),
            "ETag lost"
        );
    }
    assert_eq!(Metadata::of_entry(&entry).to_entry("k".into()), entry);
}
