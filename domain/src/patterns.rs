//! The pattern projection: structural fingerprints of turns, the outcome arithmetic, the
//! similarity and aggregation math, and the `pattern.recorded` payload `metis patterns
//! rebuild` replays.
//!
//! Invariants:
//! - [`StructuralFeatures`] serialises to compact JSON with its fields in declaration order and
//!   `"workload_id":null` included; [`StructuralFeatures::signature`] is the SHA-256 (hex) of
//!   exactly those bytes, so equal features always give the same signature and row.
//! - Fingerprints never contain raw text: the user's text only yields [`intent_tags`], and the
//!   workspace only its hash.
//! - The fingerprint id is derived from the signature (and embedding provider), so the live
//!   projection and a rebuild from the trace produce the same rows.
//! - Everything here is a pure function of its arguments (no clock, no IO).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::{Actor, Payload, Sensitivity};

mod projection;
use crate::time::Timestamp;
pub use projection::{
    FingerprintIdTaken, MemoryRows, OutcomeTotals, PatternRows, RecordResult, apply_record,
    enforce_caps, replay,
};

/// The `pattern.recorded` event type (the gateway emits one per completed, routed turn).
pub const PATTERN_RECORDED: &str = "pattern.recorded";
/// The `pattern.evicted` event type (an audit type).
pub const PATTERN_EVICTED: &str = "pattern.evicted";
/// `store_meta.schema_version` this binary writes (compared as an integer, never lowered).
pub const PATTERN_SCHEMA_VERSION: i64 = 2;
/// `fingerprints.kind` of a structural-only fingerprint.
pub const KIND_STRUCTURAL: &str = "structural";
/// The `pricing_version` recorded when the caller has none.
pub const DEFAULT_PRICING_VERSION: &str = "v0";

/// Intent tags, in the fixed order they are reported (never sorted).
pub const INTENT_TAGS: [&str; 6] = ["commit", "refactor", "architecture", "debug", "doc", "test"];

/// Lowercase hex SHA-256.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The structural part of a fingerprint. Field order is part of the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StructuralFeatures {
    /// Sorted, deduplicated, lowercase, with the dot (`.rs`).
    pub file_extensions: Vec<String>,
    /// Top-level directory of each path (sorted, deduplicated).
    pub file_path_buckets: Vec<String>,
    /// Sorted, deduplicated.
    pub tool_names: Vec<String>,
    /// Sorted, deduplicated.
    pub side_effect_classes: Vec<String>,
    pub has_images: bool,
    pub has_tool_calls_in_history: bool,
    /// [`token_bucket`] of the estimated input tokens.
    pub estimated_input_tokens_bucket: u8,
    /// [`intent_tags`] of the user's text, in [`INTENT_TAGS`] order.
    pub intent_tags: Vec<String>,
    /// [`workspace_hash`] of the workspace path.
    pub workspace_hash: String,
    #[serde(default)]
    pub workload_id: Option<String>,
}

/// What a fingerprint is computed from (borrowed from the request; nothing here is stored).
#[derive(Debug, Clone, Copy, Default)]
pub struct FingerprintInputs<'a> {
    /// The latest user message text (only its intent tags survive).
    pub user_text: &'a str,
    pub workspace_path: &'a str,
    pub estimated_input_tokens: u64,
    pub has_images: bool,
    pub has_tool_calls_in_history: bool,
    /// Names of the tools the request declares.
    pub tool_names: &'a [String],
    /// File paths the turn touches (empty for gateway traffic).
    pub file_paths: &'a [String],
    /// Side-effect classes of the tools (empty for gateway traffic).
    pub side_effect_classes: &'a [String],
    pub workload_id: Option<&'a str>,
}

/// Input-token bucket: `< 1k` -> 0, `< 10k` -> 1, `< 100k` -> 2, else 3.
#[must_use]
pub fn token_bucket(estimated_input_tokens: u64) -> u8 {
    match estimated_input_tokens {
        0..1_000 => 0,
        1_000..10_000 => 1,
        10_000..100_000 => 2,
        _ => 3,
    }
}

