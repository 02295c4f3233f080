//! `metis gateway budget set|list|delete` and `metis gateway model-group set|list|delete`:
//! budgets and model groups in the configured key store (beside the keys), audited into the
//! trace DB like key changes. Running gateways apply a change with their next key reload
//! (within 2 s).
//!
//! Spend per window is not shown here: the spend balances live in the gateway's admission
//! (its in-process ledger or the fleet's store), so `GET /admin/v1/budgets` of a running
//! gateway lists each budget with its current spend.

use crate::cli::{BudgetCommand, BudgetScopeArgs, ListFormat, ModelGroupCommand, StorageArgs};
use crate::keys_cli::AdminSession;
use crate::paths::Paths;
use metis_domain::budgets::{BudgetPolicy, ScopeKind};
use metis_usecases::AdminError;
use std::io::Write;

fn admin_err(e: AdminError) -> anyhow::Error {
    anyhow::Error::msg(e.to_string())
}

/// The (kind, id) of the one scope flag given (clap requires exactly one).
fn scope_of(args: &BudgetScopeArgs) -> anyhow::Result<(ScopeKind, String)> {
    [
        (ScopeKind::Team, &args.team),
        (ScopeKind::User, &args.user),
        (ScopeKind::Customer, &args.customer),
        (ScopeKind::Org, &args.org),
    ]
    .into_iter()
    .find_map(|(k, id)| id.clone().map(|id| (k, id)))
    .ok_or_else(|| anyhow::anyhow!("give one of --team, --user, --customer, --org"))
}

/// `metis gateway budget …`.
///
/// # Errors
/// Validation (naming the flag), key store or audit failures.
pub async fn budget(
    cmd: BudgetCommand,
    parent: &StorageArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        BudgetCommand::Set(args) => {
            let (scope, id) = scope_of(&args.scope)?;
            let paths = Paths::resolve(&args.scope.storage.or(parent))?;
            let policy = BudgetPolicy {
                scope,
                id,
                daily_usd: args.daily_usd,
                weekly_usd: args.weekly_usd,
                monthly_usd: args.monthly_usd,
                tpm: args.tpm,
                alert_at: (!args.alert_at.is_empty()).then_some(args.alert_at),
                allowed_models: (!args.allowed_models.is_empty()).then_some(
                    args.allowed_models
                        .into_iter()
                        .map(|m| m.trim().to_owned())
                        .collect(),
                ),
                updated_at: None,
            };
            let session = AdminSession::open(&paths).await?;
            let stored = session.admin.set_budget(policy, None).await;
            session.close().await?;
            let stored = stored.map_err(admin_err)?;
            writeln!(out, "budget set: {}", stored.label())?;
            write_budget_lines(out, &stored)?;
            Ok(())
        }
        BudgetCommand::List(args) => {
            let paths = Paths::resolve(&args.storage.or(parent))?;
            let session = AdminSession::open(&paths).await?;
            let policies = session.admin.policies().await;
            session.close().await?;
            let policies = policies.map_err(admin_err)?;
            if args.format == ListFormat::Json {
                writeln!(out, "{}", serde_json::to_string_pretty(&policies.budgets)?)?;
                return Ok(());
            }
            if policies.budgets.is_empty() {
                writeln!(out, "(no budgets)")?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<9} {:<20} {:>10} {:>10} {:>10} {:>9} {:<12} ALLOWED_MODELS",
                "SCOPE", "ID", "DAILY", "WEEKLY", "MONTHLY", "TPM", "ALERT_AT"
            )?;
            for b in &policies.budgets {
                writeln!(
                    out,
                    "{:<9} {:<20} {:>10} {:>10} {:>10} {:>9} {:<12} {}",
                    b.scope.as_str(),
                    b.id,
                    b.daily_usd.as_deref().unwrap_or("-"),
                    b.weekly_usd.as_deref().unwrap_or("-"),
                    b.monthly_usd.as_deref().unwrap_or("-"),
                    b.tpm.map_or_else(|| "-".to_owned(), |t| t.to_string()),
                    alert_levels(b.alert_at.as_deref()),
                    b.allowed_models
                        .as_ref()
                        .map_or_else(|| "(all)".to_owned(), |m| m.join(",")),
                )?;
            }
            Ok(())
        }
        BudgetCommand::Delete(args) => {
            let (scope, id) = scope_of(&args)?;
            let paths = Paths::resolve(&args.storage.or(parent))?;
            let session = AdminSession::open(&paths).await?;
            let removed = session.admin.delete_budget(scope, &id, None).await;
            session.close().await?;
            let removed = removed.map_err(admin_err)?;
            writeln!(out, "budget deleted: {}", removed.label())?;
            Ok(())
        }
    }
}

fn alert_levels(levels: Option<&[u8]>) -> String {
    let levels = levels.unwrap_or(&metis_domain::budgets::DEFAULT_ALERT_LEVELS);
    levels
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn write_budget_lines(out: &mut impl Write, b: &BudgetPolicy) -> std::io::Result<()> {
    for (name, v) in [
        ("daily_usd", b.daily_usd.clone()),
        ("weekly_usd", b.weekly_usd.clone()),
        ("monthly_usd", b.monthly_usd.clone()),
        ("tpm", b.tpm.map(|t| t.to_string())),
    ] {
        writeln!(out, "{name}: {}", v.as_deref().unwrap_or("-"))?;
    }
    writeln!(out, "alert_at: {}", alert_levels(b.alert_at.as_deref()))?;
    writeln!(
        out,
        "allowed_models: {}",
        b.allowed_models
            .as_ref()
            .map_or_else(|| "(all)".to_owned(), |m| m.join(","))
    )
}

/// `metis gateway model-group …`.
///
/// # Errors
/// Validation (naming the problem), unknown group, key store or audit failures.
pub async fn model_group(
    cmd: ModelGroupCommand,
    parent: &StorageArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        ModelGroupCommand::Set(args) => {
            let paths = Paths::resolve(&args.storage.or(parent))?;
            let session = AdminSession::open(&paths).await?;
            let stored = session
                .admin
                .set_model_group(&args.name, args.models, None)
                .await;
            session.close().await?;
            let stored = stored.map_err(admin_err)?;
            writeln!(out, "model group set: {}", stored.name)?;
            writeln!(out, "models: {}", stored.models.join(","))?;
            Ok(())
        }
        ModelGroupCommand::List(args) => {
            let paths = Paths::resolve(&args.storage.or(parent))?;
            let session = AdminSession::open(&paths).await?;
            let policies = session.admin.policies().await;
            session.close().await?;
            let policies = policies.map_err(admin_err)?;
            if args.format == ListFormat::Json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&policies.model_groups)?
                )?;
                return Ok(());
            }
            if policies.model_groups.is_empty() {
                writeln!(out, "(no model groups)")?;
                return Ok(());
            }
            writeln!(out, "{:<24} MODELS", "GROUP")?;
            for g in &policies.model_groups {
                writeln!(out, "{:<24} {}", g.name, g.models.join(","))?;
            }
            Ok(())
        }
        ModelGroupCommand::Delete(args) => {
            let paths = Paths::resolve(&args.storage.or(parent))?;
            let session = AdminSession::open(&paths).await?;
            let removed = session.admin.delete_model_group(&args.name, None).await;
            session.close().await?;
            let removed = removed.map_err(admin_err)?;
            writeln!(out, "model group deleted: {}", removed.name)?;
            Ok(())
        }
    }
}
