//! Pieces shared by `serve`, `up` and `demo`: binding a port with a clear
//! message, building the two services, running one in the background, and
//! waiting until services are healthy.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cortex_client::{McpClient, NetworkMcpClient};
use cortex_cognition::CognitionConfig;
use cortex_service::{Service, ServiceConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::cli::Database;
use crate::exit::Failure;

/// Binds `host:port` for `what` (a service name); a port in use is an error
/// that names it and the flag that changes it.
pub(crate) async fn bind(
    host: &str,
    port: u16,
    what: &str,
    flag: &str,
) -> Result<TcpListener, Failure> {
    let address = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    TcpListener::bind(&address).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Failure::other(format!(
                "port {port} on {host} ({what}) is already in use; choose another with {flag}"
            ))
        } else {
            Failure::other(format!("cannot listen on {address} ({what}): {e}"))
        }
    })
}

/// The memory service over `database`: a SQLite file (created with its
/// directory, which is private: 0700, like the file's 0600), or PostgreSQL
/// (migrated at start; unreachable is an `unavailable` failure).
pub(crate) async fn memory_service(database: &Database) -> Result<Service, Failure> {
    match database {
        Database::Sqlite(path) => sqlite_memory_service(path).await,
        Database::Postgres(url) => {
            let store = cortex_memory::store::Store::connect(url)
                .await
                .map_err(|e| {
                    if e.is_retryable() {
                        Failure::new(crate::exit::Code::Unavailable, e.to_string())
                    } else {
                        Failure::other(e.to_string())
                    }
                })?;
            tracing::info!(database = %redact(url), "memory store open on PostgreSQL");
            cortex_memory::service::build(store).map_err(|e| Failure::other(e.to_string()))
        }
    }
}

/// `url` without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn sqlite_memory_service(db: &Path) -> Result<Service, Failure> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| {
            Failure::other(format!(
                "cannot create the data directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    let store = cortex_memory::store::Store::open(db)
        .await
        .map_err(|e| Failure::other(e.to_string()))?;
    tracing::info!(db = %db.display(), "memory store open");
    cortex_memory::service::build(store).map_err(|e| Failure::other(e.to_string()))
}

/// The cognition service, reading memory through `memory` (whose metrics
/// its `/metrics` includes).
pub(crate) fn cognition_service(
    memory: NetworkMcpClient,
    config: CognitionConfig,
) -> Result<Service, Failure> {
    cortex_cognition::build_networked(memory, config).map_err(|e| Failure::other(e.to_string()))
}

/// The outbox file of core in its data directory.
pub(crate) const CORE_OUTBOX: &str = "core-outbox.sqlite3";

/// Core, keeping its outbox in `data_dir`, reaching memory and cognition
/// through `client`; its background work (the drain, health checks,
/// context) runs in the returned task until it is aborted.
pub(crate) fn core_service(
    data_dir: &Path,
    client: NetworkMcpClient,
    auth: &cortex_service::AuthConfig,
    max_pending: usize,
) -> Result<(Service, JoinHandle<()>), Failure> {
    let path = data_dir.join(CORE_OUTBOX);
    let outbox = cortex_core::Outbox::open(&path, max_pending)
        .map_err(|e| Failure::other(format!("cannot open core's outbox: {e}")))?;
    let core = cortex_core::Core::new(
        outbox,
        std::sync::Arc::new(client),
        cortex_core::CoreConfig::default(),
    );
    let service = cortex_core::service(core.clone(), auth.clone())
        .map_err(|e| Failure::other(e.to_string()))?;
    let background = tokio::spawn(async move { core.run(std::future::pending()).await });
    Ok((service, background))
}

/// The URL to reach a listener at (`https://` when it serves TLS): a
/// wildcard address is reached on loopback.
pub(crate) fn url_of(addr: SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

/// A service serving in the background until [`Running::stop`].
pub(crate) struct Running {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    /// It serves TLS: its URL is `https://`.
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Serves `service` on `listener` in a task.
    pub(crate) fn spawn(
        listener: TcpListener,
        service: Service,
        config: ServiceConfig,
    ) -> Result<Self, Failure> {
        let addr = listener
            .local_addr()
            .map_err(|e| Failure::other(format!("cannot read the bound address: {e}")))?;
        let name = service.name().to_string();
        let tls = config.tls.is_some();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cortex_service::serve(
            listener,
            service,
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            name,
            addr,
            tls,
            stop: Some(stop),
            task,
        })
    }

    /// The URL clients use.
    pub(crate) fn url(&self) -> String {
        url_of(self.addr, self.tls)
    }

    /// True once the server ended on its own (it failed).
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops gracefully (in-flight calls finish, streams are cut) and waits.
    pub(crate) async fn stop(mut self) -> Result<(), Failure> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::other(format!("{} server failed: {e}", self.name))),
            Err(e) => Err(Failure::other(format!(
                "{} server task failed: {e}",
                self.name
            ))),
        }
    }
}

/// Waits until every one of `services` answers `/health` with 200, asking
/// every 100 ms for at most `within`.
pub(crate) async fn wait_healthy(
    client: &NetworkMcpClient,
    services: &[&str],
    within: Duration,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + within;
    for service in services {
        loop {
            let last = match client.health(service).await {
                Ok((200, _)) => break,
                Ok((status, health)) => format!(
                    "HTTP {status}, {}",
                    serde_json::Value::Object(health.checks)
                ),
                Err(error) => error.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Failure::other(format!(
                    "{service} did not become healthy within {}: {last}",
                    crate::output::duration(within)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
