//! Versioned schemas, migrated once per fleet.
//!
//! Each component of the database (`trace`, `sessions`, `keys`, `patterns`, …) has a version in
//! `metis_schema` and an ordered list of steps: step *i* takes it from version *i* to *i + 1*.
//!
//! Invariants:
//! - Migrating a component runs in one transaction holding a transaction-scoped advisory lock
//!   of that component, so replicas that start together apply each step exactly once: the
//!   first takes the lock and applies, the others wait, then find nothing left to do.
//! - Rolling upgrades mix versions: a newer replica may move a component to version *n + 1*
//!   while older ones still run. Each row also records `compatible_from`, the oldest version
//!   whose binaries may keep using the schema (additive steps — new tables, columns, indexes —
//!   leave it alone). An older binary runs on a newer schema only while its own version is at
//!   least `compatible_from`, and never migrates it; otherwise it is refused, unchanged
//!   ([`SchemaError::TooNew`]).
//! - `plan` never changes anything.

use deadpool_postgres::GenericClient;

/// One component's schema as this binary knows it.
#[derive(Debug, Clone, Copy)]
pub struct Component {
    /// Its name in `metis_schema`.
    pub name: &'static str,
    /// `steps[i]` migrates version `i` to `i + 1`; the binary's version is `steps.len()`.
    pub steps: &'static [Step],
    /// The oldest version whose binaries still work on this binary's schema (raise it only
    /// with a step older binaries cannot live with).
    pub compatible_from: i32,
}

/// One migration step: a description for `metis … migrate` and its SQL (one batch).
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub description: &'static str,
    pub sql: &'static str,
}

impl Component {
    /// The version this binary writes.
    #[must_use]
    pub fn version(&self) -> i32 {
        i32::try_from(self.steps.len()).unwrap_or(i32::MAX)
    }

    /// The advisory-lock key of this component (stable across binaries: derived from the name).
    fn lock_key(&self) -> i64 {
        // FNV-1a, 64 bits: stable and dependency-free; only needs to differ between components.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in b"metis-schema:".iter().chain(self.name.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        i64::from_ne_bytes(h.to_ne_bytes())
    }
}

/// Why a schema could not be read or migrated.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database holds a newer version than this binary.
    #[error(
        "the {component} schema in the database is version {found}, newer than this binary's \
         {known}: run a newer metis, or restore a backup taken by this version"
    )]
    TooNew {
        component: &'static str,
        found: i32,
        known: i32,
    },
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
}

const META_SQL: &str = "CREATE TABLE IF NOT EXISTS metis_schema (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    compatible_from INTEGER NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// A component's state in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// 0 when the component has no tables yet.
    pub version: i32,
    pub compatible_from: i32,
}

/// The component's stamp in the database.
///
/// # Errors
/// Query errors.
pub async fn current(client: &impl GenericClient, c: &Component) -> Result<Stamp, SchemaError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('metis_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(Stamp::default());
    }
    Ok(client
        .query_opt(
            "SELECT version, compatible_from FROM metis_schema WHERE component = $1",
            &[&c.name],
        )
        .await?
        .map_or(Stamp::default(), |r| Stamp {
            version: r.get(0),
            compatible_from: r.get(1),
        }))
}

/// The descriptions of the steps that `migrate` would apply (read-only).
///
/// # Errors
/// `TooNew`; query errors.
pub async fn plan(
    client: &impl GenericClient,
    c: &Component,
) -> Result<Vec<&'static str>, SchemaError> {
    let found = current(client, c).await?;
    pending(c, found).map(|steps| steps.iter().map(|s| s.description).collect())
}

/// Refuse a component stamped `found` by a newer binary this one cannot run on (the rule
/// [`migrate`] applies), changing nothing.
///
/// # Errors
/// `TooNew`.
pub fn check_usable(c: &Component, found: Stamp) -> Result<(), SchemaError> {
    pending(c, found).map(drop)
}

/// The steps to apply to a component stamped `found`: none when it is newer but still
/// compatible with this binary; `TooNew` when it is newer and not.
fn pending(c: &Component, found: Stamp) -> Result<&'static [Step], SchemaError> {
    if found.version > c.version() {
        if found.compatible_from <= c.version() {
            return Ok(&[]);
        }
        return Err(SchemaError::TooNew {
            component: c.name,
            found: found.version,
            known: c.version(),
        });
    }
    let from = usize::try_from(found.version).unwrap_or(0);
    Ok(&c.steps[from..])
}

