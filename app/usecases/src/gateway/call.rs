//! The shared leg of every billed upstream call (chat, messages, responses, embeddings):
//! resolve the model and record `route.decided`, check the key's allow-list, reserve the
//! worst-case cost against its caps, record `llm.call_started`, send, and map failures.
//!
//! Each endpoint builds its own upstream body between [`GatewayCore::route`] and
//! [`GatewayCore::start_call`], so a body the gateway cannot translate is a 400 with only
//! `route.decided` recorded, as before any money was reserved.

use super::{DEFAULT_MAX_TOKENS_ESTIMATE, GatewayCore};
use crate::recorder::{CallRecorder, InflightGuard, PatternHook, SessionHook};
use crate::routing::{DeploymentState, Route};
use crate::token_limits::TpmHold;
use metis_domain::canonical::ChatRequest;
use metis_domain::error::{ErrorClass, GatewayError};
use metis_domain::events::{CallIdentity, LlmCallStarted, RouteChainEntry, RouteDecided};
use metis_domain::models::ModelEntry;
use metis_domain::patterns::StructuralFeatures;
use metis_domain::ratelimit::TpmLine;
use metis_ports::gateway::Admission;
use metis_ports::upstream::{Provider, UpstreamError, UpstreamReply, UpstreamRequest, WireFormat};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// One upstream a request may be sent to: a plain model's provider, or one deployment of a
/// route.
pub(super) struct Target {
    pub entry: ModelEntry,
    pub provider: Arc<dyn Provider>,
    pub deployment: Option<Arc<DeploymentState>>,
}

/// A request whose model resolved to a live provider (or a route) the key may use.
pub(super) struct Routed {
    /// The first target (the plain model's, or the first deployment the balancer chose).
    pub entry: ModelEntry,
    pub provider: Arc<dyn Provider>,
    /// Every target in the order they are tried (`targets[0]` is `entry`/`provider`).
    pub targets: Vec<Target>,
    /// The route the model named, if it named one; its `route.decided` is recorded when the
    /// chain is settled, under `route_id`.
    pub route: Option<Arc<Route>>,
    pub requested_model: String,
    pub session_id: String,
    pub turn_id: String,
    pub route_id: String,
    pub identity: CallIdentity,
    pub started: Instant,
}

/// Who asked for what, before the model is resolved.
pub(super) struct Origin {
    requested_model: String,
    session_id: String,
    turn_id: String,
    identity: CallIdentity,
    started: Instant,
}

/// An upstream body built for one target.
pub(super) struct Built {
    pub body: bytes::Bytes,
    /// The wire the body is in.
    pub wire: WireFormat,
    /// Whether that is the client's own shape (forwarded with the client's provider headers,
    /// errors relayed).
    pub same_shape: bool,
    pub op: metis_ports::upstream::Operation,
    pub stream: bool,
}

impl Built {
    /// The upstream request of this body for `target`, in `call`.
    pub(super) fn request(
        self,
        admission: &Admission,
        call: &StartedCall,
        target: &Target,
    ) -> (UpstreamRequest, WireFormat, bool) {
        let (wire, same_shape) = (self.wire, self.same_shape);
        let request = GatewayCore::upstream_request(
            admission,
            call.request_id.clone(),
            call.traceparent.clone(),
            wire,
            self.op,
            &target.entry.upstream_name,
            self.body,
            self.stream,
            same_shape,
        );
        (request, wire, same_shape)
    }
}

/// The answer of the target that answered.
pub(super) struct Answer {
    pub reply: UpstreamReply,
    pub wire: WireFormat,
    pub same_shape: bool,
    /// Its provider name (`entry.provider` of the target).
    pub provider: String,
}

/// What [`GatewayCore::start_call`] needs to know about the call.
pub(super) struct CallSpec {
    /// `chat` or `embeddings` (the GenAI operation name on the span).
    pub operation: &'static str,
    pub stream: bool,
    pub estimated_input_tokens: u64,
    /// Output tokens the reservation assumes (`None`: the default estimate).
    pub max_output_tokens: Option<u64>,
    /// The key's token limits (from [`GatewayCore::tpm_of`]): its lines, and the input
    /// tokens by the gateway's tokenizer when it knows the model (`None`:
    /// `estimated_input_tokens`, characters / 4). `None` for a key without token limits.
    pub tpm: Option<(Arc<[TpmLine]>, Option<u64>)>,
    /// The turn's structural fingerprint, for the pattern projection (chat calls only).
    pub features: Option<StructuralFeatures>,
}

/// A call being recorded: its recorder writes `llm.call_completed` or `llm.call_failed`.
pub(super) struct StartedCall {
    pub recorder: CallRecorder,
    pub request_id: String,
    pub traceparent: Option<String>,
    pub(super) upstream_span: tracing::Span,
}

