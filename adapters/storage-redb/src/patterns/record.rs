//! Row access of the pattern rules ([`metis_domain::patterns::PatternRows`]) over one redb write
//! transaction. The rules themselves (lookup, roll-up, caps) are the domain's; this keeps the
//! tables and their indexes in step.
//!
//! Invariants:
//! - `fingerprints_by_sig` holds (signature, `created_at_us`, id) of every fingerprint, so the
//!   oldest fingerprint of a signature is the first key of its range.
//! - `outcomes_by_age` holds (last update, sample size, fingerprint, model) of every outcome:
//!   exactly the eviction order, so eviction reads its first keys.

use std::collections::HashSet;

use metis_domain::patterns::{FingerprintIdTaken, OutcomeTotals, PatternRecord, PatternRows};
use metis_domain::time::Timestamp;
use redb::{ReadableTable, ReadableTableMetadata, Table, WriteTransaction};

use super::schema::{
    FINGERPRINTS, FP_BY_SIG, FpValue, OUTCOMES, OUTCOMES_BY_AGE, OutcomeValue, SCORE_HISTORY,
};
use crate::db::{Result, StoreError};

impl From<FingerprintIdTaken> for StoreError {
    fn from(e: FingerprintIdTaken) -> Self {
        StoreError::Other(e.to_string())
    }
}

/// (last update, sample size, fingerprint, model), owned.
type AgeKey = (i64, u64, String, String);

pub(super) struct Tables<'txn> {
    pub(super) fps: Table<'txn, &'static str, FpValue>,
    pub(super) by_sig: Table<'txn, (&'static str, i64, &'static str), ()>,
    outcomes: Table<'txn, (&'static str, &'static str), OutcomeValue>,
    by_age: Table<'txn, (i64, u64, &'static str, &'static str), ()>,
    history: Table<'txn, &'static str, &'static str>,
}

impl<'txn> Tables<'txn> {
    pub(super) fn open(tx: &'txn WriteTransaction) -> Result<Self> {
        Ok(Self {
            fps: tx.open_table(FINGERPRINTS)?,
            by_sig: tx.open_table(FP_BY_SIG)?,
            outcomes: tx.open_table(OUTCOMES)?,
            by_age: tx.open_table(OUTCOMES_BY_AGE)?,
            history: tx.open_table(SCORE_HISTORY)?,
        })
    }

    /// Empty the projection (the embedding cache is kept).
    pub(super) fn clear(&mut self) -> Result<()> {
        self.fps.retain(|_, _| false)?;
        self.by_sig.retain(|_, _| false)?;
        self.outcomes.retain(|_, _| false)?;
        self.by_age.retain(|_, _| false)?;
        self.history.retain(|_, _| false)?;
        Ok(())
    }

    fn remove_all(&mut self, keys: &[AgeKey]) -> Result<u64> {
        for (last, sample, fp, model) in keys {
            self.by_age
                .remove((*last, *sample, fp.as_str(), model.as_str()))?;
            self.outcomes.remove((fp.as_str(), model.as_str()))?;
        }
        Ok(keys.len() as u64)
    }
}

impl PatternRows for Tables<'_> {
    type Error = StoreError;

    fn fingerprint_by_sig(&mut self, sig: &str) -> Result<Option<(String, Timestamp)>> {
        let mut range = self.by_sig.range((sig, i64::MIN, "")..)?;
        Ok(match range.next() {
            Some(item) => {
                let (k, _) = item?;
                let (found, created, id) = k.value();
                (found == sig).then(|| (id.to_owned(), created))
            }
            None => None,
        })
    }

    fn fingerprint_exists(&mut self, id: &str) -> Result<bool> {
        Ok(self.fps.get(id)?.is_some())
    }

    fn insert_fingerprint(&mut self, r: &PatternRecord) -> Result<()> {
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
        Ok(())
    }

    fn set_fingerprint_created(&mut self, id: &str, old: Timestamp, at: Timestamp) -> Result<()> {
        let row = self.fps.get(id)?.map(|g| {
            let (kind, json, sig, provider, _) = g.value();
            (
                kind.to_owned(),
                json.to_owned(),
                sig.to_owned(),
                provider.map(str::to_owned),
            )
        });
        if let Some((kind, json, sig, provider)) = row {
            self.by_sig.remove((sig.as_str(), old, id))?;
            self.fps.insert(
                id,
                (
                    kind.as_str(),
                    json.as_str(),
                    sig.as_str(),
                    provider.as_deref(),
                    at,
                ),
            )?;
            self.by_sig.insert((sig.as_str(), at, id), ())?;
        }
        Ok(())
    }

    fn outcome(&mut self, fp: &str, model: &str) -> Result<Option<OutcomeTotals>> {
        Ok(self.outcomes.get((fp, model))?.map(|g| {
            let (sample_size, mean, count, cost, latency, pricing, last) = g.value();
            OutcomeTotals {
                sample_size,
                success_score_mean: mean,
                success_score_count: count,
                sum_cost_usd_micros: cost,
                sum_latency_ms: latency,
                pricing_version_last: pricing.to_owned(),
                last_updated_at_us: last,
            }
        }))
    }

    fn put_outcome(
        &mut self,
        fp: &str,
        model: &str,
        o: &OutcomeTotals,
        old: Option<&OutcomeTotals>,
    ) -> Result<()> {
        if let Some(old) = old {
            self.by_age
                .remove((old.last_updated_at_us, old.sample_size, fp, model))?;
        }
        self.outcomes.insert(
            (fp, model),
            (
                o.sample_size,
                o.success_score_mean,
                o.success_score_count,
                o.sum_cost_usd_micros,
                o.sum_latency_ms,
                o.pricing_version_last.as_str(),
                o.last_updated_at_us,
            ),
        )?;
        self.by_age
            .insert((o.last_updated_at_us, o.sample_size, fp, model), ())?;
        Ok(())
    }

    fn outcome_count(&mut self) -> Result<u64> {
        Ok(self.outcomes.len()?)
    }

    fn remove_outcomes_before(&mut self, cutoff: Timestamp) -> Result<u64> {
        let mut stale: Vec<AgeKey> = Vec::new();
        for item in self.by_age.range(..(cutoff, 0u64, "", ""))? {
            let (k, _) = item?;
            let (last, sample, fp, model) = k.value();
            stale.push((last, sample, fp.to_owned(), model.to_owned()));
        }
        self.remove_all(&stale)
    }

    fn remove_first_outcomes(&mut self, n: u64) -> Result<u64> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let mut victims: Vec<AgeKey> = Vec::new();
        for item in self.by_age.iter()?.take(n) {
            let (k, _) = item?;
            let (last, sample, fp, model) = k.value();
            victims.push((last, sample, fp.to_owned(), model.to_owned()));
        }
        self.remove_all(&victims)
    }

    fn remove_orphan_fingerprints(&mut self) -> Result<()> {
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
        Ok(())
    }
}
