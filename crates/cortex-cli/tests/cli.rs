//! The built `cortex` binary against a real `cortex up`: every command, and
//! every documented exit code produced for real.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Run, cortex, free_port, run, run_with_env};
use serde_json::Value;
use std::net::TcpListener;

/// A process killed when the guard drops, with its stdout lines on a channel.
struct Guard {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Guard {
    fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Lines up to and including the first that starts with `prefix`.
    fn wait_for(&self, prefix: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    let done = line.starts_with(prefix);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no line starting with {prefix:?}; saw {seen:?}"),
            }
        }
    }

    /// Sends `signal` (such as `TERM`) and waits for the exit code, at most 15 s.
    fn signal_and_wait(&mut self, signal: &str) -> i32 {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..150 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the process did not stop after SIG{signal}");
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `cortex up` on free ports with its own data directory.
struct Up {
    process: Guard,
    memory: String,
    cognition: String,
    core: String,
    ready: Vec<String>,
    /// Its data directory, where client commands find its JWT secret.
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Up {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (memory_port, cognition_port, core_port) = (free_port(), free_port(), free_port());
        let process = Guard::spawn(
            cortex()
                .arg("up")
                .arg("--data-dir")
                .arg(&data)
                .args(["--memory-port", &memory_port.to_string()])
                .args(["--cognition-port", &cognition_port.to_string()])
                .args(["--core-port", &core_port.to_string()]),
        );
        let ready = process.wait_for("ready:");
        Self {
            process,
            memory: format!("http://127.0.0.1:{memory_port}"),
            cognition: format!("http://127.0.0.1:{cognition_port}"),
            core: format!("http://127.0.0.1:{core_port}"),
            ready,
            data,
            _dir: dir,
        }
    }

    /// `cortex --service memory=… --service cognition=… ARGS`.
    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, None)
    }

    fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let memory = format!("memory={}", self.memory);
        let cognition = format!("cognition={}", self.cognition);
        let core = format!("core={}", self.core);
        let mut all = vec![
            "--service",
            &memory,
            "--service",
            &cognition,
            "--service",
            &core,
        ];
        all.extend_from_slice(args);
        run_with_env(&all, stdin, &[("CORTEX_DATA_DIR", &self.data)])
    }
}

fn store(up: &Up, user: &str, content: &str) -> i64 {
    let args = format!(r#"{{"user_id":"{user}","input_data":{{"content":"{content}"}}}}"#);
    up.run(&["--json", "call", "memory", "store_input", &args])
        .ok()
        .json()["item_id"]
        .as_i64()
        .unwrap()
}

#[test]
fn up_prints_endpoints_and_one_ready_line_then_stops_on_sigterm() {
    let mut up = Up::start();
    let text = up.ready.join("\n");
    assert!(text.contains("data directory: /"), "{text}");
    assert!(
        text.contains(&up.memory) && text.contains(&up.cognition),
        "{text}"
    );
    assert_eq!(
        up.ready.iter().filter(|l| l.starts_with("ready:")).count(),
        1
    );
    up.run(&["health"]).ok();
    assert_eq!(up.process.signal_and_wait("TERM"), 0);
    let rest: Vec<String> = up.process.lines.try_iter().collect();
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
}

#[test]
fn up_names_a_taken_port() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let free = free_port().to_string();
    run(
        &[
            "up",
            "--data-dir",
            data,
            "--memory-port",
            &port,
            "--cognition-port",
            &free,
            "--core-port",
            &free_port().to_string(),
        ],
        None,
    )
    .fails(1, &format!("port {port}"))
    .fails(1, "--memory-port");
    run(
        &[
            "up",
            "--data-dir",
            data,
            "--memory-port",
            &free,
            "--cognition-port",
            &port,
            "--core-port",
            &free_port().to_string(),
        ],
        None,
    )
    .fails(1, &format!("port {port}"))
    .fails(1, "--cognition-port");
}

