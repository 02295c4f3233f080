//! `metis-ports`: the traits the gateway core needs from the outside world (driven ports) and
//! the service it offers to the HTTP and CLI adapters (driving port).
//!
//! Every port is an `async_trait` object-safe trait (`Arc<dyn Port>`), because the storage
//! backend and providers are chosen at runtime. Each port has its own error enum; contracts
//! are written as MUST sentences in the docs.

pub mod admin;
pub mod admission;
pub mod alerts;
pub mod console;
#[cfg(feature = "fakes")]
pub mod fakes;
pub mod gateway;
pub mod identity;
pub mod keys;
pub mod metrics;
pub mod patterns;
pub mod queue;
pub mod sessions;
pub mod storage;
pub mod system;
pub mod token_limits;
pub mod tokens;
pub mod trace;
pub mod upstream;
pub mod writer;