/// SHA-256 (hex) of the workspace path string.
#[must_use]
pub fn workspace_hash(workspace_path: &str) -> String {
    sha256_hex(workspace_path.as_bytes())
}

/// Words (exact) and word prefixes that signal each intent, in [`INTENT_TAGS`] order.
const INTENT_WORDS: [(&[&str], &[&str]); 6] = [
    // commit
    (
        &["pr", "changelog"],
        &["commit", "rebas", "squash", "cherrypick"],
    ),
    // refactor
    (
        &["cleanup", "dedupe"],
        &["refactor", "restructur", "renam", "simplif", "reorganiz"],
    ),
    // architecture
    (
        &["design", "designs"],
        &["architect", "microservice", "scalab", "modulari"],
    ),
    // debug
    (
        &[
            "bug", "bugs", "fix", "fixes", "fixing", "error", "errors", "broken", "panic", "panics",
        ],
        &[
            "debug",
            "crash",
            "traceback",
            "stacktrace",
            "exception",
            "segfault",
            "failing",
        ],
    ),
    // doc
    (
        &[
            "doc",
            "docs",
            "readme",
            "docstring",
            "docstrings",
            "rustdoc",
            "javadoc",
        ],
        &["document"],
    ),
    // test
    (
        &["spec", "specs", "coverage", "pytest", "unittest"],
        &["test"],
    ),
];

/// Intent tags of `text`: case-insensitive whole-word (or word-prefix) matches, reported in
/// the fixed order of [`INTENT_TAGS`], each at most once.
#[must_use]
pub fn intent_tags(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    INTENT_TAGS
        .iter()
        .zip(INTENT_WORDS.iter())
        .filter(|(_, (exact, prefixes))| {
            words
                .iter()
                .any(|w| exact.contains(w) || prefixes.iter().any(|p| w.starts_with(p)))
        })
        .map(|(tag, _)| (*tag).to_owned())
        .collect()
}

fn sorted_unique<'a>(items: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    items
        .into_iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// `.ext` of a path's last component, lowercase (`None` without an extension).
fn extension(path: &str) -> Option<String> {
    let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    let dot = name.rfind('.').filter(|&i| i > 0 && i + 1 < name.len())?;
    Some(name[dot..].to_lowercase())
}

/// Top-level directory of a path after `\` -> `/` and stripping leading `.`/`/`; `.` for a
/// file at the top level.
fn path_bucket(path: &str) -> String {
    let normalised = path.replace('\\', "/");
    let trimmed = normalised.trim_start_matches(['.', '/']);
    match trimmed.split_once('/') {
        Some((top, _)) if !top.is_empty() => top.to_owned(),
        _ => ".".to_owned(),
    }
}

impl StructuralFeatures {
    /// Compute the features of one turn.
    #[must_use]
    pub fn compute(inputs: &FingerprintInputs<'_>) -> Self {
        let exts: Vec<String> = inputs
            .file_paths
            .iter()
            .filter_map(|p| extension(p))
            .collect();
        let buckets: Vec<String> = inputs.file_paths.iter().map(|p| path_bucket(p)).collect();
        Self {
            file_extensions: sorted_unique(&exts),
            file_path_buckets: sorted_unique(&buckets),
            tool_names: sorted_unique(inputs.tool_names),
            side_effect_classes: sorted_unique(inputs.side_effect_classes),
            has_images: inputs.has_images,
            has_tool_calls_in_history: inputs.has_tool_calls_in_history,
            estimated_input_tokens_bucket: token_bucket(inputs.estimated_input_tokens),
            intent_tags: intent_tags(inputs.user_text),
            workspace_hash: workspace_hash(inputs.workspace_path),
            workload_id: inputs.workload_id.map(str::to_owned),
        }
    }

