//! The canonical message IR every inbound shape is parsed into and every upstream wire format
//! is rendered from.
//!
//! Invariants:
//! - Usage buckets are **disjoint**: `input_tokens` counts only uncached input; cache reads and
//!   cache writes are separate. Renderers add them back where a wire format expects totals
//!   (OpenAI `prompt_tokens` includes cached tokens).
//! - Tool-call arguments are always a JSON object (`serde_json::Value::Object`); the OpenAI
//!   string form is parsed and validated at the edge.
//! - No field here is ever written to the trace store except counts and hashes derived from it.

use serde_json::{Map, Value};

/// Which public API shape a request arrived in (and which shape a response is rendered in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// OpenAI Chat Completions (`POST /v1/chat/completions`).
    OpenAi,
    /// Anthropic Messages (`POST /v1/messages`).
    Anthropic,
}

impl Shape {
    /// The value stored as `inbound_shape` in trace events.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::OpenAi => "openai",
            Shape::Anthropic => "anthropic",
        }
    }
}

/// A full chat request in canonical form.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// The model string exactly as the client sent it (echoed back in responses).
    pub model: String,
    /// System prompt blocks, in order. OpenAI system/developer messages are hoisted here.
    pub system: Vec<SystemBlock>,
    /// Conversation turns (user, assistant, tool results), in order.
    pub messages: Vec<Message>,
    pub tools: Vec<ToolDef>,
    pub tool_choice: Option<ToolChoice>,
    /// Upper bound on generated tokens (`max_tokens` / `max_completion_tokens`).
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`: the client wants a final usage chunk.
    pub include_usage: bool,
    /// Anthropic `thinking` configuration, kept verbatim (only meaningful to Anthropic upstreams).
    pub thinking: Option<Value>,
    /// `parallel_tool_calls` (OpenAI) / `disable_parallel_tool_use` (Anthropic, inverted).
    pub parallel_tool_calls: Option<bool>,
    /// End-user id (`user` on OpenAI, `metadata.user_id` on Anthropic).
    pub user: Option<String>,
}

/// One block of the system prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemBlock {
    pub text: String,
    /// Anthropic `cache_control`, kept verbatim so prompt caching survives the gateway.
    pub cache_control: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One conversation message. Tool results are user-role content blocks, as in Anthropic.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<ContentBlock>,
}

/// A content block.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentBlock {
    Text {
        text: String,
        cache_control: Option<Value>,
    },
    Image {
        source: ImageSource,
        cache_control: Option<Value>,
    },
    ToolUse {
        id: String,
        name: String,
        /// Always a JSON object.
        input: Value,
        cache_control: Option<Value>,
    },
    ToolResult {
        tool_use_id: String,
        content: Vec<ToolResultContent>,
        is_error: bool,
        cache_control: Option<Value>,
    },
    Thinking {
        thinking: String,
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
}

/// Content allowed inside a tool result.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolResultContent {
    Text(String),
    Image(ImageSource),
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the input object.
    pub input_schema: Value,
    pub cache_control: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (`auto`).
    Auto,
    /// The model must call some tool (`required` / `any`).
    Any,
    /// The model must not call tools (`none`).
    None,
    /// The model must call this tool.
    Tool(String),
}

/// Why generation stopped, in canonical (Anthropic-like) terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    Refusal,
    PauseTurn,
}

impl StopReason {
    /// Anthropic wire value (also the value stored in trace events).
    #[must_use]
    pub fn as_anthropic(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopSequence => "stop_sequence",
            StopReason::ToolUse => "tool_use",
            StopReason::Refusal => "refusal",
            StopReason::PauseTurn => "pause_turn",
        }
    }

    /// OpenAI `finish_reason`.
    #[must_use]
    pub fn as_openai(self) -> &'static str {
        match self {
            StopReason::EndTurn | StopReason::StopSequence | StopReason::PauseTurn => "stop",
            StopReason::MaxTokens => "length",
            StopReason::ToolUse => "tool_calls",
            StopReason::Refusal => "content_filter",
        }
    }

    /// Parse an Anthropic `stop_reason`; unknown values become `EndTurn`.
    #[must_use]
    pub fn from_anthropic(s: &str) -> Self {
        match s {
            "max_tokens" | "model_context_window_exceeded" => StopReason::MaxTokens,
            "stop_sequence" => StopReason::StopSequence,
            "tool_use" => StopReason::ToolUse,
            "refusal" => StopReason::Refusal,
            "pause_turn" => StopReason::PauseTurn,
            _ => StopReason::EndTurn,
        }
    }

    /// Parse an OpenAI `finish_reason`; unknown values become `EndTurn`.
    #[must_use]
    pub fn from_openai(s: &str) -> Self {
        match s {
            "length" => StopReason::MaxTokens,
            "tool_calls" | "function_call" => StopReason::ToolUse,
            "content_filter" => StopReason::Refusal,
            _ => StopReason::EndTurn,
        }
    }
}

/// Token usage in four disjoint buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Uncached input tokens.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens served from the prompt cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write_tokens: u64,
}

impl Usage {
    /// All input tokens, cached or not (what OpenAI calls `prompt_tokens`).
    #[must_use]
    pub fn total_input(&self) -> u64 {
        self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
    }

    /// Field-wise maximum, used to merge cumulative usage reports from a stream.
    #[must_use]
    pub fn max(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.max(other.input_tokens),
            output_tokens: self.output_tokens.max(other.output_tokens),
            cache_read_tokens: self.cache_read_tokens.max(other.cache_read_tokens),
            cache_write_tokens: self.cache_write_tokens.max(other.cache_write_tokens),
        }
    }
}

/// A complete (non-streaming) response in canonical form.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// Upstream message id, if any (renderers mint their own ids).
    pub id: Option<String>,
    /// The model the upstream says it used.
    pub model: Option<String>,
    /// Only `Text`, `ToolUse`, `Thinking` and `RedactedThinking` blocks appear here.
    pub content: Vec<ContentBlock>,
    pub stop_reason: StopReason,
    pub stop_sequence: Option<String>,
    pub usage: Usage,
}

/// One event of a canonical response stream.
///
/// Producers (upstream stream parsers) guarantee: blocks are opened before their deltas,
/// `index` values are dense and increasing, at most one block is open at a time,
/// `Finish` comes after every block is stopped, and `Usage` values are cumulative.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The upstream accepted the request; `usage` carries any input counts known up front.
    Start {
        id: Option<String>,
        model: Option<String>,
        usage: Usage,
    },
    /// A content block opens.
    BlockStart { index: usize, block: BlockStart },
    /// A fragment of the open block.
    Delta { index: usize, delta: BlockDelta },
    /// The block at `index` is complete.
    BlockStop { index: usize },
    /// Cumulative usage so far.
    Usage(Usage),
    /// Generation ended.
    Finish {
        stop_reason: StopReason,
        stop_sequence: Option<String>,
    },
}

/// The header of a streamed content block.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockStart {
    Text,
    Thinking,
    RedactedThinking { data: String },
    ToolUse { id: String, name: String },
}

/// A fragment of a streamed content block.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockDelta {
    Text(String),
    Thinking(String),
    Signature(String),
    /// A fragment of the tool input JSON text.
    ToolInputJson(String),
}

/// Unknown top-level request fields, kept for same-shape passthrough.
pub type Extra = Map<String, Value>;
