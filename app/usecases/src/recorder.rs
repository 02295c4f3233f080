//! Records the outcome of one upstream call as trace events.
//!
//! Invariant: every call that emitted `llm.call_started` ends with exactly one of
//! `llm.call_completed` / `llm.call_failed`, followed by `turn.completed` — including calls
//! whose future or stream is dropped because the client went away (the `Drop` impl records
//! `error_class: "cancelled"` with the usage consumed so far).

use crate::patterns::PatternBatcher;
use crate::spend::SpendHold;
use crate::token_limits::TpmHold;
use metis_domain::canonical::{BlockDelta, BlockStart, StopReason, StreamEvent, Usage};
use metis_domain::error::ErrorClass;
use metis_domain::events::{
    CallIdentity, LlmCallCompleted, LlmCallFailed, Payload, TurnCompleted, make_event,
};
use metis_domain::patterns::{PatternRecorded, StructuralFeatures};
use metis_domain::pricing::Price;
use metis_domain::sessions::{SessionLink, SessionTurn};
use metis_ports::metrics::{Attribution, CallLabels, Metrics};
use metis_ports::sessions::SessionStore;
use metis_ports::system::{Clock, IdSource};
use metis_ports::trace::EventSink;
use std::sync::Arc;
use std::time::Instant;

/// Everything needed to write the call's closing events.
/// Where a client-named session's turn is recorded when the call ends.
pub(crate) struct SessionHook {
    pub store: Arc<dyn SessionStore>,
    pub link: SessionLink,
    pub workspace: String,
}

/// Where a completed turn's pattern observation goes.
pub(crate) struct PatternHook {
    pub batcher: Arc<PatternBatcher>,
    pub features: StructuralFeatures,
    pub workspace: String,
}

pub(crate) struct CallRecorder {
    pub session: Option<SessionHook>,
    pub pattern: Option<PatternHook>,
    /// The call's tracing span (GenAI attributes), closed when the recorder drops.
    pub span: tracing::Span,
    pub sink: Arc<dyn EventSink>,
    pub ids: Arc<dyn IdSource>,
    pub clock: Arc<dyn Clock>,
    pub session_id: String,
    pub turn_id: String,
    pub started_event_id: String,
    pub model: String,
    pub provider: String,
    /// The GenAI operation (`chat`, `embeddings`).
    pub operation: &'static str,
    pub identity: CallIdentity,
    pub price: Option<Price>,
    /// The call's hold on its key's spend caps, settled with the actual cost.
    pub reservation: Option<SpendHold>,
    /// The call's token estimate on its key's, user's and team's token limits, settled to
    /// the actual input + output tokens.
    pub tpm: Option<TpmHold>,
    /// The route deployment serving the call, held (outstanding count, probe slot) until the
    /// call ends.
    pub deployment: Option<crate::routing::Ticket>,
    pub metrics: Arc<dyn Metrics>,
    /// Counts the request as in flight until the recorder (or its stream) is dropped.
    pub inflight: InflightGuard,
    pub pricing_version: String,
    pub started: Instant,
    /// Usage observed so far (streams update it as frames arrive).
    pub usage: Usage,
    pub stop_reason: Option<StopReason>,
    pub tool_calls: u64,
    pub thinking_blocks: u64,
    pub retries: u32,
    pub finished: bool,
    /// The gateway's own input-size estimate, charged when a call dies without reporting
    /// usage (cancelled, or a stream cut before its usage frame).
    pub estimated_input_tokens: u64,
    /// Characters of content relayed to the client so far (streams).
    pub relayed_chars: u64,
    /// The upstream accepted the call and started answering (a 2xx stream head).
    pub stream_started: bool,
    /// The usage of a failed call is the gateway's estimate, not the upstream's report.
    pub usage_estimated: bool,
}

