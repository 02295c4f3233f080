//! Model catalog and resolution of the client's `model` string to a canonical
//! `provider:name` id.
//!
//! Resolution order (first match wins): alias → canonical id → `provider:name` for a live
//! provider → bare upstream name of a catalog entry. Anything else is `model_not_found`,
//! naming the models that are available; there is no silent fallback.

use crate::error::GatewayError;
use serde_json::{Value, json};
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
    /// Release dates (unix seconds) and display names of the built-in models.
    known: BTreeMap<String, (i64, &'static str)>,
    /// When the catalog was loaded (unix seconds): the `created` of models it has no release
    /// date for (configured ones).
    loaded_at: i64,
}

/// Release date (unix seconds, 00:00 UTC of the announced day) and display name of each
/// built-in model.
const BUILTIN_MODELS: [(&str, &[&str], i64, &str); 6] = [
    // 2026-04-16
    (
        "anthropic:claude-opus-4-7",
        &["opus", "deep"],
        1_776_297_600,
        "Claude Opus 4.7",
    ),
    // 2026-02-17
    (
        "anthropic:claude-sonnet-4-6",
        &["sonnet", "balanced"],
        1_771_286_400,
        "Claude Sonnet 4.6",
    ),
    // 2025-10-15
    (
        "anthropic:claude-haiku-4-5",
        &["haiku", "fast"],
        1_760_486_400,
        "Claude Haiku 4.5",
    ),
    // 2025-08-07
    ("openai:gpt-5", &["gpt5", "gpt-5"], 1_754_524_800, "GPT-5"),
    (
        "openai:gpt-5-mini",
        &["gpt5-mini", "mini"],
        1_754_524_800,
        "GPT-5 mini",
    ),
    (MOCK_MODEL, &["mock"], 0, "Mock echo (test double)"),
];

