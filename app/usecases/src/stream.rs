//! The streaming leg of a request: upstream SSE bytes in, client SSE frames out.
//!
//! Frames are forwarded as soon as they are parsed (no buffering beyond one SSE frame).
//! Same-shape streams forward the upstream frames with only the model rewritten; cross-shape
//! streams go through the canonical events. Either way the canonical parser runs on every
//! frame so usage and stop reason are recorded.
//!
//! Failure after the first byte ends the stream with a real error frame in the client's
//! shape and `llm.call_failed` — never a fake `stop`. An upstream that closes without its
//! terminal frame is such a failure. Dropping the stream (client disconnect) drops the
//! upstream connection and the recorder writes `cancelled` with the partial usage.

use crate::recorder::CallRecorder;
use crate::wire::{Passthrough, StreamParser, StreamRenderer};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use metis_domain::canonical::StreamEvent;
use metis_domain::error::{ErrorClass, GatewayError};
use metis_domain::sse::{SseFrame, SseParser};
use metis_ports::upstream::UpstreamError;
use std::collections::VecDeque;

pub(crate) struct StreamState {
    pub upstream: BoxStream<'static, Result<Bytes, UpstreamError>>,
    pub sse: SseParser,
    pub parser: StreamParser,
    pub renderer: StreamRenderer,
    /// `Some` for same-shape traffic.
    pub passthrough: Option<Passthrough>,
    pub recorder: CallRecorder,
    pub pending: VecDeque<String>,
    pub finished_upstream: bool,
    pub done: bool,
}

impl StreamState {
    fn observe(&mut self, events: &[StreamEvent]) {
        for ev in events {
            self.recorder.observe(ev);
            if self.passthrough.is_none() {
                let frames = self.renderer.event(ev);
                self.pending.extend(frames);
            }
            if matches!(ev, StreamEvent::Finish { .. }) {
                self.finished_upstream = true;
            }
        }
    }

    fn fail(&mut self, class: ErrorClass, message: &str, client_error: Option<GatewayError>) {
        if let Some(err) = client_error {
            // A same-shape stream continues the upstream's own ids and sequence numbers.
            let frames = match self.passthrough.as_mut() {
                Some(p) => p.error(&err),
                None => self.renderer.error(&err),
            };
            self.pending.extend(frames);
        }
        self.recorder.fail(class, message);
        self.done = true;
    }

    fn frame(&mut self, frame: &SseFrame) {
        if self.done {
            return;
        }
        let (result, out) = match (self.passthrough.as_mut(), &mut self.parser) {
            // Same-shape OpenAI chunks need both the accounting parse and the model rewrite:
            // parse each chunk's JSON once for both.
            (Some(Passthrough::OpenAi(p)), StreamParser::OpenAi(parser))
                if is_json_chunk(&frame.data) =>
            {
                match serde_json::from_str::<serde_json::Value>(frame.data.trim()) {
                    Ok(v) => match parser.push_json(&v) {
                        Ok(events) => (Ok(events), p.rewrite_json(frame.event.as_deref(), v)),
                        Err(msg) => (Err(msg), None),
                    },
                    Err(_) => (parser.push(frame), None),
                }
            }
            (passthrough, parser) => match parser.push(frame) {
                Ok(events) => {
                    let out = passthrough.and_then(|p| p.rewrite(frame));
                    (Ok(events), out)
                }
                Err(msg) => (Err(msg), None),
            },
        };
        match result {
            Ok(events) => {
                if let Some(out) = out {
                    self.pending.push_back(out);
                }
                self.observe(&events);
            }
            Err(msg) => {
                let provider = self.recorder.provider.clone();
                let class = self.parser.error_class().unwrap_or(ErrorClass::ServerError);
                let err = GatewayError::Upstream {
                    class,
                    provider: provider.clone(),
                    message: format!("{provider} failed mid-stream: {msg}"),
                    retry_after_secs: None,
                };
                // The upstream's own error frame is never forwarded (its text may echo the
                // prompt); the client gets one error frame in its shape naming the type.
                self.fail(class, &format!("upstream error frame: {msg}"), Some(err));
            }
        }
    }

    fn upstream_ended(&mut self) {
        if let Some(last) = self.sse.finish() {
            self.frame(&last);
        }
        if self.done {
            return;
        }
        // Clean end = the upstream's own terminal signal (`[DONE]` / a finish_reason for
        // OpenAI, `message_stop` for Anthropic), checked before `finish` synthesises one.
        let clean = self.finished_upstream || self.parser.ended_cleanly();
        let tail = self.parser.finish();
        let had_finish = clean;
        if had_finish {
            self.observe(&tail);
            if self.passthrough.is_none() {
                let frames = self.renderer.end();
                self.pending.extend(frames);
            }
            self.recorder.complete();
            self.done = true;
        } else {
            let provider = self.recorder.provider.clone();
            let err = GatewayError::Upstream {
                class: ErrorClass::Network,
                provider: provider.clone(),
                message: format!("{provider} closed the stream before it finished"),
                retry_after_secs: None,
            };
            // Account the partial usage the parser saw, but do not render a fake ending.
            for ev in &tail {
                self.recorder.observe(ev);
            }
            self.fail(
                ErrorClass::Network,
                "upstream closed the stream early",
                Some(err),
            );
        }
    }
}

/// A data payload that is a JSON chunk (not empty, not the `[DONE]` sentinel).
fn is_json_chunk(data: &str) -> bool {
    let d = data.trim();
    !d.is_empty() && d != "[DONE]"
}

/// Turn the state machine into the client's byte stream.
pub(crate) fn client_stream(state: StreamState) -> BoxStream<'static, Bytes> {
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(frame) = st.pending.pop_front() {
                return Some((Bytes::from(frame), st));
            }
            if st.done {
                return None;
            }
            match st.upstream.next().await {
                Some(Ok(chunk)) => {
                    let frames = st.sse.push(&chunk);
                    for f in &frames {
                        st.frame(f);
                    }
                }
                Some(Err(e)) => {
                    let provider = st.recorder.provider.clone();
                    let err = GatewayError::Upstream {
                        class: ErrorClass::Network,
                        provider,
                        message: e.to_string(),
                        retry_after_secs: None,
                    };
                    st.fail(ErrorClass::Network, &e.to_string(), Some(err));
                }
                None => st.upstream_ended(),
            }
        }
    })
    .boxed()
}
