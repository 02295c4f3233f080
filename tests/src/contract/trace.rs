//! Contract of the trace store: `EventSink` (queueing, flush, overflow, close, the audit chain
//! and the version marker) and `TraceQuery` (spend, usage, audit reads).
#![expect(
    clippy::expect_used,
    reason = "contract tests fail loudly on a broken store"
)]

use std::sync::Arc;

use metis_domain::audit::{ChainedRow, verify};
use metis_domain::events::types::{
    GATEWAY_AUTH_FAILED, GATEWAY_KEY_ISSUED, GATEWAY_KEY_REVOKED, LLM_CALL_COMPLETED,
    LLM_CALL_FAILED, QUOTA_ALERT, ROUTE_DECIDED, TURN_COMPLETED,
};
use metis_domain::events::{Actor, Event, Sensitivity};
use metis_ports::trace::{EventRow, KeySpend, TraceError, TraceQuery, UsageGroup};
use serde_json::{Value, json};

use super::Backend;

/// A ULID-shaped id that sorts by `n`.
#[must_use]
pub fn event_id(n: u64) -> String {
    format!("01J{n:023}")
}

/// An event with the given identity and payload (session `s1`, system actor).
#[must_use]
pub fn event(id: &str, ts: i64, ty: &'static str, payload: &Value) -> Event {
    Event {
        id: id.to_owned(),
        timestamp_us: ts,
        session_id: "s1".to_owned(),
        turn_id: Some(format!("t-{id}")),
        parent_event_id: None,
        event_type: ty,
        actor: Actor::System,
        sensitivity: Sensitivity::Pseudonymous,
        payload_json: payload.to_string(),
    }
}

/// A call event (`llm.call_completed`) of `key` costing `cost` USD.
#[must_use]
pub fn call(n: u64, ts: i64, key: &str, cost: f64) -> Event {
    event(
        &event_id(n),
        ts,
        LLM_CALL_COMPLETED,
        &json!({"model": "m", "gateway_key_id": key, "cost_usd": cost, "input_tokens": 1}),
    )
}

/// An audit event (`gateway.key_issued`).
#[must_use]
pub fn audit(n: u64, ts: i64) -> Event {
    event(
        &event_id(n),
        ts,
        GATEWAY_KEY_ISSUED,
        &json!({"key_id": format!("gk_{n}"), "reason": "test"}),
    )
}

/// Number of stored call events (completed + failed) in all time.
pub async fn stored_calls(q: &dyn TraceQuery) -> u64 {
    q.usage(i64::MIN, i64::MAX, UsageGroup::Model, None)
        .await
        .expect("usage")
        .iter()
        .map(|r| r.calls + r.failed_calls)
        .sum()
}

/// Every stored audit event, ordered by id.
pub async fn stored_audit(q: &dyn TraceQuery) -> Vec<EventRow> {
    q.audit_events(i64::MIN, i64::MAX, &[])
        .await
        .expect("audit events")
}

/// Verify the audit chain of `rows` (in any order) with `metis_domain::audit::verify`.
pub fn verify_chain(rows: &[EventRow]) -> Result<u64, String> {
    let mut sorted: Vec<(u64, &EventRow)> = rows
        .iter()
        .map(|r| {
            let seq = serde_json::from_str::<Value>(&r.payload_json)
                .ok()
                .and_then(|v| v.get("audit_seq").and_then(Value::as_u64))
                .unwrap_or(0);
            (seq, r)
        })
        .collect();
    sorted.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
    verify(sorted.iter().map(|(_, r)| ChainedRow {
        id: &r.id,
        timestamp_us: r.timestamp_us,
        session_id: &r.session_id,
        event_type: &r.event_type,
        payload_json: &r.payload_json,
    }))
    .map_err(|b| format!("{b:?}"))
}

// ---------------------------------------------------------------------------------------------
// EventSink
// ---------------------------------------------------------------------------------------------

