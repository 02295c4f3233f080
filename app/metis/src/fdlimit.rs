//! The file-descriptor budget of the serving process.
//!
//! A systemd unit without `LimitNOFILE` starts a service with a soft limit of 1024
//! descriptors (its hard limit is usually 524288). Run out of descriptors and `accept` fails:
//! new clients wait in the kernel's accept queue with no answer, however far below
//! `--max-connections` the gateway is. So at start the gateway:
//!
//! 1. raises its soft `RLIMIT_NOFILE` to the hard limit (allowed without privileges);
//! 2. checks that the limit covers `--max-connections` and, if it does not, lowers the
//!    connection cap to what it covers, with one boot WARN naming the cap and the limit
//!    needed. Connections beyond the (lowered) cap get the usual immediate 503.
//!
//! The budget (`soft` = the soft limit after step 1):
//!
//! ```text
//! reserved   = open_at_start + HEADROOM                 (HEADROOM = 64)
//! available  = soft - reserved
//! rejecting  = min(256, available / 8)                  (503 answers in progress)
//! cap        = min(--max-connections, (available - rejecting) / 2)
//! ```
//!
//! Two descriptors per connection: the client socket, and the upstream connection its request
//! is proxied on (idle pooled upstream connections are bounded by the same peak). The
//! headroom covers what opens after start: per-workspace pattern stores, keystore reloads,
//! DNS lookups, the SQLite WAL and journal files, TLS and certificate reads.

/// Descriptors kept free for files opened after start (see the module docs).
pub const HEADROOM: u64 = 64;
/// Descriptors per client connection (client socket + upstream connection).
pub const PER_CONNECTION: u64 = 2;

/// What [`raise`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// Soft limit before (`None` = unlimited or unknown).
    pub before: Option<u64>,
    /// Soft limit now.
    pub soft: Option<u64>,
    /// Hard limit.
    pub hard: Option<u64>,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit. Never fails: on a platform or sandbox
/// that refuses, the limit stays as it was (the budget below then works with it).
#[must_use]
pub fn raise() -> Raised {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let now = getrlimit(Resource::Nofile);
        let mut soft = now.current;
        if now.current.is_some() && now.current != now.maximum {
            let wanted = Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            };
            match setrlimit(Resource::Nofile, wanted) {
                Ok(()) => soft = getrlimit(Resource::Nofile).current,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot raise the file descriptor limit to its hard limit");
                }
            }
        }
        Raised {
            before: now.current,
            soft,
            hard: now.maximum,
        }
    }
    #[cfg(not(unix))]
    {
        Raised {
            before: None,
            soft: None,
            hard: None,
        }
    }
}

/// Descriptors open in this process now (`/proc/self/fd`; 32 where it cannot be read).
#[must_use]
pub fn open_now() -> u64 {
    match std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of the entries.
        Ok(dir) => (dir.count() as u64).saturating_sub(1),
        Err(_) => 32,
    }
}

/// The connection cap and rejection slots a descriptor limit affords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The connection cap in force.
    pub max_connections: usize,
    /// Over-cap 503 answers that may run at once.
    pub rejecting: usize,
    /// Whether `max_connections` is below what was asked.
    pub lowered: bool,
    /// The soft limit that would cover what was asked.
    pub needed: u64,
}

/// The budget for `asked` connections under soft limit `soft` (`None` = unlimited) with
/// `open` descriptors already in use (formula in the module docs).
#[must_use]
pub fn budget(asked: usize, soft: Option<u64>, open: u64) -> Budget {
    let full_rejecting = crate::listener::MAX_REJECTING as u64;
    let reserved = open + HEADROOM;
    let asked_u = asked as u64;
    let needed = reserved + full_rejecting + PER_CONNECTION * asked_u;
    let Some(soft) = soft else {
        return Budget {
            max_connections: asked,
            rejecting: crate::listener::MAX_REJECTING,
            lowered: false,
            needed,
        };
    };
    let available = soft.saturating_sub(reserved);
    let rejecting = full_rejecting.min(available / 8).max(1);
    let fits = (available.saturating_sub(rejecting) / PER_CONNECTION).max(1);
    let cap = asked_u.min(fits);
    Budget {
        max_connections: usize::try_from(cap).unwrap_or(asked),
        rejecting: usize::try_from(rejecting).unwrap_or(1),
        lowered: cap < asked_u,
        needed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generous_limit_keeps_the_asked_cap() {
        let b = budget(1000, Some(524_288), 20);
        assert_eq!(
            (b.max_connections, b.rejecting, b.lowered),
            (1000, 256, false)
        );
        let b = budget(1000, None, 20);
        assert!(!b.lowered);
    }

    #[test]
    fn the_common_1024_limit_lowers_the_cap_with_room_for_rejections() {
        // 1024 - (20 + 64) = 940 available; 117 for rejections; (940 - 117) / 2 = 411.
        let b = budget(1000, Some(1024), 20);
        assert_eq!(
            (b.max_connections, b.rejecting, b.lowered),
            (411, 117, true)
        );
        assert_eq!(b.needed, 20 + 64 + 256 + 2000);
        // A cap that fits is not touched.
        assert_eq!(budget(300, Some(1024), 20).max_connections, 300);
    }

    #[test]
    fn a_tiny_limit_still_serves_one_connection() {
        let b = budget(1000, Some(50), 40);
        assert_eq!((b.max_connections, b.rejecting), (1, 1));
    }
}
