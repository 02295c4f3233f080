//! `GatewayCore` over the port fakes: one test per rule of the request pipeline (SPEC §3.2)
//! and of the issue-11 surface (same-shape forwarding, Responses continuation, token counts,
//! embeddings). The upstream is a scripted fake `Provider` that records every call it gets,
//! so each test can say both what the client saw and what went upstream; the trace is the
//! in-memory store, so each test reads the events exactly as they would be stored.
#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use metis_domain::canonical::{ChatRequest, Shape, Usage};
use metis_domain::error::{ErrorClass, GatewayError};
use metis_domain::keys::{KeyRecord, hash_token, token_fingerprint};
use metis_domain::models::Catalog;
use metis_domain::patterns::PatternCaps;
use metis_domain::pricing::{Price, PriceTable};
use metis_domain::routing::{Deployment, RoutingPolicy};
use metis_ports::admission::{KeyRateLimiter, SpendAdmission};
use metis_ports::fakes::{
    FakeKeyLimiter, FakeOutage, FakeSpendStore, InMemoryPatternStore, InMemorySessionStore,
    InMemoryTraceStore,
};
use metis_ports::gateway::{
    Admission, CountMethod, GatewayService, InboundMeta, Reply, TokenCount,
};
use metis_ports::metrics::{Attribution, CallLabels, Metrics, QuotaRatio, ScrapeGauges};
use metis_ports::system::{Background, Clock, IdSource, TraceContext};
use metis_ports::tokens::TokenCounter;
use metis_ports::trace::{EventRow, KeySpend};
use metis_ports::upstream::{
    Operation, Provider, UpstreamBody, UpstreamError, UpstreamReply, UpstreamRequest, WireFormat,
};
use metis_usecases::routing::Router;
use metis_usecases::{
    CoreParts, GatewayCore, KeyBuckets, KeyRing, Limiter, OutagePolicy, RateLimitConfig,
    SpendGuard, SpendGuardParts, SpendLedger,
};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// 2026-05-28T20:26:40Z, in µs.
const T0: i64 = 1_780_000_000_000_000;
const TOKEN: &str = "gw_live_token";

// ---------------------------------------------------------------------------------------
// Port doubles that `metis_ports::fakes` does not provide
// ---------------------------------------------------------------------------------------

struct FixedClock;

impl Clock for FixedClock {
    fn now_us(&self) -> i64 {
        T0
    }
}

/// Increasing ids, so the trace's id order is the emit order.
#[derive(Default)]
struct CountingIds(AtomicU64);

impl IdSource for CountingIds {
    fn ulid(&self) -> String {
        format!("01TEST{:020}", self.0.fetch_add(1, Ordering::SeqCst))
    }

    fn secret_bytes(&self) -> [u8; 24] {
        [7; 24]
    }
}

struct NoTracing;

impl TraceContext for NoTracing {
    fn exporting(&self) -> bool {
        false
    }

    fn current_traceparent(&self) -> Option<String> {
        None
    }
}

/// Background work (the pattern batcher's drain) is not run: these tests read the trace.
struct NoBackground;