impl GatewayCore {
    /// Resolve `model` (recording `route.decided` whatever the outcome) and check that the
    /// key may use it.
    ///
    /// # Errors
    /// `ModelNotFound`, `ModelNotAllowed`.
    pub(super) fn route(
        &self,
        admission: &Admission,
        model: &str,
        started: Instant,
    ) -> Result<Routed, GatewayError> {
        let key = &admission.key;
        // A client-named session groups the request's events; otherwise the request is its
        // own synthetic session (not stored in the sessions table).
        let session_id = match &admission.session {
            Some(link) => link.session_id.as_str().to_owned(),
            None => format!("gw_{}", self.ids.ulid()),
        };
        let turn_id = format!("gt_{}", self.ids.ulid());
        let identity = CallIdentity {
            gateway_key_id: Some(key.key_id.clone()),
            inbound_shape: Some(admission.shape.as_str()),
            user_id: key.user_id.clone(),
            team_id: key.team_id.clone(),
            parent_session_id: admission
                .session
                .as_ref()
                .and_then(|l| l.parent_session_id.as_ref())
                .map(|p| p.as_str().to_owned()),
        };
        let base = Origin {
            requested_model: model.to_owned(),
            session_id,
            turn_id,
            identity,
            started,
        };
        if let Some(route) = self.router.get(model.trim()) {
            return self.route_alias(admission, route, base);
        }
        let resolved = self.catalog.resolve(model, &|p| self.is_live(p));
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
                deployment: None,
            }],
            requested_model: model.to_owned(),
        };
        let route_id = self.emit(&base.session_id, Some(&base.turn_id), None, &route);
        let entry = resolved?;
        let aliases = self.catalog.aliases_of(&entry.id);
        if let Err(refusal) = self.keys.snapshot().check_model(key, &entry.id, &aliases) {
            return Err(model_not_allowed(model, key, refusal));
        }
        let Some(provider) = self.providers.get(&entry.provider).cloned() else {
            return Err(GatewayError::Internal);
        };
        Ok(Routed {
            targets: vec![Target {
                entry: entry.clone(),
                provider: Arc::clone(&provider),
                deployment: None,
            }],
            entry,
            provider,
            route: None,
            route_id,
            requested_model: base.requested_model,
            session_id: base.session_id,
            turn_id: base.turn_id,
            identity: base.identity,
            started: base.started,
        })
    }

    /// A model naming a route: the key must be allowed the alias; the balancer orders the
    /// deployments. `route.decided` waits until the chain is settled ([`Self::send_chain`]).
    fn route_alias(
        &self,
        admission: &Admission,
        route: Arc<Route>,
        base: Origin,
    ) -> Result<Routed, GatewayError> {
        let key = &admission.key;
        if let Err(refusal) = self.keys.snapshot().check_model(key, &route.alias, &[]) {
            let err = model_not_allowed(&base.requested_model, key, refusal);
            let decided = RouteDecided {
                chosen_model: String::new(),
                winner_index: -1,
                elapsed_ms: base.started.elapsed().as_secs_f64() * 1000.0,
                chain: vec![RouteChainEntry {
                    policy: "route",
                    verdict: "rejected",
                    reason: err.message(),
                    candidate_model: None,
                    deployment: None,
                }],
                requested_model: base.requested_model.clone(),
            };
            self.emit(&base.session_id, Some(&base.turn_id), None, &decided);
            return Err(err);
        }
        let targets: Vec<Target> = self
            .router
            .plan(&route)
            .into_iter()
            .map(|d| Target {
                entry: ModelEntry {
                    id: d.spec.canonical_id(),
                    provider: d.spec.provider.clone(),
                    upstream_name: d.spec.model.clone(),
                },
                provider: Arc::clone(&d.provider),
                deployment: Some(d),
            })
            .collect();
        let Some(first) = targets.first() else {
            return Err(GatewayError::Internal);
        };
        Ok(Routed {
            entry: first.entry.clone(),
            provider: Arc::clone(&first.provider),
            route: Some(route),
            route_id: self.ids.ulid(),
            targets,
            requested_model: base.requested_model,
            session_id: base.session_id,
            turn_id: base.turn_id,
            identity: base.identity,
            started: base.started,
        })
    }

    /// Reserve the call's worst-case cost against the key's caps (atomic with the check, so
    /// concurrent requests cannot overshoot a cap by more than one request's worth), record
    /// `llm.call_started` and open the call's spans.
    ///
    /// # Errors
    /// `QuotaExceeded` when the reservation does not fit; `SpendStoreUnavailable` when a
    /// shared spend store does not answer under `--spend-outage fail-closed`.
    pub(super) async fn start_call(
        &self,
        admission: &Admission,
        routed: &Routed,
        spec: CallSpec,
    ) -> Result<StartedCall, GatewayError> {
        let key = &admission.key;
        let entry = &routed.entry;
        // Token limits first: a 429 costs nothing to refuse, and a hold dropped below (a
        // refused spend reservation) gives its tokens back.
        let tpm = self.take_tokens(admission, &spec).await?;
        let price = self.price_of(&entry.id);
        let worst = metis_domain::canonical::Usage {
            input_tokens: spec.estimated_input_tokens,
            output_tokens: spec
                .max_output_tokens
                .unwrap_or(DEFAULT_MAX_TOKENS_ESTIMATE),
            ..Default::default()
        };
        // A route may be answered by any of its deployments: hold the dearest one's cost.
        let estimate = routed
            .targets
            .iter()
            .skip(1)
            .map(|t| self.price_of(&t.entry.id))
            .chain(std::iter::once(price))
            .map(|p| p.map_or(0.0, |p| p.cost(&worst)))
            .fold(0.0, f64::max);
        let reservation = match self
            .spend
            .reserve(&admission.budget, estimate, self.clock.now_us())
            .await
        {
            Ok((hold, alerts)) => {
                if !alerts.is_empty() {
                    self.quota_events(key, admission.shape, &alerts, None);
                }
                hold
            }
            Err(refusal) => return Err(self.spend_refused(key, admission.shape, &refusal)),
        };

        let request_id = self.ids.ulid();
        let call_started = LlmCallStarted {
            model: entry.id.clone(),
            provider: entry.provider.clone(),
            estimated_input_tokens: spec.estimated_input_tokens,
            request_id: request_id.clone(),
            is_worker: admission.session.as_ref().is_some_and(|l| l.is_worker),
            stream: spec.stream,
        };
        let started_id = self.emit(
            &routed.session_id,
            Some(&routed.turn_id),
            Some(&routed.route_id),
            &call_started,
        );
        // One span per call with the GenAI semantic-convention attributes; it lives in the
        // recorder so streams close it when they end. Usage is recorded on completion.
        // Spans exist only when they are exported: building them costs per request.
        let exporting = self.trace.exporting();
        let call_span = if exporting {
            tracing::info_span!(
                "gen_ai.call",
                otel.name = %format!("{} {}", spec.operation, entry.upstream_name),
                otel.kind = "client",
                gen_ai.operation.name = spec.operation,
                gen_ai.system = %entry.provider,
                gen_ai.request.model = %entry.upstream_name,
                gen_ai.response.model = tracing::field::Empty,
                gen_ai.usage.input_tokens = tracing::field::Empty,
                gen_ai.usage.output_tokens = tracing::field::Empty,
                metis.gateway_key_id = %key.key_id,
                metis.inbound_shape = admission.shape.as_str(),
                metis.stream = spec.stream,
            )
        } else {
            tracing::Span::none()
        };
        let upstream_span = if exporting {
            tracing::info_span!(
                parent: &call_span,
                "upstream",
                otel.name = %format!("POST {}", entry.provider),
                otel.kind = "client",
                gen_ai.system = %entry.provider,
                metis.retries = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let traceparent = {
            let _in_upstream = upstream_span.enter();
            self.trace
                .current_traceparent()
                .or_else(|| admission.traceparent.clone())
        };
        let recorder = CallRecorder {
            span: call_span,
            pattern: spec.features.map(|features| PatternHook {
                batcher: Arc::clone(&self.patterns),
                features,
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
            session_id: routed.session_id.clone(),
            turn_id: routed.turn_id.clone(),
            started_event_id: started_id,
            model: entry.id.clone(),
            provider: entry.provider.clone(),
            operation: spec.operation,
            identity: routed.identity.clone(),
            price,
            reservation: Some(reservation),
            tpm,
            deployment: None,
            metrics: Arc::clone(&self.metrics),
            inflight: InflightGuard::new(Arc::clone(&self.metrics)),
            pricing_version: self.prices.version.clone(),
            started: routed.started,
            usage: Default::default(),
            stop_reason: None,
            tool_calls: 0,
            thinking_blocks: 0,
            retries: 0,
            finished: false,
            estimated_input_tokens: spec.estimated_input_tokens,
            relayed_chars: 0,
            stream_started: false,
            usage_estimated: false,
        };
        Ok(StartedCall {
            recorder,
            request_id,
            traceparent,
            upstream_span,
        })
    }

    /// The key's token limits and, for them, the tokenizer's count of `req` (`None`, and
    /// nothing counted, for a key without token limits: most keys).
    pub(super) fn tpm_of(
        &self,
        admission: &Admission,
        tokenized: Option<(&str, &ChatRequest)>,
    ) -> Option<(Arc<[TpmLine]>, Option<u64>)> {
        let lines = Arc::clone(admission.tpm.as_ref()?);
        let counted = tokenized.and_then(|(model, req)| self.tokenizer.count(model, req));
        Some((lines, counted))
    }

    /// Take the call's token estimate (input + requested maximum output, or
    /// `--tpm-default-output-tokens`) from the key's, user's and team's buckets.
    ///
    /// # Errors
    /// `TokenRateLimited` naming the bucket that cannot cover it.
    async fn take_tokens(
        &self,
        admission: &Admission,
        spec: &CallSpec,
    ) -> Result<Option<TpmHold>, GatewayError> {
        let Some((lines, counted)) = &spec.tpm else {
            return Ok(None);
        };
        let input = counted.unwrap_or(spec.estimated_input_tokens);
        let output = spec
            .max_output_tokens
            .unwrap_or(self.limiter.config.tpm_default_output_tokens);
        let estimate = input.saturating_add(output);
        let taken = self.limiter.tokens.take(lines, estimate).await;
        if taken.store_unavailable {
            self.metrics.admission_outage("token_limit", "local");
        }
        match taken.result {
            Ok(hold) => {
                for line in lines.iter() {
                    self.metrics.rate_limit(line.scope_name(), true);
                }
                Ok(hold)
            }
            Err(d) => {
                self.metrics.rate_limit(d.scope, false);
                self.tokens_limited(d, estimate, admission.shape, &admission.key);
                Err(GatewayError::TokenRateLimited {
                    scope: d.scope,
                    tpm: d.tpm,
                    retry_after_secs: d.retry_after_secs,
                })
            }
        }
    }

    /// Send the call upstream. A failure is recorded on the call and mapped to the client's
    /// error: relayed unchanged when `relay` (same-shape traffic), else an envelope naming the
    /// provider, status and upstream error type.
    ///
    /// # Errors
    /// The upstream failure, as the client will see it.
    pub(super) async fn send(
        &self,
        provider: &dyn Provider,
        call: &mut StartedCall,
        request: UpstreamRequest,
        relay: bool,
    ) -> Result<UpstreamReply, GatewayError> {
        let span = call.upstream_span.clone();
        let reply = provider.send(request).instrument(span.clone()).await;
        span.record(
            "metis.retries",
            match &reply {
                Ok(r) => r.retries,
                Err(e) => e.retries(),
            },
        );
        call.upstream_span = tracing::Span::none();
        let retries = match &reply {
            Ok(r) => r.retries,
            Err(e) => e.retries(),
        };
        if retries > 0 {
            self.metrics
                .upstream_retries(&call.recorder.labels(), retries);
        }
        match reply {
            Ok(r) => {
                call.recorder.retries = r.retries;
                Ok(r)
            }
            Err(e) => {
                call.recorder.retries = e.retries();
                let (client_err, class, message) = upstream_error(&e, relay);
                call.recorder.fail(class, &message);
                Err(client_err)
            }
        }
    }
}

/// The client's error, the failure class and the trace message (never upstream free text)
/// of an upstream failure. With `relay`, an upstream JSON error body goes back unchanged.
pub(super) fn upstream_error(
    err: &UpstreamError,
    relay: bool,
) -> (GatewayError, ErrorClass, String) {
    match err {
        UpstreamError::Status {
            provider,
            status,
            body,
            retry_after_secs,
            ..
        } => {
            let class = ErrorClass::classify_upstream(*status, body);
            let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
            let kind = parsed
                .as_ref()
                .and_then(|v| {
                    let e = v.get("error")?;
                    e.get("type")
                        .or_else(|| e.get("code"))
                        .and_then(|t| t.as_str().map(str::to_owned))
                })
                .unwrap_or_else(|| "unknown".to_owned());
            let message = format!("upstream {provider} returned HTTP {status} ({kind})");
            let client = match parsed {
                Some(body) if relay && body.is_object() => GatewayError::UpstreamRelayed {
                    class,
                    provider: provider.clone(),
                    status: *status,
                    body,
                    retry_after_secs: *retry_after_secs,
                },
                _ => GatewayError::Upstream {
                    class,
                    provider: provider.clone(),
                    message: message.clone(),
                    retry_after_secs: *retry_after_secs,
                },
            };
            (client, class, message)
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

/// The 403 for a model some level of the key's allow-lists refuses, naming that level.
pub(super) fn model_not_allowed(
    model: &str,
    key: &metis_domain::keys::KeyRecord,
    refusal: crate::keys::ModelRefusal,
) -> GatewayError {
    GatewayError::ModelNotAllowed {
        model: model.to_owned(),
        key_id: key.key_id.clone(),
        scope: match refusal {
            crate::keys::ModelRefusal::Key => None,
            crate::keys::ModelRefusal::Scope(s) => Some(s),
        },
    }
}
