//! Running the built `cortex` binary: one command and what it printed, or
//! a memory service for the tests that kill and restart it.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// Starts `cortex serve memory ARGS --db DB` (environment defaults removed,
/// the shared [`data_dir`] for its JWT secret) and waits for its ready
/// line; returns the process and the URL it printed.
pub(crate) fn serve_memory(args: &[&str], db: &Path) -> (Child, String) {
    let mut child = cortex()
        .args(["serve", "memory"])
        .args(args)
        .arg("--db")
        .arg(db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = ready_url(&mut child);
    (child, url)
}

/// The URL a `cortex serve` child printed on its ready line (`… listening
/// on URL`), its first line of stdout.
pub(crate) fn ready_url(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        url.starts_with("http://") || url.starts_with("https://"),
        "unexpected ready line: {line:?}"
    );
    url
}

/// The binary with a clean environment: no discovery, client or auth
/// variables from the caller, no log filter, backtraces on (so a panic
/// would show), and the tests' own data directory: the services started
/// here keep their JWT secret there and the client commands run here make
/// their tokens from it, as in one directory with `cortex up`.
pub(crate) fn cortex() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cortex"));
    for (key, _) in std::env::vars() {
        if key.ends_with("_SERVICE_URL")
            || key.starts_with("CORTEX_CLIENT_")
            || key.starts_with("SERVICE_")
            || key.starts_with("JWT_")
            || matches!(
                key.as_str(),
                "RUST_LOG"
                    | "PORT"
                    | "HOST"
                    | "DATABASE_URL"
                    | "CORTEX_TOKEN"
                    | "AUTH_ENABLED"
                    | "JWKS_URL"
                    | "AUTHORIZATION_SERVERS"
                    | "PUBLIC_URL"
            )
        {
            command.env_remove(key);
        }
    }
    command.env("RUST_BACKTRACE", "1");
    command.env("CORTEX_DATA_DIR", data_dir());
    command
}

/// The data directory (JWT secret) shared by the services and client
/// commands of these tests, inside the build's target directory.
pub(crate) fn data_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("cortex-cli-data")
}

/// A token with the role `admin` from [`data_dir`]'s secret, as `cortex
/// token` prints it.
pub(crate) fn admin_token() -> String {
    let run = run(&["token", "--role", "admin", "--user", "tests"], None).ok();
    run.stdout.trim().to_string()
}

/// A port nothing listens on (bound, then released).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What one run printed, and how it ended.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    /// Asserts success.
    #[track_caller]
    pub(crate) fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }

    /// Asserts exit `code` with exactly one clean error line on stderr
    /// containing `needle`.
    #[track_caller]
    pub(crate) fn fails(self, code: i32, needle: &str) -> Self {
        assert_eq!(self.code, code, "exit code: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:?}");
        assert!(lines[0].starts_with("cortex: "), "{self:?}");
        assert!(lines[0].contains(needle), "expected {needle:?}: {self:?}");
        let lower = self.stderr.to_lowercase();
        assert!(
            !lower.contains("panicked") && !lower.contains("backtrace"),
            "{self:?}"
        );
        self
    }

    /// As [`Self::fails`] with `--json`: stderr is one JSON object,
    /// `{"error": {"exit_code", "code", "kind", "message"}}`.
    pub(crate) fn fails_json(self, code: i32, needle: &str) -> Self {
        assert_eq!(self.code, code, "exit code: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:?}");
        let error: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(error["error"]["exit_code"], code, "{self:?}");
        assert!(error["error"]["code"].is_string(), "{self:?}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "expected {needle:?}: {self:?}");
        self
    }
}

/// Runs `cortex ARGS` (with `stdin` when given) and waits.
pub(crate) fn run(args: &[&str], stdin: Option<&str>) -> Run {
    run_with_env(args, stdin, &[])
}

/// [`run`] with `vars` set.
pub(crate) fn run_with_env(args: &[&str], stdin: Option<&str>, vars: &[(&str, &Path)]) -> Run {
    let mut child = cortex()
        .args(args)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        // A command that stops reading (input over its cap) closes the pipe.
        match input.write_all(text.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            outcome => outcome.unwrap(),
        }
    }
    drop(input);
    child.wait_with_output().unwrap().into()
}
