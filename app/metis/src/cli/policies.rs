//! The arguments of `metis gateway budget …` and `metis gateway model-group …`.

use super::{ListArgs, StorageArgs};
use clap::{Args, Subcommand};

/// `metis gateway budget …`.
#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Create or replace the budget of one scope (every setting as given here; settings not
    /// given are removed). Running gateways apply it within 2 s.
    Set(BudgetSetArgs),
    /// List budgets (spend per window is in `GET /admin/v1/budgets` of a running gateway).
    List(ListArgs),
    /// Delete the budget of one scope.
    Delete(BudgetScopeArgs),
}

/// The one scope a budget command is about.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["team", "user", "customer", "org"])))]
pub struct BudgetScopeArgs {
    /// The team tag (`--team` of issue-key).
    #[arg(long)]
    pub team: Option<String>,
    /// The user tag (`--user` of issue-key).
    #[arg(long)]
    pub user: Option<String>,
    /// The customer tag (`--customer` of issue-key).
    #[arg(long)]
    pub customer: Option<String>,
    /// The organisation tag (`--org` of issue-key).
    #[arg(long)]
    pub org: Option<String>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Args)]
pub struct BudgetSetArgs {
    #[command(flatten)]
    pub scope: BudgetScopeArgs,
    /// Daily cap in USD across every key of the scope (UTC day; > 0).
    #[arg(long, allow_hyphen_values = true)]
    pub daily_usd: Option<String>,
    /// Weekly cap in USD (week from Monday 00:00 UTC; > 0).
    #[arg(long, allow_hyphen_values = true)]
    pub weekly_usd: Option<String>,
    /// Monthly cap in USD (month from `--budget-month-start-day`; > 0).
    #[arg(long, allow_hyphen_values = true)]
    pub monthly_usd: Option<String>,
    /// Tokens per minute (input + output) across every key of the scope.
    #[arg(long)]
    pub tpm: Option<u32>,
    /// Alert levels in percent of each cap, increasing (default 80,95,100).
    #[arg(long, value_delimiter = ',')]
    pub alert_at: Vec<u8>,
    /// Models every key of the scope is limited to (ids, aliases, `group:NAME`),
    /// comma-separated; on top of each key's own list.
    #[arg(long, value_delimiter = ',')]
    pub allowed_models: Vec<String>,
}

/// `metis gateway model-group …`.
#[derive(Debug, Subcommand)]
pub enum ModelGroupCommand {
    /// Create a group or replace its members. Every key and budget naming `group:NAME` may
    /// use the new members within 2 s, with nothing else edited.
    Set(ModelGroupSetArgs),
    /// List groups and their members.
    List(ListArgs),
    /// Delete a group: `group:NAME` entries then allow nothing (never more).
    Delete(ModelGroupNameArgs),
}

#[derive(Debug, Args)]
pub struct ModelGroupSetArgs {
    /// Group name (`^[a-z0-9_-]{1,64}$`).
    pub name: String,
    /// Members: canonical model ids or aliases, comma-separated (no groups).
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<String>,
    #[command(flatten)]
    pub storage: StorageArgs,
}

#[derive(Debug, Args)]
pub struct ModelGroupNameArgs {
    /// Group name.
    pub name: String,
    #[command(flatten)]
    pub storage: StorageArgs,
}
