//! Client-named sessions: id validation, the delegation headers, the per-turn upsert and the
//! worker tree of `metis sessions show`.
//!
//! Invariants:
//! - A session id (and a parent tool-use id) matches `^[A-Za-z0-9_.:-]{1,128}$`; anything else
//!   is refused at the edge with a message naming the header.
//! - A session is never its own parent, and a parent tool-use id needs a parent session.
//! - [`build_tree`] terminates on any input: a session reachable twice (a cycle made by
//!   clients naming each other as parents) appears once, under its first parent.
//! - Message content is never part of a session; only ids, the workspace, the model, cost and
//!   counts are.

use std::collections::{BTreeMap, HashSet};

use crate::time::Timestamp;

/// Longest accepted session id.
pub const SESSION_ID_MAX_LEN: usize = 128;

/// The request headers that name a session.
pub mod headers {
    pub const SESSION_ID: &str = "x-metis-session-id";
    pub const PARENT_SESSION_ID: &str = "x-metis-parent-session-id";
    pub const PARENT_TOOL_USE_ID: &str = "x-metis-parent-tool-use-id";
    pub const WORKER: &str = "x-metis-worker";
}

/// Whether `raw` is a valid session id: 1 to 128 characters of `A-Z a-z 0-9 _ . : -`.
#[must_use]
pub fn is_valid_session_id(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= SESSION_ID_MAX_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// A validated, client-chosen session id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// Validate a session id.
    ///
    /// # Errors
    /// A message quoting the accepted format when `raw` does not match it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if is_valid_session_id(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "invalid session id: must match ^[A-Za-z0-9_.:-]{{1,{SESSION_ID_MAX_LEN}}}$ (got {} bytes)",
                raw.len()
            ))
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The session a request belongs to, from its `x-metis-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLink {
    pub session_id: SessionId,
    pub parent_session_id: Option<SessionId>,
    pub parent_tool_use_id: Option<String>,
    pub is_worker: bool,
}

/// Parse `x-metis-worker`: `true`/`false`/`1`/`0`/`yes`/`no`, case-insensitive.
///
/// # Errors
/// A message naming the header.
pub fn parse_worker_flag(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(format!(
            "invalid {} header: expected true or false",
            headers::WORKER
        )),
    }
}

/// Validate the session headers of one request (each argument is the header value, if sent).
/// `Ok(None)` when no session id was sent: the request is its own synthetic session, and the
/// delegation headers are then refused because they would be silently lost.
///
/// # Errors
/// A message naming the offending header.
pub fn parse_session_headers(
    session_id: Option<&str>,
    parent_session_id: Option<&str>,
    parent_tool_use_id: Option<&str>,
    worker: Option<&str>,
) -> Result<Option<SessionLink>, String> {
    let named = |h: &str, e: String| format!("{h}: {e}");
    let is_worker = worker.map(parse_worker_flag).transpose()?.unwrap_or(false);
    let Some(raw_id) = session_id else {
        if parent_session_id.is_some() || parent_tool_use_id.is_some() || is_worker {
            return Err(format!(
                "{} is required when {}, {} or {} is sent",
                headers::SESSION_ID,
                headers::PARENT_SESSION_ID,
                headers::PARENT_TOOL_USE_ID,
                headers::WORKER
            ));
        }
        return Ok(None);
    };
    let id = SessionId::parse(raw_id.trim()).map_err(|e| named(headers::SESSION_ID, e))?;
    let parent = parent_session_id
        .map(|p| SessionId::parse(p.trim()).map_err(|e| named(headers::PARENT_SESSION_ID, e)))
        .transpose()?;
    if parent.as_ref() == Some(&id) {
        return Err(format!(
            "{}: a session cannot be its own parent",
            headers::PARENT_SESSION_ID
        ));
    }
    let tool_use = parent_tool_use_id
        .map(|t| {
            let t = t.trim();
            if is_valid_session_id(t) {
                Ok(t.to_owned())
            } else {
                Err(format!(
                    "{}: must match ^[A-Za-z0-9_.:-]{{1,{SESSION_ID_MAX_LEN}}}$",
                    headers::PARENT_TOOL_USE_ID
                ))
            }
        })
        .transpose()?;
    if tool_use.is_some() && parent.is_none() {
        return Err(format!(
            "{} needs {}",
            headers::PARENT_TOOL_USE_ID,
            headers::PARENT_SESSION_ID
        ));
    }
    Ok(Some(SessionLink {
        session_id: id,
        parent_session_id: parent,
        parent_tool_use_id: tool_use,
        is_worker,
    }))
}

/// One completed gateway turn, as applied to the `sessions` table: the session row is created
/// on its first turn and afterwards gets `cost_usd` added and its turn count incremented.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTurn {
    pub session_id: SessionId,
    /// The workspace of the key that made the call. A session belongs to the workspace that
    /// created it; a turn from another workspace never changes it.
    pub workspace_path: String,
    /// The model the turn was routed to (becomes the session's active model).
    pub active_model: Option<String>,
    /// Cost of this turn in USD (non-negative; added to the session's total).
    pub cost_usd: f64,
    /// When the turn completed (unix µs); the first turn's value becomes `created_at`.
    pub at_us: Timestamp,
    /// Kept from the first turn that names one.
    pub parent_session_id: Option<SessionId>,
    pub parent_tool_use_id: Option<String>,
    /// Sticky: once a worker, always a worker.
    pub is_worker: bool,
}

impl SessionTurn {
    /// The turn of a request carrying `link`.
    #[must_use]
    pub fn new(
        link: &SessionLink,
        workspace_path: &str,
        active_model: Option<&str>,
        cost_usd: f64,
        at_us: Timestamp,
    ) -> Self {
        Self {
            session_id: link.session_id.clone(),
            workspace_path: workspace_path.to_owned(),
            active_model: active_model.map(str::to_owned),
            cost_usd: if cost_usd.is_finite() && cost_usd > 0.0 {
                cost_usd
            } else {
                0.0
            },
            at_us,
            parent_session_id: link.parent_session_id.clone(),
            parent_tool_use_id: link.parent_tool_use_id.clone(),
            is_worker: link.is_worker,
        }
    }
}

/// A stored session (the `sessions` row; `routing_policy_json` is not used by the gateway).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    pub workspace_path: String,
    pub active_model: Option<String>,
    pub cost_so_far_usd: f64,
    pub turn_count: u64,
    pub created_at_us: Timestamp,
    pub updated_at_us: Timestamp,
    pub parent_session_id: Option<String>,
    pub parent_tool_use_id: Option<String>,
    pub is_worker: bool,
}

/// The session after one more turn: the upsert every session store applies (the SQLite
/// adapter states the same rule in SQL). `None` when the session belongs to another workspace
/// (a turn never moves or changes it). The first turn creates the session; later turns add
/// cost and count, keep the latest `updated_at`, take a named model, keep the first parent
/// link, and `is_worker` is sticky.
#[must_use]
pub fn apply_turn(previous: Option<&SessionRecord>, t: &SessionTurn) -> Option<SessionRecord> {
    let parent = t.parent_session_id.as_ref().map(|p| p.as_str().to_owned());
    let Some(s) = previous else {
        return Some(SessionRecord {
            id: t.session_id.as_str().to_owned(),
            workspace_path: t.workspace_path.clone(),
            active_model: t.active_model.clone(),
            cost_so_far_usd: t.cost_usd,
            turn_count: 1,
            created_at_us: t.at_us,
            updated_at_us: t.at_us,
            parent_session_id: parent,
            parent_tool_use_id: t.parent_tool_use_id.clone(),
            is_worker: t.is_worker,
        });
    };
    if s.workspace_path != t.workspace_path {
        return None;
    }
    Some(SessionRecord {
        id: s.id.clone(),
        workspace_path: s.workspace_path.clone(),
        active_model: t.active_model.clone().or_else(|| s.active_model.clone()),
        cost_so_far_usd: s.cost_so_far_usd + t.cost_usd,
        turn_count: s.turn_count + 1,
        created_at_us: s.created_at_us,
        updated_at_us: s.updated_at_us.max(t.at_us),
        parent_session_id: s.parent_session_id.clone().or(parent),
        parent_tool_use_id: s
            .parent_tool_use_id
            .clone()
            .or_else(|| t.parent_tool_use_id.clone()),
        is_worker: s.is_worker || t.is_worker,
    })
}

/// A session with its workers (and theirs), for `metis sessions show`.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionNode {
    pub session: SessionRecord,
    pub children: Vec<SessionNode>,
    /// The session's own cost plus every descendant's.
    pub subtree_cost_usd: f64,
    /// Sessions in this subtree, including this one.
    pub subtree_sessions: u64,
}

/// Every descendant of `root`, read with `children` (a store's direct-children query):
/// depth-first, at most `max` sessions; a session seen twice (a cycle) is not followed again.
///
/// # Errors
/// The first error `children` returns.
pub fn collect_descendants<E>(
    root: &str,
    max: usize,
    mut children: impl FnMut(&str) -> Result<Vec<SessionRecord>, E>,
) -> Result<Vec<SessionRecord>, E> {
    let mut out: Vec<SessionRecord> = Vec::new();
    let mut seen = HashSet::new();
    seen.insert(root.to_owned());
    let mut frontier = vec![root.to_owned()];
    while let Some(id) = frontier.pop() {
        for c in children(&id)? {
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

/// Arrange `root` and its `descendants` (in any order) into a tree by `parent_session_id`.
/// Children are ordered by creation time, then id. Descendants that are not reachable from
/// `root` are ignored; a session reachable twice is placed once.
#[must_use]
pub fn build_tree(root: SessionRecord, descendants: Vec<SessionRecord>) -> SessionNode {
    let mut by_parent: BTreeMap<String, Vec<SessionRecord>> = BTreeMap::new();
    for d in descendants {
        if let Some(p) = d.parent_session_id.clone() {
            by_parent.entry(p).or_default().push(d);
        }
    }
    for kids in by_parent.values_mut() {
        kids.sort_by(|a, b| (a.created_at_us, &a.id).cmp(&(b.created_at_us, &b.id)));
    }
    let mut seen = HashSet::new();
    seen.insert(root.id.clone());
    attach(root, &mut by_parent, &mut seen)
}

fn attach(
    session: SessionRecord,
    by_parent: &mut BTreeMap<String, Vec<SessionRecord>>,
    seen: &mut HashSet<String>,
) -> SessionNode {
    let kids = by_parent.remove(&session.id).unwrap_or_default();
    let mut children = Vec::new();
    for k in kids {
        if seen.insert(k.id.clone()) {
            children.push(attach(k, by_parent, seen));
        }
    }
    let subtree_cost_usd =
        session.cost_so_far_usd + children.iter().map(|c| c.subtree_cost_usd).sum::<f64>();
    let subtree_sessions = 1 + children.iter().map(|c| c.subtree_sessions).sum::<u64>();
    SessionNode {
        session,
        children,
        subtree_cost_usd,
        subtree_sessions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_follow_the_documented_format() {
        assert!(is_valid_session_id("sess_01HX.a:b-c"));
        assert!(is_valid_session_id(&"a".repeat(128)));
        assert!(!is_valid_session_id(&"a".repeat(129)));
        assert!(!is_valid_session_id(""));
        assert!(!is_valid_session_id("has space"));
        assert!(!is_valid_session_id("slash/no"));
        assert!(!is_valid_session_id("é"));
        assert!(SessionId::parse("ok-1").is_ok());
    }

    #[test]
    fn headers_are_validated_and_named() {
        assert_eq!(parse_session_headers(None, None, None, None), Ok(None));
        let link =
            parse_session_headers(Some("child"), Some("root"), Some("toolu_1"), Some("TRUE"))
                .unwrap()
                .unwrap();
        assert_eq!(link.session_id.as_str(), "child");
        assert_eq!(link.parent_session_id.unwrap().as_str(), "root");
        assert!(link.is_worker);
        let e = parse_session_headers(Some("bad id"), None, None, None).unwrap_err();
        assert!(e.starts_with(headers::SESSION_ID), "{e}");
        let e = parse_session_headers(Some("a"), Some("a"), None, None).unwrap_err();
        assert!(e.contains("own parent"), "{e}");
        let e = parse_session_headers(Some("a"), None, Some("t"), None).unwrap_err();
        assert!(e.contains(headers::PARENT_SESSION_ID), "{e}");
        let e = parse_session_headers(None, Some("p"), None, None).unwrap_err();
        assert!(e.contains("required"), "{e}");
        assert!(parse_session_headers(Some("a"), None, None, Some("maybe")).is_err());
    }

    fn rec(id: &str, parent: Option<&str>, cost: f64, at: i64) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            workspace_path: "/w".into(),
            active_model: None,
            cost_so_far_usd: cost,
            turn_count: 1,
            created_at_us: at,
            updated_at_us: at,
            parent_session_id: parent.map(Into::into),
            parent_tool_use_id: None,
            is_worker: parent.is_some(),
        }
    }

    #[test]
    fn the_tree_sums_costs_and_survives_cycles() {
        let root = rec("r", None, 1.0, 0);
        let tree = build_tree(
            root,
            vec![
                rec("b", Some("r"), 0.5, 2),
                rec("a", Some("r"), 0.25, 1),
                rec("a1", Some("a"), 0.125, 3),
                // A cycle back to the root and an unrelated session are ignored.
                rec("r", Some("a1"), 9.0, 4),
                rec("x", Some("elsewhere"), 7.0, 5),
            ],
        );
        assert_eq!(tree.subtree_sessions, 4);
        assert!((tree.subtree_cost_usd - 1.875).abs() < 1e-12);
        let order: Vec<&str> = tree
            .children
            .iter()
            .map(|c| c.session.id.as_str())
            .collect();
        assert_eq!(order, ["a", "b"]);
        assert_eq!(tree.children[0].children[0].session.id, "a1");
    }

    /// A first turn creates the session; later turns accumulate, keep the first parent link
    /// and a sticky worker flag; a turn from another workspace changes nothing.
    #[test]
    fn turns_create_then_accumulate_within_one_workspace() {
        let link = SessionLink {
            session_id: SessionId::parse("s").unwrap(),
            parent_session_id: None,
            parent_tool_use_id: None,
            is_worker: true,
        };
        let first = apply_turn(None, &SessionTurn::new(&link, "/w", Some("m1"), 1.0, 10)).unwrap();
        assert_eq!(
            (first.turn_count, first.created_at_us, first.is_worker),
            (1, 10, true)
        );
        let later = SessionLink {
            parent_session_id: Some(SessionId::parse("p").unwrap()),
            parent_tool_use_id: Some("t".into()),
            is_worker: false,
            ..link.clone()
        };
        // An older turn (out of order) neither lowers updated_at nor clears the model.
        let second =
            apply_turn(Some(&first), &SessionTurn::new(&later, "/w", None, 0.5, 5)).unwrap();
        assert_eq!(second.turn_count, 2);
        assert!((second.cost_so_far_usd - 1.5).abs() < 1e-12);
        assert_eq!((second.created_at_us, second.updated_at_us), (10, 10));
        assert_eq!(second.active_model.as_deref(), Some("m1"));
        assert_eq!(second.parent_session_id.as_deref(), Some("p"));
        assert!(second.is_worker);
        let other = SessionLink {
            parent_session_id: Some(SessionId::parse("q").unwrap()),
            ..later.clone()
        };
        let third = apply_turn(
            Some(&second),
            &SessionTurn::new(&other, "/w", Some("m2"), 0.0, 20),
        )
        .unwrap();
        assert_eq!(third.parent_session_id.as_deref(), Some("p"));
        assert_eq!(third.active_model.as_deref(), Some("m2"));
        assert_eq!(third.updated_at_us, 20);
        assert_eq!(
            apply_turn(
                Some(&third),
                &SessionTurn::new(&link, "/elsewhere", None, 9.0, 30)
            ),
            None
        );
    }

    /// Depth-first over `children`, a cycle is not followed twice, `max` caps the walk, and
    /// an error from `children` ends it.
    #[test]
    fn descendants_are_collected_once_and_capped() {
        // r -> a -> b -> r (a cycle back to the root), r -> c.
        let kids = |id: &str| -> Result<Vec<SessionRecord>, String> {
            Ok(match id {
                "r" => vec![rec("a", Some("r"), 0.0, 1), rec("c", Some("r"), 0.0, 2)],
                "a" => vec![rec("b", Some("a"), 0.0, 3)],
                "b" => vec![rec("r", Some("b"), 0.0, 4)],
                _ => Vec::new(),
            })
        };
        let all = collect_descendants("r", 10, kids).unwrap();
        let mut ids: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(collect_descendants("r", 2, kids).unwrap().len(), 2);
        let failing = |_: &str| -> Result<Vec<SessionRecord>, String> { Err("disk".into()) };
        assert_eq!(collect_descendants("r", 10, failing), Err("disk".into()));
    }
}
