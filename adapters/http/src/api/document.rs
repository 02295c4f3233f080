//! The OpenAPI document: what poem-openapi derives, completed with what it cannot derive
//! for the raw provider endpoints (security schemes, request bodies, error envelopes).

use super::async_trait_free::NoService;
use super::{HttpOptions, service};
use serde_json::json;
use std::sync::Arc;

/// The OpenAPI document (JSON) of the HTTP surface, admin API included.
#[must_use]
pub fn openapi_json() -> String {
    let spec = service(
        Arc::new(NoService),
        Arc::new(NoService),
        Arc::new(NoService),
        HttpOptions::default(),
    )
    .spec();
    complete_document(&spec)
}

/// Add what poem-openapi cannot derive for raw provider endpoints: the gateway-key security
/// schemes, the request body shape, and the per-shape error envelopes.
fn complete_document(spec: &str) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(spec) else {
        return spec.to_owned();
    };
    let schemes = &mut doc["components"]["securitySchemes"];
    schemes["GatewayBearer"] = json!({
        "type": "http",
        "scheme": "bearer",
        "description": "Gateway key: `Authorization: Bearer gw_…`."
    });
    schemes["GatewayApiKey"] = json!({
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "Gateway key in `x-api-key` (Anthropic shape)."
    });
    let schemas = &mut doc["components"]["schemas"];
    schemas["OpenAiError"] = json!({
        "type": "object",
        "description": "OpenAI-shape error envelope.",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "code": {"type": "string", "nullable": true}
        }}}
    });
    schemas["AnthropicError"] = json!({
        "type": "object",
        "description": "Anthropic-shape error envelope.",
        "required": ["type", "error"],
        "properties": {
            "type": {"type": "string", "enum": ["error"]},
            "error": {"type": "object", "required": ["type", "message"], "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"}
            }}
        }
    });
    let body = |required: &[&str], extra: &[&str], doc: &str| {
        let mut properties = serde_json::Map::new();
        properties.insert(
            "model".to_owned(),
            json!({"type": "string", "minLength": 1, "description": "Alias, canonical id (`provider:name`) or model name."}),
        );
        for field in required.iter().chain(extra).filter(|f| **f != "model") {
            let schema = match *field {
                "messages" => json!({"type": "array", "minItems": 1, "items": {"type": "object"}}),
                "stream" => json!({"type": "boolean"}),
                "max_tokens" => json!({"type": "integer", "minimum": 1}),
                "input" => {
                    json!({"description": "A string, or an array (items, strings or token arrays)."})
                }
                _ => json!({}),
            };
            properties.insert((*field).to_owned(), schema);
        }
        json!({
            "required": true,
            "description": doc,
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": required,
                "properties": properties,
                "additionalProperties": true
            }}}
        })
    };
    let bearer = json!([{"GatewayBearer": []}]);
    let either = json!([{"GatewayApiKey": []}, {"GatewayBearer": []}]);
    let none = serde_json::Value::Null;
    let ops: [(&str, &str, serde_json::Value, serde_json::Value, &str); 9] = [
        (
            "/v1/chat/completions",
            "post",
            bearer.clone(),
            body(
                &["model", "messages"],
                &["stream"],
                "An OpenAI Chat Completions request; unknown fields are forwarded to OpenAI-compatible upstreams.",
            ),
            "OpenAiError",
        ),
        (
            "/v1/messages",
            "post",
            either.clone(),
            body(
                &["model", "messages", "max_tokens"],
                &["stream"],
                "An Anthropic Messages request; unknown fields are forwarded to Anthropic upstreams.",
            ),
            "AnthropicError",
        ),
        (
            "/v1/messages/count_tokens",
            "post",
            either.clone(),
            body(
                &["model", "messages"],
                &[],
                "An Anthropic Messages request without `max_tokens`.",
            ),
            "AnthropicError",
        ),
        (
            "/v1/responses",
            "post",
            bearer.clone(),
            body(
                &["model", "input"],
                &["stream"],
                "An OpenAI Responses request; unknown fields are forwarded to upstreams that serve the Responses API.",
            ),
            "OpenAiError",
        ),
        (
            "/v1/responses/input_tokens",
            "post",
            bearer.clone(),
            body(&["model", "input"], &[], "An OpenAI Responses request."),
            "OpenAiError",
        ),
        (
            "/v1/embeddings",
            "post",
            bearer.clone(),
            body(
                &["model", "input"],
                &[],
                "An OpenAI embeddings request; unknown fields (`dimensions`, `encoding_format`, …) are forwarded.",
            ),
            "OpenAiError",
        ),
        (
            "/v1/models",
            "get",
            json!([{"GatewayBearer": []}, {"GatewayApiKey": []}]),
            none.clone(),
            "OpenAiError",
        ),
        (
            "/v1/models/{model_id}",
            "get",
            json!([{"GatewayBearer": []}, {"GatewayApiKey": []}]),
            none.clone(),
            "OpenAiError",
        ),
        ("/v1/responses", "get", json!([]), none, "OpenAiError"),
    ];
    for (path, method, security, request_body, error) in ops {
        let op = &mut doc["paths"][path][method];
        if !op.is_object() {
            continue;
        }
        op["security"] = security;
        if !request_body.is_null() {
            op["requestBody"] = request_body;
        }
        if let Some(responses) = op["responses"].as_object_mut() {
            for (status, r) in responses.iter_mut() {
                if status.starts_with('2') {
                    continue;
                }
                if let Some(media) = r.pointer_mut("/content/application~1json") {
                    media["schema"] = json!({"$ref": format!("#/components/schemas/{error}")});
                }
            }
        }
    }
    // The audit export's `type` filter takes audit event types only (anything else is a 400).
    if let Some(params) = doc
        .pointer_mut("/paths/~1admin~1v1~1audit/get/parameters")
        .and_then(serde_json::Value::as_array_mut)
    {
        for p in params.iter_mut().filter(|p| p["name"] == "type") {
            p["schema"]["items"]["enum"] = json!(metis_domain::audit::AUDIT_TYPES);
        }
    }

    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| spec.to_owned())
}
