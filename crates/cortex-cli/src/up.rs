//! `cortex up`: memory, cognition and core in one process until Ctrl-C.

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
    let core_listener = system::bind(&args.host, args.core_port, "core", "--core-port").await?;

    let mut config = args.limits.apply(
        ServiceConfig {
            grace_period: Duration::from_secs(args.grace_secs),
            auth: auth.clone(),
            ..ServiceConfig::default()
        },
        &args.host,
    );
    // Three services share this process's open files: each gets a third.
    let files = crate::limits::raise_open_files_limit();
    let wanted = config.limits.max_connections;
    config.limits.max_connections =
        crate::limits::share_connections(wanted, config.limits.health_connections, 3, files);
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
    // rest of `reset_timeout`.
    let client_config = flags.config()?;
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
        config.clone(),
    )?;
    // Core reaches both as itself (role `service`, see cortex_core::front),
    // checking memory's health actively like cognition does.
    let core_discovery = HealthChecked::new(
        StaticDiscovery::new()
            .with("memory", memory.url())
            .with("cognition", cognition.url()),
        crate::connect::health_checks(&client_config, "memory"),
    );
    let mut core_client = NetworkMcpClient::builder(Arc::new(core_discovery)).config(client_config);
    if auth.is_enabled()
        && let Some(tokens) = crate::auth::service_tokens(&data_dir)?
    {
        core_client = core_client.token_provider(tokens);
    }
    let (core_service, core_work) =
        system::core_service(&data_dir, core_client.build()?, &auth, args.max_pending)?;
    let core = Running::spawn(core_listener, core_service, config)?;

    let probe = NetworkMcpClient::new(Arc::new(
        StaticDiscovery::new()
            .with("memory", memory.url())
            .with("cognition", cognition.url())
            .with("core", core.url()),
    ))?;
    if let Err(failure) =
        system::wait_healthy(&probe, &["memory", "cognition", "core"], READY_WITHIN).await
    {
        core_work.abort();
        let _ = core.stop().await;
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
    line(format!(
        "core       {}  (outbox {}; console {}/)",
        core.url(),
        data_dir.join(system::CORE_OUTBOX).display(),
        core.url()
    ))?;
    if auth.is_enabled() {
        line(&auth_summary)?;
    }
    let defaults = args.memory_port == 9000
        && args.cognition_port == cortex_cognition::DEFAULT_PORT
        && args.core_port == cortex_core::DEFAULT_PORT
        && matches!(args.host.as_str(), "127.0.0.1" | "localhost" | "0.0.0.0");
    // Client commands find the secret in ./.cortex; elsewhere they need to
    // be told.
    let default_dir = std::fs::canonicalize(crate::auth::DEFAULT_DATA_DIR)
        .is_ok_and(|default| default == data_dir);
    let mut variables = Vec::new();
    if !defaults {
        variables.push(format!("MEMORY_SERVICE_URL={}", memory.url()));
        variables.push(format!("COGNITION_SERVICE_URL={}", cognition.url()));
        variables.push(format!("CORE_SERVICE_URL={}", core.url()));
    }
    if auth.is_enabled() && !default_dir {
        variables.push(format!("CORTEX_DATA_DIR={}", data_dir.display()));
    }
    if variables.is_empty() {
        line("try: cortex status   (another terminal)")?;
    } else {
        line(format!("try: {} cortex status", variables.join(" ")))?;
    }
    line(format!(
        "ready: memory {} cognition {} core {} (Ctrl-C stops all three)",
        memory.url(),
        cognition.url(),
        core.url()
    ))?;

    // Run until a signal, or until a server fails on its own.
    let servers = [&memory, &cognition, &core];
    let failed = tokio::select! {
        () = shutdown_signal() => None,
        () = watch_finished(&servers) => Some(()),
    };
    let _ = line("stopping: finishing calls in flight");
    // Core first, then cognition: each depends on what comes after it.
    core_work.abort();
    let core_stopped = core.stop().await;
    let cognition_stopped = cognition.stop().await;
    let memory_stopped = memory.stop().await;
    core_stopped?;
    cognition_stopped?;
    memory_stopped?;
    if failed.is_some() {
        return Err(Failure::other("a service stopped unexpectedly"));
    }
    let _ = line("stopped");
    Ok(())
}

/// Resolves when any server has ended on its own.
async fn watch_finished(servers: &[&Running]) {
    while !servers.iter().any(|s| s.is_finished()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
