//! Google: the Gemini API, Gemini on Vertex AI, Claude on Vertex AI, and the OAuth token
//! endpoint of a service account.
//!
//! - `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent?alt=sse` — the
//!   Gemini API. Requires `x-goog-api-key` = [`DEFAULT_GEMINI_KEY`]; a missing key gets the
//!   real 403 `PERMISSION_DENIED`, a wrong one the real 400 `INVALID_ARGUMENT` with reason
//!   `API_KEY_INVALID` (that is what Google answers, not a 401).
//! - `POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:…` — the same two
//!   methods on Vertex AI. Requires `Authorization: Bearer T` where T was minted by this
//!   fake's token endpoint; else the real 401 `UNAUTHENTICATED`.
//! - `POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/{model}:rawPredict` and
//!   `:streamRawPredict` — Claude on Vertex: same bearer check; the body must carry
//!   `"anthropic_version": "vertex-2023-10-16"` and no `model` (real 400s otherwise); then it is
//!   answered exactly as the Anthropic Messages path answers, SSE included.
//! - `POST /token` — the OAuth 2.0 JWT-bearer grant (RFC 7523): the assertion's RS256
//!   signature is verified with the public key of [`google_service_account_json`]'s account,
//!   and `iss`, `aud` (this URL), `scope` and `exp` are checked; a valid one is answered with a
//!   fresh `access_token`, anything else with the real `invalid_grant` 400.
//! - `GET /_google/credentials` — the test service account's key file (for the Python tests).
//!
//! The same directives as the other wires script the answer (see `Directives`): `[tool:NAME]`
//! answers with a `functionCall`, `[think]` with a thought part first, `[status:CODE]` with
//! Google's real error body for that code, `[cut]` drops the stream. A conversation ending in
//! `functionResponse` parts is answered `tool result: <their responses>`. Tool calls carry no
//! id, as on the real Gemini API; results are checked to name a declared function.

use super::anthropic::anthropic;
use super::convo::{Convo, Plan, StreamEnd, out_tokens, plan, split_deltas};
use super::reply::{Frame, json_response, sse_data, sse_response};
use super::server::{Ctx, State, lock};
use super::{AuthCheck, CACHE_READ_TOKENS, THINKING_TEXT, TOOL_ARGUMENTS};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    KeyPair as _, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use poem::http::{HeaderValue, StatusCode, header};
use poem::{Request, Response};
use serde_json::{Value, json};
use std::sync::OnceLock;

/// Key the fake expects on `x-goog-api-key`.
pub const DEFAULT_GEMINI_KEY: &str = "fake-gemini-key";
/// `client_email` of the test service account.
pub const TEST_SERVICE_ACCOUNT_EMAIL: &str =
    "metis-test@metis-test-project.iam.gserviceaccount.com";
/// `project_id` of the test service account.
pub const TEST_GOOGLE_PROJECT: &str = "metis-test-project";
/// The body field Claude on Vertex requires.
pub const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";
/// Lifetime of the tokens the fake mints.
const TOKEN_LIFETIME_SECS: u64 = 3599;

/// Which Google operation a path reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Gemini (`vertex` says which service), streamed or not, for `model`.
    Gemini { vertex: bool, stream: bool },
    /// Claude on Vertex.
    Claude { stream: bool },
    /// The OAuth token endpoint.
    Token,
}

