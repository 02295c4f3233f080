//! Whole-projection reads and writes of one workspace: clearing it, inserting rows as given
//! (a rebuild computed in memory, an import), and the reads of `stats`, `outcomes` and
//! `export`. Rows go in as arrays (`unnest`), a bounded number per statement, so a rebuild of
//! ten thousand outcomes is a handful of round trips, not ten thousand.

use deadpool_postgres::GenericClient;
use metis_domain::patterns::OutcomeTotals;
use metis_ports::patterns::{FingerprintRow, ModelTotals, OutcomeRow};

use super::sql::{bigint, col, execute, query, query_one, query_opt, unsigned};

/// Rows per insert statement (bounds the size of one message).
const ROWS_PER_STATEMENT: usize = 5_000;

const INSERT_FINGERPRINTS_SQL: &str = "INSERT INTO pattern_fingerprints \
    (workspace, id, kind, structural_json, structural_sig, created_at_us) \
    SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])";

const INSERT_OUTCOMES_SQL: &str = "INSERT INTO pattern_outcomes (workspace, fingerprint_id, \
    primary_model, sample_size, success_score_mean, success_score_count, sum_cost_usd_micros, \
    sum_latency_ms, pricing_version_last, last_updated_at_us) \
    SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::float8[], \
    $6::bigint[], $7::bigint[], $8::float8[], $9::text[], $10::bigint[])";

/// Every outcome of a workspace with its fingerprint's signature, by (fingerprint, model).
const OUTCOMES_SQL: &str = "SELECT o.fingerprint_id, f.structural_sig, o.primary_model, \
    o.sample_size, o.success_score_mean, o.success_score_count, o.sum_cost_usd_micros, \
    o.sum_latency_ms, o.pricing_version_last, o.last_updated_at_us \
    FROM pattern_outcomes o JOIN pattern_fingerprints f \
    ON f.workspace = o.workspace AND f.id = o.fingerprint_id \
    WHERE o.workspace = $1 ORDER BY o.fingerprint_id, o.primary_model";

const FINGERPRINTS_SQL: &str = "SELECT id, kind, structural_json, structural_sig, created_at_us \
    FROM pattern_fingerprints WHERE workspace = $1 AND embedding_provider IS NULL ORDER BY id";

const MODELS_SQL: &str = "SELECT primary_model, sum(sample_size)::bigint, \
    sum(sum_cost_usd_micros)::bigint, sum(sum_latency_ms) FROM pattern_outcomes \
    WHERE workspace = $1 GROUP BY primary_model ORDER BY 2 DESC, primary_model";

const TOTALS_SQL: &str = "SELECT count(*), min(last_updated_at_us), max(last_updated_at_us) \
    FROM pattern_outcomes WHERE workspace = $1";

/// An outcome row to insert: (fingerprint, model, totals).
pub(super) type OutcomeInsert = (String, String, OutcomeTotals);

/// Whether the workspace has a store (its row in `pattern_workspaces`).
pub(super) fn exists<C: GenericClient>(c: &C, ws: &str) -> Result<bool, tokio_postgres::Error> {
    Ok(query_opt(
        c,
        "SELECT 1 FROM pattern_workspaces WHERE workspace = $1",
        &[&ws],
    )?
    .is_some())
}

/// Whether the workspace holds any fingerprint or outcome.
pub(super) fn has_rows<C: GenericClient>(c: &C, ws: &str) -> Result<bool, tokio_postgres::Error> {
    col(
        &query_one(
            c,
            "SELECT EXISTS (SELECT 1 FROM pattern_fingerprints WHERE workspace = $1) \
             OR EXISTS (SELECT 1 FROM pattern_outcomes WHERE workspace = $1)",
            &[&ws],
        )?,
        0,
    )
}

/// Delete the workspace's projection (score history, outcomes, fingerprints); its embedding
/// cache stays.
pub(super) fn clear<C: GenericClient>(c: &C, ws: &str) -> Result<(), tokio_postgres::Error> {
    for sql in [
        "DELETE FROM pattern_score_history WHERE workspace = $1",
        "DELETE FROM pattern_outcomes WHERE workspace = $1",
        "DELETE FROM pattern_fingerprints WHERE workspace = $1",
    ] {
        execute(c, sql, &[&ws])?;
    }
    Ok(())
}

/// Insert fingerprints (no embedding) as given.
pub(super) fn insert_fingerprints<C: GenericClient>(
    c: &C,
    ws: &str,
    rows: &[FingerprintRow],
) -> Result<(), tokio_postgres::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let ids: Vec<&str> = chunk.iter().map(|f| f.id.as_str()).collect();
        let kinds: Vec<&str> = chunk.iter().map(|f| f.kind.as_str()).collect();
        let json: Vec<&str> = chunk.iter().map(|f| f.structural_json.as_str()).collect();
        let sigs: Vec<&str> = chunk.iter().map(|f| f.structural_sig.as_str()).collect();
        let created: Vec<i64> = chunk.iter().map(|f| f.created_at_us).collect();
        execute(
            c,
            INSERT_FINGERPRINTS_SQL,
            &[&ws, &ids, &kinds, &json, &sigs, &created],
        )?;
    }
    Ok(())
}

