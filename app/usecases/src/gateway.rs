//! The request pipeline (SPEC §3.2): authenticate, parse, resolve the model, check the key's
//! allow-list, call the upstream, render in the inbound shape, cost-stamp and record events.

use crate::keys::KeyRing;
use crate::limits::Limiter;
use crate::patterns::PatternBatcher;
use crate::spend::SpendGuard;
use crate::stream::{StreamState, client_stream};
use crate::wire::{self, Passthrough, RenderCtx, StreamParser, StreamRenderer};
use async_trait::async_trait;
use bytes::Bytes;
use metis_domain::canonical::{ChatRequest, Role};
use metis_domain::canonical::{ContentBlock, Shape};
use metis_domain::error::{ErrorClass, GatewayError};
use metis_domain::events::{KeyLeakSuspected, Payload, make_event};
use metis_domain::keys::{Inactive, hash_token};
use metis_domain::models::Catalog;
use metis_domain::models::ListedModel;
use metis_domain::patterns::{FingerprintInputs, StructuralFeatures};
use metis_domain::pricing::PriceTable;
use metis_domain::responses::ResponseContext;
use metis_domain::sessions::parse_session_headers;
use metis_domain::sse::SseParser;
use metis_ports::gateway::{
    Admission, GatewayService, InboundMeta, ModelsQuery, Reply, TokenCount,
};
use metis_ports::metrics::{Metrics, ScrapeGauges};
use metis_ports::patterns::PatternStore;
use metis_ports::sessions::SessionStore;
use metis_ports::system::Background;
use metis_ports::system::{Clock, IdSource, TraceContext};
use metis_ports::tokens::TokenCounter;
use metis_ports::trace::EventSink;
use metis_ports::upstream::{Operation, Provider, UpstreamBody, UpstreamRequest, WireFormat};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

mod admission_events;
mod call;
mod chain;
mod counting;
mod embeddings;

use call::CallSpec;

