//! The offline views of a main store: [`PgReader`] (`StoreReader`: counts, pages, audit
//! reads and the chain walk, sessions, keys) and [`PgImport`] (`StoreImport`, the
//! destination of `metis migrate-store`).
//!
//! Invariants:
//! - A reader never creates, migrates or changes anything, and takes no lock a gateway's
//!   writer would wait for (plain reads under MVCC).
//! - An import inserts rows as given, each call in one transaction: payloads byte-for-byte,
//!   ids and timestamps kept, an audit row's chain position taken from its own payload, so the
//!   copied chain verifies with the same length; a duplicate id fails the call and keeps
//!   nothing of it.

use deadpool_postgres::Object;
use metis_domain::audit::{BrokenLink, is_audit_type};
use metis_domain::keys::KeyRecord;
use metis_domain::sessions::SessionRecord;
use metis_ports::keys::{KeyStoreError, loaded_or_empty};
use metis_ports::storage::{StoreCounts, StoreImport, StoreReader};
use metis_ports::trace::{EventRow, TraceError};

use crate::errors::trace_err;
use crate::keys::PgKeyStore;
use crate::pool::{Db, DbError};
use crate::query;

/// Run `f` with a pooled connection on the adapter's runtime, waiting for it.
pub(crate) fn blocking<T, F>(
    db: &Db,
    f: impl FnOnce(Object) -> F + Send + 'static,
) -> Result<T, TraceError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
{
    let pool = db.clone();
    db.block_on(async move {
        let c = pool.get().await?;
        f(c).await.map_err(DbError::from)
    })
    .map_err(trace_err)
}

/// A read-only view of the main store.
pub(crate) struct PgReader {
    pub(crate) db: Db,
    pub(crate) keys: PgKeyStore,
}

impl StoreReader for PgReader {
    fn counts(&self) -> Result<StoreCounts, TraceError> {
        let (events, sessions, keys) =
            blocking(&self.db, |c| async move { query::counts(&c).await })?;
        Ok(StoreCounts {
            events,
            sessions,
            keys,
        })
    }

    fn events_page(&self, after: Option<&str>, limit: usize) -> Result<Vec<EventRow>, TraceError> {
        let after = after.map(str::to_owned);
        blocking(&self.db, move |c| async move {
            query::events_page(&c, after.as_deref(), limit).await
        })
    }

    fn events_of_type(&self, event_type: &str) -> Result<Vec<EventRow>, TraceError> {
        let ty = event_type.to_owned();
        blocking(&self.db, move |c| async move {
            query::events_of_type(&c, &ty).await
        })
    }

    fn audit_events(
        &self,
        since_us: i64,
        until_us: i64,
        types: &[String],
    ) -> Result<Vec<EventRow>, TraceError> {
        let types = types.to_vec();
        blocking(&self.db, move |c| async move {
            query::audit_events(&c, since_us, until_us, &types).await
        })
    }

    fn verify_audit_chain(&self) -> Result<Result<u64, BrokenLink>, TraceError> {
        blocking(
            &self.db,
            |c| async move { query::verify_audit_chain(&c).await },
        )
    }

    fn count_unchained_audit(&self) -> Result<u64, TraceError> {
        blocking(&self.db, |c| async move {
            query::count_unchained_audit(&c).await
        })
    }

    fn session(&self, id: &str) -> Result<Option<SessionRecord>, TraceError> {
        let id = id.to_owned();
        blocking(
            &self.db,
            move |c| async move { query::session(&c, &id).await },
        )
    }

