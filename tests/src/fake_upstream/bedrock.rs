//! Amazon Bedrock Converse (`POST /model/{id}/converse`, `/model/{id}/converse-stream`) and a
//! minimal STS (`POST /_sts/`, `AssumeRoleWithWebIdentity`), as the real services speak them.
//!
//! - Both also answer under `/v1` (`/v1/model/…`, `/v1/_sts/`), so a test config can point a
//!   Bedrock provider at the fake's OpenAI base URL.
//! - Every Converse request must carry a valid SigV4 signature (service `bedrock`): the fake
//!   recomputes it from the request it received with the test credentials
//!   ([`BEDROCK_ACCESS_KEY_ID`] / [`BEDROCK_SECRET_ACCESS_KEY`], or the STS-issued
//!   [`STS_ACCESS_KEY_ID`] / [`STS_SECRET_ACCESS_KEY`] with [`STS_SESSION_TOKEN`] on
//!   `x-amz-security-token`), its own SigV4 code independent of the gateway's. An unknown key
//!   answers AWS's `UnrecognizedClientException`, a wrong signature
//!   `InvalidSignatureException` (both 403, `x-amzn-ErrorType` set, `{"message"}` body).
//! - Errors use Bedrock's bodies and statuses: `[status:429]` → `ThrottlingException`,
//!   `[status:500]` → `InternalServerException`, … Requests a translating gateway could get
//!   wrong are refused with `ValidationException` as Bedrock does: a `model` or `stream` key
//!   in the body, roles that do not alternate, tool blocks without `toolConfig`, a
//!   `toolResult` whose id no preceding `toolUse` has.
//! - Streams are the binary `application/vnd.amazon.eventstream` framing (prelude, CRC32s,
//!   string headers `:event-type`/`:content-type`/`:message-type`), with the real event
//!   sequence: `messageStart`, text as `contentBlockDelta` without a start event, tool calls
//!   as `contentBlockStart` + `toolUse.input` deltas, `contentBlockStop`, `messageStop`, then
//!   `metadata` with usage. Payloads carry the `p` padding field the service adds.
//!   `[stream-error]` ends a stream with a `modelStreamErrorException` exception message.
//! - STS checks the web identity token ([`WEB_IDENTITY_TOKEN`]) and answers the XML
//!   `AssumeRoleWithWebIdentityResponse`, or `InvalidIdentityToken`.

use super::convo::{
    Convo, Plan, Script, StreamEnd, estimate_input_tokens, plan, split_arguments, split_deltas,
};
use super::reply::{Frame, json_response, sse_response, with_header};
use super::server::Ctx;
use super::{CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, TOOL_ARGUMENTS};
use aws_lc_rs::{digest, hmac};
use bytes::Bytes;
use poem::http::StatusCode;
use poem::{Request, Response};
use serde_json::{Value, json};

/// Static test credentials the fake accepts.
pub const BEDROCK_ACCESS_KEY_ID: &str = "AKIAFAKEBEDROCK00001";
pub const BEDROCK_SECRET_ACCESS_KEY: &str = "fake/bedrock+secret/0123456789abcdefghij";
/// The web identity token the fake STS accepts.
pub const WEB_IDENTITY_TOKEN: &str = "fake-web-identity-token.eyJzdWIiOiJzeXN0ZW06c2EifQ";
/// Credentials the fake STS issues (and Converse then accepts, with the session token).
pub const STS_ACCESS_KEY_ID: &str = "ASIAFAKESTSISSUED001";
pub const STS_SECRET_ACCESS_KEY: &str = "fake/sts+issued/secret/abcdefghij0123456";
pub const STS_SESSION_TOKEN: &str = "FwoGZXIvYXdzEFakeSessionToken//+==";
/// Message of the 403 for a signature that does not verify (the real wording).
pub const INVALID_SIGNATURE_MESSAGE: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// Why a request's SigV4 did not verify: (error type, message).
type SigError = (&'static str, &'static str);

