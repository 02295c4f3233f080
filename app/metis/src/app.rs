//! The composition root: builds the adapters, wires them into the core, binds the listener
//! and runs the server until shutdown (then drains and flushes the trace writer).

use crate::background::TokioBackground;
use crate::cli::ServeArgs;
use crate::config::ConfigFile;
use crate::keys_cli::open_keystore;
use crate::listener;
use crate::paths::Paths;
use crate::system::{SystemClock, UlidIds};
use anyhow::{Context, bail};
use metis_domain::events::key_sources;
use metis_domain::patterns::PatternCaps;
use metis_http::{AdminServices, ClientGone, HttpOptions, routes};
use metis_ports::admin::AdminService;
use metis_ports::console::OpsService;
use metis_ports::keys::{KeyStore, KeyStoreError};
use metis_ports::storage::PatternPlace;
use metis_ports::system::{Clock, IdSource};
use metis_ports::trace::EventSink;
use metis_ports::trace::TraceQuery;
use metis_usecases::key_admin::IssueRequest;
use metis_usecases::{
    AdminFacade, CoreParts, GatewayCore, KeyAdmin, KeyRing, KeySync, KeySyncParts, SpendGuard,
};
use poem::Server;
use poem::{Endpoint, EndpointExt};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How long a key lifecycle change found in the keystore waits for its own audit event (a CLI
/// writing into this same database commits it just after the keystore) before the gateway
/// records it as `source: keystore_observed`.
const OBSERVED_CHANGE_SETTLE: Duration = Duration::from_secs(3);

/// A waiting request starts watching its client connection for a hang-up after this long.
const DISCONNECT_WATCH_AFTER: Duration = Duration::from_millis(100);

/// A key issued automatically on first start (loopback only, empty keystore).
#[derive(Debug, Clone)]
pub struct QuickstartKey {
    pub key_id: String,
    pub token: String,
}

/// A built gateway, bound to its socket and ready to serve.
pub struct App {
    acceptor: listener::Stacks,
    addr: SocketAddr,
    scheme: &'static str,
    core: Arc<GatewayCore>,
    trace: Arc<dyn metis_ports::storage::MainStore>,
    keystore: Arc<dyn KeyStore>,
    /// Keeps the key ring current and records the key changes found in the keystore.
    key_sync: Arc<KeySync>,
    /// The gateway's own key admin (quickstart key, grace sweep).
    gateway_admin: Arc<KeyAdmin>,
    /// Spend caps (flushed at shutdown: settlements a shared store has not taken yet).
    spend: Arc<SpendGuard>,
    admin_api: Option<AdminServices>,
    /// The operator console (`/ui`), present when an admin identity is configured.
    console: Option<metis_http::ConsoleConfig>,
    http_opts: HttpOptions,
    request_budget: metis_http::RequestBudget,
    shutdown_grace: Duration,
    paths: Paths,
    providers: Vec<String>,
    host: String,
    quickstart: Option<QuickstartKey>,
    rate_limit: bool,
    tls_in_process: bool,
    connections: Arc<listener::Connections>,
    background: TokioBackground,
    /// Budget alerts on their way to webhooks (drained at shutdown, before the trace flush).
    alerts: Arc<dyn metis_ports::alerts::AlertNotifier>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("addr", &self.addr)
            .field("paths", &self.paths)
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

/// Whether `host` is a loopback name or address.
#[must_use]
pub fn is_loopback(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "::1" | "localhost" | "[::1]")
}

/// The metrics registry within the `--metrics-*` series budget (kept concrete for the
/// certificate expiry, set once TLS is loaded), and what the core records into: the
/// registry, teed to OTLP when `telemetry::init` set up a metrics exporter.
fn build_metrics(
    args: &ServeArgs,
) -> (
    Arc<metis_telemetry::Prometheus>,
    Arc<dyn metis_ports::metrics::Metrics>,
) {
    let m = &args.metrics;
    let prometheus = Arc::new(metis_telemetry::Prometheus::new(
        metis_telemetry::SeriesBudget {
            top_keys: m.metrics_top_keys as usize,
            keys: m.metrics_key.iter().cloned().collect(),
            max_users: m.metrics_max_users as usize,
            max_teams: m.metrics_max_teams as usize,
        },
    ));
    let recorded: Arc<dyn metis_ports::metrics::Metrics> = match crate::telemetry::otel_metrics() {
        Some(otel) => Arc::new(crate::telemetry::MetricsTee {
            prometheus: Arc::clone(&prometheus),
            otel,
        }),
        None => Arc::clone(&prometheus) as Arc<dyn metis_ports::metrics::Metrics>,
    };
    (prometheus, recorded)
}

/// Load the keystore into the key ring; on a loopback bind with no keys, issue a first key.
async fn load_keys(
    sync: &KeySync,
    admin: &KeyAdmin,
    host: &str,
) -> anyhow::Result<(Vec<metis_domain::keys::KeyRecord>, Option<QuickstartKey>)> {
    let keys = match sync.reload().await {
        Ok(k) => k,
        Err(KeyStoreError::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e).context("cannot load the keystore"),
    };
    if !keys.is_empty() {
        return Ok((keys, None));
    }
    if !is_loopback(host) {
        bail!(
            "keystore {} has no keys; issue one with `metis gateway issue-key --name NAME --workspace PATH` before binding a non-loopback host",
            sync.describe()
        );
    }
    let workspace = std::env::current_dir().unwrap_or_else(|_| std::path::PathBuf::from("/"));
    let issued = admin
        .issue(&IssueRequest {
            name: "quickstart".to_owned(),
            workspace: workspace.display().to_string(),
            ..IssueRequest::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot issue the quickstart key: {e}"))?;
    let quick = QuickstartKey {
        key_id: issued.record.key_id.clone(),
        token: issued.token,
    };
    Ok((vec![issued.record], Some(quick)))
}

impl App {
    /// Build every adapter, load keys and bind the listener.
    ///
    /// # Errors
    /// Bad config, unreadable/corrupt keystore, trace DB newer than this binary, bind failure.
    pub async fn build(args: ServeArgs) -> anyhow::Result<App> {
        // First, before any file or socket is opened: the soft descriptor limit up to the
        // hard one (see `fdlimit`).
        let raised = crate::fdlimit::raise();
        let paths = Paths::resolve(&args.storage)?;
        let cfg = match &args.config {
            Some(p) => ConfigFile::load(p)?,
            None => ConfigFile::default(),
        };
        // SQLite: the gateway holds the shared writer lock on `<db>.lock` for its lifetime, so
        // `metis restore` refuses to replace the file under it (redb: restore checks that no
        // process has the file open).
        let trace = crate::store::open_main(&paths, true, args.trace_commit_deadline).await?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let ids: Arc<dyn IdSource> = Arc::new(UlidIds::default());
        let keystore = open_keystore(&paths)?;
        let sink: Arc<dyn EventSink> = trace.clone();
        let query: Arc<dyn TraceQuery> = trace.clone();
        let ring = Arc::new(KeyRing::default());
        let key_sync = Arc::new(KeySync::new(KeySyncParts {
            store: Arc::clone(&keystore),
            ring: Arc::clone(&ring),
            sink: Arc::clone(&sink),
            query: Arc::clone(&query),
            clock: Arc::clone(&clock),
            ids: Arc::clone(&ids),
            settle: OBSERVED_CHANGE_SETTLE,
        }));
        // Every key admin in the gateway puts its changes in force in the ring before it
        // returns, and tags its events with who made the change.
        let key_admin = |source: &'static str| {
            Arc::new(
                KeyAdmin::new(
                    Arc::clone(&keystore),
                    Arc::clone(&sink),
                    Arc::clone(&clock),
                    Arc::clone(&ids),
                    source,
                )
                .with_sync(Arc::clone(&key_sync)),
            )
        };
        let gateway_admin = key_admin(key_sources::GATEWAY);
        let (keys, quickstart) = load_keys(&key_sync, &gateway_admin, &args.host).await?;
        gateway_admin.sweep().await;
        let providers = crate::providers::build(&args, &cfg.providers)?;
        let router = Arc::new(crate::providers::router(
            &cfg,
            &providers,
            Arc::clone(&clock),
        )?);
        // Routes stored through the admin API come with the keys' policies, on every reload.
        let routes = Arc::clone(&router);
        ring.on_policies(metis_usecases::keys::PolicyListener(Box::new(move |p| {
            routes.apply(&p.routes);
        })));
        let provider_names: Vec<String> = providers.iter().map(|p| p.name().to_owned()).collect();
        let background = TokioBackground::default();
        let (prometheus, metrics) = build_metrics(&args);
        let admin_token = crate::admin_identity::admin_token(&args)?;
        let oidc = crate::admin_identity::oidc(&args)?;
        // The overview of the admin API counts what the gateway already reports to its
        // metrics; without the admin API nothing reads it, so nothing counts it.
        let live = (admin_token.is_some() || oidc.is_some()).then(|| {
            Arc::new(metis_usecases::LiveWindow::new(
                Arc::clone(&clock),
                &provider_names,
            ))
        });
        let metrics: Arc<dyn metis_ports::metrics::Metrics> = match &live {
            Some(live) => Arc::new(metis_usecases::LiveMetrics::new(metrics, Arc::clone(live))),
            None => metrics,
        };
        let (spend, shared_limits) = crate::admission::guards(
            &args,
            paths.backend()?,
            &*query,
            &keys,
            (&*clock, &*ids),
            (Arc::clone(&metrics), Arc::new(background.clone())),
        )
        .await?;
        if let Some(o) = &oidc {
            crate::admin_identity::discover_in_background(o);
        }
        // The console's single sign-on needs a client id (the token endpoint's client); an
        // issuer without one verifies bearer JWTs only.
        let oidc_login = oidc
            .as_ref()
            .filter(|_| args.oidc.oidc_client_id.is_some())
            .map(|o| Arc::clone(o) as Arc<dyn metis_ports::identity::OidcLogin>);
        let admin_auth =
            crate::admin_identity::auth_config(&args, admin_token, oidc, Arc::clone(&metrics));
        let admin_api = match (admin_auth, live) {
            (Some(auth), Some(live)) => {
                let facade: Arc<dyn AdminService> = Arc::new(AdminFacade::new(
                    key_admin(key_sources::ADMIN_API),
                    Arc::clone(&query),
                    Arc::clone(&sink),
                    Arc::clone(&spend),
                    Arc::clone(&clock),
                    Arc::clone(&router),
                ));
                let ops: Arc<dyn OpsService> =
                    Arc::new(metis_usecases::OpsFacade::new(metis_usecases::OpsParts {
                        live,
                        query,
                        sink: Arc::clone(&sink),
                        sessions: trace.sessions(),
                        chain: Arc::new(crate::store::ServedChain {
                            backend: paths.backend()?,
                            db: paths.db.clone(),
                        }),
                        clock: Arc::clone(&clock),
                        router: Arc::clone(&router),
                    }));
                Some(AdminServices {
                    admin: facade,
                    ops,
                    auth,
                })
            }
            _ => None,
        };
        let alerts = crate::alerts::notifier(
            &args.alerts,
            Arc::clone(&sink),
            Arc::clone(&clock),
            Arc::clone(&ids),
            Arc::clone(&prometheus) as Arc<dyn metis_ports::alerts::AlertMetrics>,
        )?;
        let core = Arc::new(GatewayCore::new(CoreParts {
            keys: ring,
            sink,
            providers,
            catalog: {
                let mut catalog = cfg.catalog();
                catalog.set_loaded_at(clock.now_us() / 1_000_000);
                catalog
            },
            prices: cfg.prices(),
            clock,
            ids,
            spend: Arc::clone(&spend),
            metrics: Arc::clone(&metrics),
            sessions: trace.sessions(),
            patterns: paths.backend()?.pattern_store(
                &PatternPlace::from_dir(args.patterns_dir.clone()),
                PatternCaps::default(),
            ),
            background: Arc::new(background.clone()),
            tokenizer: Arc::new(metis_tokenizer::Tiktoken),
            trace: Arc::new(crate::telemetry::OtelTraceContext {
                exporting: crate::telemetry::exporting(),
            }),
            limiter: crate::admission::limiter(&args, shared_limits, Arc::new(background.clone())),
            router,
        }));
        core.set_alerts(Arc::clone(&alerts));

        let tls = match listener::tls_paths(args.tls_cert.as_ref(), args.tls_key.as_ref())? {
            Some((cert, key)) => Some(listener::load_tls(&cert, &key)?),
            None => None,
        };
        if let (Some(cert), Some(_)) = (&args.tls_cert, &tls) {
            // load_tls accepted the file, so only an unreadable validity can fail here.
            prometheus.set_tls_not_after(crate::cert_expiry::of_pem_file(cert)?);
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        // Served when someone can log in: the admin token's form, or single sign-on (an
        // issuer without a client id offers neither, so its console would be a dead end).
        let console_login =
            admin_api.as_ref().is_some_and(|a| a.auth.token.is_some()) || oidc_login.is_some();
        let console =
            crate::admin_identity::console_config(&args, console_login, oidc_login, tls.is_some())?;
        let tcp = listener::bind(&args.host, args.port, args.reuse_port)?;
        let addr = tcp.local_addr().context("cannot read the bound address")?;
        let connections = Arc::new(listener::Connections::default());
        let caps = connection_caps(args.max_connections as usize, raised);
        metrics.connection_limit(caps.max_connections as u64);
        let acceptor = listener::stack(
            tcp,
            &connections,
            tls,
            caps,
            listener::Timeouts {
                header: args.header_timeout,
                idle: args.idle_timeout,
            },
            &listener::Observer::new(Arc::clone(&metrics)),
        )
        .context("cannot use the listener")?;
        let request_budget = metis_http::RequestBudget::new(
            args.max_inflight_request_memory,
            args.max_body_bytes as u64,
            Arc::clone(&metrics),
        );
        let http_opts = HttpOptions {
            max_body_bytes: args.max_body_bytes,
            public_url: format!("{scheme}://{addr}"),
            body_timeout: args.body_timeout,
            ..HttpOptions::default()
        };
        Ok(App {
            acceptor,
            addr,
            scheme,
            core,
            trace,
            keystore,
            key_sync,
            gateway_admin,
            spend,
            admin_api,
            console,
            http_opts,
            request_budget,
            shutdown_grace: args.shutdown_grace,
            paths,
            providers: provider_names,
            host: args.host,
            quickstart,
            rate_limit: args.rate_limit,
            connections,
            background,
            alerts,
            tls_in_process: scheme == "https",
        })
    }

    /// The bound socket address (useful with `--port 0`).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The key issued on first start, if any (its token is shown once).
    #[must_use]
    pub fn quickstart_key(&self) -> Option<&QuickstartKey> {
        self.quickstart.as_ref()
    }

    /// The one-line boot message.
    #[must_use]
    pub fn boot_line(&self) -> String {
        let host = if self.addr.is_ipv6() {
            format!("[{}]", self.host.trim_matches(['[', ']']))
        } else {
            self.host.clone()
        };
        format!(
            "metis gateway listening on {}://{}:{} (store={}:{}, keystore={}, providers={})",
            self.scheme,
            host,
            self.addr.port(),
            self.paths.store,
            self.paths.location(),
            self.keystore.describe(),
            self.providers.join(",")
        )
    }

    /// Log the non-loopback perimeter WARN when applicable.
    pub fn warn_if_exposed(&self) {
        if !is_loopback(&self.host) {
            tracing::warn!(
                "gateway bound to non-loopback host={} port={} — verify perimeter: tls_in_process={} rate_limit={}. If TLS is terminated and rate limiting enforced upstream (ingress, load balancer), this is fine; otherwise see the hardening checklist in README.md#hardening",
                self.host,
                self.addr.port(),
                if self.tls_in_process { "on" } else { "off" },
                if self.rate_limit { "on" } else { "off" }
            );
        }
    }

    /// Serve until `shutdown` resolves, then drain in-flight requests (up to the shutdown
    /// grace) and flush the trace writer.
    ///
    /// # Errors
    /// Server I/O errors.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let watcher = tokio::spawn(watch_keys(
            Arc::clone(&self.key_sync),
            Arc::clone(&self.gateway_admin),
        ));
        let core = Arc::clone(&self.core);
        let connections = Arc::clone(&self.connections);
        // Set when shutdown starts: from then on every response carries `Connection: close`.
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let closing_in_endpoint = Arc::clone(&closing);
        // Set when the drain grace is about to end: every stream still open then gets a final
        // error frame in its client's shape and ends, before the connections are cut.
        let (cut_tx, cut_rx) = tokio::sync::watch::channel(false);
        let openai_cut_frame = grace_end_frame(metis_domain::canonical::Shape::OpenAi);
        let anthropic_cut_frame = grace_end_frame(metis_domain::canonical::Shape::Anthropic);
        let responses_cut_frame = grace_end_frame(metis_domain::canonical::Shape::Responses);
        let request_budget = self.request_budget.clone();
        let endpoint = routes(
            self.core.clone(),
            self.admin_api.clone(),
            self.console.clone(),
            self.http_opts.clone(),
        )
        .around(move |ep, mut req| {
            // Let handlers notice a client that goes away while they wait on an upstream.
            if let Some(peer) = req.remote_addr().as_socket_addr().copied() {
                let connections = Arc::clone(&connections);
                req.extensions_mut().insert(ClientGone::new(move || {
                    Box::pin(connections.closed(peer, DISCONNECT_WATCH_AFTER))
                }));
            }
            let span = crate::telemetry::exporting().then(|| {
                crate::telemetry::request_span(
                    req.method().as_str(),
                    req.uri().path(),
                    req.headers()
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok()),
                )
            });
            let closing = Arc::clone(&closing_in_endpoint);
            let mut cut = cut_rx.clone();
            let path = req.uri().path();
            let frame = if path.starts_with("/v1/messages") {
                anthropic_cut_frame.clone()
            } else if path.starts_with("/v1/responses") {
                responses_cut_frame.clone()
            } else {
                openai_cut_frame.clone()
            };
            // The memory of requests in flight is bounded (see `metis_http::RequestBudget`):
            // reserved here before any handler reads the body, the rest once the body is
            // read, all of it returned when the answer is ready or the request is dropped.
            let reserved = request_budget.reserve(&mut req);
            async move {
                let _reservation = match reserved {
                    Ok(r) => r,
                    Err(refused) => return Ok(refuse_unread(req, *refused)),
                };
                let res = match span {
                    Some(span) => ep.call(req).instrument(span).await,
                    None => ep.call(req).await,
                };
                let res = res.map(|r| {
                    let cut = async move {
                        let _ = cut.wait_for(|cut| *cut).await;
                    };
                    metis_http::cut_stream_on(poem::IntoResponse::into_response(r), cut, frame)
                });
                if closing.load(std::sync::atomic::Ordering::Acquire) {
                    res.map(close_after)
                } else {
                    res
                }
            }
        });
        let endpoint = Arc::new(endpoint);
        let close_window = CLOSE_WINDOW.min(self.shutdown_grace / 2);
        let grace = self.shutdown_grace;
        let main = Server::new_with_acceptor(self.acceptor.main).run_with_graceful_shutdown(
            endpoint.clone(),
            async move {
                shutdown.await;
                metis_ports::gateway::GatewayService::begin_drain(core.as_ref());
                // Keep serving for a moment, answering every request with `Connection:
                // close`: clients then drop their pooled connections to this process after
                // one more answer, instead of writing a request into a connection the server
                // closes at the same instant (a lost request, since POSTs are not retried).
                closing.store(true, std::sync::atomic::Ordering::Release);
                tracing::info!(
                    close_window_ms = close_window.as_millis() as u64,
                    "shutdown requested: closing keep-alive connections, then draining in-flight requests"
                );
                tokio::time::sleep(close_window).await;
                // poem cuts every connection `grace` after this future resolves; streams
                // still open get their final frame just before.
                let cut_after = grace.saturating_sub(GRACE_CUT_MARGIN.min(grace / 4));
                tokio::spawn(async move {
                    tokio::time::sleep(cut_after).await;
                    if cut_tx.send(true).is_ok() {
                        tracing::info!(
                            "shutdown grace ending: open streams get a final error frame and end"
                        );
                    }
                });
            },
            Some(self.shutdown_grace),
        );
        // Serves the connections the main listener still had queued when it closed; it stops
        // once they are done. Same endpoint: `closing` is set before the main listener closes,
        // so these answers already carry `Connection: close` (one request per connection).
        let rescue_state = Arc::clone(&self.acceptor.rescue_state);
        let rescue = Server::new_with_acceptor(self.acceptor.rescue)
            .name("rescue")
            .run_with_graceful_shutdown(
                endpoint,
                // The drain bound is inside `finished`; at the signal nothing is left to wait for.
                async move { rescue_state.finished(grace).await },
                Some(Duration::ZERO),
            );
        let (result, rescued) = tokio::join!(main, rescue);
        if let Err(e) = rescued {
            tracing::warn!(error = %e, "rescue server failed");
        }
        watcher.abort();
        // Side by side, so the alert deliveries add no time to the shutdown budget
        // (terminationGracePeriodSeconds = preStop + grace + 10 s in the chart).
        tokio::join!(
            self.background.drain(Duration::from_secs(5)),
            crate::alerts::drain(self.alerts.as_ref())
        );
        self.spend.flush().await;
        let stats = self.trace.shutdown().await;
        tracing::info!(
            written = stats.written,
            overflowed = stats.overflowed,
            failed = stats.failed,
            "trace writer flushed"
        );
        result.context("server error")
    }
}

