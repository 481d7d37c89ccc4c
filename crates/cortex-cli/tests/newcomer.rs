//! A newcomer's first hour, produced for real: arguments as people type
//! them, and errors that name the fix (a malformed `*_SERVICE_URL`, a
//! misspelt service, tool or resource, a default endpoint with nothing
//! behind it, `--json` errors), shell completions, and a quiet `cortex up`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{cortex, free_port, run, serve_memory};

/// A memory service of its own, killed when dropped.
struct Memory {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Memory {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (child, url) = serve_memory(&["--port", "0"], &dir.path().join("m.sqlite3"));
        Self {
            child,
            url,
            _dir: dir,
        }
    }

    /// `cortex --service memory=URL ARGS`.
    fn run(&self, args: &[&str]) -> common::Run {
        let flag = format!("memory={}", self.url);
        let mut all = vec!["--service", &flag];
        all.extend_from_slice(args);
        run(&all, None)
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn key_value_arguments_are_typed_by_the_tool_schema() {
    let memory = Memory::start();
    let stored = memory
        .run(&[
            "--json",
            "call",
            "memory",
            "store_input",
            "user_id=42",
            "input_data.content=Planning a trip",
            "input_data.metadata:={\"source\":\"cli\"}",
        ])
        .ok()
        .json();
    // `user_id` is a string in the schema: 42 stays "42".
    assert_eq!(stored["user_id"], "42", "{stored}");
    let id = stored["item_id"].as_i64().unwrap().to_string();
    // `item_id` is an integer in the schema: typed from the text.
    let item = memory
        .run(&[
            "--json",
            "call",
            "memory",
            "get_item",
            &format!("item_id={id}"),
        ])
        .ok()
        .json();
    assert_eq!(item["content"], "Planning a trip", "{item}");
    // A value that does not fit the schema: a usage error that says how.
    memory
        .run(&["call", "memory", "get_item", "item_id=first"])
        .fails(2, "`item_id` takes an integer, not `first`");
}

#[test]
fn piped_stdin_is_the_arguments_and_is_capped() {
    let memory = Memory::start();
    let flag = format!("memory={}", memory.url);
    let stored = run(
        &[
            "--json",
            "--service",
            &flag,
            "call",
            "memory",
            "store_input",
        ],
        Some(r#"{"user_id":"u1","input_data":{"content":"from a pipe"}}"#),
    )
    .ok()
    .json();
    assert_eq!(stored["status"], "stored", "{stored}");
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(9 * 1024 * 1024));
    run(
        &["--service", &flag, "call", "memory", "store_input", "-"],
        Some(&huge),
    )
    .fails(2, "larger than 8 MiB");
}

#[test]
fn tools_shows_each_parameter() {
    let memory = Memory::start();
    let list = memory.run(&["tools", "memory"]).ok();
    let line = list
        .stdout
        .lines()
        .find(|l| l.starts_with("store_input"))
        .unwrap_or_else(|| panic!("{list:?}"));
    assert!(
        line.contains("user_id*:string") && line.contains("input_data*:object"),
        "{line}"
    );
    let one = memory.run(&["tools", "memory", "get_item"]).ok();
    let row = one
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("item_id"))
        .unwrap_or_else(|| panic!("{one:?}"));
    assert!(row.contains("integer") && row.contains("yes"), "{row}");
}

#[test]
fn a_malformed_service_url_is_a_usage_error_naming_variable_and_value() {
    for (value, says) in [
        ("localhost:9000", "no scheme"),
        ("http://localhost:99999", "bad port"),
        ("ftp://memory.example", "unsupported scheme"),
        (
            "http://localhost:9000/health",
            "a path where none is allowed",
        ),
    ] {
        let out: common::Run = cortex()
            .args(["call", "memory", "get_item", "item_id=1"])
            .env("MEMORY_SERVICE_URL", value)
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .into();
        let out = out.fails(2, says);
        assert!(
            out.stderr.contains("MEMORY_SERVICE_URL") && out.stderr.contains(value),
            "{out:?}"
        );
    }
    run(&["--service", "memory=localhost:9000", "health"], None).fails(2, "no scheme");
    run(&["--url", "ftp://h:1/mcp", "tools"], None).fails(2, "unsupported scheme");
}

#[test]
fn misspelt_names_get_a_suggestion_and_the_known_names() {
    let memory = Memory::start();
    memory
        .run(&["call", "memroy", "get_item", "item_id=1"])
        .fails(3, "did you mean `memory`? known: memory, cognition");
    memory
        .run(&["call", "memory", "get_iten", "item_id=1"])
        .fails(3, "did you mean `get_item`? known: delete_item, get_item");
    memory
        .run(&["read", "memory", "histroy/u1"])
        .fails(3, "did you mean `history/{user_id}`?");
    // A URI of a known pattern that names nothing: the service's words, no
    // guess.
    let missing = memory
        .run(&["read", "memory", "item/999"])
        .fails(3, "item 999 not found");
    assert!(!missing.stderr.contains("did you mean"), "{missing:?}");
}

#[test]
fn a_default_endpoint_that_refuses_asks_for_cortex_up() {
    // The built-in default is memory at localhost:9000.
    if std::net::TcpStream::connect(("127.0.0.1", 9000)).is_ok() {
        eprintln!("port 9000 is in use here; the hint is for a port with nothing behind it");
        return;
    }
    let out: common::Run = cortex()
        .args(["call", "memory", "get_item", "item_id=1"])
        .env("CORTEX_CLIENT_MAX_RETRIES", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    out.fails(4, "is `cortex up` running?");
    // Not for an endpoint the user chose.
    let chosen = format!("memory=http://127.0.0.1:{}", free_port());
    let out = run(
        &[
            "--service",
            &chosen,
            "call",
            "memory",
            "get_item",
            "item_id=1",
        ],
        None,
    );
    assert!(!out.stderr.contains("cortex up"), "{out:?}");
}

#[test]
fn json_errors_are_json_on_stderr() {
    let memory = Memory::start();
    let out = memory
        .run(&["--json", "call", "memory", "nope"])
        .fails_json(3, "tool `nope` not found");
    let error: serde_json::Value = serde_json::from_str(out.stderr.trim()).unwrap();
    assert_eq!(error["error"]["code"], "not_found");
    assert_eq!(error["error"]["kind"], "tool_not_found");
    // A usage error found by clap too.
    run(&["--json", "call"], None).fails_json(2, "required");
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_cortex()"),
        ("zsh", "#compdef cortex"),
        ("fish", "complete -c cortex"),
    ] {
        let out = run(&["completions", shell], None).ok();
        assert!(
            out.stdout.contains(marker),
            "{shell}: {}",
            &out.stdout[..200.min(out.stdout.len())]
        );
        assert!(out.stdout.contains("stream"), "{shell}: subcommands listed");
    }
}

#[test]
fn up_logs_nothing_unless_verbose() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = cortex()
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--memory-port", &free_port().to_string()])
        .args(["--cognition-port", &free_port().to_string()])
        .args(["--core-port", &free_port().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.find(|l| l.as_ref().is_ok_and(|l| l.starts_with("ready:")));
    assert!(ready.is_some(), "no ready line");
    // Give a log line time to appear, then stop it and read all of stderr.
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.trim().is_empty(), "log lines without -v: {stderr}");
}
