//! How database errors are classified and turned into the ports' errors.
//!
//! Invariants:
//! - "Connection" errors (unreachable server, closed connection, the server shutting down or
//!   refusing connections, too many connections) are the ones the trace writer waits out with
//!   back-off; every other error is about the statement.
//! - "Row" errors (SQLSTATE classes 22 data exception and 23 integrity constraint) concern
//!   the rows of a statement, so a batch falls back to row-by-row writes to keep the others.
//! - Messages never hold the URL's password: pool errors carry the redacted URL only.

use metis_ports::keys::KeyStoreError;
use metis_ports::sessions::SessionError;
use metis_ports::storage::MaintenanceError;
use metis_ports::trace::TraceError;
use tokio_postgres::error::SqlState;

use crate::pool::DbError;
use crate::schema::SchemaError;

/// Whether the error means the server could not be reached or the connection is gone.
pub(crate) fn is_connection(e: &DbError) -> bool {
    match e {
        DbError::Unavailable(..) => true,
        DbError::Query(q) | DbError::Schema(SchemaError::Query(q)) => is_connection_pg(q),
        DbError::Tls(_) | DbError::Stopped(_) | DbError::Schema(SchemaError::TooNew { .. }) => {
            false
        }
    }
}

/// As [`is_connection`] for a driver error.
pub(crate) fn is_connection_pg(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: the driver failed (I/O, a dropped socket), not the statement.
        None => true,
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                ]
                .contains(code)
        }
    }
}

/// Whether the error concerns the rows of the statement (bad data, a constraint).
pub(crate) fn is_row_error(e: &DbError) -> bool {
    match e {
        DbError::Query(q) => q
            .code()
            .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23")),
        _ => false,
    }
}

/// Whether the server refused a write because the database or the role is read-only (a
/// standby, `default_transaction_read_only`, missing privileges).
pub(crate) fn is_read_only(e: &DbError) -> bool {
    match e {
        DbError::Query(q) => q.code().is_some_and(|c| {
            *c == SqlState::READ_ONLY_SQL_TRANSACTION || *c == SqlState::INSUFFICIENT_PRIVILEGE
        }),
        _ => false,
    }
}

/// The driver's error with the server's detail, in one line.
pub(crate) fn text(e: &DbError) -> String {
    match e {
        DbError::Query(q) => match q.as_db_error() {
            Some(db) => format!("PostgreSQL: {} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        },
        other => other.to_string(),
    }
}

pub(crate) fn trace_err(e: DbError) -> TraceError {
    if is_connection(&e) || matches!(e, DbError::Stopped(_) | DbError::Tls(_)) {
        TraceError::Unavailable(text(&e))
    } else {
        TraceError::Backend(Box::new(e))
    }
}

pub(crate) fn session_err(e: DbError) -> SessionError {
    if is_connection(&e) || matches!(e, DbError::Stopped(_) | DbError::Tls(_)) {
        SessionError::Unavailable(text(&e))
    } else {
        SessionError::Backend(Box::new(e))
    }
}

/// A `Failed` maintenance error saying what could not be done.
pub(crate) fn failed(what: &str) -> impl FnOnce(DbError) -> MaintenanceError + '_ {
    move |e| MaintenanceError::Failed(format!("{what}: {}", text(&e)))
}

pub(crate) fn key_err(location: &str, op: &str, e: &DbError) -> KeyStoreError {
    if is_read_only(e) {
        KeyStoreError::ReadOnly {
            location: location.to_owned(),
            message: format!(
                "{op}: {}; the database refuses writes (a standby, a read-only role or \
                 default_transaction_read_only): manage keys where it is writable",
                text(e)
            ),
        }
    } else {
        KeyStoreError::Io {
            location: location.to_owned(),
            message: format!("{op}: {}", text(e)),
        }
    }
}
