//! The only code that knows about threads: one monoio runtime per worker, pinned to a core,
//! what each worker owns, and the messages between workers.

pub mod driver;
