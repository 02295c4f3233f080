//! PostgreSQL adapters: one database shared by a fleet of gateways.
//!
//! - [`admission`]: spend caps and per-key rate limits held in the database for the whole fleet.
//! - [`config`]: `--database-url` (TLS by libpq's `sslmode` names, verified with rustls),
//!   pool size and statement timeout; the password never reaches a log line.
//! - [`pool`]: the connection pool and the adapter's runtime thread, so the port's blocking
//!   methods work from any caller.
//! - [`patterns`]: the pattern projections of every workspace, in shared tables keyed by
//!   workspace, written by any number of replicas.
//! - [`schema`]: versioned schemas per component, migrated once per fleet under an advisory lock.
//! - [`scratch`]: throwaway databases for tests and benchmarks.

pub mod admission;
pub mod config;
pub mod patterns;
pub mod pool;
pub mod schema;
pub mod scratch;

pub use config::{ConfigError, DEFAULT_POOL_SIZE, DEFAULT_STATEMENT_TIMEOUT, PgConfig, TlsMode};
pub use pool::{Db, DbError};
pub use scratch::ScratchDatabase;
