//! Running a service: the listener and the shutdown signal belong to the caller.

use std::future::Future;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ServiceConfig;
use crate::metrics::CountedListener;
use crate::registry::Service;
use crate::routes::{ShutdownSignals, router};

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
    let open_connections = service.open_connections();
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
    let listener = CountedListener {
        listener,
        open: open_connections,
    };
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