/// The Google route of a POST path, with the model id from the URL.
pub(super) fn route(path: &str) -> Option<(Route, String)> {
    if path == "/token" {
        return Some((Route::Token, String::new()));
    }
    let (prefix, rest) = if let Some(rest) = path.strip_prefix("/v1beta/models/") {
        ("gemini", rest)
    } else if path.starts_with("/v1/projects/") {
        let (_, rest) = path.split_once("/publishers/")?;
        let (publisher, rest) = rest.split_once("/models/")?;
        (publisher, rest)
    } else {
        return None;
    };
    let (model, method) = rest.rsplit_once(':')?;
    let model = percent_decode(model);
    let r = match (prefix, method) {
        ("gemini", "generateContent") => Route::Gemini {
            vertex: false,
            stream: false,
        },
        ("gemini", "streamGenerateContent") => Route::Gemini {
            vertex: false,
            stream: true,
        },
        ("google", "generateContent") => Route::Gemini {
            vertex: true,
            stream: false,
        },
        ("google", "streamGenerateContent") => Route::Gemini {
            vertex: true,
            stream: true,
        },
        ("anthropic", "rawPredict") => Route::Claude { stream: false },
        ("anthropic", "streamRawPredict") => Route::Claude { stream: true },
        _ => return None,
    };
    Some((r, model))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The test service account
// ---------------------------------------------------------------------------------------------

/// TEST KEY ONLY: an RSA key generated once per process for the fake token endpoint; it
/// signs nothing outside the tests.
struct TestKey {
    pkcs8_pem: String,
    public: Vec<u8>,
}

fn test_key() -> Option<&'static TestKey> {
    static KEY: OnceLock<Option<TestKey>> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).ok()?;
        let der: Pkcs8V1Der<'_> = pair.as_der().ok()?;
        let b64 = STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Some(TestKey {
            pkcs8_pem: pem,
            public: pair.public_key().as_ref().to_vec(),
        })
    })
    .as_ref()
}

