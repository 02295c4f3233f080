//! `gw-usecases`: the use cases of the Metis gateway, orchestrating ports.
//!
//! Depends only on `gw-domain` (pure rules) and `gw-ports` (traits); the composition root in
//! `app/metis` supplies the adapters.

pub mod gateway;
pub mod keys;
pub mod limits;
mod recorder;
mod stream;
mod wire;

pub use gateway::{CoreParts, GatewayCore};
pub use keys::{KeyIndex, KeyRing};
pub use limits::{Limiter, RateLimitConfig};
