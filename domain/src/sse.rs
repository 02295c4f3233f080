//! Incremental Server-Sent Events parsing and framing.
//!
//! [`SseParser`] turns upstream bytes, cut into chunks anywhere by the network, into
//! [`SseFrame`]s following the WHATWG event-stream rules the gateway needs:
//! - lines end in `\n`, `\r\n` or `\r` (a `\r\n` split across two chunks is one line end);
//! - `data:` lines accumulate, joined with `\n`; a single space after the colon is dropped;
//! - `event:` names the frame; lines starting with `:` are comments and ignored; `id:`,
//!   `retry:` and unknown fields are ignored;
//! - a blank line dispatches the frame, but only if it had at least one `data` line;
//! - a UTF-8 byte order mark at the very start is skipped.
//!
//! Invariant: the frames produced do not depend on where the input was split. Bytes are
//! buffered until a line end, so a multi-byte UTF-8 sequence cut by a chunk boundary is
//! decoded whole; invalid UTF-8 becomes U+FFFD rather than an error.

use std::borrow::Cow;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseFrame {
    /// The `event:` name, if the frame had a non-empty one.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Incremental parser; see the module docs.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line whose end has not arrived yet.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting the next chunk belongs to it.
    skip_lf: bool,
    /// A line was completed already (the BOM can only precede the first one).
    seen_line: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the next chunk; returns the frames it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseFrame> {
        let mut frames = Vec::new();
        let mut bytes = chunk;
        if self.skip_lf && !bytes.is_empty() {
            self.skip_lf = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (head, tail) = bytes.split_at(end);
            let line: Cow<'_, [u8]> = if self.line.is_empty() {
                Cow::Borrowed(head)
            } else {
                self.line.extend_from_slice(head);
                Cow::Owned(std::mem::take(&mut self.line))
            };
            self.process_line(&line, &mut frames);
            bytes = match tail {
                [b'\r', b'\n', rest @ ..] => rest,
                [b'\r'] => {
                    self.skip_lf = true;
                    &[]
                }
                [_, rest @ ..] => rest,
                [] => &[],
            };
        }
        self.line.extend_from_slice(bytes);
        frames
    }

    /// End of input: a trailing line without its line end is processed, and a frame still
    /// waiting for its blank line is dispatched (lenient: some servers omit the final blank
    /// line before closing).
    pub fn finish(&mut self) -> Option<SseFrame> {
        let mut frames = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, &mut frames);
        }
        self.skip_lf = false;
        self.dispatch(&mut frames);
        frames.pop()
    }

    fn process_line(&mut self, raw: &[u8], frames: &mut Vec<SseFrame>) {
        let raw = if self.seen_line {
            raw
        } else {
            self.seen_line = true;
            raw.strip_prefix(BOM).unwrap_or(raw)
        };
        if raw.is_empty() {
            self.dispatch(frames);
            return;
        }
        if raw.starts_with(b":") {
            return;
        }
        let text = String::from_utf8_lossy(raw);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.event = (!value.is_empty()).then(|| value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, frames: &mut Vec<SseFrame>) {
        let event = self.event.take();
        if std::mem::take(&mut self.has_data) {
            frames.push(SseFrame {
                event,
                data: std::mem::take(&mut self.data),
            });
        }
    }
}

/// Serialise one frame: an optional `event:` line, one `data:` line per line of `data`, and
/// the blank line that dispatches it.
#[must_use]
pub fn format_frame(event: Option<&str>, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseFrame> {
        let mut p = SseParser::new();
        let mut out: Vec<SseFrame> = chunks.iter().flat_map(|c| p.push(c)).collect();
        out.extend(p.finish());
        out
    }

    fn frame(event: Option<&str>, data: &str) -> SseFrame {
        SseFrame {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    #[test]
    fn all_line_endings_and_multiline_data() {
        let input =
            b"event: a\r\ndata: one\r\ndata:two\r\n\r\ndata: x\rdata:  y\r\r: comment\ndata: z\n\n";
        assert_eq!(
            parse_all(&[input]),
            vec![
                frame(Some("a"), "one\ntwo"),
                frame(None, "x\n y"),
                frame(None, "z")
            ]
        );
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_end() {
        let frames = parse_all(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(frames, vec![frame(None, "a\nb")]);
    }

    #[test]
    fn utf8_split_inside_a_character() {
        let bytes = "data: héllo ✓\n\n".as_bytes();
        let frames = parse_all(&[&bytes[..8], &bytes[8..15], &bytes[15..]]);
        assert_eq!(frames, vec![frame(None, "héllo ✓")]);
    }

    #[test]
    fn frames_without_data_are_not_dispatched_and_bom_is_skipped() {
        let frames = parse_all(&[b"\xEF\xBB", b"\xBFevent: ping\n\nid: 3\ndata\n\n"]);
        assert_eq!(frames, vec![frame(None, "")]);
    }

    #[test]
    fn finish_flushes_an_unterminated_frame() {
        assert_eq!(parse_all(&[b"data: [DONE]"]), vec![frame(None, "[DONE]")]);
        assert_eq!(parse_all(&[b"data: a\n"]), vec![frame(None, "a")]);
    }

    #[test]
    fn format_frame_round_trips() {
        let s = format_frame(Some("message_start"), "a\nb");
        assert_eq!(s, "event: message_start\ndata: a\ndata: b\n\n");
        assert_eq!(
            parse_all(&[s.as_bytes()]),
            vec![frame(Some("message_start"), "a\nb")]
        );
    }

    fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            "[a-z]{0,5}".prop_map(|e| format!("event: {e}")),
            "[ -~é✓😀]{0,12}".prop_map(|d| format!("data: {d}")),
            "[ -~]{0,8}".prop_map(|d| format!("data:{d}")),
            "[ -~]{0,8}".prop_map(|c| format!(":{c}")),
            Just(String::new()),
            Just("id: 7".to_owned()),
        ];
        let ending = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
        proptest::collection::vec((line, ending), 0..30).prop_map(|lines| {
            lines
                .into_iter()
                .flat_map(|(l, e)| format!("{l}{e}").into_bytes())
                .collect()
        })
    }

    proptest! {
        #[test]
        fn splitting_the_stream_anywhere_yields_the_same_frames(
            bytes in stream_strategy(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let whole = parse_all(&[&bytes]);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for p in points {
                chunks.push(&bytes[prev..p]);
                prev = p;
            }
            chunks.push(&bytes[prev..]);
            prop_assert_eq!(parse_all(&chunks), whole);
        }
    }
}
