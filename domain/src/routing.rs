//! Routes: a model alias served by one or more deployments (a provider, an upstream model and
//! its own limits), with the rules that pick among them and take a failing one out of rotation.
//!
//! - **Order.** Priority groups are tried in ascending `priority`. Inside a group the next
//!   deployment is chosen by weighted power-of-two-choices: two distinct candidates are drawn
//!   with probability proportional to `weight`, and the second goes first only when its load
//!   score `(outstanding + 1) × max(latency EWMA, 20 ms)` is clearly lower (below 0.8× the first's), so
//!   at similar load the weights decide the split and a busy or slow deployment is avoided.
//!   Repeating the draw over the remaining ones orders the whole group, so a fallback inside a
//!   group also avoids the busiest deployment.
//! - **Eligibility.** A deployment whose circuit is open, whose half-open probe is in flight,
//!   or whose own rpm/tpm ceiling cannot cover the request is skipped, and the skip is part of
//!   the recorded chain.
//! - **Circuit breaker.** `failure_threshold` consecutive failures (429, 5xx, network errors,
//!   timeouts) open the circuit for a cool-down that doubles on each re-opening (capped) with
//!   ±20 % jitter, so a fleet's probes do not arrive in lockstep. After the cool-down one
//!   request is let through as a probe: success closes the circuit, failure re-opens it.
//!
//! Everything here is pure: time (µs) and randomness (`[0, 1)` draws) come from the caller.

use crate::ratelimit::TokenBucket;
use serde::{Deserialize, Serialize};

/// One deployment of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Unique within the route; shown in `route.decided`, metrics and the admin API.
    pub name: String,
    /// A live provider's name (the canonical-id prefix).
    pub provider: String,
    /// The model id sent upstream.
    pub model: String,
    /// Relative share of traffic inside its priority group (≥ 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Lower is tried first; higher groups are fallbacks.
    #[serde(default)]
    pub priority: u32,
    /// This deployment's own requests-per-minute ceiling (per gateway process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// This deployment's own tokens-per-minute ceiling (per gateway process), charged with
    /// each request's estimate (input + requested maximum output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
}

fn one() -> u32 {
    1
}

/// A route set through the admin API, stored with the keys' policies (so every replica loads
/// it with its next key reload, and it survives restarts). It replaces a config-file route of
/// the same alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredRoute {
    pub alias: String,
    pub deployments: Vec<Deployment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl Deployment {
    /// The canonical id of what this deployment serves (`provider:model`), which prices it.
    #[must_use]
    pub fn canonical_id(&self) -> String {
        format!("{}:{}", self.provider, self.model)
    }
}

/// A deployment's name: `given`, else `provider:model`, with `#2`, `#3`, … when that is
/// already taken in `taken` (the same model on two servers).
#[must_use]
pub fn deployment_name(
    given: Option<&str>,
    provider: &str,
    model: &str,
    taken: &[Deployment],
) -> String {
    if let Some(name) = given {
        return name.to_owned();
    }
    let base = format!("{provider}:{model}");
    let mut name = base.clone();
    let mut n = 1;
    while taken.iter().any(|d| d.name == name) {
        n += 1;
        name = format!("{base}#{n}");
    }
    name
}

/// Check a route's deployments: at least one, unique names, weights ≥ 1, non-empty ids.
///
/// # Errors
/// A message naming the alias and the deployment at fault.
pub fn validate(alias: &str, deployments: &[Deployment]) -> Result<(), String> {
    if alias.trim().is_empty() {
        return Err("a route alias must be non-empty".to_owned());
    }
    if deployments.is_empty() {
        return Err(format!("route '{alias}' has no deployments"));
    }
    for (i, d) in deployments.iter().enumerate() {
        if d.provider.is_empty() || d.model.is_empty() {
            return Err(format!(
                "route '{alias}': deployment {i} needs a provider and a model"
            ));
        }
        if d.weight == 0 {
            return Err(format!(
                "route '{alias}': deployment '{}' has weight 0 (use ≥ 1)",
                d.name
            ));
        }
        if d.rpm == Some(0) || d.tpm == Some(0) {
            return Err(format!(
                "route '{alias}': deployment '{}' has a ceiling of 0 (leave it out for none)",
                d.name
            ));
        }
        if deployments[..i].iter().any(|o| o.name == d.name) {
            return Err(format!(
                "route '{alias}': two deployments are named '{}'",
                d.name
            ));
        }
    }
    Ok(())
}

