//! Spawning the real gateway in-process for HTTP tests, with typed helpers.
//!
//! [`TestGateway::spawn`] starts a [`FakeUpstream`], issues a key into a fresh temp data dir,
//! builds the real `metis::App` on `127.0.0.1:0` pointed at the fake (provider keys by
//! flag, never by env, so tests can run in parallel), and serves it on the test's runtime.
//! [`TestGateway::stop`] triggers the graceful shutdown (which flushes the trace writer) so
//! the SQLite file can then be read with [`TestGateway::events`].

use crate::fake_upstream::{FakeUpstream, SseEvent, parse_sse};
pub use crate::tool_calls::{tool_call_of, weather_tools};
use anyhow::{Context, bail};
use clap::Parser;
use metis::App;
use metis::cli::ServeArgs;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Provider key the gateway presents to the fake Anthropic upstream.
pub const UPSTREAM_ANTHROPIC_KEY: &str = "upstream-anthropic-key";
/// Provider key the gateway presents to the fake OpenAI upstream.
pub const UPSTREAM_OPENAI_KEY: &str = "upstream-openai-key";
/// Per-request client timeout of the helpers.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// An API shape: what the client speaks, or what the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    OpenAi,
    Anthropic,
}

impl Shape {
    /// The gateway path for a client of this shape.
    #[must_use]
    pub fn gateway_path(self) -> &'static str {
        match self {
            Shape::OpenAi => "/v1/chat/completions",
            Shape::Anthropic => "/v1/messages",
        }
    }

    /// The `inbound_shape` value in trace events.
    #[must_use]
    pub fn event_name(self) -> &'static str {
        match self {
            Shape::OpenAi => "openai",
            Shape::Anthropic => "anthropic",
        }
    }
}

/// A client shape and an upstream shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Combo {
    pub client: Shape,
    pub upstream: Shape,
}

impl Combo {
    pub const OPENAI_TO_OPENAI: Combo = Combo {
        client: Shape::OpenAi,
        upstream: Shape::OpenAi,
    };
    pub const OPENAI_TO_ANTHROPIC: Combo = Combo {
        client: Shape::OpenAi,
        upstream: Shape::Anthropic,
    };
    pub const ANTHROPIC_TO_ANTHROPIC: Combo = Combo {
        client: Shape::Anthropic,
        upstream: Shape::Anthropic,
    };
    pub const ANTHROPIC_TO_OPENAI: Combo = Combo {
        client: Shape::Anthropic,
        upstream: Shape::OpenAi,
    };

    /// The model alias the client sends (routes to the upstream of this combo).
    #[must_use]
    pub fn model(self) -> &'static str {
        match self.upstream {
            Shape::OpenAi => "gpt-5",
            Shape::Anthropic => "haiku",
        }
    }

    /// The model name the upstream receives.
    #[must_use]
    pub fn upstream_model(self) -> &'static str {
        match self.upstream {
            Shape::OpenAi => "gpt-5",
            Shape::Anthropic => "claude-haiku-4-5",
        }
    }

    /// The canonical model id in trace events.
    #[must_use]
    pub fn canonical_model(self) -> &'static str {
        match self.upstream {
            Shape::OpenAi => "openai:gpt-5",
            Shape::Anthropic => "anthropic:claude-haiku-4-5",
        }
    }

    /// The path the fake upstream is called on.
    #[must_use]
    pub fn upstream_path(self) -> &'static str {
        match self.upstream {
            Shape::OpenAi => "/v1/chat/completions",
            Shape::Anthropic => "/v1/messages",
        }
    }

    /// A one-message chat request body in the client's shape.
    #[must_use]
    pub fn body(self, text: &str, stream: bool) -> Value {
        chat_body(self.client, self.model(), text, stream)
    }
}

/// A one-message chat request body in `shape`.
#[must_use]
pub fn chat_body(shape: Shape, model: &str, text: &str, stream: bool) -> Value {
    match shape {
        Shape::OpenAi => json!({
            "model": model,
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        }),
        Shape::Anthropic => json!({
            "model": model,
            "max_tokens": 256,
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        }),
    }
}

/// A key to issue before the gateway starts.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    pub name: String,
    pub allowed_models: Vec<String>,
    /// Daily spend cap in USD (decimal string).
    pub daily_cap_usd: Option<String>,
    /// Per-key requests per minute (used when `--rate-limit` is on).
    pub rpm: Option<u32>,
    pub user: Option<String>,
    pub team: Option<String>,
    /// Tokens per minute.
    pub tpm: Option<u32>,
}

