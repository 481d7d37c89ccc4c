//! Benchmark of the network client, each figure against a baseline measured
//! in the same run (the machine may be shared and noisy; ratios taken in one
//! run are what stay meaningful).
//!
//! 1. `get_item` tool calls over loopback against one in-process memory
//!    service, at several concurrencies: the full stack
//!    ([`NetworkMcpClient::call_tool`]: pool, breaker, retry, metrics) against
//!    a bare hyper HTTP/1 client (one `hyper::client::conn::http1` connection
//!    per concurrent worker) sending the same request and parsing the same
//!    JSON. Runs alternate (baseline, stack, ...) and the best of `--rounds`
//!    is kept per configuration. A diagnostic third variant, the bare client
//!    sending the stack's headers (notably a fresh `Idempotency-Key`),
//!    separates the client's own cost from work the header causes on the
//!    service (the memory service records every keyed call durably).
//!    Diagnostic B repeats the comparison against an in-process service that
//!    answers the same item from memory and records no key, so that what is
//!    left is the client's own cost.
//! 2. A call refused by an open circuit breaker: `call_tool` on a service at
//!    a dead port whose breaker is open, against a bare
//!    [`CircuitBreaker::try_acquire`] rejection; plus the cost of the pieces
//!    of the refused path that public APIs let us time on their own.
//!
//! ```text
//! cargo bench -p cortex-client --bench client            # 20000 calls per run
//! cargo bench -p cortex-client --bench client -- --quick # 2000 calls per run
//! cargo bench -p cortex-client --bench client -- --help
//! ```

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cortex_client::config::ClientConfig;
use cortex_client::{
    Endpoint, McpClient, McpError, NetworkMcpClient, ServiceDiscovery, StaticDiscovery,
};
use cortex_proto::envelope::{ToolRequest, unwrap_result};
use cortex_resilience::breaker::{BreakerConfig, CircuitBreaker};
use cortex_resilience::budget::RetryBudget;
use cortex_service::{IdempotencyStore, Service, ServiceConfig, ServiceError, Tool};
use cortex_test_support::TestServer;
use cortex_test_support::stats::percentile;
use futures::future::BoxFuture;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::task::{AbortHandle, JoinHandle};

type Res<T> = Result<T, String>;

/// Bound on one call, connect or setup step.
const WAIT: Duration = Duration::from_secs(30);
/// Bound on one measured run (all its calls, all workers).
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// The memory service's name in discovery.
const SERVICE: &str = "memory";
/// The isolation service's name in discovery.
const ISOLATED: &str = "isolated";
/// The tool measured.
const TOOL: &str = "get_item";

const HELP: &str = "\
network client benchmark (custom harness)

usage: cargo bench -p cortex-client --bench client [-- OPTIONS]

  --quick              2000 calls per run instead of 20000
  --calls N            calls per measured run            (default 20000)
  --rounds N           runs per variant; the best is kept (default 3)
  --concurrency LIST   comma-separated concurrencies      (default 1,32,256)
  --refused N          refused calls timed                (default 100000)
  --no-keyed           skip the diagnostic bare+stack-headers variant
  --no-isolated        skip the diagnostic in-memory service (no fsync)
  --max-secs N         bound on the whole benchmark       (default 1800)
";

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

struct Options {
    quick: bool,
    calls: usize,
    rounds: usize,
    concurrency: Vec<usize>,
    refused: usize,
    keyed: bool,
    isolated: bool,
    max_secs: u64,
}

fn parse_count(flag: &str, value: Option<String>) -> Res<usize> {
    let value = value.ok_or_else(|| format!("{flag} needs a number"))?;
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: `{value}` is not a positive number")),
    }
}

/// `None` when only the help was asked for.
fn parse_args() -> Res<Option<Options>> {
    let mut quick = false;
    let mut calls = None;
    let mut rounds = 3;
    let mut concurrency = vec![1, 32, 256];
    let mut refused = 100_000;
    let mut keyed = true;
    let mut isolated = true;
    let mut max_secs = 1800;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            "--quick" => quick = true,
            "--calls" => calls = Some(parse_count(&arg, args.next())?),
            "--rounds" => rounds = parse_count(&arg, args.next())?,
            "--refused" => refused = parse_count(&arg, args.next())?,
            "--max-secs" => max_secs = parse_count(&arg, args.next())? as u64,
            "--no-keyed" => keyed = false,
            "--no-isolated" => isolated = false,
            "--concurrency" => {
                let list = args.next().ok_or("--concurrency needs a list")?;
                concurrency = list
                    .split(',')
                    .map(|c| parse_count("--concurrency", Some(c.trim().to_string())))
                    .collect::<Res<_>>()?;
                if concurrency.iter().any(|&c| c > 10_000) {
                    return Err("--concurrency: at most 10000 (max_connections)".into());
                }
            }
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    Ok(Some(Options {
        quick,
        calls: calls.unwrap_or(if quick { 2_000 } else { 20_000 }),
        rounds,
        concurrency,
        refused,
        keyed,
        isolated,
        max_secs,
    }))
}