/// Bring the component to this binary's version, once across every process migrating at
/// the same time. Returns the descriptions of the steps applied (empty when current).
///
/// # Errors
/// `TooNew` (nothing changed); query errors (the transaction rolls back: nothing changed).
pub async fn migrate(
    client: &mut deadpool_postgres::Object,
    c: &Component,
) -> Result<Vec<&'static str>, SchemaError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&c.lock_key()])
        .await?;
    tx.batch_execute(META_SQL).await?;
    let found = current(&tx, c).await?;
    let steps = pending(c, found)?;
    for step in steps {
        tx.batch_execute(step.sql).await?;
    }
    if !steps.is_empty() {
        tx.execute(
            "INSERT INTO metis_schema (component, version, compatible_from) VALUES ($1, $2, $3)
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version,
                 compatible_from = EXCLUDED.compatible_from, updated_at = now()",
            &[&c.name, &c.version(), &c.compatible_from],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(steps.iter().map(|s| s.description).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Db, DbError};
    use crate::scratch::ScratchDatabase;

    const DEMO: Component = Component {
        name: "demo",
        steps: &[
            Step {
                description: "create table demo",
                sql: "CREATE TABLE demo (id BIGINT PRIMARY KEY)",
            },
            Step {
                description: "add column demo.note",
                sql: "ALTER TABLE demo ADD COLUMN note TEXT",
            },
        ],
        compatible_from: 1,
    };

    fn err(e: SchemaError) -> DbError {
        DbError::from(e)
    }

    #[test]
    fn replicas_starting_together_apply_each_step_once() -> Result<(), DbError> {
        let scratch = ScratchDatabase::from_env()?;
        let db = Db::new(scratch.config().clone())?;
        let pool = db.clone();
        let applied = db.block_on(async move {
            let mut runs = Vec::new();
            for _ in 0..6 {
                let pool = pool.clone();
                runs.push(tokio::spawn(async move {
                    let mut c = pool.get().await?;
                    migrate(&mut c, &DEMO).await.map_err(err)
                }));
            }
            let mut applied = Vec::new();
            for r in runs {
                applied.push(r.await.map_err(|e| DbError::Stopped(e.to_string()))??);
            }
            Ok(applied)
        })?;
        let non_empty: Vec<_> = applied.iter().filter(|a| !a.is_empty()).collect();
        assert_eq!(
            non_empty.len(),
            1,
            "exactly one process migrates: {applied:?}"
        );
        assert_eq!(non_empty[0].len(), 2);
        let pool = db.clone();
        let (version, planned) = db.block_on(async move {
            let c = pool.get().await?;
            Ok((
                current(&c, &DEMO).await.map_err(err)?,
                plan(&c, &DEMO).await.map_err(err)?,
            ))
        })?;
        assert_eq!(
            version,
            Stamp {
                version: 2,
                compatible_from: 1
            }
        );
        assert!(planned.is_empty());
        Ok(())
    }

    #[test]
    fn a_newer_schema_is_refused_unchanged() -> Result<(), DbError> {
        let scratch = ScratchDatabase::from_env()?;
        let db = Db::new(scratch.config().clone())?;
        let pool = db.clone();
        let outcome = db.block_on(async move {
            let mut c = pool.get().await?;
            c.batch_execute(META_SQL).await?;
            c.batch_execute("INSERT INTO metis_schema VALUES ('demo', 7, 2, now())")
                .await?;
            // Version 7 says binaries of version 2 may still run on it: no steps, no refusal.
            let compatible = migrate(&mut c, &DEMO).await.map_err(err)?;
            c.batch_execute("UPDATE metis_schema SET compatible_from = 5")
                .await?;
            let refused = migrate(&mut c, &DEMO).await;
            let tables: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_tables WHERE tablename = 'demo'",
                    &[],
                )
                .await?
                .get(0);
            Ok((compatible, refused.err().map(|e| e.to_string()), tables))
        })?;
        let (compatible, message, tables) = outcome;
        assert!(compatible.is_empty());
        let message = message.unwrap_or_default();
        assert!(
            message.contains("version 7, newer than this binary's 2"),
            "{message}"
        );
        assert_eq!(tables, 0, "nothing was applied");
        Ok(())
    }
}
