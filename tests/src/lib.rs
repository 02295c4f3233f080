//! Cross-crate test support for the Metis gateway.
//!
//! - [`fake_upstream`]: a fake Anthropic/OpenAI provider speaking the real wire formats, with
//!   scripted behaviours, used by the Rust HTTP tests (in-process) and the Python SDK tests
//!   (through the `fake-upstream` binary).
//! - [`gateway`]: the real gateway spawned in-process on `127.0.0.1:0` against a fake
//!   upstream, with typed request helpers and trace-DB readers.
//! - [`process`]: the real `metis` binary as a separate process (CLI commands with deadlines,
//!   gateways announced by their boot line, SIGTERM).
//! - [`contract`]: the storage contract suite (one function per documented clause of every
//!   storage port) and its backends (SQLite, redb, in-memory fakes).
//! - [`oidc_issuer`]: a local OpenID Connect issuer (discovery, JWKS, key rotation, token
//!   minting, auto-approving code + PKCE login), also served by the `fake-oidc` binary.
//! - [`webhook_receiver`]: a budget-alert webhook receiver that fails, hangs, honours a
//!   script of answers and verifies signatures.
//! - [`certs`]: a CA and a server certificate generated at run time for TLS tests.

pub mod certs;
pub mod contract;
pub mod fake_upstream;
pub mod gateway;
pub mod oidc_issuer;
pub mod process;
pub mod tool_calls;
pub mod webhook_receiver;

pub use fake_upstream::{FakeUpstream, RecordedRequest, SseEvent, parse_sse};
pub use gateway::{Combo, GatewayOptions, KeySpec, Reply, Shape, TestGateway};

/// Generate one `#[tokio::test]` per client-shape x upstream-shape combination, each calling
/// `async fn $scenario(combo: Combo)` defined next to the macro call.
#[macro_export]
macro_rules! for_each_combo {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            use $crate::gateway::Combo;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn openai_client_to_openai_upstream() {
                super::$scenario(Combo::OPENAI_TO_OPENAI).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn openai_client_to_anthropic_upstream() {
                super::$scenario(Combo::OPENAI_TO_ANTHROPIC).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn anthropic_client_to_anthropic_upstream() {
                super::$scenario(Combo::ANTHROPIC_TO_ANTHROPIC).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn anthropic_client_to_openai_upstream() {
                super::$scenario(Combo::ANTHROPIC_TO_OPENAI).await;
            }
        }
    )+};
}
