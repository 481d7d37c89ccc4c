//! `cortex --url URL …` against real MCP servers that are not ours: the
//! TypeScript SDK's reference server (server-everything, Streamable HTTP),
//! a Python SDK server, and memory's own `/mcp`. Each command a user tries
//! first: `tools` (with parameters), `resources`, `call` with `key=value`
//! typed by the server's input schema, `read`, `stream`, `health`, `status`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Run, cortex, run, serve_memory};
use cortex_test_support::mcp_servers::{everything, python};

/// `cortex --url URL ARGS`.
fn at(url: &str, args: &[&str]) -> Run {
    let mut all = vec!["--url", url];
    all.extend_from_slice(args);
    run(&all, None)
}

/// `cortex --url URL stream …` in the background, its stdout lines on a
/// channel; killed when dropped.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    fn start(url: &str, args: &[&str]) -> Self {
        let mut child = cortex()
            .args(["--url", url, "stream"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next line, or a failure with what the command wrote on stderr.
    #[track_caller]
    fn next_line(&mut self, within: Duration) -> String {
        if let Ok(line) = self.lines.recv_timeout(within) {
            return line;
        }
        let _ = self.child.kill();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        panic!("no stream event within {within:?}; stderr: {stderr}");
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn server_everything_by_url() {
    let server = everything("streamableHttp");
    let url = server.url("/mcp");

    let tools = at(&url, &["tools"]).ok();
    let sum = tools
        .stdout
        .lines()
        .find(|l| l.starts_with("get-sum "))
        .unwrap_or_else(|| panic!("{tools:?}"));
    assert!(sum.contains("a*:number b*:number"), "{sum}");
    let one = at(&url, &["tools", "echo"]).ok();
    assert!(
        one.stdout.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.starts_with(&["message", "string", "yes"])
        }),
        "{one:?}"
    );

    // `a` and `b` are numbers in the schema: sent as numbers, or the
    // server would refuse them.
    let answer = at(&url, &["--json", "call", "get-sum", "a=2", "b=3.5"]).ok();
    assert!(answer.stdout.contains("5.5"), "{answer:?}");
    let echo = at(&url, &["call", "echo", "message=hello there"]).ok();
    assert!(echo.stdout.contains("hello there"), "{echo:?}");
    // A long call's progress, one plain line per report on a stderr that
    // is not a terminal; the result alone on stdout.
    let long = at(
        &url,
        &[
            "call",
            "trigger-long-running-operation",
            "duration=1",
            "steps=2",
        ],
    )
    .ok();
    assert!(
        long.stdout.contains("Long running operation completed")
            && !long.stdout.contains("progress:"),
        "{long:?}"
    );
    assert!(
        long.stderr
            .contains("progress: 1/2 (50%)\nprogress: 2/2 (100%)\n"),
        "{long:?}"
    );

    let prompts = at(&url, &["prompts"]).ok();
    assert!(
        prompts
            .stdout
            .lines()
            .any(|l| l.starts_with("args-prompt") && l.contains("city*, state")),
        "{prompts:?}"
    );
    let prompt = at(&url, &["prompt", "args-prompt", "city=Lisbon"]).ok();
    assert!(
        prompt.stdout.contains("user: What's weather in Lisbon?"),
        "{prompt:?}"
    );

    let resources = at(&url, &["resources"]).ok();
    assert!(
        resources
            .stdout
            .contains("demo://resource/static/document/architecture.md"),
        "{resources:?}"
    );
    let read = at(
        &url,
        &["read", "demo://resource/static/document/architecture.md"],
    )
    .ok();
    assert!(!read.stdout.trim().is_empty(), "{read:?}");

    // server-everything sends resource updates only to a session that
    // asked for them with one of its tools, which a second process cannot
    // do; the subscription itself is accepted and held.
    let mut stream = Streaming::start(&url, &["demo://resource/static/document/architecture.md"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        stream.child.try_wait().unwrap().is_none(),
        "the subscription ended: {:?}",
        stream.lines.try_iter().collect::<Vec<_>>()
    );

    let health = at(&url, &["health"]).ok();
    assert!(health.stdout.contains("healthy"), "{health:?}");
    let status = at(&url, &["--json", "status"]).ok().json();
    assert_eq!(status[0]["healthy"], true, "{status}");
    assert_eq!(status[0]["breaker"], "closed", "{status}");
    assert!(
        status[0]["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{status}"
    );

    // A wrong path on the same server: its HTML error page is summed up,
    // not pasted.
    let wrong = format!("x=cortex+{}", server.url("/nope"));
    let out = run(&["--service", &wrong, "call", "x", "t"], None);
    assert!(
        out.stderr
            .contains("with an HTML page: Cannot POST /nope/tool/t")
            && !out.stderr.contains("<html"),
        "{out:?}"
    );
}

#[test]
fn python_sdk_server_by_url() {
    let server = python(false);
    let url = server.url("/mcp");
    let tools = at(&url, &["tools"]).ok();
    assert!(
        tools
            .stdout
            .lines()
            .any(|l| l.starts_with("add ") && l.contains("a*:integer b*:integer")),
        "{tools:?}"
    );
    // The SDK wraps a tool's plain return value as `{"result": …}`.
    let sum = at(&url, &["--json", "call", "add", "a=40", "b=2"])
        .ok()
        .json();
    assert_eq!(sum["result"], 42, "{sum}");
    // The server's own refusal of a non-integer never happens: the schema
    // says integer, so the command line refuses first.
    at(&url, &["call", "add", "a=forty", "b=2"]).fails(2, "`a` takes an integer");
    let resources = at(&url, &["resources"]).ok();
    assert!(
        resources.stdout.contains("greeting://{name}")
            && resources.stdout.contains("counter://value"),
        "{resources:?}"
    );
    let read = at(&url, &["read", "greeting://ada"]).ok();
    assert!(read.stdout.contains("Hello, ada!"), "{read:?}");
    at(&url, &["health"]).ok();
    at(&url, &["status"]).ok();
    // A tool that is not there: named, with what there is.
    at(&url, &["call", "ad", "a=1"]).fails(3, "did you mean `add`?");
}

#[test]
fn memorys_own_mcp_endpoint_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let (mut memory, base) = serve_memory(&["--port", "0"], &dir.path().join("m.sqlite3"));
    let url = format!("{base}/mcp");

    let tools = at(&url, &["tools"]).ok();
    assert!(
        tools.stdout.contains("store_input") && tools.stdout.contains("user_id*:string"),
        "{tools:?}"
    );
    let stored = at(
        &url,
        &[
            "--json",
            "call",
            "store_input",
            "user_id=u1",
            "input_data.content=first",
        ],
    )
    .ok()
    .json();
    let id = stored["item_id"].as_i64().unwrap();
    let item = at(
        &url,
        &["--json", "call", "get_item", &format!("item_id={id}")],
    )
    .ok()
    .json();
    assert_eq!(item["content"], "first", "{item}");
    let read = at(&url, &["--json", "read", "history/u1"]).ok().json();
    assert_eq!(read[0]["content"], "first", "{read}");

    // A subscription: an update when another process stores an item. An
    // update sent before the subscription's event stream is open is not
    // delivered (MCP keeps no backlog for it), and nothing tells another
    // process when it is open: store until one arrives, a bounded number
    // of times.
    let mut stream = Streaming::start(&url, &["history/u1/stream"]);
    let mut delivered = None;
    for round in 0..10 {
        let marker = format!("update-{round}");
        let content = format!("input_data.content={marker}");
        at(&url, &["call", "store_input", "user_id=u1", &content]).ok();
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            match stream.lines.recv_timeout(left) {
                Ok(line) if line.contains(&marker) => {
                    delivered = Some(line);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if delivered.is_some() {
            break;
        }
    }
    let update = delivered.unwrap_or_else(|| stream.next_line(Duration::ZERO));
    assert!(
        update.contains("notifications/resources/updated"),
        "{update}"
    );

    let status = at(&url, &["--json", "status"]).ok().json();
    assert_eq!(status[0]["version"], env!("CARGO_PKG_VERSION"), "{status}");
    at(&url, &["health"]).ok();
    let _ = memory.kill();
    let _ = memory.wait();
    // The same server gone: unreachable, exit 4, no hint about `cortex up`
    // (the user chose this URL).
    let gone = at(&url, &["health"]).fails(4, "unreachable");
    assert!(!gone.stderr.contains("cortex up"), "{gone:?}");
}
