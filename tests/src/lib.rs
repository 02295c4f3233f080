//! Cross-crate test support for the Metis gateway.
//!
//! - [`fake_upstream`]: a fake Anthropic/OpenAI provider speaking the real wire formats, with
//!   scripted behaviours, used by the Rust HTTP tests (in-process) and the Python SDK tests
//!   (through the `fake-upstream` binary).

pub mod fake_upstream;

pub use fake_upstream::{FakeUpstream, RecordedRequest, SseEvent, parse_sse};