/// `emit` MUST NOT block on disk; when the queue is full the event MUST be counted in
/// `overflowed` and the caller continues. Every emitted event is accounted for exactly once
/// (accepted or overflowed), and after `flush` every accepted event is written.
pub async fn a_full_queue_counts_overflow_and_never_blocks(b: &dyn Backend) {
    let s = b.open(Some(1)).await.expect("open");
    let n = 5_000u64;
    let started = std::time::Instant::now();
    for i in 0..n {
        s.sink.emit(call(i, 1_000 + i as i64, "gk_a", 0.001));
    }
    let emit_time = started.elapsed();
    s.sink.flush().await.expect("flush");
    let st = s.sink.stats();
    assert_eq!(st.accepted + st.overflowed + st.failed, n, "{st:?}");
    assert_eq!(st.failed, 0, "{st:?}");
    assert!(st.overflowed > 0, "a queue of one must overflow: {st:?}");
    assert_eq!(st.written, st.accepted, "{st:?}");
    assert_eq!(st.queued, 0, "{st:?}");
    assert_eq!(stored_calls(s.query.as_ref()).await, st.written);
    // Emitting never waits for the writer: 5 000 emits take far less than 5 000 commits.
    assert!(
        emit_time < std::time::Duration::from_secs(5),
        "emit blocked: {emit_time:?}"
    );
    s.close().await;
}

/// `flush` MUST wait until every event emitted before the call is durably written: queries
/// after it see all of them.
pub async fn flush_waits_for_every_earlier_event(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    for i in 0..300 {
        s.sink.emit(call(i, 10 + i as i64, "gk_a", 0.5));
    }
    s.sink.flush().await.expect("flush");
    assert_eq!(stored_calls(s.query.as_ref()).await, 300);
    let st = s.sink.stats();
    assert_eq!(
        (st.accepted, st.written, st.queued),
        (300, 300, 0),
        "{st:?}"
    );
    s.close().await;
}

/// `flush` on a store whose writer has stopped MUST fail with `Unavailable`.
pub async fn flush_after_close_is_unavailable(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    let sink = Arc::clone(&s.sink);
    s.close().await;
    let r = sink.flush().await;
    assert!(matches!(r, Err(TraceError::Unavailable(_))), "{r:?}");
}

/// An event emitted after the store closed is never silently dropped: it is counted (as
/// failed) and the caller continues.
pub async fn emit_after_close_is_counted(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    let sink = Arc::clone(&s.sink);
    s.close().await;
    let before = sink.stats();
    sink.emit(call(1, 1, "gk_a", 1.0));
    let after = sink.stats();
    assert_eq!(
        after.accepted + after.overflowed + after.failed,
        before.accepted + before.overflowed + before.failed + 1,
        "{after:?}"
    );
}

/// `is_writable` is true while the store accepts writes, false once it is closed.
pub async fn is_writable_until_closed(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    assert!(s.sink.is_writable());
    let sink = Arc::clone(&s.sink);
    s.close().await;
    assert!(!sink.is_writable());
}

/// Written events are durable: after a close and a reopen every field reads back as written
/// (audit events also carry their chain link).
pub async fn written_events_survive_reopen_unchanged(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    let mut e = audit(7, 123_456);
    e.parent_event_id = Some(event_id(6));
    e.actor = Actor::User;
    e.sensitivity = Sensitivity::Private;
    s.sink.emit(e.clone());
    s.sink.flush().await.expect("flush");
    s.close().await;

    let s = b.open(None).await.expect("reopen");
    let rows = stored_audit(s.query.as_ref()).await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (
            r.id.as_str(),
            r.timestamp_us,
            r.session_id.as_str(),
            r.turn_id.as_deref(),
            r.parent_event_id.as_deref(),
            r.event_type.as_str(),
            r.actor.as_str(),
            r.sensitivity.as_str()
        ),
        (
            e.id.as_str(),
            e.timestamp_us,
            "s1",
            e.turn_id.as_deref(),
            Some(event_id(6).as_str()),
            GATEWAY_KEY_ISSUED,
            "user",
            "private"
        )
    );
    let mut stored: Value = serde_json::from_str(&r.payload_json).expect("payload json");
    let obj = stored.as_object_mut().expect("object");
    assert_eq!(obj.remove("audit_seq"), Some(json!(1)));
    assert!(obj.remove("audit_prev_hash").is_some());
    let original: Value = serde_json::from_str(&e.payload_json).expect("json");
    assert_eq!(stored, original);
    s.close().await;
}

