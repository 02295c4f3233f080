//! The server: shared state (recorded requests, `[fail-once]` memory, stored Responses
//! conversations), dispatch by path, credential checks and request recording.

use super::anthropic::anthropic;
use super::azure::{self, AzureState};
use super::gemini;
use super::openai::{openai, openai_error};
use super::reply::json_response;
use super::{Api, AuthCheck, Provider, RecordedRequest, StreamOutcome, bedrock, extras, responses};
use poem::http::{StatusCode, header};
use poem::{Endpoint, Request, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

pub(super) struct State {
    pub(super) anthropic_key: String,
    pub(super) openai_key: String,
    /// Key expected on `x-goog-api-key` (Gemini API).
    pub(super) gemini_key: String,
    /// Access tokens the fake `/token` endpoint minted (Vertex AI bearer tokens).
    pub(super) google_tokens: Mutex<HashSet<String>>,
    pub(super) records: Mutex<Vec<RecordedRequest>>,
    pub(super) fail_once_seen: Mutex<HashSet<String>>,
    /// Conversation items (input and output) of every Responses-API answer served with `store`
    /// not false, by response id, so `previous_response_id` works as against the real API.
    pub(super) stored_responses: Mutex<HashMap<String, Vec<Value>>>,
    pub(super) seq: AtomicU64,
    pub(super) ids: AtomicU64,
    /// Answer every model call with this status (an outage or 429 storm of this upstream
    /// alone, whatever the request says).
    pub(super) forced_status: Mutex<Option<u16>>,
    /// Azure OpenAI and the fake Entra ID: tokens minted, token requests counted.
    pub(super) azure: AzureState,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    pub(super) fn records(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        lock(&self.records)
    }

    pub(super) fn reset(&self) {
        let mut recs = self.records();
        recs.clear();
        self.seq.store(0, Ordering::SeqCst);
        drop(recs);
        lock(&self.fail_once_seen).clear();
        lock(&self.stored_responses).clear();
    }

    pub(super) fn record(&self, mut rec: RecordedRequest) -> u64 {
        let mut recs = self.records();
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        rec.seq = seq;
        recs.push(rec);
        seq
    }

    pub(super) fn set_outcome(&self, seq: u64, outcome: StreamOutcome) {
        let mut recs = self.records();
        if let Some(r) = recs.iter_mut().find(|r| r.seq == seq)
            && r.stream_outcome.is_none()
        {
            r.stream_outcome = Some(outcome);
        }
    }

    /// True the first time `text` is seen.
    pub(super) fn first_time(&self, text: &str) -> bool {
        lock(&self.fail_once_seen).insert(text.to_owned())
    }

    /// A fresh base62 string of `len` characters.
    pub(super) fn rand_id(&self, len: usize) -> String {
        self.rand_from(
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            len,
        )
    }

    /// A fresh lower-case hex string of `len` characters (the Responses API's id alphabet).
    pub(super) fn rand_hex(&self, len: usize) -> String {
        self.rand_from(b"0123456789abcdef", len)
    }

    fn rand_from(&self, alphabet: &[u8], len: usize) -> String {
        // Each id starts from a mixed counter value, so consecutive ids share no run of
        // characters; within an id, splitmix64 steps produce the characters.
        let mut x = splitmix64(self.ids.fetch_add(1, Ordering::Relaxed));
        let mut out = String::with_capacity(len);
        for _ in 0..len {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let n = u64::try_from(alphabet.len()).unwrap_or(1);
            let idx = usize::try_from(splitmix64(x) % n).unwrap_or(0);
            out.push(char::from(alphabet[idx]));
        }
        out
    }
}

pub(super) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(super) fn seed() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(0)
    })
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) struct FakeEndpoint {
    pub(super) state: Arc<State>,
}

impl Endpoint for FakeEndpoint {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        Ok(handle(Arc::clone(&self.state), req).await)
    }
}