/// How a request moves along its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingPolicy {
    /// Upstream attempts one request may make across deployments (skips do not count).
    pub max_attempts: u32,
    /// The whole request's deadline for an answer head, in ms (`None`: the providers' own
    /// timeouts only).
    pub deadline_ms: Option<u64>,
    pub breaker: BreakerPolicy,
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        RoutingPolicy {
            max_attempts: 3,
            deadline_ms: None,
            breaker: BreakerPolicy::default(),
        }
    }
}

/// Circuit-breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// First cool-down (ms); doubled on each re-opening.
    pub base_cooldown_ms: u64,
    /// Longest cool-down (ms).
    pub max_cooldown_ms: u64,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failure_threshold: 5,
            base_cooldown_ms: 5_000,
            max_cooldown_ms: 300_000,
        }
    }
}

/// The circuit's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    /// Ejected until `until_us`.
    Open {
        until_us: i64,
    },
    /// Cool-down over; `probing` while the one probe request is in flight.
    HalfOpen {
        probing: bool,
    },
}

impl Circuit {
    /// `closed`, `open` or `half_open`.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open { .. } => "open",
            Circuit::HalfOpen { .. } => "half_open",
        }
    }

    /// 0 closed, 1 half-open, 2 open (the gauge value).
    #[must_use]
    pub fn level(&self) -> u8 {
        match self {
            Circuit::Closed => 0,
            Circuit::HalfOpen { .. } => 1,
            Circuit::Open { .. } => 2,
        }
    }
}

/// Why a deployment was passed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its circuit is open; it may be probed in `retry_in_ms`.
    CircuitOpen { retry_in_ms: u64 },
    /// Its half-open probe is in flight.
    Probing,
    /// Its rpm ceiling is reached.
    Rpm { limit: u32, retry_after_secs: u64 },
    /// Its tpm ceiling cannot cover the request's estimate.
    Tpm { limit: u32, retry_after_secs: u64 },
}

impl Skip {
    /// Seconds until this deployment could take the request.
    #[must_use]
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Skip::CircuitOpen { retry_in_ms } => retry_in_ms.div_ceil(1000).max(1),
            Skip::Probing => 1,
            Skip::Rpm {
                retry_after_secs, ..
            }
            | Skip::Tpm {
                retry_after_secs, ..
            } => *retry_after_secs,
        }
    }

    /// Whether the skip is a rate ceiling (a 429 when every deployment is skipped this way).
    #[must_use]
    pub fn is_ceiling(&self) -> bool {
        matches!(self, Skip::Rpm { .. } | Skip::Tpm { .. })
    }

    /// The reason as recorded in `route.decided`.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Skip::CircuitOpen { retry_in_ms } => {
                format!("circuit open (probe in {} ms)", retry_in_ms)
            }
            Skip::Probing => "circuit half-open, probe in flight".to_owned(),
            Skip::Rpm { limit, .. } => format!("rpm ceiling {limit} reached"),
            Skip::Tpm { limit, .. } => format!("tpm ceiling {limit} cannot cover the request"),
        }
    }
}

/// Latencies below this (ms) count as equal: differences of a few ms are scheduling noise,
/// not a slower deployment, and must not override the weights.
const LATENCY_FLOOR_MS: f64 = 20.0;
/// Smoothing of the latency EWMA: the weight of the newest sample.
const EWMA_ALPHA: f64 = 0.3;

