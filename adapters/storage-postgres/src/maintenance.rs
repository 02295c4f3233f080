//! Maintenance of the main store in PostgreSQL: status, retention, compaction and the schema
//! migrations (`metis trace status|prune|vacuum|migrate`, `metis sessions migrate`).
//!
//! Invariants:
//! - Every operation first reads the store's stamp: a database without a metis store is
//!   `Refused` (nothing is created), one from a newer binary that this one cannot run on is
//!   `TooNew`, untouched.
//! - Retention deletes non-audit events older than the cutoff in bounded batches, each its own
//!   short transaction, so the writers of every replica wait for one batch at most; audit
//!   events are never deleted.
//! - Compaction is `VACUUM (ANALYZE) events`: it makes the space of deleted rows reusable and
//!   refreshes the planner's statistics without locking out writers. (`VACUUM FULL`, which
//!   gives space back to the file system, locks the table against every replica: run it in a
//!   maintenance window with `psql` if needed.)
//! - A migration's safety copy is refused: a PostgreSQL database is backed up with its own
//!   tools (`pg_dump`). Gateways migrate on start under the advisory lock of
//!   [`schema`](crate::schema).

use std::path::{Path, PathBuf};

use metis_domain::retention::sorted_audit_types;
use metis_domain::time::Timestamp;
use metis_ports::storage::{
    CompactReport, MaintenanceError, Migratable, MigrationPlan, Progress, PruneCounts,
    PruneOptions, StoreStatus,
};
use metis_storage_kit::{Batch, RECENT_WINDOW_US, prune_in_batches};

use crate::errors::failed;
use crate::pool::{Db, DbError};
use crate::schema::{self, Component, SchemaError, Stamp};
use crate::tables::TRACE;

/// The redacted URL, as the "path" of the store in reports.
pub(crate) fn location(db: &Db) -> PathBuf {
    PathBuf::from(db.config().redacted())
}

fn too_new(db: &Db, e: &SchemaError) -> Option<MaintenanceError> {
    match e {
        SchemaError::TooNew { found, known, .. } => Some(MaintenanceError::TooNew {
            path: location(db),
            found: i64::from(*found),
            supported: i64::from(*known),
        }),
        SchemaError::Query(_) => None,
    }
}

/// The stamp of `c`, refusing a missing store and a newer one this binary cannot run on.
pub(crate) fn require(db: &Db, c: &'static Component) -> Result<Stamp, MaintenanceError> {
    let pool = db.clone();
    let found = db
        .block_on(async move {
            let conn = pool.get().await?;
            Ok(schema::current(&conn, c).await)
        })
        .map_err(failed("cannot read the schema version"))?;
    let found = match found {
        Ok(s) => s,
        Err(e) => {
            return Err(too_new(db, &e).unwrap_or_else(|| {
                MaintenanceError::Failed(format!("cannot read the schema version: {e}"))
            }));
        }
    };
    if found.version == 0 {
        return Err(MaintenanceError::Refused(format!(
            "{} holds no metis store (no {} schema): start a gateway with --store postgres, or \
             fill it with `metis migrate-store`",
            location(db).display(),
            c.name
        )));
    }
    schema::check_usable(c, found)
        .map_err(|e| too_new(db, &e).unwrap_or_else(|| MaintenanceError::Failed(e.to_string())))?;
    Ok(found)
}

/// Run `work` with a pooled connection, mapping errors to `Failed` with `what`.
fn run<T: Send + 'static, F>(
    db: &Db,
    what: &'static str,
    work: impl FnOnce(deadpool_postgres::Object) -> F + Send + 'static,
) -> Result<T, MaintenanceError>
where
    F: std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
{
    let pool = db.clone();
    db.block_on(async move {
        let c = pool.get().await?;
        work(c).await.map_err(DbError::from)
    })
    .map_err(failed(what))
}

fn count(r: &tokio_postgres::Row, i: usize) -> u64 {
    u64::try_from(r.get::<_, i64>(i)).unwrap_or(0)
}

const SIZE_SQL: &str = "SELECT (pg_total_relation_size('events') \
    + pg_total_relation_size('sessions') + COALESCE(pg_total_relation_size(to_regclass('gateway_keys')), 0))::bigint";

/// `metis trace status`.
pub(crate) fn status(db: &Db, now: Timestamp) -> Result<StoreStatus, MaintenanceError> {
    let stamp = require(db, &TRACE)?;
    let audit: Vec<&'static str> = sorted_audit_types();
    let recent = now - RECENT_WINDOW_US;
    let row = run(db, "cannot read the store's status", move |c| async move {
        c.query_one(
            &format!(
                "SELECT (SELECT count(*) FROM events), (SELECT min(timestamp_us) FROM events), \
                 (SELECT max(timestamp_us) FROM events), \
                 (SELECT count(*) FROM events WHERE timestamp_us > $1), \
                 (SELECT count(*) FROM events WHERE type = ANY($2)), \
                 (SELECT count(*) FROM sessions), ({SIZE_SQL})"
            ),
            &[&recent, &audit],
        )
        .await
    })?;
    Ok(StoreStatus {
        path: location(db),
        schema_version: i64::from(stamp.version),
        supported_version: i64::from(TRACE.version()),
        events: count(&row, 0),
        oldest_event_us: row.get(1),
        newest_event_us: row.get(2),
        events_last_5_min: count(&row, 3),
        audit_events: count(&row, 4),
        sessions: count(&row, 5),
        file_bytes: count(&row, 6),
        wal_bytes: 0,
    })
}

