//! `AzureProvider` against a local server on `127.0.0.1:0` playing both Azure and Entra ID:
//! the client-credentials token is fetched once for concurrent calls, reused, refreshed when
//! due, dropped after a 401, and a token failure is a network error naming Entra's answer.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly")]

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use metis_ports::upstream::{Provider, UpstreamError, UpstreamRequest, WireFormat};
use metis_upstream::{
    AZURE_COGNITIVE_SCOPE, AzureAuth, AzureConfig, AzureProvider, ClientCredentials,
};
use poem::http::StatusCode;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::{Endpoint, Request, Response, Server};

const SECRET: &str = "s3cr3t&value";

#[derive(Default)]
struct State {
    token_hits: AtomicUsize,
    chat_hits: AtomicUsize,
    /// `expires_in` of minted tokens.
    lifetime: AtomicUsize,
    /// Answer the next chat call 401.
    refuse_next: AtomicBool,
    /// Token endpoint answers `invalid_client`.
    bad_secret: AtomicBool,
    minted: Mutex<Vec<String>>,
    seen_bearers: Mutex<Vec<String>>,
}

struct Fake(Arc<State>);

impl Endpoint for Fake {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let s = &self.0;
        let path = req.uri().path().to_owned();
        let body = req.take_body().into_bytes().await.unwrap_or_default();
        if path == "/tenant-1/oauth2/v2.0/token" {
            let n = s.token_hits.fetch_add(1, Ordering::SeqCst);
            // Slow enough that concurrent callers overlap the exchange.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let form = String::from_utf8_lossy(&body).into_owned();
            assert!(form.contains("grant_type=client_credentials"), "{form}");
            assert!(form.contains("client_id=app-1"), "{form}");
            assert!(form.contains("client_secret=s3cr3t%26value"), "{form}");
            assert!(
                form.contains("scope=https%3A%2F%2Fcognitiveservices.azure.com%2F.default"),
                "{form}"
            );
            if s.bad_secret.load(Ordering::SeqCst) {
                return Ok(Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .content_type("application/json")
                    .body(r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x"}"#));
            }
            let token = format!("tok-{n}");
            s.minted.lock().unwrap().push(token.clone());
            let lifetime = s.lifetime.load(Ordering::SeqCst);
            return Ok(Response::builder()
                .content_type("application/json")
                .body(format!(
                    r#"{{"token_type":"Bearer","expires_in":{lifetime},"access_token":"{token}"}}"#
                )));
        }
        assert_eq!(path, "/openai/deployments/dep-1/chat/completions");
        assert_eq!(req.uri().query(), Some("api-version=2025-01-01-preview"));
        s.chat_hits.fetch_add(1, Ordering::SeqCst);
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        s.seen_bearers.lock().unwrap().push(bearer.clone());
        let known = s.minted.lock().unwrap().contains(&bearer);
        if !known || s.refuse_next.swap(false, Ordering::SeqCst) {
            return Ok(Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .body(r#"{"error":{"code":"401","message":"Unauthorized."}}"#));
        }
        Ok(Response::builder()
            .content_type("application/json")
            .body(r#"{"id":"x","choices":[]}"#))
    }
}

async fn start(lifetime: usize) -> (String, Arc<State>) {
    let state = Arc::new(State::default());
    state.lifetime.store(lifetime, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
    let base = format!(
        "http://{}",
        acceptor.local_addr()[0].as_socket_addr().unwrap()
    );
    let fake = Fake(Arc::clone(&state));
    tokio::spawn(async move {
        let _ = Server::new_with_acceptor(acceptor).run(fake).await;
    });
    (base, state)
}

fn provider(base: &str) -> Arc<AzureProvider> {
    let mut config = AzureConfig::new(
        base,
        AzureAuth::ClientCredentials(ClientCredentials {
            authority_url: base.to_owned(),
            tenant_id: "tenant-1".into(),
            client_id: "app-1".into(),
            client_secret: SECRET.into(),
            scope: AZURE_COGNITIVE_SCOPE.into(),
        }),
    );
    config.api_version = "2025-01-01-preview".into();
    config.retry.max_retries = 0;
    Arc::new(AzureProvider::new(config).unwrap())
}

fn request() -> UpstreamRequest {
    let mut r = UpstreamRequest::generate(
        WireFormat::OpenAiChat,
        Bytes::from_static(br#"{"messages":[]}"#),
        false,
        "req-1".into(),
    );
    r.model = "dep-1".into();
    r
}

#[tokio::test]
async fn concurrent_calls_share_one_token_exchange_and_reuse_it() {
    let (base, state) = start(3599).await;
    let p = provider(&base);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let p = Arc::clone(&p);
            tokio::spawn(async move { p.send(request()).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().expect("call succeeds");
    }
    p.send(request()).await.expect("a later call succeeds");
    assert_eq!(state.token_hits.load(Ordering::SeqCst), 1);
    assert_eq!(state.chat_hits.load(Ordering::SeqCst), 9);
    assert!(
        state
            .seen_bearers
            .lock()
            .unwrap()
            .iter()
            .all(|b| b == "tok-0")
    );
}

#[tokio::test]
async fn a_token_due_for_refresh_is_replaced() {
    // 2 s lifetime: refreshed after half of it (the 5-minute margin is capped at half).
    let (base, state) = start(2).await;
    let p = provider(&base);
    p.send(request()).await.expect("first call");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.send(request()).await.expect("second call");
    assert_eq!(state.token_hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        *state.seen_bearers.lock().unwrap(),
        vec!["tok-0".to_owned(), "tok-1".to_owned()]
    );
}

#[tokio::test]
async fn a_401_drops_the_cached_token() {
    let (base, state) = start(3599).await;
    let p = provider(&base);
    p.send(request()).await.expect("first call");
    state.refuse_next.store(true, Ordering::SeqCst);
    match p.send(request()).await {
        Err(UpstreamError::Status { status: 401, .. }) => {}
        other => panic!("expected the 401, got {other:?}"),
    }
    p.send(request()).await.expect("a fresh token works");
    assert_eq!(state.token_hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_token_request_is_a_network_error_naming_entra_s_answer() {
    let (base, state) = start(3599).await;
    state.bad_secret.store(true, Ordering::SeqCst);
    let p = provider(&base);
    match p.send(request()).await {
        Err(UpstreamError::Network { message, .. }) => {
            assert!(message.contains("HTTP 401"), "{message}");
            assert!(
                message.contains("invalid_client AADSTS7000215: Invalid client secret provided."),
                "{message}"
            );
            assert!(!message.contains("s3cr3t"), "{message}");
            assert!(!message.contains("Trace ID"), "first line only: {message}");
        }
        other => panic!("expected a network error, got {other:?}"),
    }
    assert_eq!(
        state.chat_hits.load(Ordering::SeqCst),
        0,
        "no call without a token"
    );
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_still_valid_token() {
    // 6 s lifetime: due for refresh after 3 s, valid until 6 s.
    let (base, state) = start(6).await;
    let p = provider(&base);
    p.send(request()).await.expect("first call");
    tokio::time::sleep(Duration::from_millis(3300)).await;
    state.bad_secret.store(true, Ordering::SeqCst);
    p.send(request())
        .await
        .expect("the current token still serves while Entra refuses");
    p.send(request())
        .await
        .expect("and the refresh is not retried at once");
    assert_eq!(state.token_hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        *state.seen_bearers.lock().unwrap(),
        vec!["tok-0".to_owned(), "tok-0".to_owned(), "tok-0".to_owned()]
    );
}