    /// The compact JSON the signature covers (`structural_json` of the store).
    #[must_use]
    pub fn canonical_json(&self) -> String {
        // Plain strings, booleans and small integers: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// SHA-256 (hex) of [`canonical_json`](Self::canonical_json) (`structural_sig`).
    #[must_use]
    pub fn signature(&self) -> String {
        sha256_hex(self.canonical_json().as_bytes())
    }
}

/// The deterministic fingerprint id of a signature (and embedding provider, if any):
/// `fp_` + 26 hex characters.
#[must_use]
pub fn fingerprint_id(structural_sig: &str, embedding_provider: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(structural_sig.as_bytes());
    h.update([0u8]);
    h.update(embedding_provider.unwrap_or("").as_bytes());
    let hex = hex::encode(h.finalize());
    format!("fp_{}", &hex[..26])
}

/// A cost in USD as a plain decimal string (`0.0015`; never an exponent). Non-finite or
/// negative values give `0`.
#[must_use]
pub fn cost_decimal(cost_usd: f64) -> String {
    if cost_usd.is_finite() && cost_usd > 0.0 {
        format!("{cost_usd}")
    } else {
        "0".to_owned()
    }
}

/// Parse a decimal string (optional sign, digits, optional fraction, optional exponent) into
/// micro-USD, rounding half to even. `None` when it is not a decimal or does not fit.
#[must_use]
pub fn decimal_to_micros(raw: &str) -> Option<i64> {
    let s = raw.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    if digits.len() > 30 {
        return None;
    }
    let value: i128 = digits.parse().ok()?;
    // value × 10^(exp − frac_len + 6) micro-USD.
    let frac_len = i32::try_from(frac_part.len()).ok()?;
    let shift = exp.checked_sub(frac_len)?.checked_add(6)?;
    let micros = if shift >= 0 {
        value.checked_mul(10_i128.checked_pow(u32::try_from(shift).ok()?)?)?
    } else {
        let div = 10_i128.checked_pow(u32::try_from(-shift).ok()?)?;
        let (q, r) = (value / div, value % div);
        let twice = r * 2;
        if twice > div || (twice == div && q % 2 == 1) {
            q + 1
        } else {
            q
        }
    };
    let micros = if neg { -micros } else { micros };
    i64::try_from(micros).ok()
}

/// Welford's running mean after adding `score` to `n` samples with mean `mean`.
#[must_use]
pub fn mean_add(mean: f64, n: u64, score: f64) -> f64 {
    mean + (score - mean) / (n as f64 + 1.0)
}

/// The mean after removing `score` from `n` samples with mean `mean` (0 when none remain).
#[must_use]
pub fn mean_remove(mean: f64, n: u64, score: f64) -> f64 {
    if n <= 1 {
        0.0
    } else {
        (mean * n as f64 - score) / (n as f64 - 1.0)
    }
}

/// Outcome caps of one pattern store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatternCaps {
    /// Above this many outcomes `over_soft_cap` is reported and old rows are age-trimmed.
    pub soft_outcomes: u64,
    /// Above this many outcomes the store is evicted down to `soft_outcomes`.
    pub hard_outcomes: u64,
    /// Outcomes not updated for this long are trimmed when over a cap.
    pub max_age_days: u32,
}

impl Default for PatternCaps {
    fn default() -> Self {
        Self {
            soft_outcomes: 5_000,
            hard_outcomes: 10_000,
            max_age_days: 180,
        }
    }
}

impl PatternCaps {
    /// Outcomes last updated before this instant are past the age limit.
    #[must_use]
    pub fn age_cutoff(&self, now: Timestamp) -> Timestamp {
        crate::retention::cutoff_us(now, self.max_age_days)
    }
}

/// One observation to apply to a pattern store (what `record()` takes).
#[derive(Debug, Clone, PartialEq)]
pub struct PatternRecord {
    pub fingerprint_id: String,
    pub kind: String,
    pub structural_json: String,
    pub structural_sig: String,
    pub primary_model: String,
    pub cost_usd_micros: i64,
    pub latency_ms: f64,
    pub pricing_version: String,
    pub success_score: Option<f64>,
    /// When the turn completed (the `pattern.recorded` event's timestamp).
    pub at_us: Timestamp,
}