/// One entry of a `/v1/models` listing: a canonical model or an alias of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedModel {
    /// The id a client sends (canonical id or alias).
    pub id: String,
    /// The canonical id an alias points at (`None` for a canonical id).
    pub alias_of: Option<String>,
    pub provider: String,
    /// Unix seconds.
    pub created: i64,
    pub display_name: String,
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
        for (id, aliases, released, display) in BUILTIN_MODELS {
            c.add_model(id);
            c.known.insert(id.to_owned(), (released, display));
            for a in aliases {
                c.set_alias(a, id);
            }
        }
        c
    }

    /// Record when the catalog was loaded (unix seconds): the `created` time listed for
    /// models without a known release date.
    pub fn set_loaded_at(&mut self, unix_secs: i64) {
        self.loaded_at = unix_secs;
    }

    /// When the catalog was loaded (unix seconds).
    #[must_use]
    pub fn loaded_at(&self) -> i64 {
        self.loaded_at
    }

    /// The live models and their aliases, as `/v1/models` lists them: each canonical id
    /// followed by its aliases, sorted by canonical id. `created` is the release date where the
    /// catalog records one, else the time the catalog was loaded.
    #[must_use]
    pub fn listing(&self, is_live: &dyn Fn(&str) -> bool) -> Vec<ListedModel> {
        let mut out = Vec::new();
        for e in self.live_models(is_live) {
            let (created, display) = match self.known.get(&e.id) {
                Some((released, display)) if *released > 0 => (*released, (*display).to_owned()),
                Some((_, display)) => (self.loaded_at, (*display).to_owned()),
                None => (self.loaded_at, e.upstream_name.clone()),
            };
            out.push(ListedModel {
                id: e.id.clone(),
                alias_of: None,
                provider: e.provider.clone(),
                created,
                display_name: display.clone(),
            });
            for a in self.aliases_of(&e.id) {
                out.push(ListedModel {
                    id: a.to_owned(),
                    alias_of: Some(e.id.clone()),
                    provider: e.provider.clone(),
                    created,
                    display_name: display.clone(),
                });
            }
        }
        out
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
                Some(e)
                    if BUILTIN_PROVIDERS.contains(&e.provider.as_str()) || is_live(&e.provider) =>
                {
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

/// One model in the OpenAI shape (`GET /v1/models/{id}`, and each item of the list).
#[must_use]
pub fn openai_model(m: &ListedModel) -> Value {
    let owned_by = if m.provider == "mock" {
        "mock (test double)"
    } else {
        m.provider.as_str()
    };
    let mut v = json!({"id": m.id, "object": "model", "created": m.created, "owned_by": owned_by});
    if let (Some(target), Some(o)) = (&m.alias_of, v.as_object_mut()) {
        o.insert("alias_of".to_owned(), Value::String(target.clone()));
    }
    v
}

/// The OpenAI list shape of `GET /v1/models`.
#[must_use]
pub fn openai_list(models: &[ListedModel]) -> Value {
    json!({"object": "list", "data": models.iter().map(openai_model).collect::<Vec<_>>()})
}

/// One model in the Anthropic shape.
#[must_use]
pub fn anthropic_model(m: &ListedModel) -> Value {
    json!({
        "type": "model",
        "id": m.id,
        "display_name": m.display_name,
        "created_at": anthropic_time(m.created),
    })
}

/// RFC 3339 with a `Z`, as the Anthropic API writes `created_at`.
fn anthropic_time(unix_secs: i64) -> String {
    let iso = crate::time::format_iso(unix_secs.saturating_mul(crate::time::MICROS_PER_SEC));
    match iso.strip_suffix("+00:00") {
        Some(base) => format!("{base}Z"),
        None => iso,
    }
}

/// Pagination of the Anthropic list (`?limit=&after_id=&before_id=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Items per page, 1..=1000 (default 20).
    pub limit: Option<usize>,
    pub after_id: Option<String>,
    pub before_id: Option<String>,
}

/// The Anthropic list shape of `GET /v1/models`: a page of `models` with `has_more`,
/// `first_id` and `last_id`.
///
/// # Errors
/// A message naming the parameter when `limit` is out of range or a cursor id is unknown.
pub fn anthropic_list(models: &[ListedModel], page: &Page) -> Result<Value, String> {
    let limit = page.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err("'limit' must be between 1 and 1000".to_owned());
    }
    let position = |id: &str, name: &str| {
        models
            .iter()
            .position(|m| m.id == id)
            .ok_or_else(|| format!("'{name}': no model with id '{id}'"))
    };
    let (start, end) = match (&page.after_id, &page.before_id) {
        (Some(a), _) => {
            let s = position(a, "after_id")? + 1;
            (s, (s + limit).min(models.len()))
        }
        (None, Some(b)) => {
            let e = position(b, "before_id")?;
            (e.saturating_sub(limit), e)
        }
        (None, None) => (0, limit.min(models.len())),
    };
    let slice = &models[start..end];
    let has_more = if page.before_id.is_some() && page.after_id.is_none() {
        start > 0
    } else {
        end < models.len()
    };
    Ok(json!({
        "data": slice.iter().map(anthropic_model).collect::<Vec<_>>(),
        "has_more": has_more,
        "first_id": slice.first().map(|m| m.id.clone()),
        "last_id": slice.last().map(|m| m.id.clone()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_carry_real_dates_and_page_in_the_anthropic_shape() {
        let mut c = Catalog::builtin();
        c.set_loaded_at(1_800_000_000);
        c.add_model("openai:llama-3");
        let list = c.listing(&live);
        let haiku = list.iter().find(|m| m.id == "haiku").unwrap();
        assert_eq!(
            haiku.alias_of.as_deref(),
            Some("anthropic:claude-haiku-4-5")
        );
        assert_eq!(haiku.created, 1_760_486_400);
        let llama = list.iter().find(|m| m.id == "openai:llama-3").unwrap();
        assert_eq!(llama.created, 1_800_000_000);
        assert!(list.iter().all(|m| m.created > 0));
        let o = openai_list(&list);
        assert_eq!(o["object"], "list");
        assert_eq!(o["data"][0]["object"], "model");
        let a = anthropic_model(haiku);
        assert_eq!(a["created_at"], "2025-10-15T00:00:00Z");
        assert_eq!(a["display_name"], "Claude Haiku 4.5");
        let first = anthropic_list(
            &list,
            &Page {
                limit: Some(2),
                ..Page::default()
            },
        )
        .unwrap();
        assert_eq!(first["data"].as_array().unwrap().len(), 2);
        assert_eq!(first["has_more"], true);
        let next = anthropic_list(
            &list,
            &Page {
                limit: Some(1000),
                after_id: first["last_id"].as_str().map(str::to_owned),
                before_id: None,
            },
        )
        .unwrap();
        assert_eq!(next["data"].as_array().unwrap().len(), list.len() - 2);
        assert_eq!(next["has_more"], false);
        let back = anthropic_list(
            &list,
            &Page {
                limit: Some(5),
                after_id: None,
                before_id: next["first_id"].as_str().map(str::to_owned),
            },
        )
        .unwrap();
        assert_eq!(back["last_id"], first["last_id"]);
        assert_eq!(back["has_more"], false);
        assert!(
            anthropic_list(
                &list,
                &Page {
                    limit: Some(0),
                    ..Page::default()
                }
            )
            .is_err()
        );
        assert!(
            anthropic_list(
                &list,
                &Page {
                    after_id: Some("nope".into()),
                    ..Page::default()
                }
            )
            .unwrap_err()
            .contains("after_id")
        );
    }

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