/// Verify the SigV4 signature of a Converse request.
pub(super) fn verify(req: &Request, body: &[u8]) -> Result<(), SigError> {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let missing = (
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    );
    let auth = header("authorization").ok_or(missing)?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or(missing)?;
    let mut credential = "";
    let mut signed_headers = "";
    let mut signature = "";
    for part in rest.split(", ") {
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = v;
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = v;
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = v;
        }
    }
    let unrecognized = (
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    );
    let invalid = ("InvalidSignatureException", INVALID_SIGNATURE_MESSAGE);
    let mut scope = credential.splitn(2, '/');
    let key_id = scope.next().unwrap_or_default();
    let scope = scope.next().unwrap_or_default();
    let secret = match key_id {
        BEDROCK_ACCESS_KEY_ID => BEDROCK_SECRET_ACCESS_KEY,
        STS_ACCESS_KEY_ID => {
            if header("x-amz-security-token").as_deref() != Some(STS_SESSION_TOKEN) {
                return Err(unrecognized);
            }
            STS_SECRET_ACCESS_KEY
        }
        _ => return Err(unrecognized),
    };
    let parts: Vec<&str> = scope.split('/').collect();
    if parts.len() != 4 || parts[2] != "bedrock" || parts[3] != "aws4_request" {
        return Err(invalid);
    }
    let amz_date = header("x-amz-date").ok_or(invalid)?;
    if !amz_date.starts_with(parts[0]) {
        return Err(invalid);
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    for required in ["host", "x-amz-date", "x-amz-content-sha256"] {
        if !names.contains(&required) {
            return Err(invalid);
        }
    }
    let payload_hash = hex(digest::digest(&digest::SHA256, body).as_ref());
    if header("x-amz-content-sha256").as_deref() != Some(payload_hash.as_str()) {
        return Err(invalid);
    }
    let mut canonical_headers = String::new();
    for n in &names {
        let v = header(n).ok_or(invalid)?;
        canonical_headers.push_str(&format!("{n}:{}\n", v.trim()));
    }
    let canonical = format!(
        "{}\n{}\n\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        req.method().as_str(),
        encode_path(req.uri().path()),
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in [parts[0], parts[1], parts[2], parts[3]] {
        key = mac(&key, part.as_bytes());
    }
    if hex(&mac(&key, to_sign.as_bytes())) == signature {
        Ok(())
    } else {
        Err(invalid)
    }
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&k, data).as_ref().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every byte but the unreserved ones and `/` percent-encoded (the path as received is
/// encoded once more, as SigV4 does for every service but S3).
fn encode_path(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Bedrock error: status, `x-amzn-ErrorType` and `{"message"}`.
pub(super) fn bedrock_error(status: u16, ty: &str, message: &str) -> Response {
    let resp = json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &json!({"message": message}),
    );
    with_header(
        resp,
        "x-amzn-ErrorType",
        &format!("{ty}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
    )
}

fn status_error(status: u16) -> Response {
    let (ty, message) = match status {
        400 => ("ValidationException", "The provided request is not valid"),
        403 => (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        404 => (
            "ResourceNotFoundException",
            "The requested resource was not found.",
        ),
        429 => (
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        503 => (
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        ),
        _ => (
            "InternalServerException",
            "The system encountered an unexpected error during processing. Try your request again.",
        ),
    };
    bedrock_error(status, ty, message)
}

fn validation(message: &str) -> Response {
    bedrock_error(400, "ValidationException", message)
}

/// The model id of a `/model/{id}/converse[-stream]` path, percent-decoded.
fn model_of(path: &str) -> String {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let id = path
        .strip_prefix("/model/")
        .and_then(|p| p.rsplit_once('/'))
        .map_or("", |(id, _)| id);
    let bytes = id.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = id.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(h, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The checks Bedrock makes that a translating gateway is most likely to fail.
fn validate(body: &Value) -> Result<(), String> {
    let Some(obj) = body.as_object() else {
        return Err("Malformed input request, please reformat your input and try again.".into());
    };
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "messages"
                | "system"
                | "inferenceConfig"
                | "toolConfig"
                | "additionalModelRequestFields"
                | "guardrailConfig"
                | "promptVariables"
                | "requestMetadata"
                | "performanceConfig"
        ) {
            return Err(format!(
                "Malformed input request: extraneous key [{key}] is not permitted, please reformat your input and try again."
            ));
        }
    }
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("A conversation must start with a user message. Try again with a conversation that starts with a user message.")?;
    let mut expected = "user";
    let mut uses_tools = false;
    let mut last_tool_ids: Vec<String> = Vec::new();
    for m in messages {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        if role != expected {
            return Err(if expected == "user" && m == &messages[0] {
                "A conversation must start with a user message. Try again with a conversation that starts with a user message.".into()
            } else {
                "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.".into()
            });
        }
        let content = m
            .get("content")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
            .ok_or("The content field in the Message object is empty. Add a ContentBlock object to the content field and try again.")?;
        let mut ids = Vec::new();
        for block in content {
            let Some(b) = block.as_object().filter(|b| b.len() == 1) else {
                return Err(
                    "Malformed input request: a content block must hold exactly one member.".into(),
                );
            };
            if let Some(t) = b.get("text").and_then(Value::as_str)
                && t.is_empty()
            {
                return Err("The text field in the ContentBlock object is blank. Add text to the text field, and try again.".into());
            }
            if let Some(tu) = b.get("toolUse") {
                uses_tools = true;
                ids.push(
                    tu.get("toolUseId")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            if let Some(tr) = b.get("toolResult") {
                uses_tools = true;
                let id = tr
                    .get("toolUseId")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !last_tool_ids.iter().any(|i| i == id) {
                    return Err(format!(
                        "The toolUseId {id} in the toolResult block doesn't match any toolUse block in the previous turn."
                    ));
                }
            }
        }
        last_tool_ids = ids;
        expected = if role == "user" { "assistant" } else { "user" };
    }
    if uses_tools && obj.get("toolConfig").is_none() {
        return Err("The toolConfig field must be defined when using toolUse and toolResult content blocks.".into());
    }
    Ok(())
}

fn text_of(content: &Value) -> Vec<String> {
    content
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("text").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

fn convo(body: &Value, model: String, stream: bool) -> Convo {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let last_user_text = messages
        .iter()
        .rev()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| text_of(m.get("content").unwrap_or(&Value::Null)).join("\n"))
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    let results: Vec<String> = last
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("toolResult"))
        .map(|r| text_of(r.get("content").unwrap_or(&Value::Null)).join("\n"))
        .collect();
    Convo {
        model,
        stream,
        include_usage: true,
        last_user_text,
        trailing_tool_results: (!results.is_empty()).then(|| results.join("; ")),
        input_tokens: estimate_input_tokens(body),
    }
}

/// `POST /model/{id}/converse[-stream]`.
pub(super) async fn converse(
    ctx: &Ctx,
    req: &Request,
    body_bytes: &[u8],
    body: Option<Value>,
    stream: bool,
) -> Response {
    if let Err((ty, message)) = verify(req, body_bytes) {
        return bedrock_error(403, ty, message);
    }
    let Some(body) = body else {
        return validation("Malformed input request, please reformat your input and try again.");
    };
    if let Err(msg) = validate(&body) {
        return validation(&msg);
    }
    let convo = convo(&body, model_of(req.uri().path()), stream);
    match plan(ctx, &convo).await {
        Plan::Error(code) => status_error(code),
        Plan::Overflow => validation("Input is too long for requested model."),
        Plan::Garbage => Response::builder()
            .status(StatusCode::OK)
            .content_type("application/json")
            .body("<<not json>>"),
        Plan::Reply(script) => {
            let tool_id = format!("tooluse_{}", ctx.state.rand_id(22));
            let request_id = format!(
                "{}-{}-{}",
                ctx.state.rand_hex(8),
                ctx.state.rand_hex(4),
                ctx.state.rand_hex(12)
            );
            let resp = if stream {
                converse_stream(ctx, &script, &tool_id)
            } else {
                json_response(StatusCode::OK, &converse_answer(&script, &tool_id))
            };
            with_header(resp, "x-amzn-RequestId", &request_id)
        }
    }
}

fn usage(script: &Script) -> Value {
    let (read, write) = if script.cache {
        (CACHE_READ_TOKENS, CACHE_WRITE_TOKENS)
    } else {
        (0, 0)
    };
    json!({
        "inputTokens": script.input_tokens,
        "outputTokens": script.output_tokens,
        "totalTokens": script.input_tokens + script.output_tokens + read + write,
        "cacheReadInputTokens": read,
        "cacheWriteInputTokens": write,
    })
}

fn stop_reason(script: &Script) -> &'static str {
    if script.tool.is_some() {
        "tool_use"
    } else if script.truncated {
        "max_tokens"
    } else {
        "end_turn"
    }
}

fn converse_answer(script: &Script, tool_id: &str) -> Value {
    let mut content = Vec::new();
    if let Some(text) = &script.text {
        content.push(json!({"text": text}));
    }
    if let Some(name) = &script.tool {
        let input: Value = serde_json::from_str(TOOL_ARGUMENTS).unwrap_or(Value::Null);
        content.push(json!({"toolUse": {"toolUseId": tool_id, "name": name, "input": input}}));
    }
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason(script),
        "usage": usage(script),
        "metrics": {"latencyMs": 42},
    })
}

/// Padding the service adds to every event payload (so sizes do not leak content).
const PADDING: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGH";

fn event(event_type: &str, mut payload: Value) -> Frame {
    payload["p"] = json!(PADDING);
    Frame::Data(Bytes::from(encode_message(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )))
}

fn converse_stream(ctx: &Ctx, script: &Script, tool_id: &str) -> Response {
    let mut frames = vec![event("messageStart", json!({"role": "assistant"}))];
    let mut index = 0u64;
    let mut deltas = 0usize;
    let interrupted = |frames: &mut Vec<Frame>, deltas: usize| -> bool {
        if deltas < 2 || script.end == StreamEnd::Normal {
            return false;
        }
        match script.end {
            StreamEnd::Cut => frames.push(Frame::Abort),
            StreamEnd::Garbage => frames.push(Frame::Data(Bytes::from_static(
                b"\x00\x00\x00\x40\x00\x00\x00\x10garbage-not-an-event-stream-message",
            ))),
            StreamEnd::ProviderError | StreamEnd::Normal => {
                frames.push(Frame::Data(Bytes::from(encode_message(
                    &[
                        (":exception-type", "modelStreamErrorException"),
                        (":content-type", "application/json"),
                        (":message-type", "exception"),
                    ],
                    br#"{"message":"The model encountered an error processing the stream."}"#,
                ))))
            }
        }
        true
    };
    if let Some(text) = &script.text {
        for piece in split_deltas(text) {
            frames.push(event(
                "contentBlockDelta",
                json!({"contentBlockIndex": index, "delta": {"text": piece}}),
            ));
            deltas += 1;
            if deltas == 1
                && let Some(p) = script.pause
            {
                frames.push(Frame::Pause(p));
            }
            if interrupted(&mut frames, deltas) {
                return binary_response(ctx, frames, script);
            }
        }
        frames.push(event(
            "contentBlockStop",
            json!({"contentBlockIndex": index}),
        ));
        index += 1;
    }
    if let Some(name) = &script.tool {
        frames.push(event(
            "contentBlockStart",
            json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": tool_id, "name": name}}}),
        ));
        for frag in split_arguments(TOOL_ARGUMENTS) {
            frames.push(event(
                "contentBlockDelta",
                json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": frag}}}),
            ));
            deltas += 1;
            if interrupted(&mut frames, deltas) {
                return binary_response(ctx, frames, script);
            }
        }
        frames.push(event(
            "contentBlockStop",
            json!({"contentBlockIndex": index}),
        ));
    }
    if interrupted(&mut frames, 2) {
        return binary_response(ctx, frames, script);
    }
    frames.push(event(
        "messageStop",
        json!({"stopReason": stop_reason(script)}),
    ));
    frames.push(event(
        "metadata",
        json!({"usage": usage(script), "metrics": {"latencyMs": 42}}),
    ));
    binary_response(ctx, frames, script)
}

/// The frames through the shared stream driver (drip, split, cut, outcome recording), sent
/// as the binary event stream.
fn binary_response(ctx: &Ctx, frames: Vec<Frame>, script: &Script) -> Response {
    let mut wire = script.wire;
    // `\r\n` rewriting would corrupt binary frames.
    wire.crlf = false;
    let mut resp = sse_response(ctx, frames, wire);
    resp.headers_mut().insert(
        poem::http::header::CONTENT_TYPE,
        poem::http::HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    resp
}

/// One event-stream message with string headers.
#[must_use]
pub fn encode_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (n, v) in headers {
        h.push(u8::try_from(n.len()).unwrap_or(u8::MAX));
        h.extend_from_slice(n.as_bytes());
        h.push(7);
        h.extend_from_slice(&u16::try_from(v.len()).unwrap_or(u16::MAX).to_be_bytes());
        h.extend_from_slice(v.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    m.extend_from_slice(&u32::try_from(h.len()).unwrap_or(u32::MAX).to_be_bytes());
    let c = crc32(&m);
    m.extend_from_slice(&c.to_be_bytes());
    m.extend_from_slice(&h);
    m.extend_from_slice(payload);
    let c = crc32(&m);
    m.extend_from_slice(&c.to_be_bytes());
    m
}

/// Bitwise CRC-32 (IEEE), deliberately not the gateway's table-driven one.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `POST /_sts/` — `AssumeRoleWithWebIdentity`.
pub(super) fn sts(body: &[u8]) -> Response {
    let form = String::from_utf8_lossy(body);
    let param = |name: &str| {
        form.split('&').find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k == name).then(|| decode_form(v))
        })
    };
    let xml_error = |status: StatusCode, code: &str, message: &str| {
        Response::builder()
            .status(status)
            .content_type("text/xml")
            .body(format!(
                "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>"
            ))
    };
    if param("Action").as_deref() != Some("AssumeRoleWithWebIdentity") {
        return xml_error(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "Could not find operation",
        );
    }
    if param("RoleArn").is_none_or(|r| !r.starts_with("arn:aws:iam::")) {
        return xml_error(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            "RoleArn is invalid",
        );
    }
    if param("WebIdentityToken").as_deref() != Some(WEB_IDENTITY_TOKEN) {
        return xml_error(
            StatusCode::BAD_REQUEST,
            "InvalidIdentityToken",
            "Couldn't retrieve verification key from your identity provider",
        );
    }
    Response::builder()
        .status(StatusCode::OK)
        .content_type("text/xml")
        .body(format!(
            r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:metis:gateway</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/bedrock/metis-gateway</Arn>
      <AssumedRoleId>AROACLKWSDQRAOEXAMPLE:metis-gateway</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{}</SessionToken>
      <SecretAccessKey>{STS_SECRET_ACCESS_KEY}</SecretAccessKey>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
      <AccessKeyId>{STS_ACCESS_KEY_ID}</AccessKeyId>
    </Credentials>
    <Provider>oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
            STS_SESSION_TOKEN.replace('&', "&amp;")
        ))
}

fn decode_form(v: &str) -> String {
    let v = v.replace('+', " ");
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = v.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(h, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_paths() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            model_of("/model/us.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse"),
            "us.anthropic.claude-haiku-4-5-20251001-v1:0"
        );
        assert_eq!(
            encode_path("/model/a%3A0/converse"),
            "/model/a%253A0/converse"
        );
    }
}
