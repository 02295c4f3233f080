//! The request pipeline (SPEC §3.2): authenticate, parse, resolve the model, check the key's
//! allow-list, call the upstream, render in the inbound shape, cost-stamp and record events.

use crate::keys::KeyRing;
use crate::limits::Limiter;
use crate::patterns::PatternBatcher;
use crate::recorder::{CallRecorder, InflightGuard, PatternHook, SessionHook};
use crate::spend::{Caps, SpendLedger};
use crate::stream::{StreamState, client_stream};
use crate::wire::{self, Passthrough, StreamParser, StreamRenderer, shape_of};
use async_trait::async_trait;
use bytes::Bytes;
use gw_domain::canonical::{ChatRequest, Role};
use gw_domain::canonical::{ContentBlock, Shape};
use gw_domain::error::{ErrorClass, GatewayError};
use gw_domain::events::{
    AuthFailed, CallIdentity, KeyLeakSuspected, LlmCallStarted, Payload, QuotaAlert, QuotaExceeded,
    RateLimited, RouteChainEntry, RouteDecided, make_event,
};
use gw_domain::keys::{Inactive, KeyRecord, hash_token};
use gw_domain::models::Catalog;
use gw_domain::patterns::{FingerprintInputs, StructuralFeatures};
use gw_domain::pricing::PriceTable;
use gw_domain::sessions::parse_session_headers;
use gw_domain::sse::SseParser;
use gw_ports::gateway::{Admission, GatewayService, InboundMeta, Reply};
use gw_ports::metrics::{Metrics, ScrapeGauges};
use gw_ports::patterns::PatternStore;
use gw_ports::sessions::SessionStore;
use gw_ports::system::Background;
use gw_ports::system::{Clock, IdSource, TraceContext};
use gw_ports::trace::EventSink;
use gw_ports::upstream::{Provider, UpstreamBody, UpstreamError, UpstreamRequest};
use serde_json::json;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::Instrument;

/// The wired gateway core.
pub struct GatewayCore {
    pub keys: Arc<KeyRing>,
    sink: Arc<dyn EventSink>,
    providers: BTreeMap<String, Arc<dyn Provider>>,
    catalog: Catalog,
    prices: PriceTable,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
    limiter: Arc<Limiter>,
    ledger: Arc<SpendLedger>,
    metrics: Arc<dyn Metrics>,
    trace: Arc<dyn TraceContext>,
    sessions: Arc<dyn SessionStore>,
    patterns: Arc<PatternBatcher>,
    auth_sampler: AuthFailSampler,
    quota_sampler: Mutex<std::collections::HashMap<String, (i64, u64)>>,
    draining: AtomicBool,
    warned_unpriced: Mutex<HashSet<String>>,
}

/// Construction parameters of [`GatewayCore`].
pub struct CoreParts {
    pub keys: Arc<KeyRing>,
    pub sink: Arc<dyn EventSink>,
    pub providers: Vec<Arc<dyn Provider>>,
    pub catalog: Catalog,
    pub prices: PriceTable,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
    pub limiter: Arc<Limiter>,
    pub ledger: Arc<SpendLedger>,
    pub metrics: Arc<dyn Metrics>,
    pub trace: Arc<dyn TraceContext>,
    pub sessions: Arc<dyn SessionStore>,
    pub patterns: Arc<dyn PatternStore>,
    pub background: Arc<dyn Background>,
}

impl GatewayCore {
    #[must_use]
    pub fn new(parts: CoreParts) -> Self {
        GatewayCore {
            keys: parts.keys,
            sink: parts.sink,
            providers: parts
                .providers
                .into_iter()
                .map(|p| (p.name().to_owned(), p))
                .collect(),
            catalog: parts.catalog,
            prices: parts.prices,
            clock: parts.clock,
            ids: parts.ids,
            limiter: parts.limiter,
            ledger: parts.ledger,
            metrics: parts.metrics,
            trace: parts.trace,
            sessions: parts.sessions,
            patterns: PatternBatcher::new(parts.patterns, parts.background),
            auth_sampler: AuthFailSampler::default(),
            quota_sampler: Mutex::new(std::collections::HashMap::new()),
            draining: AtomicBool::new(false),
            warned_unpriced: Mutex::new(HashSet::new()),
        }
    }

