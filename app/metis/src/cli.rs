//! Command-line definitions only (clap derive). Every serve flag also reads a
//! `METIS_GATEWAY_<FLAG>` environment variable; provider credentials read the providers' own
//! variables (`ANTHROPIC_API_KEY`, …). Parse rules are unit-tested below.

use clap::{Args, Parser, Subcommand, ValueEnum};
use metis_domain::ratelimit::Cidr;
use std::path::PathBuf;
use std::time::Duration;

mod policies;
pub use policies::{
    BudgetCommand, BudgetScopeArgs, BudgetSetArgs, ModelGroupCommand, ModelGroupNameArgs,
    ModelGroupSetArgs,
};

/// metis: one binary for the Metis LLM gateway and its operations.
#[derive(Debug, Parser)]
#[command(name = "metis", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (`metis gateway [flags]`), or manage its keys (`metis gateway issue-key …`).
    Gateway(Box<GatewayCmd>),
    /// Print the OpenAPI document of the HTTP surface.
    Openapi {
        /// Write the document to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Export the audit log (`metis audit export OUT`) or verify its hash chain
    /// (`metis audit verify`).
    Audit(crate::audit_cli::AuditCmd),
    /// Hot, atomic snapshot of the trace database (safe while the gateway writes), with its
    /// metadata block printed and written to `<dest>.meta`.
    Backup(crate::storage_cli::BackupArgs),
    /// Replace the trace database with a backup: checks the schema version, the `.meta`
    /// checksum and that no gateway holds the file; `--force` to overwrite.
    Restore(crate::storage_cli::RestoreArgs),
    /// Trace retention (`prune`), compaction (`vacuum`), `status` and `migrate`.
    Trace(crate::storage_cli::TraceCmd),
    /// Copy every event (with its audit chain), session, key and the given workspaces'
    /// pattern stores from one storage backend to the other, verifying the counts; refuses a
    /// non-empty destination.
    MigrateStore(crate::transfer_cli::MigrateStoreArgs),
    /// Sessions: `list`, `show <id>` (the worker tree with costs), `migrate`.
    Sessions(crate::sessions_cli::SessionsCmd),
    /// The per-workspace pattern projection: `rebuild`, `stats`, `migrate`.
    Patterns(crate::patterns_cli::PatternsCmd),
    /// Exit 0 iff the gateway's health endpoint answers 200 within the timeout (container
    /// HEALTHCHECKs in images without curl). `https` URLs skip certificate verification.
    Healthcheck {
        /// URL to probe (`http://` or `https://`).
        #[arg(
            long,
            env = "METIS_GATEWAY_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:8422/healthz"
        )]
        url: String,
        /// Give up after this long (`500ms`, `3s`, …).
        #[arg(long, env = "METIS_GATEWAY_HEALTHCHECK_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, Args)]
pub struct GatewayCmd {
    #[command(subcommand)]
    pub action: Option<KeyCommand>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Key administration.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Issue a new gateway key and print its token once (only its SHA-256 is stored).
    IssueKey(IssueKeyArgs),
    /// List keys with their status and effective status (never secrets).
    ListKeys(ListKeysArgs),
    /// Revoke a key now (a running gateway refuses it within 2 s). Idempotent.
    RevokeKey(KeyIdArgs),
    /// Issue a successor inheriting the key's scope, caps, rpm, tags and spend; the old key
    /// stays valid until the grace period ends. Refuses revoked or lapsed keys.
    RotateKey(RotateKeyArgs),
    /// Change settings of an active key (allow-list, caps, limits, alert levels, scope tags);
    /// running gateways apply it within 2 s. Settings not named are kept.
    UpdateKey(UpdateKeyArgs),
    /// Budgets of users, teams, customers and organisations: caps shared by every key with
    /// the tag, token limits, alert levels and model allow-lists.
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// Named sets of models that allow-lists name as `group:NAME`.
    #[command(subcommand)]
    ModelGroup(ModelGroupCommand),
}

