//! Model access groups (issue 20 item 5, the rules only; storage, admin API and CLI come later):
//! named sets of canonical model ids (`frontier`, `cheap`, `local`) that a key's
//! `allowed_models` names as `group:NAME`.
//!
//! Invariants:
//! - A group name matches `^[a-z0-9_-]{1,64}$`; members are non-blank model ids and never
//!   groups themselves (no nesting, so expansion is one step and cannot cycle).
//! - An allow-list is expanded against the groups in force at admission: adding a model to a
//!   group allows it for every key naming the group, with no key edited. A group that no longer
//!   exists expands to nothing, so its former members are simply not allowed any more (a
//!   deleted group never widens access).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The prefix that marks an allow-list entry as a group reference.
pub const GROUP_PREFIX: &str = "group:";

/// Longest group name.
pub const MAX_GROUP_NAME: usize = 64;

/// One named set of models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelGroup {
    pub name: String,
    pub models: Vec<String>,
}

/// The group a `group:NAME` allow-list entry names (`None` for a plain model entry).
#[must_use]
pub fn group_ref(entry: &str) -> Option<&str> {
    entry.strip_prefix(GROUP_PREFIX)
}

/// A group name must match `^[a-z0-9_-]{1,64}$`.
///
/// # Errors
/// A message naming the problem and the name.
pub fn validate_group_name(raw: &str) -> Result<(), String> {
    if raw.is_empty() || raw.len() > MAX_GROUP_NAME {
        return Err(format!(
            "model group name must be 1-{MAX_GROUP_NAME} characters, got '{raw}'"
        ));
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "model group name must match ^[a-z0-9_-]{{1,64}}$, got '{raw}'"
        ));
    }
    Ok(())
}

impl ModelGroup {
    /// Validate the name and the members.
    ///
    /// # Errors
    /// A message naming the group and the offending member.
    pub fn validate(&self) -> Result<(), String> {
        validate_group_name(&self.name)?;
        if self.models.is_empty() {
            return Err(format!(
                "model group '{}' needs at least one model",
                self.name
            ));
        }
        for m in &self.models {
            if m.trim().is_empty() {
                return Err(format!("model group '{}': a model id is blank", self.name));
            }
            if group_ref(m).is_some() {
                return Err(format!(
                    "model group '{}': '{m}' names a group; groups cannot contain groups",
                    self.name
                ));
            }
        }
        Ok(())
    }
}

/// The groups in force, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelGroups {
    by_name: BTreeMap<String, Vec<String>>,
}

impl ModelGroups {
    /// Index `groups` (assumed validated by the store; a later duplicate name wins).
    #[must_use]
    pub fn new(groups: impl IntoIterator<Item = ModelGroup>) -> Self {
        ModelGroups {
            by_name: groups.into_iter().map(|g| (g.name, g.models)).collect(),
        }
    }

