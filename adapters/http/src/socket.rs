//! `GET /v1/responses` with `Upgrade: websocket`: the Responses API over a WebSocket, the
//! transport the Codex CLI uses when its provider block says `supports_websockets = true`.
//!
//! The key is checked once at the upgrade (a refused key is an ordinary 401, which Codex's
//! auth recovery understands); every request on the socket is then admitted again (rate
//! limits, caps) and served exactly like `POST /v1/responses` with `stream: true`, its SSE
//! events sent as one text frame each. The per-socket conversation (warm-ups, incremental
//! input) is `metis_domain::responses_socket`; nothing outlives the socket.
//!
//! A request's failure is an `error` frame carrying its HTTP status (Codex maps it to that
//! status); the socket stays open. The socket closes when the client closes it or a send
//! fails (a dropped stream cancels the upstream call).

use crate::reply::error_response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use metis_domain::canonical::Shape;
use metis_domain::error::GatewayError;
use metis_domain::responses_socket::{SocketConversation, SocketRequest, error_frame};
use metis_domain::sse::SseParser;
use metis_ports::gateway::{GatewayService, InboundMeta, Reply};
use poem::web::websocket::{Message, WebSocket, WebSocketStream};
use poem::{FromRequest, IntoResponse, Request, Response};
use serde_json::Value;
use std::sync::Arc;

/// Whether `req` asks to upgrade to a WebSocket.
pub(crate) fn is_upgrade(req: &Request) -> bool {
    req.headers()
        .get(poem::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Authenticate, then switch protocols and serve the socket.
pub(crate) async fn upgrade(
    svc: Arc<dyn GatewayService>,
    meta: InboundMeta,
    req: &Request,
) -> Response {
    if let Err(e) = svc.admit(meta.clone()).await {
        return error_response(&e, Shape::Responses);
    }
    let ws = match WebSocket::from_request_without_body(req).await {
        Ok(ws) => ws,
        Err(e) => {
            let err = metis_domain::error::invalid(format!("WebSocket upgrade refused: {e}"));
            return error_response(&err, Shape::Responses);
        }
    };
    ws.on_upgrade(move |socket| serve(svc, meta, socket))
        .into_response()
}

async fn serve(svc: Arc<dyn GatewayService>, meta: InboundMeta, mut socket: WebSocketStream) {
    let mut conversation = SocketConversation::default();
    while let Some(Ok(message)) = socket.next().await {
        let text = match message {
            Message::Text(t) => t,
            Message::Close(_) => break,
            // Pings are answered by the WebSocket layer; binary frames mean nothing here.
            _ => continue,
        };
        let warmup_id = ulid::Ulid::generate().to_string();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        let sent = match conversation.request(&text, &warmup_id, created) {
            Ok(SocketRequest::Ignore) => true,
            Ok(SocketRequest::Answer(events)) => send_all(&mut socket, &events).await,
            Ok(SocketRequest::Generate(body)) => {
                generate(&*svc, &meta, body, &mut conversation, &mut socket).await
            }
            Err(message) => {
                let err = metis_domain::error::invalid(message);
                send_error(&mut socket, &err).await
            }
        };
        if !sent {
            break;
        }
    }
}

/// Serve one request; `false` when the socket is gone.
async fn generate(
    svc: &dyn GatewayService,
    meta: &InboundMeta,
    body: serde_json::Map<String, Value>,
    conversation: &mut SocketConversation,
    socket: &mut WebSocketStream,
) -> bool {
    let admission = match svc.admit(meta.clone()).await {
        Ok(a) => a,
        Err(e) => return send_error(socket, &e).await,
    };
    let bytes = match serde_json::to_vec(&Value::Object(body)) {
        Ok(b) => Bytes::from(b),
        Err(_) => return send_error(socket, &GatewayError::Internal).await,
    };
    let mut stream = match svc.handle(admission, bytes).await {
        Ok(Reply::Stream(s)) => s,
        Ok(Reply::Json(b)) => {
            // Not expected (the request asks for a stream); relay the object as one event.
            let v = serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null);
            return send_all(socket, &[v]).await;
        }
        Err(e) => return send_error(socket, &e).await,
    };
    let mut sse = SseParser::default();
    while let Some(chunk) = stream.next().await {
        for frame in sse.push(&chunk) {
            let Ok(event) = serde_json::from_str::<Value>(frame.data.trim()) else {
                continue; // keep-alive comments and sentinels
            };
            conversation.observe(&event);
            if socket.send(Message::Text(event.to_string())).await.is_err() {
                return false;
            }
        }
    }
    true
}

async fn send_all(socket: &mut WebSocketStream, events: &[Value]) -> bool {
    for e in events {
        if socket.send(Message::Text(e.to_string())).await.is_err() {
            return false;
        }
    }
    true
}

async fn send_error(socket: &mut WebSocketStream, err: &GatewayError) -> bool {
    let rendered = err.render(Shape::Responses);
    let frame = error_frame(rendered.status, &rendered.body);
    socket.send(Message::Text(frame.to_string())).await.is_ok()
}
