//! The `metis` binary: parse the command line, dispatch, map errors to exit codes
//! (0 ok, 1 runtime/config error with one `error: …` line on stderr, 2 usage error).

use clap::Parser;
use metis::cli::{Cli, Command, GatewayCmd, KeyCommand, ListFormat};
use metis::keys_cli;
use metis::paths::Paths;
use metis_usecases::key_admin::{IssueRequest, parse_grace};
use std::io::Write;
use std::process::ExitCode;

mod healthcheck;

/// mimalloc instead of glibc malloc: the request path allocates and frees many small buffers
/// (headers, JSON values, event payloads) across threads, where glibc's arenas cost a
/// measurable share of each request's CPU (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn gateway(cmd: GatewayCmd) -> anyhow::Result<()> {
    match cmd.action {
        Some(KeyCommand::IssueKey(args)) => {
            let paths = Paths::resolve(&args.storage.or(&cmd.serve.storage))?;
            let issued = keys_cli::issue(
                &paths,
                &IssueRequest {
                    name: args.name,
                    workspace: keys_cli::absolute(&args.workspace)?,
                    allowed_models: args.allow_model,
                    daily_cap_usd: args.daily_cap_usd,
                    monthly_cap_usd: args.monthly_cap_usd,
                    rpm: args.rpm,
                    user: args.user,
                    team: args.team,
                    customer_tier: args.customer_tier,
                    customer: args.customer,
                    org: args.org,
                    weekly_cap_usd: args.weekly_cap_usd,
                    tpm: args.tpm,
                    alert_at: (!args.alert_at.is_empty()).then_some(args.alert_at),
                    expires_in: args.expires_in,
                    expires_at: args.expires_at,
                },
            )
            .await?;
            keys_cli::print_issued(&mut std::io::stdout().lock(), &issued)?;
            eprintln!("save the token now — only its hash is stored, and it cannot be recovered.");
            Ok(())
        }
        Some(KeyCommand::ListKeys(args)) => {
            let paths = Paths::resolve(&args.storage.or(&cmd.serve.storage))?;
            let json = args.format == ListFormat::Json;
            keys_cli::list(&paths, json, &mut std::io::stdout().lock()).await
        }
        Some(KeyCommand::RevokeKey(args)) => {
            let paths = Paths::resolve(&args.storage.or(&cmd.serve.storage))?;
            let r = keys_cli::revoke(&paths, &args.key_id).await?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "revoked: {}", r.key_id)?;
            writeln!(out, "revoked_at: {}", r.revoked_at)?;
            if r.already {
                eprintln!("note: the key was already revoked; nothing changed.");
            }
            Ok(())
        }
        Some(KeyCommand::RotateKey(args)) => {
            let paths = Paths::resolve(&args.storage.or(&cmd.serve.storage))?;
            let grace = parse_grace(&args.grace_period).map_err(anyhow::Error::msg)?;
            // Default (and `--keep-expiry`): the successor keeps the old key's expiry.
            let expiry = match (&args.expires_in, args.no_expiry) {
                (Some(d), _) => metis_domain::keys::RotationExpiry::ExpiresIn(
                    metis_domain::time::parse_duration_secs(d)
                        .map_err(|e| anyhow::anyhow!("--expires-in: {e}"))?,
                ),
                (None, true) => metis_domain::keys::RotationExpiry::Never,
                (None, false) => metis_domain::keys::RotationExpiry::Keep,
            };
            let r = keys_cli::rotate(&paths, &args.key_id, grace, expiry).await?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "old_key_id: {}", r.old_key_id)?;
            writeln!(out, "new_key_id: {}", r.successor.record.key_id)?;
            writeln!(out, "new_token:  {}", r.successor.token)?;
            writeln!(out, "grace_period_until: {}", r.grace_period_until)?;
            writeln!(
                out,
                "new_expires_at: {}",
                r.successor.record.expires_at.as_deref().unwrap_or("never")
            )?;
            eprintln!(
                "the old key keeps working until {}; save the new token now — it is shown only once.",
                r.grace_period_until
            );
            Ok(())
        }
        Some(KeyCommand::UpdateKey(args)) => {
            let paths = Paths::resolve(&args.storage.or(&cmd.serve.storage))?;
            let (key_id, changes) = keys_cli::key_changes(args)?;
            let view = keys_cli::update(&paths, &key_id, changes).await?;
            writeln!(
                std::io::stdout().lock(),
                "{}",
                serde_json::to_string_pretty(&keys_cli::key_json(&view))?
            )?;
            Ok(())
        }
        Some(KeyCommand::Budget(c)) => {
            metis::budgets_cli::budget(c, &cmd.serve.storage, &mut std::io::stdout().lock()).await
        }
        Some(KeyCommand::ModelGroup(c)) => {
            metis::budgets_cli::model_group(c, &cmd.serve.storage, &mut std::io::stdout().lock())
                .await
        }
        None => {
            let telemetry = metis::telemetry::init(cmd.serve.log_format)?;
            let app = metis::App::build(cmd.serve).await?;
            eprintln!("{}", app.boot_line());
            app.warn_if_exposed();
            if let Some(q) = app.quickstart_key() {
                let addr = app.local_addr();
                eprintln!(
                    "no keys in the keystore: issued a first key for this loopback gateway (shown once)\n  key_id: {}\n  token:  {}\n  try:    curl -s http://{addr}/v1/chat/completions -H 'Authorization: Bearer {}' -d '{{\"model\":\"mock\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'",
                    q.key_id, q.token, q.token
                );
            }
            let served = app.run_until_stopped(metis::app::shutdown_signal()).await;
            telemetry.shutdown().await;
            served
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Gateway(cmd) => gateway(*cmd).await,
        Command::Audit(cmd) => return metis::audit_cli::run(cmd).await,
        Command::Backup(args) => return metis::storage_cli::backup_cmd(args).await,
        Command::Restore(args) => return metis::storage_cli::restore_cmd(args).await,
        Command::Trace(cmd) => return metis::storage_cli::trace_cmd(cmd).await,
        Command::Sessions(cmd) => return metis::sessions_cli::run(cmd).await,
        Command::MigrateStore(args) => {
            return metis::transfer_cli::migrate_store_cmd(args).await;
        }
        Command::Patterns(cmd) => return metis::patterns_cli::run(cmd).await,
        Command::Healthcheck { url, timeout } => healthcheck::run(&url, timeout),
        Command::Openapi { out } => {
            let doc = metis_http::openapi_json();
            match out {
                Some(path) => std::fs::write(&path, format!("{doc}\n"))
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display())),
                None => writeln!(std::io::stdout().lock(), "{doc}").map_err(anyhow::Error::from),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