    /// The members of `name`, if the group exists.
    #[must_use]
    pub fn members(&self, name: &str) -> Option<&[String]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    /// The `group:NAME` entries of `allow` that name no existing group (for the 400 at issue).
    #[must_use]
    pub fn unknown_in<'a>(&self, allow: &'a [String]) -> Vec<&'a str> {
        allow
            .iter()
            .filter_map(|e| group_ref(e))
            .filter(|g| !self.by_name.contains_key(*g))
            .collect()
    }

    /// Whether an allow-list admits `canonical_model` (or one of its `aliases`): a plain entry
    /// matches the id or an alias; `group:NAME` matches the members of the group as it is now
    /// (nothing when the group no longer exists). `None` allows every model.
    #[must_use]
    pub fn allows(
        &self,
        allow: Option<&[String]>,
        canonical_model: &str,
        aliases: &[&str],
    ) -> bool {
        let matches = |m: &str| m == canonical_model || aliases.contains(&m);
        match allow {
            None => true,
            Some(list) => list.iter().any(|entry| match group_ref(entry) {
                Some(group) => self
                    .members(group)
                    .is_some_and(|ms| ms.iter().any(|m| matches(m))),
                None => matches(entry),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, models: &[&str]) -> ModelGroup {
        ModelGroup {
            name: name.into(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| (*e).to_owned()).collect()
    }

    #[test]
    fn names_are_checked_and_groups_cannot_nest() {
        for ok in ["cheap", "frontier", "local-2", "a_b", &"x".repeat(64)] {
            assert_eq!(validate_group_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "Cheap", "with space", "group:x", &"x".repeat(65)] {
            assert!(validate_group_name(bad).is_err(), "{bad}");
        }
        assert!(
            group("cheap", &[])
                .validate()
                .unwrap_err()
                .contains("at least one")
        );
        let nested = group("all", &["group:cheap"]).validate().unwrap_err();
        assert!(nested.contains("cannot contain groups"), "{nested}");
        assert!(group("cheap", &[" "]).validate().is_err());
        assert_eq!(
            group("cheap", &["anthropic:claude-haiku-4-5"]).validate(),
            Ok(())
        );
    }

    #[test]
    fn a_group_entry_allows_its_current_members_and_a_deleted_group_allows_nothing() {
        let allow = list(&["group:cheap", "openai:gpt-5"]);
        let before = ModelGroups::new([group("cheap", &["anthropic:claude-haiku-4-5"])]);
        assert!(before.allows(Some(&allow), "anthropic:claude-haiku-4-5", &[]));
        assert!(before.allows(Some(&allow), "openai:gpt-5", &[]));
        assert!(!before.allows(Some(&allow), "openai:gpt-5-mini", &["mini"]));
        // A model added to the group is allowed for the same key, unchanged.
        let after = ModelGroups::new([group(
            "cheap",
            &["anthropic:claude-haiku-4-5", "openai:gpt-5-mini"],
        )]);
        assert!(after.allows(Some(&allow), "openai:gpt-5-mini", &["mini"]));
        // Aliases match group members too.
        let by_alias = ModelGroups::new([group("cheap", &["haiku"])]);
        assert!(by_alias.allows(Some(&allow), "anthropic:claude-haiku-4-5", &["haiku"]));
        // Deleted: its members are no longer allowed; plain entries still are.
        let gone = ModelGroups::default();
        assert!(!gone.allows(Some(&allow), "anthropic:claude-haiku-4-5", &[]));
        assert!(gone.allows(Some(&allow), "openai:gpt-5", &[]));
        assert!(gone.allows(None, "anything", &[]));
        assert_eq!(gone.unknown_in(&allow), vec!["cheap"]);
        assert!(after.unknown_in(&allow).is_empty());
    }

    proptest::proptest! {
        /// A model is allowed iff a plain entry names it or a referenced, existing group holds it.
        #[test]
        fn allowed_iff_named_directly_or_by_an_existing_group(
            direct in proptest::collection::vec(0u8..6, 0..4),
            refs in proptest::collection::vec(0u8..3, 0..3),
            groups in proptest::collection::vec((0u8..4, proptest::collection::vec(0u8..6, 1..4)), 0..4),
            model in 0u8..6,
        ) {
            let id = |m: u8| format!("p:m{m}");
            let mut allow: Vec<String> = direct.iter().map(|m| id(*m)).collect();
            allow.extend(refs.iter().map(|g| format!("group:g{g}")));
            let index = ModelGroups::new(groups.iter().map(|(g, ms)| ModelGroup {
                name: format!("g{g}"),
                models: ms.iter().map(|m| id(*m)).collect(),
            }));
            let want = direct.contains(&model)
                || refs.iter().any(|g| {
                    index
                        .members(&format!("g{g}"))
                        .is_some_and(|ms| ms.contains(&id(model)))
                });
            proptest::prop_assert_eq!(index.allows(Some(&allow), &id(model), &[]), want);
        }
    }
}
