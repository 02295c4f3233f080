//! The canonical message IR every inbound shape is parsed into and every upstream wire format
//! is rendered from.
//!
//! Invariants:
//! - Usage buckets are **disjoint**: `input_tokens` counts only uncached input; cache reads and
//!   cache writes are separate. Renderers add them back where a wire format expects totals
//!   (OpenAI `prompt_tokens` includes cached tokens).
//! - Tool-call arguments in a *request* are always a JSON object (`serde_json::Value::Object`);
//!   the OpenAI string form is parsed and validated at the edge (bad JSON is a 400). In a
//!   *response* an OpenAI-compatible upstream may emit arguments that are not a JSON object;
//!   they are kept as `Value::String(raw)` rather than failing the call (see
//!   [`ContentBlock::ToolUse`]).
//! - What the IR cannot express is not silently dropped: unknown content blocks and tool
//!   kinds are kept verbatim as [`Opaque`] values tagged with the shape they came from, so a
//!   renderer for another shape can refuse them by name, and same-shape passthrough (which
//!   forwards the raw body) never needs them.
//! - No field here is ever written to the trace store except counts and hashes derived from it.

use serde_json::{Map, Value};

/// Which public API shape a request arrived in (and which shape a response is rendered in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// OpenAI Chat Completions (`POST /v1/chat/completions`).
    OpenAi,
    /// Anthropic Messages (`POST /v1/messages`).
    Anthropic,
    /// OpenAI Responses (`POST /v1/responses`).
    Responses,
}

impl Shape {
    /// The value stored as `inbound_shape` in trace events.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::OpenAi => "openai",
            Shape::Anthropic => "anthropic",
            Shape::Responses => "responses",
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
    /// Tools of a kind the IR has no model for (Anthropic server tools such as
    /// `web_search_20250305`, OpenAI Chat `custom` tools, Responses hosted tools such as
    /// `web_search` or `local_shell`), kept verbatim in their own shape.
    pub other_tools: Vec<Opaque>,
}

/// A wire object the canonical model has no variant for, kept verbatim with the shape it was
/// written in.
///
/// Renderers emit it unchanged when the target shape is `shape` and refuse it otherwise
/// (naming [`Opaque::kind`]); guessing a translation would change what the model sees.
#[derive(Debug, Clone, PartialEq)]
pub struct Opaque {
    pub shape: Shape,
    pub value: Value,
}

impl Opaque {
    /// The object's `type` field, used to name it in errors (`"unknown"` when absent).
    #[must_use]
    pub fn kind(&self) -> &str {
        self.value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
    }
}

/// A parsed inbound request: the canonical view plus the original top-level object, which
/// same-shape passthrough forwards with only `model` replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub request: ChatRequest,
    pub raw: Map<String, Value>,
}

impl ChatRequest {
    /// Rough input size in tokens: characters of every text the model reads, divided by 4.
    ///
    /// Used for routing (context-window checks) and the `estimated_input_tokens` trace field,
    /// never for billing. Images count zero: their cost depends on the provider's resizing.
    #[must_use]
    pub fn estimate_input_tokens(&self) -> u64 {
        self.measure_input(|s| s.chars().count() as u64) / 4
    }

    /// The sum of `measure` over every text the model reads: system blocks, message text,
    /// tool-call names and arguments, tool results, thinking, blocks and tools the IR keeps
    /// opaque (as JSON) and tool definitions. Images measure zero. The estimate above and the
    /// tokenizer adapter both count through it.
    pub fn measure_input(&self, measure: impl Fn(&str) -> u64) -> u64 {
        let json = |v: &Value| measure(&v.to_string());
        let mut n: u64 = self.system.iter().map(|b| measure(&b.text)).sum();
        for block in self.messages.iter().flat_map(|m| &m.content) {
            n += match block {
                ContentBlock::Text { text, .. } => measure(text),
                ContentBlock::ToolUse { name, input, .. } => measure(name) + json(input),
                ContentBlock::ToolResult { content, .. } => content
                    .iter()
                    .map(|c| match c {
                        ToolResultContent::Text(t) => measure(t),
                        ToolResultContent::Image(_) => 0,
                        ToolResultContent::Other(o) => json(&o.value),
                    })
                    .sum(),
                ContentBlock::Thinking { thinking, .. } => measure(thinking),
                ContentBlock::Image { .. } | ContentBlock::RedactedThinking { .. } => 0,
                ContentBlock::Other(o) => json(&o.value),
            };
        }
        for tool in &self.tools {
            n += measure(&tool.name)
                + tool.description.as_deref().map_or(0, &measure)
                + json(&tool.input_schema);
        }
        n + self.other_tools.iter().map(|t| json(&t.value)).sum::<u64>()
    }

    /// Whether any message (or tool result) carries an image: routing needs a vision model.
    #[must_use]
    pub fn has_images(&self) -> bool {
        self.messages
            .iter()
            .flat_map(|m| &m.content)
            .any(|b| match b {
                ContentBlock::Image { .. } => true,
                ContentBlock::ToolResult { content, .. } => content
                    .iter()
                    .any(|c| matches!(c, ToolResultContent::Image(_))),
                _ => false,
            })
    }
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
        /// A JSON object, except in a [`ChatResponse`] from an OpenAI-compatible upstream whose
        /// `arguments` text was not a JSON object: then `Value::String` holding that text
        /// verbatim. The OpenAI renderer sends such a string back unchanged as `arguments`; the
        /// Anthropic renderer (whose `input` must be an object) sends `{}`.
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
    /// A block the IR has no model for (Anthropic `document`, `search_result`,
    /// `server_tool_use`, an OpenAI `input_audio` part, an image with a `file` source, a
    /// Responses `input_file` part or `item_reference` item, ...).
    Other(Opaque),
}

