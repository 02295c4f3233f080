//! The pattern store fake: one projection per workspace in memory. The projection rules
//! (fingerprint lookup, roll-up, cap eviction) are the domain's; this file only stores rows.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use metis_domain::patterns::{
    FingerprintIdTaken, MemoryRows, PATTERN_SCHEMA_VERSION, PatternCaps, PatternRecord,
    apply_record,
};

use super::lock;
use crate::patterns::{
    ModelTotals, OutcomeRow, PatternError, PatternStats, PatternStore, RecordOutcome,
};

/// One workspace's projection: the domain's in-memory rows plus what a store file adds.
#[derive(Debug, Clone)]
struct Projection {
    schema_version: i64,
    rows: MemoryRows,
    embedding_cache_rows: u64,
}

impl Default for Projection {
    fn default() -> Self {
        Self {
            schema_version: PATTERN_SCHEMA_VERSION,
            rows: MemoryRows::default(),
            embedding_cache_rows: 0,
        }
    }
}

/// An in-memory `PatternStore`: one projection per workspace string. Clones share the data.
#[derive(Debug, Clone, Default)]
pub struct InMemoryPatternStore {
    caps: PatternCaps,
    workspaces: Arc<Mutex<BTreeMap<String, Projection>>>,
}

/// Why `workspace` cannot hold a store (`None` = it can): it must be an absolute path to an
/// existing directory that accepts a new file.
#[must_use]
pub fn unusable_workspace(workspace: &str) -> Option<String> {
    let ws = Path::new(workspace);
    if !ws.is_absolute() {
        return Some(format!("workspace {workspace} is not an absolute path"));
    }
    if !ws.is_dir() {
        return Some(format!(
            "workspace {workspace} is not a directory on this host"
        ));
    }
    let probe = ws.join(format!(".metis-write-probe.{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(format!("{workspace} is not writable: {e}")),
    }
}

impl InMemoryPatternStore {
    #[must_use]
    pub fn new(caps: PatternCaps) -> Self {
        Self {
            caps,
            workspaces: Arc::default(),
        }
    }

    /// Another handle on the same projections with different caps.
    #[must_use]
    pub fn with_caps(&self, caps: PatternCaps) -> Self {
        Self {
            caps,
            workspaces: Arc::clone(&self.workspaces),
        }
    }

    /// Stamp a workspace's store with `version` (tests: a store from a newer binary).
    pub fn set_schema_version(&self, workspace: &str, version: i64) {
        lock(&self.workspaces)
            .entry(workspace.to_owned())
            .or_default()
            .schema_version = version;
    }

    fn location(workspace: &str) -> String {
        format!("memory:{workspace}")
    }

    fn refused(workspace: &str, e: FingerprintIdTaken) -> PatternError {
        PatternError::Unavailable {
            location: Self::location(workspace),
            message: e.to_string(),
        }
    }

    fn check_version(workspace: &str, p: &Projection) -> Result<(), PatternError> {
        if p.schema_version > PATTERN_SCHEMA_VERSION {
            return Err(PatternError::TooNew {
                location: Self::location(workspace),
                found: p.schema_version,
                supported: PATTERN_SCHEMA_VERSION,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl PatternStore for InMemoryPatternStore {
    async fn record(
        &self,
        workspace: &str,
        record: PatternRecord,
    ) -> Result<RecordOutcome, PatternError> {
        if let Some(reason) = unusable_workspace(workspace) {
            return Ok(RecordOutcome::Skipped { reason });
        }
        let mut all = lock(&self.workspaces);
        let p = all.entry(workspace.to_owned()).or_default();
        Self::check_version(workspace, p)?;
        // Work on a copy so a failed record changes nothing (one transaction).
        let mut next = p.clone();
        let res = apply_record(&mut next.rows, &record, &self.caps)
            .map_err(|e| Self::refused(workspace, e))?;
        *p = next;
        Ok(RecordOutcome::Recorded(res))
    }

    async fn record_many(
        &self,
        workspace: &str,
        records: Vec<PatternRecord>,
    ) -> Result<u64, PatternError> {
        if unusable_workspace(workspace).is_some() {
            return Ok(0);
        }
        let mut all = lock(&self.workspaces);
        let p = all.entry(workspace.to_owned()).or_default();
        Self::check_version(workspace, p)?;
        // One transaction: all of the batch or none of it.
        let mut next = p.clone();
        for r in &records {
            apply_record(&mut next.rows, r, &self.caps).map_err(|e| Self::refused(workspace, e))?;
        }
        *p = next;
        Ok(records.len() as u64)
    }

    async fn replace_all(
        &self,
        workspace: &str,
        records: Vec<PatternRecord>,
    ) -> Result<u64, PatternError> {
        if let Some(reason) = unusable_workspace(workspace) {
            return Err(PatternError::Unavailable {
                location: Self::location(workspace),
                message: reason,
            });
        }
        let mut all = lock(&self.workspaces);
        let p = all.entry(workspace.to_owned()).or_default();
        Self::check_version(workspace, p)?;
        let mut next = Projection {
            embedding_cache_rows: p.embedding_cache_rows,
            ..Projection::default()
        };
        for r in &records {
            apply_record(&mut next.rows, r, &self.caps).map_err(|e| Self::refused(workspace, e))?;
        }
        *p = next;
        Ok(records.len() as u64)
    }

    async fn stats(&self, workspace: &str) -> Result<Option<PatternStats>, PatternError> {
        let all = lock(&self.workspaces);
        let Some(p) = all.get(workspace) else {
            return Ok(None);
        };
        Self::check_version(workspace, p)?;
        let mut models: BTreeMap<&str, ModelTotals> = BTreeMap::new();
        for ((_, model), o) in &p.rows.outcomes {
            let m = models.entry(model).or_insert_with(|| ModelTotals {
                model: model.clone(),
                samples: 0,
                sum_cost_usd_micros: 0,
                sum_latency_ms: 0.0,
            });
            m.samples += o.sample_size;
            m.sum_cost_usd_micros += o.sum_cost_usd_micros;
            m.sum_latency_ms += o.sum_latency_ms;
        }
        let mut models: Vec<ModelTotals> = models.into_values().collect();
        models.sort_by(|a, b| {
            b.samples
                .cmp(&a.samples)
                .then_with(|| a.model.cmp(&b.model))
        });
        Ok(Some(PatternStats {
            location: Self::location(workspace),
            schema_version: p.schema_version,
            fingerprints: p.rows.fingerprints.len() as u64,
            outcomes: p.rows.outcomes.len() as u64,
            samples: models.iter().map(|m| m.samples).sum(),
            embedding_cache_rows: p.embedding_cache_rows,
            models,
            oldest_update_us: p.rows.outcomes.values().map(|o| o.last_updated_at_us).min(),
            newest_update_us: p.rows.outcomes.values().map(|o| o.last_updated_at_us).max(),
        }))
    }

    async fn outcomes(&self, workspace: &str) -> Result<Vec<OutcomeRow>, PatternError> {
        let all = lock(&self.workspaces);
        let Some(p) = all.get(workspace) else {
            return Ok(Vec::new());
        };
        Self::check_version(workspace, p)?;
        Ok(p.rows
            .outcomes
            .iter()
            .filter_map(|((fp, model), o)| {
                let f = p.rows.fingerprints.get(fp)?;
                Some(OutcomeRow {
                    fingerprint_id: fp.clone(),
                    structural_sig: f.0.clone(),
                    primary_model: model.clone(),
                    sample_size: o.sample_size,
                    success_score_mean: o.success_score_mean,
                    success_score_count: o.success_score_count,
                    sum_cost_usd_micros: o.sum_cost_usd_micros,
                    sum_latency_ms: o.sum_latency_ms,
                    pricing_version_last: o.pricing_version_last.clone(),
                    last_updated_at_us: o.last_updated_at_us,
                })
            })
            .collect())
    }
}
