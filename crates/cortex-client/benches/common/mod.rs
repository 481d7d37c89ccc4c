//! Shared by the benchmarks of the client against bare HTTP clients
//! (`vs_bare`, `vs_bare_allocs`, `streams_10k`): the reference echo server,
//! run in a child process (this same binary with a flag), the three clients
//! and their calls, and figures read from `/proc`.
//!
//! The servers run in a child process so that what the benchmark counts in
//! its own process (CPU time, allocations, resident memory, file
//! descriptors) is the clients' alone.

// Each bench binary uses a part of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cortex_client::{ClientConfig, McpClient, NetworkMcpClient, StaticDiscovery};
use cortex_proto::envelope::unwrap_result;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use serde_json::{Value, json};

pub(crate) type Res<T> = Result<T, String>;

/// The echo service's name in the stack's discovery.
pub(crate) const SERVICE: &str = "echo";
/// The tool every client calls: `POST /tool/echo`.
pub(crate) const TOOL: &str = "echo";
/// The flag that makes a bench binary the echo server's child process.
pub(crate) const SERVE_ECHO: &str = "--serve-echo";

// ---------------------------------------------------------------------------
// Options from the environment
// ---------------------------------------------------------------------------

/// A positive number from the environment variable `name`, if set.
pub(crate) fn env_number(name: &str) -> Res<Option<f64>> {
    match std::env::var(name) {
        Ok(raw) => match raw.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
            _ => Err(format!("{name}=`{raw}` is not a positive number")),
        },
        Err(_) => Ok(None),
    }
}

/// The value after a flag, parsed.
pub(crate) fn flag_value<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Res<T> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    value
        .trim()
        .parse()
        .map_err(|_| format!("{flag}: `{value}` is not valid"))
}

/// A comma-separated list of positive numbers.
pub(crate) fn number_list(flag: &str, value: Option<String>) -> Res<Vec<usize>> {
    let value = value.ok_or_else(|| format!("{flag} needs a list"))?;
    value
        .split(',')
        .map(|v| match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{flag}: `{v}` is not a positive number")),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

/// A server running in a child process (this binary with a mode flag). It
/// prints `listening ADDR` when ready and exits when its standard input
/// closes, so it never outlives the benchmark, even one that is killed.
pub(crate) struct ChildServer {
    child: std::process::Child,
    /// Held open: the child exits when it closes.
    _stdin: Option<std::process::ChildStdin>,
    pub(crate) addr: SocketAddr,
    pub(crate) pid: u32,
}

impl ChildServer {
    /// Starts `current_exe FLAG ARGS...` and waits for its address.
    pub(crate) fn spawn(flag: &str, args: &[String]) -> Res<Self> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .arg(flag)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the server child: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or("no stdout pipe to the server child")?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let addr = match read {
            Ok(n) if n > 0 => line
                .trim()
                .strip_prefix("listening ")
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .ok_or_else(|| format!("the server child said `{}`", line.trim())),
            Ok(_) => Err("the server child exited before listening".to_string()),
            Err(e) => Err(format!("reading the server child's address: {e}")),
        };
        let addr = match addr {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Self {
            pid: child.id(),
            child,
            _stdin: stdin,
            addr,
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In a child: exit as soon as the parent goes (standard input closes).
pub(crate) fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

/// In a child: tells the parent where it listens.
pub(crate) fn announce(addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {addr}");
    let _ = out.flush();
}

// ---------------------------------------------------------------------------
// The reference echo server
// ---------------------------------------------------------------------------

/// The child's main: a hyper HTTP/1 server on one tokio worker (a current
/// thread runtime), `TCP_NODELAY` on every accepted socket, answering the
/// Cortex dialect's `POST /tool/{name}` with the arguments it was sent.
pub(crate) fn serve_echo_main() -> Res<()> {
    exit_with_parent();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        announce(listener.local_addr().map_err(|e| format!("addr: {e}"))?);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, or a connection reset before accept.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(echo))
                    .await;
            });
        }
    })
}

/// `{"arguments": A}` answered with `{"result": A}`, as the Cortex dialect
/// answers an enveloped call; a bare argument object comes back bare. The
/// envelope is spliced as bytes when it has the compact shape every client
/// here sends, so that the server's own cost stays small next to the
/// clients'.
async fn echo(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let json = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(response)
    };
    let error = |status: StatusCode, code: &str, message: &str| {
        let body = json!({"error": {"code": code, "message": message}}).to_string();
        json(status, Bytes::from(body))
    };
    if request.method() != Method::POST || !request.uri().path().starts_with("/tool/") {
        return error(StatusCode::NOT_FOUND, "not_found", "only POST /tool/{name}");
    }
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return error(StatusCode::BAD_REQUEST, "invalid_request", "body"),
    };
    const PREFIX: &[u8] = b"{\"arguments\":";
    if body.starts_with(PREFIX) && body.ends_with(b"}") {
        let inner = &body[PREFIX.len()..body.len() - 1];
        let mut out = Vec::with_capacity(inner.len() + 11);
        out.extend_from_slice(b"{\"result\":");
        out.extend_from_slice(inner);
        out.push(b'}');
        return json(StatusCode::OK, Bytes::from(out));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut map)) => match map.remove("arguments") {
            Some(arguments) if map.is_empty() => json(
                StatusCode::OK,
                Bytes::from(json!({ "result": arguments }).to_string()),
            ),
            _ => json(StatusCode::OK, body),
        },
        _ => error(StatusCode::BAD_REQUEST, "invalid_json", "not a JSON object"),
    }
}