use admission_events::AuthFailSampler;

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
    spend: Arc<SpendGuard>,
    metrics: Arc<dyn Metrics>,
    trace: Arc<dyn TraceContext>,
    sessions: Arc<dyn SessionStore>,
    patterns: Arc<PatternBatcher>,
    tokenizer: Arc<dyn TokenCounter>,
    auth_sampler: AuthFailSampler,
    quota_sampler: Mutex<std::collections::HashMap<String, (i64, u64)>>,
    draining: AtomicBool,
    warned_unpriced: Mutex<HashSet<String>>,
    /// The routes (aliases served by several deployments) and their live health.
    pub router: Arc<crate::routing::Router>,
    /// Where raised budget alerts go (webhooks); nowhere until [`GatewayCore::set_alerts`].
    alerts: std::sync::OnceLock<Arc<dyn metis_ports::alerts::AlertNotifier>>,
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
    /// Spend caps, over the spend admission the composition root chose.
    pub spend: Arc<SpendGuard>,
    pub metrics: Arc<dyn Metrics>,
    pub trace: Arc<dyn TraceContext>,
    pub sessions: Arc<dyn SessionStore>,
    pub patterns: Arc<dyn PatternStore>,
    pub background: Arc<dyn Background>,
    /// Counts tokens for `count_tokens` when the upstream cannot.
    pub tokenizer: Arc<dyn TokenCounter>,
    /// The routes ([`Router::empty`](crate::routing::Router::empty) for none).
    pub router: Arc<crate::routing::Router>,
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
            spend: parts.spend,
            metrics: parts.metrics,
            trace: parts.trace,
            sessions: parts.sessions,
            patterns: PatternBatcher::new(parts.patterns, parts.background),
            tokenizer: parts.tokenizer,
            router: parts.router,
            auth_sampler: AuthFailSampler::default(),
            quota_sampler: Mutex::new(std::collections::HashMap::new()),
            draining: AtomicBool::new(false),
            warned_unpriced: Mutex::new(HashSet::new()),
            alerts: std::sync::OnceLock::new(),
        }
    }

    /// Hand every raised budget alert to `alerts` (after it is recorded as `quota.alert`).
    /// Wiring, once: a second call is ignored.
    pub fn set_alerts(&self, alerts: Arc<dyn metis_ports::alerts::AlertNotifier>) {
        let _ = self.alerts.set(alerts);
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
        self.emit_as(self.ids.ulid(), session, turn, parent, payload)
    }

    /// [`emit`](Self::emit) under an id chosen earlier (a route's `route.decided`, which
    /// `llm.call_started` already names as its parent).
    fn emit_as<P: Payload>(
        &self,
        id: String,
        session: &str,
        turn: Option<&str>,
        parent: Option<&str>,
        payload: &P,
    ) -> String {
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

    /// An upstream request for `admission`: same-shape calls carry the client's provider
    /// headers and query string.
    #[allow(clippy::too_many_arguments)]
    fn upstream_request(
        admission: &Admission,
        request_id: String,
        traceparent: Option<String>,
        wire: WireFormat,
        op: Operation,
        model: &str,
        body: Bytes,
        stream: bool,
        same_shape: bool,
    ) -> UpstreamRequest {
        UpstreamRequest {
            model: model.to_owned(),
            max_retries: None,
            deadline: None,
            wire,
            op,
            body,
            stream,
            request_id,
            traceparent,
            headers: if same_shape {
                admission.forward_headers.clone()
            } else {
                Vec::new()
            },
            query: if same_shape {
                admission.query.clone()
            } else {
                None
            },
        }
    }

    fn price_of(&self, model: &str) -> Option<metis_domain::pricing::Price> {
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

    /// The model-call body for `target`: the client's own object with only the model
    /// replaced when the target speaks the client's shape, else a translation (Responses
    /// requests drop the OpenAI-hosted tools no other provider can run).
    fn generate_body(
        &self,
        shape: Shape,
        target: &call::Target,
        raw: serde_json::Map<String, serde_json::Value>,
        req: &mut ChatRequest,
    ) -> Result<call::Built, GatewayError> {
        let (wire_format, same_shape) = generate_wire(shape, &*target.provider);
        let model = &target.entry.upstream_name;
        let json = if same_shape {
            wire::passthrough_request(shape, raw, model)
        } else {
            if shape == Shape::Responses {
                let dropped = metis_domain::responses::prepare_for_translation(
                    req,
                    &raw,
                    &target.entry.provider,
                )?;
                if dropped > 0 {
                    tracing::debug!(
                        provider = %target.entry.provider,
                        dropped,
                        "OpenAI-hosted tools dropped from a translated Responses request"
                    );
                }
            }
            wire::render_request(wire_format, req, model)?
        };
        let body = serde_json::to_vec(&json).map_err(|e| {
            tracing::error!(error = %e, "could not serialise the upstream request");
            GatewayError::Internal
        })?;
        Ok(call::Built {
            body: Bytes::from(body),
            wire: wire_format,
            same_shape,
            op: Operation::Generate,
            stream: req.stream,
        })
    }
}

/// Output tokens assumed for the cost reservation when the request sets no `max_tokens`.
const DEFAULT_MAX_TOKENS_ESTIMATE: u64 = 4096;

/// The wire a model call goes out in, and whether that is the client's own shape (forwarded
/// with unknown fields, headers and error bodies intact) rather than a translation.
fn generate_wire(shape: Shape, provider: &dyn Provider) -> (WireFormat, bool) {
    let native = wire::wire_of(shape);
    if provider.supports(native, Operation::Generate) {
        (native, true)
    } else {
        (provider.wire(), false)
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
        let checked = self.limiter.check(hash.as_deref(), key_rpm, ip).await;
        if checked.key_store_unavailable {
            self.metrics.admission_outage("rate_limit", "local");
        }
        let decision = checked.result;
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
        let Some((key, budget, tpm)) = index.get_with_budget(&hash) else {
            self.auth_failed("invalid_token", shape, Some(&token), None);
            return Err(GatewayError::InvalidApiKey);
        };
        let now = self.clock.now_us();
        // `now` comes from the clock on every request, so an expiry takes effect at its instant
        // without any reload of the key ring.
        if let Err(inactive) = key.check_active(now) {
            let revoked_at = match inactive {
                Inactive::Revoked { at } => at,
                Inactive::GraceLapsed { at } => Some(at),
                Inactive::Expired { at } => {
                    self.auth_failed("key_expired", shape, Some(&token), Some(&key.key_id));
                    return Err(GatewayError::KeyExpired {
                        key_id: key.key_id.clone(),
                        expires_at: at,
                    });
                }
            };
            self.auth_failed("key_revoked", shape, Some(&token), Some(&key.key_id));
            return Err(GatewayError::KeyRevoked {
                key_id: key.key_id.clone(),
                revoked_at,
            });
        }
        let [sid, parent, tool_use, worker] = &meta.session_headers;
        // A coding agent's own session header stands in for ours when ours is absent, so each
        // Claude Code or Codex run is one session with its cost and turns.
        let sid = sid.as_deref().or_else(|| {
            meta.agent_session
                .as_deref()
                .map(str::trim)
                .filter(|s| metis_domain::sessions::is_valid_session_id(s))
        });
        let session = parse_session_headers(
            sid,
            parent.as_deref(),
            tool_use.as_deref(),
            worker.as_deref(),
        )
        .map_err(metis_domain::error::invalid)?;
        // Step 3: spend caps, before the body is read.
        match self.spend.check(budget, now).await {
            Ok(alerts) => {
                if !alerts.is_empty() {
                    self.quota_events(key, shape, &alerts, None);
                }
            }
            Err(refusal) => return Err(self.spend_refused(key, shape, &refusal)),
        }
        if let Some(signal) = self.limiter.observe_key_ip(&key.key_id, ip) {
            tracing::warn!(
                key_id = %key.key_id,
                distinct_ips = signal.distinct_ips,
                window_seconds = signal.window_seconds,
                "gateway key used from many client addresses; it may have leaked"
            );
            self.metrics.key_leak_suspected();
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
            budget: budget.clone(),
            tpm: tpm.clone(),
            received_at_us: now,
            traceparent: meta.traceparent,
            session,
            forward_headers: meta.forward_headers,
            query: meta.query,
            no_fallback: meta.no_fallback,
        })
    }

    async fn handle(&self, admission: Admission, body: Bytes) -> Result<Reply, GatewayError> {
        let started = Instant::now();
        let shape = admission.shape;
        let parsed = wire::parse_request(shape, &body)?;
        let mut req = parsed.request;
        let responses_ctx = if shape == Shape::Responses {
            ResponseContext::from_request(&req, &parsed.raw)
        } else {
            ResponseContext::default()
        };
        let routed = self.route(&admission, &req.model, started)?;
        // A route's fallbacks need the request again; a plain model's takes it as it is.
        let spare = (routed.targets.len() > 1).then(|| (parsed.raw.clone(), req.clone()));
        let first = self.generate_body(shape, &routed.targets[0], parsed.raw, &mut req)?;
        let estimated_input_tokens = req.estimate_input_tokens();
        let mut call = self
            .start_call(
                &admission,
                &routed,
                CallSpec {
                    operation: "chat",
                    stream: req.stream,
                    estimated_input_tokens,
                    max_output_tokens: req.max_tokens,
                    tpm: self.tpm_of(&admission, Some((&routed.entry.upstream_name, &req))),
                    features: Some(fingerprint(&req, &admission.key.workspace_path)),
                },
            )
            .await?;
        let tokens = estimated_input_tokens
            .saturating_add(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS_ESTIMATE));
        let build = |t: &call::Target| {
            let (raw, req) = spare.as_ref().ok_or(GatewayError::Internal)?;
            self.generate_body(shape, t, raw.clone(), &mut req.clone())
        };
        let answer = self
            .send_chain(&admission, &routed, &mut call, first, tokens, &build)
            .await?;
        let (reply, wire_format, same_shape) = (answer.reply, answer.wire, answer.same_shape);
        let mut recorder = call.recorder;
        let response_id = self.ids.ulid();
        let render = RenderCtx {
            client_model: &req.model,
            id: &response_id,
            created: self.clock.now_us() / 1_000_000,
            include_usage: req.include_usage,
            responses: &responses_ctx,
        };
        let provider_name = &answer.provider;

        match reply.body {
            UpstreamBody::Full(bytes) => {
                let rendered = if same_shape {
                    wire::passthrough_response(shape, &bytes, &req.model)
                } else {
                    wire::parse_response(wire_format, &bytes)
                        .map(|resp| (wire::render_response(shape, &resp, &render), resp))
                };
                let (value, resp) = match rendered {
                    Ok(x) => x,
                    Err(msg) => {
                        let message = format!(
                            "upstream {provider_name} returned a body the gateway could not parse"
                        );
                        tracing::warn!(provider = %provider_name, error = %msg, "unparseable upstream body");
                        recorder.fail(ErrorClass::Other, &message);
                        return Err(GatewayError::Upstream {
                            class: ErrorClass::Network,
                            provider: provider_name.clone(),
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
                    parser: StreamParser::new(wire_format),
                    renderer: StreamRenderer::new(shape, &render),
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

    fn models(&self, admission: &Admission, query: &ModelsQuery) -> Result<Bytes, GatewayError> {
        let index = self.keys.snapshot();
        let mut listing: Vec<ListedModel> = self
            .catalog
            .listing(&|p| self.is_live(p))
            .into_iter()
            .filter(|m| {
                let canonical = m.alias_of.as_deref().unwrap_or(&m.id);
                let aliases = self.catalog.aliases_of(canonical);
                index.allows_model(&admission.key, canonical, &aliases)
                    && self.router.get(&m.id).is_none()
            })
            .collect();
        // Routes are models to clients: listed under their alias (a route shadows a catalog
        // alias of the same name, as it does when resolving).
        for route in self.router.routes() {
            let Some(first) = route.deployments.first() else {
                continue;
            };
            if index.allows_model(&admission.key, &route.alias, &[]) {
                listing.push(ListedModel {
                    id: route.alias.clone(),
                    alias_of: None,
                    provider: first.spec.provider.clone(),
                    created: self.catalog.loaded_at(),
                    display_name: format!(
                        "{} (route over {} deployments)",
                        route.alias,
                        route.deployments.len()
                    ),
                });
            }
        }
        let anthropic = admission.shape == Shape::Anthropic;
        let body =
            match &query.id {
                Some(id) => {
                    let m = listing.iter().find(|m| &m.id == id).ok_or_else(|| {
                        GatewayError::NotFound {
                            path: format!("/v1/models/{id}"),
                        }
                    })?;
                    if anthropic {
                        metis_domain::models::anthropic_model(m)
                    } else {
                        metis_domain::models::openai_model(m)
                    }
                }
                None if anthropic => metis_domain::models::anthropic_list(&listing, &query.page)
                    .map_err(metis_domain::error::invalid)?,
                None => metis_domain::models::openai_list(&listing),
            };
        Ok(Bytes::from(body.to_string()))
    }

    async fn count_tokens(
        &self,
        admission: Admission,
        body: Bytes,
    ) -> Result<TokenCount, GatewayError> {
        self.count_input_tokens(admission, body).await
    }

    async fn embeddings(&self, admission: Admission, body: Bytes) -> Result<Bytes, GatewayError> {
        self.embed(admission, body).await
    }

    fn readiness(&self) -> Result<Option<String>, String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining".to_owned());
        }
        if !self.sink.is_writable() {
            if self.sink.is_shared() {
                let queued = self.sink.stats().queued;
                return Ok(Some(format!(
                    "the shared trace store is unreachable: serving the keys held in memory,                      {queued} events queued for when it is back (capped keys follow                      --spend-outage)"
                )));
            }
            return Err("trace store is not writable".to_owned());
        }
        // Ejected deployments do not make the replica unready (the others serve their routes,
        // and the probes need traffic), but the detail names them.
        Ok(self
            .router
            .ejected()
            .map(|e| format!("deployments not in rotation: {e}")))
    }

    fn metrics_text(&self) -> String {
        let stats = self.sink.stats();
        let now = self.clock.now_us();
        let index = self.keys.snapshot();
        let (active, revoked) = index.count_by_state(now);
        self.metrics.quota_ratios(&self.quota_ratios(&index, now));
        self.metrics.render(&ScrapeGauges {
            trace_queue_depth: stats.queued,
            trace_events_written: stats.written,
            trace_events_overflowed: stats.overflowed,
            trace_events_failed: stats.failed,
            keys_active: active,
            keys_revoked: revoked,
            wal_bytes: self.sink.wal_bytes(),
            db_bytes: self.sink.db_bytes(),
            trace_store_writable: self.sink.is_writable(),
            draining: self.draining.load(Ordering::Acquire),
            trace_commit_lag: stats.commit_lag,
            deployments: self.router.gauges(),
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
