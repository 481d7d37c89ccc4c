//! Shared helpers of the client tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use cortex_client::{ClientConfig, McpClient, NetworkMcpClient, StaticDiscovery};
use serde_json::json;

/// A config with short timings for loopback tests.
pub fn fast_config() -> cortex_client::config::ClientConfigBuilder {
    ClientConfig::builder()
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(50))
        .request_timeout(Duration::from_secs(10))
        .reset_timeout(Duration::from_millis(300))
}

/// A network client whose `memory` service is at `url`.
pub fn client_for(url: &str, config: ClientConfig) -> NetworkMcpClient {
    let discovery = Arc::new(StaticDiscovery::new().with("memory", url));
    NetworkMcpClient::builder(discovery)
        .config(config)
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

/// A port on loopback that nothing listens on.
pub fn dead_port() -> u16 {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"))
        .port()
}

/// Serves `app` on a free loopback port until the test ends; its base URL
/// (`http://127.0.0.1:PORT`).
pub async fn serve(app: axum::Router) -> String {
    let (listener, url) = listen().await;
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A listener on a free loopback port, and its base URL.
async fn listen() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let url = format!(
        "http://{}",
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"))
    );
    (listener, url)
}

/// Serves `app` over HTTP/1.1 only (as a server that predates HTTP/2
/// would), on a free loopback port until the test ends; its base URL.
/// (`axum::serve` speaks h2c too when a crate of the workspace turns on
/// axum's `http2`.)
pub async fn serve_http1_only(app: axum::Router) -> String {
    let (listener, url) = listen().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service),
            );
        }
    });
    url
}

/// Stores `content` for `user` in the `memory` service; its item id.
pub async fn store(client: &dyn McpClient, user: &str, content: &str) -> i64 {
    let answer = client
        .call_tool(
            "memory",
            "store_input",
            json!({"user_id": user, "input_data": {"content": content}}),
        )
        .await
        .unwrap_or_else(|e| panic!("store_input: {e}"));
    assert_eq!(answer["status"], "stored", "{answer}");
    answer["item_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no item id in {answer}"))
}