/// Eligible and audit-exempt rows before `cutoff`, and the oldest event that stays.
fn prunable(db: &Db, cutoff: i64) -> Result<(u64, u64, Option<i64>), MaintenanceError> {
    let audit = sorted_audit_types();
    let row = run(
        db,
        "cannot count the events to prune",
        move |c| async move {
            c.query_one(
            "SELECT (SELECT count(*) FROM events WHERE timestamp_us < $1 AND type <> ALL($2)), \
             (SELECT count(*) FROM events WHERE timestamp_us < $1 AND type = ANY($2)), \
             LEAST((SELECT min(timestamp_us) FROM events WHERE timestamp_us >= $1), \
                   (SELECT min(timestamp_us) FROM events WHERE timestamp_us < $1 AND type = ANY($2)))",
            &[&cutoff, &audit],
        )
        .await
        },
    )?;
    Ok((count(&row, 0), count(&row, 1), row.get(2)))
}

/// What a prune at `cutoff` would delete (read-only).
pub(crate) fn prune_dry_run(db: &Db, cutoff: Timestamp) -> Result<PruneCounts, MaintenanceError> {
    require(db, &TRACE)?;
    let (eligible, exempt, oldest) = prunable(db, cutoff)?;
    Ok(PruneCounts {
        rows_eligible: eligible,
        rows_audit_exempt: exempt,
        rows_deleted: 0,
        oldest_kept_us: oldest,
    })
}

/// Delete non-audit events older than `cutoff` in batches.
pub(crate) fn prune(
    db: &Db,
    cutoff: Timestamp,
    options: PruneOptions,
    progress: Progress<'_>,
) -> Result<PruneCounts, MaintenanceError> {
    require(db, &TRACE)?;
    let (eligible, exempt, _) = prunable(db, cutoff)?;
    let delete = |limit: u32| {
        let audit = sorted_audit_types();
        let deleted = run(db, "cannot delete old events", move |c| async move {
            c.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events \
                 WHERE timestamp_us < $1 AND type <> ALL($2) ORDER BY timestamp_us LIMIT $3)",
                &[&cutoff, &audit, &i64::from(limit)],
            )
            .await
        })?;
        Ok::<_, MaintenanceError>(Batch {
            deleted,
            more: deleted >= u64::from(limit),
        })
    };
    let mut counts = prune_in_batches(eligible, exempt, options, progress, delete)?;
    counts.oldest_kept_us = prunable(db, cutoff)?.2;
    Ok(counts)
}

fn store_bytes(db: &Db) -> Result<u64, MaintenanceError> {
    let row = run(db, "cannot read the table sizes", |c| async move {
        c.query_one(SIZE_SQL, &[]).await
    })?;
    Ok(count(&row, 0))
}

/// `VACUUM (ANALYZE)` of the events table, with the store's size before and after.
pub(crate) fn compact(db: &Db) -> Result<CompactReport, MaintenanceError> {
    require(db, &TRACE)?;
    let bytes_before = store_bytes(db)?;
    run(db, "cannot vacuum the events table", |c| async move {
        c.batch_execute("VACUUM (ANALYZE) events").await
    })?;
    Ok(CompactReport {
        bytes_before,
        bytes_after: store_bytes(db)?,
    })
}

/// One component of the main store as a migration target.
pub(crate) struct PgMigration {
    pub(crate) db: Db,
    pub(crate) component: &'static Component,
    pub(crate) location: PathBuf,
}

impl PgMigration {
    fn plan_from(&self, found: Stamp, steps: Vec<&'static str>) -> MigrationPlan {
        MigrationPlan {
            path: self.location.clone(),
            current: i64::from(found.version),
            target: i64::from(self.component.version()),
            steps: steps.into_iter().map(str::to_owned).collect(),
        }
    }
}

impl Migratable for PgMigration {
    fn path(&self) -> &Path {
        &self.location
    }

    fn plan(&self) -> Result<MigrationPlan, MaintenanceError> {
        let found = require(&self.db, self.component)?;
        let (pool, c) = (self.db.clone(), self.component);
        let steps = self
            .db
            .block_on(async move {
                let conn = pool.get().await?;
                Ok(schema::plan(&conn, c).await)
            })
            .map_err(failed("cannot plan the migration"))?
            .map_err(|e| {
                too_new(&self.db, &e).unwrap_or_else(|| MaintenanceError::Failed(e.to_string()))
            })?;
        Ok(self.plan_from(found, steps))
    }

    fn apply(&self) -> Result<MigrationPlan, MaintenanceError> {
        let found = require(&self.db, self.component)?;
        let (pool, c) = (self.db.clone(), self.component);
        let applied = self
            .db
            .block_on(async move {
                let mut conn = pool.get().await?;
                Ok(schema::migrate(&mut conn, c).await)
            })
            .map_err(failed("cannot migrate"))?
            .map_err(|e| {
                too_new(&self.db, &e)
                    .unwrap_or_else(|| MaintenanceError::Failed(format!("cannot migrate: {e}")))
            })?;
        Ok(self.plan_from(found, applied))
    }

    fn backup(&self, dest: &Path, progress: Progress<'_>) -> Result<(), MaintenanceError> {
        crate::snapshot::backup(&self.db, dest, progress).map(drop)
    }
}