async fn handle(state: Arc<State>, mut req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // OpenAI paths also answer without the `/v1` prefix, for base URLs configured without it.
    let openai_path = path.strip_prefix("/v1").unwrap_or(&path);
    if method == poem::http::Method::POST {
        if let Some(tenant) = azure::token_path(&path) {
            let tenant = tenant.to_owned();
            return azure::token(state, req, tenant).await;
        }
        if let Some((deployment, api)) = azure::deployment_path(&path) {
            return azure::serve(state, req, deployment, api).await;
        }
    }
    let (provider, api) = match (method.as_str(), path.as_str(), openai_path) {
        ("GET", "/_requests", _) => {
            let recs = state.records().clone();
            return json_response(StatusCode::OK, &json!(recs));
        }
        ("POST", "/_reset", _) => {
            state.reset();
            return json_response(StatusCode::OK, &json!({"ok": true}));
        }
        ("GET", "/_google/credentials", _) => {
            let token_uri = format!(
                "http://{}/token",
                req.headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
            );
            return Response::builder()
                .status(StatusCode::OK)
                .content_type("application/json")
                .body(super::google_service_account_json(&token_uri));
        }
        ("POST", p, _) if gemini::route(p).is_some() => {
            return google(state, req).await;
        }
        // Bedrock and STS paths also answer under `/v1`, like the OpenAI ones.
        ("POST", _, "/_sts/" | "/_sts") => (Provider::Bedrock, Api::AssumeRoleWithWebIdentity),
        ("POST", _, p) if p.starts_with("/model/") && p.ends_with("/converse") => {
            (Provider::Bedrock, Api::Converse)
        }
        ("POST", _, p) if p.starts_with("/model/") && p.ends_with("/converse-stream") => {
            (Provider::Bedrock, Api::ConverseStream)
        }
        ("POST", "/v1/messages", _) => (Provider::Anthropic, Api::Messages),
        ("POST", "/v1/messages/count_tokens", _) => (Provider::Anthropic, Api::CountTokens),
        ("POST", _, "/chat/completions") => (Provider::OpenAi, Api::ChatCompletions),
        ("POST", _, "/responses") => (Provider::OpenAi, Api::Responses),
        ("POST", _, "/responses/input_tokens") => (Provider::OpenAi, Api::ResponsesInputTokens),
        ("POST", _, "/embeddings") => (Provider::OpenAi, Api::Embeddings),
        ("GET", _, p)
            if p == "/models" || p.strip_prefix("/models/").is_some_and(|id| !id.is_empty()) =>
        {
            (models_provider(&req), Api::Models)
        }
        _ => {
            return openai_error(
                StatusCode::NOT_FOUND,
                &format!("Invalid URL ({method} {path})"),
                "invalid_request_error",
                None,
                None,
            );
        }
    };
    let body_bytes = req.take_body().into_bytes().await.unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&body_bytes).ok();
    let auth = match (provider, api) {
        (Provider::Bedrock, Api::AssumeRoleWithWebIdentity) => AuthCheck::Missing,
        (Provider::Bedrock, _) => match bedrock::verify(&req, &body_bytes) {
            Ok(()) => AuthCheck::Matched,
            Err(("MissingAuthenticationTokenException", _)) => AuthCheck::Missing,
            Err(_) => AuthCheck::Mismatched,
        },
        _ => check_auth(&state, provider, &req),
    };
    let headers = recorded_headers(&req, provider, auth);
    let seq = state.record(RecordedRequest {
        seq: 0,
        method: method.to_string(),
        path: path.clone(),
        query: req.uri().query().map(str::to_owned),
        provider,
        api,
        headers,
        auth,
        body: parsed.clone().unwrap_or(Value::Null),
        body_len: body_bytes.len(),
        stream_outcome: None,
    });
    let ctx = Ctx { state, seq, api };
    match (api, provider) {
        (Api::Messages, _) => anthropic(&ctx, &req, auth, parsed).await,
        (Api::CountTokens, _) => extras::count_tokens(&ctx, &req, auth, parsed).await,
        (Api::ChatCompletions, _) => openai(&ctx, auth, parsed).await,
        (Api::Responses, _) => responses::create(&ctx, auth, parsed).await,
        (Api::ResponsesInputTokens, _) => responses::input_tokens(&ctx, auth, parsed).await,
        (Api::Embeddings, _) => extras::embeddings(&ctx, auth, parsed).await,
        (Api::Models, Provider::Anthropic) => {
            extras::anthropic_models(&ctx, &req, auth, openai_path)
        }
        (
            Api::Models,
            Provider::OpenAi | Provider::Azure | Provider::Google | Provider::Bedrock,
        ) => extras::openai_models(&ctx, auth, openai_path),
        (Api::GenerateContent | Api::RawPredict | Api::Token, _) => openai_error(
            StatusCode::NOT_FOUND,
            "not a Google path",
            "invalid_request_error",
            None,
            None,
        ),
        (Api::Converse, _) => bedrock::converse(&ctx, &req, &body_bytes, parsed, false).await,
        (Api::ConverseStream, _) => bedrock::converse(&ctx, &req, &body_bytes, parsed, true).await,
        (Api::AssumeRoleWithWebIdentity, _) => bedrock::sts(&body_bytes),
    }
}

