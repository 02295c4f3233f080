//! `metis sessions list|show|migrate`: the session store of the trace database.
//!
//! Invariants:
//! - `list` and `show` open the database read-only (never created, stamped or migrated; a
//!   pre-delegation table reads with empty delegation fields).
//! - `show` prints the session, then its workers as a tree with each node's own cost and its
//!   subtree's total; cycles made by clients naming each other as parents are cut.
//! - `migrate` follows the shared migrate flow (backup first, one transaction, idempotent).

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use metis_domain::sessions::{SessionNode, SessionRecord, build_tree};
use metis_domain::time::format_iso;
use metis_ports::storage::Schema;
use metis_usecases::storage::sessions::descendants;

use crate::storage_cli::{DbArgs, migrate_text, run_blocking};

/// Most descendants `show` loads.
const MAX_TREE: usize = 10_000;

/// `metis sessions …`
#[derive(Debug, Args)]
pub struct SessionsCmd {
    #[command(subcommand)]
    pub action: SessionsAction,
}

#[derive(Debug, Subcommand)]
pub enum SessionsAction {
    /// Sessions, most recently updated first.
    List(ListArgs),
    /// One session and its workers as a tree, with cost per node.
    Show(ShowArgs),
    /// Bring the sessions table to this binary's shape (a backup is taken first).
    Migrate(crate::storage_cli::MigrateArgs),
}

/// Output format of `sessions list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SessionsFormat {
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sessions of this workspace (the key's workspace path).
    #[arg(long)]
    pub workspace: Option<String>,
    /// At most this many sessions.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    #[arg(long, value_enum, default_value = "text")]
    pub format: SessionsFormat,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The session id.
    pub id: String,
    #[command(flatten)]
    pub db: DbArgs,
}

fn usd(v: f64) -> String {
    format!("{v:.6}")
}

fn dash(v: Option<&str>) -> &str {
    v.unwrap_or("\u{2014}")
}

