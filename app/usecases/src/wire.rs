//! Shape dispatch: one place that picks the OpenAI or Anthropic translation functions of
//! `gw-domain` for a client shape or an upstream wire format.

use gw_domain::canonical::{ChatRequest, ChatResponse, Shape, StreamEvent};
use gw_domain::error::GatewayError;
use gw_domain::sse::SseFrame;
use gw_domain::{anthropic, openai};
use gw_ports::upstream::WireFormat;
use serde_json::{Map, Value};

/// The public API shape a wire format corresponds to.
pub(crate) fn shape_of(wire: WireFormat) -> Shape {
    match wire {
        // MERGE: Shape::Responses
        WireFormat::OpenAiChat | WireFormat::OpenAiResponses => Shape::OpenAi,
        WireFormat::AnthropicMessages => Shape::Anthropic,
    }
}

/// The wire format of a client shape's own API (what same-shape traffic is forwarded in).
pub(crate) fn wire_of(shape: Shape) -> WireFormat {
    match shape {
        Shape::OpenAi => WireFormat::OpenAiChat,
        Shape::Anthropic => WireFormat::AnthropicMessages,
    }
}

pub(crate) struct Parsed {
    pub request: ChatRequest,
    pub raw: Map<String, Value>,
}

pub(crate) fn parse_request(shape: Shape, body: &[u8]) -> Result<Parsed, GatewayError> {
    match shape {
        Shape::OpenAi => openai::parse_request(body).map(|p| Parsed {
            request: p.request,
            raw: p.raw,
        }),
        Shape::Anthropic => anthropic::parse_request(body).map(|p| Parsed {
            request: p.request,
            raw: p.raw,
        }),
    }
}

/// Render a request for an upstream speaking `wire` (cross-shape traffic).
pub(crate) fn render_request(
    wire: Shape,
    req: &ChatRequest,
    upstream_model: &str,
) -> Result<Value, GatewayError> {
    match wire {
        Shape::OpenAi => openai::render_request(req, upstream_model),
        Shape::Anthropic => anthropic::render_request(req, upstream_model),
    }
}

/// Forward the client's own object with only the model replaced (same-shape traffic).
pub(crate) fn passthrough_request(
    wire: Shape,
    raw: Map<String, Value>,
    upstream_model: &str,
) -> Value {
    match wire {
        Shape::OpenAi => openai::passthrough_request(raw, upstream_model),
        Shape::Anthropic => anthropic::passthrough_request(raw, upstream_model),
    }
}

pub(crate) fn parse_response(wire: Shape, body: &[u8]) -> Result<ChatResponse, String> {
    match wire {
        Shape::OpenAi => openai::parse_response(body),
        Shape::Anthropic => anthropic::parse_response(body),
    }
}

pub(crate) fn render_response(
    client: Shape,
    resp: &ChatResponse,
    client_model: &str,
    id: &str,
    created: i64,
) -> Value {
    match client {
        Shape::OpenAi => openai::render_response(resp, client_model, id, created),
        Shape::Anthropic => anthropic::render_response(resp, client_model, id, created),
    }
}

pub(crate) fn passthrough_response(
    wire: Shape,
    body: &[u8],
    client_model: &str,
) -> Result<(Value, ChatResponse), String> {
    match wire {
        Shape::OpenAi => openai::passthrough_response(body, client_model),
        Shape::Anthropic => anthropic::passthrough_response(body, client_model),
    }
}

/// Upstream SSE frames -> canonical events.
pub(crate) enum StreamParser {
    OpenAi(openai::StreamParser),
    Anthropic(anthropic::StreamParser),
}

impl StreamParser {
    pub fn new(wire: Shape) -> Self {
        match wire {
            Shape::OpenAi => StreamParser::OpenAi(openai::StreamParser::new()),
            Shape::Anthropic => StreamParser::Anthropic(anthropic::StreamParser::new()),
        }
    }

    pub fn push(&mut self, frame: &SseFrame) -> Result<Vec<StreamEvent>, String> {
        match self {
            StreamParser::OpenAi(p) => p.push(frame),
            StreamParser::Anthropic(p) => p.push(frame),
        }
    }

    pub fn finish(&mut self) -> Vec<StreamEvent> {
        match self {
            StreamParser::OpenAi(p) => p.finish(),
            StreamParser::Anthropic(p) => p.finish(),
        }
    }

    /// Whether the upstream signalled its own end.
    pub fn ended_cleanly(&self) -> bool {
        match self {
            StreamParser::OpenAi(p) => p.ended_cleanly(),
            StreamParser::Anthropic(p) => p.ended_cleanly(),
        }
    }
}

/// Canonical events -> client SSE frames.
pub(crate) enum StreamRenderer {
    OpenAi(openai::StreamRenderer),
    Anthropic(anthropic::StreamRenderer),
}

impl StreamRenderer {
    pub fn new(
        client: Shape,
        id: &str,
        client_model: &str,
        include_usage: bool,
        created: i64,
    ) -> Self {
        match client {
            Shape::OpenAi => StreamRenderer::OpenAi(openai::StreamRenderer::new(
                id,
                client_model,
                include_usage,
                created,
            )),
            Shape::Anthropic => StreamRenderer::Anthropic(anthropic::StreamRenderer::new(
                id,
                client_model,
                include_usage,
                created,
            )),
        }
    }

    pub fn event(&mut self, ev: &StreamEvent) -> Vec<String> {
        match self {
            StreamRenderer::OpenAi(r) => r.event(ev),
            StreamRenderer::Anthropic(r) => r.event(ev),
        }
    }

    pub fn end(&mut self) -> Vec<String> {
        match self {
            StreamRenderer::OpenAi(r) => r.end(),
            StreamRenderer::Anthropic(r) => r.end(),
        }
    }

    pub fn error(&mut self, err: &GatewayError) -> Vec<String> {
        match self {
            StreamRenderer::OpenAi(r) => r.error(err),
            StreamRenderer::Anthropic(r) => r.error(err),
        }
    }
}

/// Same-shape stream rewriting (model echo, usage chunk suppression).
pub(crate) enum Passthrough {
    OpenAi(openai::PassthroughStream),
    Anthropic(anthropic::PassthroughStream),
}

impl Passthrough {
    pub fn new(shape: Shape, client_model: &str, client_wants_usage: bool) -> Self {
        match shape {
            Shape::OpenAi => Passthrough::OpenAi(openai::PassthroughStream::new(
                client_model,
                client_wants_usage,
            )),
            Shape::Anthropic => Passthrough::Anthropic(anthropic::PassthroughStream::new(
                client_model,
                client_wants_usage,
            )),
        }
    }

    pub fn rewrite(&mut self, frame: &SseFrame) -> Option<String> {
        match self {
            Passthrough::OpenAi(p) => p.rewrite(frame),
            Passthrough::Anthropic(p) => p.rewrite(frame),
        }
    }
}
