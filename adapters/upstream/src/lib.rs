//! `metis-upstream`: the gateway's upstream providers, implementing `metis_ports::upstream::Provider`.
//!
//! - [`HttpProvider`] talks HTTP(S) to Anthropic (Messages API), OpenAI and every
//!   OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio), and OpenRouter. It owns
//!   one pooled `reqwest` client, adds credentials, applies timeouts and retries failures that
//!   happen before any byte reached the caller.
//! - [`BedrockProvider`] talks to Amazon Bedrock's Converse API with SigV4 signing (static or
//!   web-identity credentials) and decodes its binary event stream.
//! - [`MockProvider`] is the deterministic in-process test double (`mock:echo`) used by the
//!   quickstart, the benchmarks and the tests. It is never a real model.
//!
//! Providers move bytes only: rendering requests and parsing answers is the job of the
//! translation functions in `metis-domain`. Credentials are never logged and never appear in
//! `Debug` output. This crate never reads `OPENAI_BASE_URL` / `ANTHROPIC_BASE_URL` (see
//! [`config`]).

mod bedrock;
pub mod config;
mod http;
mod mock;
mod retry;
pub mod transport;

pub use bedrock::{BedrockConfig, BedrockProvider, CredentialSource};
pub use config::{ConfigError, HttpProviderConfig, RetryPolicy, Timeouts};
pub use http::HttpProvider;
pub use mock::{MOCK_PROVIDER, MockProvider, MockSettings};
pub use transport::Transport;
