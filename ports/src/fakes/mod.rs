//! In-memory fakes of every storage port (feature `fakes`), for use-case unit tests and as the
//! third backend of the storage contract suite (`metis-tests`, `tests/tests/suite/storage_contract.rs`),
//! and of the admission ports as a store shared by replicas that can be switched off
//! (`tests/tests/suite/admission_contract.rs`).
//!
//! Invariants:
//! - Each fake honours every documented clause of its port, exactly as the SQLite and redb
//!   adapters do (the contract suite runs the same test functions against all three). The
//!   business rules are not restated here: the fakes call the same code the adapters call
//!   (the audit chain through `writer::insert_events`, the roll-ups of `metis_domain::usage`,
//!   `metis_domain::keys::validate_key_set`, `metis_domain::sessions::apply_turn`, the pattern
//!   projection of `metis_domain::patterns::projection`); a fake supplies only its storage.
//! - A fake's data lives in a shared state (the "file"); [`InMemoryTraceStore::reopen`] and its
//!   siblings give a new handle on the same state, so persistence and "newer file refused"
//!   clauses can be exercised without a disk. A state whose schema version was raised past
//!   the supported one (`set_schema_version`) is refused on reopen with `TooNew`.
//! - No disk I/O, except that [`InMemoryPatternStore`] checks that a workspace is a writable
//!   directory (the port says such a workspace is `Skipped`).
//! - Locks are never held across an `.await` and never poisoned into a panic: a poisoned lock
//!   is recovered (the state is plain data, always consistent between statements).

use std::sync::{Mutex, MutexGuard, PoisonError};

mod admission;
mod keys;
mod patterns;
mod sessions;
mod trace;

pub use admission::{FakeKeyLimiter, FakeOutage, FakeSpendStore};
pub use keys::InMemoryKeyStore;
pub use patterns::{InMemoryPatternStore, unusable_workspace};
pub use sessions::InMemorySessionStore;
pub use trace::{FAKE_TRACE_SCHEMA_VERSION, InMemoryTraceStore};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
