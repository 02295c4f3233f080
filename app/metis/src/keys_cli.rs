//! `metis gateway issue-key | list-keys | revoke-key | rotate-key`: the key lifecycle use
//! case over the configured keystore, audited into the trace DB.

use crate::paths::Paths;
use crate::system::{SystemClock, UlidIds};
use anyhow::Context;
use metis_keystore_file::FileKeyStore;
use metis_ports::keys::KeyStore;
use metis_ports::trace::EventSink;
use metis_usecases::key_admin::{IssueRequest, IssuedKey, KeyView, Revoked, Rotated};
use metis_usecases::{AdminError, KeyAdmin};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// The `--keystore` value that selects keys stored in the main database.
pub const STORE_KEYSTORE: &str = "store";

/// Open the keystore named by `paths` (`store` = the trace DB's `gateway_keys` table).
///
/// # Errors
/// A server engine without its database settings (stores open lazily otherwise).
pub fn open_keystore(paths: &Paths) -> anyhow::Result<Arc<dyn KeyStore>> {
    if paths.keystore.as_os_str() == STORE_KEYSTORE {
        return Ok(paths.backend()?.key_store(&paths.db));
    }
    Ok(Arc::new(FileKeyStore::new(&paths.keystore)))
}

/// A key administration session: the use case plus the trace store its audit events go to.
pub struct AdminSession {
    pub admin: KeyAdmin,
    trace: Arc<dyn metis_ports::storage::MainStore>,
}

impl AdminSession {
    /// Open the keystore and the trace DB for auditing.
    ///
    /// # Errors
    /// Trace DB unopenable (e.g. newer schema) or keystore unopenable.
    pub async fn open(paths: &Paths) -> anyhow::Result<AdminSession> {
        let trace =
            crate::store::open_main(paths, false, metis_ports::queue::DEFAULT_COMMIT_DEADLINE)
                .await
                .with_context(|| format!("cannot open the audit trail {}", paths.location()))?;
        let sink: Arc<dyn EventSink> = trace.clone();
        let admin = KeyAdmin::new(
            open_keystore(paths)?,
            sink,
            Arc::new(SystemClock),
            Arc::new(UlidIds::default()),
            metis_domain::events::key_sources::CLI,
        );
        Ok(AdminSession { admin, trace })
    }

    /// Flush the audit events and close the trace store.
    ///
    /// # Errors
    /// When an audit event could not be written (the key change itself is already stored).
    pub async fn close(self) -> anyhow::Result<()> {
        let flushed = self.trace.flush().await;
        self.trace.shutdown().await;
        flushed.context("the key change is stored, but its audit event could not be written")
    }
}

fn admin_err(e: AdminError) -> anyhow::Error {
    anyhow::Error::msg(e.to_string())
}

/// Resolve a workspace argument to an absolute path (it need not exist).
///
/// # Errors
/// Empty path, or no current directory to resolve a relative one against.
pub fn absolute(p: &Path) -> anyhow::Result<String> {
    if p.as_os_str().is_empty() {
        anyhow::bail!("--workspace must be non-empty");
    }
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("cannot resolve --workspace: no current directory")?
            .join(p)
    };
    Ok(abs.display().to_string())
}

/// Issue a key.
///
/// # Errors
/// Validation (naming the flag), keystore or audit failures.
pub async fn issue(paths: &Paths, req: &IssueRequest) -> anyhow::Result<IssuedKey> {
    let session = AdminSession::open(paths).await?;
    let issued = session.admin.issue(req).await.map_err(admin_err)?;
    session.close().await?;
    Ok(issued)
}

/// Print an issued key the way the original tool did.
///
/// # Errors
/// Stdout write failures.
pub fn print_issued(out: &mut impl Write, issued: &IssuedKey) -> std::io::Result<()> {
    let r = &issued.record;
    writeln!(out, "key_id: {}", r.key_id)?;
    writeln!(out, "token:  {}", issued.token)?;
    for (label, v) in [
        ("user:   ", &r.user_id),
        ("team:   ", &r.team_id),
        ("customer_tier: ", &r.customer_tier),
        ("daily_cap_usd: ", &r.daily_cap_usd),
        ("monthly_cap_usd: ", &r.monthly_cap_usd),
        ("expires_at: ", &r.expires_at),
    ] {
        if let Some(v) = v {
            writeln!(out, "{label}{v}")?;
        }
    }
    if let Some(rpm) = r.rpm {
        writeln!(out, "rpm: {rpm}")?;
    }
    Ok(())
}

