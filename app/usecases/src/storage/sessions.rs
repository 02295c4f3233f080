//! `metis sessions show`: a session's workers, walked through the parent index.

use gw_domain::sessions::SessionRecord;
use gw_ports::storage::StoreReader;

use super::StorageError;

/// Every descendant of `root` (at most `max`), breadth by parent: each session is visited
/// once, so cycles made by clients naming each other as parents are cut.
///
/// # Errors
/// The store cannot be read.
pub fn descendants(
    reader: &dyn StoreReader,
    root: &str,
    max: usize,
) -> Result<Vec<SessionRecord>, StorageError> {
    let mut out: Vec<SessionRecord> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    seen.insert(root.to_owned());
    let mut frontier = vec![root.to_owned()];
    while let Some(id) = frontier.pop() {
        let children = reader
            .session_children(&id)
            .map_err(StorageError::trace("cannot read sessions"))?;
        for c in children {
            if out.len() >= max {
                return Ok(out);
            }
            if seen.insert(c.id.clone()) {
                frontier.push(c.id.clone());
                out.push(c);
            }
        }
    }
    Ok(out)
}
