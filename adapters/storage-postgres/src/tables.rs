//! The main store's tables: the versioned schema components `trace` (events and the audit
//! chain), `sessions` and `keys`, as [`schema`](crate::schema) migrates them.
//!
//! Invariants:
//! - `events` has the SQLite table's columns plus `audit_seq`, the chain position of an audit
//!   row (NULL for every other row), written by the writer from the link it computed. A unique
//!   partial index on it makes a forked chain impossible whatever the number of writers.
//! - `payload_json` is `text`, not `jsonb`: the audit chain hashes the stored bytes, and a
//!   copy between backends must keep them byte-for-byte (`jsonb` reorders keys and drops
//!   duplicates and whitespace). It also keeps the writer cheap: the server parses no payload
//!   on insert except the call events the three filter indexes cover.
//! - Indexes serve the product's own queries only (each one costs every insert): spend and
//!   usage (`type, timestamp_us`), usage filtered by key, user or team (expression indexes on
//!   the call events), audit export (`type, timestamp_us`), audit verify (`audit_seq`),
//!   retention and status (`timestamp_us`), paging by id (the primary key), sessions lists
//!   and children.
//! - Identifiers sort bytewise (`COLLATE "C"`), as in SQLite and redb, so pages and orders
//!   agree between backends.
//! - Payload fields are read leniently by the `metis_json_*` functions (the rules of
//!   `metis_domain::usage`): a payload that is not an object reads as `{}`, numbers in
//!   strings count, anything else counts as 0; no odd row can fail a roll-up.

use crate::schema::{Component, Step};

/// The call event types (spend and usage), as the filter indexes' predicate spells them.
pub(crate) const CALL_TYPES_SQL: &str = "('llm.call_completed', 'llm.call_failed')";

/// The advisory lock every writer of audit events holds (transaction-scoped) from reading the
/// chain's tail to its commit, so writers in several processes extend one chain in turn.
pub(crate) const AUDIT_CHAIN_LOCK: i64 = 0x6d65_7469_735f_6175;

const TRACE_V1: &str = r#"
CREATE TABLE events (
    id TEXT COLLATE "C" PRIMARY KEY,
    timestamp_us BIGINT NOT NULL,
    session_id TEXT COLLATE "C" NOT NULL,
    turn_id TEXT COLLATE "C",
    parent_event_id TEXT COLLATE "C",
    type TEXT COLLATE "C" NOT NULL,
    actor TEXT NOT NULL,
    sensitivity TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    audit_seq BIGINT
);
CREATE INDEX idx_events_type_timestamp ON events (type, timestamp_us);
CREATE INDEX idx_events_timestamp_us ON events (timestamp_us);
CREATE INDEX idx_events_gateway_key_id ON events ((payload_json::json ->> 'gateway_key_id'), timestamp_us)
    WHERE type IN ('llm.call_completed', 'llm.call_failed');
CREATE INDEX idx_events_user_id ON events ((payload_json::json ->> 'user_id'), timestamp_us)
    WHERE type IN ('llm.call_completed', 'llm.call_failed');
CREATE INDEX idx_events_team_id ON events ((payload_json::json ->> 'team_id'), timestamp_us)
    WHERE type IN ('llm.call_completed', 'llm.call_failed');
CREATE UNIQUE INDEX idx_events_audit_seq ON events (audit_seq) WHERE audit_seq IS NOT NULL;

CREATE FUNCTION metis_payload(t text) RETURNS json
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN json_typeof(t::json) = 'object' THEN t::json ELSE '{}'::json END $$;
CREATE FUNCTION metis_json_text(v json) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE json_typeof(v)
        WHEN 'string' THEN v #>> '{}'
        WHEN 'boolean' THEN CASE WHEN v::text = 'true' THEN '1' ELSE '0' END
        WHEN 'null' THEN NULL
        ELSE v::text END $$;