/// Options of [`TestGateway::spawn_with`].
#[derive(Debug, Clone, Default)]
pub struct GatewayOptions {
    /// Extra keys besides the default `test` key.
    pub extra_keys: Vec<KeySpec>,
    /// Extra serve flags.
    pub extra_args: Vec<String>,
    /// Give the gateway a wrong Anthropic provider key.
    pub wrong_anthropic_key: bool,
    /// Point the OpenAI provider somewhere other than the fake (e.g. a closed port).
    pub openai_base_url: Option<String>,
    /// The storage backend (`--store`). `None`: `METIS_TEST_STORE` (`sqlite`, `redb` or
    /// `postgres`) when set, else SQLite, so the whole HTTP suite can be run on any backend.
    /// `postgres` runs on a fresh database of the server of `METIS_TEST_DATABASE_URL`.
    pub store: Option<metis::store::StoreKind>,
    /// A TOML config file for the gateway (`--config`: providers' `responses_api`, prices,
    /// aliases), written into the data dir. `{fake_openai_url}` in it is replaced by the fake
    /// upstream's OpenAI base URL (for a second provider, e.g. `[providers.openrouter]`,
    /// pointed at the same fake).
    pub config_toml: Option<String>,
}

/// The backend a test gateway uses when its options name none: `METIS_TEST_STORE` (`sqlite`,
/// `redb` or `postgres`) when set; else redb (postgres) in a test binary whose name starts
/// with `redb_` (`postgres_`): such a binary re-runs other suites on that backend by including
/// their files; else SQLite.
#[must_use]
pub fn default_store() -> metis::store::StoreKind {
    match std::env::var("METIS_TEST_STORE").as_deref() {
        Ok("redb") => return metis::store::StoreKind::Redb,
        Ok("sqlite") => return metis::store::StoreKind::Sqlite,
        Ok("postgres") => return metis::store::StoreKind::Postgres,
        _ => {}
    }
    let binary_starts_with = |prefix: &str| {
        std::env::current_exe().ok().is_some_and(|exe| {
            exe.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
    };
    if binary_starts_with("redb_") {
        metis::store::StoreKind::Redb
    } else if binary_starts_with("postgres_") {
        metis::store::StoreKind::Postgres
    } else {
        metis::store::StoreKind::Sqlite
    }
}

/// An issued key.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub key_id: String,
    pub token: String,
}

/// One row of the `events` table.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: String,
    pub timestamp_us: i64,
    pub session_id: String,
    pub turn_id: Option<String>,
    pub parent_event_id: Option<String>,
    pub event_type: String,
    pub actor: String,
    pub sensitivity: String,
    pub payload_json: String,
    pub payload: Value,
}

/// A finished HTTP exchange (the body is read to its end or to its failure).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// Set when the body could not be read to its end (connection dropped, timeout).
    pub body_error: Option<String>,
}

impl Reply {
    /// The body as JSON (`Value::Null` if it is not JSON).
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// The body parsed as server-sent events.
    #[must_use]
    pub fn events(&self) -> Vec<SseEvent> {
        parse_sse(&self.text)
    }

    /// A header value as a string.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `content-type` header.
    #[must_use]
    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }
}

/// The real gateway, serving in-process, with its fake upstream and a fresh data dir.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub base_url: String,
    pub upstream: FakeUpstream,
    /// The default key (`test`, every model allowed).
    pub key: IssuedKey,
    /// Extra keys by name.
    pub keys: BTreeMap<String, IssuedKey>,
    pub data_dir: tempfile::TempDir,
    pub db_path: PathBuf,
    /// The storage backend the gateway runs on.
    pub store: metis::store::StoreKind,
    /// The database of a server backend (`--database-url`; empty for the file engines).
    pub database: metis::cli::DatabaseArgs,
    pub keystore: PathBuf,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The fresh database of a `postgres` gateway, dropped with it (after the server stopped).
    _scratch: Option<metis_storage_postgres::ScratchDatabase>,
}

