//! Third-party MCP servers for interop tests, as real processes on
//! loopback: `@modelcontextprotocol/server-everything` (npm) and a FastMCP
//! server of the Python SDK (`fixtures/mcp_python_server.py`), both
//! installed by `scripts/install-interop.sh` into `.tools/`. A missing
//! server fails its test and says how to install it.
//!
//! Each listens on a port the system chooses and prints it (`listening on
//! HOST:PORT`), so no two servers race for a port picked in advance; what
//! it writes on stdout and stderr is kept and shown when its test fails.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools")
}

fn require(path: &Path) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-interop.sh (it installs the interop servers into .tools/)",
        path.display()
    );
    path.to_path_buf()
}

/// How long a server may take to start and say where it listens.
const STARTUP: Duration = Duration::from_secs(60);

/// How long to wait for a stopped server's last output.
const LAST_OUTPUT: Duration = Duration::from_secs(5);

/// What the threads draining a server's output report.
enum Event {
    /// The port from its `listening on HOST:PORT` line.
    Port(u16),
    /// Its stdout (`true`) or stderr (`false`) reached the end.
    Closed(bool),
}

/// Everything a server wrote, for failure messages.
#[derive(Default)]
struct Output {
    stdout: String,
    stderr: String,
}

/// A third-party server process, killed when dropped.
///
/// It listens on a port of its own choosing (port 0) and says which on
/// stdout (`listening on HOST:PORT`), so no two servers race for a port
/// picked in advance. Its stdout and stderr are drained for as long as it
/// runs, and shown when the test fails.
pub struct Server {
    name: String,
    child: Child,
    /// The port it listens on.
    pub port: u16,
    output: Arc<Mutex<Output>>,
    events: Receiver<Event>,
}

impl Server {
    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Stops the process (unless it has exited) and waits, bounded, for its
    /// last output; returns its exit status.
    fn stop(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            _ => {
                let _ = self.child.kill();
                match self.child.wait() {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("unknown status ({e})"),
                }
            }
        };
        let deadline = Instant::now() + LAST_OUTPUT;
        let mut open = 2;
        while open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Closed(_)) => open -= 1,
                Ok(Event::Port(_)) => {}
                Err(_) => break,
            }
        }
        status
    }

    /// The server's name and everything it wrote.
    fn report(&self) -> String {
        let output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        format!(
            "--- {} stdout ---\n{}--- {} stderr ---\n{}--- end of {} ---",
            self.name, output.stdout, self.name, output.stderr, self.name
        )
    }

    /// Waits until the process exits on its own, at most `STARTUP`.
    fn wait_for_exit(&mut self) {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let status = self.stop();
        if std::thread::panicking() && self.port != 0 {
            eprintln!("{} (stopped: {status}):\n{}", self.name, self.report());
        }
    }
}

/// Reads `pipe` to its end into `output`, reporting the first
/// `listening on HOST:PORT` line of stdout.
fn drain(
    pipe: impl Read + Send + 'static,
    stdout: bool,
    output: Arc<Mutex<Output>>,
    events: Sender<Event>,
) {
    std::thread::spawn(move || {
        let mut reported = !stdout;
        for line in BufReader::new(pipe).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            if !reported {
                let port = line
                    .trim()
                    .strip_prefix("listening on ")
                    .and_then(|address| address.rsplit_once(':'))
                    .and_then(|(_, port)| port.parse::<u16>().ok());
                if let Some(port) = port {
                    reported = true;
                    let _ = events.send(Event::Port(port));
                }
            }
            let mut output = output.lock().unwrap_or_else(|e| e.into_inner());
            let text = if stdout {
                &mut output.stdout
            } else {
                &mut output.stderr
            };
            text.push_str(&line);
            text.push('\n');
        }
        let _ = events.send(Event::Closed(stdout));
    });
}

/// Starts `command` (a server told to listen on port 0) and waits, at most
/// `STARTUP`, until it says on stdout which port it listens on. A server
/// that exits or stays silent fails the test with everything it wrote.
fn start(name: &str, mut command: Command) -> Server {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
    let output = Arc::new(Mutex::new(Output::default()));
    let (sender, events) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        drain(stdout, true, output.clone(), sender.clone());
    }
    if let Some(stderr) = child.stderr.take() {
        drain(stderr, false, output.clone(), sender);
    }
    let mut server = Server {
        name: name.to_string(),
        child,
        port: 0,
        output,
        events,
    };
    let deadline = Instant::now() + STARTUP;
    let failure = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.events.recv_timeout(left) {
            Ok(Event::Port(port)) => {
                server.port = port;
                return server;
            }
            Ok(Event::Closed(false)) => {}
            // Its stdout ended: it is exiting without having listened.
            Ok(Event::Closed(true)) | Err(RecvTimeoutError::Disconnected) => {
                server.wait_for_exit();
                break format!("exited with {} before listening", server.stop());
            }
            Err(RecvTimeoutError::Timeout) => {
                break format!(
                    "did not say where it listens within {STARTUP:?}; stopped: {}",
                    server.stop()
                );
            }
        }
    };
    panic!("{name} ({command:?}) {failure}\n{}", server.report());
}

/// server-everything in `mode` (`streamableHttp`, `sse`, `stdio`).
pub fn everything(mode: &str) -> Server {
    let script = require(
        &tools_dir()
            .join("interop/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
    );
    // Node 22 from .tools when the conformance suite installed it; the
    // machine's node otherwise (the server needs node >= 18).
    let node = tools_dir().join("node_modules/.bin/node");
    let node = if node.exists() {
        node
    } else {
        PathBuf::from("node")
    };
    // PORT=0 lets the system choose; the server logs only "port 0", so a
    // preloaded script prints the port it got.
    let mut command = Command::new(node);
    command
        .arg("--require")
        .arg(fixture("report_port.cjs"))
        .arg(script)
        .arg(mode)
        .env("PORT", "0");
    start(&format!("server-everything {mode}"), command)
}

/// The Python SDK fixture server; `modern_only`: it speaks only the
/// stateless 2026-07-28 revision.
pub fn python(modern_only: bool) -> Server {
    let python = require(&tools_dir().join("venv/bin/python"));
    let mut command = Command::new(python);
    // Without --port it binds port 0 and prints the port it got.
    command.arg(fixture("mcp_python_server.py"));
    let mut name = "mcp_python_server.py".to_string();
    if modern_only {
        command.arg("--modern-only");
        name.push_str(" --modern-only");
    }
    start(&name, command)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}