/// The connection cap the descriptor limit affords (everything this process opens at start is
/// open by now), logged: INFO when the limit was raised, one WARN when the cap is lowered.
fn connection_caps(asked: usize, raised: crate::fdlimit::Raised) -> listener::Caps {
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    if raised.before != raised.soft {
        tracing::info!(
            "raised the file descriptor limit from {} to {} (the hard limit)",
            show(raised.before),
            show(raised.soft)
        );
    }
    let open = crate::fdlimit::open_now();
    let b = crate::fdlimit::budget(asked, raised.soft, open);
    if b.lowered {
        tracing::warn!(
            "file descriptor limit {} (hard {}) cannot cover --max-connections {asked}: connection cap lowered to {}; connections beyond it get 503. Budget: {} descriptors per connection (client socket + upstream connection), {open} open at start + {} headroom, {} for 503 answers in progress. Raise the limit to at least {} (systemd: LimitNOFILE=, shell: ulimit -n) or lower --max-connections",
            show(raised.soft),
            show(raised.hard),
            b.max_connections,
            crate::fdlimit::PER_CONNECTION,
            crate::fdlimit::HEADROOM,
            b.rejecting,
            b.needed
        );
    }
    listener::Caps {
        max_connections: b.max_connections,
        rejecting: b.rejecting,
    }
}

