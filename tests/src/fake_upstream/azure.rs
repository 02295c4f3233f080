//! Azure OpenAI: deployment paths over the Chat Completions wire, with Azure's credentials,
//! `api-version`, content-filter annotations and error bodies; and a fake Entra ID token
//! endpoint for the client-credentials flow.
//!
//! - `POST /openai/deployments/{deployment}/chat/completions?api-version=V` and
//!   `…/embeddings?api-version=V`. Without `api-version` the real 404 (`Resource not found`).
//!   Credentials: `api-key` must be [`AZURE_API_KEY`], or `Authorization: Bearer` must carry
//!   [`AZURE_AD_TOKEN`] or a token this fake minted; else the real 401 of that credential
//!   kind. The body needs no `model` (Azure takes the deployment from the path). Answers are
//!   the OpenAI ones (same directives) plus Azure's additions: `prompt_filter_results` and
//!   per-choice `content_filter_results` on completions, and a first stream chunk with empty
//!   `choices` carrying `prompt_filter_results` (a parser that expects a choice in every chunk
//!   breaks on it). A 429 carries Azure's quota message.
//! - `POST /{tenant}/oauth2/v2.0/token` (form-encoded client-credentials grant): checks the
//!   tenant, client id, secret and scope against the constants below and answers a fresh
//!   token (`expires_in` 3599) or Entra's real `AADSTS…` error. Token requests are counted
//!   ([`FakeUpstream::azure_token_requests`](super::FakeUpstream::azure_token_requests)), not
//!   recorded (their body is a secret).

use super::openai::openai;
use super::reply::{json_response, with_header};
use super::server::{Ctx, State, lock, recorded_headers};
use super::{Api, AuthCheck, Provider, RecordedRequest, extras};
use bytes::Bytes;
use futures_util::StreamExt;
use poem::http::{StatusCode, header};
use poem::{Body, Request, Response};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The key Azure deployments accept on `api-key`.
pub const AZURE_API_KEY: &str = "fake-azure-key";
/// A ready Entra ID token Azure deployments accept as `Authorization: Bearer`.
pub const AZURE_AD_TOKEN: &str = "fake-azure-ad-token";
/// The tenant the fake Entra ID token endpoint serves.
pub const ENTRA_TENANT_ID: &str = "00000000-0000-4000-8000-00000000fa6e";
/// The app registration the fake Entra ID knows.
pub const ENTRA_CLIENT_ID: &str = "11111111-1111-4111-8111-11111111c1d0";
/// That app's client secret.
pub const ENTRA_CLIENT_SECRET: &str = "fake~entra~client~secret";
/// The only scope the fake issues tokens for.
pub const ENTRA_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
/// Lifetime of a minted token, as Entra answers it.
pub const ENTRA_TOKEN_LIFETIME_SECS: u64 = 3599;
/// Message of Azure's 401 for a wrong or missing `api-key` (the real wording).
pub const AZURE_BAD_KEY_MESSAGE: &str = "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.";
/// Message of Azure's 401 for a wrong or missing bearer token (the real wording).
pub const AZURE_BAD_TOKEN_MESSAGE: &str = "Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired.";

/// Tokens minted by the fake Entra ID and how many were asked for.
#[derive(Default)]
pub(super) struct AzureState {
    tokens: Mutex<HashSet<String>>,
    token_requests: AtomicU64,
}

impl AzureState {
    pub(super) fn token_requests(&self) -> u64 {
        self.token_requests.load(Ordering::SeqCst)
    }
}

/// `(deployment, api)` of an Azure deployment path.
pub(super) fn deployment_path(path: &str) -> Option<(String, Api)> {
    let rest = path.strip_prefix("/openai/deployments/")?;
    let (deployment, op) = rest.split_once('/')?;
    let api = match op {
        "chat/completions" => Api::ChatCompletions,
        "embeddings" => Api::Embeddings,
        _ => return None,
    };
    let deployment = url::form_urlencoded::parse(format!("d={deployment}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .filter(|d| !d.is_empty())?;
    Some((deployment, api))
}

/// The tenant of an Entra ID token path `/{tenant}/oauth2/v2.0/token`.
pub(super) fn token_path(path: &str) -> Option<&str> {
    let tenant = path.strip_prefix('/')?.strip_suffix("/oauth2/v2.0/token")?;
    (!tenant.is_empty() && !tenant.contains('/')).then_some(tenant)
}

fn azure_error(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

/// Which credential header Azure reads: `api-key` when present, else `Authorization`.
pub(super) fn checked_header(req: &Request) -> &'static str {
    if req.headers().contains_key("api-key") {
        "api-key"
    } else {
        "authorization"
    }
}

pub(super) fn check_auth(state: &State, req: &Request) -> AuthCheck {
    let value = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if checked_header(req) == "api-key" {
        return match value("api-key") {
            None => AuthCheck::Missing,
            Some(k) if k == AZURE_API_KEY => AuthCheck::Matched,
            Some(_) => AuthCheck::Mismatched,
        };
    }
    let token = value("authorization").and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    });
    match token {
        None => AuthCheck::Missing,
        Some(t) if t == AZURE_AD_TOKEN || lock(&state.azure.tokens).contains(&t) => {
            AuthCheck::Matched
        }
        Some(_) => AuthCheck::Mismatched,
    }
}

