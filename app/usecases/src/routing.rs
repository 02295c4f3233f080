//! The routes of this gateway process: each alias's deployments with their live health
//! (circuit, outstanding requests, latency EWMA, rpm/tpm ceilings) and counters. The rules
//! are `metis_domain::routing`; this holds the state behind one short lock per deployment.
//!
//! Health is per process: each replica ejects and probes on what it sees itself, which needs
//! no coordination and reacts as fast as its own traffic.

use metis_domain::routing::{
    Candidate, Circuit, Deployment, Health, RoutingPolicy, Skip, plan, validate,
};
use metis_ports::console::RouteStatus;
use metis_ports::metrics::DeploymentStatus;
use metis_ports::system::Clock;
use metis_ports::upstream::Provider;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// One deployment and its state.
pub struct DeploymentState {
    pub route: String,
    pub spec: Deployment,
    pub provider: Arc<dyn Provider>,
    health: Mutex<Health>,
    /// Attempts answered, failed (health failures only) and skipped.
    pub answered: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
}

impl DeploymentState {
    fn health(&self) -> MutexGuard<'_, Health> {
        match self.health.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A copy of the live state.
    #[must_use]
    pub fn snapshot(&self) -> Health {
        self.health().clone()
    }
}

/// A route: an alias and its deployments.
pub struct Route {
    pub alias: String,
    /// `config` (the config file) or `admin` (set through the admin API, stored with the keys).
    pub source: &'static str,
    pub deployments: Vec<Arc<DeploymentState>>,
    /// Requests that were answered by another deployment than the first one tried.
    pub fallbacks: AtomicU64,
}

/// A deployment held for one request; dropping it ends the request on the deployment
/// (outstanding count, probe slot).
pub struct Ticket {
    deployment: Arc<DeploymentState>,
}

impl Ticket {
    #[must_use]
    pub fn deployment(&self) -> &Arc<DeploymentState> {
        &self.deployment
    }

    /// The answer head arrived after `latency_ms`.
    pub fn succeeded(&self, latency_ms: f64) {
        self.deployment.health().succeeded(latency_ms);
        self.deployment.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// A health failure (429, 5xx, network, timeout). Returns whether it ejected the
    /// deployment.
    pub fn failed(&self, policy: &RoutingPolicy, now_us: i64, jitter: f64) -> bool {
        self.deployment.failed.fetch_add(1, Ordering::Relaxed);
        self.deployment
            .health()
            .failed(&policy.breaker, now_us, jitter)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.deployment.health().release();
    }
}

/// Every route of this process: the config file's, replaced per alias by the routes stored
/// through the admin API ([`Router::apply`], called on every key reload).
pub struct Router {
    /// The config file's routes, checked at start.
    configured: Vec<(String, Vec<Deployment>)>,
    /// The live providers, by name, that deployments refer to.
    providers: BTreeMap<String, Arc<dyn Provider>>,
    routes: RwLock<Arc<BTreeMap<String, Arc<Route>>>>,
    pub policy: RoutingPolicy,
    clock: Arc<dyn Clock>,
    seed: AtomicU64,
}

impl Router {
    /// The config file's routes over `providers`.
    ///
    /// # Errors
    /// A route that fails [`validate`] or names a provider that is not live, naming it.
    pub fn new(
        configured: Vec<(String, Vec<Deployment>)>,
        providers: &[Arc<dyn Provider>],
        policy: RoutingPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let seed = u64::try_from(clock.now_us()).unwrap_or(1) | 1;
        let router = Router {
            configured,
            providers: providers
                .iter()
                .map(|p| (p.name().to_owned(), Arc::clone(p)))
                .collect(),
            routes: RwLock::new(Arc::new(BTreeMap::new())),
            policy,
            clock,
            seed: AtomicU64::new(seed),
        };
        for (alias, deployments) in &router.configured {
            validate(alias, deployments)?;
            router.missing_provider(deployments).map_or(Ok(()), |(d, p)| {
                Err(format!(
                    "route '{alias}': deployment '{d}' names provider '{p}', which is not configured (live providers: {}; a built-in one needs its credential)",
                    router.provider_names().join(", ")
                ))
            })?;
        }
        router.apply(&[]);
        Ok(router)
    }