// ---------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------

/// Who makes the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// `reqwest::Client`, defaults but no proxy lookup, `TCP_NODELAY`.
    Reqwest,
    /// hyper-util's legacy `Client` over `HttpConnector`, `TCP_NODELAY`.
    Hyper,
    /// `NetworkMcpClient::call_tool` with the default configuration (static
    /// discovery, power of two choices, breaker, retry budget, deadline,
    /// metrics, ids and `Idempotency-Key`; at most 10 connections).
    Cortex,
    /// The same stack with `max_connections` raised to 10,000, so that it
    /// opens as many connections as the bare clients do.
    CortexWide,
}

impl Variant {
    pub(crate) const ALL: [Self; 4] = [Self::Reqwest, Self::Hyper, Self::Cortex, Self::CortexWide];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Reqwest => "bare reqwest",
            Self::Hyper => "bare hyper",
            Self::Cortex => "cortex (default config)",
            Self::CortexWide => "cortex (max_connections 10000)",
        }
    }

    pub(crate) fn short(self) -> &'static str {
        match self {
            Self::Reqwest => "reqwest",
            Self::Hyper => "hyper",
            Self::Cortex => "cortex",
            Self::CortexWide => "cortex-wide",
        }
    }

    pub(crate) fn parse(name: &str) -> Res<Self> {
        Self::ALL
            .into_iter()
            .find(|v| v.short() == name.trim())
            .ok_or_else(|| format!("unknown client `{name}` (reqwest, hyper, cortex, cortex-wide)"))
    }
}

/// The request body every client sends: the Cortex envelope around the
/// arguments, serialized from a borrowed value as the stack does it.
#[derive(Serialize)]
struct Envelope<'a> {
    arguments: &'a Value,
}

/// The arguments of call `n`: the same value for every client.
pub(crate) fn arguments(n: u64) -> Value {
    json!({ "item_id": n })
}

/// The answer of call `n` must carry its own arguments back.
fn check(value: &Value, n: u64) -> Res<()> {
    match value.get("item_id").and_then(Value::as_u64) {
        Some(id) if id == n => Ok(()),
        _ => Err(format!("unexpected answer to call {n}: {value}")),
    }
}

/// The three clients, each built once and kept for the whole run (their
/// pools stay warm between runs).
pub(crate) struct Clients {
    reqwest: reqwest::Client,
    reqwest_url: reqwest::Url,
    hyper: LegacyClient<HttpConnector, Full<Bytes>>,
    hyper_uri: http::Uri,
    cortex: NetworkMcpClient,
    cortex_wide: NetworkMcpClient,
}

