//! Anthropic Messages (`POST /v1/messages`) <-> canonical IR.
//!
//! Inbound: [`parse_request`] validates a client body into a [`ChatRequest`] (errors name the
//! JSON path) and keeps the raw object for same-shape passthrough ([`passthrough_request`]:
//! unknown fields untouched, only `model` replaced).
//!
//! Outbound to an Anthropic upstream: [`render_request`] (from an OpenAI-shaped client),
//! [`parse_response`] / [`StreamParser`] to read what comes back.
//!
//! Towards an Anthropic client: [`render_response`] / [`StreamRenderer`] for cross-shape
//! answers, [`passthrough_response`] / [`PassthroughStream`] for same-shape ones.
//!
//! Invariants and lossy points (all deliberate):
//! - `cache_control` is kept on system blocks, content blocks and tools, so prompt caching
//!   survives the gateway.
//! - Block types the IR has no model for (`document`, `search_result`, `server_tool_use`, an
//!   image with a `file` source, server tools such as `web_search_20250305`) are kept
//!   verbatim as `Opaque`; they pass through same-shape traffic and are refused, by name, on
//!   the way to an OpenAI upstream.
//! - Rendering for the wire: consecutive same-role messages are merged (OpenAI clients may
//!   send several user turns in a row), `tool_result` blocks come first in a user message (the
//!   API requires them right after the `tool_use` turn), empty text blocks are dropped (the API
//!   rejects them), thinking blocks without a signature are dropped (the API rejects unsigned
//!   thinking), `max_tokens` defaults to 4096 and `temperature` is clamped to Anthropic's
//!   0..=1 range (OpenAI allows up to 2).
//! - Usage: the wire's four counters are the canonical disjoint buckets one to one; a
//!   stream's `message_delta` usage is cumulative and overrides `message_start`'s field by
//!   field.
//! - A stream rendered for a client ends with `message_delta` + `message_stop` after success,
//!   and with `event: error` (never a fake `message_stop`) after a failure.
//!
//! [`ChatRequest`]: crate::canonical::ChatRequest

mod passthrough;
mod request;
mod response;
mod stream_parse;
mod stream_render;
#[cfg(test)]
mod tests;

pub use crate::canonical::ParsedRequest;
pub use passthrough::{PassthroughStream, passthrough_request, passthrough_response};
pub use request::{parse_request, render_request};
pub use response::{parse_response, render_response};
pub use stream_parse::StreamParser;
pub use stream_render::StreamRenderer;

/// `max_tokens` sent upstream when the client (an OpenAI one) did not set any: the Anthropic
/// API requires the field.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