/// A key setting `update-key --clear` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeySetting {
    AllowModel,
    DailyCapUsd,
    WeeklyCapUsd,
    MonthlyCapUsd,
    Rpm,
    Tpm,
    AlertAt,
    User,
    Team,
    Customer,
    Org,
}

#[derive(Debug, Args)]
pub struct UpdateKeyArgs {
    /// The key id (`gk_…`).
    pub key_id: String,
    /// Replace the allow-list with these models (ids, aliases, `group:NAME`); repeatable.
    #[arg(long = "allow-model")]
    pub allow_model: Vec<String>,
    /// Daily spend cap in USD (> 0).
    #[arg(long, allow_hyphen_values = true)]
    pub daily_cap_usd: Option<String>,
    /// Weekly spend cap in USD (> 0).
    #[arg(long, allow_hyphen_values = true)]
    pub weekly_cap_usd: Option<String>,
    /// Monthly spend cap in USD (> 0).
    #[arg(long, allow_hyphen_values = true)]
    pub monthly_cap_usd: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u32>,
    /// Tokens (input + output) per minute.
    #[arg(long)]
    pub tpm: Option<u32>,
    /// Alert levels in percent, increasing.
    #[arg(long, value_delimiter = ',')]
    pub alert_at: Vec<u8>,
    /// User tag.
    #[arg(long)]
    pub user: Option<String>,
    /// Team tag.
    #[arg(long)]
    pub team: Option<String>,
    /// Customer tag.
    #[arg(long)]
    pub customer: Option<String>,
    /// Organisation tag.
    #[arg(long)]
    pub org: Option<String>,
    /// Remove these settings (comma-separated), e.g. `--clear team,daily-cap-usd`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub clear: Vec<KeySetting>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// A listing's output format and store.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ListFormat,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ListKeysArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ListFormat,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Args)]
pub struct KeyIdArgs {
    /// The key id (`gk_…`).
    pub key_id: String,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    /// The key id (`gk_…`).
    pub key_id: String,
    /// How long the old key keeps working: seconds, or `30m`, `24h`, `7d`, `2w`.
    #[arg(long, default_value = "24h")]
    pub grace_period: String,
    /// The successor expires when the old key does (none if it has none). The default.
    #[arg(long, conflicts_with_all = ["expires_in", "no_expiry"])]
    pub keep_expiry: bool,
    /// The successor expires this long after the rotation (`30d`, `12h`, …), whatever the
    /// old key's expiry.
    #[arg(long, conflicts_with = "no_expiry")]
    pub expires_in: Option<String>,
    /// The successor never expires.
    #[arg(long)]
    pub no_expiry: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// Where the stores live. `--db-path` and `--keystore` override single files under
/// `--data-dir`.
#[derive(Debug, Clone, Args, Default)]
pub struct StorageArgs {
    /// Data directory (default `~/.metis`): trace DB `metis.db`, keystore `gateway/keys.json`.
    #[arg(long, env = "METIS_GATEWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// SQLite trace database (default `<data-dir>/metis.db`).
    #[arg(long, env = "METIS_GATEWAY_DB_PATH")]
    pub db_path: Option<PathBuf>,
    /// JSON keystore file (default `<data-dir>/gateway/keys.json`), or `store` to keep keys
    /// in the trace database (writable by the admin API when the file would be a read-only
    /// mounted Secret).
    #[arg(long, env = "METIS_GATEWAY_KEYSTORE")]
    pub keystore: Option<PathBuf>,
    /// Storage backend of the main store (trace, sessions, spend; keys with `--keystore
    /// store`) and the pattern stores: `sqlite` (`metis.db`, the default), `redb`
    /// (`metis.redb`) or `postgres` (the database of `--database-url`).
    #[arg(long, env = "METIS_GATEWAY_STORE", value_enum)]
    pub store: Option<crate::store::StoreKind>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

impl StorageArgs {
    /// Values given here win; missing ones come from `parent` (so
    /// `metis gateway --keystore X issue-key` and `metis gateway issue-key --keystore X` agree).
    #[must_use]
    pub fn or(&self, parent: &StorageArgs) -> StorageArgs {
        StorageArgs {
            data_dir: self.data_dir.clone().or_else(|| parent.data_dir.clone()),
            db_path: self.db_path.clone().or_else(|| parent.db_path.clone()),
            keystore: self.keystore.clone().or_else(|| parent.keystore.clone()),
            store: self.store.or(parent.store),
            database: self.database.or(&parent.database),
        }
    }
}

/// The PostgreSQL database of `--store postgres` (the file engines ignore these).
#[derive(Debug, Clone, Args, Default, PartialEq, Eq, Hash)]
pub struct DatabaseArgs {
    /// PostgreSQL URL for `--store postgres`:
    /// `postgres://user:password@host:5432/metis?sslmode=verify-full&sslrootcert=/ca.pem`
    /// (`sslmode`: disable, prefer, require, verify-ca, verify-full; TLS always verifies the
    /// server). The password is never logged.
    #[arg(long, env = "METIS_GATEWAY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections in the PostgreSQL pool (default 8, at least 2: the trace writer holds one).
    #[arg(long, env = "METIS_GATEWAY_DATABASE_POOL_SIZE")]
    pub database_pool_size: Option<usize>,
    /// The `statement_timeout` of every pooled PostgreSQL connection (default `5s`): a stuck
    /// query fails instead of holding a connection.
    #[arg(long, env = "METIS_GATEWAY_DATABASE_STATEMENT_TIMEOUT", value_parser = parse_duration)]
    pub database_statement_timeout: Option<Duration>,
}

impl DatabaseArgs {
    /// Values given here win; missing ones come from `parent`.
    #[must_use]
    pub fn or(&self, parent: &DatabaseArgs) -> DatabaseArgs {
        DatabaseArgs {
            database_url: self
                .database_url
                .clone()
                .or_else(|| parent.database_url.clone()),
            database_pool_size: self.database_pool_size.or(parent.database_pool_size),
            database_statement_timeout: self
                .database_statement_timeout
                .or(parent.database_statement_timeout),
        }
    }
}

#[derive(Debug, Args)]
pub struct IssueKeyArgs {
    /// Display name of the key.
    #[arg(long)]
    pub name: String,
    /// Workspace the key belongs to (stored as an absolute path; it need not exist).
    #[arg(long)]
    pub workspace: PathBuf,
    /// Restrict the key to this model (canonical id like `anthropic:claude-haiku-4-5`, an
    /// alias like `haiku`, or `group:NAME` for a model group); repeatable. Without it the key
    /// may use every model (within its user's and team's budget allow-lists).
    #[arg(long = "allow-model")]
    pub allow_model: Vec<String>,
    /// User tag for cost attribution (`^[a-z0-9_-]+$`).
    #[arg(long)]
    pub user: Option<String>,
    /// Team tag for cost attribution (`^[a-z0-9_-]+$`).
    #[arg(long)]
    pub team: Option<String>,
    /// Customer tag (`^[a-z0-9_-]+$`): the key counts against the customer's budget.
    #[arg(long)]
    pub customer: Option<String>,
    /// Organisation tag (`^[a-z0-9_-]+$`): the key counts against the organisation's budget.
    #[arg(long)]
    pub org: Option<String>,
    /// Weekly spend cap in USD (week from Monday 00:00 UTC; finite, > 0).
    #[arg(long, allow_hyphen_values = true)]
    pub weekly_cap_usd: Option<String>,
    /// Per-key token limit in tokens (input + output) per minute.
    #[arg(long)]
    pub tpm: Option<u32>,
    /// Alert levels of the key's caps in percent, increasing (default 80,95,100).
    #[arg(long, value_delimiter = ',')]
    pub alert_at: Vec<u8>,
    /// Daily spend cap in USD (UTC day; finite, > 0).
    #[arg(long, allow_hyphen_values = true)]
    pub daily_cap_usd: Option<String>,
    /// Monthly spend cap in USD (UTC calendar month; finite, > 0).
    #[arg(long, allow_hyphen_values = true)]
    pub monthly_cap_usd: Option<String>,
    /// Per-key rate limit in requests per minute (overrides `--rate-limit-per-key-rpm`).
    #[arg(long)]
    pub rpm: Option<u32>,
    /// Customer tier label: `trial`, `paid` or `internal` (nothing is gated on it).
    #[arg(long)]
    pub customer_tier: Option<String>,
    /// The key expires this long after issue: seconds, or `30m`, `24h`, `30d`, `2w`. Requests
    /// with it are refused from then on (401 `key_expired`).
    #[arg(long, conflicts_with = "expires_at")]
    pub expires_in: Option<String>,
    /// The key expires at this RFC 3339 instant (with an offset, e.g.
    /// `2027-01-01T00:00:00Z`); must be in the future.
    #[arg(long)]
    pub expires_at: Option<String>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// `--spend-outage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpendOutage {
    FailClosed,
    FailOpen,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

/// `metis gateway` serve flags.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway")]
pub struct ServeArgs {
    /// Address to bind. Anything but loopback logs a perimeter WARN.
    #[arg(long, env = "METIS_GATEWAY_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free port; the boot line shows it).
    #[arg(long, env = "METIS_GATEWAY_PORT", default_value_t = 8422)]
    pub port: u16,
    /// TLS certificate chain (PEM). Requires `--tls-key`; the boot line then says `https`.
    #[arg(long, env = "METIS_GATEWAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, PKCS#8/PKCS#1/SEC1). Requires `--tls-cert`.
    #[arg(long, env = "METIS_GATEWAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Concurrent connections beyond this get an immediate 503 and are closed.
    #[arg(long, env = "METIS_GATEWAY_MAX_CONNECTIONS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// A new connection must send a complete request head within this time (slow-loris guard).
    #[arg(long, env = "METIS_GATEWAY_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// After a response, a kept-alive connection idle this long is closed (streams stay open:
    /// every frame and keep-alive comment counts as activity).
    #[arg(long, env = "METIS_GATEWAY_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Reading a request body may take at most this long (408 otherwise).
    #[arg(long, env = "METIS_GATEWAY_BODY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Set SO_REUSEPORT so a new gateway process can bind the port while this one drains.
    #[arg(long, env = "METIS_GATEWAY_REUSE_PORT")]
    pub reuse_port: bool,
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Keep each workspace's pattern store under this directory instead of
    /// `<workspace>/.metis/patterns.db` (for workspaces the gateway cannot write to).
    #[arg(long, env = "METIS_GATEWAY_PATTERNS_DIR")]
    pub patterns_dir: Option<PathBuf>,
    /// TOML config file: providers, model aliases, prices (see README).
    #[arg(long, env = "METIS_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Anthropic API base URL (default `https://api.anthropic.com`). The gateway never reads
    /// `ANTHROPIC_BASE_URL`, which clients point at the gateway itself.
    #[arg(long, env = "METIS_GATEWAY_ANTHROPIC_BASE_URL")]
    pub anthropic_base_url: Option<String>,
    /// OpenAI-compatible base URL (default `https://api.openai.com/v1`); point it at vLLM,
    /// Ollama, llama.cpp or LM Studio. The gateway never reads `OPENAI_BASE_URL`.
    #[arg(long, env = "METIS_GATEWAY_OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,
    /// OpenRouter base URL (default `https://openrouter.ai/api/v1`).
    #[arg(long, env = "METIS_GATEWAY_OPENROUTER_BASE_URL")]
    pub openrouter_base_url: Option<String>,
    /// Anthropic credential. Prefer the environment variable: flags are visible in `ps`.
    #[arg(long, env = "ANTHROPIC_API_KEY", hide_env_values = true)]
    pub anthropic_api_key: Option<String>,
    /// OpenAI (or compatible server) credential. Prefer the environment variable.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// OpenRouter credential. Prefer the environment variable.
    #[arg(long, env = "OPENROUTER_API_KEY", hide_env_values = true)]
    pub openrouter_api_key: Option<String>,
    /// Register the in-process mock provider (`mock:echo`, alias `mock`) even when real
    /// providers have credentials. It is always registered when none has.
    #[arg(long, env = "METIS_GATEWAY_ENABLE_MOCK_PROVIDER")]
    pub enable_mock_provider: bool,
    /// Mock provider: delay before its response head.
    #[arg(long, env = "METIS_GATEWAY_MOCK_LATENCY_MS", default_value_t = 0)]
    pub mock_latency_ms: u64,
    /// Mock provider: pace streamed tokens at this rate (unpaced when absent).
    #[arg(long, env = "METIS_GATEWAY_MOCK_TOKENS_PER_SECOND")]
    pub mock_tokens_per_second: Option<f64>,
    /// Enforce per-key and per-IP token buckets on the provider endpoints (before auth).
    #[arg(long, env = "METIS_GATEWAY_RATE_LIMIT")]
    pub rate_limit: bool,
    /// Default per-key budget in requests per minute (a key's own `rpm` overrides it).
    #[arg(long, env = "METIS_GATEWAY_RATE_LIMIT_PER_KEY_RPM", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_key_rpm: u32,
    /// Per-client-IP budget in requests per minute.
    #[arg(long, env = "METIS_GATEWAY_RATE_LIMIT_PER_IP_RPM", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_ip_rpm: u32,
    /// Output tokens a token-limit (`tpm`) estimate assumes for a request that names no
    /// maximum (`max_tokens`, `max_completion_tokens`, `max_output_tokens`).
    #[arg(long, env = "METIS_GATEWAY_TPM_DEFAULT_OUTPUT_TOKENS", default_value_t = metis_usecases::DEFAULT_TPM_OUTPUT_TOKENS)]
    pub tpm_default_output_tokens: u64,
    /// Proxy address or CIDR whose `X-Forwarded-For` is believed (repeatable; env is
    /// comma-separated). Without it the socket peer is the client.
    #[arg(long = "trusted-proxy", env = "METIS_GATEWAY_TRUSTED_PROXY", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxy: Vec<Cidr>,
    /// What a key with spend caps gets while a spend store shared by replicas does not answer:
    /// `fail-closed` refuses the request (503 `spend_store_unavailable`); `fail-open` admits it
    /// against this process's last known balance and settles into the store when it answers
    /// again. Keys without caps are never refused for it; a single node's in-process spend
    /// ledger is never unavailable.
    #[arg(long, env = "METIS_GATEWAY_SPEND_OUTAGE", value_enum, default_value_t = SpendOutage::FailClosed)]
    pub spend_outage: SpendOutage,
    /// The day of the month (1..=28, UTC) on which monthly budgets and caps reset; 1 is the
    /// calendar month. Every replica of a fleet must use the same value: the windows of a
    /// shared account are computed by whichever replica touches it.
    #[arg(long, env = "METIS_GATEWAY_BUDGET_MONTH_START_DAY", default_value_t = 1, value_parser = parse_month_start_day)]
    pub budget_month_start_day: u8,
    /// Request bodies above this many bytes get 413.
    #[arg(long, env = "METIS_GATEWAY_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Estimated memory of the requests being handled at once (8 x body bytes + 1 KiB per
    /// JSON object); a request that does not fit gets 503 with Retry-After.
    #[arg(long, env = "METIS_GATEWAY_MAX_INFLIGHT_REQUEST_MEMORY", default_value_t = 512 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_inflight_request_memory: u64,
    /// On SIGTERM/SIGINT, wait this long for in-flight requests and streams.
    #[arg(long, env = "METIS_GATEWAY_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// The trace writer commits every event no later than this after it was queued (bounds
    /// the acknowledged events a SIGKILL can lose; batches that miss it are counted in
    /// `metis_trace_commit_deadline_misses_total`). At least 1ms.
    #[arg(long, env = "METIS_GATEWAY_TRACE_COMMIT_DEADLINE", default_value = "50ms", value_parser = parse_commit_deadline)]
    pub trace_commit_deadline: Duration,
    /// Upstream time-to-response-head timeout (streams then use an idle timeout).
    #[arg(long, env = "METIS_GATEWAY_UPSTREAM_TIMEOUT", default_value = "600s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Upstream retries for 429/5xx/network failures before the first byte.
    #[arg(long, env = "METIS_GATEWAY_UPSTREAM_RETRIES", default_value_t = 2)]
    pub upstream_retries: u32,
    /// Log format.
    #[arg(
        long,
        env = "METIS_GATEWAY_LOG_FORMAT",
        value_enum,
        default_value = "auto"
    )]
    pub log_format: LogFormat,
    /// File holding the bearer token of the admin API (`/admin/v1/…`, at least 16
    /// characters). Without it (and without `METIS_GATEWAY_ADMIN_TOKEN`) the admin API
    /// answers 404.
    #[arg(long, env = "METIS_GATEWAY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The admin API bearer token itself (prefer `--admin-token-file`; flags show in `ps`).
    #[arg(long, env = "METIS_GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Key that signs the operator console's session cookies (`/ui`; at least 32
    /// characters). Replicas behind one load balancer need the same key; without it each
    /// process draws a random one, so a console session works only on the replica that
    /// started it and ends when the process restarts.
    #[arg(
        long,
        env = "METIS_GATEWAY_CONSOLE_SESSION_KEY",
        hide_env_values = true
    )]
    pub console_session_key: Option<String>,
    /// How long a console login lasts (`30m`, `8h`, `1d`; at least 1s).
    #[arg(long, env = "METIS_GATEWAY_CONSOLE_SESSION_TTL", default_value = "8h", value_parser = parse_console_ttl)]
    pub console_session_ttl: Duration,
    /// The console's public base URL as browsers reach it (e.g. `https://metis.example.com`):
    /// the single sign-on `redirect_uri` is this plus `/ui/oidc/callback` (register that at
    /// the identity provider). Without it the URL is taken from each request's scheme and
    /// `Host`; set it behind a proxy or load balancer.
    #[arg(long, env = "METIS_GATEWAY_CONSOLE_PUBLIC_URL", value_parser = parse_public_url)]
    pub console_public_url: Option<String>,
    #[command(flatten)]
    pub oidc: OidcArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub alerts: AlertArgs,
}