/// The JSON key file of the test service account, with `token_uri` (the fake's `/token`).
#[must_use]
pub fn google_service_account_json(token_uri: &str) -> String {
    let pem = test_key().map(|k| k.pkcs8_pem.clone()).unwrap_or_default();
    json!({
        "type": "service_account",
        "project_id": TEST_GOOGLE_PROJECT,
        "private_key_id": "metis-test-key-1",
        "private_key": pem,
        "client_email": TEST_SERVICE_ACCOUNT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

/// A key file of the same account with ANOTHER private key (what a revoked or mistyped key
/// looks like to the token endpoint: a signature that does not verify).
#[must_use]
pub fn google_wrong_key_json(token_uri: &str) -> String {
    let pem = RsaKeyPair::generate(KeySize::Rsa2048)
        .ok()
        .and_then(|p| {
            AsDer::<Pkcs8V1Der<'_>>::as_der(&p)
                .ok()
                .map(|d| STANDARD.encode(d.as_ref()))
        })
        .map(|b64| format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"))
        .unwrap_or_default();
    let mut v: Value =
        serde_json::from_str(&google_service_account_json(token_uri)).unwrap_or(Value::Null);
    v["private_key"] = Value::String(pem);
    v.to_string()
}

// ---------------------------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------------------------

/// Which credential header a Google path is checked on.
pub(super) fn checked_header(req: &Request) -> &'static str {
    if req.headers().contains_key("x-goog-api-key") {
        "x-goog-api-key"
    } else {
        "authorization"
    }
}

/// The credential check of a Google path: the API key on `/v1beta`, a minted bearer token on
/// `/v1/projects`; `/token` is checked by signature instead (reported as matched here).
pub(super) fn check_auth(state: &State, req: &Request) -> AuthCheck {
    let path = req.uri().path();
    if path == "/token" || path == "/_google/credentials" {
        return AuthCheck::Matched;
    }
    let presented = if path.starts_with("/v1beta/") {
        req.headers()
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    } else {
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
    };
    match presented {
        None => AuthCheck::Missing,
        Some(p) if p.is_empty() => AuthCheck::Missing,
        Some(p) if path.starts_with("/v1beta/") && p == state.gemini_key => AuthCheck::Matched,
        Some(p) if !path.starts_with("/v1beta/") && lock(&state.google_tokens).contains(&p) => {
            AuthCheck::Matched
        }
        Some(_) => AuthCheck::Mismatched,
    }
}

/// Google's error envelope.
fn google_error(code: u16, status: &str, message: &str, details: Option<Value>) -> Response {
    let mut err = json!({"code": code, "message": message, "status": status});
    if let Some(d) = details {
        err["details"] = d;
    }
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &json!({ "error": err }),
    )
}

/// The real error body Google sends for `code`.
fn google_status_error(code: u16) -> Response {
    let (status, message) = match code {
        400 => ("INVALID_ARGUMENT", "Request contains an invalid argument."),
        401 => (
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        ),
        403 => ("PERMISSION_DENIED", "The caller does not have permission"),
        404 => ("NOT_FOUND", "Requested entity was not found."),
        429 => (
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
        ),
        503 => (
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        ),
        504 => (
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
        ),
        _ => (
            "INTERNAL",
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        ),
    };
    google_error(code, status, message, None)
}

fn auth_error(vertex: bool, auth: AuthCheck) -> Option<Response> {
    match (vertex, auth) {
        (_, AuthCheck::Matched) => None,
        (true, _) => Some(google_status_error(401)),
        (false, AuthCheck::Missing) => Some(google_error(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            None,
        )),
        (false, AuthCheck::Mismatched) => Some(google_error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            Some(json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}
            }])),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

/// Answer a Google route.
pub(super) async fn serve(
    ctx: &Ctx,
    mut req: Request,
    route: Route,
    model: String,
    auth: AuthCheck,
    raw: &[u8],
    body: Option<Value>,
) -> Response {
    match route {
        Route::Token => token(&ctx.state, &req, raw),
        Route::Claude { .. } => {
            if let Some(resp) = auth_error(true, auth) {
                return resp;
            }
            let Some(mut body) = body else {
                return google_status_error(400);
            };
            if body.get("anthropic_version").and_then(Value::as_str)
                != Some(VERTEX_ANTHROPIC_VERSION)
            {
                return anthropic_400("anthropic_version: Field required");
            }
            if body.get("model").is_some() {
                return anthropic_400("model: Extra inputs are not permitted");
            }
            if let Some(obj) = body.as_object_mut() {
                obj.remove("anthropic_version");
                obj.insert("model".into(), Value::String(model));
            }
            // Vertex takes the version in the body; the Messages handler wants the header.
            req.headers_mut()
                .insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
            anthropic(ctx, &req, AuthCheck::Matched, Some(body)).await
        }
        Route::Gemini { vertex, stream } => {
            if let Some(resp) = auth_error(vertex, auth) {
                return resp;
            }
            if stream && req.uri().query() != Some("alt=sse") {
                return google_error(
                    400,
                    "INVALID_ARGUMENT",
                    "this fake serves streamGenerateContent with alt=sse only",
                    None,
                );
            }
            let Some(body) = body else {
                return google_error(
                    400,
                    "INVALID_ARGUMENT",
                    "Invalid JSON payload received.",
                    None,
                );
            };
            if let Err(msg) = validate(&body) {
                return google_error(400, "INVALID_ARGUMENT", &msg, None);
            }
            generate(ctx, &body, &model, stream).await
        }
    }
}

fn anthropic_400(message: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
    )
}

