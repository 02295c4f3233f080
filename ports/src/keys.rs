//! The key store: where gateway key records live.

use async_trait::async_trait;
use metis_domain::budgets::Policies;
use metis_domain::keys::KeyRecord;

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The store does not exist yet (e.g. no keystore file).
    #[error("keystore not found: {location}")]
    NotFound { location: String },
    /// The stored data is unreadable or fails validation; the message names the problem.
    #[error("keystore {location} is invalid: {message}")]
    Corrupt { location: String, message: String },
    /// Writes are impossible (read-only file or mount, e.g. a Kubernetes Secret).
    #[error("keystore {location} is read-only: {message}")]
    ReadOnly { location: String, message: String },
    /// A key with this id or token hash already exists.
    #[error("key {key_id} already exists")]
    Duplicate { key_id: String },
    #[error("key '{key_id}' not found in keystore")]
    UnknownKey { key_id: String },
    #[error("keystore I/O error on {location}: {message}")]
    Io { location: String, message: String },
    /// An edit refused to apply (e.g. rotating a revoked key); nothing was written.
    #[error("{message}")]
    Rejected { message: String },
}

/// A read-modify-write edit of the whole key set. Returning `Err(message)` aborts the
/// update with [`KeyStoreError::Rejected`].
pub type KeyEdit = Box<dyn FnOnce(&mut Vec<KeyRecord>) -> Result<(), String> + Send>;

/// A read-modify-write edit of the stored policies (budgets and model groups). Returning
/// `Err(message)` aborts the update with [`KeyStoreError::Rejected`].
pub type PolicyEdit = Box<dyn FnOnce(&mut Policies) -> Result<(), String> + Send>;

/// Persistent storage of key records, and of the policies (budgets, model groups) that are
/// stored beside them so one change token and one reload cover both.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Where the keys live, for the boot line and error messages (never secrets).
    fn describe(&self) -> String;

    /// Every stored key, in insertion order.
    ///
    /// # Errors
    /// `NotFound` if the store does not exist; `Corrupt` if any record fails validation
    /// (nothing is returned then: a half-valid key set is never served).
    async fn load(&self) -> Result<Vec<KeyRecord>, KeyStoreError>;

    /// Append a new key. MUST be atomic (a reader sees the old set or the new set) and MUST
    /// NOT lose a concurrent writer's update. Creates the store when missing.
    ///
    /// # Errors
    /// `Duplicate` on an existing id or hash; `Corrupt` when the record fails validation
    /// (nothing is written); `ReadOnly` when writes are impossible.
    async fn insert(&self, record: KeyRecord) -> Result<(), KeyStoreError>;

    /// Apply `edit` to the current key set and persist the result. MUST hold an exclusive
    /// lock across read, edit and write (no lost update between processes), MUST validate
    /// every resulting record (and the absence of duplicate ids or hashes) before writing,
    /// and MUST write atomically. An edit that changes nothing writes nothing. Returns the
    /// new key set.
    ///
    /// # Errors
    /// `Rejected` when `edit` refused; `Corrupt` when the result fails validation or the
    /// stored set is unreadable; `ReadOnly` when writes are impossible; `NotFound` when the
    /// store does not exist.
    async fn update(&self, edit: KeyEdit) -> Result<Vec<KeyRecord>, KeyStoreError>;

    /// A token that changes whenever the stored set may have changed (e.g. file mtime+size),
    /// so a running gateway can reload cheaply. `None` when the store does not exist.
    async fn version(&self) -> Option<String>;

    /// The stored budgets and model groups. A store that does not exist yet, or has never
    /// held a policy, holds none (`Policies::default()`).
    ///
    /// # Errors
    /// `Corrupt` when the stored policies are unreadable or fail `Policies::validate`
    /// (nothing is returned then); `Io` otherwise.
    async fn load_policies(&self) -> Result<Policies, KeyStoreError>;

    /// Apply `edit` to the stored policies and persist the result, under the same rules as
    /// [`KeyStore::update`]: an exclusive lock across read, edit and write, the result checked
    /// with `Policies::validate` before anything is written, an atomic write, nothing written
    /// for an edit that changes nothing. A write changes [`KeyStore::version`], so running
    /// gateways reload the policies with the keys. Creates the store when missing (budgets may
    /// be set before the first key is issued); the keys are left as they are. Returns the new
    /// policies.
    ///
    /// # Errors
    /// `Rejected` when `edit` refused; `Corrupt` when the result fails validation or the
    /// stored data is unreadable; `ReadOnly` when writes are impossible.
    async fn update_policies(&self, edit: PolicyEdit) -> Result<Policies, KeyStoreError>;
}

/// A load where a store that does not exist yet counts as holding no key (copies, counts).
///
/// # Errors
/// Every other error of the load.
pub fn loaded_or_empty(
    loaded: Result<Vec<KeyRecord>, KeyStoreError>,
) -> Result<Vec<KeyRecord>, KeyStoreError> {
    match loaded {
        Err(KeyStoreError::NotFound { .. }) => Ok(Vec::new()),
        other => other,
    }
}