    /// Names of the registered providers.
    #[must_use]
    pub fn provider_names(&self) -> Vec<String> {
        self.providers.keys().cloned().collect()
    }

    fn is_live(&self, provider: &str) -> bool {
        self.providers.contains_key(provider)
    }

    fn emit<P: Payload>(
        &self,
        session: &str,
        turn: Option<&str>,
        parent: Option<&str>,
        payload: &P,
    ) -> String {
        let id = self.ids.ulid();
        self.sink.emit(make_event(
            id.clone(),
            self.clock.now_us(),
            session,
            turn,
            parent,
            payload,
        ));
        id
    }

    fn auth_failed(
        &self,
        reason: &'static str,
        shape: Shape,
        token: Option<&str>,
        key: Option<&str>,
    ) {
        self.metrics.auth_failure(reason);
        let (emit_this, summary) = self.auth_sampler.admit(self.clock.now_us());
        if let Some(suppressed) = summary {
            self.auth_failed_summary(shape, suppressed);
        }
        if !emit_this {
            return;
        }
        let session = format!("gw_{}", self.ids.ulid());
        let payload = AuthFailed {
            reason,
            inbound_shape: shape.as_str(),
            token_hash_prefix: token.map(gw_domain::keys::token_fingerprint),
            gateway_key_id: key.map(str::to_owned),
            suppressed: 0,
        };
        self.emit(&session, None, None, &payload);
    }

    /// One event standing for `suppressed` failures beyond the sampling budget.
    fn auth_failed_summary(&self, shape: Shape, suppressed: u64) {
        let session = format!("gw_{}", self.ids.ulid());
        let payload = AuthFailed {
            reason: "aggregated",
            inbound_shape: shape.as_str(),
            token_hash_prefix: None,
            gateway_key_id: None,
            suppressed,
        };
        self.emit(&session, None, None, &payload);
    }

    fn quota_events(
        &self,
        key: &KeyRecord,
        shape: Shape,
        alerts: &[crate::spend::Alert],
        exceeded: Option<&crate::spend::Exceeded>,
    ) {
        let session = format!("gw_{}", self.ids.ulid());
        for a in alerts {
            let payload = QuotaAlert {
                scope: a.scope,
                severity: a.severity,
                current_usd: usd(a.current_usd),
                limit_usd: usd(a.limit_usd),
                percentage: (a.ratio * 10_000.0).round() / 100.0,
                gateway_key_id: Some(key.key_id.clone()),
                user_id: key.user_id.clone(),
                team_id: key.team_id.clone(),
            };
            self.emit(&session, None, None, &payload);
        }
        let Some(e) = exceeded else { return };
        // At most one event per account per 10 s; the rest are counted into the next one.
        let now_s = self.clock.now_us() / 1_000_000;
        let suppressed = {
            let mut m = match self.quota_sampler.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let entry = m.entry(key.account().to_owned()).or_insert((i64::MIN, 0));
            if now_s.saturating_sub(entry.0) < 10 {
                entry.1 += 1;
                return;
            }
            entry.0 = now_s;
            std::mem::take(&mut entry.1)
        };
        let payload = QuotaExceeded {
            scope: e.scope,
            current_usd: usd(e.current_usd),
            limit_usd: usd(e.limit_usd),
            inbound_shape: shape.as_str(),
            gateway_key_id: Some(key.key_id.clone()),
            user_id: key.user_id.clone(),
            team_id: key.team_id.clone(),
            suppressed,
        };
        self.emit(&session, None, None, &payload);
    }