/// What the real API rejects and a translating gateway is likely to get wrong.
fn validate(body: &Value) -> Result<(), String> {
    if body.get("model").is_some() {
        return Err(
            "Invalid JSON payload received. Unknown name \"model\": Cannot find field.".to_owned(),
        );
    }
    let Some(contents) = body.get("contents").and_then(Value::as_array) else {
        return Err("* GenerateContentRequest.contents: contents is not specified".to_owned());
    };
    let declared: Vec<&str> = body
        .pointer("/tools/0/functionDeclarations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("name").and_then(Value::as_str))
        .collect();
    for (i, c) in contents.iter().enumerate() {
        match c.get("role").and_then(Value::as_str) {
            Some("user" | "model") | None => {}
            Some(other) => {
                return Err(format!(
                    "Please use a valid role: user, model. (contents[{i}].role = {other})"
                ));
            }
        }
        let parts = c.get("parts").and_then(Value::as_array);
        if parts.is_none_or(Vec::is_empty) {
            return Err(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            ));
        }
        for p in parts.into_iter().flatten() {
            for key in ["functionCall", "functionResponse"] {
                if let Some(name) = p.get(key).map(|f| f.get("name").and_then(Value::as_str)) {
                    match name {
                        Some(n) if declared.contains(&n) => {}
                        _ => {
                            return Err(format!(
                                "* GenerateContentRequest.contents[{i}]: {key} names no declared function"
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn text_parts(content: &Value) -> String {
    content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

fn gemini_convo(body: &Value, model: &str, stream: bool) -> Convo {
    let contents = body
        .get("contents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let last_user_text = contents
        .iter()
        .rev()
        .filter(|c| c.get("role").and_then(Value::as_str) != Some("model"))
        .map(text_parts)
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    let trailing_tool_results = contents.last().and_then(|c| {
        let results: Vec<String> = c
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.pointer("/functionResponse/response"))
            .map(|r| match r.get("result").and_then(Value::as_str) {
                Some(s) => s.to_owned(),
                None => r.to_string(),
            })
            .collect();
        (!results.is_empty()).then(|| results.join("\n"))
    });
    let size = ["contents", "systemInstruction"]
        .iter()
        .map(|k| body.get(*k).map_or(0, |v| v.to_string().len()))
        .sum::<usize>();
    Convo {
        model: model.to_owned(),
        stream,
        include_usage: true,
        last_user_text,
        trailing_tool_results,
        input_tokens: u64::try_from(size / 4).unwrap_or(u64::MAX).max(1),
    }
}

async fn generate(ctx: &Ctx, body: &Value, model: &str, stream: bool) -> Response {
    let convo = gemini_convo(body, model, stream);
    let script = match plan(ctx, &convo).await {
        Plan::Error(code) => return google_status_error(code),
        Plan::Overflow => {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
                None,
            );
        }
        Plan::Garbage => {
            return Response::builder()
                .status(StatusCode::OK)
                .content_type("application/json")
                .body("<html>not json</html>");
        }
        Plan::Reply(s) => s,
    };
    // Thought parts only when asked ([think]) and the request enabled thoughts.
    let think = convo.trailing_tool_results.is_none()
        && super::Directives::parse(&convo.last_user_text).think;
    let cached = if script.cache { CACHE_READ_TOKENS } else { 0 };
    let thoughts = if think { out_tokens(THINKING_TEXT) } else { 0 };
    let usage = |done: bool| {
        let mut u = json!({
            "promptTokenCount": script.input_tokens + cached,
            "totalTokenCount": script.input_tokens + cached + if done { script.output_tokens + thoughts } else { 0 },
        });
        if done {
            u["candidatesTokenCount"] = json!(script.output_tokens);
        }
        if thoughts > 0 && done {
            u["thoughtsTokenCount"] = json!(thoughts);
        }
        if cached > 0 {
            u["cachedContentTokenCount"] = json!(cached);
        }
        u
    };
    let finish = if script.truncated {
        "MAX_TOKENS"
    } else {
        "STOP"
    };
    let response_id = ctx.state.rand_id(22);
    let call = script.tool.as_ref().map(|name| {
        json!({"functionCall": {"name": name, "args": serde_json::from_str::<Value>(TOOL_ARGUMENTS).unwrap_or(Value::Null)}})
    });
    if !stream {
        let mut parts = Vec::new();
        if think {
            parts.push(json!({"text": THINKING_TEXT, "thought": true}));
        }
        if let Some(t) = &script.text {
            parts.push(json!({"text": t}));
        }
        if let Some(c) = call {
            parts.push(c);
        }
        let body = json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
            "usageMetadata": usage(true),
            "modelVersion": model,
            "responseId": response_id,
        });
        return json_response(StatusCode::OK, &body);
    }
    let chunk = |parts: Vec<Value>, last: bool| {
        let mut cand = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if last {
            cand["finishReason"] = json!(finish);
        }
        json!({
            "candidates": [cand],
            "usageMetadata": usage(last),
            "modelVersion": model,
            "responseId": response_id,
        })
    };
    let mut frames = Vec::new();
    if think {
        frames.push(sse_data(
            &chunk(vec![json!({"text": THINKING_TEXT, "thought": true})], false).to_string(),
        ));
    }
    let mut pieces: Vec<Value> = script
        .text
        .as_deref()
        .map(split_deltas)
        .unwrap_or_default()
        .into_iter()
        .map(|t| json!({"text": t}))
        .collect();
    pieces.extend(call);
    let last = pieces.pop();
    for (i, p) in pieces.into_iter().enumerate() {
        frames.push(sse_data(&chunk(vec![p], false).to_string()));
        if i == 0
            && let Some(d) = script.pause
        {
            frames.push(Frame::Pause(d));
        }
    }
    match script.end {
        StreamEnd::Cut => frames.push(Frame::Abort),
        StreamEnd::ProviderError => frames.push(sse_data(
            &json!({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}).to_string(),
        )),
        StreamEnd::Garbage => frames.push(Frame::Data(Bytes::from_static(b"data: {not json\n\n"))),
        StreamEnd::Normal => {
            frames.push(sse_data(
                &chunk(last.into_iter().collect(), true).to_string(),
            ));
        }
    }
    sse_response(ctx, frames, script.wire)
}

// ---------------------------------------------------------------------------------------------
// Token endpoint
// ---------------------------------------------------------------------------------------------

fn invalid_grant(description: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"error": "invalid_grant", "error_description": description}),
    )
}

fn form_value<'a>(form: &'a str, key: &str) -> Option<&'a str> {
    form.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn token(state: &State, req: &Request, raw: &[u8]) -> Response {
    let form = String::from_utf8_lossy(raw);
    if form_value(&form, "grant_type")
        != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
    {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}),
        );
    }
    let Some(jwt) = form_value(&form, "assertion") else {
        return invalid_grant("Missing required parameter: assertion");
    };
    let mut segs = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) = (segs.next(), segs.next(), segs.next(), segs.next())
    else {
        return invalid_grant(
            "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe.",
        );
    };
    let Some(key) = test_key() else {
        return invalid_grant("the fake has no test key");
    };
    let sig = URL_SAFE_NO_PAD.decode(s).unwrap_or_default();
    let signed = format!("{h}.{c}");
    if UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key.public)
        .verify(signed.as_bytes(), &sig)
        .is_err()
    {
        return invalid_grant("Invalid JWT Signature.");
    }
    let header: Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let claims: Value = URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let now = super::server::unix_now();
    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    let iat = claims.get("iat").and_then(Value::as_u64).unwrap_or(0);
    if header.get("alg").and_then(Value::as_str) != Some("RS256")
        || claims.get("iss").and_then(Value::as_str) != Some(TEST_SERVICE_ACCOUNT_EMAIL)
        || claims.get("aud").and_then(Value::as_str) != Some(&format!("http://{host}/token"))
        || claims.get("scope").and_then(Value::as_str)
            != Some("https://www.googleapis.com/auth/cloud-platform")
    {
        return invalid_grant("Invalid JWT: claims do not match the service account.");
    }
    if exp <= now || iat > now + 60 || exp - iat > 3600 {
        return invalid_grant(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    let token = format!("ya29.fake-{}", state.rand_id(40));
    lock(&state.google_tokens).insert(token.clone());
    json_response(
        StatusCode::OK,
        &json!({"access_token": token, "expires_in": TOKEN_LIFETIME_SECS, "token_type": "Bearer"}),
    )
}
