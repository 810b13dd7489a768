//! tollgate: a thread-per-core MCP gateway.
//! The request path reads top to bottom in `proxy`; everything it calls is a module here.
//! Only `runtime` knows about threads; `jsonrpc`, `mcp` rules and (later) `policy` do no I/O.

pub mod config;
pub mod demo;
pub mod error;
pub mod http;
pub mod jsonrpc;
pub mod mcp;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod runtime;
pub mod tls;