    fn rate_limited(
        &self,
        d: crate::limits::Denied,
        shape: Shape,
        token: Option<&str>,
        ip: Option<std::net::IpAddr>,
    ) {
        let key_fp = token.map(gw_domain::keys::token_fingerprint);
        match d.scope {
            "per_key" => tracing::warn!(
                "rate-limit deny bucket=per_key rpm={} retry_after={}s shape={} key_fp={}",
                d.rpm,
                d.retry_after_secs,
                shape.as_str(),
                key_fp.as_deref().unwrap_or("-")
            ),
            _ => tracing::warn!(
                "rate-limit deny bucket=per_ip rpm={} retry_after={}s shape={} ip={}",
                d.rpm,
                d.retry_after_secs,
                shape.as_str(),
                ip.map_or_else(|| "-".to_owned(), |i| i.to_string())
            ),
        }
        if let Some(suppressed) = self.limiter.sample_denial() {
            let session = format!("gw_{}", self.ids.ulid());
            let payload = RateLimited {
                scope: d.scope,
                rpm: d.rpm,
                retry_after_seconds: d.retry_after_secs,
                inbound_shape: shape.as_str(),
                token_hash_prefix: (d.scope == "per_key").then_some(key_fp).flatten(),
                client_ip: ip.map(|i| i.to_string()),
                suppressed,
            };
            self.emit(&session, None, None, &payload);
        }
    }

    fn price_of(&self, model: &str) -> Option<gw_domain::pricing::Price> {
        let price = self.prices.get(model).copied();
        if price.is_none() {
            let mut warned = match self.warned_unpriced.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if warned.insert(model.to_owned()) {
                tracing::warn!(
                    model,
                    pricing_version = %self.prices.version,
                    "no price for model; its calls are recorded at cost 0 (add it to the config file's [prices])"
                );
            }
        }
        price
    }
}

/// Output tokens assumed for the cost reservation when the request sets no `max_tokens`.
const DEFAULT_MAX_TOKENS_ESTIMATE: u64 = 4096;

/// Individual `gateway.auth_failed` events allowed per second; beyond that failures are
/// counted and folded into one `reason: "aggregated"` event (bounded growth under
/// credential stuffing).
const AUTH_FAILED_EVENTS_PER_SEC: u64 = 20;

#[derive(Debug, Default)]
struct AuthFailSampler {
    state: Mutex<(i64, u64, u64)>, // (second, emitted this second, suppressed this second)
}

impl AuthFailSampler {
    /// Whether to write this failure individually, and a summary count to write first when
    /// a new second began after suppressions.
    fn admit(&self, now_us: i64) -> (bool, Option<u64>) {
        let sec = now_us / 1_000_000;
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut summary = None;
        if st.0 != sec {
            if st.2 > 0 {
                summary = Some(st.2);
            }
            *st = (sec, 0, 0);
        }
        if st.1 < AUTH_FAILED_EVENTS_PER_SEC {
            st.1 += 1;
            (true, summary)
        } else {
            st.2 += 1;
            (false, summary)
        }
    }

    /// Suppressed failures not yet written (for the shutdown flush).
    fn take_pending(&self) -> u64 {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::mem::take(&mut st.2)
    }
}

/// USD amount as a decimal string (up to 6 places, at least 2).
fn usd(x: f64) -> String {
    let s = format!("{x:.6}");
    let trimmed = s.trim_end_matches('0');
    let decimals = trimmed.split_once('.').map_or(0, |(_, d)| d.len());
    if decimals < 2 {
        format!("{x:.2}")
    } else {
        trimmed.to_owned()
    }
}

fn quota_error(e: &crate::spend::Exceeded) -> GatewayError {
    GatewayError::QuotaExceeded {
        scope: e.scope,
        limit_usd: usd(e.limit_usd),
        current_usd: usd(e.current_usd),
    }
}

