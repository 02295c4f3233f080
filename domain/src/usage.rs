//! Spend and usage roll-ups over call events, once for every store that cannot push them down
//! to its engine: the groups, the lenient reading of payload fields, the windows and the order
//! of the answer. (The SQLite adapter computes the same in SQL, served by its indexes; the
//! storage contract suite proves both agree.)
//!
//! Invariants:
//! - Only `llm.call_completed` and `llm.call_failed` count; windows are half-open
//!   (`since <= timestamp_us < until`).
//! - A payload value of an unexpected JSON type is coerced (numbers and booleans to text for
//!   group keys, missing numbers to 0), never an error: one odd row cannot break a roll-up.
//! - Spend is ordered by key; usage by cost descending, then group (`None` last).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::events::types::{LLM_CALL_COMPLETED, LLM_CALL_FAILED};
use crate::time::Timestamp;

/// Spend of one key in the current windows (USD, from `cost_usd` of
/// `llm.call_completed` and `llm.call_failed`), one row per user and team tag the calls
/// recorded: a key moved to another team keeps its earlier spend in the team it was in.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpend {
    pub gateway_key_id: String,
    /// The `user_id` the calls recorded (`None`: none).
    pub user_id: Option<String>,
    /// The `team_id` the calls recorded.
    pub team_id: Option<String>,
    /// Spend since the start of the current UTC day.
    pub day_usd: f64,
    /// Spend since the start of the current UTC month.
    pub month_usd: f64,
}

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Key,
    User,
    Team,
    Model,
}

impl UsageGroup {
    /// The payload field the group reads.
    #[must_use]
    pub fn field(self) -> &'static str {
        match self {
            UsageGroup::Key => "gateway_key_id",
            UsageGroup::User => "user_id",
            UsageGroup::Team => "team_id",
            UsageGroup::Model => "model",
        }
    }
}

/// One usage rollup row.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    /// The group value (`None` = events without that field).
    pub group: Option<String>,
    pub cost_usd: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub calls: u64,
    pub failed_calls: u64,
}

/// Whether `event_type` is a call event (the spend and usage sources).
#[must_use]
pub fn is_call(event_type: &str) -> bool {
    event_type == LLM_CALL_COMPLETED || event_type == LLM_CALL_FAILED
}

/// A payload field as group text: strings as they are, numbers and booleans as text, `None`
/// for a missing or null field (what SQL `json_extract` gives).
#[must_use]
pub fn text_of(payload: &Value, field: &str) -> Option<String> {
    match payload.get(field)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(if *b { "1".into() } else { "0".into() }),
        other => Some(other.to_string()),
    }
}

/// A payload field as a number (numeric strings parsed, anything else 0).
#[must_use]
pub fn number_of(payload: &Value, field: &str) -> f64 {
    match payload.get(field) {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// A payload field as a token count (positive numbers truncated, anything else 0).
#[must_use]
pub fn count_of(payload: &Value, field: &str) -> u64 {
    match payload.get(field) {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f > 0.0).map(|f| f as u64))
            .unwrap_or(0),
        _ => 0,
    }
}

fn parse(payload_json: &str) -> Value {
    serde_json::from_str(payload_json).unwrap_or(Value::Null)
}

/// (key, recorded user, recorded team).
type SpendKey = (String, Option<String>, Option<String>);

/// Spend per key and recorded tags since the day start and since the month start; feed it
/// every event from [`SpendRollup::from`] on (others are ignored).
#[derive(Debug, Clone)]
pub struct SpendRollup {
    day_start_us: Timestamp,
    month_start_us: Timestamp,
    by_key: BTreeMap<SpendKey, (f64, f64)>,
}

impl SpendRollup {
    #[must_use]
    pub fn new(day_start_us: Timestamp, month_start_us: Timestamp) -> Self {
        Self {
            day_start_us,
            month_start_us,
            by_key: BTreeMap::new(),
        }
    }

    /// The earliest timestamp that can count.
    #[must_use]
    pub fn from(&self) -> Timestamp {
        self.day_start_us.min(self.month_start_us)
    }

    /// Count one stored event.
    pub fn add(&mut self, timestamp_us: Timestamp, event_type: &str, payload_json: &str) {
        if !is_call(event_type) || timestamp_us < self.from() {
            return;
        }
        let p = parse(payload_json);
        // Calls without a key are not any key's spend.
        let Some(key) = text_of(&p, "gateway_key_id") else {
            return;
        };
        let cost = number_of(&p, "cost_usd");
        let tags = (text_of(&p, "user_id"), text_of(&p, "team_id"));
        let e = self
            .by_key
            .entry((key, tags.0, tags.1))
            .or_insert((0.0, 0.0));
        if timestamp_us >= self.day_start_us {
            e.0 += cost;
        }
        if timestamp_us >= self.month_start_us {
            e.1 += cost;
        }
    }