/// A Google path (`gemini::route`): recorded like the others, then served by `gemini`.
async fn google(state: Arc<State>, mut req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let Some((route, model)) = gemini::route(&path) else {
        return openai_error(
            StatusCode::NOT_FOUND,
            "not a Google path",
            "invalid_request_error",
            None,
            None,
        );
    };
    let api = match route {
        gemini::Route::Gemini { .. } => Api::GenerateContent,
        gemini::Route::Claude { .. } => Api::RawPredict,
        gemini::Route::Token => Api::Token,
    };
    let body_bytes = req.take_body().into_bytes().await.unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&body_bytes).ok();
    let auth = check_auth(&state, Provider::Google, &req);
    let headers = recorded_headers(&req, Provider::Google, auth);
    let seq = state.record(RecordedRequest {
        seq: 0,
        method: "POST".to_owned(),
        path,
        query: req.uri().query().map(str::to_owned),
        provider: Provider::Google,
        api,
        headers,
        auth,
        // The token request is a form whose assertion is a credential: never recorded.
        body: parsed.clone().unwrap_or(Value::Null),
        body_len: body_bytes.len(),
        stream_outcome: None,
    });
    let ctx = Ctx { state, seq, api };
    gemini::serve(&ctx, req, route, model, auth, &body_bytes, parsed).await
}

pub(super) struct Ctx {
    pub(super) state: Arc<State>,
    pub(super) seq: u64,
    pub(super) api: Api,
}

/// `GET /v1/models` answers in the Anthropic shape when called with `anthropic-version` or
/// `x-api-key` (Anthropic clients send one or both; OpenAI clients neither), else in the OpenAI
/// shape.
fn models_provider(req: &Request) -> Provider {
    let headers = req.headers();
    if headers.contains_key("anthropic-version") || headers.contains_key("x-api-key") {
        Provider::Anthropic
    } else {
        Provider::OpenAi
    }
}

/// The credential header checked for `provider`: OpenAI reads `Authorization: Bearer`;
/// Anthropic reads `x-api-key`, or `Authorization: Bearer` when there is no `x-api-key` (the
/// pinned `anthropic` SDK sends its API key that way, and Claude Code its auth token).
fn checked_header(provider: Provider, req: &Request) -> &'static str {
    match provider {
        Provider::Anthropic if req.headers().contains_key("x-api-key") => "x-api-key",
        Provider::Azure => azure::checked_header(req),
        Provider::Anthropic | Provider::OpenAi | Provider::Bedrock => "authorization",
        Provider::Google => gemini::checked_header(req),
    }
}

fn check_auth(state: &State, provider: Provider, req: &Request) -> AuthCheck {
    if provider == Provider::Azure {
        return azure::check_auth(state, req);
    }
    if provider == Provider::Google {
        return gemini::check_auth(state, req);
    }
    let presented = if checked_header(provider, req) == "x-api-key" {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    } else {
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            })
    };
    let expected = match provider {
        Provider::Anthropic => &state.anthropic_key,
        // Bedrock requests are checked by SigV4 (`bedrock::verify`), never here.
        Provider::OpenAi | Provider::Azure | Provider::Bedrock => &state.openai_key,
        Provider::Google => &state.gemini_key,
    };
    match presented {
        None => AuthCheck::Missing,
        Some(p) if p.is_empty() => AuthCheck::Missing,
        Some(p) if &p == expected => AuthCheck::Matched,
        Some(_) => AuthCheck::Mismatched,
    }
}

/// Headers whose values are credentials and are never recorded.
const CREDENTIAL_HEADERS: [&str; 7] = [
    "x-api-key",
    "x-amz-security-token",
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-goog-api-key",
    "cookie",
];

pub(super) fn recorded_headers(
    req: &Request,
    provider: Provider,
    auth: AuthCheck,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let name = name.as_str().to_ascii_lowercase();
        let value = if CREDENTIAL_HEADERS.contains(&name.as_str()) {
            // Never record a credential; only whether the one checked for this provider matched.
            let is_checked = name == checked_header(provider, req);
            if is_checked {
                match auth {
                    AuthCheck::Matched => "<matched>".to_owned(),
                    AuthCheck::Mismatched | AuthCheck::Missing => "<mismatched>".to_owned(),
                }
            } else {
                "<present>".to_owned()
            }
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        out.entry(name)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}
