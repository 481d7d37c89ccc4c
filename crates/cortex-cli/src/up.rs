//! `cortex up`: memory, cognition and core in one process until Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use cortex_client::discovery::FileDiscovery;
use cortex_client::{NetworkMcpClient, StaticDiscovery};
use cortex_cognition::CognitionConfig;
use cortex_service::{ServiceConfig, shutdown_signal};

use crate::cli::{Database, UpArgs};
use crate::connect::{ClientFlags, health_checked};
use crate::exit::Failure;
use crate::output::line;
use crate::replicas::{self, Replica, ReplicaArgs};
use crate::system::{self, Running};

/// How long both services get to become healthy.
const READY_WITHIN: Duration = Duration::from_secs(10);

pub(crate) async fn run(args: UpArgs, flags: &ClientFlags) -> Result<(), Failure> {
    // Files first: a bad one fails before anything is made or opened.
    let tls = args.tls.server()?;
    if tls.is_some() && args.memory_replicas > 1 {
        // The replica processes are started without the certificate files.
        return Err(Failure::usage(
            "--memory-replicas and --tls-cert cannot be combined yet: run the replicas with \
             `cortex serve memory --tls-cert …` and list them in a discovery file",
        ));
    }
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
    if args.memory_replicas == 0 {
        return Err(Failure::usage("--memory-replicas must be at least 1"));
    }
    let database = match &args.database_url {
        Some(url) => crate::cli::parse_database(url)
            .map_err(|e| Failure::usage(format!("--database-url: {e}")))?,
        None => Database::Sqlite(data_dir.join("memory.sqlite3")),
    };
    let shared_url = match &database {
        Database::Postgres(url) => Some(url.clone()),
        Database::Sqlite(_) if args.memory_replicas > 1 => {
            return Err(Failure::usage(
                "--memory-replicas above 1 needs --database-url postgres://…: replicas share \
                 one PostgreSQL database (a SQLite file belongs to one process)",
            ));
        }
        Database::Sqlite(_) => None,
    };
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
            tls: tls.clone(),
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
        system::memory_service(&database).await?,
        config.clone(),
    )?;
    // More replicas: processes of their own on the same database, listed
    // with this one in a discovery file that cognition follows.
    let mut replicas = Vec::new();
    let discovery_file = data_dir.join("discovery.toml");
    if let Some(url) = shared_url.as_deref().filter(|_| args.memory_replicas > 1) {
        let replica_args = ReplicaArgs {
            host: &args.host,
            database_url: url,
            data_dir: &data_dir,
            no_auth: !auth.is_enabled(),
        };
        for _ in 1..args.memory_replicas {
            match Replica::start(&replica_args).await {
                Ok(replica) => replicas.push(replica),
                Err(failure) => {
                    for replica in replicas {
                        replica.stop().await;
                    }
                    let _ = memory.stop().await;
                    return Err(failure);
                }
            }
        }
    }
    let memory_urls: Vec<String> = std::iter::once(memory.url())
        .chain(replicas.iter().map(|r| r.url.clone()))
        .collect();
    if !replicas.is_empty() {
        let cognition_url = system::url_of(
            cognition_listener
                .local_addr()
                .map_err(|e| Failure::other(format!("cannot read the bound address: {e}")))?,
            false,
        );
        replicas::write_discovery(&discovery_file, &memory_urls, &cognition_url)?;
    }
    // Cognition reads memory over the network, through the client, at the
    // address just bound (with the client settings of --config and env),
    // checking memory's health actively: when memory is back after an
    // outage, the first passing check half-opens the client's open breaker,
    // so cognition uses memory again at once instead of failing fast for the
    // rest of `reset_timeout`. Over TLS it trusts the services' own
    // certificate unless the client settings name a CA (see `crate::tls`).
    let client_config = args.tls.internal_client(flags.config()?);
    let memory_discovery: Arc<dyn cortex_client::ServiceDiscovery> = if replicas.is_empty() {
        Arc::new(health_checked(
            StaticDiscovery::new().with("memory", memory.url()),
            &client_config,
            "memory",
        ))
    } else {
        let file = FileDiscovery::open(&discovery_file, Duration::from_secs(1))
            .await
            .map_err(|e| Failure::other(e.to_string()))?;
        Arc::new(health_checked(file, &client_config, "memory"))
    };
    let memory_client = NetworkMcpClient::builder(memory_discovery)
        .config(client_config.clone())
        .build()?;
    let cognition = Running::spawn(
        cognition_listener,
        system::cognition_service(memory_client, CognitionConfig::default())?,
        config.clone(),
    )?;
    // Core reaches both as itself (role `service`, see cortex_core::front),
    // checking memory's health actively like cognition does.
    // Every memory replica, when there are several.
    let core_targets = StaticDiscovery::new().with("cognition", cognition.url());
    core_targets.register(
        "memory",
        memory_urls
            .iter()
            .map(cortex_client::Endpoint::new)
            .collect(),
    );
    let core_discovery = health_checked(core_targets, &client_config, "memory");
    let mut core_client =
        NetworkMcpClient::builder(Arc::new(core_discovery)).config(client_config.clone());
    if auth.is_enabled()
        && let Some(tokens) = crate::auth::service_tokens(&data_dir)?
    {
        core_client = core_client.token_provider(tokens);
    }
    let (core_service, core_work) =
        system::core_service(&data_dir, core_client.build()?, &auth, args.max_pending)?;
    let core = Running::spawn(core_listener, core_service, config)?;

    let probe = NetworkMcpClient::builder(Arc::new(
        StaticDiscovery::new()
            .with("memory", memory.url())
            .with("cognition", cognition.url())
            .with("core", core.url()),
    ))
    .config(client_config.clone())
    .build()?;
    if let Err(failure) =
        system::wait_healthy(&probe, &["memory", "cognition", "core"], READY_WITHIN).await
    {
        core_work.abort();
        let _ = core.stop().await;
        let _ = cognition.stop().await;
        let _ = memory.stop().await;
        return Err(failure);
    }
    let stored_in = match &database {
        Database::Sqlite(path) => format!("SQLite {}", path.display()),
        Database::Postgres(url) => format!("PostgreSQL {}", system::redact(url)),
    };
    line(format!("memory     {}  ({stored_in})", memory.url()))?;
    for replica in &replicas {
        line(format!(
            "memory     {}  (replica, process {})",
            replica.url,
            replica
                .pid()
                .map_or_else(|| "-".to_owned(), |p| p.to_string())
        ))?;
    }
    if !replicas.is_empty() {
        line(format!("discovery  {}", discovery_file.display()))?;
    }
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
    // Client commands reach the defaults over http://; with TLS they are told.
    let defaults = tls.is_none()
        && args.memory_port == 9000
        && args.cognition_port == cortex_cognition::DEFAULT_PORT
        && args.core_port == cortex_core::DEFAULT_PORT
        && matches!(args.host.as_str(), "127.0.0.1" | "localhost" | "0.0.0.0");
    // Client commands find the secret in ./.cortex; elsewhere they need to
    // be told.
    let default_dir = std::fs::canonicalize(crate::auth::DEFAULT_DATA_DIR)
        .is_ok_and(|default| default == data_dir);
    let mut variables = Vec::new();
    if !replicas.is_empty() {
        variables.push(format!(
            "CORTEX_DISCOVERY=file:{}",
            discovery_file.display()
        ));
    } else if !defaults {
        variables.push(format!("MEMORY_SERVICE_URL={}", memory.url()));
        variables.push(format!("COGNITION_SERVICE_URL={}", cognition.url()));
        variables.push(format!("CORE_SERVICE_URL={}", core.url()));
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
        "ready: memory {} cognition {} core {} (Ctrl-C stops all three)",
        memory_urls.join(","),
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
    for replica in replicas {
        replica.stop().await;
    }
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