/// An event the store rejects on its own (an id already stored) is counted as failed without
/// failing the other events of its batch.
pub async fn a_rejected_event_fails_alone(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    s.sink.emit(call(1, 1, "gk_a", 1.0));
    s.sink.flush().await.expect("flush");
    s.sink.emit(call(2, 2, "gk_a", 1.0));
    s.sink.emit(call(1, 3, "gk_b", 5.0)); // same id as the first
    s.sink.emit(call(3, 4, "gk_a", 1.0));
    let _ = s.sink.flush().await; // may report the failure
    let st = s.sink.stats();
    assert_eq!((st.written, st.failed), (3, 1), "{st:?}");
    assert_eq!(stored_calls(s.query.as_ref()).await, 3);
    s.close().await;
}

/// Opening a store stamps the current schema version (1) in its version marker.
pub async fn opening_stamps_the_schema_version(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    s.close().await;
    assert_eq!(b.trace_version().await, Some(1));
}

/// A store whose version marker is newer than this binary MUST be refused (`TooNew`, naming
/// both versions) and left untouched: the marker is never lowered.
pub async fn a_newer_store_is_refused_and_never_lowered(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    s.sink.emit(call(1, 1, "gk", 1.0));
    s.sink.flush().await.expect("flush");
    s.close().await;
    b.stamp_trace_version(7).await;
    match b.open(None).await {
        Err(TraceError::TooNew { found, supported }) => assert_eq!((found, supported), (7, 1)),
        Err(e) => assert!(e.to_string().contains('7'), "unexpected error: {e}"),
        Ok(s) => {
            s.close().await;
            #[expect(clippy::panic, reason = "the clause failed")]
            {
                panic!("a store stamped 7 was opened by a binary of version 1")
            }
        }
    }
    assert_eq!(b.trace_version().await, Some(7), "the marker was lowered");
}

/// Audit events get `audit_seq` 1, 2, 3, … and the hash of their predecessor, assigned by the
/// writer in write order; other events are not chained.
pub async fn audit_events_form_a_verifiable_chain(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    for i in 0..40u64 {
        if i % 3 == 0 {
            s.sink.emit(audit(i, i as i64));
        } else {
            s.sink.emit(call(i, i as i64, "gk", 0.1));
        }
    }
    s.sink.flush().await.expect("flush");
    let rows = stored_audit(s.query.as_ref()).await;
    assert_eq!(rows.len(), 14);
    assert_eq!(verify_chain(&rows), Ok(14));
    s.close().await;
}

/// The audit chain continues across a reopen (the tail is read from the store, not kept in
/// memory only).
pub async fn the_audit_chain_continues_across_reopen(b: &dyn Backend) {
    for round in 0..3u64 {
        let s = b.open(None).await.expect("open");
        for i in 0..4 {
            let n = round * 10 + i;
            s.sink.emit(audit(n, n as i64));
        }
        s.sink.flush().await.expect("flush");
        s.close().await;
    }
    let s = b.open(None).await.expect("open");
    let rows = stored_audit(s.query.as_ref()).await;
    assert_eq!(verify_chain(&rows), Ok(12));
    s.close().await;
}

// ---------------------------------------------------------------------------------------------
// TraceQuery
// ---------------------------------------------------------------------------------------------

fn call_of(n: u64, ts: i64, ty: &'static str, payload: &Value) -> Event {
    event(&event_id(n), ts, ty, payload)
}

/// `spend_by_key`: per key and the user and team the calls recorded, the `cost_usd` of
/// `llm.call_completed` and `llm.call_failed` since the day start and since the month start
/// (other types and calls without a key are not spend); ordered by key, user, team (absent
/// first).
pub async fn spend_sums_both_windows_of_call_events(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    let p = |k: &str, c: f64| json!({"gateway_key_id": k, "cost_usd": c});
    for e in [
        call_of(1, 50, LLM_CALL_COMPLETED, &p("gk_a", 1.0)), // before the month
        call_of(2, 100, LLM_CALL_COMPLETED, &p("gk_a", 2.0)), // month only
        call_of(3, 200, LLM_CALL_FAILED, &p("gk_a", 0.25)),  // day
        call_of(4, 210, LLM_CALL_COMPLETED, &p("gk_b", 4.0)), // day
        call_of(5, 220, TURN_COMPLETED, &p("gk_b", 9.0)),    // not a call
        call_of(6, 230, LLM_CALL_COMPLETED, &json!({"cost_usd": 3.0})), // no key
        call_of(
            7,
            240,
            LLM_CALL_COMPLETED,
            &json!({"gateway_key_id": "gk_b", "cost_usd": 0.5, "user_id": "ann", "team_id": "t"}),
        ), // the same key, in a team
    ] {
        s.sink.emit(e);
    }
    s.sink.flush().await.expect("flush");
    let spend = s.query.spend_by_key(200, 100).await.expect("spend");
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
            KeySpend {
                gateway_key_id: "gk_b".into(),
                user_id: Some("ann".into()),
                team_id: Some("t".into()),
                day_usd: 0.5,
                month_usd: 0.5
            },
        ]
    );
    s.close().await;
}

