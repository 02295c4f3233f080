//! `metis patterns migrate` on PostgreSQL: the `patterns` component (the tables of every
//! workspace at once) as a [`Migratable`].
//!
//! Invariants:
//! - `plan` reads the component's stamp and changes nothing; `apply` runs the steps in one
//!   transaction under the component's advisory lock (`crate::schema::migrate`), so replicas
//!   and the CLI migrating together apply each step once, and a failed step changes nothing.
//! - No safety copy is written: the tables live in the server, whose own tools take
//!   consistent copies (`pg_dump`); `backup` says so and the migration does not start.

use std::path::{Path, PathBuf};

use metis_ports::storage::{MaintenanceError, Migratable, MigrationPlan, Progress};

use super::schema::COMPONENT;
use super::sql::{off_runtime, wait};
use crate::pool::{Db, DbError};
use crate::schema::{self, SchemaError};

/// The pattern tables of the database behind `db`.
pub(super) struct PatternMigration {
    pub(super) db: Db,
    /// What `path()` shows: the database (password redacted) and the component.
    pub(super) path: PathBuf,
}

impl PatternMigration {
    fn failed(&self, e: impl std::fmt::Display) -> MaintenanceError {
        MaintenanceError::Failed(format!("{}: {e}", self.path.display()))
    }

    fn schema_error(&self, e: SchemaError) -> MaintenanceError {
        match e {
            SchemaError::TooNew { found, known, .. } => MaintenanceError::TooNew {
                path: self.path.clone(),
                found: i64::from(found),
                supported: i64::from(known),
            },
            SchemaError::Query(q) => self.failed(super::sql_text(&q)),
        }
    }

    fn connection(&self) -> Result<deadpool_postgres::Object, MaintenanceError> {
        let db = self.db.clone();
        self.db
            .block_on(async move { db.get().await })
            .map_err(|e: DbError| self.failed(e))
    }

    /// The plan, or what `apply` did when `apply`.
    fn run(&self, apply: bool) -> Result<MigrationPlan, MaintenanceError> {
        let mut conn = self.connection()?;
        off_runtime(|| {
            let found =
                wait(schema::current(&conn, &COMPONENT)).map_err(|e| self.schema_error(e))?;
            if found.version == 0 {
                return Err(MaintenanceError::Refused(format!(
                    "{} has no pattern tables yet (the gateway creates them when it first \
                     records a pattern)",
                    self.path.display()
                )));
            }
            let steps = if apply {
                wait(schema::migrate(&mut conn, &COMPONENT))
            } else {
                wait(schema::plan(&conn, &COMPONENT))
            }
            .map_err(|e| self.schema_error(e))?;
            Ok(MigrationPlan {
                path: self.path.clone(),
                current: i64::from(found.version),
                target: i64::from(COMPONENT.version()),
                steps: steps.iter().map(|s| (*s).to_owned()).collect(),
            })
        })
    }
}

impl Migratable for PatternMigration {
    fn path(&self) -> &Path {
        &self.path
    }

    fn plan(&self) -> Result<MigrationPlan, MaintenanceError> {
        self.run(false)
    }

    fn apply(&self) -> Result<MigrationPlan, MaintenanceError> {
        self.run(true)
    }

    fn backup(&self, _dest: &Path, _progress: Progress<'_>) -> Result<(), MaintenanceError> {
        Err(MaintenanceError::Refused(format!(
            "no safety copy is written for {}: the pattern tables live in PostgreSQL; copy them \
             with `pg_dump --table='pattern_*'` (or the server's own backups), then start a \
             gateway of this version, which applies the steps in one transaction",
            self.path.display()
        )))
    }
}
