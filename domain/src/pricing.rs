//! Versioned price table: USD per million tokens in four disjoint buckets.

use crate::canonical::Usage;
use std::collections::BTreeMap;

/// Prices of one model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cache_read_per_mtok: f64,
    pub cache_write_per_mtok: f64,
}

impl Price {
    /// Cost of `usage` in USD.
    #[must_use]
    pub fn cost(&self, usage: &Usage) -> f64 {
        #[expect(
            clippy::cast_precision_loss,
            reason = "token counts are far below 2^52"
        )]
        let total = usage.input_tokens as f64 * self.input_per_mtok
            + usage.output_tokens as f64 * self.output_per_mtok
            + usage.cache_read_tokens as f64 * self.cache_read_per_mtok
            + usage.cache_write_tokens as f64 * self.cache_write_per_mtok;
        total / 1_000_000.0
    }
}

/// Version of the built-in table (stamped as `pricing_version` on every cost).
pub const BUILTIN_PRICING_VERSION: &str = "2026-12-07";

/// A price table and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    pub version: String,
    prices: BTreeMap<String, Price>,
}

impl PriceTable {
    /// The built-in table.
    #[must_use]
    pub fn builtin() -> Self {
        let mut prices = BTreeMap::new();
        for (id, i, o, cr, cw) in [
            ("anthropic:claude-opus-4-7", 15.0, 75.0, 1.5, 18.75),
            ("anthropic:claude-sonnet-4-6", 3.0, 15.0, 0.3, 3.75),
            ("anthropic:claude-haiku-4-5", 1.0, 5.0, 0.1, 1.25),
            ("openai:gpt-5", 2.5, 10.0, 0.25, 0.0),
            ("openai:gpt-5-mini", 0.5, 2.0, 0.05, 0.0),
            // Azure OpenAI, keyed by deployment name: a deployment named after its model
            // (the portal's default) is priced; others need a `[prices]` row of their own.
            // Global standard deployments, list prices.
            ("azure:gpt-5", 1.25, 10.0, 0.125, 0.0),
            ("azure:gpt-5-mini", 0.25, 2.0, 0.025, 0.0),
            ("azure:gpt-5-nano", 0.05, 0.4, 0.005, 0.0),
            ("azure:gpt-4.1", 2.0, 8.0, 0.5, 0.0),
            ("azure:gpt-4.1-mini", 0.4, 1.6, 0.1, 0.0),
            ("azure:gpt-4o", 2.5, 10.0, 1.25, 0.0),
            ("azure:gpt-4o-mini", 0.15, 0.6, 0.075, 0.0),
            ("azure:text-embedding-3-small", 0.02, 0.0, 0.0, 0.0),
            ("azure:text-embedding-3-large", 0.13, 0.0, 0.0, 0.0),
            // Mistral (La Plateforme).
            ("mistral:mistral-large-latest", 2.0, 6.0, 0.0, 0.0),
            ("mistral:mistral-medium-latest", 0.4, 2.0, 0.0, 0.0),
            ("mistral:mistral-small-latest", 0.1, 0.3, 0.0, 0.0),
            ("mistral:codestral-latest", 0.3, 0.9, 0.0, 0.0),
            ("mistral:mistral-embed", 0.1, 0.0, 0.0, 0.0),
            // Groq.
            ("groq:llama-3.3-70b-versatile", 0.59, 0.79, 0.0, 0.0),
            ("groq:llama-3.1-8b-instant", 0.05, 0.08, 0.0, 0.0),
            ("groq:openai/gpt-oss-120b", 0.15, 0.75, 0.0, 0.0),
            ("groq:openai/gpt-oss-20b", 0.1, 0.5, 0.0, 0.0),
            ("groq:qwen/qwen3-32b", 0.29, 0.59, 0.0, 0.0),
            // DeepSeek (cache hits are the cheaper "input, cache hit" rate).
            ("deepseek:deepseek-chat", 0.28, 0.42, 0.028, 0.0),
            ("deepseek:deepseek-reasoner", 0.28, 0.42, 0.028, 0.0),
            // Together AI (serverless).
            (
                "together:meta-llama/Llama-3.3-70B-Instruct-Turbo",
                0.88,
                0.88,
                0.0,
                0.0,
            ),
            (
                "together:meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
                0.18,
                0.18,
                0.0,
                0.0,
            ),
            ("together:deepseek-ai/DeepSeek-V3", 1.25, 1.25, 0.0, 0.0),
            (
                "together:Qwen/Qwen2.5-72B-Instruct-Turbo",
                1.2,
                1.2,
                0.0,
                0.0,
            ),
            ("together:openai/gpt-oss-120b", 0.15, 0.6, 0.0, 0.0),
            // Fireworks AI (serverless).
            (
                "fireworks:accounts/fireworks/models/llama-v3p3-70b-instruct",
                0.9,
                0.9,
                0.0,
                0.0,
            ),
            (
                "fireworks:accounts/fireworks/models/llama-v3p1-8b-instruct",
                0.2,
                0.2,
                0.0,
                0.0,
            ),
            (
                "fireworks:accounts/fireworks/models/deepseek-v3",
                0.9,
                0.9,
                0.0,
                0.0,
            ),
            (
                "fireworks:accounts/fireworks/models/qwen3-235b-a22b",
                0.22,
                0.88,
                0.0,
                0.0,
            ),
            (
                "fireworks:accounts/fireworks/models/gpt-oss-120b",
                0.15,
                0.6,
                0.0,
                0.0,
            ),
            // Google (Gemini API and Vertex AI list the same prices; prompts up to 200k
            // tokens). Gemini reports no cache writes: context-cache storage is billed apart.
            ("gemini:gemini-2.5-pro", 1.25, 10.0, 0.125, 0.0),
            ("gemini:gemini-2.5-flash", 0.30, 2.50, 0.03, 0.0),
            ("gemini:gemini-2.5-flash-lite", 0.10, 0.40, 0.01, 0.0),
            ("vertex:gemini-2.5-pro", 1.25, 10.0, 0.125, 0.0),
            ("vertex:gemini-2.5-flash", 0.30, 2.50, 0.03, 0.0),
            ("vertex:gemini-2.5-flash-lite", 0.10, 0.40, 0.01, 0.0),
            // Claude on Vertex AI: Anthropic's prices, Vertex model ids.
            ("vertex-anthropic:claude-opus-4-7", 15.0, 75.0, 1.5, 18.75),
            ("vertex-anthropic:claude-sonnet-4-6", 3.0, 15.0, 0.3, 3.75),
            (
                "vertex-anthropic:claude-haiku-4-5@20251001",
                1.0,
                5.0,
                0.1,
                1.25,
            ),
            // The mock provider is free; it is priced so that its calls are never "unknown".
            (crate::models::MOCK_MODEL, 0.0, 0.0, 0.0, 0.0),
        ] {
            prices.insert(
                id.to_owned(),
                Price {
                    input_per_mtok: i,
                    output_per_mtok: o,
                    cache_read_per_mtok: cr,
                    cache_write_per_mtok: cw,
                },
            );
        }
        // Claude on Amazon Bedrock: on-demand prices equal Anthropic's own. The cross-region
        // inference profiles (`us.`, `eu.`, `apac.`, `global.` before the model id) bill the
        // same per token, so each profile id gets the base id's row.
        for (model, i, o, cr, cw) in [
            ("anthropic.claude-opus-4-7", 15.0, 75.0, 1.5, 18.75),
            ("anthropic.claude-sonnet-4-6", 3.0, 15.0, 0.3, 3.75),
            (
                "anthropic.claude-haiku-4-5-20251001-v1:0",
                1.0,
                5.0,
                0.1,
                1.25,
            ),
        ] {
            for profile in ["", "us.", "eu.", "apac.", "global."] {
                prices.insert(
                    format!("bedrock:{profile}{model}"),
                    Price {
                        input_per_mtok: i,
                        output_per_mtok: o,
                        cache_read_per_mtok: cr,
                        cache_write_per_mtok: cw,
                    },
                );
            }
        }
        PriceTable {
            version: BUILTIN_PRICING_VERSION.to_owned(),
            prices,
        }
    }

