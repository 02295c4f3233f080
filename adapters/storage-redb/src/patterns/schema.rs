//! The tables of a redb pattern store and its version marker: what a store file holds, how
//! its version is read, and what opening a new or older store creates.

use metis_domain::patterns::PATTERN_SCHEMA_VERSION;
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use crate::db::{FileKind, Result, StoreError};

pub(super) const STORE_META: TableDefinition<&str, &str> = TableDefinition::new("store_meta");
/// id -> (kind, `structural_json`, `structural_sig`, `embedding_provider`, `created_at_us`).
pub(super) type FpValue = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    i64,
);
pub(super) const FINGERPRINTS: TableDefinition<&str, FpValue> =
    TableDefinition::new("fingerprints");
/// (`structural_sig`, `created_at_us`, id) of fingerprints without an embedding provider.
pub(super) const FP_BY_SIG: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("fingerprints_by_sig");
/// (fingerprint, model) -> (`sample_size`, mean, score count, cost micros, latency ms,
/// `pricing_version_last`, `last_updated_at_us`).
pub(super) type OutcomeValue = (u64, f64, u64, i64, f64, &'static str, i64);
pub(super) const OUTCOMES: TableDefinition<(&str, &str), OutcomeValue> =
    TableDefinition::new("outcomes");
/// (`last_updated_at_us`, `sample_size`, fingerprint, model): the eviction order.
pub(super) const OUTCOMES_BY_AGE: TableDefinition<(i64, u64, &str, &str), ()> =
    TableDefinition::new("outcomes_by_age");
/// `turn_id` -> score history entry JSON (kept for parity with the SQLite store).
pub(super) const SCORE_HISTORY: TableDefinition<&str, &str> =
    TableDefinition::new("outcome_score_history");
/// (`text_sha256`, `provider_id`) -> embedding bytes.
pub(super) const EMBEDDING_CACHE: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("embedding_cache");

pub(super) fn read_pattern_version(tx: &ReadTransaction) -> Result<Option<i64>> {
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

pub(super) const PATTERN_FILE: FileKind = FileKind {
    read_version: read_pattern_version,
    supported: PATTERN_SCHEMA_VERSION,
    init: init_patterns,
    // Up to 64 pattern stores stay open at once; each is small.
    cache_bytes: 4 << 20,
};
