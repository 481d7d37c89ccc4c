//! Authentication with the real `cortex` binary: `cortex up` makes a
//! private secret once and keeps it, client commands make their tokens from
//! it (or send `--token`), `cortex token` prints tokens that verify, and
//! `--no-auth`, `AUTH_ENABLED=false` and a short `JWT_SECRET_KEY` do what
//! they say.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};

use common::{Run, cortex, free_port, run_with_env};
use cortex_service::AuthConfig;
use reqwest::header::HeaderValue;

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cortex up` on free ports with `data` as its data directory; its stdout
/// lines up to `ready:`.
fn up(data: &Path) -> (Process, Vec<String>, String) {
    let port = free_port();
    let mut child = cortex()
        .arg("up")
        .arg("--data-dir")
        .arg(data)
        .args(["--memory-port", &port.to_string()])
        .args(["--cognition-port", &free_port().to_string()])
        .args(["--core-port", &free_port().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "no ready line: {lines:?}"
        );
        let done = line.starts_with("ready:");
        lines.push(line.trim_end().to_string());
        if done {
            break;
        }
    }
    (Process(child), lines, format!("http://127.0.0.1:{port}"))
}

/// `cortex --service memory=URL ARGS` with `CORTEX_DATA_DIR=data`.
fn client(memory: &str, data: &Path, args: &[&str]) -> Run {
    let flag = format!("memory={memory}");
    let mut all = vec!["--service", flag.as_str()];
    all.extend_from_slice(args);
    run_with_env(&all, None, &[("CORTEX_DATA_DIR", data)])
}

#[test]
fn up_keeps_a_private_secret_and_client_commands_make_tokens_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (process, lines, memory) = up(&data);
    let secret_file = data.join("jwt-secret");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert_eq!(secret.trim().len(), 64, "{secret:?}");
    #[cfg(unix)]
    {
        assert_eq!(mode(&secret_file), 0o600);
        assert_eq!(mode(&data), 0o700);
    }
    let text = lines.join("\n");
    assert!(text.contains("auth: JWT (HS256"), "{text}");
    // Client commands elsewhere are told where the secret is.
    assert!(
        text.contains(&format!("CORTEX_DATA_DIR={}", data.display())),
        "{text}"
    );

    // No token given: one is made from the secret, as the operator (admin).
    let stored = client(
        &memory,
        &data,
        &[
            "--json",
            "call",
            "memory",
            "store_input",
            "user_id=u1",
            "input_data.content=hi",
        ],
    )
    .ok()
    .json();
    assert_eq!(stored["status"], "stored", "{stored}");
    // As `--user bob`: bob's own token, which reaches only bob's data.
    client(
        &memory,
        &data,
        &["--user", "bob", "read", "memory", "history/u1"],
    )
    .fails(5, "forbidden");
    let bobs = client(
        &memory,
        &data,
        &["--user", "bob", "--json", "read", "memory", "history/bob"],
    )
    .ok();
    assert_eq!(bobs.json(), serde_json::json!([]));

    // Where there is no secret, no token: refused, with what to do.
    let empty = tempfile::tempdir().unwrap();
    let refused =
        client(&memory, empty.path(), &["read", "memory", "history/u1"]).fails(5, "unauthorized");
    assert!(refused.stderr.contains("--token"), "{refused:?}");
    // `--token` from `cortex token`: u1's own token reads u1's history.
    let token = run_with_env(
        &["token", "--user", "u1"],
        None,
        &[("CORTEX_DATA_DIR", &data)],
    )
    .ok()
    .stdout
    .trim()
    .to_string();
    let read = client(
        &memory,
        empty.path(),
        &["--token", &token, "--json", "read", "memory", "history/u1"],
    )
    .ok();
    assert_eq!(read.json()[0]["content"], "hi");

    // The HTTP face: a bare request is refused with a challenge; /health is open.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let bare = http
            .get(format!("{memory}/resource/history/u1"))
            .send()
            .await
            .unwrap();
        assert_eq!(bare.status(), 401);
        let challenge = bare.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer realm=\"memory\""),
            "{challenge}"
        );
        let health = http.get(format!("{memory}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
    });

    // Started again on the same directory: the same secret, so the old
    // token still works.
    drop(process);
    let (_process, _, memory) = up(&data);
    assert_eq!(std::fs::read_to_string(&secret_file).unwrap(), secret);
    client(
        &memory,
        empty.path(),
        &["--token", &token, "read", "memory", "history/u1"],
    )
    .ok();
}

#[test]
fn cortex_token_prints_a_token_that_verifies_with_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let no_secret = run_with_env(
        &["token", "--user", "alice"],
        None,
        &[("CORTEX_DATA_DIR", &data)],
    )
    .fails(2, "no secret to sign with");
    assert!(no_secret.stderr.contains("cortex up"), "{no_secret:?}");

    // `cortex serve memory` makes the secret beside its database.
    let mut serve = cortex()
        .env_remove("CORTEX_DATA_DIR")
        .args(["serve", "memory", "--port", "0", "--db"])
        .arg(data.join("memory.sqlite3"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _serve = Process(serve);
    assert!(line.contains("listening on"), "{line}");
    let secret = std::fs::read_to_string(data.join("jwt-secret")).unwrap();
    #[cfg(unix)]
    assert_eq!(mode(&data.join("jwt-secret")), 0o600);

    let printed = run_with_env(
        &[
            "token", "--user", "alice", "--role", "admin", "--role", "metrics", "--ttl", "2h",
        ],
        None,
        &[("CORTEX_DATA_DIR", &data)],
    )
    .ok();
    let token = printed.stdout.trim();
    assert_eq!(printed.stdout.lines().count(), 1, "{printed:?}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let caller = runtime
        .block_on(async {
            let header = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
            AuthConfig::hs256(secret.trim())
                .unwrap()
                .verify(Some(&header))
                .await
        })
        .unwrap()
        .unwrap();
    assert_eq!(caller.user_id(), "alice");
    assert_eq!(caller.roles(), ["admin", "metrics"]);
    // The same token with another secret does not verify.
    let other = runtime.block_on(async {
        let header = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        AuthConfig::hs256("another secret of at least 32 bytes!!")
            .unwrap()
            .verify(Some(&header))
            .await
    });
    assert!(other.is_err());

    let json = run_with_env(
        &[
            "--json",
            "token",
            "--user",
            "bob",
            "--ttl",
            "90s",
            "--data-dir",
        ],
        None,
        &[],
    );
    // `--data-dir` needs its value: a usage error, not a token.
    assert_eq!(json.code, 2, "{json:?}");
    let json = run_with_env(
        &[
            "--json",
            "token",
            "--user",
            "bob",
            "--ttl",
            "90s",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
        &[],
    )
    .ok()
    .json();
    assert_eq!(json["user"], "bob");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires = json["expires_at"].as_u64().unwrap();
    assert!((now + 80..=now + 100).contains(&expires), "{json}");
    run_with_env(
        &["token", "--ttl", "0s"],
        None,
        &[("CORTEX_DATA_DIR", &data)],
    )
    .fails(2, "--ttl");
}

/// Starts `cortex serve memory` with `args` and `vars`; its URL and its
/// first stderr line.
fn serve_with(args: &[&str], vars: &[(&str, &str)], db: &Path) -> (Process, String, String) {
    // The secret, if one is made, goes beside the database.
    let mut child = cortex()
        .env_remove("CORTEX_DATA_DIR")
        .args(["serve", "memory", "--port", "0", "--db"])
        .arg(db)
        .args(args)
        .envs(vars.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read all of stderr (a closed pipe could stop the service's logging),
    // keeping the first line.
    let (first, lines) = std::sync::mpsc::channel();
    let errors = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(errors).lines().map_while(Result::ok) {
            let _ = first.send(line);
        }
    });
    let stderr = lines
        .recv_timeout(std::time::Duration::from_secs(30))
        .unwrap_or_default();
    // The stderr line first: it says why when no ready line comes.
    eprintln!("service stderr: {stderr}");
    let url = common::ready_url(&mut child);
    (Process(child), url, stderr)
}

#[test]
fn no_auth_warns_and_serves_every_caller() {
    let dir = tempfile::tempdir().unwrap();
    for (args, vars) in [
        (vec!["--no-auth"], vec![]),
        (vec![], vec![("AUTH_ENABLED", "false")]),
    ] {
        let db = dir.path().join(format!("{}.sqlite3", args.len()));
        let (_process, url, warning) = serve_with(&args, &vars, &db);
        assert!(
            warning.starts_with("cortex: warning: auth: OFF"),
            "{args:?} {vars:?}: {warning}"
        );
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let status = runtime.block_on(async {
            reqwest::get(format!("{url}/resource/history/u1"))
                .await
                .unwrap()
                .status()
        });
        assert_eq!(status, 200);
        assert!(!db.with_file_name("jwt-secret").exists(), "no secret made");
    }
}

#[test]
fn a_short_jwt_secret_or_a_bad_auth_setting_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.sqlite3");
    let start = |vars: &[(&str, &str)], args: &[&str]| -> Run {
        let output = cortex()
            .args(["serve", "memory", "--port", "0", "--db"])
            .arg(&db)
            .args(args)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        output.into()
    };
    start(&[("JWT_SECRET_KEY", "too short")], &[]).fails(2, "at least 32 bytes");
    start(&[("AUTH_ENABLED", "maybe")], &[]).fails(2, "AUTH_ENABLED");
    start(&[], &["--jwks-url", "ftp://idp.example.com/keys"]).fails(2, "https://");
    start(
        &[],
        &[
            "--jwks-url",
            "https://idp.example.com/keys",
            "--jwks-ca",
            "/nonexistent/idp-ca.pem",
        ],
    )
    .fails(2, "idp-ca.pem");
    start(
        &[("JWT_SECRET_KEY", "a secret that is long enough for HS256!")],
        &["--jwks-url", "http://127.0.0.1:9/keys"],
    )
    .fails(2, "choose one");
}
