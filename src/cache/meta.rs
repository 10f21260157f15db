//! The on-disk format of one cache entry, and where entry files live. Pure: no I/O.
//!
//! # Directory layout
//!
//! ```text
//! <dir>/tmp/<hash>.<unique>.tmp   fills in progress (same filesystem, so rename is atomic)
//! <dir>/<hh>/<hash>               committed entries; <hh> = first two hex digits of <hash>
//! ```
//!
//! `<hash>` is the xxh3-64 hash of the cache key as 16 lowercase hex digits ([`file_name`]).
//! Names never contain the key itself (keys are URLs: arbitrary length and bytes). The
//! two-level fan-out (256 subdirectories) keeps directories small: a million entries are
//! ~4,000 per directory. A fill writes the whole file under `tmp/` and renames it into place
//! only when complete, so a reader never sees a half-written entry at an entry path.
//!
//! # Entry file layout
//!
//! ```text
//! offset 0   preamble (PREAMBLE_LEN = 20 bytes)
//!              magic        8 bytes  b"CHACHA\0" + format version byte (MAGIC)
//!              header_len   u32 LE   bytes of the header that follows the preamble
//!              body_offset  u64 LE   = round_up(PREAMBLE_LEN + header_len, BODY_ALIGN)
//! offset 20  header (header_len bytes)
//!              key_len u32 LE, key (UTF-8)
//!              status u16 LE
//!              header_count u32 LE, then per field:
//!                name_len u16 LE, name (UTF-8), value_len u32 LE, value (raw bytes)
//!              body_len u64 LE
//!              stored_at u64 LE (unix seconds)
//!              checksum u64 LE = xxh3-64 of every byte before it (preamble included)
//!            zero padding up to body_offset
//! body_offset  body (body_len bytes); the file is exactly body_offset + body_len long
//! ```
//!
//! The body starts on a 4 KiB boundary so body reads are page aligned (O_DIRECT-friendly and
//! no read straddles a page needlessly). The checksum covers the preamble too, so a corrupt
//! `body_offset` is detected; the body itself is not checksummed (it is large and streamed;
//! a torn body is caught by the file length check at startup).

use std::fmt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use crate::http::field;

/// Magic bytes; the last byte is the format version. Bump it on any layout change: old files
/// are then rejected (and deleted by the startup scan) instead of misread.
pub const MAGIC: [u8; 8] = *b"CHACHA\0\x01";
/// Format version written by this code (the last byte of [`MAGIC`]).
pub const FORMAT_VERSION: u8 = MAGIC[7];
/// Bytes before the header: magic, header_len (u32), body_offset (u64).
pub const PREAMBLE_LEN: usize = 8 + 4 + 8;
/// Alignment of the body offset (a page).
pub const BODY_ALIGN: u64 = 4096;
/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 16 * 1024;
/// Largest encoded header-field section (length prefixes included), in bytes.
pub const MAX_HEADERS_LEN: usize = 64 * 1024;
/// Largest header (after the preamble) that can be valid: key and fields at their bounds
/// plus the fixed-size fields.
pub const MAX_HEADER_LEN: usize = 4 + MAX_KEY_LEN + 2 + 4 + MAX_HEADERS_LEN + 8 + 8 + 8;
/// Largest prefix (preamble + header) that can be valid; [`decode_prefix`] never asks for more.
pub const MAX_PREFIX_LEN: usize = PREAMBLE_LEN + MAX_HEADER_LEN;
/// Name of the temp directory inside the cache dir.
pub const TMP_DIR: &str = "tmp";

/// Everything stored in an entry file before the body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryMeta {
    pub key: String,
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body_len: u64,
    /// Unix seconds when the response was stored.
    pub stored_at: u64,
}

/// Result of [`decode_prefix`] on a buffer that is not (yet) known to be bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The header is valid; the body starts at `body_offset` in the file.
    Complete { meta: EntryMeta, body_offset: u64 },
    /// The buffer is too short: read until it holds at least this many bytes in total
    /// (from offset 0) and call again. Never more than [`MAX_PREFIX_LEN`].
    NeedMore(usize),
}