/// `list-keys`.
///
/// # Errors
/// Keystore or output failures.
pub async fn list(paths: &Paths, json_format: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let session = AdminSession::open(paths).await?;
    let keys = session.admin.list().await.map_err(admin_err)?;
    session.close().await?;
    if json_format {
        let rows: Vec<_> = keys.iter().map(key_json).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    if keys.is_empty() {
        writeln!(out, "(no keys in keystore)")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<32} {:<8} {:<12} {:<12} {:>10} {:<20} {:<20} NAME",
        "KEY_ID", "STATUS", "USER", "TEAM", "CAP", "CREATED", "EXPIRES"
    )?;
    writeln!(out, "{}", "-".repeat(131))?;
    for k in &keys {
        let r = &k.record;
        let cap = r
            .daily_cap_usd
            .as_deref()
            .or(r.monthly_cap_usd.as_deref())
            .unwrap_or("-");
        let created: String = r
            .created_at
            .as_deref()
            .unwrap_or("-")
            .chars()
            .take(19)
            .collect();
        let expires: String = r
            .expires_at
            .as_deref()
            .unwrap_or("-")
            .chars()
            .take(19)
            .collect();
        writeln!(
            out,
            "{:<32} {:<8} {:<12} {:<12} {:>10} {:<20} {:<20} {}",
            r.key_id,
            k.display_status,
            r.user_id.as_deref().unwrap_or("-"),
            r.team_id.as_deref().unwrap_or("-"),
            cap,
            created,
            expires,
            r.display_name()
        )?;
    }
    Ok(())
}

/// The JSON view of a key (never its hash or token).
#[must_use]
pub fn key_json(k: &KeyView) -> serde_json::Value {
    let r = &k.record;
    json!({
        "key_id": r.key_id,
        "name": r.display_name(),
        "workspace_path": r.workspace_path,
        "status": if r.status == metis_domain::keys::KeyStatus::Revoked { "revoked" } else { "active" },
        "effective_status": k.effective_status,
        "user_id": r.user_id,
        "team_id": r.team_id,
        "allowed_models": r.allowed_models.as_ref().filter(|m| !m.is_empty()),
        "daily_cap_usd": r.daily_cap_usd,
        "monthly_cap_usd": r.monthly_cap_usd,
        "rpm": r.rpm,
        "created_at": r.created_at,
        "revoked_at": r.revoked_at,
        "grace_period_until": r.grace_period_until,
        "expires_at": r.expires_at,
        "customer_tier": r.customer_tier,
        "customer_id": r.customer_id,
        "org_id": r.org_id,
        "weekly_cap_usd": r.weekly_cap_usd,
        "tpm": r.tpm,
        "alert_at": r.alert_at,
    })
}

/// `revoke-key`.
///
/// # Errors
/// Unknown key, keystore or audit failures.
pub async fn revoke(paths: &Paths, key_id: &str) -> anyhow::Result<Revoked> {
    let session = AdminSession::open(paths).await?;
    let r = session.admin.revoke(key_id).await.map_err(admin_err)?;
    session.close().await?;
    Ok(r)
}

/// `rotate-key`.
///
/// # Errors
/// Unknown or inactive key, bad grace, keystore or audit failures.
pub async fn rotate(
    paths: &Paths,
    key_id: &str,
    grace_secs: u64,
    expiry: metis_domain::keys::RotationExpiry,
) -> anyhow::Result<Rotated> {
    let session = AdminSession::open(paths).await?;
    let r = session
        .admin
        .rotate(key_id, grace_secs, expiry)
        .await
        .map_err(admin_err)?;
    session.close().await?;
    Ok(r)
}

