//! Model catalog and resolution of the client's `model` string to a canonical
//! `provider:name` id.
//!
//! Resolution order (first match wins): alias → canonical id → `provider:name` for a live
//! provider → bare upstream name of a catalog entry. Anything else is `model_not_found`,
//! naming the models that are available; there is no silent fallback.

use crate::error::GatewayError;
use std::collections::BTreeMap;

/// One model the gateway knows about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// Canonical id, `provider:name`.
    pub id: String,
    pub provider: String,
    /// The name sent upstream (the id after the first `:`).
    pub upstream_name: String,
}

impl ModelEntry {
    /// Build an entry from a canonical id; `None` unless it is `provider:name`.
    #[must_use]
    pub fn from_id(id: &str) -> Option<Self> {
        let (provider, name) = id.split_once(':')?;
        if provider.is_empty() || name.is_empty() {
            return None;
        }
        Some(ModelEntry {
            id: id.to_owned(),
            provider: provider.to_owned(),
            upstream_name: name.to_owned(),
        })
    }
}

/// The models and aliases known to this gateway.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    entries: BTreeMap<String, ModelEntry>,
    /// alias → canonical id
    aliases: BTreeMap<String, String>,
}

/// The providers built into the gateway.
pub const BUILTIN_PROVIDERS: [&str; 4] = ["anthropic", "openai", "openrouter", "mock"];

/// Canonical id of the in-process mock provider's only model.
pub const MOCK_MODEL: &str = "mock:echo";

impl Catalog {
    /// The built-in catalog and aliases.
    #[must_use]
    pub fn builtin() -> Self {
        let mut c = Catalog::default();
        for (id, aliases) in [
            ("anthropic:claude-opus-4-7", &["opus", "deep"][..]),
            ("anthropic:claude-sonnet-4-6", &["sonnet", "balanced"][..]),
            ("anthropic:claude-haiku-4-5", &["haiku", "fast"][..]),
            ("openai:gpt-5", &["gpt5", "gpt-5"][..]),
            ("openai:gpt-5-mini", &["gpt5-mini", "mini"][..]),
            (MOCK_MODEL, &["mock"][..]),
        ] {
            c.add_model(id);
            for a in aliases {
                c.set_alias(a, id);
            }
        }
        c
    }

    /// Register a model id (`provider:name`); ignored when malformed.
    pub fn add_model(&mut self, id: &str) {
        if let Some(e) = ModelEntry::from_id(id) {
            self.entries.insert(id.to_owned(), e);
        }
    }

    /// Point `alias` at `target` (a canonical id), replacing any earlier target.
    pub fn set_alias(&mut self, alias: &str, target: &str) {
        self.add_model(target);
        self.aliases.insert(alias.to_owned(), target.to_owned());
    }

    /// Aliases that point at `id`.
    #[must_use]
    pub fn aliases_of(&self, id: &str) -> Vec<&str> {
        self.aliases
            .iter()
            .filter(|(_, t)| t.as_str() == id)
            .map(|(a, _)| a.as_str())
            .collect()
    }

    /// Every alias and canonical id whose provider is live, sorted.
    #[must_use]
    pub fn available(&self, is_live: &dyn Fn(&str) -> bool) -> Vec<String> {
        let mut out: Vec<String> = self
            .entries
            .values()
            .filter(|e| is_live(&e.provider))
            .map(|e| e.id.clone())
            .collect();
        out.extend(
            self.aliases
                .iter()
                .filter(|(_, t)| self.entries.get(*t).is_some_and(|e| is_live(&e.provider)))
                .map(|(a, _)| a.clone()),
        );
        out.sort();
        out.dedup();
        out
    }

    /// Canonical models (not aliases) whose provider is live.
    #[must_use]
    pub fn live_models(&self, is_live: &dyn Fn(&str) -> bool) -> Vec<&ModelEntry> {
        self.entries
            .values()
            .filter(|e| is_live(&e.provider))
            .collect()
    }

    /// Resolve the client's model string.
    ///
    /// # Errors
    /// `InvalidRequest` for an empty string; `ModelNotFound` when nothing matches or the
    /// provider it names has no credentials.
    pub fn resolve(
        &self,
        requested: &str,
        is_live: &dyn Fn(&str) -> bool,
    ) -> Result<ModelEntry, GatewayError> {
        let req = requested.trim();
        if req.is_empty() {
            return Err(crate::error::invalid("'model' must be a non-empty string"));
        }
        let not_found = |reason: String| GatewayError::ModelNotFound {
            model: requested.to_owned(),
            reason,
            available: self.available(is_live),
        };
        let entry = if let Some(target) = self.aliases.get(req) {
            self.entries
                .get(target)
                .cloned()
                .or_else(|| ModelEntry::from_id(target))
        } else if let Some(e) = self.entries.get(req) {
            Some(e.clone())
        } else if req.contains(':') {
            match ModelEntry::from_id(req) {
                Some(e) if BUILTIN_PROVIDERS.contains(&e.provider.as_str()) => {
                    if e.provider == "mock" && e.id != MOCK_MODEL {
                        return Err(not_found(format!(
                            "the mock provider only serves '{MOCK_MODEL}'"
                        )));
                    }
                    Some(e)
                }
                Some(e) => {
                    return Err(not_found(format!("unknown provider '{}'", e.provider)));
                }
                None => return Err(not_found("expected 'provider:name'".to_owned())),
            }
        } else {
            self.entries
                .values()
                .find(|e| e.upstream_name == req)
                .cloned()
        };
        let Some(entry) = entry else {
            return Err(not_found(
                "no alias, canonical id or model name matches".to_owned(),
            ));
        };
        if !is_live(&entry.provider) {
            return Err(not_found(format!(
                "it resolves to '{}' but provider '{}' is not configured (no credentials)",
                entry.id, entry.provider
            )));
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(p: &str) -> bool {
        p != "openrouter"
    }

    #[test]
    fn aliases_canonical_ids_and_bare_names_resolve() {
        let c = Catalog::builtin();
        assert_eq!(
            c.resolve("haiku", &live).unwrap().id,
            "anthropic:claude-haiku-4-5"
        );
        assert_eq!(
            c.resolve("openai:gpt-5", &live).unwrap().upstream_name,
            "gpt-5"
        );
        assert_eq!(
            c.resolve("gpt-5-mini", &live).unwrap().id,
            "openai:gpt-5-mini"
        );
        assert_eq!(c.resolve("mock", &live).unwrap().id, MOCK_MODEL);
        assert_eq!(
            c.resolve("openai:llama3", &live).unwrap().upstream_name,
            "llama3"
        );
    }

    #[test]
    fn unknown_models_list_what_is_available() {
        let c = Catalog::builtin();
        let Err(GatewayError::ModelNotFound { available, .. }) = c.resolve("gpt-4o", &live) else {
            panic!("expected model_not_found");
        };
        assert!(available.contains(&"haiku".to_owned()));
        assert!(!available.iter().any(|m| m.starts_with("openrouter")));
    }

    #[test]
    fn a_provider_without_credentials_is_not_found() {
        let c = Catalog::builtin();
        let only_mock = |p: &str| p == "mock";
        let err = c.resolve("haiku", &only_mock).unwrap_err();
        assert!(
            err.message()
                .contains("provider 'anthropic' is not configured")
        );
        assert!(c.resolve("openrouter:x/y", &live).is_err());
    }

    #[test]
    fn config_can_override_an_alias() {
        let mut c = Catalog::builtin();
        c.set_alias("haiku", "openai:gpt-5-mini");
        assert_eq!(c.resolve("haiku", &live).unwrap().id, "openai:gpt-5-mini");
    }
}
