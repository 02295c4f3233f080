//! `metis-bench`: what the benchmark binaries share.
//!
//! - [`stats`]: latency percentiles (nearest rank over every recorded sample, no histogram
//!   bucketing).
//! - [`http1`]: the load generator's HTTP/1.1 response framing (status line, headers,
//!   `Content-Length` and chunked bodies), incremental so it works on partial reads.
//! - [`procfs`]: process CPU time and resident memory read from `/proc`, summed over a
//!   process and its descendants.
//! - [`scan`]: SSE events counted in a streamed body, one counter read from `/metrics`.
//! - [`mockdata`]: the bench mock's pre-rendered OpenAI and Anthropic responses (sync and SSE).
//! - [`report`]: turns the recorded runs into `results.md` and `results.json`.
//! - [`traffic`]: gateway traffic as trace events (several keys, sessions, audit events), to
//!   fill a trace database to a realistic size.
//!
//! Nothing here runs under `cargo test` except the small unit tests of the parsing and
//! percentile code; the benchmarks themselves are started by `scripts/bench.sh`.

pub mod http1;
pub mod mockdata;
pub mod procfs;
pub mod report;
pub mod scan;
pub mod stats;
pub mod traffic;
