//! Gateway traffic as the trace sees it, for filling a trace database to a realistic size
//! (`bench-trace fill-traffic`): the events each request writes, attributed to several keys,
//! users and teams, with client-named sessions, failed calls and audit events mixed in.
//!
//! Per request, as the gateway writes them (`app/usecases/src/gateway/call.rs`, `recorder.rs`):
//! `route.decided`, `llm.call_started`, then `llm.call_completed` + `turn.completed` +
//! `pattern.recorded` (the pattern projection is on), or, for 3% of the requests,
//! `llm.call_failed` + `turn.completed`. Alongside: one `gateway.auth_failed` per 400
//! requests, one `gateway.rate_limited` per 1,000 and one `quota.alert` per 5,000 (audit
//! events; the writer chains them). Keys: `keys` of them, every fifth without a user and
//! every seventh without a team. One request in five belongs to a client-named session
//! (`ws-<key>-<n>`, about 50 turns each); the rest are their own `gw_` session. Event ids are
//! ULIDs of the event's own time, as the gateway's are.

use std::time::{Duration, UNIX_EPOCH};

use metis_domain::events::{
    AuthFailed, CallIdentity, Event, LlmCallCompleted, LlmCallFailed, LlmCallStarted, QuotaAlert,
    RateLimited, RouteChainEntry, RouteDecided, TurnCompleted, make_event,
};
use metis_domain::patterns::{FingerprintInputs, PatternRecorded, StructuralFeatures};

const MODELS: [(&str, &str); 3] = [
    ("openai:gpt-5", "openai"),
    ("anthropic:claude-sonnet-4-5", "anthropic"),
    ("openai:gpt-5-mini", "openai"),
];

/// The shape of the generated traffic.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub keys: u32,
    /// Time of the first request (µs) and the gap between requests.
    pub start_us: i64,
    pub step_us: i64,
}

/// Generates the events of consecutive requests.
pub struct Traffic {
    mix: Mix,
    ids: ulid::Generator,
    next: u64,
}

