//! Tool-call id mapping between the OpenAI (`call_…`, Chat Completions and Responses) and
//! Anthropic (`toolu_…`) wires.
//!
//! Rule (a pure function of the id, so it is stable across requests):
//! - towards the Anthropic wire, whose ids must match `^[a-zA-Z0-9_-]+$`: `call_X` becomes
//!   `toolu_X`, `toolu_X` stays, anything else becomes `toolu_` + the id; characters outside
//!   the allowed set are replaced by `_`;
//! - towards the OpenAI wire: `toolu_X` becomes `call_X`, anything else is unchanged.
//!
//! The prefix swap is its own inverse, so a client that sends back the ids it received keeps
//! working across requests: an OpenAI client sees `call_X` for an upstream `toolu_X` and the
//! upstream gets `toolu_X` back on the next turn (and vice versa).
//!
//! Invariants of a per-request [`ToolIdMap`]:
//! - the same input id always maps to the same output id, so a `tool_result` refers to the
//!   same mapped id as its `tool_use`;
//! - distinct input ids stay distinct even when sanitising makes them equal (a `_2`, `_3`, …
//!   suffix is appended on collision, in order of first appearance).
//!
//! Same-shape traffic never maps ids: it is forwarded as the client wrote it.

use crate::canonical::Shape;
use std::collections::{HashMap, HashSet};

const OPENAI_PREFIX: &str = "call_";
const ANTHROPIC_PREFIX: &str = "toolu_";

/// The id as the Anthropic wire accepts it.
#[must_use]
pub fn to_anthropic(id: &str) -> String {
    let rest = id
        .strip_prefix(ANTHROPIC_PREFIX)
        .or_else(|| id.strip_prefix(OPENAI_PREFIX))
        .unwrap_or(id);
    let mut out = String::with_capacity(ANTHROPIC_PREFIX.len() + rest.len());
    out.push_str(ANTHROPIC_PREFIX);
    out.extend(rest.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// The id as an OpenAI client or upstream expects it.
#[must_use]
pub fn to_openai(id: &str) -> String {
    match id.strip_prefix(ANTHROPIC_PREFIX) {
        Some(rest) => format!("{OPENAI_PREFIX}{rest}"),
        None => id.to_owned(),
    }
}

/// The id for the wire of `target`.
#[must_use]
pub fn map_id(target: Shape, id: &str) -> String {
    match target {
        // Responses `call_id`s are OpenAI ids (`call_…`) too.
        Shape::OpenAi | Shape::Responses => to_openai(id),
        Shape::Anthropic => to_anthropic(id),
    }
}

/// Per-request (or per-response) id mapping towards one wire; see the module docs.
#[derive(Debug, Clone)]
pub struct ToolIdMap {
    target: Shape,
    mapped: HashMap<String, String>,
    taken: HashSet<String>,
}

impl ToolIdMap {
    #[must_use]
    pub fn new(target: Shape) -> Self {
        ToolIdMap {
            target,
            mapped: HashMap::new(),
            taken: HashSet::new(),
        }
    }

    /// The mapped form of `id`, stable for the lifetime of this map.
    pub fn map(&mut self, id: &str) -> String {
        if let Some(m) = self.mapped.get(id) {
            return m.clone();
        }
        let base = map_id(self.target, id);
        let mut candidate = base.clone();
        let mut n = 2u64;
        while self.taken.contains(&candidate) {
            candidate = format!("{base}_{n}");
            n += 1;
        }
        self.taken.insert(candidate.clone());
        self.mapped.insert(id.to_owned(), candidate.clone());
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefixes_swap_both_ways() {
        assert_eq!(to_anthropic("call_abc123"), "toolu_abc123");
        assert_eq!(to_anthropic("toolu_01XYZ"), "toolu_01XYZ");
        assert_eq!(to_openai("toolu_01XYZ"), "call_01XYZ");
        assert_eq!(to_openai("call_abc"), "call_abc");
    }

    #[test]
    fn foreign_ids_are_prefixed_and_sanitised_for_anthropic_only() {
        assert_eq!(to_anthropic("chatcmpl-tool.7:x"), "toolu_chatcmpl-tool_7_x");
        assert_eq!(to_anthropic("abc"), "toolu_abc");
        assert_eq!(to_openai("chatcmpl-tool.7:x"), "chatcmpl-tool.7:x");
    }

    #[test]
    fn map_keeps_distinct_ids_distinct_and_is_stable() {
        let mut m = ToolIdMap::new(Shape::Anthropic);
        let a = m.map("a.b");
        let b = m.map("a:b");
        let c = m.map("toolu_a_b_2");
        assert_eq!(a, "toolu_a_b");
        assert_eq!(b, "toolu_a_b_2");
        assert_eq!(c, "toolu_a_b_2_2");
        assert_eq!(m.map("a:b"), b, "a tool_result maps like its tool_use");
    }

    #[test]
    fn openai_side_collisions_are_suffixed_too() {
        let mut m = ToolIdMap::new(Shape::OpenAi);
        assert_eq!(m.map("toolu_x"), "call_x");
        assert_eq!(m.map("call_x"), "call_x_2");
    }

    proptest! {
        #[test]
        fn anthropic_ids_always_match_the_wire_pattern(id in ".{0,20}") {
            let out = to_anthropic(&id);
            prop_assert!(out.starts_with("toolu_"));
            prop_assert!(out.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        }

        #[test]
        fn prefix_swap_round_trips(rest in "[a-zA-Z0-9_-]{0,20}") {
            let call = format!("call_{rest}");
            let toolu = format!("toolu_{rest}");
            prop_assert_eq!(to_openai(&to_anthropic(&call)), call.clone());
            prop_assert_eq!(to_anthropic(&to_openai(&toolu)), toolu.clone());
        }

        #[test]
        fn map_is_injective(ids in proptest::collection::vec(".{0,6}", 0..12)) {
            for target in [Shape::OpenAi, Shape::Anthropic, Shape::Responses] {
                let mut m = ToolIdMap::new(target);
                let mut seen = HashMap::new();
                for id in &ids {
                    let out = m.map(id);
                    if let Some(prev) = seen.insert(out.clone(), id.clone()) {
                        prop_assert_eq!(&prev, id, "two ids mapped to {}", out);
                    }
                }
            }
        }
    }
}