// ---------------------------------------------------------------------------
// Statistics and formatting
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Stats {
    count: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Stats {
    fn new(mut samples: Vec<Duration>, elapsed: Duration) -> Self {
        samples.sort_unstable();
        Self {
            count: samples.len(),
            elapsed,
            p50: percentile(&samples, 0.50),
            p99: percentile(&samples, 0.99),
        }
    }

    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 100.0 {
        format!("{us:.1}µs")
    } else if us < 10_000.0 {
        format!("{us:.0}µs")
    } else {
        format!("{:.1}ms", us / 1e3)
    }
}

fn signed_us(d: f64) -> String {
    format!("{d:+.1} µs")
}

fn ns(d: f64) -> String {
    if d < 10_000.0 {
        format!("{d:.0} ns")
    } else {
        format!("{:.2} µs", d / 1e3)
    }
}

fn p50_added(stack: &Stats, base: &Stats) -> f64 {
    (stack.p50.as_secs_f64() - base.p50.as_secs_f64()) * 1e6
}

fn met(ok: bool) -> &'static str {
    if ok { "MET" } else { "MISSED" }
}

// ---------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------

/// Aborts the tasks it holds when dropped (on every exit path).
struct AbortOnDrop(Vec<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Awaits `handles` within `RUN_LIMIT` from `started`; the first error wins.
async fn join_all<T>(handles: Vec<JoinHandle<Res<T>>>, started: Instant) -> Res<Vec<T>> {
    let _guard = AbortOnDrop(handles.iter().map(JoinHandle::abort_handle).collect());
    let mut out = Vec::with_capacity(handles.len());
    let mut first_error = None;
    for handle in handles {
        let left = RUN_LIMIT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, handle).await {
            Ok(Ok(Ok(value))) => out.push(value),
            Ok(Ok(Err(error))) => {
                first_error.get_or_insert(error);
            }
            Ok(Err(join)) => {
                first_error.get_or_insert(format!("worker task failed: {join}"));
            }
            Err(_) => return Err(format!("run did not finish within {RUN_LIMIT:?}")),
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(out),
    }
}

/// Shared by the workers of one run: the next call to make, and whether one
/// failed (the others then stop).
struct Work {
    next: AtomicUsize,
    total: usize,
    failed: AtomicBool,
}

impl Work {
    fn new(total: usize) -> Arc<Self> {
        Arc::new(Self {
            next: AtomicUsize::new(0),
            total,
            failed: AtomicBool::new(false),
        })
    }

    fn claim(&self) -> bool {
        !self.failed.load(Ordering::Relaxed)
            && self.next.fetch_add(1, Ordering::Relaxed) < self.total
    }

    fn fail(&self, error: String) -> String {
        self.failed.store(true, Ordering::Relaxed);
        error
    }
}

/// The answer of `get_item` must be the item asked for.
fn check_item(value: &Value, item_id: i64) -> Res<()> {
    match value.get("item_id").and_then(Value::as_i64) {
        Some(id) if id == item_id => Ok(()),
        _ => Err(format!("unexpected get_item answer: {value}")),
    }
}

// ---------------------------------------------------------------------------
// Baseline: bare hyper HTTP/1, one connection per worker
// ---------------------------------------------------------------------------

type Sender = SendRequest<Full<Bytes>>;

/// One kept-alive HTTP/1 connection (TCP_NODELAY, like the pool's), driven
/// by its own task.
async fn dial(addr: SocketAddr) -> Res<(Sender, AbortHandle)> {
    let stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect {addr}: timed out"))?
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = tokio::time::timeout(WAIT, http1::handshake(TokioIo::new(stream)))
        .await
        .map_err(|_| format!("handshake {addr}: timed out"))?
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, driver.abort_handle()))
}

/// The bare baseline's connections of one concurrency.
struct BarePool {
    senders: Vec<Sender>,
    drivers: AbortOnDrop,
}

impl BarePool {
    async fn open(addr: SocketAddr, n: usize) -> Res<Self> {
        let mut senders = Vec::with_capacity(n);
        let mut drivers = AbortOnDrop(Vec::with_capacity(n));
        for _ in 0..n {
            let (sender, driver) = dial(addr).await?;
            senders.push(sender);
            drivers.0.push(driver);
        }
        Ok(Self { senders, drivers })
    }
}

/// What the bare client sends besides the minimum.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Headers {
    /// Host and Content-Type only.
    Minimal,
    /// The stack's set: User-Agent, Accept, request and trace ids,
    /// traceparent and a fresh Idempotency-Key.
    Stack,
}

/// A random UUID from a user-space generator, as the stack makes its ids
/// (`Uuid::new_v4` costs a system call each: the baseline would pay for
/// work the stack does not do).
fn fast_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid()
}

fn uuid_simple() -> String {
    fast_uuid().simple().to_string()
}

