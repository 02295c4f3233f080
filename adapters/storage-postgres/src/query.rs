//! Read-side SQL: spend per key, usage roll-ups, audit reads, the audit chain walk, event
//! pages and sessions.
//!
//! Invariants:
//! - Spend and usage are computed by the server (one row per group comes back, not one per
//!   event: a replica rebuilding its spend at start reads a few rows, whatever the traffic),
//!   bounded by `type IN (calls)` and a `timestamp_us` range (`idx_events_type_timestamp`),
//!   or by a key/user/team filter index; audit reads by `type` and the range; the chain walk
//!   by `idx_events_audit_seq`. The tests check the plans.
//! - The roll-ups follow `metis_domain::usage`: windows are half-open, costs are summed
//!   exactly (numeric) and returned as `f64`, token counts are positive numbers truncated,
//!   group keys are strings as they are and other scalars as text, a missing field is the
//!   `None` group; spend is ordered by key, usage by cost descending then group (`None`
//!   last: PostgreSQL sorts NULL last in ascending order), events by id — all bytewise.

use deadpool_postgres::GenericClient;
use metis_domain::audit::{AUDIT_TYPES, BrokenLink, ChainedRow, audit_types_for, verify};
use metis_domain::sessions::SessionRecord;
use metis_ports::trace::{EventRow, KeySpend, UsageGroup, UsageRow};
use tokio_postgres::Row;

use crate::tables::CALL_TYPES_SQL;

/// The stored columns, in [`EventRow`] order.
pub(crate) const COLUMNS: &str = "id, timestamp_us, session_id, turn_id, parent_event_id, type, \
                                  actor, sensitivity, payload_json";

pub(crate) fn to_event(r: &Row) -> EventRow {
    EventRow {
        id: r.get(0),
        timestamp_us: r.get(1),
        session_id: r.get(2),
        turn_id: r.get(3),
        parent_event_id: r.get(4),
        event_type: r.get(5),
        actor: r.get(6),
        sensitivity: r.get(7),
        payload_json: r.get(8),
    }
}

/// The payload fields a roll-up reads, each as raw JSON (one parse per row).
const FIELDS: &str = "json_to_record(metis_payload(e.payload_json)) AS f(gateway_key_id json, \
    user_id json, team_id json, model json, cost_usd json, input_tokens json, \
    output_tokens json, cached_input_tokens json, cache_creation_input_tokens json)";

/// `numeric` sums as `f64` (clamped: an absurd payload cannot overflow the conversion).
fn usd(sum: &str) -> String {
    format!("LEAST(GREATEST(COALESCE({sum}, 0), -1e300), 1e300)::float8")
}

fn tokens(field: &str) -> String {
    format!("LEAST(COALESCE(sum(metis_json_count(f.{field})), 0), 9223372036854775807)::bigint")
}

/// Spend per key: `$1` day start, `$2` month start, `$3` the earlier of them.
pub(crate) fn spend_sql() -> String {
    format!(
        "SELECT metis_json_text(f.gateway_key_id) COLLATE \"C\" AS k, {}, {}, \
         metis_json_text(f.user_id) COLLATE \"C\" AS u, \
         metis_json_text(f.team_id) COLLATE \"C\" AS t \
         FROM events e, {FIELDS} \
         WHERE e.type IN {CALL_TYPES_SQL} AND e.timestamp_us >= $3 \
         AND metis_json_text(f.gateway_key_id) IS NOT NULL \
         GROUP BY k, u, t ORDER BY k, u NULLS FIRST, t NULLS FIRST",
        usd("sum(metis_json_number(f.cost_usd)) FILTER (WHERE e.timestamp_us >= $1)"),
        usd("sum(metis_json_number(f.cost_usd)) FILTER (WHERE e.timestamp_us >= $2)"),
    )
}

/// The expression a filter compares (the one the filter indexes are built on).
fn filter_expr(g: UsageGroup) -> String {
    format!("(e.payload_json::json ->> '{}')", g.field())
}

