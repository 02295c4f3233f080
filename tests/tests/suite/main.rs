//! The metis-tests integration suite, linked as one test binary: with one binary per file every
//! file re-linked the whole gateway (19 links per build, gigabytes of disk). Each module is a
//! former stand-alone test file; nextest still runs every test in its own process.
//!
//! Timing-sensitive modules (they spawn `target/debug/metis`, flood a limiter or time a
//! reload): `key_audit`, `key_expiry`, `otel`, `process_cli`, `process_lifecycle`, `rate_limit_runbook`,
//! `redb_cli`, `postgres_cli`, `revoke_latency`, `tls_inprocess`, `fd_limit`, `grace_cut`; `.config/nextest.toml`
//! gives them one retry.

mod admin_api;
mod admin_console_api;
mod admin_oidc;
mod admission_contract;
mod alert_webhooks;
mod architecture;
mod budget_concurrency;
mod console;
mod console_oidc;
mod disk_full;
mod fake_upstream;
mod fd_limit;
mod fleet;
mod grace_cut;
mod http_agents;
mod http_errors;
mod http_features;
mod http_limits;
mod http_trace;
mod http_translation;
mod key_audit;
mod key_expiry;
mod kill_window;
mod model_groups;
mod observability;
mod openapi_drift;
mod otel;
mod patterns_live;
mod patterns_postgres;
mod postgres_cli;
mod process_cli;
mod process_lifecycle;
mod provider_azure;
mod provider_bedrock;
mod provider_google;
mod quota_concurrency;
mod rate_limit_runbook;
mod redb_cli;
mod revoke_latency;
mod routing;
mod storage_contract;
mod tls_inprocess;
mod token_limits;
mod token_limits_contract;
mod token_limits_fleet;
