//! Quickstart: the Cortex client from Rust. Stores an input in the memory
//! service, reads the user's history back, and streams it.
//!
//! Start the services in another terminal (`cortex up`, or from a checkout
//! `cargo run --release -p cortex-cli -- up`), then, in the same directory
//! (the token is signed with the secret `cortex up` keeps there):
//!
//! ```text
//! CORTEX_TOKEN=$(cortex token --user u1) cargo run -p cortex-client --example quickstart
//! ```
//!
//! Memory is found at `http://localhost:9000`, or where `MEMORY_SERVICE_URL`
//! says; client settings come from `CORTEX_CLIENT_*` variables; the bearer
//! token from `CORTEX_TOKEN`. When memory is not running, it says so and
//! exits with status 1.
//!
//! In a project of your own: `cortex-client`, `serde_json`, and `tokio`
//! with the `macros` and `rt-multi-thread` features.

use std::process::ExitCode;
use std::sync::Arc;

use cortex_client::{
    ClientConfig, DiscoverySpec, McpClient, McpError, MemoryServiceClient, NetworkMcpClient,
    StaticToken, StreamExt,
};
use serde_json::json;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quickstart: {error}");
            if error.is_retryable() {
                eprintln!("Is memory running? Start it with `cortex up` in another terminal.");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), McpError> {
    // `env` discovery: MEMORY_SERVICE_URL, COGNITION_SERVICE_URL and any
    // NAME_SERVICE_URL, else memory on localhost:9000.
    let (discovery, _names) = DiscoverySpec::Env.build().await?;
    // CORTEX_CLIENT_MAX_RETRIES=… and the like; or ClientConfig::from_file.
    let config = ClientConfig::from_env()?;
    let mut builder = NetworkMcpClient::builder(discovery).config(config);
    // The services check bearer tokens (JWT); u1's token reaches u1's data.
    if let Ok(token) = std::env::var("CORTEX_TOKEN") {
        builder = builder.token_provider(Arc::new(StaticToken::new(token)));
    }
    let client: Arc<dyn McpClient> = Arc::new(builder.build()?);
    let memory = MemoryServiceClient::new(client.clone());

    let receipt = memory
        .store_input("u1", json!({"content": "hello from Rust"}))
        .await?;
    println!("stored item #{}", receipt.item_id);

    // Newest first.
    let history = memory.get_history("u1").await?;
    println!("u1 has {} item(s)", history.len());

    // The backlog in id order, then each new item as it is stored; the
    // stream stays open, so take no more than the backlog holds.
    let mut events = memory
        .stream_history("u1")
        .await?
        .take(history.len().min(3));
    while let Some(event) = events.next().await {
        let event = event?;
        let id = event.id.unwrap_or_default();
        println!("stream: #{id} {}", event.data["content"]);
    }

    client.close().await;
    Ok(())
}
