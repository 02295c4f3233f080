//! `metis audit export|verify`: which audit events an export selects (window, types), how
//! each is rendered (JSONL, RFC 4180 CSV), and the chain check.

use metis_domain::audit::{AUDIT_TYPES, BrokenLink, is_audit_type};
use metis_domain::time::{MICROS_PER_SEC, format_iso};
use metis_ports::storage::StoreReader;
use metis_ports::trace::EventRow;
use serde_json::{Map, Value};

use super::StorageError;

/// Default export window: the last 7 days.
const DEFAULT_WINDOW_US: i64 = 7 * 86_400 * MICROS_PER_SEC;

/// Known event types that are not audit types: accepted by `--type` with a warning and
/// dropped (they are never part of the audit log). Includes the original gateway's catalogue
/// so operators' existing scripts get a warning rather than a usage error.
const KNOWN_NON_AUDIT_TYPES: &[&str] = &[
    "route.decided",
    "llm.call_started",
    "llm.call_completed",
    "llm.call_failed",
    "turn.started",
    "turn.completed",
    "turn.cancelled",
    "session.created",
    "session.resumed",
    "session.ended",
    "pattern.recorded",
    "pattern.matched",
    "tool.called",
    "tool.completed",
    "tool.failed",
    "tool.input_invalid",
    "tool.confirmation_requested",
    "tool.confirmation_resolved",
    "routing.provider_unavailable",
    "routing.provider_recovered",
    "skill.loaded",
    "skill.created",
    "memory.updated",
    "eval.started",
    "eval.completed",
    "eval.failed",
    "delegate.started",
    "delegate.completed",
    "delegate.failed",
    "analytics.user_exported",
    "analytics.user_forgotten",
    "bus.subscriber_registered",
    "bus.subscriber_unregistered",
    "bus.gap_detected",
    "billing.customer_created",
    "billing.subscription_created",
    "billing.subscription_updated",
    "billing.subscription_canceled",
    "billing.invoice_paid",
    "billing.invoice_payment_failed",
];

/// The CSV header (stable column order).
pub const CSV_HEADER: &str =
    "id,timestamp,session_id,turn_id,parent_event_id,type,actor,sensitivity,payload_json";

/// The export window `[since, until)` from the flags: `until` defaults to `now`, `since` to
/// 7 days before `now`.
///
/// # Errors
/// A usage message when the window is empty (`since >= until`).
pub fn resolve_window(
    since: Option<i64>,
    until: Option<i64>,
    now: i64,
) -> Result<(i64, i64), String> {
    let until_us = until.unwrap_or(now);
    let since_us = since.unwrap_or_else(|| now.saturating_sub(DEFAULT_WINDOW_US));
    if since_us >= until_us {
        let from = if since.is_some() {
            "--since"
        } else {
            "the default --since (7 days ago)"
        };
        let to = if until.is_some() {
            "--until"
        } else {
            "the default --until (now)"
        };
        return Err(format!(
            "empty window: {from} {} is not before {to} {}",
            format_iso(since_us),
            format_iso(until_us)
        ));
    }
    Ok((since_us, until_us))
}

/// The types to export, from `--type` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSelection {
    /// Audit types to read (deduplicated, in the order given). Empty with `requested` false:
    /// every audit type.
    pub audit: Vec<String>,
    /// Known types that are not audit types (warned about and dropped).
    pub ignored: Vec<String>,
    /// Whether any `--type` was given (then an empty `audit` means "export nothing").
    pub requested: bool,
}

/// Check `--type` values against the catalogue.
///
/// # Errors
/// A usage message naming every unknown type.
pub fn select_types(requested: &[String]) -> Result<TypeSelection, String> {
    let unknown: Vec<&str> = requested
        .iter()
        .map(String::as_str)
        .filter(|t| !is_audit_type(t) && !KNOWN_NON_AUDIT_TYPES.contains(t))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown event type(s): {}; audit types are: {}",
            unknown.join(", "),
            AUDIT_TYPES.join(", ")
        ));
    }
    let mut audit: Vec<String> = Vec::new();
    let mut ignored: Vec<String> = Vec::new();
    for t in requested {
        let list = if is_audit_type(t) {
            &mut audit
        } else {
            &mut ignored
        };
        if !list.contains(t) {
            list.push(t.clone());
        }
    }
    Ok(TypeSelection {
        audit,
        ignored,
        requested: !requested.is_empty(),
    })
}

/// The stored payload as JSON (compact, key order kept); a payload that is not JSON (a
/// damaged row) is exported as a JSON string rather than dropped.
fn payload_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

fn opt(v: Option<&String>) -> Value {
    v.map_or(Value::Null, |s| Value::String(s.clone()))
}

