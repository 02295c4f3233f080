//! The rules of the pattern projection, once for every store: how one observation is applied
//! (fingerprint lookup, the outcome roll-up) and how the caps evict. A store supplies only
//! row access inside one transaction ([`PatternRows`]); the decisions are made here.
//!
//! Invariants:
//! - A record joins the oldest fingerprint (then lowest id) with its signature and no
//!   embedding provider; a replay of older events lowers that fingerprint's `created_at_us`
//!   to the earliest record. A new fingerprint id already taken by another signature is an
//!   error, never a silent merge.
//! - The roll-up is order-independent where it can be (`last_updated_at_us` is the maximum,
//!   the pricing version is the latest record's), so a rebuild from the trace equals the live
//!   store.
//! - Caps apply only above the soft cap: outcomes older than the age limit go first; above
//!   the hard cap, the oldest rows (last update, then sample size, fingerprint, model) go
//!   until the soft cap is met; fingerprints left without outcomes go with them.

use std::collections::BTreeMap;
use std::fmt;

use super::{PatternCaps, PatternRecord, mean_add};
use crate::time::Timestamp;

/// The effect of one applied observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordResult {
    pub fingerprint_id: String,
    pub primary_model: String,
    pub sample_size_before: u64,
    pub sample_size_after: u64,
    pub was_new_fingerprint: bool,
    /// More outcomes than the soft cap after this record (a `pattern.evicted` signal).
    pub over_soft_cap: bool,
    /// Outcome rows evicted by the caps during this record.
    pub rows_auto_evicted: u64,
}

/// The rolled-up totals of one (fingerprint, model) outcome row.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeTotals {
    pub sample_size: u64,
    pub success_score_mean: f64,
    pub success_score_count: u64,
    pub sum_cost_usd_micros: i64,
    pub sum_latency_ms: f64,
    pub pricing_version_last: String,
    pub last_updated_at_us: Timestamp,
}

impl OutcomeTotals {
    /// The row a first observation creates.
    #[must_use]
    pub fn first(r: &PatternRecord) -> Self {
        Self {
            sample_size: 1,
            success_score_mean: r.success_score.unwrap_or(0.0),
            success_score_count: u64::from(r.success_score.is_some()),
            sum_cost_usd_micros: r.cost_usd_micros,
            sum_latency_ms: r.latency_ms,
            pricing_version_last: r.pricing_version.clone(),
            last_updated_at_us: r.at_us,
        }
    }

    /// These totals with one more observation rolled in.
    #[must_use]
    pub fn with(&self, r: &PatternRecord) -> Self {
        let (mean, count) = match r.success_score {
            Some(s) => (
                mean_add(self.success_score_mean, self.success_score_count, s),
                self.success_score_count + 1,
            ),
            None => (self.success_score_mean, self.success_score_count),
        };
        Self {
            sample_size: self.sample_size + 1,
            success_score_mean: mean,
            success_score_count: count,
            sum_cost_usd_micros: self.sum_cost_usd_micros + r.cost_usd_micros,
            sum_latency_ms: self.sum_latency_ms + r.latency_ms,
            pricing_version_last: if r.at_us >= self.last_updated_at_us {
                r.pricing_version.clone()
            } else {
                self.pricing_version_last.clone()
            },
            last_updated_at_us: self.last_updated_at_us.max(r.at_us),
        }
    }
}

/// A record's new fingerprint id is already stored under another signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FingerprintIdTaken(pub String);

impl fmt::Display for FingerprintIdTaken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fingerprint id {} already exists with another signature",
            self.0
        )
    }
}

/// Row access to one pattern store inside one write transaction.
pub trait PatternRows {
    type Error: From<FingerprintIdTaken>;

    /// `(id, created_at_us)` of the oldest (then lowest id) fingerprint with signature `sig`
    /// and no embedding provider.
    ///
    /// # Errors
    /// Store errors.
    fn fingerprint_by_sig(&mut self, sig: &str)
    -> Result<Option<(String, Timestamp)>, Self::Error>;

    /// Whether a fingerprint with this id exists.
    ///
    /// # Errors
    /// Store errors.
    fn fingerprint_exists(&mut self, id: &str) -> Result<bool, Self::Error>;