/// Serve a deployment call.
pub(super) async fn serve(
    state: Arc<State>,
    mut req: Request,
    deployment: String,
    api: Api,
) -> Response {
    let body_bytes = req.take_body().into_bytes().await.unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&body_bytes).ok();
    let auth = check_auth(&state, &req);
    let headers = recorded_headers(&req, Provider::Azure, auth);
    let query = req.uri().query().map(str::to_owned);
    let seq = state.record(RecordedRequest {
        seq: 0,
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        query: query.clone(),
        provider: Provider::Azure,
        api,
        headers,
        auth,
        body: parsed.clone().unwrap_or(Value::Null),
        body_len: body_bytes.len(),
        stream_outcome: None,
    });
    let api_version = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "api-version")
            .map(|(_, v)| v.into_owned())
    });
    let Some(api_version) = api_version.filter(|v| !v.is_empty()) else {
        return azure_error(StatusCode::NOT_FOUND, "404", "Resource not found");
    };
    if auth != AuthCheck::Matched {
        let message = if checked_header(&req) == "api-key" {
            AZURE_BAD_KEY_MESSAGE
        } else {
            AZURE_BAD_TOKEN_MESSAGE
        };
        return azure_error(StatusCode::UNAUTHORIZED, "401", message);
    }
    // Azure takes the model from the deployment; the body's `model`, if any, is ignored.
    let body = parsed.map(|mut b| {
        if let Some(o) = b.as_object_mut() {
            o.insert("model".to_owned(), Value::String(deployment.clone()));
        }
        b
    });
    let ctx = Ctx {
        state: Arc::clone(&state),
        seq,
        api,
    };
    if api == Api::Embeddings {
        return extras::embeddings(&ctx, AuthCheck::Matched, body).await;
    }
    let mut resp = openai(&ctx, AuthCheck::Matched, body).await;
    match resp.status() {
        StatusCode::TOO_MANY_REQUESTS => {
            let message = format!(
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {api_version} have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."
            );
            with_header(
                azure_error(StatusCode::TOO_MANY_REQUESTS, "429", &message),
                "retry-after",
                "1",
            )
        }
        StatusCode::OK if is_event_stream(&resp) => {
            let first = Bytes::from(format!(
                "data: {}\n\n",
                json!({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                       "prompt_filter_results": prompt_filter_results()})
            ));
            if let Some(len) = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
            {
                resp = with_header(resp, "content-length", &(len + first.len()).to_string());
            }
            let rest = resp.take_body().into_bytes_stream();
            let stream = futures_util::stream::once(async move { Ok(first) }).chain(rest);
            resp.set_body(Body::from_bytes_stream(stream));
            resp
        }
        StatusCode::OK => {
            let bytes = resp.take_body().into_bytes().await.unwrap_or_default();
            let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
                // `[garbage]` stays garbage.
                resp.set_body(bytes);
                return resp;
            };
            if let Some(o) = v.as_object_mut() {
                o.insert("prompt_filter_results".into(), prompt_filter_results());
            }
            if let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) {
                for c in choices.iter_mut().filter_map(Value::as_object_mut) {
                    c.insert("content_filter_results".into(), filter_verdicts());
                }
            }
            json_response(StatusCode::OK, &v)
        }
        _ => resp,
    }
}

fn is_event_stream(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

fn filter_verdicts() -> Value {
    let safe = json!({"filtered": false, "severity": "safe"});
    json!({"hate": safe, "self_harm": safe, "sexual": safe, "violence": safe})
}

fn prompt_filter_results() -> Value {
    json!([{"prompt_index": 0, "content_filter_results": filter_verdicts()}])
}

fn entra_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        &json!({
            "error": error,
            "error_description": description,
            "error_codes": [aadsts_code(description)],
            "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": "00000000-0000-0000-0000-000000000000",
            "correlation_id": "00000000-0000-0000-0000-000000000000",
        }),
    )
}

/// The number of an `AADSTS<digits>: …` description (Entra lists it in `error_codes`).
fn aadsts_code(description: &str) -> u64 {
    description
        .strip_prefix("AADSTS")
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

/// `POST /{tenant}/oauth2/v2.0/token`: the client-credentials grant.
pub(super) async fn token(state: Arc<State>, mut req: Request, tenant: String) -> Response {
    state.azure.token_requests.fetch_add(1, Ordering::SeqCst);
    let body = req.take_body().into_bytes().await.unwrap_or_default();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if tenant != ENTRA_TENANT_ID {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            &format!(
                "AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    if field("grant_type") != Some("client_credentials") {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    let client_id = field("client_id").unwrap_or_default();
    if client_id != ENTRA_CLIENT_ID {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!(
                "AADSTS700016: Application with identifier '{client_id}' was not found in the directory."
            ),
        );
    }
    if field("client_secret") != Some(ENTRA_CLIENT_SECRET) {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            &format!(
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
            ),
        );
    }
    if field("scope") != Some(ENTRA_SCOPE) {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS70011: The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid.",
        );
    }
    let token = format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake.{}",
        state.rand_id(43)
    );
    lock(&state.azure.tokens).insert(token.clone());
    json_response(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": ENTRA_TOKEN_LIFETIME_SECS,
            "ext_expires_in": ENTRA_TOKEN_LIFETIME_SECS,
            "access_token": token,
        }),
    )
}