/// Usage roll-up: `$1`/`$2` the window, `$3` the filter value when `filter` is given.
pub(crate) fn usage_sql(group: UsageGroup, filter: Option<UsageGroup>) -> String {
    let filter_sql = filter.map_or_else(String::new, |f| format!(" AND {} = $3", filter_expr(f)));
    format!(
        "SELECT metis_json_text(f.{g}) COLLATE \"C\" AS grp, {cost} AS cost, {}, {}, {}, {}, \
         count(*) FILTER (WHERE e.type = 'llm.call_completed'), \
         count(*) FILTER (WHERE e.type = 'llm.call_failed') \
         FROM events e, {FIELDS} \
         WHERE e.type IN {CALL_TYPES_SQL} AND e.timestamp_us >= $1 AND e.timestamp_us < $2{filter_sql} \
         GROUP BY grp ORDER BY cost DESC, grp",
        tokens("input_tokens"),
        tokens("output_tokens"),
        tokens("cached_input_tokens"),
        tokens("cache_creation_input_tokens"),
        g = group.field(),
        cost = usd("sum(metis_json_number(f.cost_usd))"),
    )
}

fn count(r: &Row, i: usize) -> u64 {
    u64::try_from(r.get::<_, i64>(i)).unwrap_or(0)
}

pub(crate) async fn spend_by_key(
    c: &impl GenericClient,
    day_start_us: i64,
    month_start_us: i64,
) -> Result<Vec<KeySpend>, tokio_postgres::Error> {
    let stmt = c.prepare_cached(&spend_sql()).await?;
    let from = day_start_us.min(month_start_us);
    let rows = c
        .query(&stmt, &[&day_start_us, &month_start_us, &from])
        .await?;
    Ok(rows
        .iter()
        .map(|r| KeySpend {
            gateway_key_id: r.get(0),
            user_id: r.get(3),
            team_id: r.get(4),
            day_usd: r.get(1),
            month_usd: r.get(2),
        })
        .collect())
}

pub(crate) async fn usage(
    c: &impl GenericClient,
    since_us: i64,
    until_us: i64,
    group: UsageGroup,
    filter: Option<(UsageGroup, &str)>,
) -> Result<Vec<UsageRow>, tokio_postgres::Error> {
    let stmt = c
        .prepare_cached(&usage_sql(group, filter.map(|(g, _)| g)))
        .await?;
    let rows = match filter {
        Some((_, value)) => c.query(&stmt, &[&since_us, &until_us, &value]).await?,
        None => c.query(&stmt, &[&since_us, &until_us]).await?,
    };
    Ok(rows
        .iter()
        .map(|r| UsageRow {
            group: r.get(0),
            cost_usd: r.get(1),
            input_tokens: count(r, 2),
            output_tokens: count(r, 3),
            cached_input_tokens: count(r, 4),
            cache_creation_input_tokens: count(r, 5),
            calls: count(r, 6),
            failed_calls: count(r, 7),
        })
        .collect())
}

/// Audit events of the types `$1` in `[$2, $3)`, ordered by id.
pub(crate) fn audit_events_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM events WHERE type = ANY($1) \
         AND timestamp_us >= $2 AND timestamp_us < $3 ORDER BY id"
    )
}

pub(crate) async fn audit_events(
    c: &impl GenericClient,
    since_us: i64,
    until_us: i64,
    requested: &[String],
) -> Result<Vec<EventRow>, tokio_postgres::Error> {
    let types = audit_types_for(requested);
    if types.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = c.prepare_cached(&audit_events_sql()).await?;
    let rows = c.query(&stmt, &[&types, &since_us, &until_us]).await?;
    Ok(rows.iter().map(to_event).collect())
}

/// Every chained audit row, in sequence order.
pub(crate) const CHAIN_SQL: &str = "SELECT id, timestamp_us, session_id, type, payload_json \
    FROM events WHERE audit_seq IS NOT NULL ORDER BY audit_seq, id";

