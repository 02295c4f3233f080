//! The `metis` binary: parse the command line, dispatch, map errors to exit codes
//! (0 ok, 1 runtime/config error with one `error: …` line on stderr, 2 usage error).

use clap::Parser;
use metis_app::cli::{Cli, Command, GatewayCmd, KeyCommand, LogFormat};
use metis_app::keys_cli::{NewKey, issue};
use metis_app::paths::Paths;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn gateway(cmd: GatewayCmd) -> anyhow::Result<()> {
    match cmd.action {
        Some(KeyCommand::IssueKey(args)) => {
            let storage = args.storage.or(&cmd.serve.storage);
            let paths = Paths::resolve(&storage)?;
            let issued = issue(
                &paths,
                &NewKey {
                    name: args.name,
                    workspace: args.workspace,
                    allowed_models: args.allow_model,
                    user: args.user,
                    team: args.team,
                },
            )
            .await?;
            let r = &issued.record;
            let mut out = std::io::stdout().lock();
            writeln!(out, "key_id: {}", r.key_id)?;
            writeln!(out, "token:  {}", issued.token)?;
            if let Some(u) = &r.user_id {
                writeln!(out, "user:   {u}")?;
            }
            if let Some(t) = &r.team_id {
                writeln!(out, "team:   {t}")?;
            }
            eprintln!("save the token now — only its hash is stored, and it cannot be recovered.");
            Ok(())
        }
        None => {
            init_logging(cmd.serve.log_format);
            let app = metis_app::App::build(cmd.serve).await?;
            eprintln!("{}", app.boot_line());
            app.warn_if_exposed();
            if let Some(q) = app.quickstart_key() {
                let addr = app.local_addr();
                eprintln!(
                    "no keys in the keystore: issued a first key for this loopback gateway (shown once)\n  key_id: {}\n  token:  {}\n  try:    curl -s http://{addr}/v1/chat/completions -H 'Authorization: Bearer {}' -d '{{\"model\":\"mock\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'",
                    q.key_id, q.token, q.token
                );
            }
            app.run_until_stopped(metis_app::app::shutdown_signal())
                .await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Gateway(cmd) => gateway(*cmd).await,
        Command::Openapi { out } => {
            let doc = gw_http::openapi_json();
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
