//! What the load generator reads out of a body besides "is it complete": the number of SSE
//! events in a streamed response (so CPU can be divided per forwarded chunk), and one
//! counter from a Prometheus text exposition (the gateway's dropped-event count).
//!
//! Invariants:
//! - An SSE event is counted when its terminating blank line has arrived (`\n\n`, `\r\n\r\n`
//!   or `\r\r`, as the SSE spec allows); a trailing event without one is not counted, the
//!   same way a browser would not dispatch it.
//! - A counter is read only from a sample line whose metric name matches exactly and that
//!   has no labels; a missing or unparsable value is `None`, never 0.

/// SSE events in `body`: blank-line terminated blocks that hold at least one non-comment
/// line (a keep-alive `: ping` block is not a chunk of the answer).
#[must_use]
pub fn sse_events(body: &[u8]) -> u64 {
    let mut events = 0;
    let mut has_field = false;
    // Split into lines on \r\n, \n or \r; an empty line ends the current block.
    let mut i = 0;
    let mut start = 0;
    while i <= body.len() {
        let at_end = i == body.len();
        let c = if at_end { b'\n' } else { body[i] };
        if c == b'\n' || c == b'\r' {
            let line = &body[start..i];
            if at_end {
                // An unterminated last line ends no block.
                break;
            }
            if line.is_empty() {
                if has_field {
                    events += 1;
                }
                has_field = false;
            } else if line[0] != b':' {
                has_field = true;
            }
            if c == b'\r' && body.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            start = i + 1;
        }
        i += 1;
    }
    events
}

/// The value of the unlabelled sample `name` in a Prometheus text exposition.
#[must_use]
pub fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_of_openai_and_anthropic_streams() {
        let openai = b"data: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata: [DONE]\n\n";
        assert_eq!(sse_events(openai), 3);
        let anthropic =
            b"event: message_start\ndata: {}\n\nevent: ping\ndata: {}\n\nevent: message_stop\ndata: {}\n\n";
        assert_eq!(sse_events(anthropic), 3);
        let crlf = b"data: x\r\n\r\ndata: y\r\n\r\n";
        assert_eq!(sse_events(crlf), 2);
        let cr = b"data: x\r\rdata: y\r\r";
        assert_eq!(sse_events(cr), 2);
    }

    #[test]
    fn sse_events_skip_comments_blank_runs_and_an_unterminated_tail() {
        assert_eq!(sse_events(b": keep-alive\n\ndata: x\n\n\n\n"), 1);
        assert_eq!(sse_events(b"data: x\n\ndata: partial"), 1);
        assert_eq!(sse_events(b"data: x\n\ndata: y\n"), 1);
        assert_eq!(sse_events(b""), 0);
        assert_eq!(sse_events(b"{\"object\":\"chat.completion\"}"), 0);
    }

    #[test]
    fn prometheus_value_reads_the_exact_unlabelled_sample() {
        let text = "# HELP metis_trace_events_overflowed_total Events refused.\n\
                    # TYPE metis_trace_events_overflowed_total counter\n\
                    metis_trace_events_overflowed_total_extra 9\n\
                    metis_trace_events_overflowed_total{store=\"x\"} 8\n\
                    metis_trace_events_overflowed_total 42\n\
                    metis_trace_events_written_total 1000\n";
        assert_eq!(
            prometheus_value(text, "metis_trace_events_overflowed_total"),
            Some(42.0)
        );
        assert_eq!(
            prometheus_value(text, "metis_trace_events_written_total"),
            Some(1000.0)
        );
        assert_eq!(prometheus_value(text, "metis_missing_total"), None);
        assert_eq!(prometheus_value("metis_x abc\n", "metis_x"), None);
    }
}
