//! Spend caps on the request path: the in-process spend admission ([`SpendLedger`]) and the
//! guard every request goes through ([`SpendGuard`]), which speaks to whichever
//! `metis_ports::admission::SpendAdmission` the composition root chose and applies the outage
//! policy of a shared one. The arithmetic is `metis_domain::spend`.

mod guard;
mod ledger;
#[cfg(test)]
mod tests;

pub use guard::{
    MAX_BACKLOG, OutagePolicy, REPLAY_RETRY, Refusal, SpendGuard, SpendGuardParts, SpendHold,
};
pub use ledger::SpendLedger;
pub use metis_domain::spend::{Alert, Budget, Caps, Exceeded};