CREATE FUNCTION metis_json_number(v json) RETURNS numeric
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE json_typeof(v)
        WHEN 'number' THEN CASE WHEN v::text ~ '[eE][+-]?[0-9]{4,}' THEN 0 ELSE (v::text)::numeric END
        WHEN 'string' THEN CASE
            WHEN btrim(v #>> '{}') ~ '^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]{1,3})?$'
            THEN btrim(v #>> '{}')::numeric ELSE 0 END
        ELSE 0 END $$;
CREATE FUNCTION metis_json_count(v json) RETURNS numeric
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN json_typeof(v) = 'number' THEN
        CASE WHEN v::text ~ '[eE][+-]?[0-9]{4,}' THEN 0
             WHEN (v::text)::numeric > 0 THEN trunc((v::text)::numeric)
             ELSE 0 END
        ELSE 0 END $$;
"#;

const SESSIONS_V1: &str = r#"
CREATE TABLE sessions (
    id TEXT COLLATE "C" PRIMARY KEY,
    workspace_path TEXT COLLATE "C" NOT NULL,
    active_model TEXT,
    routing_policy_json TEXT,
    cost_so_far_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    turn_count BIGINT NOT NULL DEFAULT 0,
    schema_version INTEGER NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    parent_session_id TEXT COLLATE "C",
    parent_tool_use_id TEXT,
    is_worker BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX idx_sessions_parent ON sessions (parent_session_id, created_at, id)
    WHERE parent_session_id IS NOT NULL;
CREATE INDEX idx_sessions_updated ON sessions (updated_at DESC, id);
CREATE INDEX idx_sessions_workspace_updated ON sessions (workspace_path, updated_at DESC, id);
"#;

const KEYS_V1: &str = r#"
CREATE TABLE gateway_keys (
    key_id TEXT COLLATE "C" PRIMARY KEY,
    secret_hash TEXT COLLATE "C" NOT NULL UNIQUE,
    record_json TEXT NOT NULL,
    position BIGINT NOT NULL
);
CREATE INDEX idx_gateway_keys_position ON gateway_keys (position);
CREATE TABLE gateway_keys_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL,
    store_id TEXT NOT NULL
);
"#;

const KEYS_V2: &str = r#"
CREATE TABLE gateway_policies (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    policies_json TEXT NOT NULL
);
"#;

/// Events, their indexes and the audit chain (`metis trace migrate`).
pub const TRACE: Component = Component {
    name: "trace",
    steps: &[Step {
        description: "create table events, its indexes and the payload reading functions",
        sql: TRACE_V1,
    }],
    compatible_from: 1,
};

/// Sessions (`metis sessions migrate`).
pub const SESSIONS: Component = Component {
    name: "sessions",
    steps: &[Step {
        description: "create table sessions and its indexes",
        sql: SESSIONS_V1,
    }],
    compatible_from: 1,
};

/// Gateway keys (`--keystore store`).
pub const KEYS: Component = Component {
    name: "keys",
    steps: &[
        Step {
            description: "create tables gateway_keys and gateway_keys_meta",
            sql: KEYS_V1,
        },
        // Additive: a binary that knows only v1 keeps serving keys (without the policies).
        Step {
            description: "create table gateway_policies (budgets and model groups)",
            sql: KEYS_V2,
        },
    ],
    compatible_from: 1,
};

/// Every component of the main store, in migration order.
pub const MAIN_STORE: [Component; 3] = [TRACE, SESSIONS, KEYS];

#[cfg(test)]
mod tests {
    use super::*;
    use metis_domain::events::types::{LLM_CALL_COMPLETED, LLM_CALL_FAILED};

    #[test]
    fn the_filter_indexes_name_the_domain_call_types() {
        assert_eq!(
            CALL_TYPES_SQL,
            format!("('{LLM_CALL_COMPLETED}', '{LLM_CALL_FAILED}')")
        );
        assert_eq!(TRACE_V1.matches(CALL_TYPES_SQL).count(), 3);
    }
}