impl Background for NoBackground {
    fn spawn(&self, _task: BoxFuture<'static, ()>) {}

    fn spawn_after(&self, _delay: std::time::Duration, _task: BoxFuture<'static, ()>) {}
}

/// The counters the tests read.
#[derive(Default)]
struct RecordingMetrics {
    auth_failures: Mutex<Vec<String>>,
    outages: Mutex<Vec<String>>,
    token_counts: Mutex<Vec<String>>,
    upstream_calls: Mutex<Vec<String>>,
}

impl Metrics for RecordingMetrics {
    fn http_request(&self, _: &str, _: &str, _: u16, _: &str, _: f64) {}
    fn upstream_call(&self, _call: &CallLabels<'_>, outcome: &str, _seconds: f64) {
        self.upstream_calls.lock().unwrap().push(outcome.to_owned());
    }
    fn upstream_retries(&self, _: &CallLabels<'_>, _: u32) {}
    fn first_token(&self, _: &CallLabels<'_>, _: f64) {}
    fn usage(&self, _: &CallLabels<'_>, _: &Attribution<'_>, _: &Usage, _: f64) {}
    fn auth_failure(&self, reason: &str) {
        self.auth_failures.lock().unwrap().push(reason.to_owned());
    }
    fn rate_limit(&self, _: &str, _: bool) {}
    fn quota_ratios(&self, _: &[QuotaRatio]) {}
    fn quota_event(&self, _: &str, _: &str) {}
    fn key_leak_suspected(&self) {}
    fn admission_outage(&self, step: &str, decision: &str) {
        self.outages
            .lock()
            .unwrap()
            .push(format!("{step}/{decision}"));
    }
    fn inflight(&self, _: i64) {}
    fn streams(&self, _: i64) {}
    fn accept_error(&self, _: &str) {}
    fn refused(&self, _: &str) {}
    fn connections(&self, _: i64) {}
    fn connection_limit(&self, _: u64) {}
    fn inflight_body_bytes(&self, _: i64) {}
    fn token_count(&self, method: &str) {
        self.token_counts.lock().unwrap().push(method.to_owned());
    }
    fn render(&self, _: &ScrapeGauges) -> String {
        String::new()
    }
}

/// A tokenizer that knows every model (`Some`) or none (`None`).
struct FixedTokenizer(Option<u64>);

impl TokenCounter for FixedTokenizer {
    fn count(&self, _model: &str, _request: &ChatRequest) -> Option<u64> {
        self.0
    }
}

// ---------------------------------------------------------------------------------------
// The scripted upstream
// ---------------------------------------------------------------------------------------

/// One step of a scripted upstream stream.
enum Step {
    /// SSE bytes.
    Chunk(&'static str),
    /// The connection fails.
    Fail,
    /// Nothing more arrives and the stream never ends.
    Hang,
}

/// What the fake answers to one call.
enum Scripted {
    Json(Value),
    Stream(Vec<Step>),
    Error {
        status: u16,
        body: Value,
    },
    /// The response head never arrives.
    Silence,
}

/// An upstream provider that answers from a script and records every request.
struct FakeProvider {
    name: &'static str,
    wire: WireFormat,
    /// Served beyond `(wire, Generate)`.
    extra: Vec<(WireFormat, Operation)>,
    /// Retries the provider reports having made before each answer (its own retry loop,
    /// which runs before any byte is returned).
    retries: u32,
    script: Mutex<VecDeque<Scripted>>,
    requests: Mutex<Vec<UpstreamRequest>>,
}

impl FakeProvider {
    fn new(name: &'static str, wire: WireFormat) -> Self {
        FakeProvider {
            name,
            wire,
            extra: Vec::new(),
            retries: 0,
            script: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
        }
    }

    fn serving(mut self, wire: WireFormat, op: Operation) -> Self {
        self.extra.push((wire, op));
        self
    }

    fn answer(&self, reply: Scripted) {
        self.script.lock().unwrap().push_back(reply);
    }

    fn requests(&self) -> Vec<UpstreamRequest> {
        self.requests.lock().unwrap().clone()
    }

    fn body(&self, i: usize) -> Value {
        serde_json::from_slice(&self.requests()[i].body).unwrap()
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn name(&self) -> &str {
        self.name
    }

    fn wire(&self) -> WireFormat {
        self.wire
    }

    fn supports(&self, wire: WireFormat, op: Operation) -> bool {
        (wire == self.wire && op == Operation::Generate) || self.extra.contains(&(wire, op))
    }

    async fn send(&self, request: UpstreamRequest) -> Result<UpstreamReply, UpstreamError> {
        self.requests.lock().unwrap().push(request);
        let next = self.script.lock().unwrap().pop_front();
        let retries = self.retries;
        match next {
            Some(Scripted::Json(v)) => Ok(UpstreamReply {
                body: UpstreamBody::Full(Bytes::from(v.to_string())),
                retries,
            }),
            Some(Scripted::Stream(steps)) => {
                let provider = self.name.to_owned();
                let mut items: Vec<Result<Bytes, UpstreamError>> = Vec::new();
                let mut hang = false;
                for step in steps {
                    match step {
                        Step::Chunk(s) => items.push(Ok(Bytes::from_static(s.as_bytes()))),
                        Step::Fail => items.push(Err(UpstreamError::Network {
                            provider: provider.clone(),
                            message: "connection reset".to_owned(),
                            retries: 0,
                        })),
                        Step::Hang => hang = true,
                    }
                }
                let body: BoxStream<'static, Result<Bytes, UpstreamError>> = if hang {
                    stream::iter(items).chain(stream::pending()).boxed()
                } else {
                    stream::iter(items).boxed()
                };
                Ok(UpstreamReply {
                    body: UpstreamBody::Stream(body),
                    retries,
                })
            }
            Some(Scripted::Error { status, body }) => Err(UpstreamError::Status {
                provider: self.name.to_owned(),
                status,
                body: Bytes::from(body.to_string()),
                retry_after_secs: None,
                retries,
            }),
            Some(Scripted::Silence) => std::future::pending().await,
            None => panic!("{}: unexpected upstream call", self.name),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The world under test
// ---------------------------------------------------------------------------------------

fn key(id: &str, token: &str, extra: Value) -> KeyRecord {
    let mut v = json!({"key_id": id, "secret_hash": hash_token(token), "workspace_path": "/w"});
    if let (Some(m), Value::Object(e)) = (v.as_object_mut(), extra) {
        m.extend(e);
    }
    serde_json::from_value(v).unwrap()
}

/// Three providers, one per wire: `anth` (Anthropic Messages), `oai` (Chat Completions),
/// `resp` (Responses). Each serves one model `<provider>:m`; `oai:emb` is an embeddings model.
/// Output of `oai:m` costs 1 000 USD/Mtok, so a request with `max_tokens: 300` reserves 0.30.
struct World {
    core: Arc<GatewayCore>,
    trace: InMemoryTraceStore,
    anth: Arc<FakeProvider>,
    oai: Arc<FakeProvider>,
    resp: Arc<FakeProvider>,
    metrics: Arc<RecordingMetrics>,
    ledger: Arc<SpendLedger>,
}

struct Setup {
    keys: Vec<KeyRecord>,
    limits: RateLimitConfig,
    /// A spend store in place of the in-process ledger (a store shared by replicas).
    spend_store: Option<Arc<dyn SpendAdmission>>,
    outage: OutagePolicy,
    /// A per-key limiter in place of the in-process buckets.
    key_limiter: Option<Arc<dyn KeyRateLimiter>>,
    spend: Vec<KeySpend>,
    /// Scope budgets (team, user, …) the key ring builds the keys' budgets with.
    policies: metis_domain::budgets::Policies,
    tokenizer: Option<u64>,
    anth: FakeProvider,
    oai: FakeProvider,
    /// Routes over the three providers (deployments name them `anth`, `oai`, `resp`).
    routes: Vec<(&'static str, Vec<Deployment>)>,
    routing: RoutingPolicy,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            keys: vec![key("gk_live", TOKEN, json!({}))],
            limits: RateLimitConfig::default(),
            spend_store: None,
            outage: OutagePolicy::FailClosed,
            key_limiter: None,
            spend: Vec::new(),
            policies: metis_domain::budgets::Policies::default(),
            tokenizer: None,
            anth: FakeProvider::new("anth", WireFormat::AnthropicMessages),
            oai: FakeProvider::new("oai", WireFormat::OpenAiChat),
            routes: Vec::new(),
            routing: RoutingPolicy::default(),
        }
    }
}

impl Setup {
    fn build(self) -> World {
        let mut catalog = Catalog::default();
        for id in ["anth:m", "oai:m", "oai:emb", "resp:m"] {
            catalog.add_model(id);
        }
        catalog.set_alias("quick", "oai:m");
        let mut prices = PriceTable::builtin();
        prices.version = "test-prices".to_owned();
        let per_mtok = |input, output| Price {
            input_per_mtok: input,
            output_per_mtok: output,
            ..Price::default()
        };
        prices.set("anth:m", per_mtok(3.0, 15.0));
        prices.set("oai:m", per_mtok(0.0, 1_000.0));
        prices.set("oai:emb", per_mtok(2.0, 0.0));
        prices.set("resp:m", per_mtok(1.0, 1.0));
        let trace = InMemoryTraceStore::new();
        let anth = Arc::new(self.anth);
        let oai = Arc::new(self.oai);
        let resp = Arc::new(FakeProvider::new("resp", WireFormat::OpenAiResponses));
        let metrics = Arc::new(RecordingMetrics::default());
        let ledger = Arc::new(SpendLedger::rebuild(
            &self.spend,
            &[],
            &self.keys,
            metis_domain::time::Calendar::default(),
            T0,
        ));
        let spend = SpendGuard::new(SpendGuardParts {
            store: self
                .spend_store
                .unwrap_or_else(|| Arc::clone(&ledger) as Arc<dyn SpendAdmission>),
            outage: self.outage,
            known: SpendLedger::default(),
            metrics: Arc::clone(&metrics) as Arc<dyn Metrics>,
            background: Arc::new(NoBackground),
            process_nonce: 7,
            calendar: metis_domain::time::Calendar::default(),
        });
        let core = Arc::new(GatewayCore::new(CoreParts {
            keys: {
                let ring = KeyRing::default();
                ring.replace_with_policies(self.keys, self.policies);
                Arc::new(ring)
            },
            sink: Arc::new(trace.clone()),
            providers: vec![
                Arc::clone(&anth) as Arc<dyn Provider>,
                Arc::clone(&oai) as Arc<dyn Provider>,
                Arc::clone(&resp) as Arc<dyn Provider>,
            ],
            catalog,
            prices,
            clock: Arc::new(FixedClock),
            ids: Arc::new(CountingIds::default()),
            limiter: Arc::new(Limiter::new(
                self.limits,
                self.key_limiter
                    .unwrap_or_else(|| Arc::new(KeyBuckets::new(1_000))),
            )),
            spend,
            metrics: Arc::clone(&metrics) as Arc<dyn Metrics>,
            trace: Arc::new(NoTracing),
            sessions: Arc::new(InMemorySessionStore::new()),
            patterns: Arc::new(InMemoryPatternStore::new(PatternCaps::default())),
            background: Arc::new(NoBackground),
            tokenizer: Arc::new(FixedTokenizer(self.tokenizer)),
            router: Arc::new(
                Router::new(
                    self.routes
                        .into_iter()
                        .map(|(alias, deployments)| (alias.to_owned(), deployments))
                        .collect(),
                    &[
                        Arc::clone(&anth) as Arc<dyn Provider>,
                        Arc::clone(&oai) as Arc<dyn Provider>,
                        Arc::clone(&resp) as Arc<dyn Provider>,
                    ],
                    self.routing,
                    Arc::new(FixedClock),
                )
                .unwrap(),
            ),
        }));
        World {
            core,
            trace,
            anth,
            oai,
            resp,
            metrics,
            ledger,
        }
    }
}

fn meta(shape: Shape, token: Option<&str>) -> InboundMeta {
    InboundMeta {
        shape,
        token: token.map(str::to_owned),
        peer_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
        forwarded_for: None,
        traceparent: None,
        session_headers: Default::default(),
        agent_session: None,
        forward_headers: vec![("anthropic-beta".to_owned(), "tools-2026".to_owned())],
        query: Some("beta=true".to_owned()),
        no_fallback: false,
    }
}

impl World {
    async fn admit(&self, shape: Shape) -> Admission {
        self.core.admit(meta(shape, Some(TOKEN))).await.unwrap()
    }

    async fn call(&self, shape: Shape, body: Value) -> Result<Reply, GatewayError> {
        let admission = self.admit(shape).await;
        self.core
            .handle(admission, Bytes::from(body.to_string()))
            .await
    }

    async fn count_tokens(&self, shape: Shape, body: &Value) -> TokenCount {
        let admission = self.admit(shape).await;
        self.core
            .count_tokens(admission, Bytes::from(body.to_string()))
            .await
            .unwrap()
    }

    fn events(&self) -> Vec<EventRow> {
        self.trace.rows()
    }

    fn types(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.event_type).collect()
    }

    fn the(&self, event_type: &str) -> (EventRow, Value) {
        let rows: Vec<EventRow> = self
            .events()
            .into_iter()
            .filter(|e| e.event_type == event_type)
            .collect();
        assert_eq!(rows.len(), 1, "one {event_type}: {:?}", self.types());
        let payload = serde_json::from_str(&rows[0].payload_json).unwrap();
        (rows[0].clone(), payload)
    }

    fn count(&self, event_type: &str) -> usize {
        self.types().iter().filter(|t| *t == event_type).count()
    }

    fn reserved(&self, account: &str) -> f64 {
        self.ledger
            .snapshot(account, metis_domain::time::Calendar::default(), T0)
            .reserved_usd
    }
}

/// (day spend, reserved) of `account`.
fn spend_of(w: &World, account: &str) -> (f64, f64) {
    let s = w
        .ledger
        .snapshot(account, metis_domain::time::Calendar::default(), T0);
    (s.day_usd, s.reserved_usd)
}

fn json_of(reply: Reply) -> Value {
    match reply {
        Reply::Json(b) => serde_json::from_slice(&b).unwrap(),
        Reply::Stream(_) => panic!("expected a JSON reply"),
    }
}

async fn frames_of(reply: Reply) -> String {
    match reply {
        Reply::Stream(s) => {
            let chunks: Vec<Bytes> = s.collect().await;
            chunks
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        }
        Reply::Json(_) => panic!("expected a stream"),
    }
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

/// A streamed Chat Completions request for `oai:m`.
fn chat_stream(max_tokens: Option<u64>) -> Value {
    let mut body = chat("oai:m");
    body["stream"] = json!(true);
    if let Some(n) = max_tokens {
        body["max_tokens"] = json!(n);
    }
    body
}

fn messages(model: &str) -> Value {
    json!({"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]})
}

fn chat_answer() -> Value {
    json!({"id": "c1", "object": "chat.completion", "model": "m",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
}

fn messages_answer() -> Value {
    json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
           "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
           "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 5}})
}

const CHUNK_1: &str = "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"he\"}}]}\n\n";
const CHUNK_2: &str = "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"llo\"},\"finish_reason\":\"stop\"}]}\n\n";
const USAGE_CHUNK: &str = "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

// ---------------------------------------------------------------------------------------
// 1. Rate limit before auth
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_rate_limited_request_is_refused_before_it_is_authenticated() {
    let w = Setup {
        limits: RateLimitConfig {
            enabled: true,
            per_key_rpm: 1,
            ..RateLimitConfig::default()
        },
        ..Setup::default()
    }
    .build();
    // The first request with a wrong token passes the limiter and fails authentication.
    let first = w.core.admit(meta(Shape::OpenAi, Some("gw_wrong"))).await;
    assert_eq!(first.unwrap_err(), GatewayError::InvalidApiKey);
    assert_eq!(w.count("gateway.auth_failed"), 1);
    // The second one is denied by its bucket: no authentication, so no auth event.
    let second = w.core.admit(meta(Shape::OpenAi, Some("gw_wrong"))).await;
    match second.unwrap_err() {
        GatewayError::RateLimited { scope, rpm, .. } => {
            assert_eq!((scope, rpm), ("per_key", 1));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(w.count("gateway.auth_failed"), 1, "{:?}", w.types());
    assert_eq!(*w.metrics.auth_failures.lock().unwrap(), ["invalid_token"]);
    let (_, limited) = w.the("gateway.rate_limited");
    assert_eq!(limited["scope"], "per_key");
    assert_eq!(limited["token_hash_prefix"], token_fingerprint("gw_wrong"));
}

#[tokio::test]
async fn a_revoked_key_over_the_ip_budget_gets_429_not_401() {
    let w = Setup {
        keys: vec![
            key("gk_live", TOKEN, json!({})),
            key("gk_rev", "gw_revoked", json!({"status": "revoked"})),
        ],
        limits: RateLimitConfig {
            enabled: true,
            per_ip_rpm: 1,
            ..RateLimitConfig::default()
        },
        ..Setup::default()
    }
    .build();
    w.admit(Shape::Anthropic).await;
    let err = w
        .core
        .admit(meta(Shape::Anthropic, Some("gw_revoked")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            GatewayError::RateLimited {
                scope: "per_ip",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.status(), 429);
    assert_eq!(w.count("gateway.auth_failed"), 0);
    assert!(w.metrics.auth_failures.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// 2. Authentication envelopes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn each_auth_failure_has_its_error_and_one_auth_failed_event() {
    let w = Setup {
        keys: vec![
            key("gk_live", TOKEN, json!({})),
            key(
                "gk_rev",
                "gw_revoked",
                json!({"status": "revoked", "revoked_at": "2026-01-01T00:00:00Z"}),
            ),
            key(
                "gk_old",
                "gw_rotated",
                json!({"grace_period_until": "2026-02-01T00:00:00Z"}),
            ),
        ],
        ..Setup::default()
    }
    .build();
    let cases = [
        (
            Shape::OpenAi,
            None,
            GatewayError::InvalidApiKey,
            "missing_token",
        ),
        (
            Shape::Anthropic,
            Some("gw_unknown"),
            GatewayError::InvalidApiKey,
            "invalid_token",
        ),
        (
            Shape::OpenAi,
            Some("gw_revoked"),
            GatewayError::KeyRevoked {
                key_id: "gk_rev".to_owned(),
                revoked_at: Some("2026-01-01T00:00:00Z".to_owned()),
            },
            "key_revoked",
        ),
        (
            Shape::Responses,
            Some("gw_rotated"),
            GatewayError::KeyRevoked {
                key_id: "gk_old".to_owned(),
                // A lapsed grace period reports when it ended.
                revoked_at: Some("2026-02-01T00:00:00+00:00".to_owned()),
            },
            "key_revoked",
        ),
    ];
    for (i, (shape, token, expected, reason)) in cases.into_iter().enumerate() {
        let err = w.core.admit(meta(shape, token)).await.unwrap_err();
        assert_eq!(err, expected, "case {i}");
        assert_eq!(err.status(), 401);
        let events: Vec<Value> = w
            .events()
            .iter()
            .filter(|e| e.event_type == "gateway.auth_failed")
            .map(|e| serde_json::from_str(&e.payload_json).unwrap())
            .collect();
        assert_eq!(events.len(), i + 1, "one event per failure");
        let ev = &events[i];
        assert_eq!(ev["reason"], reason);
        assert_eq!(ev["inbound_shape"], shape.as_str());
        assert_eq!(
            ev["token_hash_prefix"],
            token.map_or(Value::Null, |t| json!(token_fingerprint(t)))
        );
        let key_id = match &expected {
            GatewayError::KeyRevoked { key_id, .. } => json!(key_id),
            _ => Value::Null,
        };
        assert_eq!(ev["gateway_key_id"], key_id);
    }
    let ok = w.admit(Shape::OpenAi).await;
    assert_eq!(ok.key.key_id, "gk_live");
    assert_eq!(w.count("gateway.auth_failed"), 4);
    assert_eq!(w.metrics.auth_failures.lock().unwrap().len(), 4);
}

/// A key is admitted strictly before its `expires_at` and refused at and after it (the
/// clock is read per request), with 401 `key_expired`, a `key_expired` auth failure in the
/// metrics and one `gateway.auth_failed` event each.
#[tokio::test]
async fn an_expiring_key_is_valid_strictly_before_its_expiry() {
    use metis_domain::time::format_iso;
    let w = Setup {
        keys: vec![
            key(
                "gk_before",
                "gw_before",
                json!({"expires_at": format_iso(T0 + 1)}),
            ),
            key("gk_at", "gw_at", json!({"expires_at": format_iso(T0)})),
            key(
                "gk_after",
                "gw_after",
                json!({"expires_at": format_iso(T0 - 1)}),
            ),
        ],
        ..Setup::default()
    }
    .build();
    let ok = w
        .core
        .admit(meta(Shape::OpenAi, Some("gw_before")))
        .await
        .unwrap();
    assert_eq!(ok.key.key_id, "gk_before");
    for (i, (id, token, at)) in [("gk_at", "gw_at", T0), ("gk_after", "gw_after", T0 - 1)]
        .into_iter()
        .enumerate()
    {
        let err = w
            .core
            .admit(meta(Shape::Anthropic, Some(token)))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            GatewayError::KeyExpired {
                key_id: id.to_owned(),
                expires_at: format_iso(at),
            }
        );
        assert_eq!(err.status(), 401);
        assert_eq!(err.code(), "key_expired");
        assert_eq!(w.metrics.auth_failures.lock().unwrap()[i], "key_expired");
    }
    let reasons: Vec<Value> = w
        .events()
        .iter()
        .filter(|e| e.event_type == "gateway.auth_failed")
        .map(|e| serde_json::from_str::<Value>(&e.payload_json).unwrap()["reason"].clone())
        .collect();
    assert_eq!(reasons, [json!("key_expired"), json!("key_expired")]);
}

// ---------------------------------------------------------------------------------------
// 3. Spend caps: checked before the body, reserved atomically
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_key_at_its_cap_is_refused_before_the_body_is_read() {
    let w = Setup {
        keys: vec![key("gk_live", TOKEN, json!({"daily_cap_usd": "1.00"}))],
        spend: vec![KeySpend {
            gateway_key_id: "gk_live".to_owned(),
            user_id: None,
            team_id: None,
            day_usd: 1.0,
            month_usd: 1.0,
        }],
        ..Setup::default()
    }
    .build();
    // `admit` sees headers only: the refusal needs no body.
    let err = w
        .core
        .admit(meta(Shape::OpenAi, Some(TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GatewayError::QuotaExceeded {
            scope: "key_daily",
            limit_usd: "1.00".to_owned(),
            current_usd: "1.00".to_owned(),
        }
    );
    assert_eq!(err.status(), 429);
    // The first refusal at the cap also raises the 100 % alert (issue 20), once.
    assert_eq!(w.types(), ["quota.alert", "gateway.quota_exceeded"]);
    let (_, alert) = w.the("quota.alert");
    assert_eq!(
        (&alert["scope"], &alert["severity"]),
        (&json!("key_daily"), &json!("exhausted"))
    );
    let (_, ev) = w.the("gateway.quota_exceeded");
    assert_eq!(ev["gateway_key_id"], "gk_live");
    assert_eq!(ev["scope"], "key_daily");
    assert!(w.oai.requests().is_empty());
}

/// A team's budget is shared by its keys: a key with no cap of its own is refused once the
/// team's monthly spend (seeded from another key's trace spend) reaches the team cap, and the
/// refusal names the team's cap in both API shapes.
#[tokio::test]
async fn a_key_of_a_team_at_its_monthly_budget_is_refused_naming_the_team_cap() {
    const OTHER: &str = "gw-other-token-000000000000000000000";
    let w = Setup {
        keys: vec![
            key("gk_live", TOKEN, json!({"team_id": "platform"})),
            key("gk_other", OTHER, json!({"team_id": "platform"})),
        ],
        // The team's earlier spend, recorded on gk_other's calls.
        spend: vec![KeySpend {
            gateway_key_id: "gk_other".to_owned(),
            user_id: None,
            team_id: Some("platform".to_owned()),
            day_usd: 0.0,
            month_usd: 1.0,
        }],
        policies: serde_json::from_value(json!({
            "budgets": [{"scope": "team", "id": "platform", "monthly_usd": "1.00"}]
        }))
        .unwrap(),
        ..Setup::default()
    }
    .build();
    let err = w
        .core
        .admit(meta(Shape::OpenAi, Some(TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GatewayError::QuotaExceeded {
            scope: "team_monthly",
            limit_usd: "1.00".to_owned(),
            current_usd: "1.00".to_owned(),
        }
    );
    for shape in [Shape::OpenAi, Shape::Anthropic] {
        let body = err.render(shape).body;
        assert_eq!(body["error"]["scope"], "team_monthly", "{shape:?}: {body}");
        assert_eq!(body["error"]["limit_usd"], "1.00");
        assert_eq!(body["error"]["current_usd"], "1.00");
    }
    assert_eq!(w.types(), ["quota.alert", "gateway.quota_exceeded"]);
    let (_, alert) = w.the("quota.alert");
    assert_eq!(alert["scope"], "team_monthly");
    assert_eq!(alert["severity"], "exhausted");
    let (_, ev) = w.the("gateway.quota_exceeded");
    assert_eq!(
        (&ev["scope"], &ev["team_id"]),
        (&json!("team_monthly"), &json!("platform"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_cannot_overshoot_a_cap() {
    let w = Setup {
        keys: vec![key("gk_live", TOKEN, json!({"daily_cap_usd": "1.00"}))],
        ..Setup::default()
    }
    .build();
    for _ in 0..8 {
        w.oai.answer(Scripted::Stream(vec![Step::Hang]));
    }
    // Eight requests at once, each reserving 0.30 (300 output tokens at 1 000 USD/Mtok)
    // against a 1.00 cap; their streams stay open, so nothing is settled meanwhile.
    let body = chat_stream(Some(300)).to_string();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let core = Arc::clone(&w.core);
            let body = Bytes::from(body.clone());
            tokio::spawn(async move {
                let admission = core.admit(meta(Shape::OpenAi, Some(TOKEN))).await?;
                core.handle(admission, body).await
            })
        })
        .collect();
    let mut streams = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(reply) => streams.push(reply),
            // Refused at the pre-body check or at the reservation, whichever came first.
            Err(GatewayError::QuotaExceeded { scope, .. }) => {
                assert_eq!(scope, "key_daily");
                refused += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    // 0, 0.3, 0.6 and 0.9 are under 1.00: four run, the other four never reach the upstream.
    assert_eq!((streams.len(), refused), (4, 4));
    assert_eq!(w.oai.requests().len(), 4);
    assert!((w.reserved("gk_live") - 1.2).abs() < 1e-9);
    assert_eq!(w.count("llm.call_started"), 4);
    // Ending the streams (client gone) releases every reservation.
    drop(streams);
    assert_eq!(w.reserved("gk_live"), 0.0);
    assert_eq!(w.count("llm.call_failed"), 4);
}

/// Two keys on one spend store: `gk_live` capped, `gk_free` not.
fn capped_and_free(store: &FakeSpendStore, outage: OutagePolicy) -> World {
    Setup {
        keys: vec![
            key("gk_live", TOKEN, json!({"daily_cap_usd": "5.00"})),
            key("gk_free", "gw_free_token", json!({})),
        ],
        spend_store: Some(Arc::new(store.clone())),
        outage,
        ..Setup::default()
    }
    .build()
}

#[tokio::test]
async fn while_the_spend_store_is_down_a_capped_key_gets_503_and_a_key_without_caps_is_served() {
    let store = FakeSpendStore::new();
    let w = capped_and_free(&store, OutagePolicy::FailClosed);
    store.set_outage(FakeOutage::Down);
    let err = w
        .core
        .admit(meta(Shape::Anthropic, Some(TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GatewayError::SpendStoreUnavailable {
            key_id: "gk_live".to_owned()
        }
    );
    let rendered = err.render(Shape::Anthropic);
    assert_eq!(rendered.status, 503);
    assert!(
        rendered.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("spend store unavailable"),
        "{}",
        rendered.body
    );
    assert!(w.anth.requests().is_empty() && w.oai.requests().is_empty());
    // The key without caps is never refused for it.
    w.oai.answer(Scripted::Json(chat_answer()));
    let admission = w
        .core
        .admit(meta(Shape::OpenAi, Some("gw_free_token")))
        .await
        .unwrap();
    let reply = w
        .core
        .handle(admission, Bytes::from(chat("oai:m").to_string()))
        .await
        .unwrap();
    assert_eq!(json_of(reply)["object"], "chat.completion");
    assert_eq!(*w.metrics.outages.lock().unwrap(), ["spend/refused"]);
}

#[tokio::test]
async fn under_fail_open_a_capped_key_is_served_while_the_spend_store_is_down() {
    let store = FakeSpendStore::new();
    let w = capped_and_free(&store, OutagePolicy::FailOpen);
    store.set_outage(FakeOutage::Down);
    w.oai.answer(Scripted::Json(chat_answer()));
    let reply = w.call(Shape::OpenAi, chat("oai:m")).await.unwrap();
    assert_eq!(json_of(reply)["object"], "chat.completion");
    // The pre-body check and the reservation were both decided on the local balance, and
    // the call's cost waits to be replayed into the store.
    assert_eq!(
        *w.metrics.outages.lock().unwrap(),
        ["spend/local", "spend/local", "spend_settlement/deferred"]
    );
    assert_eq!(w.count("llm.call_completed"), 1);
}

#[tokio::test]
async fn a_per_key_limit_on_a_shared_limiter_holds_across_two_gateways() {
    let shared = FakeKeyLimiter::new(100);
    let replica = || {
        Setup {
            limits: RateLimitConfig {
                enabled: true,
                per_key_rpm: 3,
                ..RateLimitConfig::default()
            },
            key_limiter: Some(Arc::new(shared.clone())),
            ..Setup::default()
        }
        .build()
    };
    let (a, b) = (replica(), replica());
    let mut admitted = 0;
    for w in [&a, &b, &a, &b, &a, &b] {
        if w.core.admit(meta(Shape::OpenAi, Some(TOKEN))).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3, "3 rpm for the key, whichever gateway it asks");
    // A minute later (the store's clock) the bucket is full again.
    shared.advance(60_000_000);
    assert!(b.core.admit(meta(Shape::OpenAi, Some(TOKEN))).await.is_ok());
}

#[tokio::test]
async fn a_shared_limiter_that_does_not_answer_leaves_the_limit_to_this_process_s_buckets() {
    let shared = FakeKeyLimiter::new(100);
    shared.set_outage(FakeOutage::Down);
    let w = Setup {
        limits: RateLimitConfig {
            enabled: true,
            per_key_rpm: 1,
            ..RateLimitConfig::default()
        },
        key_limiter: Some(Arc::new(shared.clone())),
        ..Setup::default()
    }
    .build();
    assert!(w.core.admit(meta(Shape::OpenAi, Some(TOKEN))).await.is_ok());
    match w.core.admit(meta(Shape::OpenAi, Some(TOKEN))).await {
        Err(GatewayError::RateLimited { scope, rpm, .. }) => {
            assert_eq!((scope, rpm), ("per_key", 1));
        }
        other => panic!("expected the local bucket to deny, got {other:?}"),
    }
    assert_eq!(
        shared.calls(),
        2,
        "the shared store was asked first each time"
    );
    assert_eq!(
        *w.metrics.outages.lock().unwrap(),
        ["rate_limit/local", "rate_limit/local"]
    );
}

// ---------------------------------------------------------------------------------------
// 4. Allow-list
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_model_outside_the_allow_list_is_403_with_only_route_decided() {
    let w = Setup {
        keys: vec![key(
            "gk_live",
            TOKEN,
            json!({"allowed_models": ["anth:m", "quick"]}),
        )],
        ..Setup::default()
    }
    .build();
    let err = w
        .call(Shape::Anthropic, messages("resp:m"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        GatewayError::ModelNotAllowed {
            model: "resp:m".to_owned(),
            key_id: "gk_live".to_owned(),
            scope: None,
        }
    );
    assert_eq!(err.status(), 403);
    assert_eq!(w.types(), ["route.decided"]);
    assert!(w.resp.requests().is_empty());
    // An alias on the list allows the model it names.
    w.oai.answer(Scripted::Json(chat_answer()));
    assert!(w.call(Shape::OpenAi, chat("oai:m")).await.is_ok());
}

// ---------------------------------------------------------------------------------------
// 5. Retries only before the first byte
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn retries_happen_in_the_provider_before_the_first_byte_and_are_recorded() {
    // The provider failed twice and then answered (its own retry loop, before any byte).
    let mut oai = FakeProvider::new("oai", WireFormat::OpenAiChat);
    oai.retries = 2;
    let w = Setup {
        oai,
        ..Setup::default()
    }
    .build();
    w.oai.answer(Scripted::Json(chat_answer()));
    let reply = w.call(Shape::OpenAi, chat("oai:m")).await.unwrap();
    assert_eq!(json_of(reply)["choices"][0]["message"]["content"], "hi");
    assert_eq!(w.oai.requests().len(), 1, "the core sends once");
    let (_, done) = w.the("llm.call_completed");
    assert_eq!(done["retry_count"], 2);

    // Retries used up before the first byte: the client gets the failure, the core does not
    // send again.
    w.oai.answer(Scripted::Error {
        status: 503,
        body: json!({"error": {"type": "server_error", "message": "busy"}}),
    });
    let err = w.call(Shape::OpenAi, chat("oai:m")).await.unwrap_err();
    assert!(
        matches!(err, GatewayError::UpstreamRelayed { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(w.oai.requests().len(), 2);
    let (_, failed) = w.the("llm.call_failed");
    assert_eq!(failed["retry_count"], 2);
    assert_eq!(failed["error_class"], "server_error");
}

#[tokio::test]
async fn a_stream_that_fails_after_its_first_chunk_is_not_retried_and_ends_in_an_error_frame() {
    let w = Setup::default().build();
    w.oai
        .answer(Scripted::Stream(vec![Step::Chunk(CHUNK_1), Step::Fail]));
    let body = chat_stream(None);
    let reply = w.call(Shape::OpenAi, body).await.unwrap();
    let frames = frames_of(reply).await;
    // The first chunk reached the client (model echoed as the client wrote it)…
    assert!(frames.starts_with("data: {"), "{frames}");
    assert!(frames.contains("\"content\":\"he\""), "{frames}");
    assert!(frames.contains("\"model\":\"oai:m\""), "{frames}");
    // …then one error frame, and never a `[DONE]` that would fake a complete answer.
    let last = frames.trim_end().rsplit("\n\n").next().unwrap();
    let err: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert!(err["error"].is_object(), "{last}");
    assert!(!frames.contains("[DONE]"));
    assert_eq!(w.oai.requests().len(), 1, "no retry after the first byte");
    assert_eq!(w.count("llm.call_completed"), 0);
    let (_, failed) = w.the("llm.call_failed");
    assert_eq!(failed["error_class"], "network");
}

// ---------------------------------------------------------------------------------------
// 6. Events per outcome
// ---------------------------------------------------------------------------------------

/// The call events of the trace, in order, with each one's parent.
fn call_chain(w: &World) -> Vec<(String, Option<String>, String)> {
    w.events()
        .into_iter()
        .filter(|e| {
            [
                "route.decided",
                "llm.call_started",
                "llm.call_completed",
                "llm.call_failed",
                "turn.completed",
            ]
            .contains(&e.event_type.as_str())
        })
        .map(|e| (e.event_type, e.parent_event_id, e.id))
        .collect()
}

/// The events of a call that completed, and of one that failed or was cancelled.
const COMPLETED: [&str; 4] = [
    "route.decided",
    "llm.call_started",
    "llm.call_completed",
    "turn.completed",
];
const FAILED: [&str; 4] = [
    "route.decided",
    "llm.call_started",
    "llm.call_failed",
    "turn.completed",
];

fn assert_linked(chain: &[(String, Option<String>, String)], types: &[&str]) {
    let got: Vec<&str> = chain.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(got, types);
    // Each event after the route names the one before it as its parent.
    for pair in chain.windows(2) {
        assert_eq!(pair[1].1.as_deref(), Some(pair[0].2.as_str()), "{pair:?}");
    }
}

#[tokio::test]
async fn a_successful_call_records_route_start_completion_and_turn() {
    let w = Setup::default().build();
    w.anth.answer(Scripted::Json(messages_answer()));
    let reply = w.call(Shape::Anthropic, messages("anth:m")).await.unwrap();
    assert_eq!(json_of(reply)["content"][0]["text"], "hi");
    assert_linked(&call_chain(&w), &COMPLETED);
    let (_, done) = w.the("llm.call_completed");
    assert_eq!(done["model"], "anth:m");
    assert_eq!(
        (done["input_tokens"].clone(), done["output_tokens"].clone()),
        (json!(10), json!(5))
    );
    // 10 × 3 + 5 × 15 USD per Mtok.
    assert!((done["cost_usd"].as_f64().unwrap() - 0.000_105).abs() < 1e-12);
    assert_eq!(done["pricing_version"], "test-prices");
    assert_eq!(done["gateway_key_id"], "gk_live");
    assert_eq!(done["inbound_shape"], "anthropic");
    let (_, turn) = w.the("turn.completed");
    assert_eq!(turn["stop_reason"], "end_turn");
    assert_eq!(*w.metrics.upstream_calls.lock().unwrap(), ["ok"]);
    let (day, reserved) = spend_of(&w, "gk_live");
    assert!((day - 0.000_105).abs() < 1e-12 && reserved == 0.0);
}

#[tokio::test]
async fn a_completed_stream_records_the_usage_of_its_last_frame() {
    let w = Setup::default().build();
    w.oai.answer(Scripted::Stream(vec![
        Step::Chunk(CHUNK_1),
        Step::Chunk(CHUNK_2),
        Step::Chunk(USAGE_CHUNK),
        Step::Chunk(DONE),
    ]));
    let body = chat_stream(None);
    let frames = frames_of(w.call(Shape::OpenAi, body).await.unwrap()).await;
    assert!(frames.ends_with("data: [DONE]\n\n"), "{frames}");
    // The client did not ask for usage: the chunk the gateway forced is not shown to it.
    assert!(!frames.contains("\"usage\""), "{frames}");
    assert_linked(&call_chain(&w), &COMPLETED);
    let (_, done) = w.the("llm.call_completed");
    assert_eq!(
        (done["input_tokens"].clone(), done["output_tokens"].clone()),
        (json!(10), json!(5))
    );
    let (_, started) = w.the("llm.call_started");
    assert_eq!(started["stream"], true);
}

#[tokio::test]
async fn an_upstream_error_records_call_failed_and_an_error_turn() {
    let w = Setup::default().build();
    w.anth.answer(Scripted::Error {
        status: 529,
        body: json!({"type": "error", "error": {"type": "overloaded_error", "message": "x"}}),
    });
    let err = w
        .call(Shape::Anthropic, messages("anth:m"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, GatewayError::UpstreamRelayed { .. }),
        "{err:?}"
    );
    assert_linked(&call_chain(&w), &FAILED);
    let (_, failed) = w.the("llm.call_failed");
    assert_eq!(failed["error_class"], "rate_limit");
    assert_eq!(
        failed["error_message_redacted"],
        "upstream anth returned HTTP 529 (overloaded_error)"
    );
    let (_, turn) = w.the("turn.completed");
    assert_eq!(turn["stop_reason"], "error");
    assert_eq!(w.reserved("gk_live"), 0.0);
}

#[tokio::test]
async fn a_stream_the_client_abandons_records_a_cancelled_call_with_partial_usage() {
    // A capped key, so the stream holds a reservation (keys without caps reserve nothing).
    let w = Setup {
        keys: vec![key("gk_live", TOKEN, json!({"daily_cap_usd": "100"}))],
        ..Setup::default()
    }
    .build();
    w.oai
        .answer(Scripted::Stream(vec![Step::Chunk(CHUNK_1), Step::Hang]));
    let body = chat_stream(Some(300));
    let Reply::Stream(mut s) = w.call(Shape::OpenAi, body).await.unwrap() else {
        panic!("expected a stream");
    };
    let first = s.next().await.unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"he\""));
    assert!(
        (w.reserved("gk_live") - 0.3).abs() < 1e-9,
        "held while streaming"
    );
    drop(s);
    assert_linked(&call_chain(&w), &FAILED);
    let (_, failed) = w.the("llm.call_failed");
    assert_eq!(failed["error_class"], "cancelled");
    // No usage frame arrived: the gateway's estimate is charged (prompt + relayed text).
    assert_eq!(failed["usage_estimated"], true);
    assert_eq!(failed["output_tokens"], 1);
    let (_, turn) = w.the("turn.completed");
    assert_eq!(turn["stop_reason"], "cancelled");
    let (day, reserved) = spend_of(&w, "gk_live");
    assert_eq!(reserved, 0.0);
    assert!(
        (day - 0.001).abs() < 1e-12,
        "1 output token at 1 000 USD/Mtok: {day}"
    );
}

#[tokio::test]
async fn a_client_gone_before_the_answer_head_is_a_cancelled_call_charged_its_estimate() {
    let w = Setup::default().build();
    w.anth.answer(Scripted::Silence);
    let admission = w.admit(Shape::Anthropic).await;
    let body = Bytes::from(messages("anth:m").to_string());
    // One poll runs the call up to the upstream, which never answers; then the client is gone.
    let pending = futures_util::FutureExt::now_or_never(w.core.handle(admission, body));
    assert!(pending.is_none());
    assert_eq!(w.anth.requests().len(), 1);
    assert_linked(&call_chain(&w), &FAILED);
    let (_, failed) = w.the("llm.call_failed");
    assert_eq!(failed["error_class"], "cancelled");
    assert_eq!(failed["usage_estimated"], true);
    let (_, started) = w.the("llm.call_started");
    assert_eq!(failed["input_tokens"], started["estimated_input_tokens"]);
    let (day, reserved) = spend_of(&w, "gk_live");
    assert_eq!(reserved, 0.0);
    assert!(day > 0.0, "the prompt was sent: its estimate is charged");
}

#[tokio::test]
async fn a_body_the_upstream_wire_cannot_express_is_400_before_anything_is_reserved() {
    let w = Setup::default().build();
    let body = json!({"model": "oai:m", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
    ]}]});
    let err = w.call(Shape::Anthropic, body).await.unwrap_err();
    assert_eq!(
        err,
        GatewayError::InvalidRequest {
            message:
                "content block type 'document' cannot be sent to an OpenAI-compatible upstream"
                    .to_owned()
        }
    );
    assert_eq!(w.types(), ["route.decided"]);
    assert!(w.oai.requests().is_empty());
    assert_eq!(w.reserved("gk_live"), 0.0);
}

// ---------------------------------------------------------------------------------------
// 7. Same shape vs translated (issue 11)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn same_shape_calls_forward_headers_query_and_unknown_fields_translated_ones_do_not() {
    let w = Setup::default().build();
    w.anth.answer(Scripted::Json(messages_answer()));
    w.anth.answer(Scripted::Json(messages_answer()));
    let mut native = messages("anth:m");
    native["future_field"] = json!({"kept": true});
    w.call(Shape::Anthropic, native).await.unwrap();
    let reply = w.call(Shape::OpenAi, chat("anth:m")).await.unwrap();
    assert_eq!(json_of(reply)["choices"][0]["message"]["content"], "hi");

    let sent = w.anth.requests();
    assert_eq!(sent[0].wire, WireFormat::AnthropicMessages);
    assert_eq!(
        sent[0].headers,
        [("anthropic-beta".to_owned(), "tools-2026".to_owned())]
    );
    assert_eq!(sent[0].query.as_deref(), Some("beta=true"));
    assert_eq!(w.anth.body(0)["future_field"], json!({"kept": true}));
    assert_eq!(w.anth.body(0)["model"], "m");
    // Translated: the client's provider headers mean nothing to this upstream.
    assert_eq!(sent[1].wire, WireFormat::AnthropicMessages);
    assert!(sent[1].headers.is_empty());
    assert_eq!(sent[1].query, None);
    assert_eq!(w.anth.body(1)["max_tokens"], 4096);
}

#[tokio::test]
async fn upstream_errors_are_relayed_to_same_shape_clients_and_summarised_for_others() {
    let w = Setup::default().build();
    let upstream = json!({"type": "error",
                          "error": {"type": "invalid_request_error", "message": "echo of the prompt"}});
    for _ in 0..2 {
        w.anth.answer(Scripted::Error {
            status: 400,
            body: upstream.clone(),
        });
    }
    let relayed = w
        .call(Shape::Anthropic, messages("anth:m"))
        .await
        .unwrap_err();
    assert_eq!(
        relayed,
        GatewayError::UpstreamRelayed {
            class: ErrorClass::InvalidRequest,
            provider: "anth".to_owned(),
            status: 400,
            body: upstream,
            retry_after_secs: None,
        }
    );
    let translated = w.call(Shape::OpenAi, chat("anth:m")).await.unwrap_err();
    assert_eq!(
        translated,
        GatewayError::Upstream {
            class: ErrorClass::InvalidRequest,
            provider: "anth".to_owned(),
            message: "upstream anth returned HTTP 400 (invalid_request_error)".to_owned(),
            retry_after_secs: None,
        }
    );
    assert!(!translated.message().contains("echo of the prompt"));
}

#[tokio::test]
async fn a_responses_continuation_is_refused_when_it_must_be_translated() {
    let w = Setup::default().build();
    let body = json!({"model": "oai:m", "input": "and then?", "previous_response_id": "resp_1"});
    let err = w.call(Shape::Responses, body).await.unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(
        matches!(&err, GatewayError::InvalidRequest { message } if message.contains("'previous_response_id' cannot be served")),
        "{err:?}"
    );
    assert_eq!(w.types(), ["route.decided"]);
    assert!(w.oai.requests().is_empty());
    // A Responses upstream stores the conversation: the continuation goes through as sent.
    w.resp.answer(Scripted::Json(json!({
        "id": "resp_2", "object": "response", "status": "completed", "model": "m",
        "output": [{"type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": "ok"}]}],
        "usage": {"input_tokens": 3, "output_tokens": 1}})));
    let body = json!({"model": "resp:m", "input": "and then?", "previous_response_id": "resp_1"});
    let reply = json_of(w.call(Shape::Responses, body).await.unwrap());
    assert_eq!(reply["model"], "resp:m");
    assert_eq!(w.resp.body(0)["previous_response_id"], "resp_1");
}

// ---------------------------------------------------------------------------------------
// 8. Token counts
// ---------------------------------------------------------------------------------------

const NO_CALL_EVENTS: [&str; 4] = [
    "route.decided",
    "llm.call_started",
    "llm.call_completed",
    "llm.call_failed",
];

/// A world whose Anthropic upstream serves `count_tokens`.
fn counting_anthropic_upstream() -> World {
    Setup {
        anth: FakeProvider::new("anth", WireFormat::AnthropicMessages)
            .serving(WireFormat::AnthropicMessages, Operation::CountTokens),
        ..Setup::default()
    }
    .build()
}

#[tokio::test]
async fn counts_are_exact_when_the_upstream_counts_and_are_never_recorded_as_calls() {
    let w = counting_anthropic_upstream();
    w.anth.answer(Scripted::Json(json!({"input_tokens": 42})));
    // A count body has no `max_tokens`; the client's body goes upstream as it wrote it.
    let body = json!({"model": "anth:m", "messages": [{"role": "user", "content": "hello"}]});
    let count = w.count_tokens(Shape::Anthropic, &body).await;
    assert_eq!(count.method, CountMethod::Exact);
    assert_eq!(
        serde_json::from_slice::<Value>(&count.body).unwrap(),
        json!({"input_tokens": 42})
    );
    let sent = &w.anth.requests()[0];
    assert_eq!(
        (sent.wire, sent.op),
        (WireFormat::AnthropicMessages, Operation::CountTokens)
    );
    assert_eq!(w.anth.body(0).get("max_tokens"), None);
    assert_eq!(w.anth.body(0)["model"], "m");
    // The client's own endpoint: its provider headers and query go along.
    assert_eq!(sent.headers.len(), 1);
    assert_eq!(sent.query.as_deref(), Some("beta=true"));
    for t in NO_CALL_EVENTS {
        assert_eq!(w.count(t), 0, "{t}");
    }
    assert_eq!(*w.metrics.token_counts.lock().unwrap(), ["exact"]);
}

#[tokio::test]
async fn a_count_is_translated_to_the_count_endpoint_the_upstream_serves() {
    let w = counting_anthropic_upstream();
    w.anth.answer(Scripted::Json(json!({"input_tokens": 11})));
    let body = json!({"model": "anth:m", "instructions": "be brief", "input": "hello",
                      "max_output_tokens": 50, "stream": true, "temperature": 0.5});
    let count = w.count_tokens(Shape::Responses, &body).await;
    assert_eq!(count.method, CountMethod::Exact);
    // The answer in the client's shape…
    assert_eq!(
        serde_json::from_slice::<Value>(&count.body).unwrap(),
        json!({"object": "response.input_tokens", "input_tokens": 11})
    );
    // …from Anthropic's count endpoint, with only the fields that endpoint accepts.
    let sent = &w.anth.requests()[0];
    assert_eq!(
        (sent.wire, sent.op),
        (WireFormat::AnthropicMessages, Operation::CountTokens)
    );
    assert!(sent.headers.is_empty() && sent.query.is_none());
    let upstream = w.anth.body(0);
    let mut fields: Vec<&str> = upstream
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["messages", "model", "system"]);
    assert!(w.types().is_empty());
}

#[tokio::test]
async fn counts_fall_back_to_the_tokenizer_then_to_the_estimate() {
    let body = json!({"model": "oai:m", "input": "a question of some length"});
    for (tokenizer, method) in [
        (Some(7), CountMethod::Tokenizer),
        (None, CountMethod::Estimate),
    ] {
        let w = Setup {
            tokenizer,
            ..Setup::default()
        }
        .build();
        let count = w.count_tokens(Shape::Responses, &body).await;
        assert_eq!(count.method, method);
        let v: Value = serde_json::from_slice(&count.body).unwrap();
        assert_eq!(v["object"], "response.input_tokens");
        let expected = tokenizer.unwrap_or_else(|| {
            metis_domain::responses::parse_request(body.to_string().as_bytes())
                .unwrap()
                .request
                .estimate_input_tokens()
        });
        assert_eq!(v["input_tokens"], expected);
        assert!(w.oai.requests().is_empty(), "no upstream can count");
        assert!(w.types().is_empty(), "{:?}", w.types());
        assert_eq!(*w.metrics.token_counts.lock().unwrap(), [method.as_str()]);
    }
}

// ---------------------------------------------------------------------------------------
// 9. Embeddings
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn embeddings_are_priced_on_the_upstream_count_and_recorded_like_calls() {
    let oai = FakeProvider::new("oai", WireFormat::OpenAiChat)
        .serving(WireFormat::OpenAiChat, Operation::Embeddings);
    let w = Setup {
        oai,
        ..Setup::default()
    }
    .build();
    w.oai.answer(Scripted::Json(json!({
        "object": "list", "model": "emb-2026",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "usage": {"prompt_tokens": 1000, "total_tokens": 1000}})));
    let admission = w.admit(Shape::OpenAi).await;
    let body = json!({"model": "oai:emb", "input": "some text", "dimensions": 2});
    let out = w
        .core
        .embeddings(admission, Bytes::from(body.to_string()))
        .await
        .unwrap();
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out["model"], "oai:emb");
    assert_eq!(out["data"][0]["embedding"], json!([0.1, 0.2]));
    let sent = &w.oai.requests()[0];
    assert_eq!(
        (sent.wire, sent.op),
        (WireFormat::OpenAiChat, Operation::Embeddings)
    );
    assert_eq!(
        w.oai.body(0),
        json!({"model": "emb", "input": "some text", "dimensions": 2})
    );
    assert_linked(&call_chain(&w), &COMPLETED);
    let (_, done) = w.the("llm.call_completed");
    assert_eq!(done["input_tokens"], 1000);
    assert_eq!(done["output_tokens"], 0);
    // 1 000 tokens at 2 USD/Mtok.
    assert!((done["cost_usd"].as_f64().unwrap() - 0.002).abs() < 1e-12);
    assert_eq!(done["inbound_shape"], "openai");
    let (day, reserved) = spend_of(&w, "gk_live");
    assert!((day - 0.002).abs() < 1e-12 && reserved == 0.0);
}

// ---------------------------------------------------------------------------------------
// Token limits (tpm)
// ---------------------------------------------------------------------------------------

fn tokens_limited(r: Result<Reply, GatewayError>) -> (&'static str, u32, u64) {
    match r {
        Err(GatewayError::TokenRateLimited {
            scope,
            tpm,
            retry_after_secs,
        }) => (scope, tpm, retry_after_secs),
        Err(e) => panic!("expected a token-limit refusal, got {e:?}"),
        Ok(_) => panic!("expected a token-limit refusal, the call was admitted"),
    }
}

#[tokio::test]
async fn the_estimate_is_the_tokenizer_count_plus_the_default_output_and_is_held_while_streaming() {
    // 1000 tpm (16.7 per second); the tokenizer says 100 input tokens; no max_tokens means
    // 400 output tokens.
    let w = Setup {
        keys: vec![key("gk_live", TOKEN, json!({"tpm": 1000}))],
        tokenizer: Some(100),
        limits: RateLimitConfig {
            tpm_default_output_tokens: 400,
            ..RateLimitConfig::default()
        },
        ..Setup::default()
    }
    .build();
    w.oai
        .answer(Scripted::Stream(vec![Step::Chunk(CHUNK_1), Step::Hang]));
    let Reply::Stream(mut held) = w.call(Shape::OpenAi, chat_stream(None)).await.unwrap() else {
        panic!("expected a stream");
    };
    assert!(held.next().await.is_some());
    // 500 held: 100 + 450 does not fit (50 missing: 3 s), 100 + 350 does.
    let (scope, tpm, secs) = tokens_limited(w.call(Shape::OpenAi, chat_stream(Some(450))).await);
    assert_eq!((scope, tpm), ("key_tpm", 1000));
    assert!((2..=3).contains(&secs), "retry after {secs}s");
    w.oai.answer(Scripted::Json(chat_answer()));
    let mut body = chat("oai:m");
    body["max_tokens"] = json!(350);
    assert!(w.call(Shape::OpenAi, body).await.is_ok());
    // The client hangs up: the stream settles to its estimated usage (~100 + 1), far below
    // 500, so a 100 + 400 call fits again (the JSON call settled to 15 of its 450).
    drop(held);
    w.oai.answer(Scripted::Json(chat_answer()));
    assert!(w.call(Shape::OpenAi, chat("oai:m")).await.is_ok());
}

#[tokio::test]
async fn the_keys_of_a_team_share_its_token_limit_and_a_refusal_names_team_tpm() {
    use metis_domain::budgets::{BudgetPolicy, Policies, ScopeKind};
    const OTHER: &str = "gw_other_token";
    let keys = vec![
        key("gk_live", TOKEN, json!({"team_id": "ml"})),
        key("gk_other", OTHER, json!({"team_id": "ml", "tpm": 100000})),
    ];
    let w = Setup {
        keys: keys.clone(),
        tokenizer: Some(100),
        ..Setup::default()
    }
    .build();
    let policies = Policies {
        budgets: vec![BudgetPolicy {
            scope: ScopeKind::Team,
            id: "ml".to_owned(),
            daily_usd: None,
            weekly_usd: None,
            monthly_usd: None,
            tpm: Some(1200),
            alert_at: None,
            allowed_models: None,
            updated_at: None,
        }],
        ..Policies::default()
    };
    w.core.keys.replace_with_policies(keys, policies);
    w.oai
        .answer(Scripted::Stream(vec![Step::Chunk(CHUNK_1), Step::Hang]));
    let Reply::Stream(mut held) = w
        .call(Shape::OpenAi, chat_stream(Some(1000)))
        .await
        .unwrap()
    else {
        panic!("expected a stream");
    };
    assert!(held.next().await.is_some());
    // The other key has room of its own but not in the team's bucket: 1100 held, 200 asked
    // (100 counted + max_tokens 100).
    let admission = w
        .core
        .admit(meta(Shape::Anthropic, Some(OTHER)))
        .await
        .unwrap();
    let refused = w
        .core
        .handle(admission, Bytes::from(messages("anth:m").to_string()))
        .await;
    let (scope, tpm, secs) = tokens_limited(refused);
    assert_eq!((scope, tpm), ("team_tpm", 1200));
    assert!(
        (4..=5).contains(&secs),
        "100 missing at 20 per second: {secs}s"
    );
    let rendered = GatewayError::TokenRateLimited {
        scope,
        tpm,
        retry_after_secs: secs,
    }
    .render(Shape::Anthropic);
    assert_eq!(rendered.body["error"]["scope"], "team_tpm");
    drop(held);
    w.anth.answer(Scripted::Json(messages_answer()));
    let admission = w
        .core
        .admit(meta(Shape::Anthropic, Some(OTHER)))
        .await
        .unwrap();
    let ok = w
        .core
        .handle(admission, Bytes::from(messages("anth:m").to_string()))
        .await;
    assert!(
        ok.is_ok(),
        "the cancelled stream gave the team its tokens back"
    );
}

// ---------------------------------------------------------------------------------------
// Routes: deployments, fallback, ejection, balancing
// ---------------------------------------------------------------------------------------

fn deployment(provider: &str, model: &str, priority: u32, weight: u32) -> Deployment {
    Deployment {
        name: format!("{provider}-{model}"),
        provider: provider.to_owned(),
        model: model.to_owned(),
        weight,
        priority,
        rpm: None,
        tpm: None,
    }
}

fn routed_world(deployments: Vec<Deployment>, routing: RoutingPolicy) -> World {
    Setup {
        routes: vec![("r", deployments)],
        routing,
        ..Setup::default()
    }
    .build()
}

fn rate_limited() -> Scripted {
    Scripted::Error {
        status: 429,
        body: json!({"error": {"type": "rate_limit_error", "message": "slow down"}}),
    }
}

/// The deployments and verdicts of the last `route.decided`.
fn chain_of(w: &World) -> Vec<(String, String)> {
    let row = w
        .events()
        .into_iter()
        .rev()
        .find(|e| e.event_type == "route.decided")
        .unwrap();
    let decided: Value = serde_json::from_str(&row.payload_json).unwrap();
    decided["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["deployment"].as_str().unwrap().to_owned(),
                c["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_429_falls_back_to_the_next_priority_group_across_shapes_with_the_chain_recorded() {
    let w = routed_world(
        vec![deployment("oai", "m", 0, 1), deployment("anth", "m", 1, 1)],
        RoutingPolicy::default(),
    );
    w.oai.answer(rate_limited());
    w.anth.answer(Scripted::Json(messages_answer()));
    let body = json_of(w.call(Shape::OpenAi, chat("r")).await.unwrap());
    assert_eq!(body["choices"][0]["message"]["content"], "hi");
    assert_eq!(body["model"], "r");
    assert_eq!(
        chain_of(&w),
        vec![
            ("oai-m".to_owned(), "failed".to_owned()),
            ("anth-m".to_owned(), "chose".to_owned())
        ]
    );
    let (_, decided) = w.the("route.decided");
    assert_eq!(decided["winner_index"], 1);
    assert_eq!(decided["chosen_model"], "anth:m");
    assert_eq!(decided["requested_model"], "r");
    assert!(
        decided["chain"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("429")
    );
    // The first deployment was told not to retry (a fallback was left); the last one keeps
    // its own policy.
    assert_eq!(w.oai.requests()[0].max_retries, Some(0));
    assert_eq!(w.anth.requests()[0].max_retries, None);
    assert_eq!(w.anth.body(0)["model"], "m");
    // Cost is stamped with the deployment that answered: 10 in × 3 + 5 out × 15 per Mtok.
    let (_, done) = w.the("llm.call_completed");
    assert_eq!(done["model"], "anth:m");
    let cost = done["cost_usd"].as_f64().unwrap();
    assert!((cost - 0.000_105).abs() < 1e-9, "cost {cost}");
    // route.decided is the parent named by llm.call_started.
    let (decided_row, _) = w.the("route.decided");
    let (started_row, _) = w.the("llm.call_started");
    assert_eq!(
        started_row.parent_event_id.as_deref(),
        Some(decided_row.id.as_str())
    );
}

#[tokio::test]
async fn a_client_error_is_not_retried_elsewhere() {
    let w = routed_world(
        vec![deployment("oai", "m", 0, 1), deployment("anth", "m", 1, 1)],
        RoutingPolicy::default(),
    );
    w.oai.answer(Scripted::Error {
        status: 400,
        body: json!({"error": {"type": "invalid_request_error", "message": "bad"}}),
    });
    let err = w.call(Shape::OpenAi, chat("r")).await.unwrap_err();
    assert_eq!(err.status(), 400);
    assert!(w.anth.requests().is_empty());
    assert_eq!(
        chain_of(&w),
        vec![("oai-m".to_owned(), "failed".to_owned())]
    );
    assert_eq!(w.count("llm.call_failed"), 1);
}

#[tokio::test]
async fn the_opt_out_header_and_the_attempt_budget_stop_the_chain() {
    let w = routed_world(
        vec![deployment("oai", "m", 0, 1), deployment("anth", "m", 1, 1)],
        RoutingPolicy::default(),
    );
    w.oai.answer(rate_limited());
    let mut m = meta(Shape::OpenAi, Some(TOKEN));
    m.no_fallback = true;
    let admission = w.core.admit(m).await.unwrap();
    let err = w
        .core
        .handle(admission, Bytes::from(chat("r").to_string()))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 429);
    assert!(w.anth.requests().is_empty());
    // Without a fallback left, the one deployment keeps its own retry policy.
    assert_eq!(w.oai.requests()[0].max_retries, None);

    let w = routed_world(
        vec![deployment("oai", "m", 0, 1), deployment("anth", "m", 1, 1)],
        RoutingPolicy {
            max_attempts: 1,
            ..RoutingPolicy::default()
        },
    );
    w.oai.answer(rate_limited());
    assert_eq!(
        w.call(Shape::OpenAi, chat("r")).await.unwrap_err().status(),
        429
    );
    assert!(w.anth.requests().is_empty());
}

#[tokio::test]
async fn consecutive_failures_eject_a_deployment_and_it_is_skipped_then() {
    let mut routing = RoutingPolicy::default();
    routing.breaker.failure_threshold = 2;
    let w = routed_world(
        vec![deployment("oai", "m", 0, 1), deployment("anth", "m", 1, 1)],
        routing,
    );
    for _ in 0..2 {
        w.oai.answer(Scripted::Error {
            status: 503,
            body: json!({"error": {"type": "server_error", "message": "down"}}),
        });
        w.anth.answer(Scripted::Json(messages_answer()));
        w.call(Shape::OpenAi, chat("r")).await.unwrap();
    }
    w.anth.answer(Scripted::Json(messages_answer()));
    w.call(Shape::OpenAi, chat("r")).await.unwrap();
    assert_eq!(
        w.oai.requests().len(),
        2,
        "the ejected deployment got no third request"
    );
    assert_eq!(
        chain_of(&w),
        vec![
            ("oai-m".to_owned(), "skipped".to_owned()),
            ("anth-m".to_owned(), "chose".to_owned())
        ]
    );
    let route = w.core.router.get("r").unwrap();
    let h = route.deployments[0].snapshot();
    assert_eq!(h.circuit.as_str(), "open");
    assert_eq!(h.ejections, 1);
    assert_eq!(h.outstanding, 0);
    assert!(
        w.core
            .readiness()
            .unwrap()
            .unwrap()
            .contains("r/oai-m ejected")
    );
}

#[tokio::test]
async fn every_deployment_skipped_is_a_503_naming_them() {
    let mut routing = RoutingPolicy::default();
    routing.breaker.failure_threshold = 1;
    let w = routed_world(vec![deployment("oai", "m", 0, 1)], routing);
    w.oai.answer(Scripted::Error {
        status: 500,
        body: json!({"error": {"type": "server_error", "message": "down"}}),
    });
    assert_eq!(
        w.call(Shape::OpenAi, chat("r")).await.unwrap_err().status(),
        500
    );
    let err = w.call(Shape::OpenAi, chat("r")).await.unwrap_err();
    assert_eq!(err.status(), 503);
    assert!(
        err.message().contains("oai-m: circuit open"),
        "{}",
        err.message()
    );
    assert!(
        err.render(Shape::OpenAi)
            .retry_after_secs
            .is_some_and(|s| s >= 1)
    );
    assert_eq!(w.oai.requests().len(), 1);
}

#[tokio::test]
async fn a_stream_falls_back_before_its_head_but_never_after_its_first_byte() {
    let w = routed_world(
        vec![deployment("oai", "m", 0, 1), deployment("oai", "m2", 1, 1)],
        RoutingPolicy::default(),
    );
    w.oai.answer(rate_limited());
    w.oai.answer(Scripted::Stream(vec![
        Step::Chunk(CHUNK_1),
        Step::Chunk(CHUNK_2),
        Step::Chunk(USAGE_CHUNK),
        Step::Chunk(DONE),
    ]));
    let mut body = chat_stream(None);
    body["model"] = json!("r");
    let frames = frames_of(w.call(Shape::OpenAi, body.clone()).await.unwrap()).await;
    assert!(frames.contains("llo"), "{frames}");
    assert_eq!(w.oai.body(1)["model"], "m2");

    // A stream that breaks after its first chunk ends with an error; nothing else is tried.
    w.oai
        .answer(Scripted::Stream(vec![Step::Chunk(CHUNK_1), Step::Fail]));
    let frames = frames_of(w.call(Shape::OpenAi, body).await.unwrap()).await;
    assert!(frames.contains("\"he\""), "{frames}");
    assert!(frames.contains("error"), "{frames}");
    assert_eq!(w.oai.requests().len(), 3);
}

#[tokio::test]
async fn weights_split_traffic_inside_a_priority_group() {
    let w = routed_world(
        vec![deployment("oai", "m", 0, 3), deployment("oai", "m2", 0, 1)],
        RoutingPolicy::default(),
    );
    let n = 400;
    for _ in 0..n {
        w.oai.answer(Scripted::Json(chat_answer()));
        w.call(Shape::OpenAi, chat("r")).await.unwrap();
    }
    let heavy = (0..n).filter(|&i| w.oai.body(i)["model"] == "m").count();
    let share = heavy as f64 / n as f64;
    assert!(
        (0.67..0.83).contains(&share),
        "share of the weight-3 deployment: {share}"
    );
}

#[tokio::test]
async fn a_key_must_be_allowed_the_route_alias() {
    let w = Setup {
        keys: vec![key("gk_live", TOKEN, json!({"allowed_models": ["oai:m"]}))],
        routes: vec![("r", vec![deployment("oai", "m", 0, 1)])],
        ..Setup::default()
    }
    .build();
    let err = w.call(Shape::OpenAi, chat("r")).await.unwrap_err();
    assert_eq!(err.status(), 403);
    assert!(w.oai.requests().is_empty());
    let (_, decided) = w.the("route.decided");
    assert_eq!(decided["chain"][0]["verdict"], "rejected");
}

#[tokio::test]
async fn a_fallback_reserves_the_dearest_deployment_and_charges_only_the_one_that_answered() {
    // oai:m output costs 1 000 USD/Mtok, anth:m 15: with max_tokens 300 the hold is the
    // dearest deployment's 0.30 USD while the cheaper one streams.
    let held = Setup {
        keys: vec![key("gk_live", TOKEN, json!({"daily_cap_usd": "100"}))],
        routes: vec![(
            "r",
            vec![deployment("anth", "m", 0, 1), deployment("oai", "m", 1, 1)],
        )],
        ..Setup::default()
    }
    .build();
    held.anth.answer(Scripted::Stream(vec![Step::Hang]));
    let mut body = chat_stream(Some(300));
    body["model"] = json!("r");
    let stream = held.call(Shape::OpenAi, body.clone()).await.unwrap();
    assert!((held.reserved("gk_live") - 0.3).abs() < 1e-9);
    drop(stream);
    assert_eq!(held.reserved("gk_live"), 0.0);
    body["stream"] = json!(false);

    let w = Setup {
        keys: vec![key("gk_live", TOKEN, json!({"daily_cap_usd": "5.00"}))],
        routes: vec![(
            "r",
            vec![deployment("oai", "m", 0, 1), deployment("anth", "m", 1, 1)],
        )],
        ..Setup::default()
    }
    .build();
    w.oai.answer(rate_limited());
    w.anth.answer(Scripted::Json(messages_answer()));
    w.call(Shape::OpenAi, body).await.unwrap();
    let (day, reserved) = spend_of(&w, "gk_live");
    // One charge, at the answering deployment's price; the hold is released.
    assert!((day - 0.000_105).abs() < 1e-9, "day spend {day}");
    assert!(reserved.abs() < 1e-12, "reserved {reserved}");
    assert_eq!(w.count("llm.call_completed"), 1);
    assert_eq!(w.count("llm.call_failed"), 0);
}