/// Payload of `pattern.recorded`: everything `metis patterns rebuild` needs to re-apply one
/// observation, and nothing else (no raw text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatternRecorded {
    pub fingerprint_id: String,
    pub fingerprint_kind: String,
    pub structural_sig: String,
    /// The key's workspace; rebuild selects a workspace's events by this field.
    pub workspace_path: String,
    pub features: StructuralFeatures,
    /// The model the turn was routed to.
    pub primary_model: String,
    /// Turn cost in USD as a decimal string (summed as micro-USD, half-even).
    pub cost_usd_at_record: String,
    /// Turn wall time in milliseconds.
    pub latency_ms: f64,
    pub pricing_version: String,
    #[serde(default)]
    pub success_score: Option<f64>,
}

impl Payload for PatternRecorded {
    const TYPE: &'static str = PATTERN_RECORDED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

impl PatternRecorded {
    /// The payload of one completed turn.
    #[must_use]
    pub fn new(
        features: StructuralFeatures,
        workspace_path: &str,
        primary_model: &str,
        cost_usd: f64,
        latency_ms: f64,
        pricing_version: Option<&str>,
    ) -> Self {
        let sig = features.signature();
        Self {
            fingerprint_id: fingerprint_id(&sig, None),
            fingerprint_kind: KIND_STRUCTURAL.to_owned(),
            structural_sig: sig,
            workspace_path: workspace_path.to_owned(),
            features,
            primary_model: primary_model.to_owned(),
            cost_usd_at_record: cost_decimal(cost_usd),
            latency_ms: if latency_ms.is_finite() && latency_ms > 0.0 {
                latency_ms
            } else {
                0.0
            },
            pricing_version: pricing_version
                .filter(|v| !v.is_empty())
                .unwrap_or(DEFAULT_PRICING_VERSION)
                .to_owned(),
            success_score: None,
        }
    }

    /// Read a stored `pattern.recorded` payload.
    ///
    /// # Errors
    /// A message when the payload is not a `pattern.recorded` object.
    pub fn parse(payload_json: &str) -> Result<Self, String> {
        serde_json::from_str(payload_json)
            .map_err(|e| format!("not a pattern.recorded payload: {e}"))
    }

    /// The observation to apply, stamped `at_us`. The signature and id are recomputed from
    /// the features (the features are the truth; the stored copies are for readers).
    ///
    /// # Errors
    /// A message when the cost is not a decimal or the model is empty.
    pub fn to_record(&self, at_us: Timestamp) -> Result<PatternRecord, String> {
        if self.primary_model.is_empty() {
            return Err("pattern.recorded without a primary_model".to_owned());
        }
        let cost = decimal_to_micros(&self.cost_usd_at_record).ok_or_else(|| {
            format!(
                "pattern.recorded cost_usd_at_record is not a decimal: {}",
                self.cost_usd_at_record
            )
        })?;
        let json = self.features.canonical_json();
        let sig = sha256_hex(json.as_bytes());
        Ok(PatternRecord {
            fingerprint_id: fingerprint_id(&sig, None),
            kind: KIND_STRUCTURAL.to_owned(),
            structural_json: json,
            structural_sig: sig,
            primary_model: self.primary_model.clone(),
            cost_usd_micros: cost.max(0),
            latency_ms: if self.latency_ms.is_finite() {
                self.latency_ms.max(0.0)
            } else {
                0.0
            },
            pricing_version: self.pricing_version.clone(),
            success_score: self.success_score.filter(|s| s.is_finite()),
            at_us,
        })
    }
}

/// Payload of `pattern.evicted` (an audit type).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatternEvicted {
    /// `soft_cap_signal`, `hard_cap_evict`, `age_trim` or `manual_clear`.
    pub trigger: String,
    pub fingerprints_before: u64,
    pub fingerprints_after: u64,
    pub outcomes_before: u64,
    pub outcomes_after: u64,
    pub entries_evicted: u64,
    pub oldest_evicted_age_days: Option<f64>,
}

