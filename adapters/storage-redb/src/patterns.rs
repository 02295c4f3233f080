//! The per-workspace pattern store in redb (`<workspace>/.metis/patterns.redb`, or one
//! directory per workspace hash under a patterns directory): [`RedbPatternStore`].
//!
//! Invariants (those of the SQLite pattern store):
//! - `store_meta.schema_version` is an integer that only moves up; a store from a newer binary
//!   is refused untouched (version read through a read-only open).
//! - `record` is one write transaction: fingerprint lookup by signature (oldest first, then
//!   id, through `fingerprints_by_sig`), outcome upsert (`outcomes` and its eviction index
//!   `outcomes_by_age`, keyed exactly in eviction order: last update, sample size,
//!   fingerprint, model), then the caps (age trim above the soft cap; above the hard cap,
//!   eviction down to the soft cap; orphaned fingerprints removed).
//! - A workspace that is not an existing, writable directory is skipped with one WARN.
//! - `replace_all` rebuilds the projection in one transaction (the embedding cache is kept).
//! - Blocking work runs on tokio's blocking pool.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use gw_domain::patterns::{
    PATTERN_SCHEMA_VERSION, PatternCaps, PatternRecord, mean_add, workspace_hash,
};
use gw_ports::patterns::{
    ModelTotals, OutcomeRow, PatternError, PatternStats, PatternStore, RecordOutcome, RecordResult,
};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition, WriteTransaction,
};

use crate::db::{FileKind, Result, Sharing, StoreError, blocking, open_registered};

/// The file name of a redb pattern store.
pub const PATTERNS_FILE: &str = "patterns.redb";

