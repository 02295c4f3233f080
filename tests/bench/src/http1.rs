//! HTTP/1.1 response framing for the load generator.
//!
//! Invariants:
//! - [`parse_head`] looks only at complete heads (up to the blank line) and returns `None`
//!   until one has arrived; it never consumes body bytes.
//! - [`ChunkedDecoder`] accepts its input in pieces of any size (a read may stop anywhere,
//!   even inside a chunk-size line or a CRLF) and reports how many bytes belong to the body,
//!   so bytes after the terminating chunk are left for the next response.

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n`.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body runs until the server closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
    /// The server asked to close the connection (`Connection: close` or HTTP/1.0 without
    /// keep-alive).
    pub close: bool,
    /// Bytes of the head including the blank line.
    pub len: usize,
}

/// A malformed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ParseError {}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

fn parse_usize(b: &[u8]) -> Option<usize> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Parse the head at the start of `buf`, or `Ok(None)` if it is not complete yet.
///
/// # Errors
/// A malformed status line or `Content-Length`.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ParseError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err(ParseError("response head larger than 64 KiB"));
        }
        return Ok(None);
    };
    let head = &buf[..end];
    let mut lines = head.split(|&c| c == b'\n').map(trim);
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(|&c| c == b' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with(b"HTTP/1.") {
        return Err(ParseError("not an HTTP/1.x status line"));
    }
    let http10 = version == b"HTTP/1.0";
    let status = parts
        .next()
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(ParseError("bad status code"))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = http10;
    for line in lines {
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            length = Some(parse_usize(value).ok_or(ParseError("bad content-length"))?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value
                .split(|&c| c == b',')
                .any(|v| trim(v).eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            if value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if value.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        }
    }
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let framing = if no_body {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Some(Head {
        status,
        framing,
        close: close || framing == Framing::UntilClose,
        len: end + 4,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size (and any extension) up to CRLF.
    Size {
        value: usize,
        digits: usize,
        in_ext: bool,
    },
    /// Inside chunk data.
    Data(usize),
    /// The CRLF after chunk data (`seen_cr` once the CR arrived).
    DataEnd {
        seen_cr: bool,
    },
    /// After the zero chunk: trailer lines until an empty one. `line_len` counts the bytes of
    /// the current line before its CR.
    Trailer {
        line_len: usize,
        seen_cr: bool,
    },
    Done,
}

/// Incremental decoder of a chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: State::Size {
                value: 0,
                digits: 0,
                in_ext: false,
            },
        }
    }
}

/// What one [`ChunkedDecoder::feed`] call saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fed {
    /// Input bytes that belong to this body.
    pub consumed: usize,
    /// Payload bytes among them.
    pub payload: usize,
}

impl ChunkedDecoder {
    /// Whether the terminating chunk and trailers have been read.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consume `input` (up to the end of the body). Payload bytes are appended to `out` when
    /// given.
    ///
    /// # Errors
    /// A malformed chunk size or a missing CRLF after chunk data.
    pub fn feed(&mut self, input: &[u8], mut out: Option<&mut Vec<u8>>) -> Result<Fed, ParseError> {
        let mut i = 0;
        let mut payload = 0;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::Size {
                    value,
                    digits,
                    in_ext,
                } => {
                    let c = input[i];
                    i += 1;
                    if c == b'\n' {
                        if digits == 0 {
                            return Err(ParseError("empty chunk size"));
                        }
                        self.state = if value == 0 {
                            State::Trailer {
                                line_len: 0,
                                seen_cr: false,
                            }
                        } else {
                            State::Data(value)
                        };
                    } else if in_ext || c == b'\r' {
                        // Extensions and the CR before LF are ignored.
                    } else if c == b';' || c == b' ' || c == b'\t' {
                        self.state = State::Size {
                            value,
                            digits,
                            in_ext: true,
                        };
                    } else {
                        let d = (c as char)
                            .to_digit(16)
                            .ok_or(ParseError("bad chunk size digit"))?;
                        if digits >= 15 {
                            return Err(ParseError("chunk size too large"));
                        }
                        self.state = State::Size {
                            value: value * 16 + d as usize,
                            digits: digits + 1,
                            in_ext,
                        };
                    }
                }
                State::Data(left) => {
                    let take = left.min(input.len() - i);
                    if let Some(o) = out.as_deref_mut() {
                        o.extend_from_slice(&input[i..i + take]);
                    }
                    i += take;
                    payload += take;
                    self.state = if take == left {
                        State::DataEnd { seen_cr: false }
                    } else {
                        State::Data(left - take)
                    };
                }
                State::DataEnd { seen_cr } => {
                    let c = input[i];
                    i += 1;
                    match (seen_cr, c) {
                        (false, b'\r') => self.state = State::DataEnd { seen_cr: true },
                        (_, b'\n') => {
                            self.state = State::Size {
                                value: 0,
                                digits: 0,
                                in_ext: false,
                            };
                        }
                        _ => return Err(ParseError("missing CRLF after chunk data")),
                    }
                }
                State::Trailer { line_len, seen_cr } => {
                    let c = input[i];
                    i += 1;
                    self.state = match c {
                        b'\n' if line_len == 0 => State::Done,
                        b'\n' => State::Trailer {
                            line_len: 0,
                            seen_cr: false,
                        },
                        b'\r' => State::Trailer {
                            line_len,
                            seen_cr: true,
                        },
                        _ => State::Trailer {
                            line_len: line_len + 1 + usize::from(seen_cr),
                            seen_cr: false,
                        },
                    };
                }
            }
        }
        Ok(Fed {
            consumed: i,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_with_length_chunked_and_close() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 12\r\n\r\n{\"a\":1}";
        let h = parse_head(r).ok().flatten();
        assert_eq!(
            h,
            Some(Head {
                status: 200,
                framing: Framing::Length(12),
                close: false,
                len: r.len() - 7,
            })
        );
        let r = b"HTTP/1.1 429 Too Many Requests\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n";
        let h = parse_head(r).ok().flatten();
        assert_eq!(
            h.map(|h| (h.status, h.framing, h.close)),
            Some((429, Framing::Chunked, true))
        );
        let r = b"HTTP/1.0 200 OK\r\n\r\n";
        let h = parse_head(r).ok().flatten();
        assert_eq!(
            h.map(|h| (h.framing, h.close)),
            Some((Framing::UntilClose, true))
        );
        let r = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            parse_head(r).ok().flatten().map(|h| h.framing),
            Some(Framing::Length(0))
        );
    }

    #[test]
    fn incomplete_and_malformed_heads() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Len"), Ok(None));
        assert!(parse_head(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    fn decode_in_pieces(body: &[u8], piece: usize) -> (Vec<u8>, usize, bool) {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut consumed = 0;
        for part in body.chunks(piece) {
            let Ok(fed) = d.feed(part, Some(&mut out)) else {
                return (out, consumed, false);
            };
            consumed += fed.consumed;
            if d.is_done() {
                break;
            }
        }
        (out, consumed, d.is_done())
    }

    #[test]
    fn chunked_bodies_in_any_split() {
        let body = b"7\r\ndata: a\r\n1a;ext=1\r\ndata: [DONE]\n\nxxxxxxxxxxxx\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1";
        let total = body.len() - b"HTTP/1.1".len();
        for piece in 1..=body.len() {
            let (out, consumed, done) = decode_in_pieces(body, piece);
            assert!(done, "piece size {piece}");
            assert_eq!(out, b"data: adata: [DONE]\n\nxxxxxxxxxxxx".to_vec());
            assert_eq!(consumed, total, "piece size {piece}");
        }
    }

    #[test]
    fn chunked_errors() {
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(b"zz\r\n", None).is_err());
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(b"2\r\nabX", None).is_err());
        let mut d = ChunkedDecoder::default();
        assert!(d.feed(b"\r\n", None).is_err());
    }
}
