//! System clock, ULID ids and CSPRNG secrets: the real implementations of the `Clock` and
//! `IdSource` ports.

use metis_ports::system::{Clock, IdSource};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }
}

/// Monotonic ULIDs (sort order = emit order within the process) and OS randomness.
#[derive(Debug, Default)]
pub struct UlidIds {
    generator: Mutex<ulid::Generator>,
}

impl IdSource for UlidIds {
    fn ulid(&self) -> String {
        let mut g = match self.generator.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // The generator only fails when the random part overflows within one millisecond
        // (2^80 ids); fall back to a fresh, still time-ordered id.
        g.generate()
            .unwrap_or_else(|_| ulid::Ulid::generate())
            .to_string()
    }

    fn secret_bytes(&self) -> [u8; 24] {
        let mut buf = [0u8; 24];
        if getrandom::fill(&mut buf).is_err() {
            // Without OS randomness no safe token can be made; ULID randomness is not a
            // substitute, so abort loudly rather than mint a guessable secret.
            eprintln!("error: the operating system's random number generator is unavailable");
            std::process::exit(1);
        }
        buf
    }
}
