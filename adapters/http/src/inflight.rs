//! A bound on the memory of the requests being handled at once
//! (`--max-inflight-request-memory`).
//!
//! A request body is buffered, parsed into JSON values, translated into the canonical request
//! and serialised again for the upstream; every JSON object costs far more parsed than its
//! text. Measured on this gateway (peak RSS growth while one request is handled): 9.9 MiB of
//! 296,597 two-field messages ≈ 390 MiB; 9.9 MiB in 10 long messages ≈ 70 MiB; 1 MiB of
//! 29,959 short messages ≈ 39 MiB. So a request is charged an estimate of that cost:
//!
//! ```text
//! cost = 8 × body bytes + 1 KiB × JSON objects in it (counted as `{` bytes)
//! ```
//!
//! in two steps against one shared budget: `8 × Content-Length` when the request arrives,
//! before anything is read (`--max-body-bytes` for a body of undeclared length), then the
//! rest once the body is read and its objects counted, before it is parsed. A request that
//! does not fit gets an immediate 503 JSON envelope with `Retry-After: 1`. A request whose
//! estimate exceeds the whole budget is charged the whole budget (it runs alone rather than
//! never). Without this bound, 30 bodies of 9.9 MiB at once took the process past 1 GiB.
//!
//! Reservations are RAII: everything a request reserved is returned when its handler's
//! answer is ready (the parsed request and its upstream copy are dropped by then; a streamed
//! answer holds nothing) or when the handler is dropped (client gone, error), so nothing can
//! leak.