/// Walk the chain in one statement (one snapshot) and verify it.
pub(crate) async fn verify_audit_chain(
    c: &impl GenericClient,
) -> Result<Result<u64, BrokenLink>, tokio_postgres::Error> {
    let rows = c.query(CHAIN_SQL, &[]).await?;
    let owned: Vec<(String, i64, String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    Ok(verify(owned.iter().map(|(id, ts, s, ty, p)| ChainedRow {
        id,
        timestamp_us: *ts,
        session_id: s,
        event_type: ty,
        payload_json: p,
    })))
}

/// Audit-type rows without a chain link.
pub(crate) async fn count_unchained_audit(
    c: &impl GenericClient,
) -> Result<u64, tokio_postgres::Error> {
    let types: Vec<&str> = AUDIT_TYPES.to_vec();
    let r = c
        .query_one(
            "SELECT count(*) FROM events WHERE type = ANY($1) AND audit_seq IS NULL",
            &[&types],
        )
        .await?;
    Ok(count(&r, 0))
}

pub(crate) async fn events_page(
    c: &impl GenericClient,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<EventRow>, tokio_postgres::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match after {
        Some(a) => {
            c.query(
                &format!("SELECT {COLUMNS} FROM events WHERE id > $1 ORDER BY id LIMIT $2"),
                &[&a, &limit],
            )
            .await?
        }
        None => {
            c.query(
                &format!("SELECT {COLUMNS} FROM events ORDER BY id LIMIT $1"),
                &[&limit],
            )
            .await?
        }
    };
    Ok(rows.iter().map(to_event).collect())
}

pub(crate) async fn events_of_type(
    c: &impl GenericClient,
    event_type: &str,
) -> Result<Vec<EventRow>, tokio_postgres::Error> {
    let rows = c
        .query(
            &format!("SELECT {COLUMNS} FROM events WHERE type = $1 ORDER BY id"),
            &[&event_type],
        )
        .await?;
    Ok(rows.iter().map(to_event).collect())
}

const SESSION_COLUMNS: &str = "id, workspace_path, active_model, cost_so_far_usd, turn_count, \
    created_at, updated_at, parent_session_id, parent_tool_use_id, is_worker";

fn to_session(r: &Row) -> SessionRecord {
    SessionRecord {
        id: r.get(0),
        workspace_path: r.get(1),
        active_model: r.get(2),
        cost_so_far_usd: r.get(3),
        turn_count: count(r, 4),
        created_at_us: r.get(5),
        updated_at_us: r.get(6),
        parent_session_id: r.get(7),
        parent_tool_use_id: r.get(8),
        is_worker: r.get(9),
    }
}

pub(crate) async fn session(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<SessionRecord>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(to_session))
}

/// Most recently updated first (then id), optionally of one workspace.
pub(crate) async fn sessions(
    c: &impl GenericClient,
    workspace: Option<&str>,
    limit: u32,
) -> Result<Vec<SessionRecord>, tokio_postgres::Error> {
    let limit = i64::from(limit);
    let rows = match workspace {
        Some(w) => {
            c.query(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE workspace_path = $1 \
                     ORDER BY updated_at DESC, id LIMIT $2"
                ),
                &[&w, &limit],
            )
            .await?
        }
        None => {
            c.query(
                &format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions ORDER BY updated_at DESC, id LIMIT $1"
                ),
                &[&limit],
            )
            .await?
        }
    };
    Ok(rows.iter().map(to_session).collect())
}

/// Direct children, oldest first (then id); served by `idx_sessions_parent`.
pub(crate) async fn session_children(
    c: &impl GenericClient,
    parent: &str,
) -> Result<Vec<SessionRecord>, tokio_postgres::Error> {
    let rows = c
        .query(
            &format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE parent_session_id = $1 \
                 ORDER BY created_at, id"
            ),
            &[&parent],
        )
        .await?;
    Ok(rows.iter().map(to_session).collect())
}

