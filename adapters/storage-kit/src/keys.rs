//! What the key stores kept in a database (SQLite, redb, PostgreSQL) do alike: parsing and
//! checking stored rows, the checks before a write, the edit step of `update`, the read-only
//! file rule, and the `KeyStore` port over the file engines' blocking methods ([`key_store_on_blocking_pool!`](crate::key_store_on_blocking_pool)).
//! Each backend keeps its own reads, writes and error mapping.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use metis_domain::budgets::Policies;
use metis_domain::keys::{KeyRecord, validate_key_set};
use metis_ports::keys::{KeyEdit, KeyStoreError, PolicyEdit};

/// One row of a `gateway_keys` table as an engine stores it: the key id and the hash in their
/// own columns (for lookups and uniqueness), and the whole record as JSON.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub key_id: String,
    pub secret_hash: String,
    pub record_json: String,
}

/// Parse and validate stored rows: each record must be valid and agree with its row's
/// columns, and the set must be a valid key set. The message names the row and the problem.
///
/// # Errors
/// The first problem found.
pub fn parse_key_rows(rows: Vec<StoredKey>) -> Result<Vec<KeyRecord>, String> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let label = format!("gateway_keys row '{}'", row.key_id);
        let mut record: KeyRecord = serde_json::from_str(&row.record_json)
            .map_err(|e| format!("{label}: record_json is not a valid key record: {e}"))?;
        if record.key_id != row.key_id {
            return Err(format!(
                "{label}: record_json holds key_id '{}' (the row and its record disagree)",
                record.key_id
            ));
        }
        record.secret_hash.make_ascii_lowercase();
        if record.secret_hash != row.secret_hash {
            return Err(format!(
                "{label}: record_json's secret_hash differs from the row's secret_hash column"
            ));
        }
        record.validate().map_err(|e| format!("{label}: {e}"))?;
        out.push(record);
    }
    validate_key_set(&out)?;
    Ok(out)
}

/// A database file without any write permission bit is the operator saying "do not edit":
/// honoured even when running as root (where the engine would write anyway), as the file
/// keystore does. Returns the reason (with the mode) when the file at `path` is such a file;
/// `None` when it is writable or does not exist.
#[must_use]
pub fn read_only_file(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    let mode = m.permissions().mode();
    (mode & 0o222 == 0)
        .then(|| format!("the database file is read-only (mode {:o})", mode & 0o7777))
}

/// The record `insert` stores: `record` with its hash lowercased, checked on its own.
///
/// # Errors
/// `Corrupt` at `location` naming the invalid field.
pub fn record_to_insert(mut record: KeyRecord, location: &str) -> Result<KeyRecord, KeyStoreError> {
    record.secret_hash.make_ascii_lowercase();
    record
        .validate()
        .map_err(|message| KeyStoreError::Corrupt {
            location: location.to_owned(),
            message: format!("refusing to store an invalid key record: {message}"),
        })?;
    Ok(record)
}

/// What an edit made of the stored set.
#[derive(Debug)]
pub enum Edited {
    /// The edit changed nothing: write nothing, answer with this set.
    Unchanged(Vec<KeyRecord>),
    /// The set to write (hashes lowercased, validated as a whole).
    Changed(Vec<KeyRecord>),
}

/// Apply `edit` to a copy of `before` (the set read inside the write transaction).
///
/// # Errors
/// `Rejected` when the edit refused; `Corrupt` at `location` when the edited set is invalid.
/// Nothing may be written then.
pub fn apply_edit(
    before: &[KeyRecord],
    edit: KeyEdit,
    location: &str,
) -> Result<Edited, KeyStoreError> {
    let mut records = before.to_vec();
    edit(&mut records).map_err(|message| KeyStoreError::Rejected { message })?;
    if records == before {
        return Ok(Edited::Unchanged(records));
    }
    for r in &mut records {
        r.secret_hash.make_ascii_lowercase();
    }
    validate_key_set(&records).map_err(|m| KeyStoreError::Corrupt {
        location: location.to_owned(),
        message: format!("refusing to store an invalid key set: {m}"),
    })?;
    Ok(Edited::Changed(records))
}

