//! `metis` (library part): the composition root of the Metis gateway — CLI definitions,
//! configuration, wiring of adapters into the use cases, and the `App` that serves.
//!
//! The binary (`src/main.rs`) only parses the command line and dispatches here, so tests can
//! build the real server in-process (`App::build` + `run_until_stopped`).

pub mod admin_identity;
pub mod admission;
pub mod alerts;
pub mod app;
pub mod audit_cli;
pub mod background;
pub mod budgets_cli;
pub mod cert_expiry;
pub mod cli;
pub mod config;
pub mod fdlimit;
pub mod keys_cli;
pub mod listener;
pub mod paths;
pub mod patterns_cli;
pub mod providers;
pub mod rejection;
pub mod sessions_cli;
pub mod storage_cli;
pub mod store;
pub mod system;
pub mod telemetry;
pub mod transfer_cli;

pub use app::App;
