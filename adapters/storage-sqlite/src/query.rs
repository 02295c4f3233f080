//! Read-side SQL over `events`: spend per key, usage rollups, audit export and the audit chain.
//!
//! Invariants:
//! - Spend, usage and audit queries are bounded by `type IN (…)` and a `timestamp_us` range so
//!   they are served by `idx_events_type_timestamp` (or a payload expression index when a
//!   filter allows it), never by a scan of `events`; the unit tests check the query plans.
//! - Windows are half-open: `since <= timestamp_us < until`.
//! - Every list has a total order (cost, then group; id; sequence, then id), so the same data
//!   always gives the same answer.
//! - A payload value of an unexpected JSON type is coerced (numbers to text for group keys,
//!   missing numbers to 0), never an error: one odd row cannot break a rollup.

use metis_domain::audit::{AUDIT_TYPES, BrokenLink, ChainedRow, audit_types_for, verify};
use metis_domain::events::types::{LLM_CALL_COMPLETED, LLM_CALL_FAILED};
use metis_ports::trace::{KeySpend, UsageGroup, UsageRow};
use rusqlite::types::{ToSql, Value};
use rusqlite::{Connection, Row, params, params_from_iter};

use crate::reader::StoredEvent;

/// The stored columns, in `StoredEvent` order.
pub(crate) const COLUMNS: &str = "id, timestamp_us, session_id, turn_id, parent_event_id, type, \
                                  actor, sensitivity, payload_json";

pub(crate) fn row_to_event(r: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: r.get(0)?,
        timestamp_us: r.get(1)?,
        session_id: r.get(2)?,
        turn_id: r.get(3)?,
        parent_event_id: r.get(4)?,
        event_type: r.get(5)?,
        actor: r.get(6)?,
        sensitivity: r.get(7)?,
        payload_json: r.get(8)?,
    })
}

/// The payload field a usage group reads.
fn group_expr(g: UsageGroup) -> &'static str {
    match g {
        UsageGroup::Key => "json_extract(payload_json, '$.gateway_key_id')",
        UsageGroup::User => "json_extract(payload_json, '$.user_id')",
        UsageGroup::Team => "json_extract(payload_json, '$.team_id')",
        UsageGroup::Model => "json_extract(payload_json, '$.model')",
    }
}

/// A group key as text (`None` for SQL NULL, i.e. a missing or null field).
fn text_value(r: &Row<'_>, idx: usize) -> rusqlite::Result<Option<String>> {
    Ok(match r.get::<_, Value>(idx)? {
        Value::Null => None,
        Value::Integer(n) => Some(n.to_string()),
        Value::Real(f) => Some(f.to_string()),
        Value::Text(s) => Some(s),
        Value::Blob(b) => Some(String::from_utf8_lossy(&b).into_owned()),
    })
}

