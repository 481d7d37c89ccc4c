//! `cortex up`: memory and cognition in one process until Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use cortex_client::discovery::HealthChecked;
use cortex_client::{NetworkMcpClient, StaticDiscovery};
use cortex_cognition::CognitionConfig;
use cortex_service::{ServiceConfig, shutdown_signal};

use crate::cli::UpArgs;
use crate::connect::ClientFlags;
use crate::exit::Failure;
use crate::output::line;
use crate::system::{self, Running};

/// How long both services get to become healthy.
const READY_WITHIN: Duration = Duration::from_secs(10);

pub(crate) async fn run(args: UpArgs, flags: &ClientFlags) -> Result<(), Failure> {
    // Files first: a bad one fails before anything is made or opened.
    let tls = args.tls.server()?;
    // Private: it holds every user's data and the secret that signs tokens.
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
    dir.create(&args.data_dir).map_err(|e| {
        Failure::other(format!(
            "cannot create the data directory {}: {e}",
            args.data_dir.display()
        ))
    })?;
    let data_dir = std::fs::canonicalize(&args.data_dir).map_err(|e| {
        Failure::other(format!(
            "cannot resolve the data directory {}: {e}",
            args.data_dir.display()
        ))
    })?;
    let db = data_dir.join("memory.sqlite3");
    line(format!("data directory: {}", data_dir.display()))?;
    let (auth, auth_summary) = crate::auth::service_auth(&args.auth, &data_dir)?;
    if !auth.is_enabled() {
        crate::auth::warn(&auth_summary);
    }
    // Both ports first: a port in use fails before anything starts.
    let memory_listener =
        system::bind(&args.host, args.memory_port, "memory", "--memory-port").await?;
    let cognition_listener = system::bind(
        &args.host,
        args.cognition_port,
        "cognition",
        "--cognition-port",
    )
    .await?;

    let mut config = args.limits.apply(
        ServiceConfig {
            grace_period: Duration::from_secs(args.grace_secs),
            auth: auth.clone(),
            tls: tls.clone(),
            ..ServiceConfig::default()
        },
        &args.host,
    );
    // Two services share this process's open files: each gets half.
    let files = crate::limits::raise_open_files_limit();
    let wanted = config.limits.max_connections;
    config.limits.max_connections =
        crate::limits::share_connections(wanted, config.limits.health_connections, 2, files);
    if config.limits.max_connections < wanted {
        tracing::warn!(
            wanted,
            cap = config.limits.max_connections,
            open_files_limit = files,
            "connection cap of each service lowered to fit the open-file limit"
        );
    }
    let memory = Running::spawn(
        memory_listener,
        system::memory_service(&db).await?,
        config.clone(),
    )?;
    // Cognition reads memory over the network, through the client, at the
    // address just bound (with the client settings of --config and env),
    // checking memory's health actively: when memory is back after an
    // outage, the first passing check half-opens the client's open breaker,
    // so cognition uses memory again at once instead of failing fast for the
    // rest of `reset_timeout`. Over TLS it trusts the services' own
    // certificate unless the client settings name a CA (see `crate::tls`).
    let client_config = args.tls.internal_client(flags.config()?);
    let memory_discovery = HealthChecked::new(
        StaticDiscovery::new().with("memory", memory.url()),
        crate::connect::health_checks(&client_config, "memory"),
    );
    let memory_client = NetworkMcpClient::builder(Arc::new(memory_discovery))
        .config(client_config.clone())
        .build()?;
    let cognition = Running::spawn(
        cognition_listener,
        system::cognition_service(memory_client, CognitionConfig::default())?,
        config,
    )?;

    let probe = NetworkMcpClient::builder(Arc::new(
        StaticDiscovery::new()
            .with("memory", memory.url())
            .with("cognition", cognition.url()),
    ))
    .config(client_config.clone())
    .build()?;
    if let Err(failure) = system::wait_healthy(&probe, &["memory", "cognition"], READY_WITHIN).await
    {
        let _ = cognition.stop().await;
        let _ = memory.stop().await;
        return Err(failure);
    }
    line(format!(
        "memory     {}  (SQLite {})",
        memory.url(),
        db.display()
    ))?;
    line(format!("cognition  {}", cognition.url()))?;
    if auth.is_enabled() {
        line(&auth_summary)?;
    }
    // Client commands reach the defaults over http://; with TLS they are told.
    let defaults = tls.is_none()
        && args.memory_port == 9000
        && args.cognition_port == cortex_cognition::DEFAULT_PORT
        && matches!(args.host.as_str(), "127.0.0.1" | "localhost" | "0.0.0.0");
    // Client commands find the secret in ./.cortex; elsewhere they need to
    // be told.
    let default_dir = std::fs::canonicalize(crate::auth::DEFAULT_DATA_DIR)
        .is_ok_and(|default| default == data_dir);
    let mut variables = Vec::new();
    if !defaults {
        variables.push(format!("MEMORY_SERVICE_URL={}", memory.url()));
        variables.push(format!("COGNITION_SERVICE_URL={}", cognition.url()));
    }
    if auth.is_enabled() && !default_dir {
        variables.push(format!("CORTEX_DATA_DIR={}", data_dir.display()));
    }
    // Client commands trust, and show, what the internal clients do.
    if tls.is_some() {
        let files = [
            ("CORTEX_CLIENT_CA_FILE", &client_config.ca_file),
            ("CORTEX_CLIENT_CLIENT_CERT", &client_config.client_cert),
            ("CORTEX_CLIENT_CLIENT_KEY", &client_config.client_key),
        ];
        for (variable, file) in files {
            if let Some(file) = file
                && std::env::var_os(variable).is_none()
            {
                let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
                variables.push(format!("{variable}={}", file.display()));
            }
        }
    }
    if variables.is_empty() {
        line("try: cortex status   (another terminal)")?;
    } else {
        line(format!("try: {} cortex status", variables.join(" ")))?;
    }
    line(format!(
        "ready: memory {} cognition {} (Ctrl-C stops both)",
        memory.url(),
        cognition.url()
    ))?;

    // Run until a signal, or until a server fails on its own.
    let failed = tokio::select! {
        () = shutdown_signal() => None,
        () = watch_finished(&memory, &cognition) => Some(()),
    };
    let _ = line("stopping: finishing calls in flight");
    // Cognition first: it depends on memory.
    let cognition_stopped = cognition.stop().await;
    let memory_stopped = memory.stop().await;
    cognition_stopped?;
    memory_stopped?;
    if failed.is_some() {
        return Err(Failure::other("a service stopped unexpectedly"));
    }
    let _ = line("stopped");
    Ok(())
}

/// Resolves when either server has ended on its own.
async fn watch_finished(a: &Running, b: &Running) {
    while !a.is_finished() && !b.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