    /// Insert the fingerprint of `r` (id, kind, JSON, signature; created at `r.at_us`).
    ///
    /// # Errors
    /// Store errors.
    fn insert_fingerprint(&mut self, r: &PatternRecord) -> Result<(), Self::Error>;

    /// Change the `created_at_us` of fingerprint `id` from `old` to `at`.
    ///
    /// # Errors
    /// Store errors.
    fn set_fingerprint_created(
        &mut self,
        id: &str,
        old: Timestamp,
        at: Timestamp,
    ) -> Result<(), Self::Error>;

    /// The outcome row of (`fingerprint`, `model`).
    ///
    /// # Errors
    /// Store errors.
    fn outcome(
        &mut self,
        fingerprint: &str,
        model: &str,
    ) -> Result<Option<OutcomeTotals>, Self::Error>;

    /// Write the outcome row of (`fingerprint`, `model`); `old` is what it replaces.
    ///
    /// # Errors
    /// Store errors.
    fn put_outcome(
        &mut self,
        fingerprint: &str,
        model: &str,
        new: &OutcomeTotals,
        old: Option<&OutcomeTotals>,
    ) -> Result<(), Self::Error>;

    /// Number of outcome rows.
    ///
    /// # Errors
    /// Store errors.
    fn outcome_count(&mut self) -> Result<u64, Self::Error>;

    /// Remove the outcomes last updated before `cutoff`; returns how many.
    ///
    /// # Errors
    /// Store errors.
    fn remove_outcomes_before(&mut self, cutoff: Timestamp) -> Result<u64, Self::Error>;

    /// Remove the first `n` outcomes in eviction order (last update, sample size,
    /// fingerprint, model, all ascending); returns how many.
    ///
    /// # Errors
    /// Store errors.
    fn remove_first_outcomes(&mut self, n: u64) -> Result<u64, Self::Error>;

    /// Remove the fingerprints no outcome refers to.
    ///
    /// # Errors
    /// Store errors.
    fn remove_orphan_fingerprints(&mut self) -> Result<(), Self::Error>;
}

/// Apply one observation (see the module invariants).
///
/// # Errors
/// The store's errors, and [`FingerprintIdTaken`].
pub fn apply_record<T: PatternRows + ?Sized>(
    rows: &mut T,
    r: &PatternRecord,
    caps: &PatternCaps,
) -> Result<RecordResult, T::Error> {
    let (fp_id, was_new) = match rows.fingerprint_by_sig(&r.structural_sig)? {
        Some((id, created)) => {
            // The first record defines the row; a replay of older events keeps the minimum.
            if r.at_us < created {
                rows.set_fingerprint_created(&id, created, r.at_us)?;
            }
            (id, false)
        }
        None => {
            if rows.fingerprint_exists(&r.fingerprint_id)? {
                return Err(FingerprintIdTaken(r.fingerprint_id.clone()).into());
            }
            rows.insert_fingerprint(r)?;
            (r.fingerprint_id.clone(), true)
        }
    };
    let before = rows.outcome(&fp_id, &r.primary_model)?;
    let next = before
        .as_ref()
        .map_or_else(|| OutcomeTotals::first(r), |o| o.with(r));
    rows.put_outcome(&fp_id, &r.primary_model, &next, before.as_ref())?;
    let sample_before = before.map_or(0, |o| o.sample_size);
    let (over_soft_cap, rows_auto_evicted) = enforce_caps(rows, caps, r.at_us)?;
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

/// The caps at time `now` (see the module invariants): (over the soft cap afterwards,
/// outcome rows evicted).
///
/// # Errors
/// The store's errors.
pub fn enforce_caps<T: PatternRows + ?Sized>(
    rows: &mut T,
    caps: &PatternCaps,
    now: Timestamp,
) -> Result<(bool, u64), T::Error> {
    let n = rows.outcome_count()?;
    if n <= caps.soft_outcomes {
        return Ok((false, 0));
    }
    let mut evicted = rows.remove_outcomes_before(caps.age_cutoff(now))?;
    if n > caps.hard_outcomes {
        let left = n - evicted;
        if left > caps.soft_outcomes {
            evicted += rows.remove_first_outcomes(left - caps.soft_outcomes)?;
        }
    }
    if evicted > 0 {
        rows.remove_orphan_fingerprints()?;
    }
    Ok((n - evicted > caps.soft_outcomes, evicted))
}

/// Apply `records` in order through `apply`, reporting `(done, total)` every 1000 records (a
/// projection rebuild; the caller reports the end once its transaction committed).
///
/// # Errors
/// The first error of `apply` (the caller's transaction is then dropped).
pub fn replay<E>(
    records: &[PatternRecord],
    progress: &(dyn Fn(u64, u64) + Sync),
    mut apply: impl FnMut(&PatternRecord) -> Result<(), E>,
) -> Result<u64, E> {
    let total = records.len() as u64;
    for (i, r) in records.iter().enumerate() {
        apply(r)?;
        if i % 1000 == 999 {
            progress(i as u64 + 1, total);
        }
    }
    Ok(total)
}

/// The projection's rows in memory: the reference store for the rules above (the port fakes
/// keep a workspace's projection in one, and the rules' own tests run on it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryRows {
    /// Fingerprints by id: `(structural_sig, created_at_us)`.
    pub fingerprints: BTreeMap<String, (String, Timestamp)>,
    /// Outcomes by `(fingerprint id, model)`.
    pub outcomes: BTreeMap<(String, String), OutcomeTotals>,
}

