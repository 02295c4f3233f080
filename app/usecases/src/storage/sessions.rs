//! `metis sessions show`: a session's workers, walked through the parent index.

use metis_domain::sessions::SessionRecord;
use metis_ports::storage::StoreReader;

use super::StorageError;

/// Every descendant of `root` (at most `max`), through the store's parent index
/// ([`metis_domain::sessions::collect_descendants`]: cycles made by clients naming each other as
/// parents are cut).
///
/// # Errors
/// The store cannot be read.
pub fn descendants(
    reader: &dyn StoreReader,
    root: &str,
    max: usize,
) -> Result<Vec<SessionRecord>, StorageError> {
    metis_domain::sessions::collect_descendants(root, max, |id| reader.session_children(id))
        .map_err(|e| StorageError::Trace {
            what: "cannot read sessions",
            source: e,
        })
}