/// One JSONL line (without the newline): keys `id, timestamp, session_id, turn_id,
/// parent_event_id, type, actor, sensitivity, payload`.
///
/// # Errors
/// Serialisation errors (not expected for JSON values).
pub fn jsonl_line(e: &EventRow) -> serde_json::Result<String> {
    let mut obj = Map::new();
    obj.insert("id".into(), Value::String(e.id.clone()));
    obj.insert(
        "timestamp".into(),
        Value::String(format_iso(e.timestamp_us)),
    );
    obj.insert("session_id".into(), Value::String(e.session_id.clone()));
    obj.insert("turn_id".into(), opt(e.turn_id.as_ref()));
    obj.insert("parent_event_id".into(), opt(e.parent_event_id.as_ref()));
    obj.insert("type".into(), Value::String(e.event_type.clone()));
    obj.insert("actor".into(), Value::String(e.actor.clone()));
    obj.insert("sensitivity".into(), Value::String(e.sensitivity.clone()));
    obj.insert("payload".into(), payload_value(&e.payload_json));
    serde_json::to_string(&Value::Object(obj))
}

/// Quote a CSV field when it holds a comma, a quote or a line break (RFC 4180; quotes are
/// doubled).
#[must_use]
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// One CSV record (without the newline), columns as in [`CSV_HEADER`]; nulls are empty.
///
/// # Errors
/// Serialisation errors (not expected for JSON values).
pub fn csv_line(e: &EventRow) -> serde_json::Result<String> {
    let payload = serde_json::to_string(&payload_value(&e.payload_json))?;
    let fields = [
        e.id.as_str(),
        &format_iso(e.timestamp_us),
        &e.session_id,
        e.turn_id.as_deref().unwrap_or(""),
        e.parent_event_id.as_deref().unwrap_or(""),
        &e.event_type,
        &e.actor,
        &e.sensitivity,
        &payload,
    ];
    Ok(fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(","))
}

/// The chain check: `Ok(n)` links intact or the first broken one, and how many audit events
/// carry no link (written before the chain existed; the chain cannot vouch for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub chain: Result<u64, BrokenLink>,
    pub unchained: u64,
}

/// Verify the audit chain of the store behind `reader`.
///
/// # Errors
/// The store cannot be read.
pub fn verify(reader: &dyn StoreReader) -> Result<ChainReport, StorageError> {
    let chain = reader
        .verify_audit_chain()
        .map_err(StorageError::trace("cannot read the audit chain"))?;
    let unchained = reader
        .count_unchained_audit()
        .map_err(StorageError::trace("cannot count audit events"))?;
    Ok(ChainReport { chain, unchained })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400 * MICROS_PER_SEC;

    #[test]
    fn the_window_defaults_to_the_last_seven_days_and_must_not_be_empty() {
        let now = 100 * DAY;
        assert_eq!(resolve_window(None, None, now), Ok((93 * DAY, now)));
        assert_eq!(
            resolve_window(Some(99 * DAY), None, now),
            Ok((99 * DAY, now))
        );
        assert_eq!(
            resolve_window(None, Some(95 * DAY), now),
            Ok((93 * DAY, 95 * DAY))
        );
        let err = resolve_window(None, Some(90 * DAY), now).unwrap_err();
        assert!(err.contains("default --since"), "{err}");
        let err = resolve_window(Some(5), Some(5), now).unwrap_err();
        assert!(err.contains("empty window"), "{err}");
        assert!(resolve_window(Some(6), Some(5), now).is_err());
    }

    #[test]
    fn types_are_checked_intersected_and_deduplicated() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
        let sel = select_types(&s(&[
            "quota.alert",
            "llm.call_completed",
            "quota.alert",
            "gateway.key_issued",
        ]))
        .unwrap();
        assert_eq!(sel.audit, s(&["quota.alert", "gateway.key_issued"]));
        assert_eq!(sel.ignored, s(&["llm.call_completed"]));
        assert!(sel.requested);
        let err = select_types(&s(&["gateway.key_issed", "nope"])).unwrap_err();
        assert!(err.contains("gateway.key_issed, nope"), "{err}");
        let all = select_types(&[]).unwrap();
        assert!(!all.requested && all.audit.is_empty());
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field(r#"{"k":"v"}"#), r#""{""k"":""v""}""#);
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
    }

    fn row() -> EventRow {
        EventRow {
            id: "01ID".into(),
            timestamp_us: 1_747_318_930_123_456,
            session_id: "system".into(),
            turn_id: None,
            parent_event_id: Some("01PARENT".into()),
            event_type: "gateway.key_issued".into(),
            actor: "system".into(),
            sensitivity: "pseudonymous".into(),
            payload_json: r#"{"name":"a, \"b\"","n":1.50,"audit_seq":1}"#.into(),
        }
    }

    #[test]
    fn a_jsonl_line_has_the_documented_key_order() {
        assert_eq!(
            jsonl_line(&row()).unwrap(),
            r#"{"id":"01ID","timestamp":"2025-05-15T14:22:10.123456+00:00","session_id":"system","turn_id":null,"parent_event_id":"01PARENT","type":"gateway.key_issued","actor":"system","sensitivity":"pseudonymous","payload":{"name":"a, \"b\"","n":1.50,"audit_seq":1}}"#
        );
    }

    #[test]
    fn a_csv_line_quotes_the_payload() {
        assert_eq!(
            csv_line(&row()).unwrap(),
            r#"01ID,2025-05-15T14:22:10.123456+00:00,system,,01PARENT,gateway.key_issued,system,pseudonymous,"{""name"":""a, \""b\"""",""n"":1.50,""audit_seq"":1}""#
        );
    }
}