impl Payload for PatternEvicted {
    const TYPE: &'static str = PATTERN_EVICTED;
    const ACTOR: Actor = Actor::System;
    const SENSITIVITY: Sensitivity = Sensitivity::Pseudonymous;
}

/// Jaccard index of two sets given as lists: 1 when both are empty, 0 when one is.
#[must_use]
pub fn jaccard(a: &[String], b: &[String]) -> f64 {
    let sa: BTreeSet<&String> = a.iter().collect();
    let sb: BTreeSet<&String> = b.iter().collect();
    if sa.is_empty() && sb.is_empty() {
        return 1.0;
    }
    let inter = sa.intersection(&sb).count() as f64;
    let union = sa.union(&sb).count() as f64;
    if union == 0.0 { 0.0 } else { inter / union }
}

fn same(a: bool) -> f64 {
    if a { 1.0 } else { 0.0 }
}

/// v1 similarity: weighted Jaccard (intent 0.30, extensions 0.20, tools 0.15, path buckets
/// 0.10, side effects 0.10, equal token bucket 0.10, equal `has_images` 0.05), then the
/// workload wrap when both sides name a workload: `0.85·[same] + 0.15·score`.
#[must_use]
pub fn structural_similarity(a: &StructuralFeatures, b: &StructuralFeatures) -> f64 {
    let score = 0.30 * jaccard(&a.intent_tags, &b.intent_tags)
        + 0.20 * jaccard(&a.file_extensions, &b.file_extensions)
        + 0.15 * jaccard(&a.tool_names, &b.tool_names)
        + 0.10 * jaccard(&a.file_path_buckets, &b.file_path_buckets)
        + 0.10 * jaccard(&a.side_effect_classes, &b.side_effect_classes)
        + 0.10 * same(a.estimated_input_tokens_bucket == b.estimated_input_tokens_bucket)
        + 0.05 * same(a.has_images == b.has_images);
    workload_wrap(a, b, score)
}

fn workload_wrap(a: &StructuralFeatures, b: &StructuralFeatures, score: f64) -> f64 {
    match (&a.workload_id, &b.workload_id) {
        (Some(x), Some(y)) => 0.85 * same(x == y) + 0.15 * score,
        _ => score,
    }
}

/// Cosine similarity (0 when either vector is zero or the lengths differ).
#[must_use]
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0_f64, 0.0_f64, 0.0_f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// v2 similarity: `alpha·cosine + (1−alpha)·jaccard` when both embeddings are present with
/// the same dimension, else v1; the workload wrap is applied afterwards.
#[must_use]
pub fn similarity(
    a: &StructuralFeatures,
    b: &StructuralFeatures,
    embeddings: Option<(&[f32], &[f32])>,
    alpha: f64,
) -> f64 {
    match embeddings {
        Some((ea, eb)) if ea.len() == eb.len() && !ea.is_empty() => {
            let mut plain_a = a.clone();
            let mut plain_b = b.clone();
            plain_a.workload_id = None;
            plain_b.workload_id = None;
            let jac = structural_similarity(&plain_a, &plain_b);
            workload_wrap(a, b, alpha * cosine(ea, eb) + (1.0 - alpha) * jac)
        }
        _ => structural_similarity(a, b),
    }
}

/// One outcome row near a query fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    pub fingerprint_id: String,
    pub primary_model: String,
    pub similarity: f64,
    pub sample_size: u64,
    pub success_score_mean: f64,
    pub success_score_count: u64,
    pub sum_cost_usd_micros: i64,
    pub sum_latency_ms: f64,
}