/// Budget alerts posted to webhooks (README "Budget alerts"): signed JSON, retried with
/// back-off, never delaying a request.
#[derive(Clone, Args)]
pub struct AlertArgs {
    /// A URL every budget alert is POSTed to (repeatable; env is comma-separated). https://,
    /// or http:// on a loopback host (see `--alert-webhook-allow-http`). Logs and audit
    /// events name it `#<n> scheme://host[:port]` only (paths and queries often hold tokens).
    #[arg(
        long = "alert-webhook",
        env = "METIS_GATEWAY_ALERT_WEBHOOK",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub alert_webhook: Vec<String>,
    /// The HMAC-SHA256 key of `X-Metis-Signature` (at least 16 bytes; required with
    /// `--alert-webhook`). Prefer the env var: flags show in `ps`.
    #[arg(
        long,
        env = "METIS_GATEWAY_ALERT_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub alert_webhook_secret: Option<String>,
    /// Per attempt: connect, send and the receiver's answer head (`500ms`, `10s`).
    #[arg(long, env = "METIS_GATEWAY_ALERT_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub alert_webhook_timeout: Duration,
    /// Attempts per alert and endpoint, the first included; then the alert is given up
    /// (`quota.alert_undelivered`, reason `gave_up`).
    #[arg(long, env = "METIS_GATEWAY_ALERT_WEBHOOK_MAX_ATTEMPTS", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub alert_webhook_max_attempts: u32,
    /// Accept http:// webhook URLs on non-loopback hosts (alerts then cross the network
    /// unencrypted; the signature still proves who sent them).
    #[arg(long, env = "METIS_GATEWAY_ALERT_WEBHOOK_ALLOW_HTTP")]
    pub alert_webhook_allow_http: bool,
}

