//! The token-limit port: tokens per minute per key, user and team (`metis_domain::ratelimit::
//! TpmLine`), taken on the estimate and settled to the actual usage.
//!
//! The rule is `metis_domain::ratelimit` ([`take_all`], [`adjust_all`] over `TokenBucket`s);
//! an implementation holds the buckets and applies the rule atomically over every bucket of a
//! request (one lock, or one database transaction locking the rows in name order).
//!
//! [`take_all`]: metis_domain::ratelimit::take_all
//! [`adjust_all`]: metis_domain::ratelimit::adjust_all

use crate::admission::{Answer, StoreUnavailable};
use metis_domain::ratelimit::TpmLine;

/// A token-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTake {
    Allowed,
    /// `lines[line]` cannot cover the amount: retry after this many seconds (at least 1).
    Denied {
        line: usize,
        retry_after_secs: u64,
    },
}

/// Token-per-minute buckets.
///
/// Contract (`metis_tests::contract::token_limits` proves the first two clauses and buckets
/// shared across handles; each implementation proves its own bound, as
/// `metis_domain::ratelimit` does for the in-process LRU and the PostgreSQL adapter for its
/// sweep):
/// - [`take`](Self::take) MUST take `amount` from every line's bucket or from none, in one
///   atomic step with respect to every other caller of the same store (all replicas of a
///   fleet), creating absent buckets full; a refusal names the line with the longest wait.
/// - [`adjust`](Self::adjust) MUST debit `delta` (negative: refund) from every line's bucket;
///   a bucket may go below zero (the next take waits), a refund never fills it beyond `tpm`.
/// - Buckets MUST stay bounded in number (an evicted bucket comes back full: lenient, never a
///   false deny).
/// - Time is the implementation's own clock (one clock for every replica of a shared store).
pub trait TokenRateLimiter: Send + Sync {
    /// Whether the buckets live outside this process (a store shared by replicas).
    fn shared(&self) -> bool;

    /// Take `amount` tokens from every bucket of `lines`, all or none.
    fn take(&self, lines: &[TpmLine], amount: u64) -> Answer<Result<TokenTake, StoreUnavailable>>;

    /// Debit `delta` tokens from every bucket of `lines` (negative: refund).
    fn adjust(&self, lines: &[TpmLine], delta: i64) -> Answer<Result<(), StoreUnavailable>>;
}
