//! `metis-domain`: the pure model and rules of the Metis gateway.
//!
//! Synchronous and IO-free by construction: no tokio, no database, no HTTP. Everything here
//! is a value or a function of values, so it is unit- and property-testable in isolation.
//! The dependency rule is enforced by `tests/tests/suite/architecture.rs`.

pub mod admin;
pub mod alerts;
pub mod anthropic;
pub mod audit;
pub mod backup;
pub mod bedrock;
pub mod budgets;
pub mod canonical;
pub mod error;
pub mod events;
pub mod forwarding;
pub mod gemini;
pub mod keys;
pub mod model_groups;
pub mod models;
pub mod openai;
pub mod patterns;
pub mod pricing;
pub mod ratelimit;
pub mod responses;
pub mod responses_socket;
pub mod retention;
pub mod routing;
pub mod sessions;
pub mod spend;
pub mod sse;
pub mod time;
pub mod tool_ids;
pub mod usage;