impl std::fmt::Debug for TestGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestGateway")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestGateway {
    /// Spawn with default options.
    ///
    /// # Errors
    /// When the fake upstream, key issuance or the gateway fails to start.
    pub async fn spawn() -> anyhow::Result<TestGateway> {
        Self::spawn_with(GatewayOptions::default()).await
    }

    /// Spawn with options.
    ///
    /// # Errors
    /// When the fake upstream, key issuance or the gateway fails to start.
    pub async fn spawn_with(opts: GatewayOptions) -> anyhow::Result<TestGateway> {
        let upstream = FakeUpstream::start(UPSTREAM_ANTHROPIC_KEY, UPSTREAM_OPENAI_KEY).await?;
        let data_dir = tempfile::tempdir().context("tempdir")?;
        let store = opts.store.unwrap_or_else(default_store);
        let db_path = data_dir.path().join(store.main_file());
        let keystore = data_dir.path().join("gateway").join("keys.json");
        let workspace = data_dir.path().join("ws");
        let scratch = if store.is_server() {
            Some(
                tokio::task::spawn_blocking(metis_storage_postgres::ScratchDatabase::from_env)
                    .await
                    .context("scratch database task")??,
            )
        } else {
            None
        };
        let database = metis::cli::DatabaseArgs {
            database_url: scratch.as_ref().map(|s| s.url().to_owned()),
            ..metis::cli::DatabaseArgs::default()
        };
        let paths = metis::paths::Paths {
            data_dir: data_dir.path().to_path_buf(),
            db: db_path.clone(),
            keystore: keystore.clone(),
            store,
            database: database.clone(),
        };
        let key = issue(
            &paths,
            &workspace,
            &KeySpec {
                name: "test".into(),
                ..KeySpec::default()
            },
        )
        .await?;
        let mut keys = BTreeMap::new();
        for spec in &opts.extra_keys {
            let k = issue(&paths, &workspace, spec).await?;
            keys.insert(spec.name.clone(), k);
        }
        let openai_base_url = opts
            .openai_base_url
            .clone()
            .unwrap_or_else(|| upstream.openai_base_url());
        let anthropic_key = if opts.wrong_anthropic_key {
            "definitely-not-the-key"
        } else {
            UPSTREAM_ANTHROPIC_KEY
        };
        let mut argv: Vec<String> = [
            "gateway",
            "--port",
            "0",
            "--data-dir",
            &data_dir.path().display().to_string(),
            "--anthropic-base-url",
            &upstream.base_url(),
            "--openai-base-url",
            &openai_base_url,
            "--anthropic-api-key",
            anthropic_key,
            "--openai-api-key",
            UPSTREAM_OPENAI_KEY,
            "--openrouter-api-key=",
            "--shutdown-grace",
            "5s",
            "--store",
            store.name(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(url) = &database.database_url {
            argv.push("--database-url".to_owned());
            argv.push(url.clone());
        }
        if let Some(toml) = &opts.config_toml {
            let path = data_dir.path().join("gateway-config.toml");
            let text = toml.replace("{fake_openai_url}", &upstream.openai_base_url());
            std::fs::write(&path, text).context("write the gateway config file")?;
            argv.push("--config".to_owned());
            argv.push(path.display().to_string());
        }
        argv.extend(opts.extra_args.iter().cloned());
        let args = ServeArgs::try_parse_from(&argv).context("serve args")?;
        let app = App::build(args).await?;
        let addr = app.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .build()
            .context("http client")?;
        Ok(TestGateway {
            addr,
            base_url: format!("http://{addr}"),
            upstream,
            key,
            keys,
            data_dir,
            db_path,
            store,
            database,
            keystore,
            client,
            shutdown: Some(tx),
            task: Some(task),
            _scratch: scratch,
        })
    }

    /// An extra key by name (the default key if the name is unknown).
    #[must_use]
    pub fn key_named(&self, name: &str) -> &IssuedKey {
        self.keys.get(name).unwrap_or(&self.key)
    }

    /// The shared HTTP client (30 s timeout).
    #[must_use]
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `POST` a JSON body in `shape` with the default key.
    pub async fn post(&self, shape: Shape, body: &Value) -> Reply {
        self.post_as(shape, &self.key.token, body).await
    }

    /// `POST` a JSON body in `shape` with `token` (sent the way that shape's SDK sends it).
    pub async fn post_as(&self, shape: Shape, token: &str, body: &Value) -> Reply {
        let req = self.client.post(self.url(shape.gateway_path()));
        let req = match shape {
            Shape::OpenAi => req.bearer_auth(token),
            Shape::Anthropic => req
                .header("x-api-key", token)
                .header("anthropic-version", "2023-06-01"),
        };
        finish(req.json(body).send().await).await
    }

    /// `POST` raw bytes in `shape` with the default key.
    pub async fn post_raw(&self, shape: Shape, content_type: &str, body: Vec<u8>) -> Reply {
        let req = self
            .client
            .post(self.url(shape.gateway_path()))
            .header("content-type", content_type);
        let req = match shape {
            Shape::OpenAi => req.bearer_auth(&self.key.token),
            Shape::Anthropic => req
                .header("x-api-key", &self.key.token)
                .header("anthropic-version", "2023-06-01"),
        };
        finish(req.body(body).send().await).await
    }

    /// Any request, with no credentials.
    pub async fn request(&self, method: reqwest::Method, path: &str) -> Reply {
        finish(self.client.request(method, self.url(path)).send().await).await
    }

    /// Start a streamed request and return the live response (for disconnect tests).
    ///
    /// # Errors
    /// When the request cannot be sent.
    pub async fn start_stream(
        &self,
        shape: Shape,
        body: &Value,
    ) -> anyhow::Result<reqwest::Response> {
        let req = self.client.post(self.url(shape.gateway_path()));
        let req = match shape {
            Shape::OpenAi => req.bearer_auth(&self.key.token),
            Shape::Anthropic => req
                .header("x-api-key", &self.key.token)
                .header("anthropic-version", "2023-06-01"),
        };
        Ok(req.json(body).send().await?)
    }

    /// `base_url` + `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Ask the server to shut down (it drains in-flight requests) without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// The data directory's resolved store paths, as the CLI would compute them.
    #[must_use]
    pub fn paths(&self) -> metis::paths::Paths {
        metis::paths::Paths {
            data_dir: self.data_dir.path().to_path_buf(),
            db: self.db_path.clone(),
            keystore: self.keystore.clone(),
            store: self.store,
            database: self.database.clone(),
        }
    }

    /// Stop the server gracefully (drain + trace flush) and wait for it, bounded.
    ///
    /// # Errors
    /// When the server returned an error or did not stop within 20 s.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(20), task).await {
                Ok(Ok(r)) => r?,
                Ok(Err(e)) => bail!("gateway task failed: {e}"),
                Err(_) => bail!("gateway did not stop within 20s"),
            }
        }
        Ok(())
    }

    /// Every row of the trace DB's `events` table, in id order. Call after [`Self::stop`]
    /// to see everything (the writer batches).
    ///
    /// # Errors
    /// When the DB cannot be read.
    pub fn events(&self) -> anyhow::Result<Vec<EventRow>> {
        match self.store {
            metis::store::StoreKind::Sqlite => read_events(&self.db_path),
            metis::store::StoreKind::Redb => read_redb_events(&self.db_path),
            metis::store::StoreKind::Postgres => read_port_events(&self.paths()),
        }
    }

    /// Events of one type.
    ///
    /// # Errors
    /// When the DB cannot be read.
    pub fn events_of(&self, event_type: &str) -> anyhow::Result<Vec<EventRow>> {
        Ok(self
            .events()?
            .into_iter()
            .filter(|e| e.event_type == event_type)
            .collect())
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn issue(
    paths: &metis::paths::Paths,
    workspace: &Path,
    spec: &KeySpec,
) -> anyhow::Result<IssuedKey> {
    let req = metis_usecases::key_admin::IssueRequest {
        name: spec.name.clone(),
        workspace: workspace.display().to_string(),
        allowed_models: spec.allowed_models.clone(),
        daily_cap_usd: spec.daily_cap_usd.clone(),
        rpm: spec.rpm,
        user: spec.user.clone(),
        team: spec.team.clone(),
        tpm: spec.tpm,
        ..metis_usecases::key_admin::IssueRequest::default()
    };
    let issued = metis::keys_cli::issue(paths, &req)
        .await
        .with_context(|| format!("issue key {}", spec.name))?;
    Ok(IssuedKey {
        key_id: issued.record.key_id,
        token: issued.token,
    })
}

/// Send a request (built on [`TestGateway::client`] or any client) and read its reply to the
/// end: for requests the typed helpers do not cover (other paths, headers, query strings).
pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    finish(req.send().await).await
}

