//! The scripting directives: `[...]` tokens in the last user message that choose what the
//! fake answers (status, tools, thinking, streams cut or broken, delays, usage).

/// Scripted behaviour parsed from `[...]` tokens in the last user message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `[tool:NAME]` — call tool NAME with [`TOOL_ARGUMENTS`](super::TOOL_ARGUMENTS).
    pub tool: Option<String>,
    /// `[think]` — (Anthropic) a signed thinking block before the text.
    pub think: bool,
    /// `[status:CODE]` — answer CODE with the provider's real error body.
    pub status: Option<u16>,
    /// `[fail-once:CODE]` — answer CODE the first time this exact text is seen.
    pub fail_once: Option<u16>,
    /// `[overflow]` (alias `[too-long]`) — the provider's real context-length 400, whose
    /// message is distinctive ([`ANTHROPIC_TOO_LONG_MESSAGE`], [`OPENAI_CONTEXT_LENGTH_MESSAGE`],
    /// [`RESPONSES_CONTEXT_LENGTH_MESSAGE`]) so a test can see it reach the client unchanged.
    ///
    /// [`ANTHROPIC_TOO_LONG_MESSAGE`]: super::ANTHROPIC_TOO_LONG_MESSAGE
    /// [`OPENAI_CONTEXT_LENGTH_MESSAGE`]: super::OPENAI_CONTEXT_LENGTH_MESSAGE
    /// [`RESPONSES_CONTEXT_LENGTH_MESSAGE`]: super::RESPONSES_CONTEXT_LENGTH_MESSAGE
    pub overflow: bool,
    /// `[garbage]` — 200 with a non-JSON body, or malformed SSE data.
    pub garbage: bool,
    /// `[cut]` — stream some deltas, then drop the connection.
    pub cut: bool,
    /// `[stream-error]` — stream some deltas, then a provider error frame (Responses API: a
    /// `response.failed` event).
    pub stream_error: bool,
    /// `[stream-error:event]` — as `[stream-error]`, but the Responses API sends an `error`
    /// event (the live API's nested shape) instead of `response.failed`. Same as
    /// `[stream-error]` for the other APIs.
    pub stream_error_event: bool,
    /// `[slow:MS]` — wait before the response head.
    pub slow_ms: Option<u64>,
    /// `[drip:MS]` — wait between stream frames.
    pub drip_ms: Option<u64>,
    /// `[long]` — a stream of [`LONG_STREAM_DELTAS`] deltas, [`LONG_STREAM_DELTA_MS`] apart.
    ///
    /// [`LONG_STREAM_DELTAS`]: super::LONG_STREAM_DELTAS
    /// [`LONG_STREAM_DELTA_MS`]: super::LONG_STREAM_DELTA_MS
    pub long: bool,
    /// `[cache]` — report cached input tokens in usage.
    pub cache: bool,
    /// `[split]` — send every SSE frame in 7-byte pieces (splitting lines and UTF-8
    /// sequences), so the reader must reassemble them.
    pub split: bool,
    /// `[pause:MS]` — one silence of MS after the first text delta of a stream.
    pub pause_ms: Option<u64>,
    /// `[length]` — the reply stops at the token limit (`max_tokens` / `length`).
    pub length: bool,
    /// `[crlf]` — end SSE lines with `\r\n` (allowed by the SSE spec, used by some servers).
    pub crlf: bool,
}

impl Directives {
    /// Parse every `[...]` token of `text`; unknown tokens are ignored.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut d = Directives::default();
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            let after = &rest[open + 1..];
            let Some(close) = after.find(']') else { break };
            let token = &after[..close];
            rest = &after[close + 1..];
            let (name, arg) = match token.split_once(':') {
                Some((n, a)) => (n.trim(), Some(a.trim())),
                None => (token.trim(), None),
            };
            let num = arg.and_then(|a| a.parse::<u64>().ok());
            match (name, arg) {
                ("tool", Some(a)) if !a.is_empty() => d.tool = Some(a.to_owned()),
                ("think", None) => d.think = true,
                ("status", Some(_)) => d.status = num.and_then(|n| u16::try_from(n).ok()),
                ("fail-once", Some(_)) => d.fail_once = num.and_then(|n| u16::try_from(n).ok()),
                ("overflow" | "too-long", None) => d.overflow = true,
                ("garbage", None) => d.garbage = true,
                ("cut", None) => d.cut = true,
                ("stream-error", None) => d.stream_error = true,
                ("stream-error", Some("event")) => {
                    d.stream_error = true;
                    d.stream_error_event = true;
                }
                ("slow", Some(_)) => d.slow_ms = num,
                ("drip", Some(_)) => d.drip_ms = num,
                ("long", None) => d.long = true,
                ("cache", None) => d.cache = true,
                ("split", None) => d.split = true,
                ("crlf", None) => d.crlf = true,
                ("length", None) => d.length = true,
                ("pause", Some(_)) => d.pause_ms = num,
                _ => {}
            }
        }
        d
    }
}
