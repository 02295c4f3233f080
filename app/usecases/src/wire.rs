//! Shape dispatch: one place that picks the OpenAI Chat Completions, OpenAI Responses,
//! Anthropic Messages or (upstream only) Gemini translation functions of `metis-domain` for a client shape or an upstream
//! wire format.

use metis_domain::canonical::{ChatRequest, ChatResponse, Shape, StreamEvent};
use metis_domain::error::GatewayError;
use metis_domain::responses::ResponseContext;
use metis_domain::sse::SseFrame;
use metis_domain::{anthropic, bedrock, gemini, openai, responses};
use metis_ports::upstream::WireFormat;
use serde_json::{Map, Value};

/// The wire format of a client shape's own API (what same-shape traffic is forwarded in).
pub(crate) fn wire_of(shape: Shape) -> WireFormat {
    match shape {
        Shape::OpenAi => WireFormat::OpenAiChat,
        Shape::Responses => WireFormat::OpenAiResponses,
        Shape::Anthropic => WireFormat::AnthropicMessages,
    }
}

pub(crate) struct Parsed {
    pub request: ChatRequest,
    pub raw: Map<String, Value>,
}

pub(crate) fn parse_request(shape: Shape, body: &[u8]) -> Result<Parsed, GatewayError> {
    let p = match shape {
        Shape::OpenAi => openai::parse_request(body)?,
        Shape::Responses => responses::parse_request(body)?,
        Shape::Anthropic => anthropic::parse_request(body)?,
    };
    Ok(Parsed {
        request: p.request,
        raw: p.raw,
    })
}

/// Render a request for an upstream speaking `wire` (cross-shape traffic).
pub(crate) fn render_request(
    wire: WireFormat,
    req: &ChatRequest,
    upstream_model: &str,
) -> Result<Value, GatewayError> {
    match wire {
        WireFormat::OpenAiChat => openai::render_request(req, upstream_model),
        WireFormat::OpenAiResponses => responses::render_request(req, upstream_model),
        WireFormat::AnthropicMessages => anthropic::render_request(req, upstream_model),
        WireFormat::GeminiGenerateContent => gemini::render_request(req, upstream_model),
        WireFormat::BedrockConverse => bedrock::render_request(req, upstream_model),
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
        Shape::Responses => responses::passthrough_request(raw, upstream_model),
        Shape::Anthropic => anthropic::passthrough_request(raw, upstream_model),
    }
}

pub(crate) fn parse_response(wire: WireFormat, body: &[u8]) -> Result<ChatResponse, String> {
    match wire {
        WireFormat::OpenAiChat => openai::parse_response(body),
        WireFormat::OpenAiResponses => responses::parse_response(body),
        WireFormat::AnthropicMessages => anthropic::parse_response(body),
        WireFormat::GeminiGenerateContent => gemini::parse_response(body),
        WireFormat::BedrockConverse => bedrock::parse_response(body),
    }
}

/// What a rendered answer needs beyond the canonical response: the client's model string,
/// the answer's id and time, and (Responses clients) the request fields the response object
/// echoes.
pub(crate) struct RenderCtx<'a> {
    pub client_model: &'a str,
    pub id: &'a str,
    pub created: i64,
    pub include_usage: bool,
    pub responses: &'a ResponseContext,
}

pub(crate) fn render_response(client: Shape, resp: &ChatResponse, ctx: &RenderCtx<'_>) -> Value {
    match client {
        Shape::OpenAi => openai::render_response(resp, ctx.client_model, ctx.id, ctx.created),
        Shape::Responses => {
            responses::render_response(resp, ctx.client_model, ctx.id, ctx.created, ctx.responses)
        }
        Shape::Anthropic => anthropic::render_response(resp, ctx.client_model, ctx.id, ctx.created),
    }
}

pub(crate) fn passthrough_response(
    wire: Shape,
    body: &[u8],
    client_model: &str,
) -> Result<(Value, ChatResponse), String> {
    match wire {
        Shape::OpenAi => openai::passthrough_response(body, client_model),
        Shape::Responses => responses::passthrough_response(body, client_model),
        Shape::Anthropic => anthropic::passthrough_response(body, client_model),
    }
}

/// Upstream SSE frames -> canonical events.
pub(crate) enum StreamParser {
    OpenAi(openai::StreamParser),
    Responses(responses::StreamParser),
    Anthropic(anthropic::StreamParser),
    Gemini(gemini::StreamParser),
    Bedrock(bedrock::StreamParser),
}

impl StreamParser {
    pub fn new(wire: WireFormat) -> Self {
        match wire {
            WireFormat::OpenAiChat => StreamParser::OpenAi(openai::StreamParser::new()),
            WireFormat::OpenAiResponses => StreamParser::Responses(responses::StreamParser::new()),
            WireFormat::AnthropicMessages => {
                StreamParser::Anthropic(anthropic::StreamParser::new())
            }
            WireFormat::GeminiGenerateContent => StreamParser::Gemini(gemini::StreamParser::new()),
            WireFormat::BedrockConverse => StreamParser::Bedrock(bedrock::StreamParser::new()),
        }
    }