async fn finish(sent: reqwest::Result<reqwest::Response>) -> Reply {
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return Reply {
                status: 0,
                headers: reqwest::header::HeaderMap::new(),
                text: String::new(),
                body_error: Some(format!("request failed: {e}")),
            };
        }
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut bytes = Vec::new();
    let mut body_error = None;
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => bytes.extend_from_slice(&c),
            Ok(None) => break,
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        body_error,
    }
}

/// A stored row as the tests read it (the payload parsed).
fn event_row(r: metis_ports::trace::EventRow) -> EventRow {
    EventRow {
        payload: serde_json::from_str(&r.payload_json).unwrap_or(Value::Null),
        id: r.id,
        timestamp_us: r.timestamp_us,
        session_id: r.session_id,
        turn_id: r.turn_id,
        parent_event_id: r.parent_event_id,
        event_type: r.event_type,
        actor: r.actor,
        sensitivity: r.sensitivity,
        payload_json: r.payload_json,
    }
}

/// Read every event row of a main store through the storage port, in id order.
///
/// # Errors
/// When the store cannot be opened or read.
pub fn read_port_events(paths: &metis::paths::Paths) -> anyhow::Result<Vec<EventRow>> {
    let reader = paths.backend()?.open_reader(&paths.db)?;
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = reader.events_page(after.as_deref(), 1000)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        out.extend(page.into_iter().map(event_row));
    }
    Ok(out)
}

