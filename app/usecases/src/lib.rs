//! `metis-usecases`: the use cases of the Metis gateway, orchestrating ports.
//!
//! Depends only on `metis-domain` (pure rules) and `metis-ports` (traits); the composition root in
//! `app/metis` supplies the adapters.

pub mod admin;
pub mod alerts;
pub mod gateway;
pub mod key_admin;
mod key_update;
pub mod keys;
pub mod limits;
pub mod live;
pub mod ops;
pub mod patterns;
mod policy_admin;
mod recorder;
pub mod routing;
pub mod spend;
pub mod storage;
mod stream;
pub mod token_limits;
mod wire;

pub use admin::AdminFacade;
pub use gateway::{CoreParts, GatewayCore};
pub use key_admin::{AdminError, IssueRequest, KeyAdmin};
pub use keys::{KeyIndex, KeyRing, KeySync, KeySyncParts};
pub use limits::{DEFAULT_TPM_OUTPUT_TOKENS, KeyBuckets, Limiter, RateLimitConfig};
pub use live::{LiveMetrics, LiveWindow};
pub use ops::{OpsFacade, OpsParts};
pub use spend::{OutagePolicy, SpendGuard, SpendGuardParts, SpendLedger};
pub use token_limits::{TokenBuckets, TokenLimiter, TpmHold};
