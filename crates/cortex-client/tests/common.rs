//! Shared helpers of the client tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use cortex_client::discovery::Protocol;
use cortex_client::notifications::{ListKind, LogMessage, NotificationHandler};
use cortex_client::server_requests::{RequestError, ServerRequestHandler};
use cortex_client::{
    ClientConfig, Endpoint, McpClient, NetworkMcpClient, NetworkMcpClientBuilder, StaticDiscovery,
};
use serde_json::{Value, json};

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

/// Locks `m` even when a handler that panicked on an assertion poisoned it,
/// so that the test reading what a server saw reports the first failure,
/// not a second one.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits (2 s at most) until `check` holds; panics naming `what` if not.
/// For what a scripted server on loopback is told after a call returns.
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    eventually_within(what, Duration::from_secs(2), check).await;
}

/// Waits (`limit` at most) until `check` holds; panics naming `what` if
/// not. For third-party servers, which take longer than a scripted one.
pub async fn eventually_within(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let waited = tokio::time::timeout(limit, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what}: not within {limit:?}");
}

/// A network client whose `svc` service is the MCP server at `url`, with
/// `timeout` per request and a short backoff; `setup` adds handlers or a
/// task policy to the builder.
pub fn mcp_client(
    url: &str,
    timeout: Duration,
    setup: impl FnOnce(NetworkMcpClientBuilder) -> NetworkMcpClientBuilder,
) -> NetworkMcpClient {
    let discovery = StaticDiscovery::new();
    discovery.register("svc", vec![Endpoint::new(url).with_protocol(Protocol::Mcp)]);
    let config = ClientConfig::builder()
        .request_timeout(timeout)
        .initial_backoff(Duration::from_millis(10))
        .build()
        .unwrap_or_else(|e| panic!("config: {e}"));
    setup(NetworkMcpClient::builder(Arc::new(discovery)).config(config))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

/// What a server told the application, as [`Hear`] records it.
#[derive(Default)]
pub struct Heard {
    /// Log messages, in order.
    pub logs: Mutex<Vec<LogMessage>>,
    /// Lists the server said changed, in order.
    pub changed: Mutex<Vec<ListKind>>,
}

/// The application's notification handler: records into a [`Heard`], and,
/// when made with [`Hear::only`], checks that each notification is
/// attributed to the one service the test talks to.
pub struct Hear {
    heard: Arc<Heard>,
    service: Option<&'static str>,
}

impl Hear {
    /// Records notifications from any service.
    pub fn any(heard: Arc<Heard>) -> Arc<Self> {
        Arc::new(Self {
            heard,
            service: None,
        })
    }

    /// Records notifications, asserting that they come from `service`.
    pub fn only(service: &'static str, heard: Arc<Heard>) -> Arc<Self> {
        Arc::new(Self {
            heard,
            service: Some(service),
        })
    }

    fn check(&self, service: &str) {
        if let Some(expected) = self.service {
            assert_eq!(service, expected);
        }
    }
}

impl NotificationHandler for Hear {
    fn log(&self, service: &str, message: &LogMessage) {
        self.check(service);
        lock(&self.heard.logs).push(message.clone());
    }

    fn list_changed(&self, service: &str, list: ListKind) {
        self.check(service);
        lock(&self.heard.changed).push(list);
    }
}

/// Answers elicitations as a person who accepts the defaults would (with
/// the schema's defaults as the content). An elicitation whose message is
/// `wait` is never answered: the handler waits until it is dropped, and
/// sets `dropped` then, so a test can see that the client stopped it.
#[derive(Default)]
pub struct AcceptDefaults {
    /// Set when a waiting handler is dropped.
    pub dropped: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl ServerRequestHandler for AcceptDefaults {
    fn capabilities(&self) -> Value {
        json!({"elicitation": {}})
    }

    async fn handle(&self, _: &str, method: &str, params: Value) -> Result<Value, RequestError> {
        if params["message"] == "wait" {
            let _flag = SetOnDrop(self.dropped.clone());
            futures::future::pending::<()>().await;
        }
        match method {
            "elicitation/create" => Ok(json!({
                "action": "accept",
                "content": cortex_client::server_requests::schema_defaults(&params["requestedSchema"]),
            })),
            other => Err(RequestError::method_not_found(other)),
        }
    }
}