/// Parse stored policies (the JSON of `Policies`; `None` = never written) and validate them.
///
/// # Errors
/// A message naming the problem.
pub fn parse_policies(json: Option<&str>) -> Result<Policies, String> {
    let Some(json) = json else {
        return Ok(Policies::default());
    };
    let policies: Policies = serde_json::from_str(json)
        .map_err(|e| format!("stored policies are not valid budgets and model groups: {e}"))?;
    policies
        .validate()
        .map_err(|e| format!("stored policies: {e}"))?;
    Ok(policies)
}

/// The JSON a store keeps for `policies`.
///
/// # Errors
/// `Io` at `location` when serialisation fails (not expected).
pub fn policies_json(policies: &Policies, location: &str) -> Result<String, KeyStoreError> {
    serde_json::to_string(policies).map_err(|e| KeyStoreError::Io {
        location: location.to_owned(),
        message: format!("cannot serialise the policies: {e}"),
    })
}

/// Apply a policy `edit` to a copy of `before` (read inside the write transaction). `None`
/// when the edit changed nothing (write nothing).
///
/// # Errors
/// `Rejected` when the edit refused; `Corrupt` at `location` when the result is invalid.
pub fn apply_policy_edit(
    before: &Policies,
    edit: PolicyEdit,
    location: &str,
) -> Result<Option<Policies>, KeyStoreError> {
    let mut after = before.clone();
    edit(&mut after).map_err(|message| KeyStoreError::Rejected { message })?;
    if after == *before {
        return Ok(None);
    }
    after.validate().map_err(|m| KeyStoreError::Corrupt {
        location: location.to_owned(),
        message: format!("refusing to store invalid policies: {m}"),
    })?;
    Ok(Some(after))
}

/// Run a key store's blocking `job` on the blocking pool.
///
/// # Errors
/// The job's error, or `Io` at `location` when the task failed.
pub async fn on_pool<T: Send + 'static>(
    location: String,
    job: impl FnOnce() -> Result<T, KeyStoreError> + Send + 'static,
) -> Result<T, KeyStoreError> {
    crate::blocking(job).await.unwrap_or_else(|e| {
        Err(KeyStoreError::Io {
            location,
            message: format!("keystore task failed: {e}"),
        })
    })
}

