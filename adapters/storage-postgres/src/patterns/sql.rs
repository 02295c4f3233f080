//! Blocking statements on a pooled connection, for the pattern rules, which are synchronous
//! (`metis_domain::patterns::PatternRows`).
//!
//! Invariants:
//! - A statement's future is driven on the calling thread; the connection itself is served
//!   by the adapter's runtime thread (`metis-pg`), so this works from any thread that may
//!   block: tokio's blocking pool (the async port runs every call there), a CLI thread, or a
//!   multi-threaded runtime worker, which hands its other tasks on first ([`off_runtime`]).
//! - Every statement is prepared once per connection (the pool's statement cache).
//! - Columns are read with `try_get`: a type mismatch is an error, never a panic.

use std::future::Future;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::{FromSqlOwned, ToSql};
use tokio_postgres::{Error, Row};

/// Run `work`, which blocks, where blocking is allowed.
pub(super) fn off_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Drive one statement's future to its end on this thread.
pub(super) fn wait<F: Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub(super) fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, Error> {
    wait(async {
        let st = c.prepare_cached(sql).await?;
        c.query(&st, params).await
    })
}

pub(super) fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, Error> {
    wait(async {
        let st = c.prepare_cached(sql).await?;
        c.query_opt(&st, params).await
    })
}

pub(super) fn query_one<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Row, Error> {
    wait(async {
        let st = c.prepare_cached(sql).await?;
        c.query_one(&st, params).await
    })
}

pub(super) fn execute<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, Error> {
    wait(async {
        let st = c.prepare_cached(sql).await?;
        c.execute(&st, params).await
    })
}

/// Column `i` of `row`.
pub(super) fn col<T: FromSqlOwned>(row: &Row, i: usize) -> Result<T, Error> {
    row.try_get(i)
}

/// A stored count or size (never negative) as the port's unsigned type.
pub(super) fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The port's unsigned count as a BIGINT.
pub(super) fn bigint(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