/// One deployment's live state in one gateway process.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub circuit: Circuit,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Times the circuit opened since it last closed (drives the cool-down doubling).
    pub openings: u32,
    /// Requests sent and not yet finished.
    pub outstanding: u32,
    /// Latency to the answer head (ms), exponentially weighted; 0 until the first answer,
    /// so a new deployment looks fast and gets its first samples.
    pub latency_ewma_ms: f64,
    sampled: bool,
    /// Times the circuit opened, ever (a counter).
    pub ejections: u64,
    rpm: Option<TokenBucket>,
    tpm: Option<TokenBucket>,
}

impl Health {
    /// A closed, idle deployment.
    #[must_use]
    pub fn new(d: &Deployment, now_us: i64) -> Self {
        Health {
            circuit: Circuit::Closed,
            consecutive_failures: 0,
            openings: 0,
            outstanding: 0,
            latency_ewma_ms: 0.0,
            sampled: false,
            ejections: 0,
            rpm: d.rpm.map(|r| TokenBucket::full(r, now_us)),
            tpm: d.tpm.map(|t| TokenBucket::full(t, now_us)),
        }
    }

    /// The load score power-of-two-choices compares (lower is better).
    #[must_use]
    pub fn score(&self) -> f64 {
        (f64::from(self.outstanding) + 1.0) * self.latency_ewma_ms.max(LATENCY_FLOOR_MS)
    }

    /// Whether the deployment can be tried now, without taking anything (planning).
    #[must_use]
    pub fn eligible(&self, now_us: i64) -> bool {
        match self.circuit {
            Circuit::Closed => true,
            Circuit::Open { until_us } => now_us >= until_us,
            Circuit::HalfOpen { probing } => !probing,
        }
    }

    /// Take the deployment for one request: the circuit admits it (as the probe when
    /// half-open) and its ceilings cover one request and `tokens`. Nothing is taken on a skip.
    ///
    /// # Errors
    /// The [`Skip`] reason.
    pub fn try_acquire(&mut self, d: &Deployment, tokens: u64, now_us: i64) -> Result<(), Skip> {
        let probe = match self.circuit {
            Circuit::Closed => false,
            Circuit::Open { until_us } if now_us < until_us => {
                let ms = u64::try_from((until_us - now_us) / 1000).unwrap_or(0);
                return Err(Skip::CircuitOpen { retry_in_ms: ms });
            }
            Circuit::Open { .. } | Circuit::HalfOpen { probing: false } => true,
            Circuit::HalfOpen { probing: true } => return Err(Skip::Probing),
        };
        if let (Some(limit), Some(bucket)) = (d.tpm, self.tpm.as_mut())
            && let Some(wait) = bucket.wait_for(limit, tokens, now_us)
        {
            return Err(Skip::Tpm {
                limit,
                retry_after_secs: wait,
            });
        }
        if let (Some(limit), Some(bucket)) = (d.rpm, self.rpm.as_mut())
            && let Err(wait) = bucket.try_take(limit, now_us)
        {
            return Err(Skip::Rpm {
                limit,
                retry_after_secs: wait,
            });
        }
        if let (Some(limit), Some(bucket)) = (d.tpm, self.tpm.as_mut()) {
            bucket.debit(limit, i64::try_from(tokens).unwrap_or(i64::MAX), now_us);
        }
        if probe {
            self.circuit = Circuit::HalfOpen { probing: true };
        }
        self.outstanding += 1;
        Ok(())
    }

    /// The request taken by [`try_acquire`](Self::try_acquire) got its answer head after
    /// `latency_ms`.
    pub fn succeeded(&mut self, latency_ms: f64) {
        self.latency_ewma_ms = if self.sampled {
            EWMA_ALPHA * latency_ms + (1.0 - EWMA_ALPHA) * self.latency_ewma_ms
        } else {
            latency_ms
        };
        self.sampled = true;
        self.consecutive_failures = 0;
        self.openings = 0;
        self.circuit = Circuit::Closed;
    }

