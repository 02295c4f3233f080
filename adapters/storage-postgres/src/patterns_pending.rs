//! The pattern stores of a PostgreSQL backend are not in this build: every operation answers
//! with an error saying so (never a silent success, never a file on the side). The module
//! `crate::patterns` replaces this one when the PostgreSQL pattern stores are merged.

use std::path::{Path, PathBuf};

use metis_domain::patterns::PatternRecord;
use metis_ports::patterns::{OutcomeRow, PatternError, PatternStats, RecordOutcome};
use metis_ports::storage::{
    MaintenanceError, Migratable, MigrationPlan, PatternDump, PatternFiles, Progress,
};

/// Why every call fails.
pub(crate) const NOT_IN_THIS_BUILD: &str = "pattern stores on PostgreSQL: not in this build";

/// The pattern stores of a PostgreSQL backend, pending.
#[derive(Debug, Clone)]
pub(crate) struct PatternsPending {
    pub(crate) location: String,
}

impl PatternsPending {
    fn error(&self) -> PatternError {
        PatternError::Unavailable {
            location: self.location.clone(),
            message: NOT_IN_THIS_BUILD.to_owned(),
        }
    }

    fn place(&self, workspace: &str) -> PathBuf {
        PathBuf::from(format!("{}#patterns:{workspace}", self.location))
    }
}

impl PatternFiles for PatternsPending {
    fn path(&self, workspace: &str) -> PathBuf {
        self.place(workspace)
    }

    fn record(&self, _: &str, _: &PatternRecord) -> Result<RecordOutcome, PatternError> {
        Err(self.error())
    }

    fn record_many(&self, _: &str, _: &[PatternRecord]) -> Result<u64, PatternError> {
        Err(self.error())
    }

    fn stats(&self, _: &str) -> Result<Option<PatternStats>, PatternError> {
        Err(self.error())
    }

    fn outcomes(&self, _: &str) -> Result<Vec<OutcomeRow>, PatternError> {
        Err(self.error())
    }

    fn replace_all(
        &self,
        _: &str,
        _: &[PatternRecord],
        _: Progress<'_>,
    ) -> Result<u64, PatternError> {
        Err(self.error())
    }

    fn export(&self, _: &str) -> Result<PatternDump, PatternError> {
        Err(self.error())
    }

    fn import(&self, _: &str, _: &PatternDump) -> Result<(), PatternError> {
        Err(self.error())
    }

    fn migration(&self, workspace: &str) -> Box<dyn Migratable> {
        Box::new(PendingMigration {
            path: self.place(workspace),
        })
    }
}

struct PendingMigration {
    path: PathBuf,
}

impl Migratable for PendingMigration {
    fn path(&self) -> &Path {
        &self.path
    }

    fn plan(&self) -> Result<MigrationPlan, MaintenanceError> {
        Err(MaintenanceError::Refused(NOT_IN_THIS_BUILD.to_owned()))
    }

    fn apply(&self) -> Result<MigrationPlan, MaintenanceError> {
        Err(MaintenanceError::Refused(NOT_IN_THIS_BUILD.to_owned()))
    }

    fn backup(&self, _: &Path, _: Progress<'_>) -> Result<(), MaintenanceError> {
        Err(MaintenanceError::Refused(NOT_IN_THIS_BUILD.to_owned()))
    }
}
