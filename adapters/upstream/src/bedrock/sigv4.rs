//! AWS Signature Version 4 for one request (header form, `AWS4-HMAC-SHA256`).
//!
//! The canonical URI is the request path as sent (already percent-encoded, e.g. `%3A` in a
//! Bedrock model id) encoded once more, which is what every AWS service except S3 expects.
//! The signature covers exactly the headers returned by [`sign`] plus `host`; anything else
//! sent (`accept`, `traceparent`) is not signed, so it cannot break the signature.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Static credentials for one signature. `Debug` never prints the secret or the token.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// What is signed: method, host (with a non-default port), encoded path, query, and the
/// content type of the body.
pub(crate) struct SignInput<'a> {
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    pub region: &'a str,
    pub service: &'a str,
    /// Send (and sign) `x-amz-content-sha256`; Bedrock calls do, some AWS examples do not.
    pub content_sha256_header: bool,
}

/// The headers to add: `authorization`, `x-amz-date`, `x-amz-content-sha256` and, with a
/// session token, `x-amz-security-token`.
pub(crate) fn sign(
    input: &SignInput<'_>,
    creds: &Credentials,
    now: OffsetDateTime,
) -> Vec<(&'static str, String)> {
    let amz_date = amz_date(now);
    let date = &amz_date[..8];
    let payload_hash = hex::encode(Sha256::digest(input.body));
    let mut headers: Vec<(&'static str, String)> = Vec::new();
    if let Some(ct) = input.content_type {
        headers.push(("content-type", ct.to_owned()));
    }
    headers.push(("host", input.host.to_owned()));
    if input.content_sha256_header {
        headers.push(("x-amz-content-sha256", payload_hash.clone()));
    }
    headers.push(("x-amz-date", amz_date.clone()));
    if let Some(token) = &creds.session_token {
        headers.push(("x-amz-security-token", token.clone()));
    }
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let canonical_headers: String = headers
        .iter()
        .map(|(n, v)| format!("{n}:{}\n", v.trim()))
        .collect();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        input.method,
        uri_encode(input.path, false),
        canonical_query(input.query),
    );
    let scope = format!("{date}/{}/{}/aws4_request", input.region, input.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let key = signing_key(&creds.secret_access_key, date, input.region, input.service);
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    let mut out: Vec<(&'static str, String)> = headers
        .into_iter()
        .filter(|(n, _)| *n != "host" && *n != "content-type")
        .collect();
    out.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    out
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
pub(crate) fn amz_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Query parameters sorted by name then value, each side URI-encoded.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(k, true), uri_encode(v, true))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 3986 encoding of everything but the unreserved characters (and `/` unless
/// `encode_slash`), upper-case hex, as SigV4 requires.
pub(crate) fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn example() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    #[test]
    fn signing_key_matches_the_aws_documented_example() {
        // AWS docs, "Examples of how to derive a signing key for Signature Version 4".
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn signature_matches_the_aws_iam_list_users_example() {
        // AWS docs, "Create a signed AWS API request" (IAM ListUsers, 20150830T123600Z).
        let input = SignInput {
            method: "GET",
            host: "iam.amazonaws.com",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            content_type: Some("application/x-www-form-urlencoded; charset=utf-8"),
            body: b"",
            region: "us-east-1",
            service: "iam",
            content_sha256_header: false,
        };
        let headers = sign(&input, &example(), datetime!(2015-08-30 12:36:00 UTC));
        let auth = headers
            .iter()
            .find(|(n, _)| *n == "authorization")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn session_token_is_signed_and_sent() {
        let mut creds = example();
        creds.session_token = Some("tok".into());
        let input = SignInput {
            method: "POST",
            host: "bedrock-runtime.us-east-1.amazonaws.com",
            path: "/model/anthropic.claude-haiku-4-5-20251001-v1%3A0/converse",
            query: "",
            content_type: Some("application/json"),
            body: b"{}",
            region: "us-east-1",
            service: "bedrock",
            content_sha256_header: true,
        };
        let headers = sign(&input, &creds, datetime!(2026-01-02 03:04:05 UTC));
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("x-amz-date").as_deref(), Some("20260102T030405Z"));
        assert_eq!(get("x-amz-security-token").as_deref(), Some("tok"));
        assert!(get("authorization").unwrap_or_default().contains(
            "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"
        ));
        assert!(!format!("{creds:?}").contains("EXAMPLEKEY"));
    }

    #[test]
    fn paths_are_encoded_again() {
        assert_eq!(
            uri_encode("/model/a%3A0/converse", false),
            "/model/a%253A0/converse"
        );
        assert_eq!(uri_encode("a b/c", true), "a%20b%2Fc");
    }
}
