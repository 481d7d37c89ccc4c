//! `cortex serve SERVICE`.

use std::time::Duration;

use cortex_service::{ServiceConfig, serve, shutdown_signal};
use tokio::net::TcpListener;

use crate::cli::{ServeArgs, ServiceName};

/// A failure of a command, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    /// Bad flags or configuration.
    #[error("{0}")]
    Usage(String),
    /// The service could not start or failed while running.
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Failed(_) => 1,
        }
    }
}

pub(crate) async fn run(args: ServeArgs) -> Result<(), CommandError> {
    let config = ServiceConfig {
        max_body_bytes: args.max_body_bytes,
        grace_period: Duration::from_secs(args.grace_secs),
        ..ServiceConfig::default()
    };
    let (service, port) = match args.service {
        ServiceName::Memory => {
            let path = args.db_path().map_err(CommandError::Usage)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    CommandError::Failed(format!(
                        "cannot create the data directory {}: {e}",
                        dir.display()
                    ))
                })?;
            }
            let store = cortex_memory::store::Store::open(&path)
                .await
                .map_err(|e| CommandError::Failed(e.to_string()))?;
            tracing::info!(db = %path.display(), "memory store open");
            let service = cortex_memory::service::build(store)
                .map_err(|e| CommandError::Failed(e.to_string()))?;
            (service, args.port.unwrap_or(9000))
        }
    };
    let address = format!("{}:{port}", args.host);
    let listener = TcpListener::bind(&address).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            CommandError::Failed(format!(
                "port {port} on {} is already in use (choose another with --port or PORT)",
                args.host
            ))
        } else {
            CommandError::Failed(format!("cannot listen on {address}: {e}"))
        }
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    // One line a script or a test can wait for.
    println!("{} service listening on http://{bound}", service.name());
    serve(listener, service, config, shutdown_signal())
        .await
        .map_err(|e| CommandError::Failed(format!("server failed: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}