    /// No routes.
    #[must_use]
    pub fn empty(clock: Arc<dyn Clock>) -> Self {
        Router {
            configured: Vec::new(),
            providers: BTreeMap::new(),
            routes: RwLock::new(Arc::new(BTreeMap::new())),
            policy: RoutingPolicy::default(),
            clock,
            seed: AtomicU64::new(1),
        }
    }

    /// The live provider names.
    #[must_use]
    pub fn provider_names(&self) -> Vec<String> {
        self.providers.keys().cloned().collect()
    }

    /// The first deployment naming a provider this process does not have: `(name, provider)`.
    #[must_use]
    pub fn missing_provider(&self, deployments: &[Deployment]) -> Option<(String, String)> {
        deployments
            .iter()
            .find(|d| !self.providers.contains_key(&d.provider))
            .map(|d| (d.name.clone(), d.provider.clone()))
    }

    /// Put the config file's routes and then `stored` (each replacing a configured route of
    /// its alias) in force. A deployment whose settings did not change keeps its health and
    /// counters; a stored route naming a provider this process does not have is left out
    /// (logged), so the configured route of its alias, if any, stays.
    pub fn apply(&self, stored: &[metis_domain::routing::StoredRoute]) {
        let old = self.snapshot();
        let now = self.clock.now_us();
        let mut next = BTreeMap::new();
        let admin = stored.iter().filter_map(|r| {
            if let Some((d, p)) = self.missing_provider(&r.deployments) {
                tracing::warn!(
                    route = %r.alias,
                    deployment = %d,
                    provider = %p,
                    "stored route names a provider this gateway does not have; it is not in force here"
                );
                return None;
            }
            Some((r.alias.as_str(), r.deployments.as_slice(), "admin"))
        });
        let configured = self
            .configured
            .iter()
            .map(|(a, d)| (a.as_str(), d.as_slice(), "config"));
        for (alias, deployments, source) in configured.chain(admin) {
            let previous = old.get(alias);
            let states = deployments
                .iter()
                .filter_map(|spec| {
                    let kept = previous
                        .and_then(|r| r.deployments.iter().find(|d| d.spec == *spec).cloned());
                    kept.or_else(|| {
                        let provider = Arc::clone(self.providers.get(&spec.provider)?);
                        Some(Arc::new(DeploymentState {
                            route: alias.to_owned(),
                            health: Mutex::new(Health::new(spec, now)),
                            spec: spec.clone(),
                            provider,
                            answered: AtomicU64::new(0),
                            failed: AtomicU64::new(0),
                            skipped: AtomicU64::new(0),
                        }))
                    })
                })
                .collect();
            let fallbacks = previous.map_or(0, |r| r.fallbacks.load(Ordering::Relaxed));
            next.insert(
                alias.to_owned(),
                Arc::new(Route {
                    alias: alias.to_owned(),
                    source,
                    deployments: states,
                    fallbacks: AtomicU64::new(fallbacks),
                }),
            );
        }
        let next = Arc::new(next);
        match self.routes.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<Route>>> {
        match self.routes.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// The route of `alias`, if there is one.
    #[must_use]
    pub fn get(&self, alias: &str) -> Option<Arc<Route>> {
        match self.routes.read() {
            Ok(g) => g.get(alias).cloned(),
            Err(p) => p.into_inner().get(alias).cloned(),
        }
    }

    /// Every route, by alias.
    #[must_use]
    pub fn routes(&self) -> Vec<Arc<Route>> {
        self.snapshot().values().cloned().collect()
    }

    /// A draw in `[0, 1)` (splitmix64 over a shared counter: cheap, lock-free, and good
    /// enough for load balancing and jitter).
    pub fn draw(&self) -> f64 {
        let mut z = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        #[expect(clippy::cast_precision_loss, reason = "53 random bits")]
        let v = (z >> 11) as f64 / (1u64 << 53) as f64;
        v
    }

    /// The order in which `route`'s deployments are tried for one request.
    #[must_use]
    pub fn plan(&self, route: &Route) -> Vec<Arc<DeploymentState>> {
        if route.deployments.len() == 1 {
            return route.deployments.clone();
        }
        let now = self.clock.now_us();
        let candidates: Vec<Candidate> = route
            .deployments
            .iter()
            .map(|d| {
                let h = d.health();
                Candidate {
                    priority: d.spec.priority,
                    weight: d.spec.weight,
                    // An ineligible deployment sorts last in its group; it is skipped (and
                    // recorded) when its turn comes unless it recovered by then.
                    score: if h.eligible(now) {
                        h.score()
                    } else {
                        f64::MAX / 2.0
                    },
                }
            })
            .collect();
        plan(&candidates, &mut || self.draw())
            .into_iter()
            .map(|i| Arc::clone(&route.deployments[i]))
            .collect()
    }

    /// Take `d` for one request of `tokens` estimated tokens.
    ///
    /// # Errors
    /// Why it was skipped.
    pub fn acquire(&self, d: &Arc<DeploymentState>, tokens: u64) -> Result<Ticket, Skip> {
        let now = self.clock.now_us();
        let taken = d.health().try_acquire(&d.spec, tokens, now);
        match taken {
            Ok(()) => Ok(Ticket {
                deployment: Arc::clone(d),
            }),
            Err(skip) => {
                d.skipped.fetch_add(1, Ordering::Relaxed);
                Err(skip)
            }
        }
    }

    /// Now, on the router's clock (µs).
    #[must_use]
    pub fn now_us(&self) -> i64 {
        self.clock.now_us()
    }

    /// Every deployment's state for `/metrics`.
    #[must_use]
    pub fn gauges(&self) -> Vec<DeploymentStatus> {
        self.snapshot()
            .values()
            .flat_map(|r| self.status(r))
            .collect()
    }

    /// Every route with its deployments' settings and state (`GET /admin/v1/routes`).
    #[must_use]
    pub fn statuses(&self) -> Vec<RouteStatus> {
        self.snapshot()
            .values()
            .map(|r| RouteStatus {
                alias: r.alias.clone(),
                source: r.source,
                fallbacks: r.fallbacks.load(Ordering::Relaxed),
                deployments: self.status(r),
            })
            .collect()
    }

    fn status(&self, route: &Route) -> Vec<DeploymentStatus> {
        let now = self.clock.now_us();
        let mut out = Vec::with_capacity(route.deployments.len());
        {
            for d in &route.deployments {
                let h = d.health();
                out.push(DeploymentStatus {
                    route: route.alias.clone(),
                    deployment: d.spec.name.clone(),
                    provider: d.spec.provider.clone(),
                    model: d.spec.model.clone(),
                    weight: d.spec.weight,
                    priority: d.spec.priority,
                    rpm: d.spec.rpm,
                    tpm: d.spec.tpm,
                    consecutive_failures: h.consecutive_failures,
                    probe_in_ms: match h.circuit {
                        Circuit::Open { until_us } => {
                            Some(u64::try_from((until_us - now).max(0) / 1000).unwrap_or(0))
                        }
                        _ => None,
                    },
                    circuit: h.circuit.level(),
                    outstanding: h.outstanding,
                    latency_ewma_seconds: h.latency_ewma_ms / 1000.0,
                    answered: d.answered.load(Ordering::Relaxed),
                    failed: d.failed.load(Ordering::Relaxed),
                    skipped: d.skipped.load(Ordering::Relaxed),
                    ejections: h.ejections,
                });
            }
        }
        out
    }

    /// Deployments whose circuit is not closed, as `/readyz` details them (`None`: all closed).
    #[must_use]
    pub fn ejected(&self) -> Option<String> {
        let now = self.clock.now_us();
        let mut out = Vec::new();
        for route in self.snapshot().values() {
            for d in &route.deployments {
                let h = d.health();
                match h.circuit {
                    Circuit::Closed => {}
                    Circuit::Open { until_us } => out.push(format!(
                        "{}/{} ejected ({} consecutive failures, probe in {} ms)",
                        route.alias,
                        d.spec.name,
                        h.consecutive_failures,
                        (until_us - now).max(0) / 1000
                    )),
                    Circuit::HalfOpen { .. } => out.push(format!(
                        "{}/{} half-open (probing)",
                        route.alias, d.spec.name
                    )),
                }
            }
        }
        (!out.is_empty()).then(|| out.join("; "))
    }
}
