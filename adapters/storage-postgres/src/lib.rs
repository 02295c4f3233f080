//! PostgreSQL adapters: one database shared by a fleet of gateways.
//!
//! - [`admission`]: spend caps and per-key rate limits held in the database for the whole fleet.
//! - [`token_limits`]: token-per-minute buckets (key, user, team) for the whole fleet.
//! - [`PostgresBackend`]: the storage port (`--store postgres`), the one entry point the
//!   application uses: the main store (trace events with the audit chain, spend and usage
//!   queries, sessions), the key store (`--keystore store`), maintenance and copies.
//! - [`config`]: `--database-url` (TLS by libpq's `sslmode` names, verified with rustls),
//!   pool size and statement timeout; the password never reaches a log line.
//! - [`pool`]: the connection pool and the adapter's runtime thread, so the port's blocking
//!   methods work from any caller.
//! - [`patterns`]: the pattern projections of every workspace, in shared tables keyed by
//!   workspace, written by any number of replicas.
//! - [`schema`]: versioned schemas per component, migrated once per fleet under an advisory lock;
//!   [`tables`]: the main store's components.
//! - `snapshot`: `metis backup`/`restore` of the store as one portable file (`COPY` text in
//!   one repeatable-read transaction).
//! - [`scratch`]: throwaway databases for tests and benchmarks.
//!
//! Depends only on `metis-ports`, `metis-domain` and `metis-storage-kit`.

pub mod admission;
mod backend;
pub mod config;
mod errors;
mod keys;
mod maintenance;
pub mod patterns;
pub mod pool;
mod query;
mod reader;
pub mod schema;
pub mod scratch;
mod snapshot;
pub mod tables;
pub mod token_limits;
mod trace;
mod writer;

pub use backend::PostgresBackend;
pub use config::{ConfigError, DEFAULT_POOL_SIZE, DEFAULT_STATEMENT_TIMEOUT, PgConfig, TlsMode};
pub use keys::PgKeyStore;
pub use pool::{Db, DbError};
pub use scratch::ScratchDatabase;
pub use trace::{PgSessionStore, PgTraceStore, PgWriterOptions};
