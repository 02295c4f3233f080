//! `metis gateway issue-key`: mint a key, store only its hash, audit the issuance.

use crate::paths::Paths;
use crate::system::{SystemClock, UlidIds};
use anyhow::Context;
use gw_domain::events::{KeyIssued, make_event};
use gw_domain::keys::{KeyRecord, KeyStatus, hash_token, token_from_random, validate_tag};
use gw_domain::time::format_iso;
use gw_keystore_file::FileKeyStore;
use gw_ports::keys::KeyStore;
use gw_ports::system::{Clock, IdSource};
use gw_ports::trace::EventSink;
use gw_storage_sqlite::{SqliteTraceStore, WriterOptions};
use std::path::{Path, PathBuf};

/// What to issue.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub workspace: PathBuf,
    pub allowed_models: Vec<String>,
    pub user: Option<String>,
    pub team: Option<String>,
}

/// The issued key: its id and the plaintext token (shown once, never stored).
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub record: KeyRecord,
    pub token: String,
}

/// Build a new key record and its token. Validation errors name the flag.
///
/// # Errors
/// Empty name, malformed `--user`/`--team`, or an empty `--allow-model`.
pub fn mint(new: &NewKey, clock: &dyn Clock, ids: &dyn IdSource) -> anyhow::Result<IssuedKey> {
    if new.name.trim().is_empty() {
        anyhow::bail!("--name must be non-empty");
    }
    if let Some(u) = &new.user {
        validate_tag("--user", u).map_err(anyhow::Error::msg)?;
    }
    if let Some(t) = &new.team {
        validate_tag("--team", t).map_err(anyhow::Error::msg)?;
    }
    if new.allowed_models.iter().any(|m| m.trim().is_empty()) {
        anyhow::bail!("--allow-model must be non-empty");
    }
    let workspace = absolute(&new.workspace)?;
    let token = token_from_random(&ids.secret_bytes());
    let record = KeyRecord {
        key_id: format!("gk_{}", ids.ulid()),
        secret_hash: hash_token(&token),
        name: Some(new.name.clone()),
        workspace_path: workspace.display().to_string(),
        created_at: Some(format_iso(clock.now_us())),
        allowed_models: (!new.allowed_models.is_empty()).then(|| new.allowed_models.clone()),
        daily_cap_usd: None,
        monthly_cap_usd: None,
        rpm: None,
        user_id: new.user.clone(),
        team_id: new.team.clone(),
        customer_tier: None,
        status: KeyStatus::Active,
        revoked_at: None,
        grace_period_until: None,
        extra: serde_json::Map::new(),
    };
    Ok(IssuedKey { record, token })
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.as_os_str().is_empty() {
        anyhow::bail!("--workspace must be non-empty");
    }
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd =
        std::env::current_dir().context("cannot resolve --workspace: no current directory")?;
    Ok(cwd.join(p))
}

/// The `gateway.key_issued` audit payload of a record.
#[must_use]
pub fn issued_event(record: &KeyRecord) -> KeyIssued {
    KeyIssued {
        gateway_key_id: record.key_id.clone(),
        name: record.display_name().to_owned(),
        workspace_path: record.workspace_path.clone(),
        issued_at: record.created_at.clone().unwrap_or_default(),
        user_id: record.user_id.clone(),
        team_id: record.team_id.clone(),
        allowed_models: record.allowed_models.clone(),
        daily_cap_usd: record.daily_cap_usd.clone(),
        monthly_cap_usd: record.monthly_cap_usd.clone(),
        customer_tier: record.customer_tier.clone(),
    }
}

/// Emit `gateway.key_issued` into `sink` (session `system`).
pub fn audit_issued(
    sink: &dyn EventSink,
    record: &KeyRecord,
    clock: &dyn Clock,
    ids: &dyn IdSource,
) {
    sink.emit(make_event(
        ids.ulid(),
        clock.now_us(),
        "system",
        None,
        None,
        &issued_event(record),
    ));
}

/// Issue a key into the keystore at `paths.keystore` and audit it in `paths.db`.
///
/// # Errors
/// Validation errors, keystore errors (read-only, corrupt), trace store errors.
pub async fn issue(paths: &Paths, new: &NewKey) -> anyhow::Result<IssuedKey> {
    let clock = SystemClock;
    let ids = UlidIds::default();
    let issued = mint(new, &clock, &ids)?;
    let store = FileKeyStore::new(&paths.keystore);
    store
        .insert(issued.record.clone())
        .await
        .context("could not store the new key")?;
    let db = paths.db.clone();
    let trace =
        tokio::task::spawn_blocking(move || SqliteTraceStore::open(&db, WriterOptions::default()))
            .await
            .context("trace store task failed")?
            .with_context(|| {
                format!(
                    "key stored, but the audit event could not be written to {}",
                    paths.db.display()
                )
            })?;
    audit_issued(&trace, &issued.record, &clock, &ids);
    trace
        .flush()
        .await
        .context("could not write the audit event")?;
    trace.shutdown().await;
    Ok(issued)
}

/// Convenience for tests: issue a key into `keystore` (audit DB beside it) and return
/// `(key_id, token)`.
///
/// # Errors
/// As [`issue`].
pub async fn issue_key(
    keystore: &Path,
    name: &str,
    workspace: &Path,
    allowed_models: &[String],
) -> anyhow::Result<(String, String)> {
    let db = keystore
        .parent()
        .map_or_else(|| PathBuf::from("metis.db"), |d| d.join("metis.db"));
    let paths = Paths {
        data_dir: keystore.parent().map(Path::to_path_buf).unwrap_or_default(),
        db,
        keystore: keystore.to_path_buf(),
    };
    let issued = issue(
        &paths,
        &NewKey {
            name: name.to_owned(),
            workspace: workspace.to_path_buf(),
            allowed_models: allowed_models.to_vec(),
            user: None,
            team: None,
        },
    )
    .await?;
    Ok((issued.record.key_id, issued.token))
}
