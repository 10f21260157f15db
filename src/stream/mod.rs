//! Byte streams: a read-buffered connection, message-body readers and writers that
//! stream with bounded memory, and the client/upstream stream types.

pub mod body;
pub mod buffered;
pub mod bufpool;
pub mod fair;
pub mod prefixed;

pub use body::{BodyReader, BodyWriter};
pub use buffered::{BufConn, WaitReadable};
pub use bufpool::BufPool;
pub use prefixed::Prefixed;
