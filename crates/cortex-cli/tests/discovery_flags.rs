//! `--discovery`: each backend reached from the command line or the config
//! file's `discovery` key, the order between them, and their mistakes
//! reported with the documented exit codes.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn cortex(args: &[&str]) -> (i32, String, String) {
    cortex_with(args, &[])
}

/// Runs `cortex ARGS` with `vars` set, and without any discovery or client
/// settings inherited from the test's own environment.
fn cortex_with(args: &[&str], vars: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cortex"));
    command.args(args);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "CORTEX_DISCOVERY"
            || name.starts_with("CORTEX_CLIENT_")
            || name.ends_with("_SERVICE_URL")
        {
            command.env_remove(&*name);
        }
    }
    let output = command.envs(vars.iter().copied()).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_spec_is_a_usage_error() {
    let (code, _, stderr) = cortex(&["--discovery", "zookeeper://x", "health"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a discovery"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_missing_file_is_a_usage_error_and_named() {
    let (code, _, stderr) = cortex(&[
        "--discovery",
        "file:/nonexistent/services.toml",
        "health",
        "memory",
    ]);
    // What the user named is wrong: asking again cannot help.
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/services.toml"), "{stderr}");
}

#[test]
fn a_file_names_the_services() {
    let dir = tempfile::tempdir().unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = dir.path().join("services.toml");
    std::fs::write(
        &path,
        format!("[services.search]\nendpoints = [\"http://127.0.0.1:{dead}\"]\n"),
    )
    .unwrap();
    let spec = format!("file:{}", path.display());
    let (code, stdout, stderr) = cortex(&["--json", "--discovery", &spec, "health", "search"]);
    assert_eq!(
        code, 4,
        "the dead endpoint is unavailable: {stdout} {stderr}"
    );
    assert!(
        stdout.contains(&format!("127.0.0.1:{dead}")),
        "the file's endpoint was used: {stdout}"
    );
    let (code, _, stderr) = cortex(&["--discovery", &spec, "call", "nowhere", "x", "{}"]);
    assert_eq!(code, 3, "{stderr}");
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_down_at_start_is_unavailable_and_named() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = format!("etcd://127.0.0.1:{dead}/cortex");
    let (code, _, stderr) = cortex(&["--discovery", &spec, "health", "memory"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{dead}")), "{stderr}");
}

#[cfg(feature = "etcd")]
#[test]
fn registering_in_a_dead_etcd_is_unavailable_and_named() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.sqlite3");
    let register = format!("etcd://127.0.0.1:{dead}");
    let (code, _, stderr) = cortex(&[
        "serve",
        "memory",
        "--port",
        "0",
        "--db",
        db.to_str().unwrap(),
        "--register",
        &register,
    ]);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("--register") && stderr.contains(&format!("127.0.0.1:{dead}")),
        "{stderr}"
    );
}

#[test]
fn a_bad_register_url_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.sqlite3");
    let (code, _, stderr) = cortex(&[
        "serve",
        "memory",
        "--port",
        "0",
        "--db",
        db.to_str().unwrap(),
        "--register",
        "http://x",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--register"), "{stderr}");
}

fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_config_file_chooses_discovery_and_the_command_line_wins() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (memory, _db) = runtime.block_on(cortex_test_support::start_memory(
        cortex_service::ServiceConfig::default(),
    ));
    let live = memory.url("");
    let dead = format!("http://127.0.0.1:{}", dead_port());

    // The config file names a discovery file beside it, which routes
    // memory to the live server.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("services.toml"),
        format!("[services.memory]\nendpoints = [\"{live}\"]\n"),
    )
    .unwrap();
    let config = dir.path().join("client.toml");
    std::fs::write(
        &config,
        "discovery = \"file:services.toml\"\nmax_retries = 0\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // NAME_SERVICE_URL points at a dead port: only `env` discovery reads it.
    let env = [("MEMORY_SERVICE_URL", dead.as_str())];

    let (code, stdout, stderr) = cortex_with(&["--config", config, "tools", "memory"], &env);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains("store_input"), "memory's tools: {stdout}");
    let (code, stdout, stderr) =
        cortex_with(&["--json", "--config", config, "health", "memory"], &env);
    assert_eq!(code, 0, "{stdout} {stderr}");
    assert!(stdout.contains(&live), "the file's endpoint: {stdout}");

    // `--discovery env` on the command line wins over the file: memory is
    // now the dead MEMORY_SERVICE_URL.
    let (code, stdout, stderr) = cortex_with(
        &[
            "--json",
            "--discovery",
            "env",
            "--config",
            config,
            "health",
            "memory",
        ],
        &env,
    );
    assert_eq!(code, 4, "{stdout} {stderr}");
    assert!(stdout.contains(&dead), "the variable's endpoint: {stdout}");
    assert!(!stdout.contains(&live), "{stdout}");
    let (code, _, stderr) = cortex_with(
        &["--discovery", "env", "--config", config, "tools", "memory"],
        &env,
    );
    assert_eq!(code, 4, "{stderr}");

    // So does CORTEX_DISCOVERY.
    let (code, stdout, stderr) = cortex_with(
        &["--json", "--config", config, "health", "memory"],
        &[env[0], ("CORTEX_DISCOVERY", "env")],
    );
    assert_eq!(code, 4, "{stdout} {stderr}");
    assert!(stdout.contains(&dead), "{stdout}");
}

#[test]
fn a_bad_discovery_in_the_config_file_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (text, option) in [
        ("discovery = \"zookeeper://x\"\n", "`discovery`"),
        ("discovery = 7\n", "`discovery`"),
        (
            "[services.memory]\ndiscovery = \"env\"\n",
            "`services.memory.discovery`",
        ),
    ] {
        let config = dir.path().join("client.toml");
        std::fs::write(&config, text).unwrap();
        let (code, _, stderr) = cortex_with(
            &["--config", config.to_str().unwrap(), "tools", "memory"],
            &[],
        );
        assert_eq!(code, 2, "{text}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with("cortex: ") && stderr.contains(option),
            "{text}: {stderr}"
        );
    }
    // The line also says what is wrong and what is accepted; the file is
    // checked even when --discovery makes its choice moot.
    let config = dir.path().join("client.toml");
    std::fs::write(&config, "discovery = \"zookeeper://x\"\n").unwrap();
    let config = config.to_str().unwrap();
    let (code, _, stderr) = cortex_with(&["--discovery", "env", "--config", config, "status"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("`zookeeper://x` is not a discovery")
            && stderr.contains("file:PATH")
            && stderr.contains("etcd://"),
        "{stderr}"
    );
}
