//! Every SQL statement the product runs against `events`, by name, with the command that runs
//! it and the access path its query plan must have. The statements are the very strings the
//! adapter executes (each module exposes its SQL to this list), plus the runbook's check.
//!
//! Used by the unit tests (no statement reads the table without an index, on the current
//! index set and on the original one a not-yet-migrated file keeps) and by
//! `bench-trace plans`, which prints the plan of each at 10 million events.
//!
//! Not listed: the writer's `INSERT` (no plan to choose) and the `sessions`/`gateway_keys`
//! statements (other tables).

use metis_domain::audit::AUDIT_TYPES;
use metis_ports::trace::UsageGroup;
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};

use crate::ops::{EVENT_SPAN_SQL, retention};
use crate::{query, reader, transfer, writer};

/// The runbook's post-upgrade check, verbatim (`docs/upgrade-runbook.md`, README, SPEC §8.1).
pub const RUNBOOK_RECENT_EVENTS_SQL: &str = "SELECT COUNT(*) FROM events \
     WHERE timestamp_us > (strftime(\"%s\",\"now\")-300)*1000000";

/// The access path a statement's plan must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A `SEARCH` through an index (a bounded range or lookup).
    Search,
    /// A walk of this partial index, which holds only the rows the statement wants.
    Walk(&'static str),
    /// A count of every row: SQLite reads the smallest covering index whole (no table read).
    CountAll,
}

/// One statement the product runs.
#[derive(Debug, Clone)]
pub struct ProductQuery {
    pub name: String,
    /// The command, endpoint or component that runs it.
    pub used_by: &'static str,
    pub sql: String,
    pub access: Access,
}

fn q(name: impl Into<String>, used_by: &'static str, sql: String, access: Access) -> ProductQuery {
    ProductQuery {
        name: name.into(),
        used_by,
        sql,
        access,
    }
}

const GROUPS: [UsageGroup; 4] = [
    UsageGroup::Key,
    UsageGroup::User,
    UsageGroup::Team,
    UsageGroup::Model,
];

/// The catalogue.
#[must_use]
pub fn product_queries() -> Vec<ProductQuery> {
    use Access::{CountAll, Search, Walk};
    let mut v = vec![q(
        "spend by key",
        "gateway start (spend rebuild for key caps)",
        query::spend_sql(),
        Search,
    )];
    for g in GROUPS {
        v.push(q(
            format!("usage by {g:?}"),
            "GET /admin/usage",
            query::usage_sql(g, None),
            Search,
        ));
        for f in GROUPS {
            v.push(q(
                format!("usage by {g:?}, {f:?} = ?"),
                "GET /admin/usage (filtered)",
                query::usage_sql(g, Some(f)),
                Search,
            ));
        }
    }
    v.extend([
        q(
            "audit export (all types)",
            "metis audit export, GET /admin/audit, key history",
            query::audit_events_sql(AUDIT_TYPES.len()),
            Search,
        ),
        q(
            "audit export (one type)",
            "metis audit export --type, GET /admin/audit",
            query::audit_events_sql(1),
            Search,
        ),
        q(
            "audit chain walk",
            "metis audit verify, metis migrate-store",
            query::CHAIN_SQL.to_owned(),
            Walk("idx_events_audit_seq"),
        ),
        q(
            "audit chain tail",
            "trace writer (each batch holding an audit event)",
            writer::CHAIN_TAIL_SQL.to_owned(),
            Walk("idx_events_audit_seq"),
        ),
        q(
            "unchained audit rows",
            "metis audit verify",
            query::count_unchained_sql(),
            Search,
        ),
        q(
            "events of one type",
            "metis patterns rebuild (pattern.recorded)",
            reader::events_of_type_sql(),
            Search,
        ),
        q(
            "events page",
            "metis migrate-store (copy in id order)",
            transfer::events_page_sql(),
            Search,
        ),
        q(
            "count all",
            "metis migrate-store (counts), metis restore (check of the copy)",
            reader::COUNT_ALL_SQL.to_owned(),
            CountAll,
        ),
        q(
            "backup metadata",
            "metis backup, metis restore (metadata block)",
            EVENT_SPAN_SQL.to_owned(),
            CountAll,
        ),
        q(
            "prune: rows eligible",
            "metis trace prune",
            retention::prunable_sql(),
            Search,
        ),
        q(
            "prune: audit rows exempt",
            "metis trace prune",
            retention::exempt_sql(),
            Search,
        ),
        q(
            "prune: oldest kept",
            "metis trace prune",
            retention::OLDEST_NEWER_SQL.to_owned(),
            Search,
        ),
        q(
            "prune: oldest audit kept",
            "metis trace prune",
            retention::oldest_audit_sql(),
            Search,
        ),
        q(
            "prune: one batch",
            "metis trace prune",
            retention::prune_batch_sql(),
            Search,
        ),
        q(
            "status: events after",
            "metis trace status",
            retention::EVENTS_AFTER_SQL.to_owned(),
            Search,
        ),
        q(
            "status: audit rows",
            "metis trace status",
            retention::audit_count_sql(),
            Search,
        ),
        q(
            "runbook: events in the last 5 minutes",
            "docs/upgrade-runbook.md (sqlite3)",
            RUNBOOK_RECENT_EVENTS_SQL.to_owned(),
            Search,
        ),
        q(
            "events of a session",
            "TraceReader::events_for_session (reference §2 replay)",
            reader::events_for_session_sql(),
            Search,
        ),
        q(
            "events of a turn",
            "TraceReader::events_for_turn (reference §2)",
            reader::events_for_turn_sql(),
            Search,
        ),
        q(
            "count of one type",
            "TraceReader::count_by_type",
            reader::COUNT_BY_TYPE_SQL.to_owned(),
            Search,
        ),
        q(
            "events of one type with a payload field",
            "TraceReader::events_of_type_with_field",
            reader::events_of_type_with_field_sql(),
            Search,
        ),
    ]);
    v
}

