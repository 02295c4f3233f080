//! OpenAI Chat Completions (`POST /v1/chat/completions`) <-> canonical IR.
//!
//! Inbound: [`parse_request`] validates a client body into a [`ChatRequest`] (errors name the
//! JSON path) and keeps the raw object; same-shape traffic then goes out through
//! [`passthrough_request`] (unknown fields untouched, only `model` replaced) while
//! cross-shape traffic goes through the other wire's `render_request`.
//!
//! Outbound to an OpenAI-compatible upstream: [`render_request`] (from an Anthropic-shaped
//! client), [`parse_response`] / [`StreamParser`] to read what comes back.
//!
//! Towards an OpenAI client: [`render_response`] / [`StreamRenderer`] for cross-shape answers,
//! [`passthrough_response`] / [`PassthroughStream`] for same-shape ones.
//!
//! Invariants and lossy points (all deliberate):
//! - System and developer messages are hoisted into `ChatRequest::system`, wherever they
//!   appear; rendering puts all system text into one leading system message (`\n\n`-joined).
//! - `tool` messages become `ToolResult` blocks of a user message; consecutive tool messages
//!   share one user message and a user message right after them is merged into it.
//! - Assistant text is one string on this wire: several canonical text blocks are
//!   concatenated without a separator (Anthropic splits text at citations, and a streaming
//!   client concatenates deltas the same way). Thinking blocks have no place here and are
//!   dropped, in requests and responses alike.
//! - Tool results carry text only: their text parts are joined with `\n`, `is_error` is
//!   dropped, and images inside a tool result move to the user message that follows the tool
//!   messages (there is no other place for them).
//! - Usage: canonical buckets are disjoint, so `prompt_tokens` is rendered as
//!   input + cache read + cache write, and parsed back as input = `prompt_tokens` -
//!   `cached_tokens` (clamped at 0).
//! - A stream rendered for a client always ends with `[DONE]` after success, and never after
//!   a failure (then the last frame is `{"error":{…}}`), so a client cannot mistake a broken
//!   stream for a complete one.
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