    fn sessions(
        &self,
        workspace: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, TraceError> {
        let workspace = workspace.map(str::to_owned);
        blocking(&self.db, move |c| async move {
            query::sessions(&c, workspace.as_deref(), limit).await
        })
    }

    fn session_children(&self, parent: &str) -> Result<Vec<SessionRecord>, TraceError> {
        let parent = parent.to_owned();
        blocking(&self.db, move |c| async move {
            query::session_children(&c, &parent).await
        })
    }

    fn keys(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        loaded_or_empty(self.keys.load_blocking())
    }

    fn policies(&self) -> Result<metis_domain::budgets::Policies, KeyStoreError> {
        self.keys.load_policies_blocking()
    }
}

/// The events insert of a copy: no `ON CONFLICT`, so a duplicate id fails the call.
const IMPORT_EVENTS_SQL: &str = "INSERT INTO events (id, timestamp_us, session_id, turn_id, \
    parent_event_id, type, actor, sensitivity, payload_json, audit_seq) \
    SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], \
    $7::text[], $8::text[], $9::text[], $10::int8[])";

const IMPORT_SESSIONS_SQL: &str = "INSERT INTO sessions (id, workspace_path, active_model, \
    cost_so_far_usd, turn_count, schema_version, created_at, updated_at, parent_session_id, \
    parent_tool_use_id, is_worker) \
    SELECT a, b, c, d, e, 1, f, g, h, i, j FROM unnest($1::text[], $2::text[], $3::text[], \
    $4::float8[], $5::int8[], $6::int8[], $7::int8[], $8::text[], $9::text[], $10::bool[]) \
    AS t(a, b, c, d, e, f, g, h, i, j)";

/// The chain position an imported audit row carries in its payload.
fn audit_seq(row: &EventRow) -> Option<i64> {
    if !is_audit_type(&row.event_type) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&row.payload_json).ok()?;
    v.get("audit_seq")?
        .as_u64()
        .and_then(|s| i64::try_from(s).ok())
}

/// A new main store being filled by a copy.
pub(crate) struct PgImport {
    pub(crate) db: Db,
    pub(crate) keys: PgKeyStore,
}

impl StoreImport for PgImport {
    fn insert_events(&mut self, rows: &[EventRow]) -> Result<u64, TraceError> {
        let rows = rows.to_vec();
        blocking(&self.db, move |mut c| async move {
            let seqs: Vec<Option<i64>> = rows.iter().map(audit_seq).collect();
            let col = |f: fn(&EventRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
            let opt = |f: fn(&EventRow) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
            let ts: Vec<i64> = rows.iter().map(|r| r.timestamp_us).collect();
            let tx = c.transaction().await?;
            let n = tx
                .execute(
                    IMPORT_EVENTS_SQL,
                    &[
                        &col(|r| &r.id),
                        &ts,
                        &col(|r| &r.session_id),
                        &opt(|r| r.turn_id.as_deref()),
                        &opt(|r| r.parent_event_id.as_deref()),
                        &col(|r| &r.event_type),
                        &col(|r| &r.actor),
                        &col(|r| &r.sensitivity),
                        &col(|r| &r.payload_json),
                        &seqs,
                    ],
                )
                .await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    fn insert_sessions(&mut self, rows: &[SessionRecord]) -> Result<u64, TraceError> {
        let rows = rows.to_vec();
        blocking(&self.db, move |mut c| async move {
            let text = |f: fn(&SessionRecord) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
            let opt =
                |f: fn(&SessionRecord) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
            let costs: Vec<f64> = rows.iter().map(|r| r.cost_so_far_usd).collect();
            let turns: Vec<i64> = rows
                .iter()
                .map(|r| i64::try_from(r.turn_count).unwrap_or(i64::MAX))
                .collect();
            let created: Vec<i64> = rows.iter().map(|r| r.created_at_us).collect();
            let updated: Vec<i64> = rows.iter().map(|r| r.updated_at_us).collect();
            let workers: Vec<bool> = rows.iter().map(|r| r.is_worker).collect();
            let tx = c.transaction().await?;
            let n = tx
                .execute(
                    IMPORT_SESSIONS_SQL,
                    &[
                        &text(|r| &r.id),
                        &text(|r| &r.workspace_path),
                        &opt(|r| r.active_model.as_deref()),
                        &costs,
                        &turns,
                        &created,
                        &updated,
                        &opt(|r| r.parent_session_id.as_deref()),
                        &opt(|r| r.parent_tool_use_id.as_deref()),
                        &workers,
                    ],
                )
                .await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    fn insert_keys(&mut self, keys: &[KeyRecord]) -> Result<u64, KeyStoreError> {
        for k in keys {
            self.keys.insert_blocking(k.clone())?;
        }
        Ok(keys.len() as u64)
    }

    fn insert_policies(
        &mut self,
        policies: &metis_domain::budgets::Policies,
    ) -> Result<(), KeyStoreError> {
        let copy = policies.clone();
        self.keys
            .update_policies_blocking(Box::new(move |p| {
                *p = copy;
                Ok(())
            }))
            .map(drop)
    }
}