fn count_value(r: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let n: Option<i64> = r.get(idx)?;
    Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

/// Spend per key and recorded user and team: one pass over the call events since the earlier
/// window start.
pub(crate) fn spend_sql() -> String {
    format!(
        "SELECT json_extract(payload_json, '$.gateway_key_id') AS k, \
         TOTAL(CASE WHEN timestamp_us >= ?1 THEN json_extract(payload_json, '$.cost_usd') END), \
         TOTAL(CASE WHEN timestamp_us >= ?2 THEN json_extract(payload_json, '$.cost_usd') END), \
         json_extract(payload_json, '$.user_id') AS u, \
         json_extract(payload_json, '$.team_id') AS t \
         FROM events \
         WHERE type IN ('{LLM_CALL_COMPLETED}', '{LLM_CALL_FAILED}') AND timestamp_us >= ?3 \
         GROUP BY k, u, t ORDER BY k, u, t"
    )
}

pub(crate) fn spend_by_key(
    conn: &Connection,
    day_start_us: i64,
    month_start_us: i64,
) -> rusqlite::Result<Vec<KeySpend>> {
    let mut stmt = conn.prepare_cached(&spend_sql())?;
    let rows = stmt.query_map(
        params![
            day_start_us,
            month_start_us,
            day_start_us.min(month_start_us)
        ],
        |r| {
            let (user_id, team_id) = (text_value(r, 3)?, text_value(r, 4)?);
            Ok(text_value(r, 0)?.map(|gateway_key_id| KeySpend {
                gateway_key_id,
                user_id,
                team_id,
                day_usd: r.get(1).unwrap_or(0.0),
                month_usd: r.get(2).unwrap_or(0.0),
            }))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        // Calls without a key (none today) are not any key's spend.
        if let Some(spend) = row? {
            out.push(spend);
        }
    }
    Ok(out)
}

/// Usage rollup; `?1`/`?2` are the window, `?3` the filter value when `filter` is given.
pub(crate) fn usage_sql(group: UsageGroup, filter: Option<UsageGroup>) -> String {
    let g = group_expr(group);
    let tokens = |field: &str| {
        format!("CAST(COALESCE(SUM(json_extract(payload_json, '$.{field}')), 0) AS INTEGER)")
    };
    let filter_sql = filter.map_or_else(String::new, |f| format!(" AND {} = ?3", group_expr(f)));
    format!(
        "SELECT {g} AS grp, TOTAL(json_extract(payload_json, '$.cost_usd')) AS cost, \
         {}, {}, {}, {}, \
         SUM(type = '{LLM_CALL_COMPLETED}'), SUM(type = '{LLM_CALL_FAILED}') \
         FROM events \
         WHERE type IN ('{LLM_CALL_COMPLETED}', '{LLM_CALL_FAILED}') \
         AND timestamp_us >= ?1 AND timestamp_us < ?2{filter_sql} \
         GROUP BY grp ORDER BY cost DESC, grp IS NULL, grp",
        tokens("input_tokens"),
        tokens("output_tokens"),
        tokens("cached_input_tokens"),
        tokens("cache_creation_input_tokens"),
    )
}

pub(crate) fn usage(
    conn: &Connection,
    since_us: i64,
    until_us: i64,
    group: UsageGroup,
    filter: Option<(UsageGroup, &str)>,
) -> rusqlite::Result<Vec<UsageRow>> {
    let mut stmt = conn.prepare_cached(&usage_sql(group, filter.map(|(g, _)| g)))?;
    let map = |r: &Row<'_>| {
        Ok(UsageRow {
            group: text_value(r, 0)?,
            cost_usd: r.get(1).unwrap_or(0.0),
            input_tokens: count_value(r, 2)?,
            output_tokens: count_value(r, 3)?,
            cached_input_tokens: count_value(r, 4)?,
            cache_creation_input_tokens: count_value(r, 5)?,
            calls: count_value(r, 6)?,
            failed_calls: count_value(r, 7)?,
        })
    };
    let rows = match filter {
        Some((_, value)) => stmt.query_map(params![since_us, until_us, value], map)?,
        None => stmt.query_map(params![since_us, until_us], map)?,
    };
    rows.collect()
}

/// Audit events of `n_types` types (`?1..?n`) in `[?n+1, ?n+2)`, ordered by id.
pub(crate) fn audit_events_sql(n_types: usize) -> String {
    let placeholders: Vec<String> = (1..=n_types).map(|i| format!("?{i}")).collect();
    format!(
        "SELECT {COLUMNS} FROM events WHERE type IN ({}) \
         AND timestamp_us >= ?{} AND timestamp_us < ?{} ORDER BY id",
        placeholders.join(", "),
        n_types + 1,
        n_types + 2
    )
}

pub(crate) fn audit_events(
    conn: &Connection,
    since_us: i64,
    until_us: i64,
    requested: &[String],
) -> rusqlite::Result<Vec<StoredEvent>> {
    let types = audit_types_for(requested);
    if types.is_empty() {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(&audit_events_sql(types.len()))?;
    let mut args: Vec<&dyn ToSql> = types.iter().map(|t| t as &dyn ToSql).collect();
    args.push(&since_us);
    args.push(&until_us);
    let rows = stmt.query_map(params_from_iter(args), row_to_event)?;
    rows.collect()
}

/// Every chained audit row in sequence order (served by `idx_events_audit_seq`).
pub(crate) const CHAIN_SQL: &str = "SELECT id, timestamp_us, session_id, type, payload_json \
     FROM events WHERE json_extract(payload_json, '$.audit_seq') IS NOT NULL \
     ORDER BY json_extract(payload_json, '$.audit_seq'), id";

/// The chained fields of one audit row, owned.
struct ChainRow {
    id: String,
    timestamp_us: i64,
    session_id: String,
    event_type: String,
    payload_json: String,
}

/// Walk the audit chain and verify it with [`metis_domain::audit::verify`]. The rows are read in
/// one statement, i.e. one consistent snapshot.
pub(crate) fn verify_audit_chain(conn: &Connection) -> rusqlite::Result<Result<u64, BrokenLink>> {
    let mut stmt = conn.prepare_cached(CHAIN_SQL)?;
    let rows = stmt.query_map([], |r| {
        Ok(ChainRow {
            id: r.get(0)?,
            timestamp_us: r.get(1)?,
            session_id: r.get(2)?,
            event_type: r.get(3)?,
            payload_json: r.get(4)?,
        })
    })?;
    let rows: Vec<ChainRow> = rows.collect::<rusqlite::Result<_>>()?;
    Ok(verify(rows.iter().map(|r| ChainedRow {
        id: &r.id,
        timestamp_us: r.timestamp_us,
        session_id: &r.session_id,
        event_type: &r.event_type,
        payload_json: &r.payload_json,
    })))
}

/// Audit-type rows without a chain link; `?1..?n` are [`AUDIT_TYPES`].
pub(crate) fn count_unchained_sql() -> String {
    let placeholders: Vec<String> = (1..=AUDIT_TYPES.len()).map(|i| format!("?{i}")).collect();
    format!(
        "SELECT COUNT(*) FROM events WHERE type IN ({}) \
         AND json_extract(payload_json, '$.audit_seq') IS NULL",
        placeholders.join(", ")
    )
}

/// Audit-type rows that carry no chain link (written before the chain existed, or with a
/// payload that could not be chained). They are outside what `verify` can vouch for.
pub(crate) fn count_unchained_audit(conn: &Connection) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached(&count_unchained_sql())?;
    stmt.query_row(params_from_iter(AUDIT_TYPES.iter()), |r| count_value(r, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Pragmas, open_for_writing};
    use std::time::Duration;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_for_writing(
            &dir.path().join("metis.db"),
            Pragmas {
                wal_autocheckpoint_pages: 1000,
                busy_timeout: Duration::from_secs(5),
            },
        )
        .unwrap();
        (dir, conn)
    }

    fn insert(conn: &Connection, id: &str, ts: i64, ty: &str, payload: &str) {
        conn.execute(
            "INSERT INTO events VALUES (?1, ?2, 's', NULL, NULL, ?3, 'system', 'pseudonymous', ?4)",
            params![id, ts, ty, payload],
        )
        .unwrap();
    }

    #[test]
    fn spend_sums_both_windows_in_one_pass() {
        let (_dir, conn) = db();
        let p = |k: &str, c: f64| format!(r#"{{"gateway_key_id":"{k}","cost_usd":{c}}}"#);
        insert(&conn, "01A", 50, LLM_CALL_COMPLETED, &p("gk_a", 1.0)); // before month
        insert(&conn, "01B", 100, LLM_CALL_COMPLETED, &p("gk_a", 2.0)); // month only
        insert(&conn, "01C", 200, LLM_CALL_FAILED, &p("gk_a", 0.25)); // day
        insert(&conn, "01D", 210, LLM_CALL_COMPLETED, &p("gk_b", 4.0)); // day
        insert(&conn, "01E", 220, "turn.completed", &p("gk_b", 9.0)); // not a call
        insert(&conn, "01F", 230, LLM_CALL_COMPLETED, r#"{"cost_usd":3.0}"#); // no key
        let spend = spend_by_key(&conn, 200, 100).unwrap();
        assert_eq!(
            spend,
            vec![
                KeySpend {
                    gateway_key_id: "gk_a".into(),
                    user_id: None,
                    team_id: None,
                    day_usd: 0.25,
                    month_usd: 2.25
                },
                KeySpend {
                    gateway_key_id: "gk_b".into(),
                    user_id: None,
                    team_id: None,
                    day_usd: 4.0,
                    month_usd: 4.0
                },
            ]
        );
    }

    #[test]
    fn usage_groups_filters_and_sorts_by_cost() {
        let (_dir, conn) = db();
        let p = |k: &str, u: Option<&str>, m: &str, c: f64, t: u64| {
            let user = u.map_or("null".to_owned(), |u| format!("\"{u}\""));
            format!(
                r#"{{"model":"{m}","input_tokens":{t},"output_tokens":{},"cached_input_tokens":1,"cache_creation_input_tokens":2,"cost_usd":{c},"gateway_key_id":"{k}","user_id":{user}}}"#,
                t * 2
            )
        };
        insert(
            &conn,
            "01A",
            10,
            LLM_CALL_COMPLETED,
            &p("gk_a", Some("al"), "m1", 1.0, 10),
        );
        insert(
            &conn,
            "01B",
            11,
            LLM_CALL_FAILED,
            &p("gk_a", Some("al"), "m2", 0.5, 5),
        );
        insert(
            &conn,
            "01C",
            12,
            LLM_CALL_COMPLETED,
            &p("gk_b", None, "m1", 3.0, 7),
        );
        insert(
            &conn,
            "01D",
            99,
            LLM_CALL_COMPLETED,
            &p("gk_b", None, "m1", 8.0, 7),
        ); // outside
        let by_key = usage(&conn, 10, 99, UsageGroup::Key, None).unwrap();
        assert_eq!(by_key.len(), 2);
        assert_eq!(by_key[0].group.as_deref(), Some("gk_b"));
        assert_eq!(
            by_key[1],
            UsageRow {
                group: Some("gk_a".into()),
                cost_usd: 1.5,
                input_tokens: 15,
                output_tokens: 30,
                cached_input_tokens: 2,
                cache_creation_input_tokens: 4,
                calls: 1,
                failed_calls: 1,
            }
        );
        let by_user = usage(&conn, 0, 100, UsageGroup::User, None).unwrap();
        assert_eq!(by_user[0].group, None, "no user is its own bucket");
        assert_eq!(by_user[0].calls, 2);
        let m1_by_key = usage(
            &conn,
            0,
            50,
            UsageGroup::Key,
            Some((UsageGroup::Model, "m1")),
        )
        .unwrap();
        let costs: Vec<(Option<String>, f64)> = m1_by_key
            .into_iter()
            .map(|r| (r.group, r.cost_usd))
            .collect();
        assert_eq!(
            costs,
            vec![(Some("gk_b".into()), 3.0), (Some("gk_a".into()), 1.0)]
        );
    }

    #[test]
    fn audit_types_default_to_all_and_intersect() {
        assert_eq!(audit_types_for(&[]).len(), AUDIT_TYPES.len());
        assert_eq!(
            audit_types_for(&["llm.call_completed".into(), "quota.alert".into()]),
            vec!["quota.alert"]
        );
        assert!(audit_types_for(&["route.decided".into()]).is_empty());
    }
}