fn usage_payload(k: &str, user: Option<&str>, model: &str, cost: f64, tokens: u64) -> Value {
    json!({
        "model": model,
        "input_tokens": tokens,
        "output_tokens": tokens * 2,
        "cached_input_tokens": 1,
        "cache_creation_input_tokens": 2,
        "cost_usd": cost,
        "gateway_key_id": k,
        "user_id": user,
    })
}

/// `usage`: cost and tokens of call events in the half-open window `[since, until)`, grouped,
/// completed and failed calls counted apart, sorted by cost descending.
pub async fn usage_groups_a_half_open_window_by_cost(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    for e in [
        call_of(
            1,
            10,
            LLM_CALL_COMPLETED,
            &usage_payload("gk_a", Some("al"), "m1", 1.0, 10),
        ),
        call_of(
            2,
            11,
            LLM_CALL_FAILED,
            &usage_payload("gk_a", Some("al"), "m2", 0.5, 5),
        ),
        call_of(
            3,
            12,
            LLM_CALL_COMPLETED,
            &usage_payload("gk_b", None, "m1", 3.0, 7),
        ),
        call_of(
            4,
            99,
            LLM_CALL_COMPLETED,
            &usage_payload("gk_b", None, "m1", 8.0, 7),
        ), // at `until`: outside
        call_of(
            5,
            9,
            LLM_CALL_COMPLETED,
            &usage_payload("gk_c", None, "m1", 8.0, 7),
        ), // before `since`
        call_of(
            6,
            50,
            ROUTE_DECIDED,
            &usage_payload("gk_c", None, "m1", 8.0, 7),
        ), // not a call
    ] {
        s.sink.emit(e);
    }
    s.sink.flush().await.expect("flush");
    let by_key = s
        .query
        .usage(10, 99, UsageGroup::Key, None)
        .await
        .expect("usage");
    type Summary<'a> = (Option<&'a str>, f64, u64, u64, u64, u64, u64, u64);
    let summary: Vec<Summary<'_>> = by_key
        .iter()
        .map(|r| {
            (
                r.group.as_deref(),
                r.cost_usd,
                r.input_tokens,
                r.output_tokens,
                r.cached_input_tokens,
                r.cache_creation_input_tokens,
                r.calls,
                r.failed_calls,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some("gk_b"), 3.0, 7, 14, 1, 2, 1, 0),
            (Some("gk_a"), 1.5, 15, 30, 2, 4, 1, 1),
        ]
    );
    s.close().await;
}

/// `usage`: events without the grouped field form their own group (`None`), sorted after
/// named groups of equal cost.
pub async fn usage_puts_events_without_the_field_in_a_none_group(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    for e in [
        call_of(
            1,
            10,
            LLM_CALL_COMPLETED,
            &usage_payload("gk_a", Some("al"), "m1", 1.0, 1),
        ),
        call_of(
            2,
            11,
            LLM_CALL_COMPLETED,
            &usage_payload("gk_b", None, "m1", 2.0, 1),
        ),
        call_of(
            3,
            12,
            LLM_CALL_COMPLETED,
            &usage_payload("gk_c", None, "m1", 2.0, 1),
        ),
        call_of(
            4,
            13,
            LLM_CALL_COMPLETED,
            &usage_payload("gk_d", Some("bo"), "m1", 4.0, 1),
        ),
    ] {
        s.sink.emit(e);
    }
    s.sink.flush().await.expect("flush");
    let by_user = s
        .query
        .usage(0, 100, UsageGroup::User, None)
        .await
        .expect("usage");
    let got: Vec<(Option<&str>, f64, u64)> = by_user
        .iter()
        .map(|r| (r.group.as_deref(), r.cost_usd, r.calls))
        .collect();
    assert_eq!(
        got,
        vec![(Some("bo"), 4.0, 1), (None, 4.0, 2), (Some("al"), 1.0, 1)]
    );
    s.close().await;
}

