//! Every question a client error answers, asked of an error produced for
//! real on loopback: a port nobody listens on, a server that never answers,
//! one that hangs up after reading the request, an open breaker, discovery
//! with no endpoint, an unknown service, and a service's 503.
#![allow(clippy::unwrap_used)]

mod common;

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use cortex_client::error::Retry;
use cortex_client::{McpClient, McpError, NetworkMcpClient, StaticDiscovery};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

fn client(url: &str, config: cortex_client::ClientConfig) -> NetworkMcpClient {
    common::client_for(url, config)
}

/// The error of reading `history/u1` from the memory service at `url`.
async fn read_error(url: &str, config: cortex_client::ClientConfig) -> McpError {
    client(url, config)
        .read_resource("memory", "history/u1")
        .await
        .unwrap_err()
}

/// A server that accepts connections and then does `with` to each.
async fn raw_server(with: fn(tokio::net::TcpStream) -> tokio::task::JoinHandle<()>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            with(socket);
        }
    });
    url
}

#[tokio::test]
async fn a_refused_connection_is_connect_and_refused_with_its_io_cause_and_true_attempts() {
    let url = format!("http://127.0.0.1:{}", common::dead_port());
    let config = common::fast_config()
        .max_retries(2)
        .failure_threshold(100)
        .build()
        .unwrap();
    let error = client(&url, config)
        .call_tool("memory", "get_item", json!({"item_id": 1}))
        .await
        .unwrap_err();
    assert!(error.is_connect() && error.is_refused(), "{error:?}");
    assert!(!error.is_timeout() && !error.is_not_found(), "{error:?}");
    assert_eq!(error.retry(), Retry::Always);
    assert!(error.is_retryable());
    // Three attempts, counted as three.
    assert_eq!(error.attempts(), Some(3), "{error}");
    let io = error
        .source()
        .and_then(|cause| cause.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("no io::Error under {error:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout() {
    let url = raw_server(|mut socket| {
        tokio::spawn(async move {
            let mut sink = [0u8; 1024];
            // Read and never answer, until the client gives up.
            while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
        })
    })
    .await;
    let config = common::fast_config()
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let error = read_error(&url, config).await;
    assert!(error.is_timeout() && !error.is_connect(), "{error:?}");
    assert!(matches!(error, McpError::Timeout { .. }), "{error:?}");
    // It may have run: repeat it only if that is safe.
    assert_eq!(error.retry(), Retry::IfIdempotent);
}

#[tokio::test]
async fn a_connection_lost_after_sending_is_not_connect_and_retried_only_if_idempotent() {
    let url = raw_server(|mut socket| {
        tokio::spawn(async move {
            // Read the whole request head, then hang up without a word.
            let mut seen = Vec::new();
            let mut buffer = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buffer).await {
                    Ok(n) if n > 0 => seen.extend_from_slice(&buffer[..n]),
                    _ => return,
                }
            }
            drop(socket);
        })
    })
    .await;
    let config = common::fast_config()
        .max_retries(2)
        .failure_threshold(100)
        .build()
        .unwrap();
    let error = read_error(&url, config).await;
    assert!(
        matches!(error, McpError::Connection { sent: true, .. }),
        "{error:?}"
    );
    assert!(!error.is_connect() && !error.is_refused(), "{error:?}");
    assert_eq!(error.retry(), Retry::IfIdempotent);
    // A read is idempotent: it was repeated, and every attempt counted.
    assert_eq!(error.attempts(), Some(3), "{error}");
    assert!(
        error.source().is_some(),
        "the HTTP error is kept: {error:?}"
    );
}

#[tokio::test]
async fn an_open_breaker_fails_fast_and_says_later() {
    let url = format!("http://127.0.0.1:{}", common::dead_port());
    let config = common::fast_config()
        .max_retries(0)
        .failure_threshold(1)
        .reset_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let client = client(&url, config);
    let first = client
        .call_tool("memory", "get_item", json!({}))
        .await
        .unwrap_err();
    assert!(first.is_refused(), "{first:?}");
    let second = client
        .call_tool("memory", "get_item", json!({}))
        .await
        .unwrap_err();
    assert!(second.is_circuit_open(), "{second:?}");
    assert_eq!(second.retry(), Retry::Later);
    assert!(second.is_retryable() && !second.is_connect());
}

#[tokio::test]
async fn discovery_without_an_endpoint_is_apart_from_an_unknown_service() {
    let discovery = StaticDiscovery::new();
    discovery.register("memory", Vec::new());
    let client = NetworkMcpClient::builder(Arc::new(discovery))
        .config(common::fast_config().max_retries(1).build().unwrap())
        .build()
        .unwrap();
    let none = client
        .call_tool("memory", "get_item", json!({}))
        .await
        .unwrap_err();
    assert!(none.is_discovery() && !none.is_not_found(), "{none:?}");
    assert!(none.is_retryable(), "a replica may come: {none:?}");
    assert_eq!(none.kind(), "discovery");

    let unknown = client
        .call_tool("search", "find", json!({}))
        .await
        .unwrap_err();
    assert!(
        unknown.is_not_found() && !unknown.is_discovery(),
        "{unknown:?}"
    );
    assert!(!unknown.is_retryable());
    assert_eq!(unknown.retry(), Retry::Never);
}

#[tokio::test]
async fn a_503_is_a_status_and_retryable() {
    let url = raw_server(|mut socket| {
        tokio::spawn(async move {
            let mut buffer = [0u8; 4096];
            let _ = socket.read(&mut buffer).await;
            let body = r#"{"error":{"code":"unavailable","message":"draining"}}"#;
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, answer.as_bytes()).await;
        })
    })
    .await;
    let config = common::fast_config()
        .max_retries(1)
        .failure_threshold(100)
        .build()
        .unwrap();
    let error = read_error(&url, config).await;
    assert_eq!(error.status(), Some(503), "{error:?}");
    assert_eq!(error.retry(), Retry::Always);
    assert_eq!(error.attempts(), Some(2), "{error}");
    assert!(!error.is_connect() && !error.is_timeout());
}