    /// The request failed with a health failure (429, 5xx, network, timeout). `jitter` is a
    /// draw in `[0, 1)`. Returns whether this failure opened the circuit.
    pub fn failed(&mut self, policy: &BreakerPolicy, now_us: i64, jitter: f64) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let reopen = matches!(self.circuit, Circuit::HalfOpen { .. });
        if !reopen && self.consecutive_failures < policy.failure_threshold.max(1) {
            return false;
        }
        if matches!(self.circuit, Circuit::Open { .. }) {
            return false;
        }
        let doubling = 1u64 << self.openings.min(20);
        let base = policy
            .base_cooldown_ms
            .saturating_mul(doubling)
            .min(policy.max_cooldown_ms);
        #[expect(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "cool-downs are far below 2^52 ms and the factor is in [0.8, 1.2)"
        )]
        let ms = (base as f64 * (0.8 + 0.4 * jitter.clamp(0.0, 1.0))) as u64;
        self.openings = self.openings.saturating_add(1);
        self.ejections += 1;
        self.circuit = Circuit::Open {
            until_us: now_us.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX) * 1000),
        };
        true
    }

    /// The request ended (answer finished, failed or was abandoned). A probe that ended
    /// without an outcome frees the probe slot.
    pub fn release(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if self.circuit == (Circuit::HalfOpen { probing: true }) {
            self.circuit = Circuit::HalfOpen { probing: false };
        }
    }
}

/// How much lower the second choice's load score must be to go before the first.
const LOAD_MARGIN: f64 = 0.8;

/// One deployment as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub priority: u32,
    pub weight: u32,
    pub score: f64,
}

/// The order in which to try `candidates`: priority groups ascending, each group ordered by
/// repeated weighted power-of-two-choices. `draw` returns values in `[0, 1)`.
#[must_use]
pub fn plan(candidates: &[Candidate], draw: &mut dyn FnMut() -> f64) -> Vec<usize> {
    let mut groups: Vec<u32> = candidates.iter().map(|c| c.priority).collect();
    groups.sort_unstable();
    groups.dedup();
    let mut out = Vec::with_capacity(candidates.len());
    for g in groups {
        let mut left: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].priority == g)
            .collect();
        while !left.is_empty() {
            let pos = if left.len() == 1 {
                0
            } else {
                let a = weighted_pick(candidates, &left, None, draw);
                let b = weighted_pick(candidates, &left, Some(a), draw);
                let (ca, cb) = (&candidates[left[a]], &candidates[left[b]]);
                if cb.score < ca.score * LOAD_MARGIN {
                    b
                } else {
                    a
                }
            };
            out.push(left.remove(pos));
        }
    }
    out
}

/// A position in `left` drawn with probability proportional to weight, never `except`.
fn weighted_pick(
    candidates: &[Candidate],
    left: &[usize],
    except: Option<usize>,
    draw: &mut dyn FnMut() -> f64,
) -> usize {
    let weight = |pos: usize| {
        if Some(pos) == except {
            0
        } else {
            u64::from(candidates[left[pos]].weight.max(1))
        }
    };
    let total: u64 = (0..left.len()).map(weight).sum();
    #[expect(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "weights sum far below 2^52; the draw is in [0, 1)"
    )]
    let mut target = (draw().clamp(0.0, 0.999_999_999) * total as f64) as u64;
    for pos in 0..left.len() {
        let w = weight(pos);
        if target < w {
            return pos;
        }
        target -= w;
    }
    // Only reachable through float rounding: the last position with weight.
    (0..left.len()).rev().find(|&p| weight(p) > 0).unwrap_or(0)
}

#[cfg(test)]
mod tests;