/// Events, sessions and keys stored (keys: 0 before the key tables hold a store).
pub(crate) async fn counts(
    c: &impl GenericClient,
) -> Result<(u64, u64, u64), tokio_postgres::Error> {
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM sessions), \
             (SELECT count(*) FROM gateway_keys)",
            &[],
        )
        .await?;
    Ok((count(&r, 0), count(&r, 1), count(&r, 2)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PostgresBackend;
    use crate::pool::DbError;
    use crate::scratch::ScratchDatabase;
    use metis_domain::events::types::{GATEWAY_KEY_ISSUED, LLM_CALL_COMPLETED};
    use metis_domain::events::{Actor, Event, Sensitivity};
    use metis_ports::storage::{ServeOptions, StorageBackend};
    use std::path::Path;

    const GROUPS: [UsageGroup; 4] = [
        UsageGroup::Key,
        UsageGroup::User,
        UsageGroup::Team,
        UsageGroup::Model,
    ];

    /// The product's queries with literal arguments (EXPLAIN cannot bind parameters).
    fn queries() -> Vec<(String, String)> {
        let audit = AUDIT_TYPES
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let bind = |sql: String| {
            sql.replace("$1", "0")
                .replace("$2", "100")
                .replace("$3", "'gk_1'")
        };
        let mut out = vec![(
            "spend".to_owned(),
            spend_sql()
                .replace("$1", "50")
                .replace("$2", "0")
                .replace("$3", "0"),
        )];
        for g in GROUPS {
            out.push((format!("usage by {g:?}"), bind(usage_sql(g, None))));
            for f in GROUPS {
                out.push((
                    format!("usage by {g:?} filtered by {f:?}"),
                    bind(usage_sql(g, Some(f))),
                ));
            }
        }
        out.push((
            "audit export".to_owned(),
            audit_events_sql()
                .replace("$1", &format!("ARRAY[{audit}]"))
                .replace("$2", "0")
                .replace("$3", "100"),
        ));
        out.push(("chain walk".to_owned(), CHAIN_SQL.to_owned()));
        out.push((
            "writer chain tail".to_owned(),
            crate::writer::CHAIN_TAIL_SQL.to_owned(),
        ));
        out.push((
            "prune batch".to_owned(),
            format!(
                "SELECT id FROM events WHERE timestamp_us < 10 AND type <> ALL(ARRAY[{audit}]) \
                 ORDER BY timestamp_us LIMIT 10"
            ),
        ));
        out
    }

    fn event(n: u64, ty: &'static str, payload: String) -> Event {
        Event {
            id: format!("01J{n:023}"),
            timestamp_us: i64::try_from(n).unwrap_or(0),
            session_id: "s".into(),
            turn_id: None,
            parent_event_id: None,
            event_type: ty,
            actor: Actor::System,
            sensitivity: Sensitivity::Pseudonymous,
            payload_json: payload,
        }
    }

    /// Every product query has an index plan: with sequential scans disabled none of them
    /// scans `events` (a query no index can serve would still scan), and the filters and the
    /// chain use their own indexes.
    #[test]
    fn no_product_query_scans_events() -> Result<(), DbError> {
        let scratch = ScratchDatabase::from_env()?;
        let be = PostgresBackend::new(scratch.config().clone())?;
        let store = be
            .open_main(Path::new("unused"), ServeOptions::default())
            .map_err(|e| DbError::Stopped(e.to_string()))?;
        for n in 0..300u64 {
            store.emit(if n % 7 == 0 {
                event(n, GATEWAY_KEY_ISSUED, format!(r#"{{"key_id":"gk_{n}"}}"#))
            } else {
                event(
                    n,
                    LLM_CALL_COMPLETED,
                    format!(
                        r#"{{"gateway_key_id":"gk_{}","user_id":"u","team_id":"t","model":"m","cost_usd":0.5}}"#,
                        n % 5
                    ),
                )
            });
        }
        store.close();
        let pool = be.db().clone();
        let plans = be.db().block_on(async move {
            let c = pool.get().await?;
            c.batch_execute("ANALYZE events; SET enable_seqscan = off")
                .await?;
            let mut out = Vec::new();
            for (label, sql) in queries() {
                let rows = c.query(&format!("EXPLAIN {sql}"), &[]).await?;
                let lines: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                out.push((label, lines.join("\n")));
            }
            Ok(out)
        })?;
        for (label, plan) in &plans {
            assert!(!plan.contains("Seq Scan on events"), "{label}:\n{plan}");
        }
        let plan_of = |label: &str| {
            plans
                .iter()
                .find(|(l, _)| l == label)
                .map(|(_, p)| p.clone())
                .unwrap_or_default()
        };
        for (label, index) in [
            ("chain walk", "idx_events_audit_seq"),
            ("writer chain tail", "idx_events_audit_seq"),
            (
                "usage by Model filtered by Key",
                "idx_events_gateway_key_id",
            ),
            ("usage by Key filtered by User", "idx_events_user_id"),
            ("usage by Key filtered by Team", "idx_events_team_id"),
        ] {
            let plan = plan_of(label);
            assert!(
                plan.contains(index),
                "{label} does not use {index}:\n{plan}"
            );
        }
        Ok(())
    }
}