/// One `get_item` over a bare connection; the answer parsed as the stack
/// parses it.
async fn bare_call(
    sender: &mut Sender,
    host: &HeaderValue,
    item_id: i64,
    headers: Headers,
) -> Res<()> {
    let body = serde_json::to_vec(&json!({ "arguments": { "item_id": item_id } }))
        .map_err(|e| format!("encode: {e}"))?;
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri("/tool/get_item")
        .header(header::HOST, host.clone())
        .header(header::CONTENT_TYPE, "application/json");
    if headers == Headers::Stack {
        let trace_id = uuid_simple();
        builder = builder
            .header(header::USER_AGENT, "cortex-client/bench")
            .header(header::ACCEPT, "application/json")
            .header(cortex_proto::REQUEST_ID_HEADER, uuid_simple())
            .header(
                "traceparent",
                format!("00-{trace_id}-{}-01", &uuid_simple()[..16]),
            )
            .header(cortex_proto::TRACE_ID_HEADER, trace_id)
            .header(
                cortex_proto::IDEMPOTENCY_KEY_HEADER,
                fast_uuid().to_string(),
            );
    }
    let request = builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    sender
        .ready()
        .await
        .map_err(|e| format!("connection not ready: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("read body: {e}"))?
        .to_bytes();
    if !parts.status.is_success() {
        return Err(format!(
            "HTTP {}: {}",
            parts.status,
            String::from_utf8_lossy(&body)
        ));
    }
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))?;
    check_item(&unwrap_result(value), item_id)
}

async fn run_bare(
    pool: &mut BarePool,
    host: &HeaderValue,
    calls: usize,
    item_id: i64,
    headers: Headers,
) -> Res<Stats> {
    let work = Work::new(calls);
    let started = Instant::now();
    let handles: Vec<_> = pool
        .senders
        .drain(..)
        .map(|mut sender| {
            let work = work.clone();
            let host = host.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(work.total / 4 + 16);
                while work.claim() {
                    let t0 = Instant::now();
                    match tokio::time::timeout(
                        WAIT,
                        bare_call(&mut sender, &host, item_id, headers),
                    )
                    .await
                    {
                        Ok(Ok(())) => latencies.push(t0.elapsed()),
                        Ok(Err(e)) => return Err(work.fail(format!("bare call: {e}"))),
                        Err(_) => {
                            return Err(work.fail(format!("bare call: no answer in {WAIT:?}")));
                        }
                    }
                }
                Ok((sender, latencies))
            })
        })
        .collect();
    let results = join_all(handles, started).await?;
    let elapsed = started.elapsed();
    let mut all = Vec::with_capacity(calls);
    for (sender, latencies) in results {
        pool.senders.push(sender);
        all.extend(latencies);
    }
    Ok(Stats::new(all, elapsed))
}

// ---------------------------------------------------------------------------
// The stack
// ---------------------------------------------------------------------------

fn stack_client(discovery: Arc<StaticDiscovery>, concurrency: usize) -> Res<NetworkMcpClient> {
    let config = ClientConfig::builder()
        .max_connections(concurrency)
        .pool_timeout(Duration::from_secs(60))
        .request_timeout(Duration::from_secs(60))
        .idle_timeout(Duration::from_secs(3600))
        .build()
        .map_err(|e| format!("client config: {e}"))?;
    NetworkMcpClient::builder(discovery)
        .config(config)
        .build()
        .map_err(|e| format!("client: {e}"))
}

async fn run_stack(
    client: &NetworkMcpClient,
    service: &'static str,
    concurrency: usize,
    calls: usize,
    item_id: i64,
) -> Res<Stats> {
    let work = Work::new(calls);
    let started = Instant::now();
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let work = work.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(work.total / 4 + 16);
                while work.claim() {
                    let t0 = Instant::now();
                    let call = client.call_tool(service, TOOL, json!({ "item_id": item_id }));
                    match tokio::time::timeout(WAIT, call).await {
                        Ok(Ok(value)) => {
                            check_item(&value, item_id).map_err(|e| work.fail(e))?;
                            latencies.push(t0.elapsed());
                        }
                        Ok(Err(e)) => return Err(work.fail(format!("call_tool: {e}"))),
                        Err(_) => {
                            return Err(work.fail(format!("call_tool: no answer in {WAIT:?}")));
                        }
                    }
                }
                Ok(latencies)
            })
        })
        .collect();
    let results = join_all(handles, started).await?;
    let elapsed = started.elapsed();
    Ok(Stats::new(results.into_iter().flatten().collect(), elapsed))
}

// ---------------------------------------------------------------------------
// Part 1: get_item throughput and latency
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Bare,
    Stack,
    BareKeyed,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Self::Bare => "bare hyper",
            Self::Stack => "cortex stack",
            Self::BareKeyed => "bare hyper + stack headers",
        }
    }
}

/// Best (highest calls/s) of the runs of one variant, or why none ran.
#[derive(Default)]
struct Best {
    best: Option<Stats>,
    /// The slowest run's calls/s, for the spread.
    worst_rate: Option<f64>,
    errors: Vec<String>,
}

impl Best {
    fn add(&mut self, outcome: Res<Stats>) {
        match outcome {
            Ok(stats) => {
                if self.best.is_none_or(|b| stats.rate() > b.rate()) {
                    self.best = Some(stats);
                }
                if self.worst_rate.is_none_or(|w| stats.rate() < w) {
                    self.worst_rate = Some(stats.rate());
                }
            }
            Err(error) => self.errors.push(error),
        }
    }

    /// "worst-best" calls/s and best/worst, when it ran.
    fn spread(&self) -> Option<(String, f64)> {
        let best = self.best?.rate();
        let worst = self.worst_rate?;
        Some((format!("{worst:.0}-{best:.0}"), best / worst.max(1e-9)))
    }
}

