//! `metis-keystore-file`: the JSON keystore file adapter (`{"keys": [ … ]}`).
//!
//! Invariants:
//! - The file format is the original tool's: unknown top-level keys and unknown per-key fields
//!   survive every rewrite; keys sorted, 2-space indent.
//! - Writes are atomic (temp file + fsync + rename + directory fsync), mode 0600, and
//!   serialised across processes by an advisory lock on `<file>.lock`.
//! - Depends only on `metis-ports` and `metis-domain`.

mod document;
mod fsio;
mod store;

pub use store::FileKeyStore;
