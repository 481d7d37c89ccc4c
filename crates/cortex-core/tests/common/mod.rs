//! Memory, cognition and core on loopback with HS256 tokens, for core's
//! tests and benchmark: real services, real sockets, real SQLite files.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cortex_client::{
    ClientConfig, MemoryServiceClient, NetworkMcpClient, StaticDiscovery, StaticToken,
};
use cortex_core::{Core, CoreConfig, Outbox};
use cortex_service::ServiceConfig;
use cortex_test_support::TestServer;
use cortex_test_support::auth::{config as auth_config, token};
use tokio::net::TcpListener;

/// How long a service may take to stop.
pub(crate) const STOP: Duration = Duration::from_secs(10);

/// Every service checks HS256 tokens.
pub(crate) fn service_config() -> ServiceConfig {
    ServiceConfig {
        auth: auth_config(),
        ..ServiceConfig::default()
    }
}

/// A client quick to give up, so that "memory is down" shows at once.
pub(crate) fn quick_config() -> ClientConfig {
    ClientConfig::builder()
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(20))
        .max_retries(1)
        .connect_timeout(Duration::from_millis(300))
        .request_timeout(Duration::from_secs(5))
        .reset_timeout(Duration::from_millis(200))
        .build()
        .unwrap()
}

/// Core's client of memory and cognition: it acts as core (role `service`).
pub(crate) fn core_client(
    memory: SocketAddr,
    cognition: SocketAddr,
    config: ClientConfig,
) -> Arc<NetworkMcpClient> {
    let discovery = StaticDiscovery::new()
        .with("memory", format!("http://{memory}"))
        .with("cognition", format!("http://{cognition}"));
    Arc::new(
        NetworkMcpClient::builder(Arc::new(discovery))
            .config(config)
            .token_provider(Arc::new(StaticToken::new(token("core", &["service"]))))
            .build()
            .unwrap(),
    )
}

/// A memory service on `listener` over the SQLite file in `dir`.
pub(crate) async fn memory_on(listener: TcpListener, dir: &Path) -> TestServer {
    let store = cortex_memory::store::Store::open(dir.join("memory.sqlite3"))
        .await
        .unwrap();
    let service = cortex_memory::service::build(store).unwrap();
    TestServer::start_on(listener, service, service_config())
}

/// A cognition service on `listener` reading memory at `memory`.
pub(crate) async fn cognition_on(listener: TcpListener, memory: SocketAddr) -> TestServer {
    let discovery = StaticDiscovery::new().with("memory", format!("http://{memory}"));
    let client = NetworkMcpClient::new(Arc::new(discovery)).unwrap();
    let service =
        cortex_cognition::build_networked(client, cortex_cognition::CognitionConfig::default())
            .unwrap();
    TestServer::start_on(listener, service, service_config())
}

/// Core over an outbox of `max_pending` in `dir`, served, with its
/// background work running until the returned task is aborted.
pub(crate) async fn core_on(
    dir: &Path,
    max_pending: usize,
    client: Arc<NetworkMcpClient>,
) -> (TestServer, tokio::task::JoinHandle<()>) {
    let outbox = Outbox::open(dir.join("outbox.sqlite3"), max_pending).unwrap();
    let core = Core::new(outbox, client, CoreConfig::default());
    let service = cortex_core::service(core.clone(), auth_config()).unwrap();
    let server = TestServer::start(service, service_config()).await;
    let running = tokio::spawn(async move { core.run(std::future::pending()).await });
    (server, running)
}

/// Memory, cognition and core on loopback.
pub(crate) struct System {
    memory_dir: tempfile::TempDir,
    _core_dir: tempfile::TempDir,
    pub(crate) memory_addr: SocketAddr,
    pub(crate) memory: Option<TestServer>,
    pub(crate) cognition: Option<TestServer>,
    pub(crate) core: TestServer,
    running: tokio::task::JoinHandle<()>,
    pub(crate) http: reqwest::Client,
}

impl System {
    /// The three, core's client quick to give up; memory not started when
    /// `memory_up` is false (its address is kept for [`Self::start_memory`]).
    pub(crate) async fn start(max_pending: usize, memory_up: bool) -> Self {
        Self::start_with(quick_config(), max_pending, memory_up).await
    }

    /// As [`Self::start`], with core's client configured by `config`.
    pub(crate) async fn start_with(
        config: ClientConfig,
        max_pending: usize,
        memory_up: bool,
    ) -> Self {
        let memory_dir = tempfile::tempdir().unwrap();
        let memory_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let memory_addr = memory_listener.local_addr().unwrap();
        let cognition_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cognition_addr = cognition_listener.local_addr().unwrap();
        let memory = if memory_up {
            Some(memory_on(memory_listener, memory_dir.path()).await)
        } else {
            drop(memory_listener);
            None
        };
        let cognition = Some(cognition_on(cognition_listener, memory_addr).await);
        let core_dir = tempfile::tempdir().unwrap();
        let (core, running) = core_on(
            core_dir.path(),
            max_pending,
            core_client(memory_addr, cognition_addr, config),
        )
        .await;
        Self {
            memory_dir,
            _core_dir: core_dir,
            memory_addr,
            memory,
            cognition,
            core,
            running,
            http: reqwest::Client::new(),
        }
    }

    pub(crate) async fn stop_memory(&mut self) {
        if let Some(memory) = self.memory.take() {
            memory.shutdown(STOP).await;
        }
    }

    /// Memory again, on its address and database.
    pub(crate) async fn start_memory(&mut self) {
        let listener = TcpListener::bind(self.memory_addr).await.unwrap();
        self.memory = Some(memory_on(listener, self.memory_dir.path()).await);
    }

    /// Memory's typed client as an admin, to check what memory holds.
    pub(crate) fn memory_client(&self) -> MemoryServiceClient {
        let discovery =
            StaticDiscovery::new().with("memory", format!("http://{}", self.memory_addr));
        let client = NetworkMcpClient::builder(Arc::new(discovery))
            .token_provider(Arc::new(StaticToken::new(token("admin", &["admin"]))))
            .build()
            .unwrap();
        MemoryServiceClient::new(Arc::new(client))
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.running.abort();
    }
}