/// Neither the URLs (they may hold tokens) nor the secret are printed.
impl std::fmt::Debug for AlertArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertArgs")
            .field(
                "alert_webhook",
                &format!("{} URL(s)", self.alert_webhook.len()),
            )
            .field(
                "alert_webhook_secret",
                &self.alert_webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("alert_webhook_timeout", &self.alert_webhook_timeout)
            .field(
                "alert_webhook_max_attempts",
                &self.alert_webhook_max_attempts,
            )
            .field("alert_webhook_allow_http", &self.alert_webhook_allow_http)
            .finish()
    }
}

/// Admin identities from an OpenID Connect issuer (README "Admin identities"). With
/// `--oidc-issuer`, `/admin/v1` also accepts the issuer's JWTs, with the role the claim
/// mapping grants.
#[derive(Debug, Clone, Args)]
pub struct OidcArgs {
    /// The issuer URL, exactly as its discovery document states it (e.g.
    /// `https://login.example.com/realms/ops`; http:// only on a loopback address).
    #[arg(long, env = "METIS_GATEWAY_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// An `aud` value admin bearer tokens must carry (repeatable; env is comma-separated).
    /// Defaults to `--oidc-client-id`.
    #[arg(long, env = "METIS_GATEWAY_OIDC_AUDIENCE", value_delimiter = ',')]
    pub oidc_audience: Vec<String>,
    /// The OAuth client id of the console's browser login (also the id_token audience).
    #[arg(long, env = "METIS_GATEWAY_OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// The client secret, for confidential clients (prefer the env var; flags show in `ps`).
    #[arg(long, env = "METIS_GATEWAY_OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub oidc_client_secret: Option<String>,
    /// Scopes the browser login asks for besides `openid email profile` (repeatable; env is
    /// comma-separated).
    #[arg(long, env = "METIS_GATEWAY_OIDC_SCOPE", value_delimiter = ',')]
    pub oidc_scope: Vec<String>,
    /// The claim holding the admin's groups or roles: a string or an array of strings; a
    /// dotted path reaches nested claims (`realm_access.roles`).
    #[arg(long, env = "METIS_GATEWAY_OIDC_ROLE_CLAIM", default_value = "groups")]
    pub oidc_role_claim: String,
    /// `role=claim-value` grants (repeatable or comma-separated, e.g.
    /// `admin=metis-admins,operator=metis-ops,viewer=metis-read`); the highest match wins.
    #[arg(long, env = "METIS_GATEWAY_OIDC_ROLE_MAP", value_delimiter = ',')]
    pub oidc_role_map: Vec<String>,
    /// The role of a valid token that matches no `--oidc-role-map` entry (default: none,
    /// such tokens get 403).
    #[arg(long, env = "METIS_GATEWAY_OIDC_DEFAULT_ROLE")]
    pub oidc_default_role: Option<String>,
    /// How long the issuer's keys (JWKS) are cached before they are fetched again, in
    /// seconds. A token naming an unknown key refetches sooner (see below).
    #[arg(long, env = "METIS_GATEWAY_OIDC_JWKS_TTL", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub oidc_jwks_ttl: u64,
    /// The least seconds between two unscheduled requests to the issuer: a refetch for an
    /// unknown key id, or a discovery retry while the issuer is down.
    #[arg(long, env = "METIS_GATEWAY_OIDC_MIN_REFETCH", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub oidc_min_refetch: u64,
    /// Failed admin authentications (bad token or JWT) allowed per client address per
    /// minute; beyond, the address gets 429 with `Retry-After` until the minute is over (every
    /// admin request from it, valid or not, so a right guess looks like a wrong one).
    #[arg(long, env = "METIS_GATEWAY_ADMIN_AUTH_FAILURES_PER_MINUTE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub admin_auth_failures_per_minute: u32,
}

