//! Fixtures shared by Cortex's tests.
//!
//! - [`TestServer`]: a service kit service on a real `127.0.0.1:0` socket,
//!   stopped through the same shutdown future production uses.
//! - [`SseReader`]: reads a real SSE response with the project's decoder.
//! - [`proxy::TcpProxy`]: counts connections and injects faults on the wire.
//! - `etcd::Etcd`: a real etcd server on loopback (with the `etcd` feature).
//! - [`mcp_servers`]: third-party MCP servers (server-everything, a Python
//!   SDK server) as processes on loopback, for interop tests.
//! - [`pg`]: memory stores on SQLite or on a PostgreSQL schema of a test's
//!   own, and [`on_both_backends!`] to run one suite on both.
//! - [`stats::percentile`]: shared by the benchmarks.
//! - [`auth`]: tokens good and bad, and an MCP session client that sends them.
//! - [`prometheus::parse`]: a strict reading of `/metrics` text.
//! - [`oauth_server`]: an OAuth authorization server and an MCP server that
//!   wants its tokens, on loopback, for the client's OAuth tests and
//!   `cortex login`.

pub mod auth;
pub mod callgrind;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod mcp_servers;
pub mod oauth_server;
pub mod pg;
pub mod prometheus;
pub mod proxy;
pub mod stats;

/// A memory service on loopback with its SQLite file in a temporary
/// directory (removed when the returned guard drops).
pub async fn start_memory(config: ServiceConfig) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let store = cortex_memory::store::Store::open(dir.path().join("memory.sqlite3"))
        .await
        .unwrap_or_else(|e| panic!("open store: {e}"));
    let service =
        cortex_memory::service::build(store).unwrap_or_else(|e| panic!("build memory: {e}"));
    (TestServer::start(service, config).await, dir)
}

/// A memory service on loopback over a fresh store on `backend` (kept
/// alive, and removed, by the returned fixture).
pub async fn start_memory_on(
    backend: pg::Backend,
    config: ServiceConfig,
) -> (TestServer, pg::StoreFixture) {
    let fixture = backend.store("memory").await;
    let service = cortex_memory::service::build(fixture.store.clone())
        .unwrap_or_else(|e| panic!("build memory: {e}"));
    (TestServer::start(service, config).await, fixture)
}

/// A tool `slow` that sleeps for its argument `ms` (milliseconds) and
/// answers `{"slept_ms": ms}`: a call that keeps its connection busy for as
/// long as a test needs.
pub fn slow_tool() -> Tool {
    Tool::new(
        "slow",
        "Sleeps for `ms`.",
        serde_json::json!({"type": "object"}),
        |_ctx, args| async move {
            let ms = args
                .get("ms")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(serde_json::json!({"slept_ms": ms}))
        },
    )
}

/// The memory service for an in-process client, with its temporary directory.
pub async fn memory_service() -> (Service, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let store = cortex_memory::store::Store::open(dir.path().join("memory.sqlite3"))
        .await
        .unwrap_or_else(|e| panic!("open store: {e}"));
    (
        cortex_memory::service::build(store).unwrap_or_else(|e| panic!("build memory: {e}")),
        dir,
    )
}

use std::net::SocketAddr;
use std::time::Duration;

use cortex_proto::sse::{Decoder, Event};
use cortex_service::{Service, ServiceConfig, Tool};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running service on loopback.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts `service` on `127.0.0.1:0`.
    pub async fn start(service: Service, config: ServiceConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind loopback: {e}"));
        Self::start_on(listener, service, config)
    }

    /// Starts `service` on a listener the test bound itself.
    pub fn start_on(
        listener: tokio::net::TcpListener,
        service: Service,
        config: ServiceConfig,
    ) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local addr: {e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cortex_service::serve(
            listener,
            service,
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends the shutdown signal without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Sends the shutdown signal and waits (at most `limit`) for the server
    /// to stop; panics if it does not.
    pub async fn shutdown(mut self, limit: Duration) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(limit, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(other) => panic!("server ended badly: {other:?}"),
                Err(_) => panic!("server did not stop within {limit:?}"),
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// Reads events from an SSE response.
pub struct SseReader {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    decoder: Decoder,
    ready: std::collections::VecDeque<Event>,
}

impl SseReader {
    /// Wraps a response that must be `text/event-stream`.
    pub fn new(response: reqwest::Response) -> Self {
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "not an event stream: {content_type}"
        );
        Self {
            body: response.bytes_stream().boxed(),
            decoder: Decoder::new(),
            ready: Default::default(),
        }
    }

    /// The next event, `None` when the stream ends; panics if none arrives
    /// within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Event> {
        tokio::time::timeout(limit, self.next_event())
            .await
            .unwrap_or_else(|_| panic!("no SSE event within {limit:?}"))
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    let events = self
                        .decoder
                        .feed(&chunk)
                        .unwrap_or_else(|e| panic!("bad SSE: {e}"));
                    self.ready.extend(events);
                }
                Some(Err(e)) => panic!("SSE body failed: {e}"),
                None => return None,
            }
        }
    }

    /// Reads to the end of the stream: `Ok` when the service ended it
    /// normally, `Err` when the connection was cut; panics after `limit`.
    pub async fn finish(&mut self, limit: Duration) -> Result<usize, String> {
        let read_all = async {
            let mut events = self.ready.len();
            self.ready.clear();
            while let Some(chunk) = self.body.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                events += self.decoder.feed(&chunk).map_err(|e| e.to_string())?.len();
            }
            Ok(events)
        };
        tokio::time::timeout(limit, read_all)
            .await
            .unwrap_or_else(|_| panic!("stream did not end within {limit:?}"))
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize, limit: Duration) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            match self.next(limit).await {
                Some(event) => out.push(event),
                None => break,
            }
        }
        out
    }

    /// Reads the raw bytes that arrive within `window` (for checking
    /// comments such as keep-alives, which the decoder skips).
    pub async fn raw_for(&mut self, window: Duration) -> String {
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, self.body.next()).await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    }
}

/// The JSON of an event's data; panics with the data when it is not JSON.
pub fn json_of(event: &Event) -> serde_json::Value {
    serde_json::from_str(&event.data)
        .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", event.data))
}

/// Asserts that every one of many calls succeeded; otherwise panics saying
/// how many of how many failed, and the first error.
pub fn assert_none_failed<T, E: std::fmt::Display>(results: &[Result<T, E>]) {
    let failures: Vec<&E> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first) = failures.first() {
        panic!(
            "{} of {} calls failed; first: {first}",
            failures.len(),
            results.len()
        );
    }
}