/// Poll the keystore for changes made outside this process (a failed load keeps the last good
/// set, with an ERROR), record the lifecycle changes it shows that the audit trail lacks, and
/// sweep lapsed rotation grace periods into the keystore every ~5 s.
async fn watch_keys(sync: Arc<KeySync>, admin: Arc<KeyAdmin>) {
    let mut interval = tokio::time::interval(metis_usecases::keys::KEY_POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        interval.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(10) {
            admin.sweep().await;
        }
        sync.poll().await;
    }
}

/// How long a shutting-down gateway keeps serving, with `Connection: close` on every response,
/// before it stops accepting and closes idle connections (capped at half the drain grace).
const CLOSE_WINDOW: Duration = Duration::from_secs(1);

/// Answer `refused` to a request whose body is not wanted, reading and discarding the body
/// meanwhile (bounded by `DISCARD_FOR`): closing a connection with unread request bytes makes
/// the kernel reset it, and the client would see a reset instead of the answer.
fn refuse_unread(mut req: poem::Request, refused: poem::Response) -> poem::Response {
    let body = req.take_body();
    tokio::spawn(async move {
        let mut chunks = body.into_bytes_stream();
        let _ = tokio::time::timeout(DISCARD_FOR, async {
            while let Some(Ok(_)) = futures_util::StreamExt::next(&mut chunks).await {}
        })
        .await;
    });
    close_after(refused)
}

