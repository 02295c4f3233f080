//! The per-workspace pattern store in redb (`<workspace>/.metis/patterns.redb`, or one
//! directory per workspace hash under a patterns directory): [`RedbPatternStore`].
//!
//! Invariants (those of the SQLite pattern store):
//! - `store_meta.schema_version` is an integer that only moves up; a store from a newer binary
//!   is refused untouched (version read through a read-only open).
//! - `record` is one write transaction applying the domain's rules
//!   (`metis_domain::patterns::apply_record`: fingerprint lookup, outcome roll-up, caps) through
//!   the indexed tables of `record.rs` (`fingerprints_by_sig`, and `outcomes_by_age` keyed
//!   exactly in eviction order).
//! - A workspace that is not an existing, writable directory is skipped with one WARN
//!   (`metis_storage_kit::WorkspaceStores`).
//! - `replace_all` rebuilds the projection in one transaction (the embedding cache is kept).
//! - Blocking work runs on tokio's blocking pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use metis_domain::patterns::PatternRows;
use metis_domain::patterns::{OutcomeTotals, PatternCaps, PatternRecord, apply_record, replay};
use metis_ports::patterns::{
    ModelTotals, OutcomeRow, PatternError, PatternStats, RecordOutcome, RecordResult,
};
pub use metis_ports::storage::PatternPlace;
use metis_ports::storage::{Migratable, PatternDump, PatternFiles, Progress};
use metis_storage_kit::WorkspaceStores;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::db::{Result, Sharing, StoreError, open_registered};

mod record;
mod schema;

use record::Tables;
use schema::{
    EMBEDDING_CACHE, FINGERPRINTS, OUTCOMES, OUTCOMES_BY_AGE, PATTERN_FILE, STORE_META,
    read_pattern_version,
};

/// The file name of a redb pattern store.
pub const PATTERNS_FILE: &str = "patterns.redb";

/// The redb pattern stores of every workspace (cheap to clone).
#[derive(Clone)]
pub struct RedbPatternStore {
    inner: Arc<State>,
}

struct State {
    caps: PatternCaps,
    sharing: Sharing,
    /// Open stores (a redb open checks the version and commits the schema: too costly per
    /// record).
    stores: WorkspaceStores<Arc<Database>>,
}

impl std::fmt::Debug for RedbPatternStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbPatternStore")
            .field("location", self.inner.stores.place())
            .finish_non_exhaustive()
    }
}

fn unavailable(path: &Path, e: impl std::fmt::Display) -> PatternError {
    PatternError::Unavailable {
        location: path.display().to_string(),
        message: e.to_string(),
    }
}

fn pattern_error(path: &Path, e: StoreError) -> PatternError {
    match e {
        StoreError::TooNew { found, supported } => PatternError::TooNew {
            location: path.display().to_string(),
            found,
            supported,
        },
        other => unavailable(path, other),
    }
}

impl RedbPatternStore {
    #[must_use]
    pub fn new(location: PatternPlace, caps: PatternCaps) -> Self {
        Self {
            inner: Arc::new(State {
                caps,
                sharing: Sharing::default(),
                stores: WorkspaceStores::new(location, PATTERNS_FILE),
            }),
        }
    }

    /// The store file of `workspace`.
    #[must_use]
    pub fn db_path(&self, workspace: &str) -> PathBuf {
        self.inner.stores.path(workspace)
    }

    /// Open (creating when `create`) the store at `path`.
    fn opener(
        &self,
        create: bool,
    ) -> impl FnOnce(&Path) -> std::result::Result<Arc<Database>, PatternError> {
        let sharing = self.inner.sharing;
        move |path| {
            open_registered(path, sharing, create, &PATTERN_FILE)
                .map_err(|e| pattern_error(path, e))
        }
    }

    /// Close the cached handle of `workspace`'s store (tests; after an outside change).
    pub fn forget(&self, workspace: &str) {
        self.inner.stores.forget(workspace);
    }

    fn writable(
        &self,
        workspace: &str,
    ) -> std::result::Result<std::result::Result<(PathBuf, Arc<Database>), String>, PatternError>
    {
        self.inner.stores.writable(workspace, self.opener(true))
    }

    fn existing(
        &self,
        workspace: &str,
    ) -> std::result::Result<Option<(PathBuf, Arc<Database>)>, PatternError> {
        self.inner.stores.existing(workspace, self.opener(false))
    }
}

impl PatternFiles for RedbPatternStore {
    fn path(&self, workspace: &str) -> PathBuf {
        self.db_path(workspace)
    }