/// The structural fingerprint of a request (no raw text survives: only intent tags derived
/// from the last user message, tool names, flags and a token bucket).
fn fingerprint(req: &ChatRequest, workspace: &str) -> StructuralFeatures {
    let user_text = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| {
            m.content
                .iter()
                .filter_map(|b| match b {
                    ContentBlock::Text { text, .. } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let tool_names: Vec<String> = req.tools.iter().map(|t| t.name.clone()).collect();
    let has_tool_calls_in_history = req.messages.iter().any(|m| {
        m.content.iter().any(|b| {
            matches!(
                b,
                ContentBlock::ToolUse { .. } | ContentBlock::ToolResult { .. }
            )
        })
    });
    StructuralFeatures::compute(&FingerprintInputs {
        user_text: &user_text,
        workspace_path: workspace,
        estimated_input_tokens: req.estimate_input_tokens(),
        has_images: req.has_images(),
        has_tool_calls_in_history,
        tool_names: &tool_names,
        ..FingerprintInputs::default()
    })
}

fn upstream_error(err: &UpstreamError) -> (GatewayError, ErrorClass, String) {
    match err {
        UpstreamError::Status {
            provider,
            status,
            body,
            retry_after_secs,
            ..
        } => {
            let class = ErrorClass::classify_upstream(*status, body);
            let kind = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| {
                    let e = v.get("error")?;
                    e.get("type")
                        .or_else(|| e.get("code"))
                        .and_then(|t| t.as_str().map(str::to_owned))
                })
                .unwrap_or_else(|| "unknown".to_owned());
            let message = format!("upstream {provider} returned HTTP {status} ({kind})");
            (
                GatewayError::Upstream {
                    class,
                    provider: provider.clone(),
                    message: message.clone(),
                    retry_after_secs: *retry_after_secs,
                },
                class,
                message,
            )
        }
        UpstreamError::Network {
            provider, message, ..
        } => {
            let msg = format!("upstream {provider} unreachable: {message}");
            (
                GatewayError::Upstream {
                    class: ErrorClass::Network,
                    provider: provider.clone(),
                    message: msg.clone(),
                    retry_after_secs: None,
                },
                ErrorClass::Network,
                msg,
            )
        }
    }
}

#[async_trait]
impl GatewayService for GatewayCore {
    async fn admit(&self, meta: InboundMeta) -> Result<Admission, GatewayError> {
        let shape = meta.shape;
        let ip = self
            .limiter
            .client_ip(meta.peer_ip, meta.forwarded_for.as_deref());
        let hash = meta.token.as_deref().map(hash_token);
        let index = self.keys.snapshot();
        // Step 1 (before auth): rate limits. A key's own rpm overrides the default.
        let key_rpm = hash.as_ref().and_then(|h| index.get(h)).and_then(|k| k.rpm);
        let decision = self.limiter.check(hash.as_deref(), key_rpm, ip);
        if self.limiter.config.enabled {
            let key_checked = hash.is_some();
            let ip_checked = ip.is_some();
            match &decision {
                Ok(()) => {
                    if key_checked {
                        self.metrics.rate_limit("per_key", true);
                    }
                    if ip_checked {
                        self.metrics.rate_limit("per_ip", true);
                    }
                }
                Err(d) => {
                    if d.scope == "per_ip" && key_checked {
                        self.metrics.rate_limit("per_key", true);
                    }
                    self.metrics.rate_limit(d.scope, false);
                }
            }
        }
        if let Err(denied) = decision {
            self.rate_limited(denied, shape, meta.token.as_deref(), ip);
            return Err(GatewayError::RateLimited {
                scope: denied.scope,
                rpm: denied.rpm,
                retry_after_secs: denied.retry_after_secs,
            });
        }
        // Step 2: authentication.
        let (Some(token), Some(hash)) = (meta.token, hash) else {
            self.auth_failed("missing_token", shape, None, None);
            return Err(GatewayError::InvalidApiKey);
        };
        let Some(key) = index.get(&hash) else {
            self.auth_failed("invalid_token", shape, Some(&token), None);
            return Err(GatewayError::InvalidApiKey);
        };
        let now = self.clock.now_us();
        if let Err(inactive) = key.check_active(now) {
            self.auth_failed("key_revoked", shape, Some(&token), Some(&key.key_id));
            let revoked_at = match inactive {
                Inactive::Revoked { at } => at,
                Inactive::GraceLapsed { at } => Some(at),
            };
            return Err(GatewayError::KeyRevoked {
                key_id: key.key_id.clone(),
                revoked_at,
            });
        }
        let [sid, parent, tool_use, worker] = &meta.session_headers;
        let session = parse_session_headers(
            sid.as_deref(),
            parent.as_deref(),
            tool_use.as_deref(),
            worker.as_deref(),
        )
        .map_err(gw_domain::error::invalid)?;
        // Step 3: spend caps, before the body is read.
        let caps = Caps::of(key);
        if !caps.is_empty() {
            let (day, month, _) = self.ledger.snapshot(key.account(), now);
            for (scope, cap, spent) in [
                ("key_daily", caps.daily_usd, day),
                ("key_monthly", caps.monthly_usd, month),
            ] {
                if let Some(cap) = cap {
                    self.metrics.quota_ratio(&key.key_id, scope, spent / cap);
                }
            }
        }
        match self.ledger.check(key.account(), caps, now) {
            Ok(alerts) => {
                if !alerts.is_empty() {
                    self.quota_events(key, shape, &alerts, None);
                }
            }
            Err(e) => {
                self.quota_events(key, shape, &[], Some(&e));
                return Err(quota_error(&e));
            }
        }
        if let Some(signal) = self.limiter.observe_key_ip(&key.key_id, ip) {
            tracing::warn!(
                key_id = %key.key_id,
                distinct_ips = signal.distinct_ips,
                window_seconds = signal.window_seconds,
                "gateway key used from many client addresses; it may have leaked"
            );
            let session = format!("gw_{}", self.ids.ulid());
            let payload = KeyLeakSuspected {
                gateway_key_id: key.key_id.clone(),
                distinct_ips: signal.distinct_ips,
                window_seconds: signal.window_seconds,
                threshold: 10,
            };
            self.emit(&session, None, None, &payload);
        }
        Ok(Admission {
            shape,
            key: Arc::clone(key),
            received_at_us: now,
            traceparent: meta.traceparent,
            session,
        })
    }

    async fn handle(&self, admission: Admission, body: Bytes) -> Result<Reply, GatewayError> {
        let started = Instant::now();
        let shape = admission.shape;
        let key = &admission.key;
        let parsed = wire::parse_request(shape, &body)?;
        let req = parsed.request;
        // A client-named session groups the request's events; otherwise the request is its
        // own synthetic session (not stored in the sessions table).
        let session_id = match &admission.session {
            Some(link) => link.session_id.as_str().to_owned(),
            None => format!("gw_{}", self.ids.ulid()),
        };
        let turn_id = format!("gt_{}", self.ids.ulid());
        let identity = CallIdentity {
            gateway_key_id: Some(key.key_id.clone()),
            inbound_shape: Some(shape.as_str()),
            user_id: key.user_id.clone(),
            team_id: key.team_id.clone(),
            parent_session_id: admission
                .session
                .as_ref()
                .and_then(|l| l.parent_session_id.as_ref())
                .map(|p| p.as_str().to_owned()),
        };

        // Resolve the model; the decision is recorded whatever its outcome.
        let resolved = self.catalog.resolve(&req.model, &|p| self.is_live(p));
        let route = RouteDecided {
            chosen_model: resolved.as_ref().map(|e| e.id.clone()).unwrap_or_default(),
            winner_index: if resolved.is_ok() { 0 } else { -1 },
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
            chain: vec![RouteChainEntry {
                policy: "client_model",
                verdict: if resolved.is_ok() {
                    "chose"
                } else {
                    "rejected"
                },
                reason: match &resolved {
                    Ok(_) => "model requested by the client".to_owned(),
                    Err(e) => e.message(),
                },
                candidate_model: resolved.as_ref().ok().map(|e| e.id.clone()),
            }],
            requested_model: req.model.clone(),
        };
        let route_id = self.emit(&session_id, Some(&turn_id), None, &route);
        let entry = resolved?;
        let aliases = self.catalog.aliases_of(&entry.id);
        if !key.allows_model(&entry.id, &aliases) {
            return Err(GatewayError::ModelNotAllowed {
                model: req.model.clone(),
                key_id: key.key_id.clone(),
            });
        }
        let Some(provider) = self.providers.get(&entry.provider).cloned() else {
            return Err(GatewayError::Internal);
        };
        let wire_shape = shape_of(provider.wire());
        let same_shape = wire_shape == shape;
        let upstream_json = if same_shape {
            wire::passthrough_request(wire_shape, parsed.raw, &entry.upstream_name)
        } else {
            wire::render_request(wire_shape, &req, &entry.upstream_name)?
        };
        let upstream_body = serde_json::to_vec(&upstream_json).map_err(|e| {
            tracing::error!(error = %e, "could not serialise the upstream request");
            GatewayError::Internal
        })?;

        // Reserve the worst-case cost against the key's caps (atomic with the check), so
        // concurrent requests cannot overshoot a cap by more than one request's worth.
        let price = self.price_of(&entry.id);
        let estimated_input = req.estimate_input_tokens();
        let estimate = price.map_or(0.0, |p| {
            p.cost(&gw_domain::canonical::Usage {
                input_tokens: estimated_input,
                output_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS_ESTIMATE),
                ..Default::default()
            })
        });
        let reservation =
            match self
                .ledger
                .reserve(key.account(), Caps::of(key), estimate, self.clock.now_us())
            {
                Ok((r, alerts)) => {
                    if !alerts.is_empty() {
                        self.quota_events(key, shape, &alerts, None);
                    }
                    r
                }
                Err(e) => {
                    self.quota_events(key, shape, &[], Some(&e));
                    return Err(quota_error(&e));
                }
            };

        let request_id = self.ids.ulid();
        let call_started = LlmCallStarted {
            model: entry.id.clone(),
            provider: entry.provider.clone(),
            estimated_input_tokens: estimated_input,
            request_id: request_id.clone(),
            is_worker: admission.session.as_ref().is_some_and(|l| l.is_worker),
            stream: req.stream,
        };
        let started_id = self.emit(&session_id, Some(&turn_id), Some(&route_id), &call_started);
        // One span per call with the GenAI semantic-convention attributes; it lives in the
        // recorder so streams close it when they end. Usage is recorded on completion.
        // Spans exist only when they are exported: building them costs per request.
        let exporting = self.trace.exporting();
        let call_span = if !exporting {
            tracing::Span::none()
        } else {
            tracing::info_span!(
            "gen_ai.chat",
            otel.name = %format!("chat {}", entry.upstream_name),
            otel.kind = "client",
            gen_ai.operation.name = "chat",
            gen_ai.system = %entry.provider,
            gen_ai.request.model = %entry.upstream_name,
            gen_ai.response.model = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            metis.gateway_key_id = %key.key_id,
            metis.inbound_shape = shape.as_str(),
            metis.stream = req.stream,
            )
        };
        let upstream_span = if !exporting {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                parent: &call_span,
                "upstream",
                otel.name = %format!("POST {}", entry.provider),
                otel.kind = "client",
                gen_ai.system = %entry.provider,
                metis.retries = tracing::field::Empty,
            )
        };
        let traceparent = {
            let _in_upstream = upstream_span.enter();
            self.trace
                .current_traceparent()
                .or_else(|| admission.traceparent.clone())
        };
        let mut recorder = CallRecorder {
            span: call_span,
            pattern: Some(PatternHook {
                batcher: Arc::clone(&self.patterns),
                features: fingerprint(&req, &key.workspace_path),
                workspace: key.workspace_path.clone(),
            }),
            session: admission.session.clone().map(|link| SessionHook {
                store: Arc::clone(&self.sessions),
                link,
                workspace: key.workspace_path.clone(),
            }),
            sink: Arc::clone(&self.sink),
            ids: Arc::clone(&self.ids),
            clock: Arc::clone(&self.clock),
            session_id,
            turn_id,
            started_event_id: started_id,
            model: entry.id.clone(),
            provider: entry.provider.clone(),
            identity,
            price,
            reservation: Some(reservation),
            metrics: Arc::clone(&self.metrics),
            inflight: InflightGuard::new(Arc::clone(&self.metrics)),
            pricing_version: self.prices.version.clone(),
            started,
            usage: Default::default(),
            stop_reason: None,
            tool_calls: 0,
            thinking_blocks: 0,
            retries: 0,
            finished: false,
            estimated_input_tokens: estimated_input,
            relayed_chars: 0,
            stream_started: false,
            usage_estimated: false,
        };

        let reply = provider
            .send(UpstreamRequest {
                body: Bytes::from(upstream_body),
                stream: req.stream,
                request_id,
                traceparent,
            })
            .instrument(upstream_span.clone())
            .await;
        upstream_span.record(
            "metis.retries",
            match &reply {
                Ok(r) => r.retries,
                Err(e) => e.retries(),
            },
        );
        drop(upstream_span);
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                recorder.retries = e.retries();
                let (client_err, class, message) = upstream_error(&e);
                recorder.fail(class, &message);
                return Err(client_err);
            }
        };
        recorder.retries = reply.retries;
        let response_id = self.ids.ulid();
        let created = self.clock.now_us() / 1_000_000;

        match reply.body {
            UpstreamBody::Full(bytes) => {
                let rendered = if same_shape {
                    wire::passthrough_response(wire_shape, &bytes, &req.model)
                } else {
                    wire::parse_response(wire_shape, &bytes).map(|resp| {
                        let v =
                            wire::render_response(shape, &resp, &req.model, &response_id, created);
                        (v, resp)
                    })
                };
                let (value, resp) = match rendered {
                    Ok(x) => x,
                    Err(msg) => {
                        let message = format!(
                            "upstream {} returned a body the gateway could not parse",
                            entry.provider
                        );
                        tracing::warn!(provider = %entry.provider, error = %msg, "unparseable upstream body");
                        recorder.fail(ErrorClass::Other, &message);
                        return Err(GatewayError::Upstream {
                            class: ErrorClass::Network,
                            provider: entry.provider.clone(),
                            message,
                            retry_after_secs: None,
                        });
                    }
                };
                recorder.usage = resp.usage;
                recorder.stop_reason = Some(resp.stop_reason);
                for block in &resp.content {
                    match block {
                        ContentBlock::ToolUse { .. } => recorder.tool_calls += 1,
                        ContentBlock::Thinking { .. } | ContentBlock::RedactedThinking { .. } => {
                            recorder.thinking_blocks += 1;
                        }
                        _ => {}
                    }
                }
                let out = serde_json::to_vec(&value).map_err(|_| GatewayError::Internal)?;
                recorder.complete();
                Ok(Reply::Json(Bytes::from(out)))
            }
            UpstreamBody::Stream(upstream) => {
                recorder.inflight.mark_stream();
                recorder.stream_started = true;
                let state = StreamState {
                    upstream,
                    sse: SseParser::default(),
                    parser: StreamParser::new(wire_shape),
                    renderer: StreamRenderer::new(
                        shape,
                        &response_id,
                        &req.model,
                        req.include_usage,
                        created,
                    ),
                    passthrough: same_shape
                        .then(|| Passthrough::new(shape, &req.model, req.include_usage)),
                    recorder,
                    pending: VecDeque::new(),
                    finished_upstream: false,
                    done: false,
                };
                Ok(Reply::Stream(client_stream(state)))
            }
        }
    }

    fn list_models(&self, admission: &Admission) -> Bytes {
        let live = |p: &str| self.is_live(p);
        let mut data = Vec::new();
        for entry in self.catalog.live_models(&live) {
            let aliases = self.catalog.aliases_of(&entry.id);
            if !admission.key.allows_model(&entry.id, &aliases) {
                continue;
            }
            let owned_by = if entry.provider == "mock" {
                "mock (test double)"
            } else {
                entry.provider.as_str()
            };
            data.push(
                json!({"id": entry.id, "object": "model", "created": 0, "owned_by": owned_by}),
            );
            for a in aliases {
                data.push(json!({"id": a, "object": "model", "created": 0, "owned_by": owned_by, "alias_of": entry.id}));
            }
        }
        Bytes::from(json!({"object": "list", "data": data}).to_string())
    }

    fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining".to_owned());
        }
        if !self.sink.is_writable() {
            return Err("trace store is not writable".to_owned());
        }
        Ok(())
    }

    fn metrics_text(&self) -> String {
        let stats = self.sink.stats();
        let now = self.clock.now_us();
        let index = self.keys.snapshot();
        let (active, revoked) = index.count_by_state(now);
        self.metrics.render(&ScrapeGauges {
            trace_queue_depth: stats.queued,
            trace_events_written: stats.written,
            trace_events_overflowed: stats.overflowed,
            trace_events_failed: stats.failed,
            keys_active: active,
            keys_revoked: revoked,
            wal_bytes: self.sink.wal_bytes(),
            trace_commit_lag: stats.commit_lag,
        })
    }

    fn record_http(&self, route: &str, method: &str, status: u16, shape: &str, seconds: f64) {
        self.metrics
            .http_request(route, method, status, shape, seconds);
    }

    fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
        let pending = self.auth_sampler.take_pending();
        if pending > 0 {
            self.auth_failed_summary(Shape::OpenAi, pending);
        }
    }
}