impl CallRecorder {
    /// Fold a canonical stream event into the running totals.
    pub fn observe(&mut self, ev: &StreamEvent) {
        match ev {
            StreamEvent::Start { usage, .. } | StreamEvent::Usage(usage) => {
                self.usage = self.usage.max(*usage);
            }
            StreamEvent::BlockStart { block, .. } => match block {
                BlockStart::ToolUse { .. } => self.tool_calls += 1,
                BlockStart::Thinking | BlockStart::RedactedThinking { .. } => {
                    self.thinking_blocks += 1;
                }
                BlockStart::Text => {}
            },
            StreamEvent::Finish { stop_reason, .. } => self.stop_reason = Some(*stop_reason),
            StreamEvent::Delta { delta, .. } => {
                let n = match delta {
                    BlockDelta::Text(t)
                    | BlockDelta::Thinking(t)
                    | BlockDelta::ToolInputJson(t) => t.chars().count(),
                    BlockDelta::Signature(_) => 0,
                };
                // The first content of any kind (text, thinking, tool input) is the time to
                // first token the client sees.
                if self.relayed_chars == 0 && n > 0 {
                    self.metrics
                        .first_token(&self.labels(), self.started.elapsed().as_secs_f64());
                }
                self.relayed_chars += n as u64;
            }
            StreamEvent::BlockStop { .. } => {}
        }
    }

