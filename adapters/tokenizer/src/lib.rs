//! `Tiktoken`: the [`TokenCounter`] port with OpenAI's `o200k_base` encoding, the tokenizer of
//! every current OpenAI model family (GPT-4o, GPT-4.1, GPT-5, the o-series, gpt-oss).
//!
//! What a count is: the exact token count of every text the model reads (system prompt,
//! message text, tool-call names and arguments, tool results, tool definitions as JSON), plus
//! OpenAI's documented chat framing of 3 tokens per message and 3 priming the reply. It can
//! differ from the upstream's own count by the few tokens its private tool-definition format
//! adds; the gateway labels such answers `tokenizer`, not `exact`.
//!
//! Only `o200k_base` is embedded (3.6 MB in the binary); models of older encodings
//! (`cl100k_base`: GPT-4, GPT-3.5) and other vendors get `None`, so the caller falls back to
//! its documented estimate. The encoding is built once, on the first count (about 0.2 s).

use metis_domain::canonical::ChatRequest;
use metis_ports::tokens::TokenCounter;
use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

/// Tokens OpenAI's chat format adds around each message, and to prime the reply.
const TOKENS_PER_MESSAGE: u64 = 3;
const REPLY_PRIMING_TOKENS: u64 = 3;

/// The `o200k_base` token counter (cheap to construct; the encoding is shared).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tiktoken;

fn o200k() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// The model name without a vendor prefix (`openai/gpt-5` → `gpt-5`).
fn bare(model: &str) -> &str {
    model.rsplit_once('/').map_or(model, |(_, m)| m)
}

impl Tiktoken {
    /// Whether `model` uses the embedded encoding.
    #[must_use]
    pub fn knows(model: &str) -> bool {
        matches!(
            get_tokenizer(bare(model)),
            Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony)
        )
    }
}

impl TokenCounter for Tiktoken {
    fn count(&self, model: &str, request: &ChatRequest) -> Option<u64> {
        if !Self::knows(model) {
            return None;
        }
        let bpe = o200k()?;
        let framed_messages = request.messages.len() as u64 + u64::from(!request.system.is_empty());
        let text = request.measure_input(|s| bpe.encode_ordinary(s).len() as u64);
        let n = REPLY_PRIMING_TOKENS + TOKENS_PER_MESSAGE * framed_messages + text;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metis_domain::canonical::{ContentBlock, Message, Role};

    fn user(text: &str) -> ChatRequest {
        ChatRequest {
            model: "gpt-5".into(),
            messages: vec![Message {
                role: Role::User,
                content: vec![ContentBlock::Text {
                    text: text.into(),
                    cache_control: None,
                }],
            }],
            ..ChatRequest::default()
        }
    }

    #[test]
    fn counts_o200k_tokens_with_chat_framing() {
        // "hello world" is 2 tokens in o200k_base; +3 message framing +3 reply priming.
        assert_eq!(Tiktoken.count("gpt-5", &user("hello world")), Some(8));
        assert_eq!(
            Tiktoken.count("openai/gpt-4o", &user("hello world")),
            Some(8)
        );
        let long = "the quick brown fox ".repeat(50);
        let n = Tiktoken.count("gpt-5-mini", &user(&long)).unwrap();
        assert!(n > 150 && n < 260, "{n}");
    }

    #[test]
    fn other_families_are_not_guessed() {
        assert_eq!(Tiktoken.count("claude-haiku-4-5", &user("hi")), None);
        assert_eq!(Tiktoken.count("gpt-4", &user("hi")), None);
        assert_eq!(Tiktoken.count("llama-3.1-8b", &user("hi")), None);
    }
}