impl PatternRows for MemoryRows {
    type Error = FingerprintIdTaken;

    fn fingerprint_by_sig(
        &mut self,
        sig: &str,
    ) -> Result<Option<(String, Timestamp)>, FingerprintIdTaken> {
        Ok(self
            .fingerprints
            .iter()
            .filter(|(_, (s, _))| s == sig)
            .map(|(id, (_, created))| (id.clone(), *created))
            .min_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0))))
    }

    fn fingerprint_exists(&mut self, id: &str) -> Result<bool, FingerprintIdTaken> {
        Ok(self.fingerprints.contains_key(id))
    }

    fn insert_fingerprint(&mut self, r: &PatternRecord) -> Result<(), FingerprintIdTaken> {
        self.fingerprints.insert(
            r.fingerprint_id.clone(),
            (r.structural_sig.clone(), r.at_us),
        );
        Ok(())
    }

    fn set_fingerprint_created(
        &mut self,
        id: &str,
        _old: Timestamp,
        at: Timestamp,
    ) -> Result<(), FingerprintIdTaken> {
        if let Some(f) = self.fingerprints.get_mut(id) {
            f.1 = at;
        }
        Ok(())
    }

    fn outcome(
        &mut self,
        fp: &str,
        model: &str,
    ) -> Result<Option<OutcomeTotals>, FingerprintIdTaken> {
        Ok(self
            .outcomes
            .get(&(fp.to_owned(), model.to_owned()))
            .cloned())
    }

    fn put_outcome(
        &mut self,
        fp: &str,
        model: &str,
        new: &OutcomeTotals,
        _old: Option<&OutcomeTotals>,
    ) -> Result<(), FingerprintIdTaken> {
        self.outcomes
            .insert((fp.to_owned(), model.to_owned()), new.clone());
        Ok(())
    }

    fn outcome_count(&mut self) -> Result<u64, FingerprintIdTaken> {
        Ok(self.outcomes.len() as u64)
    }

    fn remove_outcomes_before(&mut self, cutoff: Timestamp) -> Result<u64, FingerprintIdTaken> {
        let before = self.outcomes.len();
        self.outcomes.retain(|_, o| o.last_updated_at_us >= cutoff);
        Ok((before - self.outcomes.len()) as u64)
    }

    fn remove_first_outcomes(&mut self, n: u64) -> Result<u64, FingerprintIdTaken> {
        let mut order: Vec<(Timestamp, u64, (String, String))> = self
            .outcomes
            .iter()
            .map(|(k, o)| (o.last_updated_at_us, o.sample_size, k.clone()))
            .collect();
        order.sort();
        let n = usize::try_from(n).unwrap_or(usize::MAX).min(order.len());
        for (_, _, k) in order.into_iter().take(n) {
            self.outcomes.remove(&k);
        }
        Ok(n as u64)
    }

    fn remove_orphan_fingerprints(&mut self) -> Result<(), FingerprintIdTaken> {
        let used: std::collections::BTreeSet<&String> =
            self.outcomes.keys().map(|(f, _)| f).collect();
        self.fingerprints.retain(|id, _| used.contains(id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sig: &str, model: &str, at: Timestamp, score: Option<f64>) -> PatternRecord {
        PatternRecord {
            fingerprint_id: format!("fp-{sig}"),
            kind: "structural".into(),
            structural_json: "{}".into(),
            structural_sig: sig.into(),
            primary_model: model.into(),
            cost_usd_micros: 10,
            latency_ms: 1.5,
            pricing_version: format!("v{at}"),
            success_score: score,
            at_us: at,
        }
    }

    #[test]
    fn the_roll_up_is_order_independent_where_it_can_be() {
        let caps = PatternCaps::default();
        let mut m = MemoryRows::default();
        let a = apply_record(&mut m, &rec("s", "m", 20, Some(1.0)), &caps).unwrap();
        assert!(a.was_new_fingerprint);
        let b = apply_record(&mut m, &rec("s", "m", 10, None), &caps).unwrap();
        assert_eq!((b.sample_size_before, b.sample_size_after), (1, 2));
        let o = m.outcome("fp-s", "m").unwrap().unwrap();
        assert_eq!(o.sum_cost_usd_micros, 20);
        assert_eq!(o.success_score_count, 1);
        assert_eq!(o.last_updated_at_us, 20);
        // An older replayed record neither lowers the last update nor wins the pricing version.
        assert_eq!(o.pricing_version_last, "v20");
        assert_eq!(m.fingerprints["fp-s"].1, 10);
    }

    #[test]
    fn a_taken_fingerprint_id_is_an_error() {
        let caps = PatternCaps::default();
        let mut m = MemoryRows::default();
        apply_record(&mut m, &rec("s", "m", 1, None), &caps).unwrap();
        let mut other = rec("t", "m", 2, None);
        other.fingerprint_id = "fp-s".into();
        let e = apply_record(&mut m, &other, &caps).unwrap_err();
        assert!(
            e.to_string()
                .contains("already exists with another signature"),
            "{e:?}"
        );
    }

    #[test]
    fn above_the_hard_cap_the_oldest_rows_go_down_to_the_soft_cap() {
        let caps = PatternCaps {
            soft_outcomes: 2,
            hard_outcomes: 3,
            max_age_days: 10_000,
        };
        let mut m = MemoryRows::default();
        for (i, sig) in ["a", "b", "c"].iter().enumerate() {
            let r = apply_record(&mut m, &rec(sig, "m", i as i64 + 1, None), &caps).unwrap();
            assert_eq!(r.rows_auto_evicted, 0);
        }
        // 4 rows > hard cap 3: the two oldest go, and their fingerprints with them.
        let r = apply_record(&mut m, &rec("d", "m", 4, None), &caps).unwrap();
        assert_eq!(r.rows_auto_evicted, 2);
        assert!(!r.over_soft_cap);
        assert_eq!(m.fingerprints.keys().collect::<Vec<_>>(), ["fp-c", "fp-d"]);
    }

    #[test]
    fn above_the_soft_cap_only_rows_past_the_age_limit_go() {
        let day = crate::time::MICROS_PER_SEC * 86_400;
        let caps = PatternCaps {
            soft_outcomes: 1,
            hard_outcomes: 10,
            max_age_days: 1,
        };
        let mut m = MemoryRows::default();
        apply_record(&mut m, &rec("old", "m", 0, None), &caps).unwrap();
        apply_record(&mut m, &rec("new", "m", day / 2, None), &caps).unwrap();
        let r = apply_record(&mut m, &rec("later", "m", 2 * day, None), &caps).unwrap();
        assert_eq!(r.rows_auto_evicted, 2);
        assert!(!r.over_soft_cap);
        assert_eq!(m.outcomes.len(), 1);
    }
}
