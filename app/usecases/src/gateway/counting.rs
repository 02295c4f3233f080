//! `POST /v1/messages/count_tokens` (Anthropic shape) and `POST /v1/responses/input_tokens`
//! (OpenAI Responses shape): how many input tokens a request would cost, never charged.
//!
//! The count is as good as what can produce it, and the answer says which
//! (`TokenCount::method`, the `x-metis-token-count` header):
//! 1. `exact`: the upstream counts — forwarded as the client sent it when the upstream serves
//!    the client's own count endpoint, else translated to the one it serves (Anthropic
//!    `count_tokens`, OpenAI `input_tokens`);
//! 2. `tokenizer`: the gateway's tokenizer knows the model (OpenAI model families);
//! 3. `estimate`: characters / 4 of everything the model reads (the same estimate the cost
//!    reservation uses).
//!
//! Authenticated, rate limited and cap-checked like a model call (`admit`), counted in
//! `metis_token_counts_total{method}`; no trace event and no spend.

use super::GatewayCore;
use super::call::upstream_error;
use crate::wire;
use bytes::Bytes;
use metis_domain::canonical::{ChatRequest, Shape};
use metis_domain::error::GatewayError;
use metis_ports::gateway::{Admission, CountMethod, TokenCount};
use metis_ports::upstream::{Operation, UpstreamBody, WireFormat};
use serde_json::{Value, json};

/// Top-level fields the Anthropic `count_tokens` endpoint accepts; a translated request keeps
/// only these (it refuses `max_tokens`, `stream`, sampling parameters).
const ANTHROPIC_COUNT_FIELDS: [&str; 6] = [
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
];

/// Fields of a Responses request that `input_tokens` has no use for.
const RESPONSES_COUNT_DROP: [&str; 4] = ["stream", "max_output_tokens", "store", "stream_options"];

impl GatewayCore {
    pub(super) async fn count_input_tokens(
        &self,
        admission: Admission,
        body: Bytes,
    ) -> Result<TokenCount, GatewayError> {
        let shape = admission.shape;
        let parsed = parse_count_request(shape, &body)?;
        let req = &parsed.request;
        let entry = self.catalog.resolve(&req.model, &|p| self.is_live(p))?;
        let aliases = self.catalog.aliases_of(&entry.id);
        if let Err(refusal) = self
            .keys
            .snapshot()
            .check_model(&admission.key, &entry.id, &aliases)
        {
            return Err(super::call::model_not_allowed(
                &req.model,
                &admission.key,
                refusal,
            ));
        }
        let Some(provider) = self.providers.get(&entry.provider).cloned() else {
            return Err(GatewayError::Internal);
        };
        let native = wire::wire_of(shape);
        let counting_wire = std::iter::once(native)
            .chain([WireFormat::AnthropicMessages, WireFormat::OpenAiResponses])
            .find(|w| provider.supports(*w, Operation::CountTokens));
        let result = if let Some(wire_format) = counting_wire {
            let same_shape = wire_format == native;
            let upstream_json = if same_shape {
                wire::passthrough_request(shape, parsed.raw, &entry.upstream_name)
            } else {
                count_body(wire_format, req, &entry.upstream_name)?
            };
            let request = Self::upstream_request(
                &admission,
                self.ids.ulid(),
                admission.traceparent.clone(),
                wire_format,
                Operation::CountTokens,
                &entry.upstream_name,
                Bytes::from(upstream_json.to_string()),
                false,
                same_shape,
            );
            let reply = provider
                .send(request)
                .await
                .map_err(|e| upstream_error(&e, same_shape).0)?;
            let UpstreamBody::Full(bytes) = reply.body else {
                return Err(GatewayError::Internal);
            };
            let body = if same_shape {
                bytes
            } else {
                let n = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("input_tokens").and_then(Value::as_u64))
                    .ok_or_else(|| GatewayError::Upstream {
                        class: metis_domain::error::ErrorClass::Other,
                        provider: entry.provider.clone(),
                        message: format!(
                            "upstream {} answered a token count without input_tokens",
                            entry.provider
                        ),
                        retry_after_secs: None,
                    })?;
                render_count(shape, n)
            };
            TokenCount {
                body,
                method: CountMethod::Exact,
            }
        } else if let Some(n) = self.tokenizer.count(&entry.upstream_name, req) {
            TokenCount {
                body: render_count(shape, n),
                method: CountMethod::Tokenizer,
            }
        } else {
            TokenCount {
                body: render_count(shape, req.estimate_input_tokens()),
                method: CountMethod::Estimate,
            }
        };
        self.metrics.token_count(result.method.as_str());
        Ok(result)
    }
}

/// Parse a count request. An Anthropic `count_tokens` body has no `max_tokens` (the Messages
/// parser requires one): a placeholder is added for the canonical view only; the raw body
/// forwarded to a same-shape upstream is the client's own.
fn parse_count_request(shape: Shape, body: &[u8]) -> Result<wire::Parsed, GatewayError> {
    if shape == Shape::Anthropic
        && let Ok(Value::Object(mut raw)) = serde_json::from_slice::<Value>(body)
        && !raw.contains_key("max_tokens")
    {
        let original = raw.clone();
        raw.insert("max_tokens".to_owned(), json!(1));
        let bytes = serde_json::to_vec(&raw).map_err(|_| GatewayError::Internal)?;
        let mut parsed = wire::parse_request(shape, &bytes)?;
        parsed.raw = original;
        return Ok(parsed);
    }
    wire::parse_request(shape, body)
}

/// A translated count request for an upstream counting in `wire_format`.
fn count_body(
    wire_format: WireFormat,
    req: &ChatRequest,
    upstream_model: &str,
) -> Result<Value, GatewayError> {
    let mut v = wire::render_request(wire_format, req, upstream_model)?;
    if let Some(o) = v.as_object_mut() {
        match wire_format {
            WireFormat::AnthropicMessages => {
                o.retain(|k, _| ANTHROPIC_COUNT_FIELDS.contains(&k.as_str()));
            }
            _ => o.retain(|k, _| !RESPONSES_COUNT_DROP.contains(&k.as_str())),
        }
    }
    Ok(v)
}

/// The count answer in the client's shape.
fn render_count(shape: Shape, input_tokens: u64) -> Bytes {
    let v = match shape {
        Shape::Anthropic => json!({ "input_tokens": input_tokens }),
        _ => metis_domain::responses::input_tokens_body(input_tokens),
    };
    Bytes::from(v.to_string())
}
