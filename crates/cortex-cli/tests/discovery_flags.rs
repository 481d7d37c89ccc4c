//! `--discovery`: each backend reached from the command line, and its
//! mistakes reported with the documented exit codes.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn cortex(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cortex"))
        .args(args)
        .env_remove("CORTEX_DISCOVERY")
        .output()
        .unwrap();
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
fn a_missing_file_is_unavailable_and_named() {
    let (code, _, stderr) = cortex(&[
        "--discovery",
        "file:/nonexistent/services.toml",
        "health",
        "memory",
    ]);
    assert_eq!(code, 4, "{stderr}");
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