    /// The spend of every key and recorded tags seen, ordered by key, user, team (absent
    /// first).
    #[must_use]
    pub fn finish(self) -> Vec<KeySpend> {
        self.by_key
            .into_iter()
            .map(
                |((gateway_key_id, user_id, team_id), (day_usd, month_usd))| KeySpend {
                    gateway_key_id,
                    user_id,
                    team_id,
                    day_usd,
                    month_usd,
                },
            )
            .collect()
    }
}

/// Cost, tokens and call counts of the call events in `[since, until)`, grouped, optionally
/// filtered to one value of a group field.
#[derive(Debug, Clone)]
pub struct UsageRollup {
    since_us: Timestamp,
    until_us: Timestamp,
    group: UsageGroup,
    filter: Option<(UsageGroup, String)>,
    groups: BTreeMap<Option<String>, UsageRow>,
}

impl UsageRollup {
    #[must_use]
    pub fn new(
        since_us: Timestamp,
        until_us: Timestamp,
        group: UsageGroup,
        filter: Option<(UsageGroup, &str)>,
    ) -> Self {
        Self {
            since_us,
            until_us,
            group,
            filter: filter.map(|(g, v)| (g, v.to_owned())),
            groups: BTreeMap::new(),
        }
    }

    /// Count one stored event.
    pub fn add(&mut self, timestamp_us: Timestamp, event_type: &str, payload_json: &str) {
        if !is_call(event_type) || timestamp_us < self.since_us || timestamp_us >= self.until_us {
            return;
        }
        let p = parse(payload_json);
        if let Some((f, value)) = &self.filter {
            // `json_extract(..) = ?` matches only a JSON string equal to the value.
            if p.get(f.field()).and_then(Value::as_str) != Some(value.as_str()) {
                return;
            }
        }
        let g = text_of(&p, self.group.field());
        let r = self.groups.entry(g.clone()).or_insert_with(|| UsageRow {
            group: g,
            cost_usd: 0.0,
            input_tokens: 0,
            output_tokens: 0,
            cached_input_tokens: 0,
            cache_creation_input_tokens: 0,
            calls: 0,
            failed_calls: 0,
        });
        r.cost_usd += number_of(&p, "cost_usd");
        r.input_tokens += count_of(&p, "input_tokens");
        r.output_tokens += count_of(&p, "output_tokens");
        r.cached_input_tokens += count_of(&p, "cached_input_tokens");
        r.cache_creation_input_tokens += count_of(&p, "cache_creation_input_tokens");
        if event_type == LLM_CALL_COMPLETED {
            r.calls += 1;
        } else {
            r.failed_calls += 1;
        }
    }

    /// The groups, by cost descending, then group (`None` last).
    #[must_use]
    pub fn finish(self) -> Vec<UsageRow> {
        let mut out: Vec<UsageRow> = self.groups.into_values().collect();
        out.sort_by(|a, b| {
            b.cost_usd
                .total_cmp(&a.cost_usd)
                .then_with(|| a.group.is_none().cmp(&b.group.is_none()))
                .then_with(|| a.group.cmp(&b.group))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_only_calls_in_the_window_and_orders_by_cost() {
        let mut u = UsageRollup::new(10, 20, UsageGroup::Model, Some((UsageGroup::Key, "k")));
        let call = |m: &str, cost: f64| {
            format!(r#"{{"gateway_key_id":"k","model":"{m}","cost_usd":{cost},"input_tokens":3}}"#)
        };
        u.add(10, LLM_CALL_COMPLETED, &call("a", 1.0));
        u.add(15, LLM_CALL_FAILED, &call("b", 2.0));
        u.add(
            19,
            LLM_CALL_COMPLETED,
            r#"{"gateway_key_id":"k","cost_usd":"0.5"}"#,
        );
        u.add(20, LLM_CALL_COMPLETED, &call("a", 9.0));
        u.add(12, "route.decided", &call("a", 9.0));
        u.add(
            12,
            LLM_CALL_COMPLETED,
            r#"{"gateway_key_id":"other","cost_usd":9}"#,
        );
        let rows = u.finish();
        let groups: Vec<_> = rows.iter().map(|r| r.group.as_deref()).collect();
        assert_eq!(groups, [Some("b"), Some("a"), None]);
        assert_eq!((rows[0].calls, rows[0].failed_calls), (0, 1));
        assert_eq!(rows[1].input_tokens, 3);
        assert!((rows[2].cost_usd - 0.5).abs() < 1e-12);
    }

    #[test]
    fn spend_splits_day_and_month_and_skips_keyless_calls() {
        let mut s = SpendRollup::new(100, 50);
        assert_eq!(s.from(), 50);
        s.add(
            60,
            LLM_CALL_COMPLETED,
            r#"{"gateway_key_id":"k","cost_usd":1}"#,
        );
        s.add(
            120,
            LLM_CALL_FAILED,
            r#"{"gateway_key_id":"k","cost_usd":2}"#,
        );
        s.add(120, LLM_CALL_COMPLETED, r#"{"cost_usd":5}"#);
        s.add(
            40,
            LLM_CALL_COMPLETED,
            r#"{"gateway_key_id":"k","cost_usd":7}"#,
        );
        let out = s.finish();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].day_usd, out[0].month_usd), (2.0, 3.0));
    }
}