    fn record(
        &self,
        workspace: &str,
        r: &PatternRecord,
    ) -> std::result::Result<RecordOutcome, PatternError> {
        let (path, db) = match self.writable(workspace)? {
            Ok(x) => x,
            Err(reason) => return Ok(RecordOutcome::Skipped { reason }),
        };
        let run = || -> Result<RecordResult> {
            let tx = db.begin_write()?;
            let res = apply_record(&mut Tables::open(&tx)?, r, &self.inner.caps)?;
            tx.commit()?;
            Ok(res)
        };
        run()
            .map(RecordOutcome::Recorded)
            .map_err(|e| pattern_error(&path, e))
    }

    fn record_many(
        &self,
        workspace: &str,
        records: &[PatternRecord],
    ) -> std::result::Result<u64, PatternError> {
        let Ok((path, db)) = self.writable(workspace)? else {
            return Ok(0);
        };
        let run = || -> Result<u64> {
            let tx = db.begin_write()?;
            {
                let mut t = Tables::open(&tx)?;
                for r in records {
                    apply_record(&mut t, r, &self.inner.caps)?;
                }
            }
            tx.commit()?;
            Ok(records.len() as u64)
        };
        run().map_err(|e| pattern_error(&path, e))
    }

    fn replace_all(
        &self,
        workspace: &str,
        records: &[PatternRecord],
        progress: Progress<'_>,
    ) -> std::result::Result<u64, PatternError> {
        let (path, db) = match self.writable(workspace)? {
            Ok(x) => x,
            Err(reason) => return Err(unavailable(&self.db_path(workspace), reason)),
        };
        let run = || -> Result<u64> {
            let tx = db.begin_write()?;
            let total = {
                let mut t = Tables::open(&tx)?;
                t.clear()?;
                replay(records, progress, |r| {
                    apply_record(&mut t, r, &self.inner.caps).map(drop)
                })?
            };
            tx.commit()?;
            Ok(total)
        };
        let total = run().map_err(|e| pattern_error(&path, e))?;
        progress(total, total);
        Ok(total)
    }

    fn stats(&self, workspace: &str) -> std::result::Result<Option<PatternStats>, PatternError> {
        let Some((path, db)) = self.existing(workspace)? else {
            return Ok(None);
        };
        let read = || -> Result<PatternStats> {
            let tx = db.begin_read()?;
            let version = read_pattern_version(&tx)?.unwrap_or(0);
            let fps = tx.open_table(FINGERPRINTS)?;
            let outcomes = tx.open_table(OUTCOMES)?;
            let by_age = tx.open_table(OUTCOMES_BY_AGE)?;
            let cache = tx.open_table(EMBEDDING_CACHE)?;
            let mut models: BTreeMap<String, ModelTotals> = BTreeMap::new();
            for item in outcomes.iter()? {
                let (k, v) = item?;
                let (_, model) = k.value();
                let (sample, _, _, cost, latency, _, _) = v.value();
                let m = models
                    .entry(model.to_owned())
                    .or_insert_with(|| ModelTotals {
                        model: model.to_owned(),
                        samples: 0,
                        sum_cost_usd_micros: 0,
                        sum_latency_ms: 0.0,
                    });
                m.samples += sample;
                m.sum_cost_usd_micros += cost;
                m.sum_latency_ms += latency;
            }
            let mut models: Vec<ModelTotals> = models.into_values().collect();
            models.sort_by(|a, b| {
                b.samples
                    .cmp(&a.samples)
                    .then_with(|| a.model.cmp(&b.model))
            });
            Ok(PatternStats {
                location: path.display().to_string(),
                schema_version: version,
                fingerprints: fps.len()?,
                outcomes: outcomes.len()?,
                samples: models.iter().map(|m| m.samples).sum(),
                embedding_cache_rows: cache.len()?,
                models,
                oldest_update_us: by_age.first()?.map(|(k, _)| k.value().0),
                newest_update_us: by_age.last()?.map(|(k, _)| k.value().0),
            })
        };
        read().map(Some).map_err(|e| pattern_error(&path, e))
    }

