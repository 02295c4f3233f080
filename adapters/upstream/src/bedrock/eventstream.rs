//! The AWS binary event-stream framing (`application/vnd.amazon.eventstream`) that
//! ConverseStream answers in, decoded and re-framed as SSE for the core.
//!
//! A message is: total length (u32 BE), headers length (u32 BE), CRC32 of those 8 bytes, the
//! headers, the payload, and a CRC32 of everything before it. Both checksums are verified: a
//! corrupted frame ends the stream with an error instead of feeding garbage to a client.
//! Each message becomes `event: <:event-type>\ndata: <payload>\n\n`; an exception message
//! (`:message-type: exception`) is named by its `:exception-type`, an error message
//! (`:message-type: error`) by its `:error-code`.

/// Messages larger than this are refused (the service's own limit is far below it); it keeps
/// a corrupted length field from making the decoder buffer without bound.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Prelude (12 bytes) plus the trailing CRC (4 bytes).
const MIN_MESSAGE: usize = 16;

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as the event stream uses.
#[must_use]
pub(crate) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = table();
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

const fn table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Vec<u8>,
}

/// A header value; only strings carry meaning for Bedrock, the rest are decoded to be skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderValue {
    String(String),
    Other,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// The SSE frame of this message (see the module docs).
    pub(crate) fn to_sse(&self) -> String {
        let name = match self.header(":message-type") {
            Some("exception") => self.header(":exception-type").unwrap_or("unknownException"),
            Some("error") => self.header(":error-code").unwrap_or("unknownException"),
            _ => self.header(":event-type").unwrap_or("unknown"),
        };
        let mut out = format!("event: {name}\n");
        let payload = String::from_utf8_lossy(&self.payload);
        for line in payload.lines() {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        if payload.is_empty() {
            out.push_str("data: {}\n");
        }
        out.push('\n');
        out
    }
}

/// Incremental decoder: feed bytes as they arrive, take whole messages out.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Append `chunk` and return every message it completed.
    ///
    /// # Errors
    /// A checksum mismatch or a malformed message, naming which.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<Message>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            if self.buf.len() < 12 {
                return Ok(out);
            }
            let total = be32(&self.buf[0..4]) as usize;
            let headers_len = be32(&self.buf[4..8]) as usize;
            if crc32(&self.buf[0..8]) != be32(&self.buf[8..12]) {
                return Err("event stream prelude CRC mismatch".to_owned());
            }
            if !(MIN_MESSAGE..=MAX_MESSAGE).contains(&total) || headers_len > total - MIN_MESSAGE {
                return Err(format!(
                    "event stream message has impossible lengths (total {total}, headers {headers_len})"
                ));
            }
            if self.buf.len() < total {
                return Ok(out);
            }
            let frame: Vec<u8> = self.buf.drain(..total).collect();
            if crc32(&frame[..total - 4]) != be32(&frame[total - 4..]) {
                return Err("event stream message CRC mismatch".to_owned());
            }
            let headers = parse_headers(&frame[12..12 + headers_len])?;
            out.push(Message {
                headers,
                payload: frame[12 + headers_len..total - 4].to_vec(),
            });
        }
    }

    /// Whether bytes of an unfinished message are left (the stream was cut mid-message).
    pub(crate) fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn parse_headers(mut b: &[u8]) -> Result<Vec<(String, HeaderValue)>, String> {
    let bad = || "event stream header is malformed".to_owned();
    let mut out = Vec::new();
    while !b.is_empty() {
        let name_len = usize::from(b[0]);
        let name = b.get(1..1 + name_len).ok_or_else(bad)?;
        let name = String::from_utf8_lossy(name).into_owned();
        b = &b[1 + name_len..];
        let (&ty, rest) = b.split_first().ok_or_else(bad)?;
        b = rest;
        let fixed = |n: usize, b: &mut &[u8]| -> Result<(), String> {
            if b.len() < n {
                return Err(bad());
            }
            *b = &b[n..];
            Ok(())
        };
        let value = match ty {
            0 | 1 => HeaderValue::Other,
            2 => {
                fixed(1, &mut b)?;
                HeaderValue::Other
            }
            3 => {
                fixed(2, &mut b)?;
                HeaderValue::Other
            }
            4 => {
                fixed(4, &mut b)?;
                HeaderValue::Other
            }
            5 | 8 => {
                fixed(8, &mut b)?;
                HeaderValue::Other
            }
            9 => {
                fixed(16, &mut b)?;
                HeaderValue::Other
            }
            6 | 7 => {
                let len_bytes = b.get(0..2).ok_or_else(bad)?;
                let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
                let v = b.get(2..2 + len).ok_or_else(bad)?;
                let value = if ty == 7 {
                    HeaderValue::String(String::from_utf8_lossy(v).into_owned())
                } else {
                    HeaderValue::Other
                };
                b = &b[2 + len..];
                value
            }
            other => return Err(format!("event stream header type {other} is unknown")),
        };
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encode a message with string headers (what the fake upstream does too).
    pub(crate) fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        for (n, v) in headers {
            h.push(n.len() as u8);
            h.extend_from_slice(n.as_bytes());
            h.push(7);
            h.extend_from_slice(&(v.len() as u16).to_be_bytes());
            h.extend_from_slice(v.as_bytes());
        }
        let total = 12 + h.len() + payload.len() + 4;
        let mut m = Vec::new();
        m.extend_from_slice(&(total as u32).to_be_bytes());
        m.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let c = crc32(&m);
        m.extend_from_slice(&c.to_be_bytes());
        m.extend_from_slice(&h);
        m.extend_from_slice(payload);
        let c = crc32(&m);
        m.extend_from_slice(&c.to_be_bytes());
        m
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn decodes_across_any_split_and_reframes_as_sse() {
        let mut bytes = encode(
            &[
                (":event-type", "contentBlockDelta"),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            br#"{"contentBlockIndex":0,"delta":{"text":"hi"}}"#,
        );
        bytes.extend(encode(
            &[
                (":exception-type", "throttlingException"),
                (":message-type", "exception"),
            ],
            br#"{"message":"slow down"}"#,
        ));
        for split in 0..bytes.len() {
            let mut d = Decoder::default();
            let mut msgs = d.push(&bytes[..split]).unwrap();
            msgs.extend(d.push(&bytes[split..]).unwrap());
            assert!(!d.has_partial());
            assert_eq!(msgs.len(), 2, "split at {split}");
            assert_eq!(
                msgs[0].to_sse(),
                "event: contentBlockDelta\ndata: {\"contentBlockIndex\":0,\"delta\":{\"text\":\"hi\"}}\n\n"
            );
            assert_eq!(
                msgs[1].to_sse(),
                "event: throttlingException\ndata: {\"message\":\"slow down\"}\n\n"
            );
        }
    }

    #[test]
    fn both_checksums_are_checked() {
        let good = encode(
            &[(":event-type", "messageStop")],
            br#"{"stopReason":"end_turn"}"#,
        );
        let mut prelude = good.clone();
        prelude[3] ^= 1;
        assert_eq!(
            Decoder::default().push(&prelude).unwrap_err(),
            "event stream prelude CRC mismatch"
        );
        let mut body = good.clone();
        let n = body.len();
        body[n - 6] ^= 0x20;
        assert_eq!(
            Decoder::default().push(&body).unwrap_err(),
            "event stream message CRC mismatch"
        );
        let mut d = Decoder::default();
        assert!(d.push(&good[..good.len() - 1]).unwrap().is_empty());
        assert!(d.has_partial());
    }
}
