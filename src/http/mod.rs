//! HTTP/1.1 for the data path: request/response head parsing on httparse, body framing
//! (Content-Length, chunked), the buffered connection type, and the per-worker upstream pool.
//! Nothing here knows MCP; nothing here knows threads.

pub mod authority;
pub mod chunked;
pub mod client;
pub mod conn;
pub mod head;
pub mod pool;
pub mod response;
pub mod sse;

pub use chunked::{ChunkError, ChunkedDecoder};
pub use conn::Conn;
pub use head::{HeadError, HttpMethod, RequestHead, ResponseHead};