    pub fn push(&mut self, frame: &SseFrame) -> Result<Vec<StreamEvent>, String> {
        match self {
            StreamParser::OpenAi(p) => p.push(frame),
            StreamParser::Responses(p) => p.push(frame),
            StreamParser::Anthropic(p) => p.push(frame),
            StreamParser::Gemini(p) => p.push(frame),
            StreamParser::Bedrock(p) => p.push(frame),
        }
    }

    pub fn finish(&mut self) -> Vec<StreamEvent> {
        match self {
            StreamParser::OpenAi(p) => p.finish(),
            StreamParser::Responses(p) => p.finish(),
            StreamParser::Anthropic(p) => p.finish(),
            StreamParser::Gemini(p) => p.finish(),
            StreamParser::Bedrock(p) => p.finish(),
        }
    }

    /// Whether the upstream signalled its own end.
    pub fn ended_cleanly(&self) -> bool {
        match self {
            StreamParser::OpenAi(p) => p.ended_cleanly(),
            StreamParser::Responses(p) => p.ended_cleanly(),
            StreamParser::Anthropic(p) => p.ended_cleanly(),
            StreamParser::Gemini(p) => p.ended_cleanly(),
            StreamParser::Bedrock(p) => p.ended_cleanly(),
        }
    }

    /// The class of the upstream's own mid-stream failure, where its wire says (Responses
    /// `response.failed` codes such as `context_length_exceeded`).
    pub fn error_class(&self) -> Option<metis_domain::error::ErrorClass> {
        match self {
            StreamParser::Responses(p) => p.error_class(),
            StreamParser::Bedrock(p) => p.error_class(),
            StreamParser::OpenAi(_) | StreamParser::Anthropic(_) | StreamParser::Gemini(_) => None,
        }
    }
}

/// Canonical events -> client SSE frames.
pub(crate) enum StreamRenderer {
    OpenAi(openai::StreamRenderer),
    Responses(Box<responses::StreamRenderer>),
    Anthropic(anthropic::StreamRenderer),
}

impl StreamRenderer {
    pub fn new(client: Shape, ctx: &RenderCtx<'_>) -> Self {
        match client {
            Shape::OpenAi => StreamRenderer::OpenAi(openai::StreamRenderer::new(
                ctx.id,
                ctx.client_model,
                ctx.include_usage,
                ctx.created,
            )),
            Shape::Responses => {
                StreamRenderer::Responses(Box::new(responses::StreamRenderer::new(
                    ctx.id,
                    ctx.client_model,
                    ctx.created,
                    ctx.responses.clone(),
                )))
            }
            Shape::Anthropic => StreamRenderer::Anthropic(anthropic::StreamRenderer::new(
                ctx.id,
                ctx.client_model,
                ctx.include_usage,
                ctx.created,
            )),
        }
    }

    pub fn event(&mut self, ev: &StreamEvent) -> Vec<String> {
        match self {
            StreamRenderer::OpenAi(r) => r.event(ev),
            StreamRenderer::Responses(r) => r.event(ev),
            StreamRenderer::Anthropic(r) => r.event(ev),
        }
    }

    pub fn end(&mut self) -> Vec<String> {
        match self {
            StreamRenderer::OpenAi(r) => r.end(),
            StreamRenderer::Responses(r) => r.end(),
            StreamRenderer::Anthropic(r) => r.end(),
        }
    }

    pub fn error(&mut self, err: &GatewayError) -> Vec<String> {
        match self {
            StreamRenderer::OpenAi(r) => r.error(err),
            StreamRenderer::Responses(r) => r.error(err),
            StreamRenderer::Anthropic(r) => r.error(err),
        }
    }
}

/// Same-shape stream rewriting (model echo, usage chunk suppression).
pub(crate) enum Passthrough {
    OpenAi(openai::PassthroughStream),
    Responses(responses::PassthroughStream),
    Anthropic(anthropic::PassthroughStream),
}

impl Passthrough {
    pub fn new(shape: Shape, client_model: &str, client_wants_usage: bool) -> Self {
        match shape {
            Shape::OpenAi => Passthrough::OpenAi(openai::PassthroughStream::new(
                client_model,
                client_wants_usage,
            )),
            Shape::Responses => {
                Passthrough::Responses(responses::PassthroughStream::new(client_model))
            }
            Shape::Anthropic => Passthrough::Anthropic(anthropic::PassthroughStream::new(
                client_model,
                client_wants_usage,
            )),
        }
    }

    pub fn rewrite(&mut self, frame: &SseFrame) -> Option<String> {
        match self {
            Passthrough::OpenAi(p) => p.rewrite(frame),
            Passthrough::Responses(p) => p.rewrite(frame),
            Passthrough::Anthropic(p) => p.rewrite(frame),
        }
    }

    /// The error frame that ends a same-shape stream (continuing the upstream's own ids and
    /// sequence numbers where the wire has them).
    pub fn error(&mut self, err: &GatewayError) -> Vec<String> {
        match self {
            Passthrough::OpenAi(p) => p.error(err),
            Passthrough::Responses(p) => p.error(err),
            Passthrough::Anthropic(p) => p.error(err),
        }
    }
}