/// The `sessions list` table (text).
#[must_use]
pub fn list_text(rows: &[SessionRecord]) -> String {
    let header = [
        "ID",
        "WORKSPACE",
        "MODEL",
        "TURNS",
        "COST_USD",
        "WORKER",
        "PARENT",
        "UPDATED",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                s.workspace_path.clone(),
                dash(s.active_model.as_deref()).to_owned(),
                s.turn_count.to_string(),
                usd(s.cost_so_far_usd),
                if s.is_worker { "yes" } else { "no" }.to_owned(),
                dash(s.parent_session_id.as_deref()).to_owned(),
                format_iso(s.updated_at_us),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(str::to_owned));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// One `sessions list` JSON line.
#[must_use]
pub fn list_json_line(s: &SessionRecord) -> String {
    serde_json::json!({
        "id": s.id,
        "workspace_path": s.workspace_path,
        "active_model": s.active_model,
        "turn_count": s.turn_count,
        "cost_so_far_usd": s.cost_so_far_usd,
        "is_worker": s.is_worker,
        "parent_session_id": s.parent_session_id,
        "parent_tool_use_id": s.parent_tool_use_id,
        "created_at": format_iso(s.created_at_us),
        "updated_at": format_iso(s.updated_at_us),
    })
    .to_string()
}

fn node_line(n: &SessionNode) -> String {
    let s = &n.session;
    let mut line = format!(
        "{}  turns={} cost={} total={}",
        s.id,
        s.turn_count,
        usd(s.cost_so_far_usd),
        usd(n.subtree_cost_usd)
    );
    if let Some(m) = &s.active_model {
        line.push_str(&format!(" model={m}"));
    }
    if s.is_worker {
        line.push_str(" [worker");
        if let Some(t) = &s.parent_tool_use_id {
            line.push_str(&format!(", tool_use {t}"));
        }
        line.push(']');
    }
    line
}

fn render_children(n: &SessionNode, prefix: &str, out: &mut String) {
    let last = n.children.len().saturating_sub(1);
    for (i, c) in n.children.iter().enumerate() {
        let (branch, next) = if i == last {
            ("\u{2514}\u{2500}\u{2500} ", "    ")
        } else {
            ("\u{251c}\u{2500}\u{2500} ", "\u{2502}   ")
        };
        out.push_str(&format!("{prefix}{branch}{}\n", node_line(c)));
        render_children(c, &format!("{prefix}{next}"), out);
    }
}

/// The `sessions show` output.
#[must_use]
pub fn show_text(tree: &SessionNode) -> String {
    let s = &tree.session;
    let mut out = format!("session {}\n", s.id);
    for (k, v) in [
        ("workspace:", s.workspace_path.clone()),
        ("active model:", dash(s.active_model.as_deref()).to_owned()),
        ("turns:", s.turn_count.to_string()),
        ("cost_usd:", usd(s.cost_so_far_usd)),
        ("tree cost_usd:", usd(tree.subtree_cost_usd)),
        ("tree sessions:", tree.subtree_sessions.to_string()),
        ("created:", format_iso(s.created_at_us)),
        ("updated:", format_iso(s.updated_at_us)),
        ("parent:", dash(s.parent_session_id.as_deref()).to_owned()),
        (
            "parent tool use:",
            dash(s.parent_tool_use_id.as_deref()).to_owned(),
        ),
        ("worker:", if s.is_worker { "yes" } else { "no" }.to_owned()),
    ] {
        out.push_str(&format!("  {k:<17}{v}\n"));
    }
    out.push_str("tree (own cost, subtree total):\n");
    out.push_str(&node_line(tree));
    out.push('\n');
    render_children(tree, "", &mut out);
    out
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The main store read-only, through the backend the file is.
fn open_reader(args: &DbArgs) -> anyhow::Result<Box<dyn metis_ports::storage::StoreReader>> {
    let (db, backend) = args.store()?;
    Ok(backend.open_reader(&db)?)
}

/// `metis sessions …`
pub async fn run(cmd: SessionsCmd) -> ExitCode {
    match cmd.action {
        SessionsAction::List(args) => {
            run_blocking("sessions list", move || {
                let reader = open_reader(&args.db)?;
                let rows = reader.sessions(args.workspace.as_deref(), args.limit)?;
                match args.format {
                    SessionsFormat::Text => print(&list_text(&rows)),
                    SessionsFormat::Json => {
                        let text: String = rows
                            .iter()
                            .map(|r| format!("{}\n", list_json_line(r)))
                            .collect();
                        print(&text)
                    }
                }
            })
            .await
        }
        SessionsAction::Show(args) => {
            run_blocking("sessions show", move || {
                let reader = open_reader(&args.db)?;
                let Some(root) = reader.session(&args.id)? else {
                    anyhow::bail!("session {} not found", args.id);
                };
                let workers = descendants(reader.as_ref(), &root.id, MAX_TREE)?;
                print(&show_text(&build_tree(root, workers)))
            })
            .await
        }
        SessionsAction::Migrate(args) => {
            run_blocking("sessions migrate", move || {
                let (db, backend) = args.db.store()?;
                let text = migrate_text(
                    "sessions",
                    backend.migration(&db, Schema::Sessions).as_ref(),
                    args.dry_run,
                )?;
                print(&text)
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, parent: Option<&str>, cost: f64) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            workspace_path: "/w".into(),
            active_model: Some("m".into()),
            cost_so_far_usd: cost,
            turn_count: 1,
            created_at_us: 0,
            updated_at_us: 0,
            parent_session_id: parent.map(Into::into),
            parent_tool_use_id: parent.map(|_| "toolu_1".into()),
            is_worker: parent.is_some(),
        }
    }

    #[test]
    fn show_draws_the_worker_tree_with_costs() {
        let tree = build_tree(
            rec("root", None, 1.0),
            vec![
                rec("w1", Some("root"), 0.5),
                rec("w2", Some("root"), 0.25),
                rec("w1a", Some("w1"), 0.125),
            ],
        );
        let text = show_text(&tree);
        assert!(
            text.contains("root  turns=1 cost=1.000000 total=1.875000"),
            "{text}"
        );
        assert!(
            text.contains("\u{251c}\u{2500}\u{2500} w1  turns=1 cost=0.500000 total=0.625000"),
            "{text}"
        );
        assert!(
            text.contains("\u{2502}   \u{2514}\u{2500}\u{2500} w1a"),
            "{text}"
        );
        assert!(text.contains("\u{2514}\u{2500}\u{2500} w2"), "{text}");
    }

    #[test]
    fn list_aligns_columns() {
        let text = list_text(&[rec("a", None, 0.5), rec("longer-id", Some("a"), 0.0)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].find("WORKSPACE"), lines[1].find("/w"));
    }
}