/// Why an entry prefix was rejected (the file should be deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaError {
    BadMagic,
    UnsupportedVersion(u8),
    /// header_len out of bounds, or body_offset inconsistent with it.
    BadLength,
    BadChecksum,
    KeyTooLong(usize),
    HeadersTooLong(usize),
    /// A length or field inside the header runs past its end, or trailing bytes remain.
    Truncated,
    BadUtf8,
    /// A header field name that is not a token or a value with control characters
    /// (RFC 9110 §5.1, §5.5): serving it could split the response.
    BadField,
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::BadMagic => write!(f, "bad magic"),
            MetaError::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            MetaError::BadLength => write!(f, "bad header length or body offset"),
            MetaError::BadChecksum => write!(f, "header checksum mismatch"),
            MetaError::KeyTooLong(n) => write!(f, "key too long ({n} bytes, max {MAX_KEY_LEN})"),
            MetaError::HeadersTooLong(n) => {
                write!(f, "headers too long ({n} bytes, max {MAX_HEADERS_LEN})")
            }
            MetaError::Truncated => write!(f, "header fields overrun the header"),
            MetaError::BadUtf8 => write!(f, "key or header name is not UTF-8"),
            MetaError::BadField => write!(f, "invalid header field name or value"),
        }
    }
}

impl std::error::Error for MetaError {}

/// The cache-key hash that names entry files.
pub fn key_hash(key: &str) -> u64 {
    xxh3_64(key.as_bytes())
}

/// The file name of an entry: the hash as 16 lowercase hex digits.
pub fn file_name(hash: u64) -> String {
    format!("{hash:016x}")
}

/// The fan-out subdirectory of an entry: the first byte of the hash as 2 hex digits.
pub fn fanout_dir_name(hash: u64) -> String {
    format!("{:02x}", hash >> 56)
}

/// `dir/<hh>/<hash>`.
pub fn entry_path(dir: &Path, hash: u64) -> PathBuf {
    dir.join(fanout_dir_name(hash)).join(file_name(hash))
}

/// `dir/tmp/<hash>.<unique>.tmp`; `unique` tells concurrent fills of the same hash apart
/// (e.g. core id in the high bits and a per-core counter in the low bits).
pub fn temp_path(dir: &Path, hash: u64, unique: u64) -> PathBuf {
    dir.join(TMP_DIR)
        .join(format!("{}.{unique:016x}.tmp", file_name(hash)))
}

