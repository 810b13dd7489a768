//! MCP rules: methods as a closed enum, protocol revisions, sealed session ids, federation's
//! names, list cursors, task ids and event-stream relay.
//! No I/O here; `now` is always an argument.

pub mod aead;
pub mod cursor;
pub mod idmap;
pub mod legacy;
pub mod legacy_id;
pub mod method;
pub mod mirrored;
pub mod modern;
pub mod names;
pub mod relay;
pub mod session;
pub mod tasks;
pub mod version;

pub use method::Method;
pub use version::ProtocolVersion;