/// How long the body of a refused request is read (and discarded) before the connection is
/// dropped.
const DISCARD_FOR: Duration = Duration::from_secs(30);

/// How long before the end of the drain grace the streams still open are ended with an
/// error frame (at most a quarter of the grace): time for the frame and the end of the body to
/// reach the client before poem drops the connections.
const GRACE_CUT_MARGIN: Duration = Duration::from_millis(500);

/// The last frame of a stream cut at the end of the drain grace, in the client's shape
/// (Anthropic `event: error`, OpenAI `data: {"error":…}` without `[DONE]`, Responses an
/// `error` event, after which a stream without `response.completed` is retried by Codex): a
/// 503 the client can retry, like a stream failing after its first byte.
fn grace_end_frame(shape: metis_domain::canonical::Shape) -> bytes::Bytes {
    use metis_domain::canonical::Shape;
    let err = metis_domain::error::GatewayError::Unavailable {
        message: "the gateway is shutting down and its drain grace ended before this stream finished; retry the request".to_owned(),
    };
    let envelope = err.render(shape).body;
    let (event, body) = match shape {
        Shape::Anthropic => (Some("error"), envelope),
        Shape::OpenAi => (None, envelope),
        Shape::Responses => (
            Some("error"),
            serde_json::json!({
                "type": "error",
                "code": err.code(),
                "message": err.message(),
                "param": null,
                "error": envelope.get("error").cloned().unwrap_or(serde_json::Value::Null),
            }),
        ),
    };
    bytes::Bytes::from(metis_domain::sse::format_frame(event, &body.to_string()))
}

/// Mark `res` as the last response on its connection.
fn close_after(mut res: poem::Response) -> poem::Response {
    res.headers_mut().insert(
        poem::http::header::CONNECTION,
        poem::http::HeaderValue::from_static("close"),
    );
    res
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
