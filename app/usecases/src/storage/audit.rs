//! `metis audit verify`: the audit chain of a store, checked link by link.

use gw_domain::audit::BrokenLink;
use gw_ports::storage::StoreReader;

use super::StorageError;

/// The chain check: `Ok(n)` links intact or the first broken one, and how many audit events
/// carry no link (written before the chain existed; the chain cannot vouch for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub chain: Result<u64, BrokenLink>,
    pub unchained: u64,
}

/// Verify the audit chain of the store behind `reader`.
///
/// # Errors
/// The store cannot be read.
pub fn verify(reader: &dyn StoreReader) -> Result<ChainReport, StorageError> {
    let chain = reader
        .verify_audit_chain()
        .map_err(StorageError::trace("cannot read the audit chain"))?;
    let unchained = reader
        .count_unchained_audit()
        .map_err(StorageError::trace("cannot count audit events"))?;
    Ok(ChainReport { chain, unchained })
}