/// The `/metrics` series budget (README "Observability"): how many keys, users and teams
/// may become label values, so the scrape stays bounded whatever the number of keys.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Per-key token and cost series for this many keys: the biggest spenders since the
    /// process started (0: none). Also bounds the per-key cap ratios (the keys nearest their
    /// caps).
    #[arg(long, env = "METIS_GATEWAY_METRICS_TOP_KEYS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub metrics_top_keys: u32,
    /// A key that always gets per-key series, whatever its spend (repeatable; env is
    /// comma-separated).
    #[arg(long = "metrics-key", env = "METIS_GATEWAY_METRICS_KEY", value_delimiter = ',', value_parser = parse_key_id)]
    pub metrics_key: Vec<String>,
    /// Distinct `user` label values on the usage series; later users are reported as
    /// `_other`.
    #[arg(long, env = "METIS_GATEWAY_METRICS_MAX_USERS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub metrics_max_users: u32,
    /// Distinct `team` label values on the usage series; later teams are reported as
    /// `_other`.
    #[arg(long, env = "METIS_GATEWAY_METRICS_MAX_TEAMS", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub metrics_max_teams: u32,
}

/// Parse a `--metrics-key` key id (`gk_…`, as `list-keys` prints it).
///
/// # Errors
/// A message naming the expected form.
pub fn parse_key_id(raw: &str) -> Result<String, String> {
    let id = raw.trim();
    let ok = id.len() > 3
        && id.starts_with("gk_")
        && id[3..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(id.to_owned())
    } else {
        Err(format!(
            "`{raw}` is not a key id: expected `gk_…` as printed by `metis gateway list-keys`"
        ))
    }
}