#[test]
fn call_read_stream_tools_resources_health_status_and_bench() {
    let up = Up::start();

    // call: literal JSON, @FILE and stdin.
    let first = store(&up, "u1", "hello Lisbon");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("args.json");
    std::fs::write(
        &file,
        r#"{"user_id":"u1","input_data":{"content":"from a file"}}"#,
    )
    .unwrap();
    let at_file = format!("@{}", file.display());
    let second = up
        .run(&["--json", "call", "memory", "store_input", &at_file])
        .ok()
        .json()["item_id"]
        .as_i64()
        .unwrap();
    let third = up
        .run_with(
            &["call", "memory", "store_input", "-"],
            Some(r#"{"user_id":"u1","input_data":{"content":"from stdin"}}"#),
        )
        .ok()
        .json()["item_id"]
        .as_i64()
        .unwrap();
    assert_eq!((second, third), (first + 1, first + 2));
    // Human output is pretty JSON.
    let got = up
        .run(&[
            "call",
            "memory",
            "get_item",
            &format!(r#"{{"item_id":{first}}}"#),
        ])
        .ok();
    assert!(
        got.stdout.contains("\n  \"content\": \"hello Lisbon\""),
        "{got:?}"
    );

    // read
    let history = up
        .run(&["--json", "read", "memory", "history/u1"])
        .ok()
        .json();
    let contents: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["from stdin", "from a file", "hello Lisbon"]);

    // stream: backlog with --count, then --from, human and JSON lines.
    let streamed = up
        .run(&["stream", "memory", "history/u1/stream", "--count", "2"])
        .ok();
    let lines: Vec<&str> = streamed.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{streamed:?}");
    assert!(
        lines[0].starts_with(&format!("#{first} item {{")),
        "{streamed:?}"
    );
    let from = up
        .run(&[
            "--json",
            "stream",
            "memory",
            "history/u1/stream",
            "--from",
            &first.to_string(),
            "--count",
            "1",
        ])
        .ok();
    let event = from.json();
    assert_eq!(event["id"], Value::String(second.to_string()));
    assert_eq!(event["data"]["content"], "from a file");

    // stream without --count: live items until Ctrl-C, which ends it with 0.
    let memory = format!("memory={}", up.memory);
    let mut live = Guard::spawn(cortex().env("CORTEX_DATA_DIR", &up.data).args([
        "--service",
        &memory,
        "stream",
        "memory",
        "history/u2/stream",
    ]));
    std::thread::sleep(Duration::from_millis(300));
    let fourth = store(&up, "u2", "live one");
    let seen = live.wait_for(&format!("#{fourth} item"));
    assert!(seen.last().unwrap().contains("live one"));
    assert_eq!(live.signal_and_wait("INT"), 0);

    // tools and resources: tables, and JSON.
    let tools = up.run(&["tools", "memory"]).ok();
    assert!(tools.stdout.starts_with("TOOL"), "{tools:?}");
    assert!(
        tools.stdout.lines().any(|l| l.starts_with("store_input  ")),
        "{tools:?}"
    );
    let cognition_tools = up.run(&["--json", "tools", "cognition"]).ok().json();
    let names: Vec<&str> = cognition_tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"get_context"), "{names:?}");
    let resources = up.run(&["resources", "memory"]).ok();
    assert!(
        resources
            .stdout
            .lines()
            .any(|l| l.starts_with("history/{user_id}/stream") && l.contains("live")),
        "{resources:?}"
    );

    // cognition over memory, through `cortex up`'s wiring.
    let context = up
        .run(&[
            "--json",
            "call",
            "cognition",
            "get_context",
            r#"{"user_id":"u1","query":"Lisbon"}"#,
        ])
        .ok()
        .json();
    assert_eq!(context["degraded"], false);
    assert_eq!(context["context"][0]["content"], "hello Lisbon");

    // health and status.
    let health = up.run(&["health"]).ok();
    assert!(health.stdout.contains("memory     healthy"), "{health:?}");
    assert!(health.stdout.contains("cognition  healthy"), "{health:?}");
    let one = up.run(&["--json", "health", "memory"]).ok().json();
    assert_eq!(one[0]["healthy"], true);
    assert_eq!(one[0]["checks"]["database"], "ok");
    let status = up.run(&["status"]).ok();
    assert!(status.stdout.starts_with("SERVICE"), "{status:?}");
    assert!(
        status.stdout.contains(&up.memory) && status.stdout.contains("closed"),
        "{status:?}"
    );
    let status = up.run(&["--json", "status"]).ok().json();
    assert_eq!(status[0]["service"], "memory");
    assert_eq!(status[0]["endpoint"], up.memory.as_str());
    assert_eq!(status[0]["breaker"], "closed");
    assert!(status[1]["latency_ms"].as_f64().unwrap() > 0.0);

    // bench: human summary, and JSON.
    let get = format!(r#"{{"item_id":{first}}}"#);
    let bench = up
        .run(&[
            "bench",
            "memory",
            "get_item",
            &get,
            "--calls",
            "200",
            "--concurrency",
            "4",
        ])
        .ok();
    assert!(bench.stdout.contains("calls/s"), "{bench:?}");
    assert!(
        bench.stdout.contains("p50") && bench.stdout.contains("p99"),
        "{bench:?}"
    );
    assert!(bench.stdout.contains("errors: none"), "{bench:?}");
    let bench = up
        .run(&[
            "--json", "bench", "memory", "get_item", &get, "--calls", "50",
        ])
        .ok()
        .json();
    assert_eq!(bench["ok"], 50);
    assert!(bench["latency"]["p90_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn every_error_exit_code_for_real() {
    let up = Up::start();
    let dead = format!("memory=http://127.0.0.1:{}", free_port());

    // 2: usage.
    up.run(&["call", "memory", "store_input", "{not json"])
        .fails(2, "invalid JSON");
    up.run(&["call", "memory", "store_input", "@/no/such/args.json"])
        .fails(2, "/no/such/args.json");
    up.run_with(&["call", "memory", "store_input", "-"], Some("[1, 2]"))
        .fails(2, "JSON object");
    up.run(&["call", "--no-such-flag", "memory", "x"])
        .fails(2, "--no-such-flag");
    up.run(&["call", "memory"]).fails(2, "missing TOOL");
    run(&["--service", "memory", "health"], None).fails(2, "NAME=URL");
    run(
        &["--config", "/no/such/client.toml", "health", "memory"],
        None,
    )
    .fails(2, "/no/such/client.toml");

    // 3: not found.
    up.run(&["call", "nosuch", "tool"]).fails(3, "nosuch");
    up.run(&["tools", "nosuch"]).fails(3, "nosuch");
    up.run(&["health", "nosuch"]).fails(3, "nosuch");
    up.run(&["call", "memory", "no_such_tool"])
        .fails(3, "no_such_tool");
    up.run(&["read", "memory", "no/such/resource"])
        .fails(3, "no/such/resource");
    up.run(&["read", "memory", "item/987654"])
        .fails(3, "987654");
    up.run(&["stream", "memory", "nothing/here"])
        .fails(3, "nothing/here");

    // 4: unavailable (a dead port).
    run(
        &[
            "--service",
            &dead,
            "call",
            "memory",
            "get_item",
            r#"{"item_id":1}"#,
        ],
        None,
    )
    .fails(4, "cannot reach service `memory`");
    run(&["--service", &dead, "read", "memory", "history/u1"], None).fails(4, "cannot reach");
    run(
        &["--service", &dead, "stream", "memory", "history/u1/stream"],
        None,
    )
    .fails(4, "cannot reach");
    run(&["--service", &dead, "tools", "memory"], None).fails(4, "cannot reach");
    let health = run(&["--service", &dead, "health", "memory"], None).fails(4, "unreachable");
    assert!(health.stdout.contains("unreachable"), "{health:?}");
    let bench = run(
        &[
            "--service",
            &dead,
            "bench",
            "memory",
            "get_item",
            r#"{"item_id":1}"#,
            "--calls",
            "5",
        ],
        None,
    )
    .fails(4, "5 of 5 calls failed");
    assert!(bench.stdout.contains("errors: 5"), "{bench:?}");
    // `status` reports a dead service and still succeeds.
    let status = run(&["--service", &dead, "status"], None).ok();
    assert!(status.stdout.contains("unreachable"), "{status:?}");
    // ... one row per replica: a live one and a dead one of the same service.
    let dead_url = dead.trim_start_matches("memory=");
    let replicas = format!("memory={},{dead_url}", up.memory);
    let status = run(&["--service", &replicas, "--json", "status"], None)
        .ok()
        .json();
    let mut rows: Vec<(String, bool)> = status
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["service"] == "memory")
        .map(|row| {
            (
                row["endpoint"].as_str().unwrap().to_string(),
                row["healthy"].as_bool().unwrap(),
            )
        })
        .collect();
    rows.sort();
    let mut expected = vec![(up.memory.clone(), true), (dead_url.to_string(), false)];
    expected.sort();
    assert_eq!(rows, expected, "{status}");

    // 2 as well: a resume id HTTP cannot carry is refused before sending.
    up.run(&["stream", "memory", "history/u1/stream", "--from", "bad\nid"])
        .fails(2, "Last-Event-ID");

    // 5: the service refused the call.
    up.run(&["call", "memory", "store_input", r#"{"user_id":"u1"}"#])
        .fails(5, "invalid_arguments");
    up.run(&[
        "call",
        "cognition",
        "get_context",
        r#"{"user_id":"u1","limit":0}"#,
    ])
    .fails(5, "invalid_arguments");
}

#[test]
fn serve_cognition_finds_memory_through_discovery_and_reports_it_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut memory = Guard::spawn(
        cortex()
            .args(["serve", "memory", "--port", "0", "--db"])
            .arg(dir.path().join("memory.sqlite3")),
    );
    let line = memory
        .wait_for("memory service listening on")
        .pop()
        .unwrap();
    let memory_url = line.rsplit(' ').next().unwrap().to_string();
    let cognition = Guard::spawn(
        cortex()
            .args(["serve", "cognition", "--port", "0"])
            .env("MEMORY_SERVICE_URL", &memory_url),
    );
    let line = cognition
        .wait_for("cognition service listening on")
        .pop()
        .unwrap();
    let cognition_url = line.rsplit(' ').next().unwrap().to_string();
    let flags = |args: &[&str]| -> Run {
        let mut all = vec![
            "--service".to_string(),
            format!("memory={memory_url}"),
            "--service".to_string(),
            format!("cognition={cognition_url}"),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        run(&all.iter().map(String::as_str).collect::<Vec<_>>(), None)
    };
    flags(&["health", "memory"]).ok();
    flags(&["health", "cognition"]).ok();

    assert_eq!(memory.signal_and_wait("TERM"), 0);
    let health = flags(&["health", "cognition"]).fails(4, "cognition is unhealthy");
    assert!(health.stdout.contains("unhealthy"), "{health:?}");
    assert!(health.stdout.contains("memory:"), "{health:?}");
    let health = flags(&["--json", "health", "cognition"]).fails_json(4, "unhealthy");
    assert_eq!(health.json()[0]["http_status"], 503);
}

#[test]
fn demo_runs_and_shows_resilience() {
    let demo = run(&["demo"], None).ok();
    let out = &demo.stdout;
    for needle in [
        "all three answer /health: healthy",
        "(live,",
        "Memory stops",
        "failed fast",
        "circuit open",
        "marked degraded",
        "the breaker closed",
        "Last-Event-ID",
        "each stored item exactly once, in order",
        "input -> storage_pending",
        "each input core accepted during the outage, once",
        "Done in",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert!(demo.stderr.trim().is_empty(), "{demo:?}");
}