/// Prints the run-to-run spread of every row; the largest best/worst ratio.
fn print_spread(tag: &str, rows: &[Row]) -> f64 {
    let mut largest: f64 = 1.0;
    for row in rows {
        let mut line = format!("  {tag:<8} c={:<4}", row.concurrency);
        for (label, best) in [
            ("bare", &row.bare),
            ("cortex", &row.stack),
            ("bare+keys", &row.keyed),
        ] {
            if let Some((range, ratio)) = best.spread() {
                largest = largest.max(ratio);
                line.push_str(&format!("  {label} {range}"));
            }
        }
        println!("{line}");
    }
    largest
}

/// A service to measure against: its name in discovery and its address.
struct Target {
    service: &'static str,
    addr: SocketAddr,
}

struct Row {
    concurrency: usize,
    bare: Best,
    stack: Best,
    keyed: Best,
}

async fn measure_concurrency(
    opts: &Options,
    target: &Target,
    discovery: &Arc<StaticDiscovery>,
    item_id: i64,
    concurrency: usize,
) -> Res<Row> {
    let addr = target.addr;
    let tag = target.service;
    let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| format!("host: {e}"))?;
    let mut pool = BarePool::open(addr, concurrency).await?;
    let client = stack_client(discovery.clone(), concurrency)?;
    let mut row = Row {
        concurrency,
        bare: Best::default(),
        stack: Best::default(),
        keyed: Best::default(),
    };
    let mut variants = vec![Variant::Bare, Variant::Stack];
    if opts.keyed {
        variants.push(Variant::BareKeyed);
    }

    // Warm-up: every connection dialled, caches and allocators warm.
    let warm = (opts.calls / 10).max(concurrency * 4);
    for &variant in &variants {
        let outcome = match variant {
            Variant::Bare => run_bare(&mut pool, &host, warm, item_id, Headers::Minimal).await,
            Variant::Stack => run_stack(&client, target.service, concurrency, warm, item_id).await,
            Variant::BareKeyed => run_bare(&mut pool, &host, warm, item_id, Headers::Stack).await,
        };
        outcome.map_err(|e| format!("warm-up of {} at {concurrency}: {e}", variant.label()))?;
    }

    for round in 0..opts.rounds {
        // Alternate the order so neither side always runs first.
        let mut order = variants.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for variant in order {
            let outcome = match variant {
                Variant::Bare => {
                    run_bare(&mut pool, &host, opts.calls, item_id, Headers::Minimal).await
                }
                Variant::Stack => {
                    run_stack(&client, target.service, concurrency, opts.calls, item_id).await
                }
                Variant::BareKeyed => {
                    run_bare(&mut pool, &host, opts.calls, item_id, Headers::Stack).await
                }
            };
            match &outcome {
                Ok(s) => println!(
                    "  {tag:<8} c={concurrency:<4} round {} {:<28} {:>9.0} calls/s  p50 {:>8}  p99 {:>8}  ({} calls in {:.2} s)",
                    round + 1,
                    variant.label(),
                    s.rate(),
                    us(s.p50),
                    us(s.p99),
                    s.count,
                    s.elapsed.as_secs_f64()
                ),
                Err(e) => println!(
                    "  {tag:<8} c={concurrency:<4} round {} {:<28} FAILED: {e}",
                    round + 1,
                    variant.label()
                ),
            }
            match variant {
                Variant::Bare => row.bare.add(outcome),
                Variant::Stack => row.stack.add(outcome),
                Variant::BareKeyed => row.keyed.add(outcome),
            }
        }
    }
    let pool_stats = client
        .endpoint_status()
        .first()
        .map(|s| format!("{:?}", s.pool))
        .unwrap_or_default();
    println!("  {tag:<8} c={concurrency:<4} stack pool after the runs: {pool_stats}");
    client.close().await;
    drop(pool.drivers);
    Ok(row)
}

// ---------------------------------------------------------------------------
// Part 2: calls refused by an open breaker
// ---------------------------------------------------------------------------

struct Refused {
    /// ns per refused `call_tool`, best of the rounds.
    stack_ns: f64,
    /// ns per bare `try_acquire` rejection, best of the rounds.
    breaker_ns: f64,
}

/// A port nobody listens on (bound, then released).
fn dead_port() -> Res<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("local addr: {e}"))?
        .port();
    drop(listener);
    Ok(port)
}

async fn open_breaker_client() -> Res<NetworkMcpClient> {
    let port = dead_port()?;
    let discovery =
        Arc::new(StaticDiscovery::new().with("dead", format!("http://127.0.0.1:{port}")));
    let config = ClientConfig::builder()
        .failure_threshold(1)
        .max_retries(0)
        .reset_timeout(Duration::from_secs(3600))
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("config: {e}"))?;
    let client = NetworkMcpClient::builder(discovery)
        .config(config)
        .build()
        .map_err(|e| format!("client: {e}"))?;
    let first = tokio::time::timeout(WAIT, client.call_tool("dead", TOOL, json!({"item_id": 1})))
        .await
        .map_err(|_| "the call to the dead port did not end".to_string())?;
    match first {
        Err(McpError::Connection { .. }) => {}
        other => return Err(format!("the dead port answered unexpectedly: {other:?}")),
    }
    let second = tokio::time::timeout(WAIT, client.call_tool("dead", TOOL, json!({"item_id": 1})))
        .await
        .map_err(|_| "the refused call did not end".to_string())?;
    match second {
        Err(McpError::CircuitOpen { .. }) => Ok(client),
        other => Err(format!("the breaker did not open: {other:?}")),
    }
}

