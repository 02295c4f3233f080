//! The fake upstream's non-generating endpoints: Anthropic `POST /v1/messages/count_tokens`,
//! OpenAI `POST /v1/embeddings`, and `GET /v1/models[/{id}]` in both providers' shapes.

use super::AuthCheck;
use super::anthropic::{
    anthropic_error, anthropic_error_message, anthropic_error_type, anthropic_preflight,
    anthropic_unparsable, validate_anthropic_body,
};
use super::convo::{anthropic_convo, estimate_input_tokens, out_tokens, status_directive};
use super::openai::{openai_auth_error, openai_error, openai_status_error, openai_unparsable};
use super::reply::{json_response, with_header};
use super::responses::{Invalid, invalid_value};
use super::server::{Ctx, splitmix64};
use poem::http::StatusCode;
use poem::{Request, Response};
use serde_json::{Value, json};

/// The Anthropic models `GET /v1/models` lists (id, display name, creation time), newest
/// first. `GET /v1/models/{id}` also takes an id without its date suffix
/// (`claude-haiku-4-5`), answering with the dated one, as the real API resolves aliases.
pub const ANTHROPIC_MODELS: [(&str, &str, &str); 3] = [
    (
        "claude-haiku-4-5-20251001",
        "Claude Haiku 4.5",
        "2025-10-15T00:00:00Z",
    ),
    (
        "claude-sonnet-4-5-20250929",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
    ),
    (
        "claude-opus-4-1-20250805",
        "Claude Opus 4.1",
        "2025-08-05T00:00:00Z",
    ),
];

/// The OpenAI models `GET /v1/models` lists (id, `created`, `owned_by`).
pub const OPENAI_MODELS: [(&str, u64, &str); 6] = [
    ("gpt-5", 1_754_425_777, "system"),
    ("gpt-5-mini", 1_754_425_928, "system"),
    ("gpt-4o", 1_715_367_049, "system"),
    ("text-embedding-3-small", 1_705_948_997, "system"),
    ("text-embedding-3-large", 1_705_953_180, "system"),
    ("text-embedding-ada-002", 1_671_217_299, "openai-internal"),
];

/// Length of an embedding from any model but `text-embedding-3-large` (3072), unless the
/// request's `dimensions` shortens it.
pub const EMBEDDING_DIMENSIONS: usize = 1536;

/// Largest number of inputs one embeddings request may carry (the real limit).
const MAX_EMBEDDING_INPUTS: usize = 2048;