/// The changes `update-key` asks for. A setting both given and cleared is refused.
///
/// # Errors
/// A setting given a value and named in `--clear`.
pub fn key_changes(
    a: crate::cli::UpdateKeyArgs,
) -> anyhow::Result<(String, metis_ports::admin::KeyChanges)> {
    use crate::cli::KeySetting as S;
    use metis_ports::admin::Change;
    let clear = a.clear;
    let pick = |set: Option<String>, s: S, flag: &str| -> anyhow::Result<Change<String>> {
        change(set, clear.contains(&s), flag)
    };
    let changes = metis_ports::admin::KeyChanges {
        allowed_models: change(
            (!a.allow_model.is_empty()).then_some(a.allow_model),
            clear.contains(&S::AllowModel),
            "--allow-model",
        )?,
        daily_cap_usd: pick(a.daily_cap_usd, S::DailyCapUsd, "--daily-cap-usd")?,
        weekly_cap_usd: pick(a.weekly_cap_usd, S::WeeklyCapUsd, "--weekly-cap-usd")?,
        monthly_cap_usd: pick(a.monthly_cap_usd, S::MonthlyCapUsd, "--monthly-cap-usd")?,
        rpm: change(a.rpm, clear.contains(&S::Rpm), "--rpm")?,
        tpm: change(a.tpm, clear.contains(&S::Tpm), "--tpm")?,
        alert_at: change(
            (!a.alert_at.is_empty()).then_some(a.alert_at),
            clear.contains(&S::AlertAt),
            "--alert-at",
        )?,
        user: pick(a.user, S::User, "--user")?,
        team: pick(a.team, S::Team, "--team")?,
        customer: pick(a.customer, S::Customer, "--customer")?,
        org: pick(a.org, S::Org, "--org")?,
    };
    if changes == metis_ports::admin::KeyChanges::default() {
        anyhow::bail!(
            "update-key changes nothing: give a setting (e.g. --team T) or --clear SETTING"
        );
    }
    Ok((a.key_id, changes))
}

fn change<T>(
    set: Option<T>,
    clear: bool,
    flag: &str,
) -> anyhow::Result<metis_ports::admin::Change<T>> {
    use metis_ports::admin::Change;
    match (set, clear) {
        (Some(_), true) => anyhow::bail!("{flag} is both given and named in --clear"),
        (Some(v), false) => Ok(Change::Set(v)),
        (None, true) => Ok(Change::Clear),
        (None, false) => Ok(Change::Keep),
    }
}

/// `update-key`.
///
/// # Errors
/// Unknown or inactive key, invalid settings, keystore or audit failures.
pub async fn update(
    paths: &Paths,
    key_id: &str,
    changes: metis_ports::admin::KeyChanges,
) -> anyhow::Result<KeyView> {
    let session = AdminSession::open(paths).await?;
    let r = session.admin.update_key(key_id, changes, None).await;
    session.close().await?;
    r.map_err(admin_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn update_args(args: &[&str]) -> crate::cli::UpdateKeyArgs {
        let mut all = vec!["metis", "gateway", "update-key", "gk_1"];
        all.extend(args);
        let cli = crate::cli::Cli::try_parse_from(all).unwrap_or_else(|e| panic!("{e}"));
        let crate::cli::Command::Gateway(g) = cli.command else {
            panic!("expected gateway")
        };
        let Some(crate::cli::KeyCommand::UpdateKey(a)) = g.action else {
            panic!("expected update-key")
        };
        a
    }

    /// Given settings are set, `--clear` ones removed, the rest kept; a setting both given and
    /// cleared, or no setting at all, is refused naming the flag.
    #[test]
    fn update_key_flags_become_changes() {
        use metis_ports::admin::Change;
        let (id, c) = key_changes(update_args(&["--team", "eng", "--clear", "org,tpm"])).unwrap();
        assert_eq!(id, "gk_1");
        assert_eq!(c.team, Change::Set("eng".to_owned()));
        assert_eq!((c.org, c.tpm), (Change::Clear, Change::Clear));
        assert_eq!(c.user, Change::Keep);
        let err = key_changes(update_args(&["--team", "eng", "--clear", "team"])).unwrap_err();
        assert!(err.to_string().contains("--team"), "{err}");
        assert!(key_changes(update_args(&[])).is_err());
    }
}