/// ns per refused `call_tool` over `n` calls, all of which must be refused.
async fn time_refused_calls(client: &NetworkMcpClient, n: usize) -> Res<f64> {
    let calls = async {
        let mut unexpected = 0usize;
        let started = Instant::now();
        for _ in 0..n {
            match client.call_tool("dead", TOOL, json!({"item_id": 1})).await {
                Err(McpError::CircuitOpen { .. }) => {}
                _ => unexpected += 1,
            }
        }
        (started.elapsed(), unexpected)
    };
    let (elapsed, unexpected) = tokio::time::timeout(RUN_LIMIT, calls)
        .await
        .map_err(|_| format!("{n} refused calls did not finish within {RUN_LIMIT:?}"))?;
    if unexpected > 0 {
        return Err(format!(
            "{unexpected} of {n} calls were not refused with CircuitOpen"
        ));
    }
    Ok(elapsed.as_nanos() as f64 / n as f64)
}

fn open_bare_breaker() -> Res<CircuitBreaker> {
    let config = BreakerConfig::try_new(1, Duration::from_secs(3600), 1)
        .map_err(|e| format!("breaker config: {e}"))?;
    let breaker = CircuitBreaker::new("bench", config);
    match breaker.try_acquire() {
        Ok(permit) => permit.failure(),
        Err(_) => return Err("a new breaker refused".into()),
    }
    Ok(breaker)
}

fn time_breaker_rejections(breaker: &CircuitBreaker, n: usize) -> Res<f64> {
    let mut admitted = 0usize;
    let started = Instant::now();
    for _ in 0..n {
        match black_box(breaker).try_acquire() {
            Err(rejected) => {
                black_box(rejected);
            }
            Ok(_) => admitted += 1,
        }
    }
    let elapsed = started.elapsed();
    if admitted > 0 {
        return Err(format!("the open breaker admitted {admitted} calls"));
    }
    Ok(elapsed.as_nanos() as f64 / n as f64)
}

async fn measure_refused(opts: &Options) -> Res<Refused> {
    let client = open_breaker_client().await?;
    let breaker = open_bare_breaker()?;
    // Warm-up.
    time_refused_calls(&client, (opts.refused / 10).max(1000)).await?;
    time_breaker_rejections(&breaker, (opts.refused / 10).max(1000))?;
    let mut stack_ns = f64::INFINITY;
    let mut breaker_ns = f64::INFINITY;
    for round in 0..opts.rounds {
        let b = time_breaker_rejections(&breaker, opts.refused)?;
        let s = time_refused_calls(&client, opts.refused).await?;
        println!(
            "  round {}: call_tool refused {:>9}/call   breaker alone {:>9}/call",
            round + 1,
            ns(s),
            ns(b)
        );
        stack_ns = stack_ns.min(s);
        breaker_ns = breaker_ns.min(b);
    }
    client.close().await;
    Ok(Refused {
        stack_ns,
        breaker_ns,
    })
}

// ---------------------------------------------------------------------------
// Where a refused call's time goes: the pieces public APIs expose, timed
// alone (copies of what `call_tool`/`execute`/`attempt` do, not the library
// code itself).
// ---------------------------------------------------------------------------