    /// Override or add a model's price. The caller sets a new `version`.
    pub fn set(&mut self, model: &str, price: Price) {
        self.prices.insert(model.to_owned(), price);
    }

    /// Price of a canonical model id, if known.
    #[must_use]
    pub fn get(&self, model: &str) -> Option<&Price> {
        self.prices.get(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_priced_separately() {
        let t = PriceTable::builtin();
        let p = t
            .get("anthropic:claude-haiku-4-5")
            .copied()
            .unwrap_or_default();
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            cache_read_tokens: 1_000_000,
            cache_write_tokens: 1_000_000,
        };
        assert!((p.cost(&u) - 7.35).abs() < 1e-9);
    }

    #[test]
    fn azure_and_preset_models_are_priced() {
        let t = PriceTable::builtin();
        for id in [
            "azure:gpt-4o-mini",
            "mistral:mistral-small-latest",
            "groq:llama-3.3-70b-versatile",
            "deepseek:deepseek-chat",
            "together:meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "fireworks:accounts/fireworks/models/llama-v3p3-70b-instruct",
        ] {
            let p = t.get(id).copied().unwrap_or_default();
            assert!(p.input_per_mtok > 0.0 && p.output_per_mtok > 0.0, "{id}");
        }
        let p = t.get("azure:gpt-4o-mini").copied().unwrap_or_default();
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 1_000_000,
            cache_read_tokens: 1_000_000,
            cache_write_tokens: 0,
        };
        assert!((p.cost(&u) - 0.825).abs() < 1e-9);
    }

    #[test]
    fn bedrock_inference_profiles_share_the_base_price() {
        let t = PriceTable::builtin();
        let base = t.get("bedrock:anthropic.claude-haiku-4-5-20251001-v1:0");
        assert!(base.is_some());
        for profile in ["us.", "eu.", "global."] {
            assert_eq!(
                t.get(&format!(
                    "bedrock:{profile}anthropic.claude-haiku-4-5-20251001-v1:0"
                )),
                base
            );
        }
        assert_eq!(
            t.get("bedrock:us.anthropic.claude-sonnet-4-6"),
            t.get("anthropic:claude-sonnet-4-6")
        );
    }
}
