//! Running a service: the listener and the shutdown signal belong to the caller.

use std::future::Future;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::registry::Service;
use crate::routes::{ShutdownSignals, router};

/// Limits and timings of the HTTP front of a service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Largest request body accepted; larger gets 413 `payload_too_large`.
    pub max_body_bytes: usize,
    /// A silent stream gets a `: keep-alive` comment this often, so proxies
    /// and the client's idle timeout can tell a quiet stream from a dead one.
    pub keep_alive: Duration,
    /// How long in-flight calls may run after shutdown starts.
    pub grace_period: Duration,
    /// Reconnect advice sent as `retry:` at the start of every stream.
    pub stream_retry: Duration,
    /// Standard MCP at `/mcp`: sessions, origins, buffers.
    pub mcp: crate::mcp::McpConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            keep_alive: Duration::from_secs(15),
            grace_period: Duration::from_secs(10),
            stream_retry: Duration::from_millis(1000),
            mcp: crate::mcp::McpConfig::default(),
        }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops
/// accepting, ends open streams, and lets in-flight calls finish for up to
/// `config.grace_period` before closing what is left.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    config: ServiceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stopping_tx, stopping) = watch::channel(false);
    let (expired_tx, expired) = watch::channel(false);
    let grace = config.grace_period;
    let name = service.name().to_string();
    let app = router(
        service,
        config,
        ShutdownSignals {
            stopping: stopping.clone(),
            expired,
        },
    );
    // Nagle would hold back the second write of a two-part answer for ~40 ms
    // on a kept-alive connection.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
    });
    let mut stopped = stopping.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result,
        () = shutdown => {
            tracing::info!(service = %name, "shutting down: finishing in-flight calls");
            let _ = stopping_tx.send(true);
        }
    }
    if let Ok(result) = tokio::time::timeout(grace, &mut server).await {
        return result;
    }
    tracing::warn!(service = %name, grace_secs = grace.as_secs_f64(), "grace period over; stopping the calls still running");
    let _ = expired_tx.send(true);
    // Stopped calls answer at once; give the answers a moment to be written.
    match tokio::time::timeout(std::time::Duration::from_secs(1), server).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// Resolves on Ctrl-C or SIGTERM: the signal a process manager sends.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
