//! Counting tokens without an upstream: `count_tokens` / `input_tokens` for upstreams that
//! cannot count themselves.

use metis_domain::canonical::ChatRequest;

/// A tokenizer for some model families.
pub trait TokenCounter: Send + Sync {
    /// Input tokens `request` costs on `model` (the upstream model name, e.g. `gpt-5`), or
    /// `None` when this counter has no tokenizer for that model. MUST be deterministic.
    fn count(&self, model: &str, request: &ChatRequest) -> Option<u64>;
}

/// A counter that knows no model: every count falls back to the documented estimate.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTokenizer;

impl TokenCounter for NoTokenizer {
    fn count(&self, _model: &str, _request: &ChatRequest) -> Option<u64> {
        None
    }
}
