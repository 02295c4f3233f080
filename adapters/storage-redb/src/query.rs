//! Read-side queries over the main redb file: spend per key, usage rollups, audit reads, the
//! audit chain walk, and the small reads the CLI needs. All of them are blocking and each runs
//! in one read transaction (one consistent snapshot).
//!
//! Invariants:
//! - Spend, usage and audit reads walk `events_by_type_time` (or `events_by_key` /
//!   `events_by_user` / `events_by_team` when a usage filter names one), never the whole
//!   `events` table.
//! - Windows are half-open (`since <= timestamp_us < until`) and every list has a total order,
//!   with the same rules as the SQLite adapter: cost descending then group (`None` last); id;
//!   sequence number.
//! - Payload values of unexpected JSON types are coerced, never an error.

/// The audit types an audit read covers (the domain's rule, re-exported for callers).
pub use metis_domain::audit::audit_types_for;
use metis_domain::audit::{AUDIT_TYPES, BrokenLink, ChainedRow, verify};
use metis_domain::events::types::{LLM_CALL_COMPLETED, LLM_CALL_FAILED};
use metis_domain::usage::{SpendRollup, UsageRollup};
use metis_ports::trace::{EventRow, KeySpend, UsageGroup, UsageRow};
use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata,
};
use serde_json::Value;

use crate::db::{
    AUDIT_CHAIN, EV_BY_KEY, EV_BY_SESSION, EV_BY_TEAM, EV_BY_TIME, EV_BY_TURN, EV_BY_TYPE_TIME,
    EV_BY_USER, EVENTS, EventTuple, EventValue, Result,
};

const CALL_TYPES: [&str; 2] = [LLM_CALL_COMPLETED, LLM_CALL_FAILED];

fn to_row(id: &str, v: EventTuple<'_>) -> EventRow {
    let (ts, session, turn, parent, ty, actor, sens, payload) = v;
    EventRow {
        id: id.to_owned(),
        timestamp_us: ts,
        session_id: session.to_owned(),
        turn_id: turn.map(str::to_owned),
        parent_event_id: parent.map(str::to_owned),
        event_type: ty.to_owned(),
        actor: actor.to_owned(),
        sensitivity: sens.to_owned(),
        payload_json: payload.to_owned(),
    }
}

/// The events of one read transaction.
pub(crate) struct Reader {
    tx: ReadTransaction,
    events: ReadOnlyTable<&'static str, EventValue>,
}

impl Reader {
    pub(crate) fn new(db: &Database) -> Result<Self> {
        let tx = db.begin_read()?;
        let events = tx.open_table(EVENTS)?;
        Ok(Self { tx, events })
    }

    fn row(&self, id: &str) -> Result<Option<EventRow>> {
        Ok(self.events.get(id)?.map(|g| to_row(id, g.value())))
    }

    /// Ids of `ty` in `[since, until)`, in (time, id) order.
    fn ids_of_type(&self, ty: &str, since: i64, until: i64) -> Result<Vec<String>> {
        let t = self.tx.open_table(EV_BY_TYPE_TIME)?;
        let mut out = Vec::new();
        for item in t.range((ty, since, "")..)? {
            let (k, _) = item?;
            let (kty, ts, id) = k.value();
            if kty != ty || ts >= until {
                break;
            }
            out.push(id.to_owned());
        }
        Ok(out)
    }

