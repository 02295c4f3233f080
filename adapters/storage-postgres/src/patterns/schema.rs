//! The `patterns` component of the database: the tables of the SQLite pattern store, shared
//! by every workspace and keyed by a `workspace` column.
//!
//! Invariants:
//! - The component's version is the pattern store's (`PATTERN_SCHEMA_VERSION`, checked at
//!   compile time): step 1 is the projection (fingerprints, outcomes), step 2 the additions of
//!   the original's v2 store (embedding columns and their UNIQUE, score history, embedding
//!   cache). "Pattern schema version 2" names the same shape on every engine, and a later
//!   change of the store is one more step here.
//! - Every key and index starts with `workspace`: one workspace's rows never mix with
//!   another's, and each query of a workspace is an index range.
//! - Text keys use the "C" collation: ORDER BY is byte order, as in SQLite and in the
//!   domain's `MemoryRows`, so outcome lists and the cap's eviction order are the same on
//!   every engine whatever the server's locale.
//! - One row per workspace in `pattern_workspaces`: it says the workspace's store exists
//!   (`stats` is `None` without it) and is the row every writer of that workspace locks
//!   first, so writers from every replica apply their records one transaction at a time.

use metis_domain::patterns::PATTERN_SCHEMA_VERSION;

use crate::schema::{Component, Step};

/// The pattern tables as one versioned component.
pub(crate) const COMPONENT: Component = Component {
    name: "patterns",
    steps: &[V1, V2],
    // Step 2 only adds columns, tables and a constraint older binaries never violate.
    compatible_from: 1,
};

const _: () = assert!(
    COMPONENT.steps.len() as i64 == PATTERN_SCHEMA_VERSION,
    "the patterns component must have one step per pattern schema version"
);

pub(super) const V1: Step = Step {
    description: "create pattern_workspaces, pattern_fingerprints and pattern_outcomes, keyed by \
                  workspace",
    sql: r#"
CREATE TABLE pattern_workspaces (
    workspace TEXT COLLATE "C" PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE pattern_fingerprints (
    workspace TEXT COLLATE "C" NOT NULL
        REFERENCES pattern_workspaces (workspace) ON DELETE CASCADE,
    id TEXT COLLATE "C" NOT NULL,
    kind TEXT NOT NULL DEFAULT 'structural',
    structural_json TEXT NOT NULL,
    structural_sig TEXT COLLATE "C" NOT NULL,
    created_at_us BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace, id)
);
CREATE INDEX pattern_fingerprints_by_sig
    ON pattern_fingerprints (workspace, structural_sig, created_at_us, id);
CREATE INDEX pattern_fingerprints_created ON pattern_fingerprints (workspace, created_at_us);
CREATE TABLE pattern_outcomes (
    workspace TEXT COLLATE "C" NOT NULL,
    fingerprint_id TEXT COLLATE "C" NOT NULL,
    primary_model TEXT COLLATE "C" NOT NULL,
    sample_size BIGINT NOT NULL DEFAULT 0,
    success_score_mean DOUBLE PRECISION NOT NULL DEFAULT 0,
    success_score_count BIGINT NOT NULL DEFAULT 0,
    sum_cost_usd_micros BIGINT NOT NULL DEFAULT 0,
    sum_latency_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
    pricing_version_last TEXT NOT NULL DEFAULT 'v0',
    last_updated_at_us BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace, fingerprint_id, primary_model),
    FOREIGN KEY (workspace, fingerprint_id)
        REFERENCES pattern_fingerprints (workspace, id) ON DELETE CASCADE
);
-- The caps' eviction order (and the age trim, and the oldest/newest update of `stats`).
CREATE INDEX pattern_outcomes_eviction ON pattern_outcomes
    (workspace, last_updated_at_us, sample_size, fingerprint_id, primary_model);
"#,
};

const V2: Step = Step {
    description: "add the embedding columns to pattern_fingerprints with UNIQUE (workspace, \
                  structural_sig, embedding_provider); create pattern_score_history and \
                  pattern_embedding_cache",
    sql: r#"
ALTER TABLE pattern_fingerprints
    ADD COLUMN embedding_blob BYTEA,
    ADD COLUMN embedding_provider TEXT COLLATE "C",
    ADD COLUMN embedding_dim INTEGER;
ALTER TABLE pattern_fingerprints ADD CONSTRAINT pattern_fingerprints_sig_provider
    UNIQUE (workspace, structural_sig, embedding_provider);
CREATE TABLE pattern_score_history (
    workspace TEXT COLLATE "C" NOT NULL,
    turn_id TEXT COLLATE "C" NOT NULL,
    fingerprint_id TEXT COLLATE "C" NOT NULL,
    primary_model TEXT COLLATE "C" NOT NULL,
    eval_id_applied TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    confidence DOUBLE PRECISION NOT NULL,
    applied_at_us BIGINT NOT NULL,
    PRIMARY KEY (workspace, turn_id),
    FOREIGN KEY (workspace, fingerprint_id)
        REFERENCES pattern_fingerprints (workspace, id) ON DELETE CASCADE
);
CREATE INDEX pattern_score_history_outcome
    ON pattern_score_history (workspace, fingerprint_id, primary_model);
CREATE TABLE pattern_embedding_cache (
    workspace TEXT COLLATE "C" NOT NULL
        REFERENCES pattern_workspaces (workspace) ON DELETE CASCADE,
    text_sha256 TEXT COLLATE "C" NOT NULL,
    provider_id TEXT COLLATE "C" NOT NULL,
    embedding_blob BYTEA NOT NULL,
    embedding_dim INTEGER NOT NULL,
    created_at_us BIGINT NOT NULL,
    last_used_at_us BIGINT NOT NULL,
    use_count BIGINT NOT NULL DEFAULT 1,
    PRIMARY KEY (workspace, text_sha256, provider_id)
);
CREATE INDEX pattern_embedding_cache_last_used
    ON pattern_embedding_cache (workspace, last_used_at_us);
CREATE INDEX pattern_embedding_cache_created
    ON pattern_embedding_cache (workspace, created_at_us);
"#,
};