/// The detail lines of `EXPLAIN QUERY PLAN sql` (parameters bound to NULL: the plan does not
/// depend on them).
///
/// # Errors
/// The statement does not prepare on `conn`.
pub fn explain(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let nulls = vec![Value::Null; stmt.parameter_count()];
    stmt.query_map(params_from_iter(nulls), |r| r.get::<_, String>(3))?
        .collect()
}

/// The indexes a plan reads `events` through, in plan order.
#[must_use]
pub fn indexes_used(lines: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in lines {
        let Some(rest) = l.split(" INDEX ").nth(1) else {
            if l.contains("USING INTEGER PRIMARY KEY") && !out.iter().any(|o| o == "rowid") {
                out.push("rowid".to_owned());
            }
            continue;
        };
        let name = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Check `lines` (the plan of `query`) against its declared access: never a table scan of
/// `events`, and the kind of index access it must have.
///
/// # Errors
/// What is wrong, with the plan.
pub fn check_plan(query: &ProductQuery, lines: &[String]) -> Result<(), String> {
    let events: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("SCAN events") || l.starts_with("SEARCH events"))
        .collect();
    let fail = |why: &str| Err(format!("{}: {why}: {lines:?}", query.name));
    if events.is_empty() {
        return fail("reads no events");
    }
    if events.iter().any(|l| l.as_str() == "SCAN events") {
        return fail("scans the events table");
    }
    match query.access {
        Access::Search => {
            if events.iter().any(|l| l.starts_with("SCAN")) {
                return fail("walks a whole index instead of searching one");
            }
        }
        Access::Walk(index) => {
            if !events.iter().all(|l| l.contains(index)) {
                return fail(&format!("does not read through {index}"));
            }
        }
        Access::CountAll => {
            if !events
                .iter()
                .all(|l| l.starts_with("SCAN events USING COVERING INDEX"))
            {
                return fail("counts through the table instead of a covering index");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{RETIRED_EVENT_INDEXES, retired_present};
    use metis_domain::events::types::LLM_CALL_COMPLETED;
    use rusqlite::params;

    /// A file with this binary's index set, holding rows of several types (so no plan is
    /// chosen for an empty table only).
    fn current() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::schema::open_for_writing(
            &dir.path().join("metis.db"),
            crate::schema::Pragmas {
                wal_autocheckpoint_pages: 1000,
                busy_timeout: std::time::Duration::from_secs(5),
            },
        )
        .unwrap();
        for i in 0..300_i64 {
            let ty = [LLM_CALL_COMPLETED, "route.decided", "gateway.auth_failed"][(i % 3) as usize];
            conn.execute(
                "INSERT INTO events VALUES (?1, ?2, 's', 't', NULL, ?3, 'system', 'pseudonymous', ?4)",
                params![
                    format!("01ID{i:06}"),
                    i,
                    ty,
                    format!(
                        r#"{{"gateway_key_id":"gk_{}","user_id":"u","team_id":"t","model":"m","cost_usd":0.5}}"#,
                        i % 5
                    )
                ],
            )
            .unwrap();
        }
        (dir, conn)
    }

    fn plans(conn: &Connection) -> Vec<(ProductQuery, Vec<String>)> {
        product_queries()
            .into_iter()
            .map(|pq| {
                let lines = explain(conn, &pq.sql).unwrap();
                (pq, lines)
            })
            .collect()
    }

    #[test]
    fn every_product_query_is_index_backed() {
        let (_d, conn) = current();
        for (pq, lines) in plans(&conn) {
            if let Err(e) = check_plan(&pq, &lines) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn the_retired_indexes_change_no_plan() {
        let (_d, conn) = current();
        let without = plans(&conn);
        // The original gateway's index set, as a file not migrated yet has it.
        for r in RETIRED_EVENT_INDEXES {
            conn.execute_batch(r.sql).unwrap();
        }
        assert_eq!(
            retired_present(&conn).unwrap().len(),
            RETIRED_EVENT_INDEXES.len()
        );
        let with = plans(&conn);
        for ((pq, a), (_, b)) in without.iter().zip(&with) {
            assert_eq!(
                a, b,
                "{}: the plan differs with the retired indexes",
                pq.name
            );
            for r in RETIRED_EVENT_INDEXES {
                assert!(
                    !indexes_used(b).iter().any(|i| i == r.name),
                    "{} uses {}",
                    pq.name,
                    r.name
                );
            }
        }
    }

    #[test]
    fn a_table_scan_or_a_whole_index_walk_is_caught() {
        let (_d, conn) = current();
        let pq = q(
            "by actor",
            "nobody",
            "SELECT COUNT(*) FROM events WHERE actor = ?1".to_owned(),
            Access::Search,
        );
        let lines = explain(&conn, &pq.sql).unwrap();
        assert!(check_plan(&pq, &lines).is_err(), "{lines:?}");
        let count = q(
            "all",
            "nobody",
            reader::COUNT_ALL_SQL.to_owned(),
            Access::Search,
        );
        let lines = explain(&conn, &count.sql).unwrap();
        assert!(
            check_plan(&count, &lines).is_err(),
            "a whole-index walk is not a search"
        );
        let count = q(
            "all",
            "nobody",
            reader::COUNT_ALL_SQL.to_owned(),
            Access::CountAll,
        );
        let lines = explain(&conn, &count.sql).unwrap();
        assert!(check_plan(&count, &lines).is_ok(), "{lines:?}");
    }

    #[test]
    fn the_runbook_check_and_the_filtered_usage_search_their_indexes() {
        let (_d, conn) = current();
        let used = |name: &str| {
            let pq = product_queries()
                .into_iter()
                .find(|p| p.name == name)
                .unwrap();
            indexes_used(&explain(&conn, &pq.sql).unwrap())
        };
        assert_eq!(
            used("runbook: events in the last 5 minutes"),
            vec!["idx_events_timestamp_us"]
        );
        assert_eq!(
            used("usage by Model, Key = ?"),
            vec!["idx_events_type_timestamp"]
        );
        assert_eq!(used("events of a turn"), vec!["idx_events_turn_id_id"]);
    }
}