    /// Rows of the call types in `[since, until)`.
    fn calls(&self, since: i64, until: i64) -> Result<Vec<EventRow>> {
        let mut out = Vec::new();
        for ty in CALL_TYPES {
            for id in self.ids_of_type(ty, since, until)? {
                if let Some(r) = self.row(&id)? {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Rows whose payload field (`group`'s index) equals `value`, in `[since, until)`.
    fn by_field(
        &self,
        group: UsageGroup,
        value: &str,
        since: i64,
        until: i64,
    ) -> Result<Option<Vec<EventRow>>> {
        let def = match group {
            UsageGroup::Key => EV_BY_KEY,
            UsageGroup::User => EV_BY_USER,
            UsageGroup::Team => EV_BY_TEAM,
            UsageGroup::Model => return Ok(None),
        };
        let t = self.tx.open_table(def)?;
        let mut out = Vec::new();
        for item in t.range((value, since, "")..)? {
            let (k, _) = item?;
            let (v, ts, id) = k.value();
            if v != value || ts >= until {
                break;
            }
            if let Some(r) = self.row(id)? {
                out.push(r);
            }
        }
        Ok(Some(out))
    }
}

fn parse(row: &EventRow) -> Value {
    serde_json::from_str(&row.payload_json).unwrap_or(Value::Null)
}

/// Per-key spend since `day_start_us` and since `month_start_us` (keys without spend are
/// absent), ordered by key.
///
/// # Errors
/// redb errors.
pub fn spend_by_key(
    db: &Database,
    day_start_us: i64,
    month_start_us: i64,
) -> Result<Vec<KeySpend>> {
    let r = Reader::new(db)?;
    let mut spend = SpendRollup::new(day_start_us, month_start_us);
    for row in r.calls(spend.from(), i64::MAX)? {
        spend.add(row.timestamp_us, &row.event_type, &row.payload_json);
    }
    Ok(spend.finish())
}

/// Cost, tokens and call counts in `[since, until)`, grouped, optionally filtered; sorted by
/// cost descending, then group (`None` last). The rules are `metis_domain::usage`'s; this picks
/// the index to read.
///
/// # Errors
/// redb errors.
pub fn usage(
    db: &Database,
    since_us: i64,
    until_us: i64,
    group: UsageGroup,
    filter: Option<(UsageGroup, &str)>,
) -> Result<Vec<UsageRow>> {
    let r = Reader::new(db)?;
    let rows = match filter {
        Some((f, value)) => match r.by_field(f, value, since_us, until_us)? {
            Some(rows) => rows,
            None => r.calls(since_us, until_us)?,
        },
        None => r.calls(since_us, until_us)?,
    };
    let mut usage = UsageRollup::new(since_us, until_us, group, filter);
    for row in &rows {
        usage.add(row.timestamp_us, &row.event_type, &row.payload_json);
    }
    Ok(usage.finish())
}

/// Audit events in `[since, until)`, ordered by id (`types` as in [`audit_types_for`]).
///
/// # Errors
/// redb errors.
pub fn audit_events(
    db: &Database,
    since_us: i64,
    until_us: i64,
    types: &[String],
) -> Result<Vec<EventRow>> {
    let r = Reader::new(db)?;
    let mut ids = Vec::new();
    for ty in audit_types_for(types) {
        ids.extend(r.ids_of_type(ty, since_us, until_us)?);
    }
    ids.sort_unstable();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(row) = r.row(&id)? {
            out.push(row);
        }
    }
    Ok(out)
}

/// Events of one type, ordered by id.
///
/// # Errors
/// redb errors.
pub fn events_of_type(db: &Database, ty: &str) -> Result<Vec<EventRow>> {
    let r = Reader::new(db)?;
    let mut ids = r.ids_of_type(ty, i64::MIN, i64::MAX)?;
    ids.sort_unstable();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(row) = r.row(&id)? {
            out.push(row);
        }
    }
    Ok(out)
}

/// Events of one turn, ordered by id.
///
/// # Errors
/// redb errors.
pub fn events_for_turn(db: &Database, turn_id: &str) -> Result<Vec<EventRow>> {
    let r = Reader::new(db)?;
    let t = r.tx.open_table(EV_BY_TURN)?;
    let mut out = Vec::new();
    for item in t.range((turn_id, "")..)? {
        let (k, _) = item?;
        let (turn, id) = k.value();
        if turn != turn_id {
            break;
        }
        if let Some(row) = r.row(id)? {
            out.push(row);
        }
    }
    Ok(out)
}

/// Events of one session with an id after `since_id`, ordered by id, at most `limit`.
///
/// # Errors
/// redb errors.
pub fn events_for_session(
    db: &Database,
    session_id: &str,
    since_id: Option<&str>,
    limit: Option<u32>,
) -> Result<Vec<EventRow>> {
    let r = Reader::new(db)?;
    let t = r.tx.open_table(EV_BY_SESSION)?;
    let since = since_id.unwrap_or("");
    let limit = limit.map_or(usize::MAX, |l| l as usize);
    let mut out = Vec::new();
    for item in t.range((session_id, since)..)? {
        let (k, _) = item?;
        let (s, id) = k.value();
        if s != session_id || out.len() >= limit {
            break;
        }
        if id == since {
            continue;
        }
        if let Some(row) = r.row(id)? {
            out.push(row);
        }
    }
    Ok(out)
}

/// Walk the audit chain in `audit_seq` order and verify every link. `Ok(Ok(n))`: `n` chained
/// events, all intact; `Ok(Err(link))`: the first broken link.
///
/// # Errors
/// redb errors.
pub fn verify_audit_chain(db: &Database) -> Result<std::result::Result<u64, BrokenLink>> {
    let r = Reader::new(db)?;
    let chain = r.tx.open_table(AUDIT_CHAIN)?;
    let mut rows = Vec::new();
    for item in chain.iter()? {
        let (_, id) = item?;
        let id = id.value().to_owned();
        match r.row(&id)? {
            Some(row) => rows.push(row),
            None => {
                return Ok(Err(BrokenLink {
                    id,
                    expected_seq: rows.len() as u64 + 1,
                    problem: "the chain names an event that is no longer stored (it was deleted)"
                        .into(),
                }));
            }
        }
    }
    Ok(verify(rows.iter().map(|r| ChainedRow {
        id: &r.id,
        timestamp_us: r.timestamp_us,
        session_id: &r.session_id,
        event_type: &r.event_type,
        payload_json: &r.payload_json,
    })))
}

/// Audit-type events without a chain link.
///
/// # Errors
/// redb errors.
pub fn count_unchained_audit(db: &Database) -> Result<u64> {
    let r = Reader::new(db)?;
    let mut n = 0;
    for ty in AUDIT_TYPES {
        for id in r.ids_of_type(ty, i64::MIN, i64::MAX)? {
            if let Some(row) = r.row(&id)?
                && parse(&row).get("audit_seq").is_none()
            {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Number of events, and the oldest and newest timestamps.
///
/// # Errors
/// redb errors.
pub fn event_span(db: &Database) -> Result<(u64, Option<i64>, Option<i64>)> {
    let r = Reader::new(db)?;
    let n = r.events.len()?;
    let by_time = r.tx.open_table(EV_BY_TIME)?;
    let oldest = by_time.first()?.map(|(k, _)| k.value().0);
    let newest = by_time.last()?.map(|(k, _)| k.value().0);
    Ok((n, oldest, newest))
}

/// Number of events of type `ty`.
///
/// # Errors
/// redb errors.
pub fn count_by_type(db: &Database, ty: &str) -> Result<u64> {
    let r = Reader::new(db)?;
    Ok(r.ids_of_type(ty, i64::MIN, i64::MAX)?.len() as u64)
}

/// Every event in id order, in pages of `page` rows starting after `after` (for copies).
///
/// # Errors
/// redb errors.
pub fn events_page(db: &Database, after: Option<&str>, page: usize) -> Result<Vec<EventRow>> {
    let r = Reader::new(db)?;
    let mut out = Vec::with_capacity(page);
    let start = after.unwrap_or("");
    for item in r.events.range(start..)? {
        let (k, v) = item?;
        let id = k.value();
        if Some(id) == after {
            continue;
        }
        out.push(to_row(id, v.value()));
        if out.len() >= page {
            break;
        }
    }
    Ok(out)
}