const STORE_META: TableDefinition<&str, &str> = TableDefinition::new("store_meta");
/// id -> (kind, `structural_json`, `structural_sig`, `embedding_provider`, `created_at_us`).
type FpValue = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    i64,
);
const FINGERPRINTS: TableDefinition<&str, FpValue> = TableDefinition::new("fingerprints");
/// (`structural_sig`, `created_at_us`, id) of fingerprints without an embedding provider.
const FP_BY_SIG: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("fingerprints_by_sig");
/// (fingerprint, model) -> (`sample_size`, mean, score count, cost micros, latency ms,
/// `pricing_version_last`, `last_updated_at_us`).
type OutcomeValue = (u64, f64, u64, i64, f64, &'static str, i64);
const OUTCOMES: TableDefinition<(&str, &str), OutcomeValue> = TableDefinition::new("outcomes");
/// (`last_updated_at_us`, `sample_size`, fingerprint, model): the eviction order.
const OUTCOMES_BY_AGE: TableDefinition<(i64, u64, &str, &str), ()> =
    TableDefinition::new("outcomes_by_age");
/// `turn_id` -> score history entry JSON (kept for parity with the SQLite store).
const SCORE_HISTORY: TableDefinition<&str, &str> = TableDefinition::new("outcome_score_history");
/// (`text_sha256`, `provider_id`) -> embedding bytes.
const EMBEDDING_CACHE: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("embedding_cache");

fn read_pattern_version(tx: &ReadTransaction) -> Result<Option<i64>> {
    let meta = match tx.open_table(STORE_META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(meta
        .get("schema_version")?
        .and_then(|g| g.value().trim().parse::<i64>().ok()))
}

fn init_patterns(tx: &WriteTransaction) -> Result<()> {
    let mut meta = tx.open_table(STORE_META)?;
    let found = meta
        .get("schema_version")?
        .and_then(|g| g.value().trim().parse::<i64>().ok());
    if let Some(found) = found
        && found > PATTERN_SCHEMA_VERSION
    {
        return Err(StoreError::TooNew {
            found,
            supported: PATTERN_SCHEMA_VERSION,
        });
    }
    if found.is_none_or(|f| f < PATTERN_SCHEMA_VERSION) {
        meta.insert(
            "schema_version",
            PATTERN_SCHEMA_VERSION.to_string().as_str(),
        )?;
    }
    drop(meta);
    tx.open_table(FINGERPRINTS)?;
    tx.open_table(FP_BY_SIG)?;
    tx.open_table(OUTCOMES)?;
    tx.open_table(OUTCOMES_BY_AGE)?;
    tx.open_table(SCORE_HISTORY)?;
    tx.open_table(EMBEDDING_CACHE)?;
    Ok(())
}

const PATTERN_FILE: FileKind = FileKind {
    read_version: read_pattern_version,
    supported: PATTERN_SCHEMA_VERSION,
    init: init_patterns,
};

/// Where a workspace's redb store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedbPatternLocation {
    /// `<workspace>/.metis/patterns.redb` (the workspace must be an existing directory).
    InWorkspace,
    /// `<dir>/<first 16 hex of the workspace hash>/patterns.redb`.
    Dir(PathBuf),
}

impl RedbPatternLocation {
    /// The store file of `workspace`.
    #[must_use]
    pub fn db_path(&self, workspace: &str) -> PathBuf {
        match self {
            Self::InWorkspace => Path::new(workspace).join(".metis").join(PATTERNS_FILE),
            Self::Dir(d) => d.join(&workspace_hash(workspace)[..16]).join(PATTERNS_FILE),
        }
    }

    /// Check the store's directory, creating `.metis` (or the hash directory) when missing.
    /// `Err(reason)` means "skip this workspace".
    fn prepare(&self, workspace: &str) -> std::result::Result<PathBuf, String> {
        let path = self.db_path(workspace);
        if *self == Self::InWorkspace {
            let ws = Path::new(workspace);
            if !ws.is_absolute() {
                return Err(format!("workspace {workspace} is not an absolute path"));
            }
            if !ws.is_dir() {
                return Err(format!(
                    "workspace {workspace} is not a directory on this host"
                ));
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let probe = dir.join(format!(".write-probe.{}", std::process::id()));
            std::fs::write(&probe, b"")
                .map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
            let _ = std::fs::remove_file(&probe);
        }
        Ok(path)
    }
}

struct Tables<'txn> {
    fps: Table<'txn, &'static str, FpValue>,
    by_sig: Table<'txn, (&'static str, i64, &'static str), ()>,
    outcomes: Table<'txn, (&'static str, &'static str), OutcomeValue>,
    by_age: Table<'txn, (i64, u64, &'static str, &'static str), ()>,
    history: Table<'txn, &'static str, &'static str>,
}

/// One outcome, owned.
#[derive(Debug, Clone)]
struct Outcome {
    sample_size: u64,
    mean: f64,
    count: u64,
    cost: i64,
    latency: f64,
    pricing: String,
    last: i64,
}

impl<'txn> Tables<'txn> {
    fn open(tx: &'txn WriteTransaction) -> Result<Self> {
        Ok(Self {
            fps: tx.open_table(FINGERPRINTS)?,
            by_sig: tx.open_table(FP_BY_SIG)?,
            outcomes: tx.open_table(OUTCOMES)?,
            by_age: tx.open_table(OUTCOMES_BY_AGE)?,
            history: tx.open_table(SCORE_HISTORY)?,
        })
    }

    fn clear(&mut self) -> Result<()> {
        self.fps.retain(|_, _| false)?;
        self.by_sig.retain(|_, _| false)?;
        self.outcomes.retain(|_, _| false)?;
        self.by_age.retain(|_, _| false)?;
        self.history.retain(|_, _| false)?;
        Ok(())
    }

    fn outcome(&self, fp: &str, model: &str) -> Result<Option<Outcome>> {
        Ok(self.outcomes.get((fp, model))?.map(|g| {
            let (sample_size, mean, count, cost, latency, pricing, last) = g.value();
            Outcome {
                sample_size,
                mean,
                count,
                cost,
                latency,
                pricing: pricing.to_owned(),
                last,
            }
        }))
    }

    fn put_outcome(
        &mut self,
        fp: &str,
        model: &str,
        o: &Outcome,
        old: Option<&Outcome>,
    ) -> Result<()> {
        if let Some(old) = old {
            self.by_age.remove((old.last, old.sample_size, fp, model))?;
        }
        self.outcomes.insert(
            (fp, model),
            (
                o.sample_size,
                o.mean,
                o.count,
                o.cost,
                o.latency,
                o.pricing.as_str(),
                o.last,
            ),
        )?;
        self.by_age.insert((o.last, o.sample_size, fp, model), ())?;
        Ok(())
    }

    fn remove_outcome(&mut self, last: i64, sample: u64, fp: &str, model: &str) -> Result<()> {
        self.by_age.remove((last, sample, fp, model))?;
        self.outcomes.remove((fp, model))?;
        Ok(())
    }

    /// Apply one observation (see the module invariants).
    fn apply(&mut self, r: &PatternRecord, caps: &PatternCaps) -> Result<RecordResult> {
        let found: Option<(String, i64)> = {
            let mut range = self
                .by_sig
                .range((r.structural_sig.as_str(), i64::MIN, "")..)?;
            match range.next() {
                Some(item) => {
                    let (k, _) = item?;
                    let (sig, created, id) = k.value();
                    (sig == r.structural_sig).then(|| (id.to_owned(), created))
                }
                None => None,
            }
        };
        let (fp_id, was_new) = match found {
            Some((id, created)) => {
                if r.at_us < created {
                    // The first record defines the row; a replay of older events keeps the
                    // minimum.
                    let row = self.fps.get(id.as_str())?.map(|g| {
                        let (kind, json, sig, provider, _) = g.value();
                        (
                            kind.to_owned(),
                            json.to_owned(),
                            sig.to_owned(),
                            provider.map(str::to_owned),
                        )
                    });
                    if let Some((kind, json, sig, provider)) = row {
                        self.by_sig.remove((sig.as_str(), created, id.as_str()))?;
                        self.fps.insert(
                            id.as_str(),
                            (
                                kind.as_str(),
                                json.as_str(),
                                sig.as_str(),
                                provider.as_deref(),
                                r.at_us,
                            ),
                        )?;
                        self.by_sig
                            .insert((sig.as_str(), r.at_us, id.as_str()), ())?;
                    }
                }
                (id, false)
            }
            None => {
                if self.fps.get(r.fingerprint_id.as_str())?.is_some() {
                    return Err(StoreError::Other(format!(
                        "fingerprint id {} already exists with another signature",
                        r.fingerprint_id
                    )));
                }
                self.fps.insert(
                    r.fingerprint_id.as_str(),
                    (
                        r.kind.as_str(),
                        r.structural_json.as_str(),
                        r.structural_sig.as_str(),
                        None,
                        r.at_us,
                    ),
                )?;
                self.by_sig.insert(
                    (
                        r.structural_sig.as_str(),
                        r.at_us,
                        r.fingerprint_id.as_str(),
                    ),
                    (),
                )?;
                (r.fingerprint_id.clone(), true)
            }
        };
        let before = self.outcome(&fp_id, &r.primary_model)?;
        let sample_before = before.as_ref().map_or(0, |o| o.sample_size);
        let next = match &before {
            Some(o) => {
                let (mean, count) = match r.success_score {
                    Some(s) => (mean_add(o.mean, o.count, s), o.count + 1),
                    None => (o.mean, o.count),
                };
                Outcome {
                    sample_size: o.sample_size + 1,
                    mean,
                    count,
                    cost: o.cost + r.cost_usd_micros,
                    latency: o.latency + r.latency_ms,
                    pricing: if r.at_us >= o.last {
                        r.pricing_version.clone()
                    } else {
                        o.pricing.clone()
                    },
                    last: o.last.max(r.at_us),
                }
            }
            None => Outcome {
                sample_size: 1,
                mean: r.success_score.unwrap_or(0.0),
                count: u64::from(r.success_score.is_some()),
                cost: r.cost_usd_micros,
                latency: r.latency_ms,
                pricing: r.pricing_version.clone(),
                last: r.at_us,
            },
        };
        self.put_outcome(&fp_id, &r.primary_model, &next, before.as_ref())?;
        let (over_soft_cap, rows_auto_evicted) = self.enforce_caps(caps, r.at_us)?;
        Ok(RecordResult {
            fingerprint_id: fp_id,
            primary_model: r.primary_model.clone(),
            sample_size_before: sample_before,
            sample_size_after: sample_before + 1,
            was_new_fingerprint: was_new,
            over_soft_cap,
            rows_auto_evicted,
        })
    }

    /// The caps at time `now`: (over the soft cap, outcome rows evicted).
    fn enforce_caps(&mut self, caps: &PatternCaps, now: i64) -> Result<(bool, u64)> {
        let n = self.outcomes.len()?;
        if n <= caps.soft_outcomes {
            return Ok((false, 0));
        }
        let cutoff = caps.age_cutoff(now);
        type AgeKey = (i64, u64, String, String);
        let mut stale: Vec<AgeKey> = Vec::new();
        for item in self.by_age.range(..(cutoff, 0u64, "", ""))? {
            let (k, _) = item?;
            let (last, sample, fp, model) = k.value();
            stale.push((last, sample, fp.to_owned(), model.to_owned()));
        }
        let mut evicted = 0u64;
        for (last, sample, fp, model) in &stale {
            self.remove_outcome(*last, *sample, fp, model)?;
            evicted += 1;
        }
        if n > caps.hard_outcomes {
            let left = n - evicted;
            if left > caps.soft_outcomes {
                let excess = (left - caps.soft_outcomes) as usize;
                let mut victims: Vec<AgeKey> = Vec::with_capacity(excess);
                for item in self.by_age.iter()?.take(excess) {
                    let (k, _) = item?;
                    let (last, sample, fp, model) = k.value();
                    victims.push((last, sample, fp.to_owned(), model.to_owned()));
                }
                for (last, sample, fp, model) in &victims {
                    self.remove_outcome(*last, *sample, fp, model)?;
                    evicted += 1;
                }
            }
        }
        if evicted > 0 {
            let mut used: HashSet<String> = HashSet::new();
            for item in self.outcomes.iter()? {
                let (k, _) = item?;
                used.insert(k.value().0.to_owned());
            }
            let mut orphans: Vec<(String, String, i64)> = Vec::new();
            for item in self.fps.iter()? {
                let (k, v) = item?;
                if !used.contains(k.value()) {
                    let (_, _, sig, _, created) = v.value();
                    orphans.push((k.value().to_owned(), sig.to_owned(), created));
                }
            }
            for (id, sig, created) in orphans {
                self.fps.remove(id.as_str())?;
                self.by_sig.remove((sig.as_str(), created, id.as_str()))?;
            }
        }
        Ok((n - evicted > caps.soft_outcomes, evicted))
    }
}

/// The redb pattern stores of every workspace (cheap to clone).
#[derive(Clone)]
pub struct RedbPatternStore {
    inner: Arc<State>,
}

struct State {
    location: RedbPatternLocation,
    caps: PatternCaps,
    sharing: Sharing,
    skipped: Mutex<HashSet<String>>,
    /// Open stores (a redb open checks the version and commits the schema: too costly per
    /// record). Emptied when it reaches [`MAX_OPEN_STORES`].
    open: Mutex<HashMap<PathBuf, Arc<Database>>>,
}

/// Most store files kept open at once.
const MAX_OPEN_STORES: usize = 64;

impl std::fmt::Debug for RedbPatternStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbPatternStore")
            .field("location", &self.inner.location)
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
    pub fn new(location: RedbPatternLocation, caps: PatternCaps) -> Self {
        Self {
            inner: Arc::new(State {
                location,
                caps,
                sharing: Sharing::default(),
                skipped: Mutex::new(HashSet::new()),
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The store file of `workspace`.
    #[must_use]
    pub fn db_path(&self, workspace: &str) -> PathBuf {
        self.inner.location.db_path(workspace)
    }

    fn open(&self, path: &Path, create: bool) -> std::result::Result<Arc<Database>, PatternError> {
        let mut open = self
            .inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = open.get(path) {
            return Ok(Arc::clone(db));
        }
        let db = open_registered(path, self.inner.sharing, create, &PATTERN_FILE)
            .map_err(|e| pattern_error(path, e))?;
        if open.len() >= MAX_OPEN_STORES {
            open.clear();
        }
        open.insert(path.to_path_buf(), Arc::clone(&db));
        Ok(db)
    }

    /// Close the cached handle of `workspace`'s store (tests; after an outside change).
    pub fn forget(&self, workspace: &str) {
        let path = self.db_path(workspace);
        self.inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&path);
    }

    fn writable(
        &self,
        workspace: &str,
    ) -> std::result::Result<std::result::Result<(PathBuf, Arc<Database>), String>, PatternError>
    {
        match self.inner.location.prepare(workspace) {
            Ok(path) => {
                let db = self.open(&path, true)?;
                Ok(Ok((path, db)))
            }
            Err(reason) => {
                let first = self
                    .inner
                    .skipped
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(workspace.to_owned());
                if first {
                    tracing::warn!(workspace, reason = %reason, "pattern store skipped for this workspace");
                }
                Ok(Err(reason))
            }
        }
    }

    /// Record without a runtime.
    ///
    /// # Errors
    /// As `PatternStore::record`.
    pub fn record_blocking(
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
            let res = Tables::open(&tx)?.apply(r, &self.inner.caps)?;
            tx.commit()?;
            Ok(res)
        };
        run()
            .map(RecordOutcome::Recorded)
            .map_err(|e| pattern_error(&path, e))
    }

    /// Apply several observations to one workspace's store in one transaction (one durable
    /// commit for the batch). Returns how many were applied (0 when the workspace is
    /// skipped). Blocking.
    ///
    /// # Errors
    /// As `PatternStore::record`; on error nothing of the batch is applied.
    pub fn record_many_blocking(
        &self,
        workspace: &str,
        records: &[PatternRecord],
    ) -> std::result::Result<u64, PatternError> {
        let (path, db) = match self.writable(workspace)? {
            Ok(x) => x,
            Err(_) => return Ok(0),
        };
        let run = || -> Result<u64> {
            let tx = db.begin_write()?;
            {
                let mut t = Tables::open(&tx)?;
                for r in records {
                    t.apply(r, &self.inner.caps)?;
                }
            }
            tx.commit()?;
            Ok(records.len() as u64)
        };
        run().map_err(|e| pattern_error(&path, e))
    }

    /// Replace without a runtime, reporting progress `(done, total)`.
    ///
    /// # Errors
    /// As `PatternStore::replace_all`.
    pub fn replace_all_blocking(
        &self,
        workspace: &str,
        records: &[PatternRecord],
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> std::result::Result<u64, PatternError> {
        let path = self.db_path(workspace);
        let (path, db) = match self.writable(workspace)? {
            Ok(x) => x,
            Err(reason) => return Err(unavailable(&path, reason)),
        };
        let total = records.len() as u64;
        let run = || -> Result<()> {
            let tx = db.begin_write()?;
            {
                let mut t = Tables::open(&tx)?;
                t.clear()?;
                for (i, r) in records.iter().enumerate() {
                    t.apply(r, &self.inner.caps)?;
                    if i % 1000 == 999 {
                        progress(i as u64 + 1, total);
                    }
                }
            }
            tx.commit()?;
            Ok(())
        };
        run().map_err(|e| pattern_error(&path, e))?;
        progress(total, total);
        Ok(total)
    }

    fn existing(
        &self,
        workspace: &str,
    ) -> std::result::Result<Option<(PathBuf, Arc<Database>)>, PatternError> {
        let path = self.db_path(workspace);
        if !path.is_file() {
            return Ok(None);
        }
        let db = self.open(&path, false)?;
        Ok(Some((path, db)))
    }

    /// Stats without a runtime.
    ///
    /// # Errors
    /// As `PatternStore::stats`.
    pub fn stats_blocking(
        &self,
        workspace: &str,
    ) -> std::result::Result<Option<PatternStats>, PatternError> {
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

    /// Outcomes without a runtime.
    ///
    /// # Errors
    /// As `PatternStore::outcomes`.
    pub fn outcomes_blocking(
        &self,
        workspace: &str,
    ) -> std::result::Result<Vec<OutcomeRow>, PatternError> {
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
}

async fn run<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, PatternError> + Send + 'static,
) -> std::result::Result<T, PatternError> {
    blocking(f).await.unwrap_or_else(|e| {
        Err(PatternError::Unavailable {
            location: "pattern store".into(),
            message: format!("task failed: {e}"),
        })
    })
}

#[async_trait]
impl PatternStore for RedbPatternStore {
    async fn record(
        &self,
        workspace: &str,
        record: PatternRecord,
    ) -> std::result::Result<RecordOutcome, PatternError> {
        let me = self.clone();
        let ws = workspace.to_owned();
        run(move || me.record_blocking(&ws, &record)).await
    }

    async fn record_many(
        &self,
        workspace: &str,
        records: Vec<PatternRecord>,
    ) -> std::result::Result<u64, PatternError> {
        let me = self.clone();
        let ws = workspace.to_owned();
        run(move || me.record_many_blocking(&ws, &records)).await
    }

    async fn replace_all(
        &self,
        workspace: &str,
        records: Vec<PatternRecord>,
    ) -> std::result::Result<u64, PatternError> {
        let me = self.clone();
        let ws = workspace.to_owned();
        run(move || me.replace_all_blocking(&ws, &records, &|_, _| {})).await
    }

    async fn stats(
        &self,
        workspace: &str,
    ) -> std::result::Result<Option<PatternStats>, PatternError> {
        let me = self.clone();
        let ws = workspace.to_owned();
        run(move || me.stats_blocking(&ws)).await
    }

    async fn outcomes(
        &self,
        workspace: &str,
    ) -> std::result::Result<Vec<OutcomeRow>, PatternError> {
        let me = self.clone();
        let ws = workspace.to_owned();
        run(move || me.outcomes_blocking(&ws)).await
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
pub use gw_ports::patterns::FingerprintRow;

impl RedbPatternStore {
    /// Every fingerprint and outcome of `workspace`'s store (empty when it does not exist).
    /// Blocking.
    ///
    /// # Errors
    /// As `PatternStore::outcomes`.
    pub fn export_blocking(
        &self,
        workspace: &str,
    ) -> std::result::Result<(Vec<FingerprintRow>, Vec<OutcomeRow>), PatternError> {
        let outcomes = self.outcomes_blocking(workspace)?;
        let Some((path, db)) = self.existing(workspace)? else {
            return Ok((Vec::new(), outcomes));
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
        let fps = read().map_err(|e| pattern_error(&path, e))?;
        Ok((fps, outcomes))
    }

    /// Replace `workspace`'s projection with these rows, as given, in one transaction (the
    /// embedding cache is kept). Blocking.
    ///
    /// # Errors
    /// As `PatternStore::replace_all`.
    pub fn import_blocking(
        &self,
        workspace: &str,
        fingerprints: &[FingerprintRow],
        outcomes: &[OutcomeRow],
    ) -> std::result::Result<(), PatternError> {
        let path = self.db_path(workspace);
        let (path, db) = match self.writable(workspace)? {
            Ok(x) => x,
            Err(reason) => return Err(unavailable(&path, reason)),
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
                    let row = Outcome {
                        sample_size: o.sample_size,
                        mean: o.success_score_mean,
                        count: o.success_score_count,
                        cost: o.sum_cost_usd_micros,
                        latency: o.sum_latency_ms,
                        pricing: o.pricing_version_last.clone(),
                        last: o.last_updated_at_us,
                    };
                    t.put_outcome(&o.fingerprint_id, &o.primary_model, &row, None)?;
                }
            }
            tx.commit()?;
            Ok(())
        };
        run().map_err(|e| pattern_error(&path, e))
    }
}