/// `usage` with a filter counts only events whose filtered field equals the value.
pub async fn usage_filter_restricts_to_one_value(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    for e in [
        call_of(
            1,
            10,
            LLM_CALL_COMPLETED,
            &usage_payload("gk_a", None, "m1", 1.0, 1),
        ),
        call_of(
            2,
            11,
            LLM_CALL_COMPLETED,
            &usage_payload("gk_a", None, "m2", 5.0, 1),
        ),
        call_of(
            3,
            12,
            LLM_CALL_COMPLETED,
            &usage_payload("gk_b", None, "m1", 3.0, 1),
        ),
    ] {
        s.sink.emit(e);
    }
    s.sink.flush().await.expect("flush");
    let rows = s
        .query
        .usage(
            0,
            50,
            UsageGroup::Key,
            Some((UsageGroup::Model, "m1".into())),
        )
        .await
        .expect("usage");
    let got: Vec<(Option<String>, f64)> = rows.into_iter().map(|r| (r.group, r.cost_usd)).collect();
    assert_eq!(
        got,
        vec![(Some("gk_b".into()), 3.0), (Some("gk_a".into()), 1.0)]
    );
    s.close().await;
}

/// `audit_events`: audit events in `[since, until)`, ordered by id; other types never.
pub async fn audit_events_are_a_half_open_window_ordered_by_id(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    // Emitted out of id order; timestamps independent of ids.
    for (n, ts) in [(5u64, 100i64), (2, 150), (9, 199), (1, 200), (3, 99)] {
        s.sink.emit(audit(n, ts));
    }
    s.sink.emit(call(4, 120, "gk", 1.0));
    s.sink.flush().await.expect("flush");
    let rows = s.query.audit_events(100, 200, &[]).await.expect("audit");
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec![event_id(2), event_id(5), event_id(9)]);
    s.close().await;
}

/// `audit_events` with types: only the listed types that are audit types (a list without any
/// audit type reads nothing).
pub async fn audit_events_filter_by_type(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    s.sink.emit(event(
        &event_id(1),
        1,
        GATEWAY_KEY_REVOKED,
        &json!({"key_id": "gk_1"}),
    ));
    s.sink
        .emit(event(&event_id(2), 2, QUOTA_ALERT, &json!({"ratio": 0.9})));
    s.sink.emit(event(
        &event_id(3),
        3,
        GATEWAY_AUTH_FAILED,
        &json!({"reason": "x"}),
    ));
    s.sink.emit(call(4, 4, "gk", 1.0));
    s.sink.flush().await.expect("flush");
    let rows = s
        .query
        .audit_events(0, 10, &[QUOTA_ALERT.into(), GATEWAY_KEY_REVOKED.into()])
        .await
        .expect("audit");
    let types: Vec<&str> = rows.iter().map(|r| r.event_type.as_str()).collect();
    assert_eq!(types, vec![GATEWAY_KEY_REVOKED, QUOTA_ALERT]);
    let none = s
        .query
        .audit_events(0, 10, &[LLM_CALL_COMPLETED.into()])
        .await
        .expect("audit");
    assert!(none.is_empty(), "{none:?}");
    s.close().await;
}

/// Spend is exact under concurrency: call events emitted from many tasks at once are all
/// written and `spend_by_key` / `usage` add every one of them (the reservations the gateway
/// rebuilds at start come from this sum).
pub async fn concurrent_call_events_all_count_in_spend(b: &dyn Backend) {
    let s = b.open(None).await.expect("open");
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let sink = Arc::clone(&s.sink);
        tasks.push(tokio::spawn(async move {
            for i in 0..250u64 {
                let n = t * 1_000 + i;
                sink.emit(call(n, 500 + n as i64, "gk_shared", 0.01));
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    s.sink.flush().await.expect("flush");
    let spend = s.query.spend_by_key(0, 0).await.expect("spend");
    assert_eq!(spend.len(), 1);
    assert!((spend[0].day_usd - 20.0).abs() < 1e-6, "{spend:?}");
    assert!((spend[0].month_usd - 20.0).abs() < 1e-6, "{spend:?}");
    assert_eq!(stored_calls(s.query.as_ref()).await, 2_000);
    s.close().await;
}