/// Content allowed inside a tool result.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolResultContent {
    Text(String),
    Image(ImageSource),
    /// A nested block the IR has no model for (e.g. an Anthropic `search_result`).
    Other(Opaque),
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
    /// Only `Text`, `ToolUse`, `Thinking`, `RedactedThinking` and (for Anthropic server-tool
    /// blocks such as `web_search_tool_result`) `Other` blocks appear here.
    pub content: Vec<ContentBlock>,
    pub stop_reason: StopReason,
    pub stop_sequence: Option<String>,
    pub usage: Usage,
}

impl ChatResponse {
    /// Number of tool calls the model made (`produced_tool_calls` in trace events).
    #[must_use]
    pub fn tool_call_count(&self) -> usize {
        self.content
            .iter()
            .filter(|b| matches!(b, ContentBlock::ToolUse { .. }))
            .count()
    }

    /// Number of thinking blocks, redacted or not (`produced_thinking_blocks`).
    #[must_use]
    pub fn thinking_block_count(&self) -> usize {
        self.content
            .iter()
            .filter(|b| {
                matches!(
                    b,
                    ContentBlock::Thinking { .. } | ContentBlock::RedactedThinking { .. }
                )
            })
            .count()
    }
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

/// Interpret tool-call argument text from an upstream: empty means `{}`, a JSON object is
/// parsed, anything else is kept verbatim as `Value::String` (see [`ContentBlock::ToolUse`]).
#[must_use]
pub fn parse_tool_input(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Object(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::String(text.to_owned()),
    }
}

/// Folds a canonical event stream into a [`ChatResponse`] (and tracks usage and the stop
/// reason on the way).
///
/// Used to account a stream (tool-call and thinking counts for trace events) and to turn a
/// stream into a complete answer. Deltas for a block other than the open one are ignored,
/// which is what the [`StreamEvent`] invariants promise never happens.
#[derive(Debug, Clone, Default)]
pub struct StreamAccumulator {
    id: Option<String>,
    model: Option<String>,
    content: Vec<ContentBlock>,
    /// (event index, position in `content`) of the open block.
    open: Option<(usize, usize)>,
    /// Tool input JSON text of the open tool block; parsed when the block stops.
    tool_json: String,
    usage: Usage,
    stop_reason: Option<StopReason>,
    stop_sequence: Option<String>,
}

impl StreamAccumulator {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply one event.
    pub fn push(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Start { id, model, usage } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
                self.usage = self.usage.max(*usage);
            }
            StreamEvent::BlockStart { index, block } => {
                self.close();
                let block = match block {
                    BlockStart::Text => ContentBlock::Text {
                        text: String::new(),
                        cache_control: None,
                    },
                    BlockStart::Thinking => ContentBlock::Thinking {
                        thinking: String::new(),
                        signature: None,
                    },
                    BlockStart::RedactedThinking { data } => {
                        ContentBlock::RedactedThinking { data: data.clone() }
                    }
                    BlockStart::ToolUse { id, name } => ContentBlock::ToolUse {
                        id: id.clone(),
                        name: name.clone(),
                        input: Value::Object(Map::new()),
                        cache_control: None,
                    },
                };
                self.content.push(block);
                self.open = Some((*index, self.content.len() - 1));
            }
            StreamEvent::Delta { index, delta } => {
                let Some((open_index, pos)) = self.open else {
                    return;
                };
                if open_index != *index {
                    return;
                }
                match (self.content.get_mut(pos), delta) {
                    (Some(ContentBlock::Text { text, .. }), BlockDelta::Text(t)) => {
                        text.push_str(t);
                    }
                    (Some(ContentBlock::Thinking { thinking, .. }), BlockDelta::Thinking(t)) => {
                        thinking.push_str(t);
                    }
                    (Some(ContentBlock::Thinking { signature, .. }), BlockDelta::Signature(s)) => {
                        signature.get_or_insert_with(String::new).push_str(s);
                    }
                    (Some(ContentBlock::ToolUse { .. }), BlockDelta::ToolInputJson(j)) => {
                        self.tool_json.push_str(j);
                    }
                    _ => {}
                }
            }
            StreamEvent::BlockStop { index } => {
                if self.open.is_some_and(|(i, _)| i == *index) {
                    self.close();
                }
            }
            StreamEvent::Usage(u) => self.usage = self.usage.max(*u),
            StreamEvent::Finish {
                stop_reason,
                stop_sequence,
            } => {
                self.close();
                self.stop_reason = Some(*stop_reason);
                self.stop_sequence.clone_from(stop_sequence);
            }
        }
    }

    /// Usage so far (field-wise maximum of every report).
    #[must_use]
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The stop reason, once `Finish` was seen.
    #[must_use]
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop_reason
    }

    /// The answer so far; a stream that never finished reports `EndTurn`.
    #[must_use]
    pub fn into_response(mut self) -> ChatResponse {
        self.close();
        ChatResponse {
            id: self.id,
            model: self.model,
            content: self.content,
            stop_reason: self.stop_reason.unwrap_or(StopReason::EndTurn),
            stop_sequence: self.stop_sequence,
            usage: self.usage,
        }
    }

    fn close(&mut self) {
        let Some((_, pos)) = self.open.take() else {
            return;
        };
        let json = std::mem::take(&mut self.tool_json);
        if let Some(ContentBlock::ToolUse { input, .. }) = self.content.get_mut(pos) {
            *input = parse_tool_input(&json);
        }
    }
}

pub(crate) mod wire;
