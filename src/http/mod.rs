//! The HTTP/1.1 codec (RFC 9112), hand-written on httparse. Pure: no I/O, no cache types.
//!
//! * [`head`]: request/response head parsing (complete / need more / error), framing rules,
//!   hop-by-hop removal and serialisation.
//! * [`chunked`]: a streaming chunked-transfer decoder and encoder helpers.
//! * [`uri`]: absolute-form and CONNECT authority-form request targets.
//! * [`field`]: field name and value syntax, for fields read from disk or the KV protocol.

pub mod chunked;
pub mod field;
pub mod head;
pub mod range;
pub mod uri;

pub use chunked::{ChunkError, ChunkedDecoder, Step};
pub use head::{
    parse_request, parse_response, reason_phrase, BodyKind, HeadError, Headers, Parsed,
    RequestHead, ResponseHead, Version, MAX_HEADERS, MAX_HEAD_BYTES,
};
pub use uri::{parse_absolute, parse_authority, Scheme, Uri};