/// Read every event row of a redb main store, in id order.
///
/// # Errors
/// When the file cannot be opened or read.
pub fn read_redb_events(db: &Path) -> anyhow::Result<Vec<EventRow>> {
    let handle = metis_storage_redb::open_shared(db, metis_storage_redb::Sharing::default(), false)
        .map_err(|e| anyhow::anyhow!("open {}: {e}", db.display()))?;
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = metis_storage_redb::query::events_page(&handle, after.as_deref(), 1000)
            .map_err(|e| anyhow::anyhow!("read {}: {e}", db.display()))?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        out.extend(page.into_iter().map(event_row));
    }
    Ok(out)
}

/// Read every event row of a trace DB (read-only).
///
/// # Errors
/// When the DB cannot be opened or read.
pub fn read_events(db: &Path) -> anyhow::Result<Vec<EventRow>> {
    use rusqlite::{Connection, OpenFlags};
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("open {}", db.display()))?;
    let mut stmt = conn.prepare(
        "SELECT id, timestamp_us, session_id, turn_id, parent_event_id, type, actor, sensitivity, payload_json FROM events ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        let payload_json: String = r.get(8)?;
        Ok(EventRow {
            id: r.get(0)?,
            timestamp_us: r.get(1)?,
            session_id: r.get(2)?,
            turn_id: r.get(3)?,
            parent_event_id: r.get(4)?,
            event_type: r.get(5)?,
            actor: r.get(6)?,
            sensitivity: r.get(7)?,
            payload: serde_json::from_str(&payload_json).unwrap_or(Value::Null),
            payload_json,
        })
    })?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Reading replies in either shape
// ---------------------------------------------------------------------------------------------

/// The assistant text of a sync reply in `shape`.
#[must_use]
pub fn reply_text(shape: Shape, body: &Value) -> String {
    match shape {
        Shape::OpenAi => body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        Shape::Anthropic => body["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect(),
    }
}

/// The concatenated text deltas of a streamed reply in `shape`.
#[must_use]
pub fn stream_text(shape: Shape, events: &[SseEvent]) -> String {
    events
        .iter()
        .filter_map(SseEvent::json)
        .filter_map(|d| match shape {
            Shape::OpenAi => d["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned),
            Shape::Anthropic => (d["delta"]["type"] == "text_delta")
                .then(|| d["delta"]["text"].as_str().map(str::to_owned))
                .flatten(),
        })
        .collect()
}

/// The stop reason of a sync reply, in the client's vocabulary.
#[must_use]
pub fn stop_reason(shape: Shape, body: &Value) -> String {
    match shape {
        Shape::OpenAi => body["choices"][0]["finish_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        Shape::Anthropic => body["stop_reason"].as_str().unwrap_or_default().to_owned(),
    }
}

/// The error `type` of an error envelope in `shape`, checking the envelope's form.
#[must_use]
pub fn error_type(shape: Shape, body: &Value) -> Option<String> {
    match shape {
        Shape::OpenAi => body["error"]["type"].as_str().map(str::to_owned),
        Shape::Anthropic => {
            if body["type"] != "error" {
                return None;
            }
            body["error"]["type"].as_str().map(str::to_owned)
        }
    }
}

/// The error message of an error envelope (either shape).
#[must_use]
pub fn error_message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
