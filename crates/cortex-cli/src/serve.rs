//! `cortex serve SERVICE`: one service in the foreground.

use std::time::Duration;

use cortex_cognition::CognitionConfig;
use cortex_service::{ServiceConfig, serve, shutdown_signal};

use crate::cli::{ServeArgs, ServiceName};
use crate::connect::ClientFlags;
use crate::exit::Failure;
use crate::system;

pub(crate) async fn run(args: ServeArgs, flags: &ClientFlags) -> Result<(), Failure> {
    let config = ServiceConfig {
        max_body_bytes: args.max_body_bytes,
        grace_period: Duration::from_secs(args.grace_secs),
        ..ServiceConfig::default()
    };
    // The port first: one in use fails before anything opens.
    let (name, port) = match args.service {
        ServiceName::Memory => ("memory", args.port.unwrap_or(9000)),
        ServiceName::Cognition => (
            "cognition",
            args.port.unwrap_or(cortex_cognition::DEFAULT_PORT),
        ),
    };
    let listener = system::bind(&args.host, port, name, "--port or PORT").await?;
    let service = match args.service {
        ServiceName::Memory => {
            let path = args.db_path().map_err(Failure::usage)?;
            system::memory_service(&path).await?
        }
        ServiceName::Cognition => {
            // Memory is found through discovery, like any client's.
            let target = flags.connect(|c| c)?;
            let memory = cortex_client::ServiceDiscovery::resolve(&*target.discovery, "memory")
                .await
                .map(|set| {
                    set.endpoints
                        .iter()
                        .map(|e| e.url.clone())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            tracing::info!(memory = %memory, "cognition reads memory through discovery");
            system::cognition_service(target.client, CognitionConfig::default())?
        }
    };
    let bound = listener
        .local_addr()
        .map_err(|e| Failure::other(e.to_string()))?;
    // One line a script or a test can wait for.
    crate::output::line(format!("{name} service listening on http://{bound}"))?;
    serve(listener, service, config, shutdown_signal())
        .await
        .map_err(|e| Failure::other(format!("server failed: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}