/// The `k` most similar rows, ordered by similarity descending, then fingerprint id, then
/// model (a total order, so ties are deterministic).
#[must_use]
pub fn top_k(mut rows: Vec<Neighbour>, k: usize) -> Vec<Neighbour> {
    rows.sort_by(|a, b| {
        b.similarity
            .total_cmp(&a.similarity)
            .then_with(|| a.fingerprint_id.cmp(&b.fingerprint_id))
            .then_with(|| a.primary_model.cmp(&b.primary_model))
    });
    rows.truncate(k);
    rows
}

/// Aggregation settings (defaults as the original's `PatternConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AggregationConfig {
    pub cost_weight: f64,
    pub min_confidence: f64,
    pub min_sample_size: u64,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        Self {
            cost_weight: 0.05,
            min_confidence: 0.05,
            min_sample_size: 5,
        }
    }
}

/// One model's standing among the neighbours.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelScore {
    pub model: String,
    pub score: f64,
    pub success: f64,
    pub avg_cost_usd: f64,
    pub sample_size: u64,
}

/// The outcome of an aggregation: the models by score, and the chosen one if it passes the
/// gates.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub chosen: Option<String>,
    pub confidence: f64,
    pub scores: Vec<ModelScore>,
}

/// Aggregate neighbours per model: success is the sample-weighted mean score over rows with at
/// least one score; cost the sample-weighted mean cost; efficiency `(max − cost)/(max − min)`
/// (0 when all equal); `score = (1−cw)·success + cw·efficiency`. Ordered by score descending,
/// then model. Nothing is chosen when the top score is ≤ 0, the confidence
/// (`(top − runner_up)/top`, 1 for a single model) is below `min_confidence`, or the top
/// model has fewer than `min_sample_size` samples.
#[must_use]
pub fn aggregate(neighbours: &[Neighbour], cfg: &AggregationConfig) -> Recommendation {
    #[derive(Default)]
    struct Acc {
        samples: u64,
        cost_micros: i128,
        scored_samples: u64,
        scored_sum: f64,
    }
    let mut by_model: BTreeMap<&str, Acc> = BTreeMap::new();
    for n in neighbours {
        let acc = by_model.entry(n.primary_model.as_str()).or_default();
        acc.samples += n.sample_size;
        acc.cost_micros += i128::from(n.sum_cost_usd_micros);
        if n.success_score_count > 0 {
            acc.scored_samples += n.sample_size;
            acc.scored_sum += n.success_score_mean * n.sample_size as f64;
        }
    }
    let mut rows: Vec<ModelScore> = by_model
        .into_iter()
        .map(|(model, a)| ModelScore {
            model: model.to_owned(),
            score: 0.0,
            success: if a.scored_samples > 0 {
                a.scored_sum / a.scored_samples as f64
            } else {
                0.0
            },
            avg_cost_usd: if a.samples > 0 {
                a.cost_micros as f64 / 1e6 / a.samples as f64
            } else {
                0.0
            },
            sample_size: a.samples,
        })
        .collect();
    let max = rows.iter().map(|r| r.avg_cost_usd).fold(f64::MIN, f64::max);
    let min = rows.iter().map(|r| r.avg_cost_usd).fold(f64::MAX, f64::min);
    for r in &mut rows {
        let efficiency = if max > min {
            (max - r.avg_cost_usd) / (max - min)
        } else {
            0.0
        };
        r.score = (1.0 - cfg.cost_weight) * r.success + cfg.cost_weight * efficiency;
    }
    rows.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.model.cmp(&b.model))
    });
    let confidence = match rows.as_slice() {
        [] => 0.0,
        [_] => 1.0,
        [top, runner, ..] if top.score > 0.0 => ((top.score - runner.score) / top.score).max(0.0),
        _ => 0.0,
    };
    let chosen = rows
        .first()
        .filter(|top| {
            top.score > 0.0
                && confidence >= cfg.min_confidence
                && top.sample_size >= cfg.min_sample_size
        })
        .map(|top| top.model.clone());
    Recommendation {
        chosen,
        confidence,
        scores: rows,
    }
}

#[cfg(test)]
mod tests;
