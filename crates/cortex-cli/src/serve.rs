//! `cortex serve SERVICE`: one service in the foreground.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cortex_cognition::CognitionConfig;
use cortex_service::{ServiceConfig, serve, shutdown_signal};

use crate::cli::{Database, ServeArgs, ServiceName};
use crate::connect::{ClientFlags, Credentials};
use crate::exit::Failure;
use crate::system;

pub(crate) async fn run(args: ServeArgs, flags: &ClientFlags) -> Result<(), Failure> {
    // Files first: a bad one fails before anything is made or opened.
    let tls = args.tls.server()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (auth, auth_summary) = crate::auth::service_auth(&args.auth, &data_dir(&args)?)?;
    if auth.is_enabled() {
        tracing::info!("{auth_summary}");
    } else {
        crate::auth::warn(&auth_summary);
    }
    let config = ServiceConfig {
        max_body_bytes: args.max_body_bytes,
        grace_period: Duration::from_secs(args.grace_secs),
        auth,
        tls,
        ..ServiceConfig::default()
    };
    let config = args.limits.apply(config, &args.host);
    let files = crate::limits::raise_open_files_limit();
    tracing::debug!(open_files_limit = files, "open-file limit");
    // The port first: one in use fails before anything opens.
    let (name, port) = match args.service {
        ServiceName::Memory => ("memory", args.port.unwrap_or(9000)),
        ServiceName::Cognition => (
            "cognition",
            args.port.unwrap_or(cortex_cognition::DEFAULT_PORT),
        ),
        ServiceName::Core => ("core", args.port.unwrap_or(cortex_core::DEFAULT_PORT)),
    };
    let listener = system::bind(&args.host, port, name, "--port or PORT").await?;
    let mut background = None;
    let service = match args.service {
        ServiceName::Memory => {
            let database = args.database().map_err(Failure::usage)?;
            system::memory_service(&database).await?
        }
        ServiceName::Cognition => {
            // Memory is found through discovery, like any client's, and its
            // health checked actively so a recovered memory is used at once.
            let health = crate::connect::health_checks(&flags.config()?, "memory");
            let target = flags.connect_checked(|c| c, Some(health)).await?;
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
        ServiceName::Core => {
            // Memory and cognition through discovery, health-checked, as
            // core itself (role `service`): its drain stores inputs after
            // their callers are gone (see cortex_core::front).
            let dir = data_dir(&args)?;
            let flags = ClientFlags {
                credentials: Credentials::Service(dir.clone()),
                ..flags.clone()
            };
            let health = crate::connect::health_checks(&flags.config()?, "memory");
            let target = flags.connect_checked(|c| c, Some(health)).await?;
            let (service, running) =
                system::core_service(&dir, target.client, &config.auth, args.max_pending)?;
            background = Some(running);
            service
        }
    };
    let bound = listener
        .local_addr()
        .map_err(|e| Failure::other(e.to_string()))?;
    let registration = match &args.register {
        Some(url) => Some(register(url, name, &args, &format!("{scheme}://{bound}")).await?),
        None => None,
    };
    // One line a script or a test can wait for.
    crate::output::line(format!("{name} service listening on {scheme}://{bound}"))?;
    let served = serve(listener, service, config, shutdown_signal()).await;
    if let Some(registration) = registration {
        // Leave discovery at once rather than after the lease expires.
        if let Err(error) = registration.deregister().await {
            tracing::warn!(%error, "could not deregister; the lease will expire");
        }
    }
    if let Some(background) = background {
        background.abort();
    }
    served.map_err(|e| Failure::other(format!("server failed: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}

/// Where the JWT secret is kept: `--data-dir` (or `CORTEX_DATA_DIR`), else
/// memory's SQLite database directory (`./.cortex` by default, as `cortex
/// up` keeps it), else `./.cortex`.
fn data_dir(args: &ServeArgs) -> Result<PathBuf, Failure> {
    if let Some(dir) = &args.data_dir {
        return Ok(dir.clone());
    }
    Ok(match args.service {
        ServiceName::Memory => match args.database().map_err(Failure::usage)? {
            Database::Sqlite(path) => path
                .parent()
                .filter(|dir| !dir.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            Database::Postgres(_) => PathBuf::from(crate::auth::DEFAULT_DATA_DIR),
        },
        ServiceName::Cognition | ServiceName::Core => PathBuf::from(crate::auth::DEFAULT_DATA_DIR),
    })
}

/// Registers `name` at its advertised URL (by default `bound`, the URL it
/// is served at) in the etcd at `url`.
#[cfg(feature = "etcd")]
async fn register(
    url: &str,
    name: &str,
    args: &ServeArgs,
    bound: &str,
) -> Result<cortex_client::discovery::EtcdRegistration, Failure> {
    use cortex_client::discovery::{Endpoint, EtcdConfig, EtcdRegistration};
    let config =
        EtcdConfig::from_url(url).map_err(|e| Failure::usage(format!("--register: {e}")))?;
    let advertise = args.advertise.clone().unwrap_or_else(|| bound.to_owned());
    let endpoint = Endpoint::new(advertise);
    endpoint
        .validate()
        .map_err(|e| Failure::usage(format!("--advertise: {e}")))?;
    let ttl = Duration::from_secs(args.register_ttl.max(1));
    let registration = EtcdRegistration::register(config, name, endpoint.clone(), ttl)
        .await
        .map_err(|e| Failure::new(crate::exit::Code::Unavailable, format!("--register: {e}")))?;
    tracing::info!(service = name, endpoint = %endpoint.url, key = registration.key(), "registered in etcd");
    Ok(registration)
}

/// Without the `etcd` feature, `--register` says how to get it (after
/// checking the URL, so a typo is still named first).
#[cfg(not(feature = "etcd"))]
async fn register(
    url: &str,
    _name: &str,
    _args: &ServeArgs,
    _bound: &str,
) -> Result<Registration, Failure> {
    cortex_client::discovery::EtcdConfig::from_url(url)
        .map_err(|e| Failure::usage(format!("--register: {e}")))?;
    Err(Failure::usage(format!(
        "--register: {}",
        cortex_client::DiscoveryError::NotBuiltIn {
            what: "etcd registration".into(),
            feature: "etcd",
        }
    )))
}

/// Stands for a registration in a build without etcd; never made.
#[cfg(not(feature = "etcd"))]
enum Registration {}

#[cfg(not(feature = "etcd"))]
impl Registration {
    async fn deregister(self) -> Result<(), String> {
        match self {}
    }
}
