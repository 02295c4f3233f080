//! Retry decisions for upstream calls: which failures are retried, how long to wait, and how an
//! upstream `Retry-After` is read. Pure functions (apart from the jitter source) so the rules
//! can be unit-tested without a network.
//!
//! Rules:
//! - Retryable: network failures (connect, send, timeouts, a body that broke while a
//!   non-streaming answer was read) and statuses whose class is retryable per
//!   `ErrorClass::classify_upstream` (429, 408, 5xx incl. Anthropic 529, and provider error
//!   types such as `overloaded_error`). Exception: an OpenAI `insufficient_quota` 429 is a
//!   billing state that no retry can fix, so it goes back at once.
//! - Wait: `base * 2^n` (n = retries already done) with ±25 % jitter, capped at `max_backoff`.
//!   An upstream `Retry-After` replaces the computed wait; if it is longer than
//!   `max_retry_after` the call is not retried at all, so the client receives the 429 with the
//!   upstream `Retry-After` instead of a gateway that hangs.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use metis_domain::error::ErrorClass;

use crate::config::RetryPolicy;

/// A failed attempt, before it is turned into an `UpstreamError`.
#[derive(Debug)]
pub(crate) enum Failure {
    Status {
        status: u16,
        body: Bytes,
        retry_after: Option<Duration>,
    },
    Network {
        message: String,
    },
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    RetryAfter(Duration),
    GiveUp,
}

/// Decide whether to retry after `retries_done` retries already happened.
pub(crate) fn decide(policy: &RetryPolicy, failure: &Failure, retries_done: u32) -> Decision {
    if retries_done >= policy.max_retries {
        return Decision::GiveUp;
    }
    match failure {
        Failure::Network { .. } => Decision::RetryAfter(backoff(policy, retries_done)),
        Failure::Status {
            status,
            body,
            retry_after,
        } => {
            if !status_is_retryable(*status, body) {
                return Decision::GiveUp;
            }
            match retry_after {
                Some(wait) if *wait > policy.max_retry_after => Decision::GiveUp,
                Some(wait) => Decision::RetryAfter(*wait),
                None => Decision::RetryAfter(backoff(policy, retries_done)),
            }
        }
    }
}

/// Whether an upstream error status (with its body) is worth another attempt.
pub(crate) fn status_is_retryable(status: u16, body: &[u8]) -> bool {
    if !ErrorClass::classify_upstream(status, body).is_retryable() {
        return false;
    }
    // `insufficient_quota` arrives as a 429 but means "out of credit": waiting cannot help.
    let quota_exhausted = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            let code = e.get("code").and_then(serde_json::Value::as_str);
            let ty = e.get("type").and_then(serde_json::Value::as_str);
            Some(code == Some("insufficient_quota") || ty == Some("insufficient_quota"))
        })
        .unwrap_or(false);
    !quota_exhausted
}

/// Exponential backoff with ±25 % jitter for retry number `n` (0-based), capped.
pub(crate) fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let factor = 2u32.checked_pow(n).unwrap_or(u32::MAX);
    let raw = policy.base_backoff.saturating_mul(factor);
    // `try_from_secs_f64` instead of `mul_f64`: the latter panics on overflow.
    Duration::try_from_secs_f64(raw.as_secs_f64() * jitter_factor())
        .map_or(policy.max_backoff, |d| d.min(policy.max_backoff))
}

/// A factor in [0.75, 1.25] from the OS random source (1.0 if it is unavailable).
fn jitter_factor() -> f64 {
    match getrandom::u32() {
        Ok(r) => 0.75 + 0.5 * (f64::from(r) / f64::from(u32::MAX)),
        Err(_) => 1.0,
    }
}

/// Parse a `Retry-After` header value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
/// A date in the past means "now" (zero). Unparseable values yield `None`.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // An absurd number of seconds is still "longer than we will wait".
        return Some(
            value
                .parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs),
        );
    }
    let date =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let target = SystemTime::from(date);
    Some(target.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whole seconds to forward to the client (rounded up, at least 1 when a wait was asked for).
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs();
    if wait.subsec_nanos() > 0 || secs == 0 {
        secs.saturating_add(1).max(1)
    } else {
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<u64>) -> Failure {
        Failure::Status {
            status,
            body: Bytes::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn retryable_statuses_match_the_classes() {
        for s in [429, 408, 500, 502, 503, 504, 529] {
            assert!(status_is_retryable(s, b""), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(!status_is_retryable(s, b""), "{s}");
        }
        let quota = br#"{"error":{"type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert!(!status_is_retryable(429, quota));
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let p = RetryPolicy::default();
        for n in 0..4 {
            let expected = 500.0 * f64::from(2u32.pow(n));
            let got = backoff(&p, n).as_secs_f64() * 1000.0;
            assert!(
                got >= expected * 0.75 - 1.0 && got <= expected * 1.25 + 1.0,
                "{n}: {got}"
            );
        }
        assert_eq!(backoff(&p, 20), Duration::from_secs(30));
        assert_eq!(backoff(&p, 40), Duration::from_secs(30));
        let huge = RetryPolicy {
            base_backoff: Duration::MAX,
            ..p
        };
        assert_eq!(backoff(&huge, 3), Duration::from_secs(30));
    }

    #[test]
    fn decisions_follow_the_policy() {
        let p = RetryPolicy::default();
        assert!(matches!(
            decide(&p, &status(503, None), 0),
            Decision::RetryAfter(_)
        ));
        assert_eq!(decide(&p, &status(503, None), 2), Decision::GiveUp);
        assert_eq!(decide(&p, &status(400, None), 0), Decision::GiveUp);
        assert_eq!(
            decide(&p, &status(429, Some(3)), 0),
            Decision::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(decide(&p, &status(429, Some(61)), 0), Decision::GiveUp);
        let net = Failure::Network {
            message: "refused".into(),
        };
        assert!(matches!(decide(&p, &net, 1), Decision::RetryAfter(_)));
        assert_eq!(decide(&RetryPolicy::none(), &net, 0), Decision::GiveUp);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 2015-10-21 07:27:50 UTC
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn forwarded_seconds_round_up() {
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(2500)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