/// Implement the `KeyStore` port for a key store type by running its blocking methods on
/// the blocking pool. The type must be `Clone + Send + Sync + 'static` and have
/// `location(&self) -> String` (what `describe` shows) and the port's operations as
/// `load_blocking`, `insert_blocking`, `update_blocking`, `version_blocking`,
/// `load_policies_blocking` and `update_policies_blocking`, with the port's arguments and
/// results. The impl is written into the calling adapter crate.
#[macro_export]
macro_rules! key_store_on_blocking_pool {
    ($store:ty) => {
        #[$crate::__async_trait]
        impl $crate::__ports::keys::KeyStore for $store {
            fn describe(&self) -> ::std::string::String {
                self.location()
            }

            async fn load(
                &self,
            ) -> ::core::result::Result<
                ::std::vec::Vec<$crate::__domain::keys::KeyRecord>,
                $crate::__ports::keys::KeyStoreError,
            > {
                let s = self.clone();
                $crate::keys::on_pool(self.location(), move || s.load_blocking()).await
            }

            async fn insert(
                &self,
                record: $crate::__domain::keys::KeyRecord,
            ) -> ::core::result::Result<(), $crate::__ports::keys::KeyStoreError> {
                let s = self.clone();
                $crate::keys::on_pool(self.location(), move || s.insert_blocking(record)).await
            }

            async fn update(
                &self,
                edit: $crate::__ports::keys::KeyEdit,
            ) -> ::core::result::Result<
                ::std::vec::Vec<$crate::__domain::keys::KeyRecord>,
                $crate::__ports::keys::KeyStoreError,
            > {
                let s = self.clone();
                $crate::keys::on_pool(self.location(), move || s.update_blocking(edit)).await
            }

            async fn version(&self) -> ::core::option::Option<String> {
                let s = self.clone();
                $crate::blocking(move || s.version_blocking())
                    .await
                    .ok()
                    .flatten()
            }

            async fn load_policies(
                &self,
            ) -> ::core::result::Result<
                $crate::__domain::budgets::Policies,
                $crate::__ports::keys::KeyStoreError,
            > {
                let s = self.clone();
                $crate::keys::on_pool(self.location(), move || s.load_policies_blocking()).await
            }

            async fn update_policies(
                &self,
                edit: $crate::__ports::keys::PolicyEdit,
            ) -> ::core::result::Result<
                $crate::__domain::budgets::Policies,
                $crate::__ports::keys::KeyStoreError,
            > {
                let s = self.clone();
                $crate::keys::on_pool(self.location(), move || s.update_policies_blocking(edit))
                    .await
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use metis_domain::keys::hash_token;

    fn key(id: &str, token: &str) -> KeyRecord {
        serde_json::from_value(serde_json::json!({
            "key_id": id,
            "secret_hash": hash_token(token),
            "workspace_path": "/w",
        }))
        .unwrap_or_else(|e| unreachable!("a valid record: {e}"))
    }

    /// An edit that changes nothing writes nothing; a change comes back lowercased and
    /// checked; a refused or invalid edit is an error naming why.
    #[test]
    fn an_edit_is_applied_checked_or_refused() {
        let before = vec![key("gk_a", "gw_a")];
        let same = apply_edit(&before, Box::new(|_| Ok(())), "store:x");
        assert!(matches!(same, Ok(Edited::Unchanged(r)) if r == before));
        let added = apply_edit(
            &before,
            Box::new(|ks| {
                let mut k = key("gk_b", "gw_b");
                k.secret_hash.make_ascii_uppercase();
                ks.push(k);
                Ok(())
            }),
            "store:x",
        );
        let Ok(Edited::Changed(after)) = added else {
            unreachable!("{added:?}")
        };
        assert_eq!(after[1].secret_hash, hash_token("gw_b"));
        let refused = apply_edit(&before, Box::new(|_| Err("revoked".into())), "store:x");
        assert!(
            matches!(refused, Err(KeyStoreError::Rejected { message }) if message == "revoked")
        );
        let dup = apply_edit(
            &before,
            Box::new(|ks| {
                ks.push(key("gk_a", "gw_other"));
                Ok(())
            }),
            "store:x",
        );
        assert!(
            matches!(&dup, Err(KeyStoreError::Corrupt { location, message })
                if location == "store:x" && message.contains("duplicate key_id 'gk_a'")),
            "{dup:?}"
        );
    }

    #[test]
    fn a_record_to_insert_is_lowercased_and_checked() {
        let mut k = key("gk_a", "gw_a");
        k.secret_hash.make_ascii_uppercase();
        let stored = record_to_insert(k, "store:x").map(|r| r.secret_hash);
        assert_eq!(stored.ok(), Some(hash_token("gw_a")));
        let mut bad = key("gk_a", "gw_a");
        bad.workspace_path.clear();
        assert!(matches!(
            record_to_insert(bad, "store:x"),
            Err(KeyStoreError::Corrupt { .. })
        ));
    }

    /// A file without write bits is read-only (named with its mode); a writable or missing
    /// one is not.
    #[test]
    fn a_file_without_write_bits_is_read_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let path = dir.path().join("metis.db");
        assert_eq!(read_only_file(&path), None);
        std::fs::write(&path, b"x").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(read_only_file(&path), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444))
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            read_only_file(&path).as_deref(),
            Some("the database file is read-only (mode 444)")
        );
    }
}