impl Clients {
    /// Clients of the echo server at `addr`.
    pub(crate) fn new(addr: SocketAddr) -> Res<Self> {
        let url = format!("http://{addr}/tool/{TOOL}");
        let reqwest = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("reqwest client: {e}"))?;
        let reqwest_url = reqwest::Url::parse(&url).map_err(|e| format!("url: {e}"))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let hyper = LegacyClient::builder(TokioExecutor::new()).build(connector);
        let hyper_uri = http::Uri::try_from(url.as_str()).map_err(|e| format!("uri: {e}"))?;
        let discovery = Arc::new(StaticDiscovery::new().with(SERVICE, format!("http://{addr}")));
        let cortex = NetworkMcpClient::builder(discovery.clone())
            .build()
            .map_err(|e| format!("cortex client: {e}"))?;
        let wide = ClientConfig::builder()
            .max_connections(10_000)
            .build()
            .map_err(|e| format!("cortex config: {e}"))?;
        let cortex_wide = NetworkMcpClient::builder(discovery)
            .config(wide)
            .build()
            .map_err(|e| format!("cortex client: {e}"))?;
        Ok(Self {
            reqwest,
            reqwest_url,
            hyper,
            hyper_uri,
            cortex,
            cortex_wide,
        })
    }

    /// One call of the echo tool by `variant`, its answer parsed as JSON and
    /// checked.
    pub(crate) async fn call(&self, variant: Variant, n: u64) -> Res<()> {
        match variant {
            Variant::Reqwest => self.call_reqwest(n).await,
            Variant::Hyper => self.call_hyper(n).await,
            Variant::Cortex => call_cortex(&self.cortex, n).await,
            Variant::CortexWide => call_cortex(&self.cortex_wide, n).await,
        }
    }

    async fn call_reqwest(&self, n: u64) -> Res<()> {
        let arguments = arguments(n);
        let response = self
            .reqwest
            .post(self.reqwest_url.clone())
            .json(&Envelope {
                arguments: &arguments,
            })
            .send()
            .await
            .map_err(|e| format!("reqwest: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("reqwest: HTTP {}", response.status()));
        }
        let value: Value = response
            .json()
            .await
            .map_err(|e| format!("reqwest: answer: {e}"))?;
        check(&unwrap_result(value), n)
    }

    async fn call_hyper(&self, n: u64) -> Res<()> {
        let arguments = arguments(n);
        let body = serde_json::to_vec(&Envelope {
            arguments: &arguments,
        })
        .map_err(|e| format!("encode: {e}"))?;
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.hyper_uri.clone();
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let response = self
            .hyper
            .request(request)
            .await
            .map_err(|e| format!("hyper: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("hyper: HTTP {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("hyper: body: {e}"))?
            .to_bytes();
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| format!("hyper: answer: {e}"))?;
        check(&unwrap_result(value), n)
    }

    /// The stack client a variant uses, if it is one.
    pub(crate) fn stack(&self, variant: Variant) -> Option<&NetworkMcpClient> {
        match variant {
            Variant::Cortex => Some(&self.cortex),
            Variant::CortexWide => Some(&self.cortex_wide),
            _ => None,
        }
    }
}

async fn call_cortex(client: &NetworkMcpClient, n: u64) -> Res<()> {
    let value = client
        .call_tool(SERVICE, TOOL, arguments(n))
        .await
        .map_err(|e| format!("call_tool: {e}"))?;
    check(&value, n)
}

// ---------------------------------------------------------------------------
// Running calls
// ---------------------------------------------------------------------------

/// Bound on any one call.
pub(crate) const CALL_LIMIT: Duration = Duration::from_secs(30);

/// `total` calls by `variant` from `concurrency` tasks (each takes the next
/// call number until none is left), no timing kept: what the allocation
/// count measures.
pub(crate) async fn run_calls(
    clients: &Arc<Clients>,
    variant: Variant,
    concurrency: usize,
    total: u64,
) -> Res<()> {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let clients = clients.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return Ok(());
                    }
                    match tokio::time::timeout(CALL_LIMIT, clients.call(variant, n)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_) => return Err(format!("call {n}: no answer in {CALL_LIMIT:?}")),
                    }
                }
            })
        })
        .collect();
    let mut first_error = None;
    for task in tasks {
        let outcome = task.await.map_err(|e| format!("task: {e}")).and_then(|r| r);
        if let Err(e) = outcome {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// One timed run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) calls: u64,
    pub(crate) elapsed: Duration,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
    /// CPU time of this process (the client) during the run.
    pub(crate) client_cpu: Duration,
    /// CPU time of the server's process during the run.
    pub(crate) server_cpu: Duration,
    /// CPU time the rest of the machine used during the run (other
    /// programs on a shared machine), as a share of all its cores' time.
    pub(crate) others: f64,
}

impl Run {
    pub(crate) fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Microseconds of client CPU per call.
    pub(crate) fn client_us(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }

    pub(crate) fn server_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }
}

/// The machine's CPUs (not only those this process may run on).
pub(crate) fn machine_cores() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|stat| {
            stat.lines()
                .filter(|l| {
                    l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                })
                .count()
        })
        .unwrap_or(0)
        .max(1)
}

/// Busy CPU time of the whole machine so far (all cores; `/proc/stat`).
pub(crate) fn machine_busy() -> Res<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let line = stat.lines().next().ok_or("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: not idle, iowait.
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_secs_f64(busy as f64 / hz as f64))
}

/// The share of the machine's cores that others used over `elapsed`, given
/// the machine's busy time and the benchmark's own processes' CPU time.
fn others_share(machine: Duration, ours: Duration, elapsed: Duration) -> f64 {
    let cores = machine_cores() as f64;
    machine.saturating_sub(ours).as_secs_f64() / (elapsed.as_secs_f64() * cores).max(1e-9)
}