fn time_ns(n: usize, mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

async fn pieces(n: usize) -> Vec<(&'static str, f64)> {
    let mut out = Vec::new();
    out.push((
        "3 ids, user-space generator + to_string (idempotency key, request id, trace id)",
        time_ns(n, || {
            black_box(fast_uuid().to_string());
            black_box(uuid_simple());
            black_box(uuid_simple());
        }),
    ));
    let services: Mutex<std::collections::HashMap<String, Arc<String>>> =
        Mutex::new(std::collections::HashMap::new());
    if let Ok(mut map) = services.lock() {
        map.insert("dead".into(), Arc::new(String::new()));
    }
    out.push((
        "service state: map lock + HashMap<String, _> lookup + Arc clone",
        time_ns(n, || {
            if let Ok(map) = services.lock() {
                black_box(map.get(black_box("dead")).cloned());
            }
        }),
    ));
    out.push((
        "tool path: percent-encode + replace + format",
        time_ns(n, || {
            let encoded =
                percent_encoding::utf8_percent_encode(black_box(TOOL), percent_encoding::CONTROLS)
                    .to_string();
            black_box(format!("/tool/{}", encoded.replace('/', "%2F")));
        }),
    ));
    out.push((
        "encode body: json!{item_id} + envelope + to_vec + path format",
        time_ns(n, || {
            let body = ToolRequest::encode_envelope(&json!({"item_id": 1}));
            black_box(body.ok());
            black_box(format!("/tool/{}", black_box("get_item")));
        }),
    ));
    let discovery = StaticDiscovery::new().with("dead", "http://127.0.0.1:9");
    let resolve = async {
        let started = Instant::now();
        for _ in 0..n {
            black_box(discovery.resolve(black_box("dead")).await.ok());
        }
        started.elapsed().as_nanos() as f64 / n as f64
    };
    if let Ok(t) = tokio::time::timeout(RUN_LIMIT, resolve).await {
        out.push((
            "StaticDiscovery::resolve (boxed future, RwLock, Vec<Endpoint> clone)",
            t,
        ));
    }
    let endpoints: Mutex<BTreeMap<Endpoint, Arc<String>>> = Mutex::new(BTreeMap::new());
    let endpoint = Endpoint::new("http://127.0.0.1:9");
    if let Ok(mut map) = endpoints.lock() {
        map.insert(endpoint.clone(), Arc::new(String::new()));
    }
    out.push((
        "endpoint bookkeeping: order Vec, map lock + lookup, Arc clone",
        time_ns(n, || {
            let list = [endpoint.clone()];
            let mut order: Vec<&Endpoint> = list.iter().collect();
            order.sort_by_key(|_| false);
            if let Ok(map) = endpoints.lock() {
                black_box(map.get(order[0]).cloned());
            }
        }),
    ));
    if let Ok(budget) = RetryBudget::try_new(Duration::from_secs(10), 10, 0.2) {
        out.push((
            "RetryBudget::deposit (mutex + clock read)",
            time_ns(n, || budget.deposit()),
        ));
    }
    out.push((
        "McpError::CircuitOpen built (2 Strings) and dropped",
        time_ns(n, || {
            black_box(McpError::CircuitOpen {
                service: black_box("dead").into(),
                endpoint: black_box(&endpoint.url).clone(),
                retry_after: Duration::from_secs(1),
            });
        }),
    ));
    // A copy of `Metrics::record`'s shape: one mutex, a BTreeMap keyed by two
    // freshly allocated Strings, and the error kind as a third String.
    let metrics: Mutex<BTreeMap<(String, String), BTreeMap<String, u64>>> =
        Mutex::new(BTreeMap::new());
    out.push((
        "metrics record copy: mutex + BTreeMap entry with 3 String allocs",
        time_ns(n, || {
            if let Ok(mut map) = metrics.lock() {
                let stats = map
                    .entry((black_box("dead").to_string(), black_box(TOOL).to_string()))
                    .or_default();
                *stats
                    .entry(black_box("circuit_open").to_string())
                    .or_default() += 1;
            }
        }),
    ));
    out.push((
        "2 tokio Instant::now (call start + deadline)",
        time_ns(n, || {
            black_box(tokio::time::Instant::now());
            black_box(tokio::time::Instant::now());
        }),
    ));
    out
}

/// The 3 ids drawn from `fastrand` (already a dependency) instead of the OS:
/// what the first piece would cost with that change.
fn fastrand_ids(n: usize) -> f64 {
    let id = || uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    time_ns(n, || {
        black_box(id().to_string());
        black_box(id().simple().to_string());
        black_box(id().simple().to_string());
    })
}

// ---------------------------------------------------------------------------
// Isolation: the same answer from a service that does no I/O
// ---------------------------------------------------------------------------

/// Remembers nothing: a keyed call costs the service no write, so the
/// `Idempotency-Key` the stack sends changes nothing but a header.
struct Forgetful;

impl IdempotencyStore for Forgetful {
    fn get<'a>(
        &'a self,
        _tool: &'a str,
        _key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, ServiceError>> {
        Box::pin(async { Ok(None) })
    }

    fn put<'a>(
        &'a self,
        _tool: &'a str,
        _key: &'a str,
        result: Value,
    ) -> BoxFuture<'a, Result<Value, ServiceError>> {
        Box::pin(async move { Ok(result) })
    }
}

