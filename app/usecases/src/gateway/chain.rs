//! The chain of a routed call: a route's deployments tried in the balancer's order, with
//! fallback on health failures before the answer head, and the `route.decided` that records
//! what was tried.

use super::GatewayCore;
use super::call::{Answer, Built, Routed, StartedCall, Target, upstream_error};
use metis_domain::error::{ErrorClass, GatewayError};
use metis_domain::events::{RouteChainEntry, RouteDecided};
use metis_domain::routing::Skip;
use metis_ports::gateway::Admission;
use metis_ports::upstream::UpstreamError;
use std::time::{Duration, Instant};
use tracing::Instrument;

impl GatewayCore {
    /// Send the call to its targets in order until one answers: the plain model's provider
    /// once, or a route's deployments with fallback on health failures (429, 5xx, network
    /// errors, time-outs) while attempts and the deadline last. Only an answer head ends the
    /// chain, so nothing has reached the client when the next deployment is tried. `first` is
    /// the request built for `targets[0]`; `build` makes the others (a target whose request
    /// cannot be built is skipped).
    ///
    /// # Errors
    /// The last failure as the client sees it, or 429/503 when every deployment was skipped.
    pub(super) async fn send_chain(
        &self,
        admission: &Admission,
        routed: &Routed,
        call: &mut StartedCall,
        first: Built,
        tokens: u64,
        build: &(dyn Fn(&Target) -> Result<Built, GatewayError> + Sync),
    ) -> Result<Answer, GatewayError> {
        let Some(route) = &routed.route else {
            let (request, wire, same_shape) = first.request(admission, call, &routed.targets[0]);
            let reply = self
                .send(&*routed.provider, call, request, same_shape)
                .await?;
            return Ok(Answer {
                reply,
                wire,
                same_shape,
                provider: routed.entry.provider.clone(),
            });
        };
        let policy = self.router.policy;
        let deadline = policy
            .deadline_ms
            .map(|ms| routed.started + Duration::from_millis(ms));
        let budget = if admission.no_fallback {
            1
        } else {
            policy.max_attempts.max(1)
        };
        let span = call.upstream_span.clone();
        call.upstream_span = tracing::Span::none();
        let mut first = Some(first);
        let mut chain = Vec::with_capacity(routed.targets.len());
        let mut skips = Vec::new();
        let mut last: Option<(UpstreamError, bool)> = None;
        let mut attempts = 0u32;
        for (i, target) in routed.targets.iter().enumerate() {
            let Some(dep) = &target.deployment else {
                continue;
            };
            if attempts >= budget || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let ticket = match self.router.acquire(dep, tokens) {
                Ok(t) => t,
                Err(skip) => {
                    chain.push(chain_entry(target, "skipped", skip.describe()));
                    skips.push(skip);
                    continue;
                }
            };
            let built = match first
                .take()
                .filter(|_| i == 0)
                .map_or_else(|| build(target), Ok)
            {
                Ok(b) => b,
                Err(e) => {
                    let reason = format!("the request cannot be sent in its wire: {}", e.message());
                    chain.push(chain_entry(target, "skipped", reason));
                    continue;
                }
            };
            let (mut request, wire, same_shape) = built.request(admission, call, target);
            if attempts + 1 < budget && i + 1 < routed.targets.len() {
                // Another deployment is left: move on at once instead of backing off here.
                request.max_retries = Some(0);
            }
            request.deadline = deadline;
            attempts += 1;
            let sent = Instant::now();
            match target.provider.send(request).instrument(span.clone()).await {
                Ok(reply) => {
                    let ms = sent.elapsed().as_secs_f64() * 1000.0;
                    ticket.succeeded(ms);
                    chain.push(chain_entry(
                        target,
                        "chose",
                        format!("answered in {ms:.0} ms"),
                    ));
                    if chain.len() > 1 {
                        route
                            .fallbacks
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.settle_route(routed, chain, Some(&target.entry.id));
                    if reply.retries > 0 {
                        self.metrics
                            .upstream_retries(&call.recorder.labels(), reply.retries);
                    }
                    let recorder = &mut call.recorder;
                    recorder.model.clone_from(&target.entry.id);
                    recorder.provider.clone_from(&target.entry.provider);
                    recorder.price = self.price_of(&target.entry.id);
                    recorder.retries = reply.retries;
                    recorder.deployment = Some(ticket);
                    return Ok(Answer {
                        reply,
                        wire,
                        same_shape,
                        provider: target.entry.provider.clone(),
                    });
                }
                Err(e) => {
                    let health = is_health_failure(&e);
                    if health && ticket.failed(&policy, self.router.now_us(), self.router.draw()) {
                        tracing::warn!(
                            route = %route.alias,
                            deployment = %dep.spec.name,
                            provider = %dep.spec.provider,
                            "deployment ejected after consecutive failures; it is probed again after its cool-down"
                        );
                    }
                    chain.push(chain_entry(target, "failed", failure_reason(&e)));
                    last = Some((e, same_shape));
                    if !health {
                        break;
                    }
                }
            }
        }
        self.settle_route(routed, chain.clone(), None);
        if let Some((e, relay)) = last {
            call.recorder.retries = e.retries();
            let (client_err, class, message) = upstream_error(&e, relay);
            call.recorder.fail(class, &message);
            return Err(client_err);
        }
        let reasons: Vec<String> = chain
            .iter()
            .map(|c| format!("{}: {}", c.deployment.as_deref().unwrap_or("?"), c.reason))
            .collect();
        let message = format!(
            "no deployment of route '{}' can take the request now ({})",
            route.alias,
            if reasons.is_empty() {
                "deadline passed".to_owned()
            } else {
                reasons.join("; ")
            }
        );
        let class = if !skips.is_empty() && skips.iter().all(Skip::is_ceiling) {
            ErrorClass::RateLimit
        } else {
            ErrorClass::ServerError
        };
        call.recorder.fail(class, &message);
        Err(GatewayError::Upstream {
            class,
            provider: format!("route {}", route.alias),
            message,
            retry_after_secs: Some(skips.iter().map(Skip::retry_after_secs).min().unwrap_or(1)),
        })
    }

    /// Record a route's `route.decided` with the chain actually tried.
    fn settle_route(&self, routed: &Routed, chain: Vec<RouteChainEntry>, chosen: Option<&str>) {
        let decided = RouteDecided {
            chosen_model: chosen.unwrap_or_default().to_owned(),
            winner_index: if chosen.is_some() {
                i64::try_from(chain.len()).unwrap_or(0) - 1
            } else {
                -1
            },
            elapsed_ms: routed.started.elapsed().as_secs_f64() * 1000.0,
            chain,
            requested_model: routed.requested_model.clone(),
        };
        self.emit_as(
            routed.route_id.clone(),
            &routed.session_id,
            Some(&routed.turn_id),
            None,
            &decided,
        );
    }
}

/// One deployment's line in `route.decided`.
fn chain_entry(target: &Target, verdict: &'static str, reason: String) -> RouteChainEntry {
    RouteChainEntry {
        policy: "deployment",
        verdict,
        reason,
        candidate_model: Some(target.entry.id.clone()),
        deployment: target.deployment.as_ref().map(|d| d.spec.name.clone()),
    }
}

/// Whether a failure counts against the deployment's health and allows a fallback: 429, 408,
/// 5xx (incl. 529), network errors and time-outs. A 400 or 401 is the request's or the
/// configuration's problem: another deployment would not fix it.
fn is_health_failure(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
        UpstreamError::Network { .. } => true,
    }
}

/// A failure as recorded in the chain (status and upstream error type; never free text).
fn failure_reason(e: &UpstreamError) -> String {
    match e {
        UpstreamError::Status { status, body, .. } => {
            let class = ErrorClass::classify_upstream(*status, body);
            format!("HTTP {status} ({})", class.as_str())
        }
        UpstreamError::Network { message, .. } => format!("unreachable: {message}"),
    }
}
