//! `fake-oidc`: serve the test OpenID Connect issuer until killed (endpoints: see
//! `metis_tests::oidc_issuer`), for tests that run outside Rust (the console's browser tests).
//!
//! Usage: `fake-oidc [--port N] [--client-id ID] [--audience AUD]`. Binds `127.0.0.1` (port 0
//! by default) and prints exactly one stdout line, `fake-oidc listening on http://127.0.0.1:PORT`
//! (that URL is the issuer), once it accepts connections. Preset users for `login_hint`:
//! alice (admin), oscar (operator), vera (viewer), nobody (no group); role map
//! `admin=metis-admins,operator=metis-ops,viewer=metis-read`.

use clap::Parser;
use metis_tests::oidc_issuer::{DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID, TestIssuer};

#[derive(Debug, Parser)]
#[command(
    name = "fake-oidc",
    about = "Local OpenID Connect issuer for gateway tests"
)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The client id the authorization and token endpoints accept.
    #[arg(long, default_value = DEFAULT_CLIENT_ID)]
    client_id: String,
    /// The `aud` of access tokens from the token endpoint.
    #[arg(long, default_value = DEFAULT_AUDIENCE)]
    audience: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let issuer = TestIssuer::start_on(args.port, &args.client_id, &args.audience).await?;
    metis_tests::process::announce_and_wait("fake-oidc", &issuer.issuer()).await?;
    issuer.stop().await;
    Ok(())
}