/// `--budget-month-start-day`: a day every month has.
fn parse_month_start_day(raw: &str) -> Result<u8, String> {
    let day: u8 = raw
        .trim()
        .parse()
        .map_err(|_| format!("expected a day of the month in 1..=28, got '{raw}'"))?;
    metis_domain::time::Calendar::new(day).map(|c| c.month_start_day())
}

/// Parse a trusted-proxy CIDR.
///
/// # Errors
/// A message naming the bad value.
pub fn parse_cidr(raw: &str) -> Result<Cidr, String> {
    Cidr::parse(raw)
}

/// Parse `250ms`, or anything `metis_domain::time::parse_duration_secs` accepts (`30s`, `5m`,
/// `2h`, `1d`, `1w`, bare seconds).
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    if let Some(ms) = raw.trim().strip_suffix("ms")
        && let Ok(n) = ms.parse::<u64>()
    {
        return Ok(Duration::from_millis(n));
    }
    metis_domain::time::parse_duration_secs(raw).map(Duration::from_secs)
}

/// `--console-session-ttl`: at least one second (cookie expiry has second resolution).
fn parse_console_ttl(raw: &str) -> Result<Duration, String> {
    let d = parse_duration(raw)?;
    if d < Duration::from_secs(1) {
        return Err("the console session lifetime must be at least 1s".to_owned());
    }
    Ok(d)
}

/// `--console-public-url`: `http(s)://host[:port]` with no path, query or fragment (the
/// callback path is appended). A trailing `/` is dropped.
fn parse_public_url(raw: &str) -> Result<String, String> {
    let url = raw.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("'{raw}' must start with https:// (or http://)"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.contains(char::is_whitespace)
    {
        return Err(format!(
            "'{raw}' must be a scheme and host with an optional port, e.g. https://metis.example.com (no path, query or user)"
        ));
    }
    Ok(url.to_owned())
}

/// `--trace-commit-deadline`: a duration of at least 1 ms (a zero deadline would count
/// every commit as late).
fn parse_commit_deadline(raw: &str) -> Result<Duration, String> {
    let d = parse_duration(raw)?;
    if d < Duration::from_millis(1) {
        return Err("the commit deadline must be at least 1ms".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests;
