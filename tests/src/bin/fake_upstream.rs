//! `fake-upstream`: serve the fake Anthropic/OpenAI provider until killed (endpoints and
//! directives: `metis_tests::fake_upstream`).
//!
//! Usage: `fake-upstream [--port N] [--anthropic-key K] [--openai-key K]`. Binds `127.0.0.1`
//! (port 0 by default) and prints exactly one stdout line,
//! `fake-upstream listening on http://127.0.0.1:PORT`, once it accepts connections.

use clap::Parser;
use metis_tests::fake_upstream::{DEFAULT_ANTHROPIC_KEY, DEFAULT_OPENAI_KEY, FakeUpstream};

#[derive(Debug, Parser)]
#[command(
    name = "fake-upstream",
    about = "Fake Anthropic/OpenAI upstream for gateway tests"
)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Key expected on `x-api-key` (or as a Bearer token) for the Anthropic paths.
    #[arg(long, default_value = DEFAULT_ANTHROPIC_KEY)]
    anthropic_key: String,
    /// Key expected as `Authorization: Bearer` for the OpenAI paths.
    #[arg(long, default_value = DEFAULT_OPENAI_KEY)]
    openai_key: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fake = FakeUpstream::start_on(args.port, &args.anthropic_key, &args.openai_key).await?;
    metis_tests::process::announce_and_wait("fake-upstream", &fake.base_url()).await?;
    fake.stop().await;
    Ok(())
}