/// A small deterministic hash (splitmix64), so the mix is the same on every run.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Traffic {
    #[must_use]
    pub fn new(mix: Mix) -> Self {
        Self {
            mix,
            ids: ulid::Generator::new(),
            next: 0,
        }
    }

    /// A ULID of time `us` (monotonic while time does not go back).
    fn id(&mut self, us: i64) -> String {
        let at = UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0));
        self.ids
            .generate_from_datetime(at)
            .unwrap_or_else(|_| ulid::Ulid::from_datetime(at))
            .to_string()
    }

    /// The events of the next `requests` requests, appended to `out`.
    pub fn requests(&mut self, requests: u64, out: &mut Vec<Event>) {
        for _ in 0..requests {
            self.request(out);
        }
    }

    #[allow(clippy::too_many_lines, reason = "one request's events, in order")]
    fn request(&mut self, out: &mut Vec<Event>) {
        let i = self.next;
        self.next += 1;
        let h = mix64(i);
        let now = self.mix.start_us + i64::try_from(i).unwrap_or(0) * self.mix.step_us;
        let k = u32::try_from(h % u64::from(self.mix.keys.max(1))).unwrap_or(0);
        let key = format!("gk_01JKEY{k:018}");
        let identity = CallIdentity {
            gateway_key_id: Some(key.clone()),
            inbound_shape: Some(if h & 1 == 0 { "openai" } else { "anthropic" }),
            user_id: (k % 5 != 0).then(|| format!("user-{}", k % 25)),
            team_id: (k % 7 != 0).then(|| format!("team-{}", k % 8)),
            parent_session_id: None,
        };
        // Audit events come from admission, before (and instead of some) calls.
        if i % 400 == 399 {
            let id = self.id(now);
            out.push(make_event(
                id.clone(),
                now,
                &format!("gw_{id}"),
                None,
                None,
                &AuthFailed {
                    reason: "invalid_token",
                    inbound_shape: "openai",
                    token_hash_prefix: Some(format!("{:08x}", h & 0xffff_ffff)),
                    gateway_key_id: None,
                    suppressed: 0,
                },
            ));
        }
        if i % 1000 == 999 {
            let id = self.id(now);
            out.push(make_event(
                id.clone(),
                now,
                &format!("gw_{id}"),
                None,
                None,
                &RateLimited {
                    scope: "key",
                    rpm: 60,
                    tpm: None,
                    retry_after_seconds: 1,
                    inbound_shape: "openai",
                    token_hash_prefix: Some(format!("{:08x}", h >> 32)),
                    client_ip: None,
                    suppressed: 3,
                },
            ));
        }
        if i % 5000 == 4999 {
            let id = self.id(now);
            out.push(make_event(
                id.clone(),
                now,
                &format!("gw_{id}"),
                None,
                None,
                &QuotaAlert {
                    scope: "key_daily",
                    severity: "warning",
                    current_usd: "8.10".into(),
                    limit_usd: "10.00".into(),
                    percentage: 81.0,
                    gateway_key_id: Some(key.clone()),
                    user_id: identity.user_id.clone(),
                    team_id: identity.team_id.clone(),
                    level_percent: 80,
                    account: key.clone(),
                },
            ));
        }

        let (model, provider) = MODELS[usize::try_from((h >> 8) % 3).unwrap_or(0)];
        let route_id = self.id(now);
        let session = if (h >> 16).is_multiple_of(5) {
            format!("ws-{k}-{}", i / 250)
        } else {
            format!("gw_{route_id}")
        };
        let turn = format!("gt_{}", self.id(now));
        out.push(make_event(
            route_id.clone(),
            now,
            &session,
            Some(&turn),
            None,
            &RouteDecided {
                chosen_model: model.into(),
                winner_index: 0,
                elapsed_ms: 0.004,
                chain: vec![RouteChainEntry {
                    policy: "client_model",
                    verdict: "chose",
                    reason: "model requested by the client".into(),
                    candidate_model: Some(model.into()),
                    deployment: None,
                }],
                requested_model: model.split_once(':').map_or(model, |(_, m)| m).into(),
            },
        ));
        let input = 200 + (h >> 24) % 4000;
        let output = 20 + (h >> 36) % 800;
        let started_id = self.id(now + 40);
        out.push(make_event(
            started_id.clone(),
            now + 40,
            &session,
            Some(&turn),
            Some(&route_id),
            &LlmCallStarted {
                model: model.into(),
                provider: provider.into(),
                estimated_input_tokens: input,
                request_id: self.id(now + 40),
                is_worker: false,
                stream: h & 2 == 0,
            },
        ));
        let latency_ms = 300 + (h >> 44) % 3000;
        let end = now + i64::try_from(latency_ms).unwrap_or(0) * 1000;
        #[allow(clippy::cast_precision_loss, reason = "token counts are small")]
        let cost = (input as f64 * 1.25 + output as f64 * 10.0) / 1e6;
        let failed = (h >> 52) % 100 < 3;
        let outcome_id = self.id(end);
        if failed {
            out.push(make_event(
                outcome_id.clone(),
                end,
                &session,
                Some(&turn),
                Some(&started_id),
                &LlmCallFailed {
                    model: model.into(),
                    provider: provider.into(),
                    error_class: "upstream_5xx",
                    error_message_redacted: "HTTP 503 overloaded_error".into(),
                    retry_count: 1,
                    latency_ms,
                    input_tokens: 0,
                    output_tokens: 0,
                    cached_input_tokens: 0,
                    cache_creation_input_tokens: 0,
                    cost_usd: 0.0,
                    pricing_version: "builtin-2026-05".into(),
                    usage_estimated: false,
                    identity: identity.clone(),
                },
            ));
        } else {
            out.push(make_event(
                outcome_id.clone(),
                end,
                &session,
                Some(&turn),
                Some(&started_id),
                &LlmCallCompleted {
                    model: model.into(),
                    provider: provider.into(),
                    input_tokens: input,
                    output_tokens: output,
                    cached_input_tokens: 0,
                    cache_creation_input_tokens: 0,
                    cost_usd: cost,
                    pricing_version: "builtin-2026-05".into(),
                    latency_ms,
                    stop_reason: "end_turn".into(),
                    produced_tool_calls: 0,
                    produced_thinking_blocks: 0,
                    retry_count: 0,
                    identity: identity.clone(),
                },
            ));
        }
        let turn_id = self.id(end + 1);
        out.push(make_event(
            turn_id.clone(),
            end + 1,
            &session,
            Some(&turn),
            Some(&outcome_id),
            &TurnCompleted {
                stop_reason: if failed { "error" } else { "end_turn" }.into(),
                llm_call_count: 1,
                tool_call_count: 0,
                total_input_tokens: input,
                total_output_tokens: output,
                total_cost_usd: if failed { 0.0 } else { cost },
                wall_time_seconds: 0.5,
                identity,
            },
        ));
        if !failed {
            let workspace = format!("/srv/ws-{}", k % 12);
            let tools = if h & 4 == 0 {
                vec!["read_file".to_owned(), "search".to_owned()]
            } else {
                Vec::new()
            };
            let features = StructuralFeatures::compute(&FingerprintInputs {
                user_text: "please fix the failing test in the parser",
                workspace_path: &workspace,
                estimated_input_tokens: input,
                tool_names: &tools,
                ..FingerprintInputs::default()
            });
            #[allow(clippy::cast_precision_loss, reason = "latency in ms is small")]
            let payload = PatternRecorded::new(
                features,
                &workspace,
                model,
                cost,
                latency_ms as f64,
                Some("builtin-2026-05"),
            );
            let id = self.id(end + 2);
            out.push(make_event(
                id,
                end + 2,
                &session,
                Some(&turn),
                Some(&turn_id),
                &payload,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_requests_have_the_documented_mix() {
        let mut t = Traffic::new(Mix {
            keys: 40,
            start_us: 1_750_000_000_000_000,
            step_us: 1_000,
        });
        let mut ev = Vec::new();
        t.requests(1000, &mut ev);
        let n = |ty: &str| ev.iter().filter(|e| e.event_type == ty).count();
        assert_eq!(n("route.decided"), 1000);
        assert_eq!(n("llm.call_started"), 1000);
        assert_eq!(n("turn.completed"), 1000);
        assert_eq!(n("llm.call_completed") + n("llm.call_failed"), 1000);
        assert_eq!(n("pattern.recorded"), n("llm.call_completed"));
        assert!(n("llm.call_failed") > 5 && n("llm.call_failed") < 70);
        assert_eq!(n("gateway.auth_failed"), 2);
        assert_eq!(n("gateway.rate_limited"), 1);
        let mut ids: Vec<&str> = ev.iter().map(|e| e.id.as_str()).collect();
        let sorted = {
            let mut s = ids.clone();
            s.sort_unstable();
            s
        };
        assert_eq!(ids, sorted, "ids in emit order");
        ids.dedup();
        assert_eq!(ids.len(), ev.len());
        let keys: std::collections::BTreeSet<String> = ev
            .iter()
            .filter(|e| e.event_type == "llm.call_completed")
            .filter_map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.payload_json)
                    .ok()?
                    .get("gateway_key_id")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert!(keys.len() > 30, "{}", keys.len());
    }
}