    fn outcomes(&self, workspace: &str) -> std::result::Result<Vec<OutcomeRow>, PatternError> {
        let Some((path, db)) = self.existing(workspace)? else {
            return Ok(Vec::new());
        };
        let read = || -> Result<Vec<OutcomeRow>> {
            let tx = db.begin_read()?;
            let fps = tx.open_table(FINGERPRINTS)?;
            let outcomes = tx.open_table(OUTCOMES)?;
            let mut out = Vec::new();
            for item in outcomes.iter()? {
                let (k, v) = item?;
                let (fp, model) = k.value();
                let Some(f) = fps.get(fp)? else { continue };
                let (_, _, sig, _, _) = f.value();
                let (sample, mean, count, cost, latency, pricing, last) = v.value();
                out.push(OutcomeRow {
                    fingerprint_id: fp.to_owned(),
                    structural_sig: sig.to_owned(),
                    primary_model: model.to_owned(),
                    sample_size: sample,
                    success_score_mean: mean,
                    success_score_count: count,
                    sum_cost_usd_micros: cost,
                    sum_latency_ms: latency,
                    pricing_version_last: pricing.to_owned(),
                    last_updated_at_us: last,
                });
            }
            Ok(out)
        };
        read().map_err(|e| pattern_error(&path, e))
    }

    fn export(&self, workspace: &str) -> std::result::Result<PatternDump, PatternError> {
        let outcomes = self.outcomes(workspace)?;
        let Some((path, db)) = self.existing(workspace)? else {
            return Ok(PatternDump {
                fingerprints: Vec::new(),
                outcomes,
            });
        };
        let read = || -> Result<Vec<FingerprintRow>> {
            let tx = db.begin_read()?;
            let fps = tx.open_table(FINGERPRINTS)?;
            let mut out = Vec::new();
            for item in fps.iter()? {
                let (k, v) = item?;
                let (kind, json, sig, _, created) = v.value();
                out.push(FingerprintRow {
                    id: k.value().to_owned(),
                    kind: kind.to_owned(),
                    structural_json: json.to_owned(),
                    structural_sig: sig.to_owned(),
                    created_at_us: created,
                });
            }
            Ok(out)
        };
        let fingerprints = read().map_err(|e| pattern_error(&path, e))?;
        Ok(PatternDump {
            fingerprints,
            outcomes,
        })
    }

    fn import(&self, workspace: &str, dump: &PatternDump) -> std::result::Result<(), PatternError> {
        let (fingerprints, outcomes) = (&dump.fingerprints, &dump.outcomes);
        let (path, db) = match self.writable(workspace)? {
            Ok(x) => x,
            Err(reason) => return Err(unavailable(&self.db_path(workspace), reason)),
        };
        let run = || -> Result<()> {
            let tx = db.begin_write()?;
            {
                let mut t = Tables::open(&tx)?;
                t.clear()?;
                for f in fingerprints {
                    t.fps.insert(
                        f.id.as_str(),
                        (
                            f.kind.as_str(),
                            f.structural_json.as_str(),
                            f.structural_sig.as_str(),
                            None,
                            f.created_at_us,
                        ),
                    )?;
                    t.by_sig.insert(
                        (f.structural_sig.as_str(), f.created_at_us, f.id.as_str()),
                        (),
                    )?;
                }
                for o in outcomes {
                    let row = OutcomeTotals {
                        sample_size: o.sample_size,
                        success_score_mean: o.success_score_mean,
                        success_score_count: o.success_score_count,
                        sum_cost_usd_micros: o.sum_cost_usd_micros,
                        sum_latency_ms: o.sum_latency_ms,
                        pricing_version_last: o.pricing_version_last.clone(),
                        last_updated_at_us: o.last_updated_at_us,
                    };
                    t.put_outcome(&o.fingerprint_id, &o.primary_model, &row, None)?;
                }
            }
            tx.commit()?;
            Ok(())
        };
        run().map_err(|e| pattern_error(&path, e))
    }

    fn migration(&self, workspace: &str) -> Box<dyn Migratable> {
        Box::new(crate::backend::RedbPatternMigration {
            store: self.clone(),
            workspace: workspace.to_owned(),
            path: self.db_path(workspace),
        })
    }
}

/// Stamp the pattern store file at `path` with `version` (tests and tooling: simulate a file
/// from another binary). The file must not be open in this process.
///
/// # Errors
/// redb errors.
pub fn stamp_pattern_version(path: &Path, version: i64) -> std::result::Result<(), String> {
    let db = Database::create(path).map_err(|e| e.to_string())?;
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut meta = tx.open_table(STORE_META).map_err(|e| e.to_string())?;
        meta.insert("schema_version", version.to_string().as_str())
            .map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

/// One fingerprint row, for copies between backends (defined in the ports, shared with the
/// SQLite adapter).
pub use metis_ports::patterns::FingerprintRow;
