//! `metis-upstream`: the gateway's upstream providers, implementing `metis_ports::upstream::Provider`.
//!
//! - [`HttpProvider`] talks HTTP(S) to Anthropic (Messages API), OpenAI and every
//!   OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio), and OpenRouter. It owns
//!   one pooled `reqwest` client, adds credentials, applies timeouts and retries failures that
//!   happen before any byte reached the caller.
//! - [`AzureProvider`] talks to Azure OpenAI deployments (`api-key` or Entra ID bearer
//!   tokens, fetched and cached with the client-credentials flow).
//! - [`GoogleProvider`] talks to Gemini (Gemini API key) and Vertex AI (Gemini and Claude,
//!   with service-account tokens, see [`google_auth`]).
//! - [`BedrockProvider`] talks to Amazon Bedrock's Converse API with SigV4 signing (static or
//!   web-identity credentials) and decodes its binary event stream.
//! - [`MockProvider`] is the deterministic in-process test double (`mock:echo`) used by the
//!   quickstart, the benchmarks and the tests. It is never a real model.
//!
//! Providers move bytes only: rendering requests and parsing answers is the job of the
//! translation functions in `metis-domain`. Credentials are never logged and never appear in
//! `Debug` output. This crate never reads `OPENAI_BASE_URL` / `ANTHROPIC_BASE_URL` (see
//! [`config`]).

mod azure;
mod bedrock;
pub mod config;
pub mod google;
pub mod google_auth;
mod http;
mod mock;
mod retry;
pub mod transport;

pub use azure::{
    AZURE_COGNITIVE_SCOPE, AZURE_DEFAULT_API_VERSION, AzureAuth, AzureConfig, AzureProvider,
    ClientCredentials, ENTRA_DEFAULT_AUTHORITY,
};
pub use bedrock::{BedrockConfig, BedrockProvider, CredentialSource};
pub use config::{ConfigError, HttpProviderConfig, RetryPolicy, Timeouts};
pub use google::{GoogleAuth, GoogleProvider, GoogleProviderConfig};
pub use google_auth::ServiceAccount;
pub use http::HttpProvider;
pub use mock::{MOCK_PROVIDER, MockProvider, MockSettings};
pub use transport::Transport;
