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
pub const BUILTIN_PRICING_VERSION: &str = "2026-05-08";

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