    /// The call's identity for metrics.
    pub fn labels(&self) -> CallLabels<'_> {
        CallLabels {
            operation: self.operation,
            provider: &self.provider,
            model: &self.model,
        }
    }

    fn cost(&self) -> f64 {
        self.price.map_or(0.0, |p| p.cost(&self.usage))
    }

    fn latency_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn emit<P: Payload>(&self, parent: Option<&str>, payload: &P) -> String {
        let id = self.ids.ulid();
        let ev = make_event(
            id.clone(),
            self.clock.now_us(),
            &self.session_id,
            Some(&self.turn_id),
            parent,
            payload,
        );
        self.sink.emit(ev);
        id
    }

    fn settle(&mut self) {
        let cost = self.cost();
        // Recorded as i64: OpenTelemetry attributes have no unsigned integers.
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.span
            .record("gen_ai.usage.input_tokens", int(self.usage.total_input()))
            .record("gen_ai.usage.output_tokens", int(self.usage.output_tokens))
            .record(
                "gen_ai.response.model",
                self.model
                    .split_once(':')
                    .map_or(self.model.as_str(), |(_, m)| m),
            );
        if let Some(key) = &self.identity.gateway_key_id {
            let who = Attribution {
                key_id: key,
                user_id: self.identity.user_id.as_deref(),
                team_id: self.identity.team_id.as_deref(),
            };
            self.metrics.usage(&self.labels(), &who, &self.usage, cost);
        }
        let now = self.clock.now_us();
        if let Some(r) = self.reservation.as_mut() {
            r.settle(cost, now);
        }
        if let Some(t) = self.tpm.as_mut() {
            t.settle(
                self.usage
                    .total_input()
                    .saturating_add(self.usage.output_tokens),
            );
        }
        if let Some(hook) = &self.session {
            let turn = SessionTurn::new(&hook.link, &hook.workspace, Some(&self.model), cost, now);
            if let Err(e) = hook.store.record_turn(turn) {
                tracing::warn!(error = %e, session = %hook.link.session_id.as_str(), "session turn not recorded");
            }
        }
    }

    /// Record the turn in the workspace's pattern projection: the `pattern.recorded` event
    /// carries everything `metis patterns rebuild` needs, and the store applies the same
    /// payload at the event's own timestamp, so a rebuild reproduces the live store.
    fn record_pattern(&mut self, turn_event: &str) {
        let Some(hook) = self.pattern.take() else {
            return;
        };
        #[expect(clippy::cast_precision_loss, reason = "latency in ms fits f64 exactly")]
        let latency_ms = self.latency_ms() as f64;
        let payload = PatternRecorded::new(
            hook.features,
            &hook.workspace,
            &self.model,
            self.cost(),
            latency_ms,
            Some(&self.pricing_version),
        );
        let at = self.clock.now_us();
        let record = match payload.to_record(at) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "pattern observation not recorded");
                return;
            }
        };
        self.sink.emit(make_event(
            self.ids.ulid(),
            at,
            &self.session_id,
            Some(&self.turn_id),
            Some(turn_event),
            &payload,
        ));
        hook.batcher.submit(hook.workspace, record);
    }

    fn turn_completed(&self, stop_reason: &str, parent: &str) -> String {
        let turn = TurnCompleted {
            stop_reason: stop_reason.to_owned(),
            llm_call_count: 1,
            tool_call_count: self.tool_calls,
            total_input_tokens: self.usage.total_input(),
            total_output_tokens: self.usage.output_tokens,
            total_cost_usd: self.cost(),
            wall_time_seconds: self.started.elapsed().as_secs_f64(),
            identity: self.identity.clone(),
        };
        self.emit(Some(parent), &turn)
    }

    /// Record a successful call.
    pub fn complete(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.settle();
        self.metrics
            .upstream_call(&self.labels(), "ok", self.started.elapsed().as_secs_f64());
        let stop = self
            .stop_reason
            .unwrap_or(StopReason::EndTurn)
            .as_anthropic();
        let done = LlmCallCompleted {
            model: self.model.clone(),
            provider: self.provider.clone(),
            input_tokens: self.usage.input_tokens,
            output_tokens: self.usage.output_tokens,
            cached_input_tokens: self.usage.cache_read_tokens,
            cache_creation_input_tokens: self.usage.cache_write_tokens,
            cost_usd: self.cost(),
            pricing_version: self.pricing_version.clone(),
            latency_ms: self.latency_ms(),
            stop_reason: stop.to_owned(),
            produced_tool_calls: self.tool_calls,
            produced_thinking_blocks: self.thinking_blocks,
            retry_count: self.retries,
            identity: self.identity.clone(),
        };
        let started = self.started_event_id.clone();
        let id = self.emit(Some(&started), &done);
        let turn = self.turn_completed(stop, &id);
        self.record_pattern(&turn);
    }

    /// Record a failed call; `message` must not contain upstream free text or prompt text.
    pub fn fail(&mut self, class: ErrorClass, message: &str) {
        if self.finished {
            return;
        }
        self.finished = true;
        // A call that died after the upstream started work consumed tokens even when no
        // usage frame arrived (OpenAI-wire streams report usage only at the end): charge the
        // gateway's estimate — the prompt, plus what was relayed — so hanging up before the
        // last frame cannot dodge a spend cap.
        let consumed = class == ErrorClass::Cancelled || self.stream_started;
        if consumed && self.usage == Usage::default() {
            self.usage_estimated = true;
            self.usage.input_tokens = self.estimated_input_tokens;
            self.usage.output_tokens = self.relayed_chars.div_ceil(4);
        }
        self.settle();
        self.metrics.upstream_call(
            &self.labels(),
            class.as_str(),
            self.started.elapsed().as_secs_f64(),
        );
        let failed = LlmCallFailed {
            model: self.model.clone(),
            provider: self.provider.clone(),
            error_class: class.as_str(),
            error_message_redacted: message.to_owned(),
            retry_count: self.retries,
            latency_ms: self.latency_ms(),
            input_tokens: self.usage.input_tokens,
            output_tokens: self.usage.output_tokens,
            cached_input_tokens: self.usage.cache_read_tokens,
            cache_creation_input_tokens: self.usage.cache_write_tokens,
            cost_usd: self.cost(),
            pricing_version: self.pricing_version.clone(),
            usage_estimated: self.usage_estimated,
            identity: self.identity.clone(),
        };
        let started = self.started_event_id.clone();
        let id = self.emit(Some(&started), &failed);
        let stop = if class == ErrorClass::Cancelled {
            "cancelled"
        } else {
            "error"
        };
        let _ = self.turn_completed(stop, &id);
    }
}

/// Counts one request (or stream) in flight for as long as it lives.
pub(crate) struct InflightGuard {
    metrics: Arc<dyn Metrics>,
    stream: bool,
}

impl InflightGuard {
    pub fn new(metrics: Arc<dyn Metrics>) -> Self {
        metrics.inflight(1);
        InflightGuard {
            metrics,
            stream: false,
        }
    }

    /// The request became a client stream.
    pub fn mark_stream(&mut self) {
        if !self.stream {
            self.stream = true;
            self.metrics.streams(1);
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.metrics.inflight(-1);
        if self.stream {
            self.metrics.streams(-1);
        }
    }
}

impl Drop for CallRecorder {
    fn drop(&mut self) {
        if !self.finished {
            self.fail(
                ErrorClass::Cancelled,
                "client disconnected before the call completed",
            );
        }
    }
}