fn round_up(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

fn encoded_headers_len(headers: &[(String, Vec<u8>)]) -> usize {
    headers.iter().map(|(n, v)| 2 + n.len() + 4 + v.len()).sum()
}

impl EntryMeta {
    /// Checks the bounds [`decode_prefix`] enforces, so an encoded entry is readable again.
    /// Call before [`EntryMeta::encode`]; a response that fails it should not be cached.
    pub fn check_limits(&self) -> Result<(), MetaError> {
        if self.key.len() > MAX_KEY_LEN {
            return Err(MetaError::KeyTooLong(self.key.len()));
        }
        let hl = encoded_headers_len(&self.headers);
        if hl > MAX_HEADERS_LEN {
            return Err(MetaError::HeadersTooLong(hl));
        }
        if self
            .headers
            .iter()
            .any(|(n, v)| !field::is_field_name(n.as_bytes()) || !field::is_field_value(v))
        {
            return Err(MetaError::BadField);
        }
        // Per-field length prefixes: names use u16, values u32.
        if self
            .headers
            .iter()
            .any(|(n, v)| n.len() > u16::MAX as usize || v.len() > u32::MAX as usize)
        {
            return Err(MetaError::HeadersTooLong(hl));
        }
        Ok(())
    }

    /// The whole file prefix up to `body_offset`: preamble, header, checksum, zero padding.
    /// Its length is the body offset. Panics if [`EntryMeta::check_limits`] fails (the
    /// output would not be decodable).
    pub fn encode(&self) -> Vec<u8> {
        if let Err(e) = self.check_limits() {
            panic!("EntryMeta::encode: {e}");
        }
        let header_len =
            4 + self.key.len() + 2 + 4 + encoded_headers_len(&self.headers) + 8 + 8 + 8;
        let body_offset = round_up((PREAMBLE_LEN + header_len) as u64, BODY_ALIGN);
        let mut out = Vec::with_capacity(body_offset as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
        out.extend_from_slice(&body_offset.to_le_bytes());
        out.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in &self.headers {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.extend_from_slice(&self.stored_at.to_le_bytes());
        let checksum = xxh3_64(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        debug_assert_eq!(out.len(), PREAMBLE_LEN + header_len);
        out.resize(body_offset as usize, 0);
        out
    }

    /// The exact length of a complete entry file with this meta.
    pub fn expected_file_len(&self, body_offset: u64) -> u64 {
        body_offset + self.body_len
    }
}

/// A bounds-checked little-endian reader over the header bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MetaError> {
        let end = self.pos.checked_add(n).ok_or(MetaError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(MetaError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], MetaError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
    fn u16(&mut self) -> Result<u16, MetaError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, MetaError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, MetaError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn string(&mut self, n: usize) -> Result<String, MetaError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| MetaError::BadUtf8)
    }
}

/// Decodes the prefix of an entry file. `buf` is the file from offset 0; it may be shorter
/// than the prefix (→ [`Decoded::NeedMore`]) or longer (body bytes are ignored).
pub fn decode_prefix(buf: &[u8]) -> Result<Decoded, MetaError> {
    if buf.len() < PREAMBLE_LEN {
        // Reject garbage early when enough of the magic is present.
        if !MAGIC[..7].starts_with(&buf[..buf.len().min(7)]) {
            return Err(MetaError::BadMagic);
        }
        return Ok(Decoded::NeedMore(PREAMBLE_LEN));
    }
    if buf[..7] != MAGIC[..7] {
        return Err(MetaError::BadMagic);
    }
    if buf[7] != FORMAT_VERSION {
        return Err(MetaError::UnsupportedVersion(buf[7]));
    }
    let header_len = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")) as usize;
    let body_offset = u64::from_le_bytes(buf[12..20].try_into().expect("8 bytes"));
    // The smallest header: empty key, no fields.
    const MIN_HEADER_LEN: usize = 4 + 2 + 4 + 8 + 8 + 8;
    if !(MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&header_len)
        || body_offset != round_up((PREAMBLE_LEN + header_len) as u64, BODY_ALIGN)
    {
        return Err(MetaError::BadLength);
    }
    let prefix_len = PREAMBLE_LEN + header_len;
    if buf.len() < prefix_len {
        return Ok(Decoded::NeedMore(prefix_len));
    }
    let sum_at = prefix_len - 8;
    let stored = u64::from_le_bytes(buf[sum_at..prefix_len].try_into().expect("8 bytes"));
    if xxh3_64(&buf[..sum_at]) != stored {
        return Err(MetaError::BadChecksum);
    }

    let mut r = Reader {
        buf: &buf[PREAMBLE_LEN..sum_at],
        pos: 0,
    };
    let key_len = r.u32()? as usize;
    if key_len > MAX_KEY_LEN {
        return Err(MetaError::KeyTooLong(key_len));
    }
    let key = r.string(key_len)?;
    let status = r.u16()?;
    let count = r.u32()? as usize;
    let fields_start = r.pos;
    // Each field takes at least 6 bytes, so bound the allocation by what the buffer can hold.
    let mut headers = Vec::with_capacity(count.min(MAX_HEADERS_LEN / 6));
    for _ in 0..count {
        let name_len = r.u16()? as usize;
        let name = r.string(name_len)?;
        let value_len = r.u32()? as usize;
        let value = r.take(value_len)?.to_vec();
        // The fields are replayed verbatim: a file edited or damaged on disk (the checksum
        // is no signature) must not put CR/LF into a response.
        if !field::is_field_name(name.as_bytes()) || !field::is_field_value(&value) {
            return Err(MetaError::BadField);
        }
        headers.push((name, value));
        if r.pos - fields_start > MAX_HEADERS_LEN {
            return Err(MetaError::HeadersTooLong(r.pos - fields_start));
        }
    }
    let body_len = r.u64()?;
    let stored_at = r.u64()?;
    if r.pos != r.buf.len() {
        return Err(MetaError::Truncated);
    }
    // A body_len this large cannot be a real file; reject rather than overflow later.
    if body_offset.checked_add(body_len).is_none() {
        return Err(MetaError::BadLength);
    }
    Ok(Decoded::Complete {
        meta: EntryMeta {
            key,
            status,
            headers,
            body_len,
            stored_at,
        },
        body_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EntryMeta {
        EntryMeta {
            key: "http://example.com/a?b=c".into(),
            status: 200,
            headers: vec![
                ("Content-Type".into(), b"text/plain".to_vec()),
                ("X-Bin".into(), vec![0x80, 255, b'\t', b' ', b'"']),
                ("Empty".into(), vec![]),
            ],
            body_len: 12345,
            stored_at: 1_700_000_000,
        }
    }

    fn complete(buf: &[u8]) -> (EntryMeta, u64) {
        match decode_prefix(buf).unwrap() {
            Decoded::Complete { meta, body_offset } => (meta, body_offset),
            other => panic!("expected Complete, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_and_alignment() {
        let m = sample();
        let enc = m.encode();
        assert_eq!(enc.len() % BODY_ALIGN as usize, 0);
        assert_eq!(&enc[..8], &MAGIC);
        let (back, off) = complete(&enc);
        assert_eq!(back, m);
        assert_eq!(off, enc.len() as u64);
        assert_eq!(m.expected_file_len(off), enc.len() as u64 + 12345);
        // Trailing body bytes are ignored.
        let mut with_body = enc.clone();
        with_body.extend_from_slice(b"body bytes");
        assert_eq!(complete(&with_body).0, m);
    }

    #[test]
    fn empty_meta_round_trips() {
        let m = EntryMeta::default();
        let enc = m.encode();
        assert_eq!(enc.len(), BODY_ALIGN as usize);
        assert_eq!(complete(&enc).0, m);
    }

    #[test]
    fn large_header_spans_pages() {
        let mut m = sample();
        m.key = "k".repeat(MAX_KEY_LEN);
        m.headers = vec![("X".into(), vec![b'v'; MAX_HEADERS_LEN - 7])];
        m.check_limits().unwrap();
        let enc = m.encode();
        assert!(enc.len() > 4 * BODY_ALIGN as usize);
        assert_eq!(enc.len() % BODY_ALIGN as usize, 0);
        assert_eq!(complete(&enc).0, m);
    }

    #[test]
    fn need_more_for_every_short_prefix() {
        let enc = sample().encode();
        let header_end = PREAMBLE_LEN + u32::from_le_bytes(enc[8..12].try_into().unwrap()) as usize;
        for n in 0..header_end {
            match decode_prefix(&enc[..n]).unwrap() {
                Decoded::NeedMore(want) => {
                    assert!(want > n && want <= header_end, "n={n} want={want}");
                }
                other => panic!("n={n}: {other:?}"),
            }
        }
        complete(&enc[..header_end]);
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        let mut enc = sample().encode();
        assert_eq!(
            decode_prefix(b"GET / HTTP/1.1\r\n"),
            Err(MetaError::BadMagic)
        );
        assert_eq!(decode_prefix(b"CHX"), Err(MetaError::BadMagic));
        enc[7] = 2;
        assert_eq!(decode_prefix(&enc), Err(MetaError::UnsupportedVersion(2)));
        enc[7] = FORMAT_VERSION;
        enc[0] = b'c';
        assert_eq!(decode_prefix(&enc), Err(MetaError::BadMagic));
    }

    #[test]
    fn rejects_bad_lengths() {
        let enc = sample().encode();
        let mut huge = enc.clone();
        huge[8..12].copy_from_slice(&(MAX_HEADER_LEN as u32 + 1).to_le_bytes());
        assert_eq!(decode_prefix(&huge), Err(MetaError::BadLength));
        let mut tiny = enc.clone();
        tiny[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(decode_prefix(&tiny), Err(MetaError::BadLength));
        let mut off = enc.clone();
        off[12..20].copy_from_slice(&8192u64.to_le_bytes());
        assert_eq!(decode_prefix(&off), Err(MetaError::BadLength));
    }

    #[test]
    fn rejects_any_flipped_header_byte() {
        let enc = sample().encode();
        let header_end = PREAMBLE_LEN + u32::from_le_bytes(enc[8..12].try_into().unwrap()) as usize;
        for i in 0..header_end {
            let mut bad = enc.clone();
            bad[i] ^= 0x40;
            assert!(
                !matches!(decode_prefix(&bad), Ok(Decoded::Complete { .. })),
                "flip at {i} accepted"
            );
        }
    }

    /// Builds a prefix with a valid checksum around arbitrary header bytes, to reach the
    /// field-level checks behind the checksum.
    fn forge(header: &[u8]) -> Vec<u8> {
        let header_len = header.len() + 8;
        let body_offset = round_up((PREAMBLE_LEN + header_len) as u64, BODY_ALIGN);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
        out.extend_from_slice(&body_offset.to_le_bytes());
        out.extend_from_slice(header);
        let sum = xxh3_64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    #[test]
    fn rejects_forged_fields() {
        // Key length beyond the bound.
        let mut h = ((MAX_KEY_LEN + 1) as u32).to_le_bytes().to_vec();
        h.extend_from_slice(&[0; 40]);
        assert_eq!(
            decode_prefix(&forge(&h)),
            Err(MetaError::KeyTooLong(MAX_KEY_LEN + 1))
        );
        // Key length past the header end.
        let mut h = 100u32.to_le_bytes().to_vec();
        h.extend_from_slice(&[b'a'; 30]);
        assert_eq!(decode_prefix(&forge(&h)), Err(MetaError::Truncated));
        // Non-UTF-8 key.
        let mut h = 2u32.to_le_bytes().to_vec();
        h.extend_from_slice(&[0xff, 0xfe]);
        h.extend_from_slice(&[0; 30]);
        assert_eq!(decode_prefix(&forge(&h)), Err(MetaError::BadUtf8));
        // A huge field count with too few bytes.
        let mut h = 0u32.to_le_bytes().to_vec();
        h.extend_from_slice(&200u16.to_le_bytes());
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(b"a");
        h.extend_from_slice(&20u32.to_le_bytes());
        h.extend_from_slice(&[b'v'; 20]);
        assert_eq!(decode_prefix(&forge(&h)), Err(MetaError::Truncated));
        // Trailing bytes after stored_at.
        let mut h = 0u32.to_le_bytes().to_vec();
        h.extend_from_slice(&200u16.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&[0; 17]);
        assert_eq!(decode_prefix(&forge(&h)), Err(MetaError::Truncated));
        // The same without the trailing byte is valid.
        h.pop();
        assert!(matches!(
            decode_prefix(&forge(&h)),
            Ok(Decoded::Complete { .. })
        ));
    }

    /// A forged header with one field `name: value` behind a valid checksum.
    fn forge_field(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut h = 0u32.to_le_bytes().to_vec();
        h.extend_from_slice(&200u16.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(name);
        h.extend_from_slice(&(value.len() as u32).to_le_bytes());
        h.extend_from_slice(value);
        h.extend_from_slice(&[0; 16]);
        forge(&h)
    }

    #[test]
    fn rejects_fields_that_would_split_a_response() {
        let ok = decode_prefix(&forge_field(b"X-A", b"1"));
        assert!(matches!(ok, Ok(Decoded::Complete { .. })), "{ok:?}");
        let cases: &[(&[u8], &[u8])] = &[
            (b"X-A", b"1\r\nSet-Cookie: injected=1"),
            (b"X-A", b"1\n"),
            (b"X-A", b"\0"),
            (b"X-A\r\nSet-Cookie", b"1"),
            (b"X A", b"1"),
            (b"", b"1"),
        ];
        for (name, value) in cases {
            assert_eq!(
                decode_prefix(&forge_field(name, value)),
                Err(MetaError::BadField),
                "{name:?}: {value:?}"
            );
            let m = EntryMeta {
                headers: vec![(String::from_utf8_lossy(name).into(), value.to_vec())],
                ..EntryMeta::default()
            };
            assert_eq!(
                m.check_limits(),
                Err(MetaError::BadField),
                "{name:?}: {value:?}"
            );
        }
    }

    #[test]
    fn limits_checked_before_encode() {
        let mut m = sample();
        m.key = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            m.check_limits(),
            Err(MetaError::KeyTooLong(MAX_KEY_LEN + 1))
        );
        let mut m = sample();
        m.headers = vec![("X".into(), vec![0; MAX_HEADERS_LEN])];
        assert!(matches!(
            m.check_limits(),
            Err(MetaError::HeadersTooLong(_))
        ));
    }

    #[test]
    fn paths() {
        let h = 0xab12_3456_789a_bcdeu64;
        assert_eq!(file_name(h), "ab123456789abcde");
        assert_eq!(file_name(1), "0000000000000001");
        let d = Path::new("/c");
        assert_eq!(entry_path(d, h), PathBuf::from("/c/ab/ab123456789abcde"));
        assert_eq!(entry_path(d, 1), PathBuf::from("/c/00/0000000000000001"));
        assert_eq!(
            temp_path(d, h, 0x42),
            PathBuf::from("/c/tmp/ab123456789abcde.0000000000000042.tmp")
        );
        assert_eq!(key_hash("abc"), xxh3_64(b"abc"));
    }
}