/// Calls by `variant` from `concurrency` tasks for `length`: every task
/// starts a new call until the time is up, and the run ends when the last
/// call in flight has answered.
pub(crate) async fn run_timed(
    clients: &Arc<Clients>,
    variant: Variant,
    concurrency: usize,
    length: Duration,
    server_pid: u32,
) -> Res<Run> {
    let cpu_before = process_cpu(std::process::id())?;
    let server_before = process_cpu(server_pid)?;
    let machine_before = machine_busy()?;
    let started = Instant::now();
    let deadline = started + length;
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let clients = clients.clone();
            tokio::spawn(async move {
                let mut latencies: Vec<Duration> = Vec::with_capacity(4096);
                let mut n = (worker as u64) << 32;
                loop {
                    let t0 = Instant::now();
                    if t0 >= deadline {
                        return Ok(latencies);
                    }
                    match tokio::time::timeout(CALL_LIMIT, clients.call(variant, n)).await {
                        Ok(Ok(())) => latencies.push(t0.elapsed()),
                        Ok(Err(e)) => return Err(e),
                        Err(_) => return Err(format!("call {n}: no answer in {CALL_LIMIT:?}")),
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut first_error = None;
    for task in tasks {
        match task.await.map_err(|e| format!("task: {e}")).and_then(|r| r) {
            Ok(latencies) => all.extend(latencies),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let elapsed = started.elapsed();
    let client_cpu = process_cpu(std::process::id())?.saturating_sub(cpu_before);
    let server_cpu = process_cpu(server_pid)?.saturating_sub(server_before);
    let machine = machine_busy()?.saturating_sub(machine_before);
    let others = others_share(machine, client_cpu + server_cpu, elapsed);
    if let Some(e) = first_error {
        return Err(e);
    }
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Ok(Run {
        calls: all.len() as u64,
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
        max: all.last().copied().unwrap_or_default(),
        client_cpu,
        server_cpu,
        others,
    })
}

// ---------------------------------------------------------------------------
// Where the processes run
// ---------------------------------------------------------------------------

/// Which CPUs the client and the server run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// The client on the first allowed CPU, the server on the second: each
    /// has a core, as on two machines.
    Split,
    /// Both on the first allowed CPU: a call's cost is the client's and the
    /// server's CPU time in turn, with no cross-core wake-ups.
    Same,
    /// Wherever the scheduler puts them.
    Free,
}

impl Placement {
    pub(crate) fn parse(name: &str) -> Res<Self> {
        match name.trim() {
            "split" => Ok(Self::Split),
            "same" => Ok(Self::Same),
            "free" => Ok(Self::Free),
            other => Err(format!("unknown placement `{other}` (split, same, free)")),
        }
    }
}

fn pin(pid: Option<u32>, cpu: usize) -> Res<()> {
    use rustix::thread::{CpuSet, sched_setaffinity};
    let pid = match pid {
        Some(raw) => Some(
            i32::try_from(raw)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
                .ok_or_else(|| format!("bad pid {raw}"))?,
        ),
        None => None,
    };
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(pid, &set).map_err(|e| format!("pinning to CPU {cpu}: {e}"))
}

/// Pins this thread (call it before the runtime starts its threads, which
/// inherit it) and the server's main thread; says where they run.
pub(crate) fn place(placement: Placement, server_pid: u32) -> Res<String> {
    use rustix::thread::{CpuSet, sched_getaffinity};
    let allowed = sched_getaffinity(None).map_err(|e| format!("affinity: {e}"))?;
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
        .filter(|&c| allowed.is_set(c))
        .collect();
    let (Some(&first), second) = (cpus.first(), cpus.get(1).copied()) else {
        return Ok("no CPU affinity available: not pinned".into());
    };
    match (placement, second) {
        (Placement::Free, _) => Ok("not pinned".into()),
        (Placement::Split, Some(second)) => {
            pin(None, first)?;
            pin(Some(server_pid), second)?;
            Ok(format!("client on CPU {first}, server on CPU {second}"))
        }
        (Placement::Same, _) | (Placement::Split, None) => {
            pin(None, first)?;
            pin(Some(server_pid), first)?;
            Ok(format!("client and server both on CPU {first}"))
        }
    }
}

// ---------------------------------------------------------------------------
// Figures from /proc
// ---------------------------------------------------------------------------

/// User plus system CPU time of process `pid` so far (all its threads).
pub(crate) fn process_cpu(pid: u32) -> Res<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        return Err("no utime/stime in /proc stat".into());
    };
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_secs_f64((user + system) as f64 / hz as f64))
}

/// Resident memory of process `pid`, from `/proc/PID/statm`.
pub(crate) fn resident_bytes(pid: u32) -> Res<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .map_err(|e| format!("/proc/{pid}/statm: {e}"))?;
    let pages = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse::<u64>().ok())
        .ok_or("malformed /proc statm")?;
    Ok(pages * rustix::param::page_size() as u64)
}

/// Open file descriptors of this process.
pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The build the figures come from, for the record.
pub(crate) fn describe_machine() -> String {
    let cores = machine_cores();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    format!("{cores} cores ({model})")
}
