//! `metis-http`: the HTTP adapter (poem + poem-openapi).
//!
//! It owns only HTTP concerns: extracting the presented token per inbound shape, reading the
//! body with a size limit, and turning the core's answers into responses. Every answer the
//! gateway gives — including 404, 405, 413 and internal errors — is a JSON envelope in the
//! inbound shape, never plain text.
//!
//! The body of a provider request is read only after `GatewayService::admit` succeeded, so
//! unauthenticated clients cannot make the gateway buffer large bodies.

mod admin;
mod admin_auth;
mod admin_read;
mod api;
pub mod console;
mod inflight;
mod reply;
mod socket;

pub use admin_auth::AdminAuthConfig;
pub use api::{AdminServices, ClientGone, HttpOptions, openapi_json, routes};
pub use console::{ConsoleConfig, SessionSettings};
pub use inflight::{
    COST_PER_BODY_BYTE, COST_PER_OBJECT, RequestBudget, Reservation, charge_parsed, estimated_cost,
};
pub use reply::cut_stream_on;