// ---------------------------------------------------------------------------------------------
// Anthropic count_tokens
// ---------------------------------------------------------------------------------------------

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}` with N = [`estimate_input_tokens`]
/// of the body. Authenticated and validated like `POST /v1/messages` except that `max_tokens`
/// is not required; honours `[status:CODE]` and `[slow:MS]`.
///
/// [`estimate_input_tokens`]: super::estimate_input_tokens
pub(super) async fn count_tokens(
    ctx: &Ctx,
    req: &Request,
    auth: AuthCheck,
    body: Option<Value>,
) -> Response {
    if let Some(resp) = anthropic_preflight(ctx, req, auth) {
        return resp;
    }
    let Some(body) = body else {
        return anthropic_unparsable(ctx);
    };
    if let Err(msg) = validate_anthropic_body(&body, false) {
        return anthropic_error(ctx, 400, "invalid_request_error", &msg);
    }
    let convo = anthropic_convo(&body);
    if convo.trailing_tool_results.is_none()
        && let Some(code) = status_directive(&convo.last_user_text).await
    {
        return anthropic_error(
            ctx,
            code,
            anthropic_error_type(code),
            anthropic_error_message(code),
        );
    }
    with_header(
        json_response(
            StatusCode::OK,
            &json!({"input_tokens": estimate_input_tokens(&body)}),
        ),
        "request-id",
        &format!("req_011C{}", ctx.state.rand_id(20)),
    )
}

// ---------------------------------------------------------------------------------------------
// OpenAI embeddings
// ---------------------------------------------------------------------------------------------

/// The native embedding length of `model`.
#[must_use]
pub fn embedding_dimensions(model: &str) -> usize {
    if model == "text-embedding-3-large" {
        3072
    } else {
        EMBEDDING_DIMENSIONS
    }
}

/// The embedding the fake returns for a text input: a unit vector derived from the text
/// alone, `model`'s native length, shortened to `dimensions` (when given) and normalised
/// again, as the real API shortens.
#[must_use]
pub fn embedding_vector(text: &str, model: &str, dimensions: Option<usize>) -> Vec<f32> {
    vector_from_seed(text.as_bytes(), embedding_dimensions(model), dimensions)
}

/// The embedding the fake returns for a token-array input: as [`embedding_vector`] of the
/// text `tokens:` followed by the ids joined by `,` (`tokens:1,2,3`).
#[must_use]
pub fn token_embedding_vector(tokens: &[u64], model: &str, dimensions: Option<usize>) -> Vec<f32> {
    let ids: Vec<String> = tokens.iter().map(u64::to_string).collect();
    embedding_vector(&format!("tokens:{}", ids.join(",")), model, dimensions)
}

fn vector_from_seed(seed: &[u8], native: usize, dimensions: Option<usize>) -> Vec<f32> {
    // FNV-1a of the seed, then one splitmix64 step per component: stable across runs and
    // platforms, different for every input.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let len = dimensions.unwrap_or(native).min(native);
    let raw: Vec<f64> = (0..len)
        .map(|i| {
            let x = splitmix64(h ^ u64::try_from(i).unwrap_or(0).wrapping_mul(0x9E37_79B9));
            // The top 24 bits as a uniform value in [-1, 1).
            let unit = f64::from(u32::try_from(x >> 40).unwrap_or(0)) / f64::from(1u32 << 24);
            unit * 2.0 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    // Embeddings are f32 on the wire (the base64 encoding is of f32).
    raw.iter().map(|v| (v / norm) as f32).collect()
}

enum EmbeddingInput {
    Text(String),
    Tokens(Vec<u64>),
}

impl EmbeddingInput {
    fn tokens(&self) -> u64 {
        match self {
            EmbeddingInput::Text(t) => out_tokens(t),
            EmbeddingInput::Tokens(ids) => u64::try_from(ids.len()).unwrap_or(u64::MAX),
        }
    }

    fn vector(&self, model: &str, dimensions: Option<usize>) -> Vec<f32> {
        match self {
            EmbeddingInput::Text(t) => embedding_vector(t, model, dimensions),
            EmbeddingInput::Tokens(ids) => token_embedding_vector(ids, model, dimensions),
        }
    }
}

fn invalid_input() -> Invalid {
    Invalid::new(
        "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        None,
        None,
    )
}

fn token_array(v: &Value) -> Option<Vec<u64>> {
    let arr = v.as_array()?;
    if arr.is_empty() {
        return None;
    }
    arr.iter().map(Value::as_u64).collect()
}

/// The inputs of an embeddings request: a string, an array of strings, an array of token
/// ids, or an array of token arrays; none empty.
fn embedding_inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput>, Invalid> {
    match input {
        None | Some(Value::Null) => Err(Invalid::missing("input".to_owned())),
        Some(Value::String(s)) if !s.is_empty() => Ok(vec![EmbeddingInput::Text(s.clone())]),
        Some(Value::Array(items)) => {
            if items.len() > MAX_EMBEDDING_INPUTS {
                return Err(Invalid::new(
                    format!(
                        "Invalid 'input': array too long. Expected an array with maximum length {MAX_EMBEDDING_INPUTS}, but got an array with length {} instead.",
                        items.len()
                    ),
                    Some("input".to_owned()),
                    Some("array_above_max_length"),
                ));
            }
            if let Some(ids) = token_array(&Value::Array(items.clone())) {
                return Ok(vec![EmbeddingInput::Tokens(ids)]);
            }
            if items.is_empty() {
                return Err(invalid_input());
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) if !s.is_empty() => Ok(EmbeddingInput::Text(s.clone())),
                    other => token_array(other)
                        .map(EmbeddingInput::Tokens)
                        .ok_or_else(invalid_input),
                })
                .collect()
        }
        Some(_) => Err(invalid_input()),
    }
}

/// The validated `dimensions` of an embeddings request for `model`.
fn embedding_request_dimensions(model: &str, v: Option<&Value>) -> Result<Option<usize>, Invalid> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    if model == "text-embedding-ada-002" {
        return Err(Invalid::new(
            "This model does not support specifying dimensions.",
            None,
            None,
        ));
    }
    let Some(n) = v.as_i64() else {
        return Err(Invalid::wrong_type(
            "dimensions".to_owned(),
            "an integer",
            v,
        ));
    };
    if n < 1 {
        return Err(Invalid::new(
            format!(
                "Invalid 'dimensions': integer below minimum value. Expected a value >= 1, but got {n} instead."
            ),
            Some("dimensions".to_owned()),
            Some("integer_below_min_value"),
        ));
    }
    let native = embedding_dimensions(model);
    match usize::try_from(n) {
        Ok(d) if d <= native => Ok(Some(d)),
        _ => Err(Invalid::new(
            format!(
                "Invalid 'dimensions': integer above maximum value. Expected a value <= {native}, but got {n} instead."
            ),
            Some("dimensions".to_owned()),
            Some("integer_above_max_value"),
        )),
    }
}

/// Little-endian f32 bytes in standard base64, as the real API encodes `encoding_format:
/// "base64"` embeddings.
fn base64_f32(values: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                let idx = usize::try_from((n >> (18 - 6 * k)) & 63).unwrap_or(0);
                out.push(char::from(ALPHABET[idx]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `POST /v1/embeddings`: deterministic unit vectors ([`embedding_vector`]), `usage` counting
/// each text input as [`out_tokens`] of it and each token array as its length. Honours
/// `[status:CODE]` and `[slow:MS]` in the first text input.
///
/// [`out_tokens`]: super::out_tokens
pub(super) async fn embeddings(ctx: &Ctx, auth: AuthCheck, body: Option<Value>) -> Response {
    if let Some(resp) = openai_auth_error(ctx, auth) {
        return resp;
    }
    let Some(body) = body else {
        return openai_unparsable();
    };
    let model = match body.get("model") {
        Some(Value::String(m)) => m.clone(),
        None | Some(Value::Null) => return Invalid::missing("model".to_owned()).response(),
        Some(other) => {
            return Invalid::wrong_type("model".to_owned(), "a string", other).response();
        }
    };
    let inputs = match embedding_inputs(body.get("input")) {
        Ok(inputs) => inputs,
        Err(invalid) => return invalid.response(),
    };
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            let got = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return invalid_value("encoding_format".to_owned(), &got, &["float", "base64"])
                .response();
        }
    };
    let dimensions = match embedding_request_dimensions(&model, body.get("dimensions")) {
        Ok(d) => d,
        Err(invalid) => return invalid.response(),
    };
    let first_text = inputs.iter().find_map(|i| match i {
        EmbeddingInput::Text(t) => Some(t.as_str()),
        EmbeddingInput::Tokens(_) => None,
    });
    if let Some(text) = first_text
        && let Some(code) = status_directive(text).await
    {
        return openai_status_error(ctx, code, &model);
    }
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = input.vector(&model, dimensions);
            let embedding = if base64 {
                json!(base64_f32(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: u64 = inputs.iter().map(EmbeddingInput::tokens).sum();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    with_header(
        json_response(StatusCode::OK, &body),
        "x-request-id",
        &format!("req_{}", ctx.state.rand_hex(32)),
    )
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

fn anthropic_model(entry: (&str, &str, &str)) -> Value {
    let (id, name, created) = entry;
    json!({"type": "model", "id": id, "display_name": name, "created_at": created})
}

/// A query parameter's raw value.
fn query_param<'a>(req: &'a Request, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `GET /v1/models[/{id}]` with Anthropic credentials: the real list (with `limit`,
/// `after_id`, `before_id` paging) and retrieve shapes. `path` has no `/v1` prefix.
pub(super) fn anthropic_models(ctx: &Ctx, req: &Request, auth: AuthCheck, path: &str) -> Response {
    if let Some(resp) = anthropic_preflight(ctx, req, auth) {
        return resp;
    }
    let request_id = format!("req_011C{}", ctx.state.rand_id(20));
    if let Some(id) = path.strip_prefix("/models/") {
        let found = ANTHROPIC_MODELS
            .iter()
            .find(|(mid, _, _)| *mid == id || strip_date(mid) == id);
        return match found {
            Some(entry) => with_header(
                json_response(StatusCode::OK, &anthropic_model(*entry)),
                "request-id",
                &request_id,
            ),
            None => anthropic_error(ctx, 404, "not_found_error", &format!("model: {id}")),
        };
    }
    let limit = match query_param(req, "limit").map(str::parse::<i64>) {
        None => 20,
        Some(Ok(n)) if n < 1 => {
            return anthropic_error(
                ctx,
                400,
                "invalid_request_error",
                "limit: Input should be greater than or equal to 1",
            );
        }
        Some(Ok(n)) if n > 1000 => {
            return anthropic_error(
                ctx,
                400,
                "invalid_request_error",
                "limit: Input should be less than or equal to 1000",
            );
        }
        Some(Ok(n)) => usize::try_from(n).unwrap_or(20),
        Some(Err(_)) => {
            return anthropic_error(
                ctx,
                400,
                "invalid_request_error",
                "limit: Input should be a valid integer, unable to parse string as an integer",
            );
        }
    };
    let all = &ANTHROPIC_MODELS;
    let position = |id: &str| all.iter().position(|(mid, _, _)| *mid == id);
    // The page and whether more models lie beyond it in the paging direction; an unknown
    // cursor yields an empty page.
    let (page, has_more): (&[(&str, &str, &str)], bool) =
        match (query_param(req, "after_id"), query_param(req, "before_id")) {
            (Some(after), _) => position(after).map_or((&[], false), |p| {
                let rest = all.get(p + 1..).unwrap_or_default();
                (rest.get(..limit).unwrap_or(rest), rest.len() > limit)
            }),
            (None, Some(before)) => position(before).map_or((&[], false), |p| {
                let from = p.saturating_sub(limit);
                (all.get(from..p).unwrap_or_default(), from > 0)
            }),
            (None, None) => (all.get(..limit).unwrap_or(all), all.len() > limit),
        };
    let body = json!({
        "data": page.iter().map(|e| anthropic_model(*e)).collect::<Vec<_>>(),
        "has_more": has_more,
        "first_id": page.first().map(|(id, _, _)| *id),
        "last_id": page.last().map(|(id, _, _)| *id),
    });
    with_header(
        json_response(StatusCode::OK, &body),
        "request-id",
        &request_id,
    )
}

/// `claude-haiku-4-5-20251001` → `claude-haiku-4-5`.
fn strip_date(id: &str) -> &str {
    match id.rsplit_once('-') {
        Some((base, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => id,
    }
}

/// `GET /v1/models[/{id}]` with a Bearer key: the real OpenAI list and retrieve shapes.
/// `path` has no `/v1` prefix.
pub(super) fn openai_models(ctx: &Ctx, auth: AuthCheck, path: &str) -> Response {
    if let Some(resp) = openai_auth_error(ctx, auth) {
        return resp;
    }
    let model = |(id, created, owner): (&str, u64, &str)| json!({"id": id, "object": "model", "created": created, "owned_by": owner});
    if let Some(id) = path.strip_prefix("/models/") {
        return match OPENAI_MODELS.iter().find(|(mid, _, _)| *mid == id) {
            Some(entry) => json_response(StatusCode::OK, &model(*entry)),
            None => openai_error(
                StatusCode::NOT_FOUND,
                &format!("The model '{id}' does not exist"),
                "invalid_request_error",
                Some("model"),
                Some("model_not_found"),
            ),
        };
    }
    let data: Vec<Value> = OPENAI_MODELS.iter().map(|e| model(*e)).collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}