/// Insert outcomes as given.
pub(super) fn insert_outcomes<C: GenericClient>(
    c: &C,
    ws: &str,
    rows: &[OutcomeInsert],
) -> Result<(), tokio_postgres::Error> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let fps: Vec<&str> = chunk.iter().map(|(f, _, _)| f.as_str()).collect();
        let models: Vec<&str> = chunk.iter().map(|(_, m, _)| m.as_str()).collect();
        let sizes: Vec<i64> = chunk
            .iter()
            .map(|(_, _, o)| bigint(o.sample_size))
            .collect();
        let means: Vec<f64> = chunk.iter().map(|(_, _, o)| o.success_score_mean).collect();
        let counts: Vec<i64> = chunk
            .iter()
            .map(|(_, _, o)| bigint(o.success_score_count))
            .collect();
        let costs: Vec<i64> = chunk
            .iter()
            .map(|(_, _, o)| o.sum_cost_usd_micros)
            .collect();
        let latencies: Vec<f64> = chunk.iter().map(|(_, _, o)| o.sum_latency_ms).collect();
        let pricing: Vec<&str> = chunk
            .iter()
            .map(|(_, _, o)| o.pricing_version_last.as_str())
            .collect();
        let last: Vec<i64> = chunk.iter().map(|(_, _, o)| o.last_updated_at_us).collect();
        execute(
            c,
            INSERT_OUTCOMES_SQL,
            &[
                &ws, &fps, &models, &sizes, &means, &counts, &costs, &latencies, &pricing, &last,
            ],
        )?;
    }
    Ok(())
}

/// Every outcome of the workspace, by (fingerprint, model).
pub(super) fn outcomes<C: GenericClient>(
    c: &C,
    ws: &str,
) -> Result<Vec<OutcomeRow>, tokio_postgres::Error> {
    query(c, OUTCOMES_SQL, &[&ws])?
        .iter()
        .map(|r| {
            Ok(OutcomeRow {
                fingerprint_id: col(r, 0)?,
                structural_sig: col(r, 1)?,
                primary_model: col(r, 2)?,
                sample_size: unsigned(col(r, 3)?),
                success_score_mean: col(r, 4)?,
                success_score_count: unsigned(col(r, 5)?),
                sum_cost_usd_micros: col(r, 6)?,
                sum_latency_ms: col(r, 7)?,
                pricing_version_last: col(r, 8)?,
                last_updated_at_us: col(r, 9)?,
            })
        })
        .collect()
}

/// Every fingerprint of the workspace without an embedding, by id.
pub(super) fn fingerprints<C: GenericClient>(
    c: &C,
    ws: &str,
) -> Result<Vec<FingerprintRow>, tokio_postgres::Error> {
    query(c, FINGERPRINTS_SQL, &[&ws])?
        .iter()
        .map(|r| {
            Ok(FingerprintRow {
                id: col(r, 0)?,
                kind: col(r, 1)?,
                structural_json: col(r, 2)?,
                structural_sig: col(r, 3)?,
                created_at_us: col(r, 4)?,
            })
        })
        .collect()
}

/// The counts and per-model totals of `stats`.
pub(super) struct Summary {
    pub(super) fingerprints: u64,
    pub(super) outcomes: u64,
    pub(super) embedding_cache_rows: u64,
    pub(super) models: Vec<ModelTotals>,
    pub(super) oldest_update_us: Option<i64>,
    pub(super) newest_update_us: Option<i64>,
}

pub(super) fn summary<C: GenericClient>(c: &C, ws: &str) -> Result<Summary, tokio_postgres::Error> {
    let models = query(c, MODELS_SQL, &[&ws])?
        .iter()
        .map(|r| {
            Ok(ModelTotals {
                model: col(r, 0)?,
                samples: unsigned(col(r, 1)?),
                sum_cost_usd_micros: col(r, 2)?,
                sum_latency_ms: col(r, 3)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let totals = query_one(c, TOTALS_SQL, &[&ws])?;
    let count = |sql: &str| -> Result<u64, tokio_postgres::Error> {
        Ok(unsigned(col(&query_one(c, sql, &[&ws])?, 0)?))
    };
    Ok(Summary {
        fingerprints: count("SELECT count(*) FROM pattern_fingerprints WHERE workspace = $1")?,
        outcomes: unsigned(col(&totals, 0)?),
        embedding_cache_rows: count(
            "SELECT count(*) FROM pattern_embedding_cache WHERE workspace = $1",
        )?,
        models,
        oldest_update_us: col(&totals, 1)?,
        newest_update_us: col(&totals, 2)?,
    })
}

/// The version of schema component `name` (as `stats` reports it).
pub(super) fn schema_version<C: GenericClient>(
    c: &C,
    name: &str,
) -> Result<i32, tokio_postgres::Error> {
    Ok(query_opt(
        c,
        "SELECT version FROM metis_schema WHERE component = $1",
        &[&name],
    )?
    .map(|r| col(&r, 0))
    .transpose()?
    .unwrap_or(0))
}