/// A service with one `get_item` tool (same schema) answering `item` from
/// memory: same request, same answer bytes, no SQLite and no fsync.
async fn start_isolated(item: Value, item_id: i64) -> Res<TestServer> {
    let tool = Tool::new(
        TOOL,
        "Returns the benchmark's item from memory.",
        json!({"type": "object", "properties": {"item_id": {"type": "integer"}}, "required": ["item_id"]}),
        move |_ctx, args| {
            let item = item.clone();
            async move {
                match args.get("item_id").and_then(Value::as_i64) {
                    Some(id) if id == item_id => Ok(item),
                    _ => Err(ServiceError::invalid_argument("item_id", "unknown item")),
                }
            }
        },
    );
    let service = Service::builder(ISOLATED, "0")
        .idempotency_store(Arc::new(Forgetful))
        .tool(tool)
        .build()
        .map_err(|e| format!("isolated service: {e}"))?;
    tokio::time::timeout(WAIT, TestServer::start(service, ServiceConfig::default()))
        .await
        .map_err(|_| "the isolated service did not start".to_string())
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

/// (calls/s ratio stack/base, p50 added in µs), when both ran.
fn compare(stack: &Best, base: &Best) -> Option<(f64, f64)> {
    match (&stack.best, &base.best) {
        (Some(s), Some(b)) => Some((s.rate() / b.rate(), p50_added(s, b))),
        _ => None,
    }
}

/// Prints `rows` as "base | stack | ratio, p50 added"; the verdicts
/// (throughput, latency) when every row ran.
fn print_table(
    rows: &[Row],
    base_label: &str,
    base_of: impl Fn(&Row) -> &Best,
) -> Option<(bool, bool)> {
    println!(
        "{:<12} {:>18} {:>8} {:>8}  | {:>14} {:>8} {:>8}  | {:>6} {:>11}",
        "concurrency",
        format!("{base_label} calls/s"),
        "p50",
        "p99",
        "cortex calls/s",
        "p50",
        "p99",
        "ratio",
        "p50 added"
    );
    let (mut throughput, mut latency, mut complete) = (true, true, true);
    for row in rows {
        let base = base_of(row);
        match (&base.best, &row.stack.best, compare(&row.stack, base)) {
            (Some(b), Some(s), Some((ratio, added))) => {
                throughput &= ratio >= 0.9;
                latency &= added < 20.0;
                println!(
                    "{:<12} {:>18.0} {:>8} {:>8}  | {:>14.0} {:>8} {:>8}  | {:>5.2}x {:>11}",
                    row.concurrency,
                    b.rate(),
                    us(b.p50),
                    us(b.p99),
                    s.rate(),
                    us(s.p50),
                    us(s.p99),
                    ratio,
                    signed_us(added)
                );
            }
            _ => {
                complete = false;
                let error = base.errors.iter().chain(&row.stack.errors).next();
                println!(
                    "{:<12} FAILED: {}",
                    row.concurrency,
                    error.map_or("no run", |e| e.as_str())
                );
            }
        }
    }
    complete.then_some((throughput, latency))
}

struct Report {
    memory: Vec<Row>,
    isolated: Vec<Row>,
    refused: Res<Refused>,
    notes: Vec<String>,
}

fn print_summary(opts: &Options, report: &Report) {
    let n = opts.calls;
    let best = if opts.rounds == 1 {
        "one run".to_string()
    } else {
        format!("best of {}", opts.rounds)
    };
    println!();
    println!("================================ summary ================================");
    println!("get_item over loopback (memory service), {n} calls each, {best}");
    let main = print_table(&report.memory, "bare hyper", |r| &r.bare);
    println!();
    let refused_ok = match &report.refused {
        Ok(r) => {
            println!(
                "open breaker: cortex call_tool refused in {:.0} ns/call; breaker alone {:.0} ns ({:.1}x)",
                r.stack_ns,
                r.breaker_ns,
                r.stack_ns / r.breaker_ns.max(0.001)
            );
            Some(r.stack_ns < 2000.0)
        }
        Err(e) => {
            println!("open breaker: FAILED: {e}");
            None
        }
    };

    let mut isolated = None;
    if opts.keyed {
        println!();
        println!(
            "diagnostic A, memory service: bare hyper sending the stack's headers (fresh Idempotency-Key, ids, traceparent)"
        );
        print_table(&report.memory, "bare+keys", |r| &r.keyed);
    }
    if !report.isolated.is_empty() {
        println!();
        println!(
            "diagnostic B, same item from an in-memory service that records no idempotency key (client cost alone)"
        );
        isolated = print_table(&report.isolated, "bare hyper", |r| &r.bare);
        if opts.keyed {
            println!("  vs bare hyper sending the stack's headers:");
            print_table(&report.isolated, "bare+keys", |r| &r.keyed);
        }
    }

    println!();
    println!("targets (memory service, as specified):");
    let verdict = |v: Option<bool>| v.map_or("NOT MEASURED (a run failed)", met);
    println!(
        "  throughput >= 0.9x bare at every concurrency: {}",
        verdict(main.map(|m| m.0))
    );
    println!(
        "  p50 added < 20 µs at every concurrency:       {}",
        verdict(main.map(|m| m.1))
    );
    println!(
        "  refused call < 2 µs:                          {}",
        verdict(refused_ok)
    );
    if !report.isolated.is_empty() {
        println!("same throughput/latency targets, client cost alone (diagnostic B):");
        println!(
            "  throughput >= 0.9x bare at every concurrency: {}",
            verdict(isolated.map(|m| m.0))
        );
        println!(
            "  p50 added < 20 µs at every concurrency:       {}",
            verdict(isolated.map(|m| m.1))
        );
    }
    if opts.rounds > 1 {
        println!(
            "run-to-run spread, calls/s (worst-best of {} rounds):",
            opts.rounds
        );
        let spread =
            print_spread(SERVICE, &report.memory).max(print_spread(ISOLATED, &report.isolated));
        if spread > 1.3 {
            println!(
                "  note: rounds of one variant differ by up to {spread:.1}x. At low concurrency tokio either keeps the \
caller, the connection driver and the service on one worker thread or bounces them between threads \
(cross-thread wake-ups add tens of µs per call), so single runs are noisy; raise --rounds to compare more runs"
            );
        }
    }
    for note in &report.notes {
        println!("  note: {note}");
    }
    println!("==========================================================================");
}

async fn measure_all(
    opts: &Options,
    target: &Target,
    discovery: &Arc<StaticDiscovery>,
    item_id: i64,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for &c in &opts.concurrency {
        match measure_concurrency(opts, target, discovery, item_id, c).await {
            Ok(row) => rows.push(row),
            Err(e) => {
                println!("  {} c={c}: FAILED: {e}", target.service);
                let mut row = Row {
                    concurrency: c,
                    bare: Best::default(),
                    stack: Best::default(),
                    keyed: Best::default(),
                };
                row.bare.errors.push(e);
                rows.push(row);
            }
        }
    }
    rows
}

async fn run(opts: Options) -> Res<bool> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "network client benchmark{}: {cores} cores; {} calls per run, {} round(s), concurrency {:?}",
        if opts.quick { " (--quick)" } else { "" },
        opts.calls,
        opts.rounds,
        opts.concurrency
    );

    let (server, dir) = tokio::time::timeout(
        WAIT,
        cortex_test_support::start_memory(ServiceConfig::default()),
    )
    .await
    .map_err(|_| "the memory service did not start".to_string())?;
    let base = server.url("");
    println!(
        "  memory service on {base} (in process, same runtime), database in {}",
        dir.path().display()
    );
    let discovery = Arc::new(StaticDiscovery::new().with(SERVICE, base.clone()));

    // One item to read back.
    let setup = stack_client(discovery.clone(), 4)?;
    let stored = tokio::time::timeout(
        WAIT,
        setup.call_tool(
            SERVICE,
            "store_input",
            json!({"user_id": "bench", "input_data": {"content": "the item every get_item reads"}}),
        ),
    )
    .await
    .map_err(|_| "store_input did not answer".to_string())?
    .map_err(|e| format!("store_input: {e}"))?;
    let item_id = stored
        .get("item_id")
        .and_then(Value::as_i64)
        .ok_or_else(|| format!("store_input answered without an item_id: {stored}"))?;
    let item = tokio::time::timeout(
        WAIT,
        setup.call_tool(SERVICE, TOOL, json!({ "item_id": item_id })),
    )
    .await
    .map_err(|_| "get_item did not answer".to_string())?
    .map_err(|e| format!("get_item: {e}"))?;
    check_item(&item, item_id)?;
    setup.close().await;
    println!(
        "  stored item {item_id}; measuring `{TOOL} {{item_id: {item_id}}}` ({} bytes of result JSON)",
        item.to_string().len()
    );

    let mut report = Report {
        memory: Vec::new(),
        isolated: Vec::new(),
        refused: Err("not run".into()),
        notes: Vec::new(),
    };
    println!();
    println!("== get_item on the memory service: bare hyper vs cortex stack (runs alternate) ==");
    let memory = Target {
        service: SERVICE,
        addr: server.addr,
    };
    report.memory = measure_all(&opts, &memory, &discovery, item_id).await;

    println!();
    println!(
        "== open breaker: {} refused calls per round ==",
        opts.refused
    );
    report.refused = measure_refused(&opts).await;
    if let Err(e) = &report.refused {
        println!("  FAILED: {e}");
    }

    println!();
    println!("== pieces of a refused call, timed alone (copies, not the library code) ==");
    let parts = pieces(opts.refused).await;
    let mut sum = 0.0;
    for (label, t) in &parts {
        println!("  {label:<68} {:>9}", ns(*t));
        sum += t;
    }
    println!("  {:<68} {:>9}", "sum of the pieces", ns(sum));
    println!(
        "  {:<68} {:>9}",
        "(experiment) the same 3 ids from fastrand instead of getrandom",
        ns(fastrand_ids(opts.refused))
    );

    let mut isolated_server = None;
    if opts.isolated {
        println!();
        println!(
            "== diagnostic: the same item from an in-memory service that records no idempotency key =="
        );
        match start_isolated(item.clone(), item_id).await {
            Ok(isolated) => {
                discovery.register(ISOLATED, vec![Endpoint::new(isolated.url(""))]);
                let target = Target {
                    service: ISOLATED,
                    addr: isolated.addr,
                };
                report.isolated = measure_all(&opts, &target, &discovery, item_id).await;
                isolated_server = Some(isolated);
            }
            Err(e) => {
                println!("  FAILED: {e}");
                report.notes.push(format!("diagnostic B failed: {e}"));
            }
        }
    }

    if cores <= 2 {
        report.notes.push(format!(
            "{cores} cores: client, service and SQLite share them, so client CPU shows up as lost throughput"
        ));
    }
    print_summary(&opts, &report);
    drop(isolated_server);
    drop(server);
    drop(dir);
    let complete = |rows: &[Row]| {
        rows.iter()
            .all(|r| r.bare.best.is_some() && r.stack.best.is_some())
    };
    Ok(report.refused.is_ok() && complete(&report.memory) && complete(&report.isolated))
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Some(opts)) => opts,
        Ok(None) => return ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("client bench: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("client bench: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let limit = Duration::from_secs(opts.max_secs);
    let outcome = runtime.block_on(async move {
        tokio::time::timeout(limit, run(opts))
            .await
            .unwrap_or_else(|_| Err(format!("the benchmark did not finish within {limit:?}")))
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("\nclient bench: some runs FAILED (see above)");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("\nclient bench FAILED: {error}");
            ExitCode::from(1)
        }
    }
}