use crate::reply::error_response;
use metis_domain::canonical::Shape;
use metis_domain::error::GatewayError;
use metis_ports::metrics::Metrics;
use poem::http::{HeaderValue, header};
use poem::{Request, Response};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Estimated bytes of memory per body byte (buffer, parsed strings, canonical copy, upstream
/// body).
pub const COST_PER_BODY_BYTE: u64 = 8;
/// Estimated bytes of memory per JSON object (map, keys and canonical structures).
pub const COST_PER_OBJECT: u64 = 1024;

/// The budget is counted in KiB (one semaphore permit per KiB).
const UNIT: u64 = 1024;

/// The shared budget of request memory in flight.
#[derive(Clone)]
pub struct RequestBudget {
    permits: Arc<Semaphore>,
    limit_bytes: u64,
    max_body_bytes: u64,
    metrics: Arc<dyn Metrics>,
}

/// What one request holds (shared by the middleware's guard and the request extension).
struct Held {
    budget: RequestBudget,
    permits: Mutex<Vec<OwnedSemaphorePermit>>,
    /// Bytes reserved so far.
    bytes: std::sync::atomic::AtomicU64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let bytes = self.bytes.load(std::sync::atomic::Ordering::Acquire);
        self.budget
            .metrics
            .inflight_body_bytes(-i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// A request's reservation. Dropping every clone returns it.
#[derive(Clone)]
pub struct Reservation(Arc<Held>);

fn shape_of(req: &Request) -> Shape {
    if req.uri().path().starts_with("/v1/messages") {
        Shape::Anthropic
    } else {
        Shape::OpenAi
    }
}

impl RequestBudget {
    /// A budget of `limit_bytes`; bodies of undeclared length are first charged as if they
    /// were `max_body_bytes` long.
    #[must_use]
    pub fn new(limit_bytes: u64, max_body_bytes: u64, metrics: Arc<dyn Metrics>) -> Self {
        let units = usize::try_from(limit_bytes.div_ceil(UNIT))
            .unwrap_or(Semaphore::MAX_PERMITS)
            .clamp(1, Semaphore::MAX_PERMITS);
        RequestBudget {
            permits: Arc::new(Semaphore::new(units)),
            limit_bytes,
            max_body_bytes,
            metrics,
        }
    }

    /// Take `bytes` more for `held` (capped so that no request holds more than the whole
    /// budget). False when they are not available now.
    fn take(&self, held: &Held, bytes: u64) -> bool {
        use std::sync::atomic::Ordering;
        let have = held.bytes.load(Ordering::Acquire);
        let wanted = have.saturating_add(bytes).min(self.limit_bytes);
        let more_units = wanted.div_ceil(UNIT).saturating_sub(have.div_ceil(UNIT));
        if more_units > 0 {
            let Ok(units) = u32::try_from(more_units) else {
                return false;
            };
            let Ok(permit) = Arc::clone(&self.permits).try_acquire_many_owned(units) else {
                return false;
            };
            match held.permits.lock() {
                Ok(mut p) => p.push(permit),
                Err(poisoned) => poisoned.into_inner().push(permit),
            }
        }
        let added = wanted.saturating_sub(have);
        held.bytes.fetch_add(added, Ordering::AcqRel);
        self.metrics
            .inflight_body_bytes(i64::try_from(added).unwrap_or(i64::MAX));
        true
    }

    fn refusal(&self, req: &Request, wanted: u64) -> Box<Response> {
        self.metrics.refused("body_memory");
        let err = GatewayError::Unavailable {
            message: format!(
                "the gateway is handling as much request data as it may hold at once (--max-inflight-request-memory {} bytes; this request needs about {wanted}); retry shortly",
                self.limit_bytes
            ),
        };
        let mut resp = error_response(&err, shape_of(req));
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        Box::new(resp)
    }

    /// Reserve the first part of `req`'s cost (its body buffer), before anything is read.
    /// `Ok(None)` for a request without a body. The reservation is also stored in the
    /// request's extensions, where [`charge_parsed`] finds it.
    ///
    /// # Errors
    /// The 503 answer (JSON in the path's shape, `Retry-After: 1`) when the budget cannot
    /// take it now.
    pub fn reserve(&self, req: &mut Request) -> Result<Option<Reservation>, Box<Response>> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = match declared {
            // A larger one is refused with 413 before being read.
            Some(n) => n.min(self.max_body_bytes),
            None if req.headers().contains_key(header::TRANSFER_ENCODING) => self.max_body_bytes,
            None => 0,
        };
        if body == 0 {
            return Ok(None);
        }
        let held = Arc::new(Held {
            budget: self.clone(),
            permits: Mutex::new(Vec::new()),
            bytes: std::sync::atomic::AtomicU64::new(0),
        });
        let cost = body.saturating_mul(COST_PER_BODY_BYTE);
        if !self.take(&held, cost) {
            return Err(self.refusal(req, cost));
        }
        let reservation = Reservation(held);
        req.extensions_mut().insert(reservation.clone());
        Ok(Some(reservation))
    }
}

/// The estimated memory cost of handling `body` (see the module docs).
#[must_use]
pub fn estimated_cost(body: &[u8]) -> u64 {
    let objects = body.iter().filter(|b| **b == b'{').count() as u64;
    (body.len() as u64)
        .saturating_mul(COST_PER_BODY_BYTE)
        .saturating_add(objects.saturating_mul(COST_PER_OBJECT))
}

/// Once `body` is read and before it is parsed: reserve the rest of its estimated cost on
/// the request's reservation (none when the budget is off for this request).
///
/// # Errors
/// The 503 answer when the budget cannot take it now.
pub fn charge_parsed(req: &Request, body: &[u8]) -> Result<(), Box<Response>> {
    let Some(Reservation(held)) = req.extensions().get::<Reservation>() else {
        return Ok(());
    };
    let cost = estimated_cost(body);
    let have = held.bytes.load(std::sync::atomic::Ordering::Acquire);
    if cost <= have || held.budget.take(held, cost - have) {
        Ok(())
    } else {
        Err(held.budget.refusal(req, cost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metis_ports::metrics::{Attribution, CallLabels, QuotaRatio};
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

    #[derive(Default)]
    struct Gauge(AtomicI64, AtomicU64);

    impl Metrics for Gauge {
        fn http_request(&self, _: &str, _: &str, _: u16, _: &str, _: f64) {}
        fn upstream_call(&self, _: &CallLabels<'_>, _: &str, _: f64) {}
        fn upstream_retries(&self, _: &CallLabels<'_>, _: u32) {}
        fn first_token(&self, _: &CallLabels<'_>, _: f64) {}
        fn usage(
            &self,
            _: &CallLabels<'_>,
            _: &Attribution<'_>,
            _: &metis_domain::canonical::Usage,
            _: f64,
        ) {
        }
        fn auth_failure(&self, _: &str) {}
        fn rate_limit(&self, _: &str, _: bool) {}
        fn quota_ratios(&self, _: &[QuotaRatio]) {}
        fn quota_event(&self, _: &str, _: &str) {}
        fn key_leak_suspected(&self) {}
        fn admission_outage(&self, _: &str, _: &str) {}
        fn inflight(&self, _: i64) {}
        fn streams(&self, _: i64) {}
        fn token_count(&self, _: &str) {}
        fn accept_error(&self, _: &str) {}
        fn refused(&self, _: &str) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
        fn connections(&self, _: i64) {}
        fn connection_limit(&self, _: u64) {}
        fn inflight_body_bytes(&self, delta: i64) {
            self.0.fetch_add(delta, Ordering::Relaxed);
        }
        fn render(&self, _: &metis_ports::metrics::ScrapeGauges) -> String {
            String::new()
        }
    }

    fn post(path: &str, len: Option<u64>) -> Request {
        let b = Request::builder()
            .method(poem::http::Method::POST)
            .uri_str(path);
        match len {
            Some(n) => b.header(header::CONTENT_LENGTH, n.to_string()).finish(),
            None => b.header(header::TRANSFER_ENCODING, "chunked").finish(),
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn requests_share_the_budget_and_give_it_back_when_done() {
        let m = Arc::new(Gauge::default());
        let budget = RequestBudget::new(100 * MIB, 8 * MIB, m.clone());
        let mut first = post("/v1/chat/completions", Some(6 * MIB));
        let a = budget.reserve(&mut first).unwrap();
        assert_eq!(m.0.load(Ordering::Relaxed), (48 * MIB) as i64);
        // 48 MiB + 48 MiB fit in 100; a third does not.
        let b = budget
            .reserve(&mut post("/v1/messages", Some(6 * MIB)))
            .unwrap();
        let refused = budget
            .reserve(&mut post("/v1/messages", Some(6 * MIB)))
            .err()
            .unwrap();
        assert_eq!(refused.status().as_u16(), 503);
        assert_eq!(refused.headers().get(header::RETRY_AFTER).unwrap(), "1");
        assert_eq!(m.1.load(Ordering::Relaxed), 1);
        // No body, no charge.
        let mut get = Request::builder().uri_str("/healthz").finish();
        assert!(budget.reserve(&mut get).unwrap().is_none());
        // The parse estimate of a body full of objects does not fit beside the other one.
        let objects = "{}".repeat(3 << 20);
        assert!(estimated_cost(objects.as_bytes()) > 3 << 30);
        assert!(charge_parsed(&first, objects.as_bytes()).is_err());
        // Plain text within the first charge needs nothing more.
        assert!(charge_parsed(&first, &vec![b'x'; (6 * MIB) as usize]).is_ok());
        drop((a, b, first));
        assert_eq!(m.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_request_larger_than_the_budget_runs_alone() {
        let m = Arc::new(Gauge::default());
        let budget = RequestBudget::new(50 * MIB, 10 * MIB, m.clone());
        // 10 MiB × 8 = 80 MiB > 50 MiB: charged the whole budget.
        let mut big = post("/v1/chat/completions", Some(10 * MIB));
        let held = budget.reserve(&mut big).unwrap();
        assert_eq!(m.0.load(Ordering::Relaxed), (50 * MIB) as i64);
        assert!(
            budget
                .reserve(&mut post("/v1/chat/completions", Some(1024)))
                .is_err()
        );
        assert!(charge_parsed(&big, "{}".repeat(1 << 20).as_bytes()).is_ok());
        drop((held, big));
        assert!(
            budget
                .reserve(&mut post("/v1/chat/completions", None))
                .is_ok()
        );
    }
}
