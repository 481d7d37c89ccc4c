//! 10,000 concurrent resource streams held by one client: the client's
//! memory per stream, and whether every stream delivers.
//!
//! A small service built with the service kit runs in a child process (this
//! binary with a flag): a resource `feed/{id}` whose stream subscribes to a
//! broadcast when it opens and sends `{"stream": id, "n": n}` for every `n`
//! the tool `fire` publishes. Each client is measured in a process of its
//! own (this binary again), so that neither inherits the other's freed
//! memory and the service's memory and descriptors are never counted:
//!
//! - `cortex`: one `NetworkMcpClient` opens N streams with `stream_resource`
//!   (resumable, with `Last-Event-ID`, idle timeout, reconnects), sharing
//!   HTTP/2 connections of its pool, 100 streams on each (the default,
//!   `stream_http2 = true`);
//! - `cortex-http1`: the same with `stream_http2 = false`: each stream holds
//!   an HTTP/1 connection of its own;
//! - `hyper`, the baseline: N bare hyper HTTP/1 connections, each with one
//!   `GET /resource/feed/{id}` whose SSE body is read with the same decoder.
//!
//! A task per stream waits for its first event. Then:
//!
//! 1. memory: the process's resident set (`/proc/self/statm`) and its live
//!    heap (counted by the global allocator) before opening and with every
//!    stream open and waiting, divided by N;
//! 2. delivery: one `fire` call (from a second client: the first one's
//!    connections are all held by streams), then every stream must deliver
//!    its own event within a bound.
//!
//! The pool's cap is raised for this: `max_connections` 10,000 (its hard
//! limit), `pool_timeout` and `request_timeout` 60 s; so are the service's
//! caps on streams and connections (1,024 and 4,096 by default). Each
//! process needs a file descriptor per stream; the soft `RLIMIT_NOFILE` is
//! raised to what the run needs (at most the hard limit) before the
//! children start.
//!
//! ```text
//! cargo bench -p cortex-client --bench streams_10k
//! BENCH_STREAMS=1000 cargo bench -p cortex-client --bench streams_10k
//! ```

mod common;

use std::alloc::System;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ChildServer, Res};
use cortex_client::{
    ClientConfig, EventStream, McpClient, NetworkMcpClient, StaticDiscovery, StreamExt,
};
use cortex_proto::sse::{Decoder, Event};
use cortex_service::{
    HttpLimits, Resource, ResourceContent, Service, ServiceConfig, ServiceError, Tool,
};
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::sync::broadcast;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The flag that makes this binary the feed service's child process.
const SERVE_STREAMS: &str = "--serve-streams";
/// The flag that makes this binary one client's measuring child process.
const MEASURE: &str = "--measure";
/// The service's name in discovery.
const SERVICE: &str = "feed";
/// The line a measuring child ends with, for the parent's summary.
const RESULT: &str = "RESULT";
/// The most streams a run opens.
const MAX_STREAMS: usize = 10_000;

const HELP: &str = "\
10,000 resource streams held by one client: memory per stream, delivery

usage: cargo bench -p cortex-client --bench streams_10k [-- OPTIONS]

  --streams N          streams to open            (env BENCH_STREAMS, default 10000, at most 10000)
  --parallel N         streams being opened at once                  (default 128)
  --deliver-secs S     bound on delivery of the event to every stream (default 30)
  --clients LIST       which clients, each in a process of its own: hyper, cortex,
                       cortex-http1 (streams over HTTP/1.1), hyper-1k (bare hyper with
                       a 1 KiB read buffer)           (default hyper,cortex,cortex-http1)
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cortex,
    /// The client with `stream_http2 = false`.
    CortexHttp1,
    Hyper,
    /// Bare hyper with a 1 KiB read buffer (`read_buf_exact_size`): what a
    /// smaller buffer would save.
    HyperSmall,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Cortex => "cortex",
            Self::CortexHttp1 => "cortex-http1",
            Self::Hyper => "hyper",
            Self::HyperSmall => "hyper-1k",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Cortex => "NetworkMcpClient, HTTP/2 streams",
            Self::CortexHttp1 => "NetworkMcpClient, HTTP/1.1 streams",
            Self::Hyper => "bare hyper HTTP/1 connection",
            Self::HyperSmall => "bare hyper, 1 KiB read buffer",
        }
    }

    fn parse(name: &str) -> Res<Self> {
        match name.trim() {
            "cortex" => Ok(Self::Cortex),
            "cortex-http1" => Ok(Self::CortexHttp1),
            "hyper" => Ok(Self::Hyper),
            "hyper-1k" => Ok(Self::HyperSmall),
            other => Err(format!(
                "unknown client `{other}` (cortex, cortex-http1, hyper, hyper-1k)"
            )),
        }
    }
}

struct Options {
    streams: usize,
    parallel: usize,
    deliver: f64,
    clients: Vec<Kind>,
    /// In a measuring child: which client, and where the service is.
    measure: Option<(Kind, SocketAddr)>,
}

fn parse_args() -> Res<Option<Options>> {
    let mut streams = common::env_number("BENCH_STREAMS")?.map_or(10_000, |s| s as usize);
    let mut parallel = 128;
    let mut deliver: f64 = 30.0;
    let mut clients = vec![Kind::Hyper, Kind::Cortex, Kind::CortexHttp1];
    let mut measure = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--streams" => streams = common::flag_value(&arg, args.next())?,
            "--parallel" => parallel = common::flag_value(&arg, args.next())?,
            "--deliver-secs" => deliver = common::flag_value(&arg, args.next())?,
            "--clients" => {
                let list = args.next().ok_or("--clients needs a list")?;
                clients = list.split(',').map(Kind::parse).collect::<Res<_>>()?;
            }
            "--quick" => streams = 1000,
            MEASURE => {
                let kind = Kind::parse(&args.next().ok_or("--measure needs a client")?)?;
                let addr = common::flag_value(&arg, args.next())?;
                measure = Some((kind, addr));
            }
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    if !(1..=MAX_STREAMS).contains(&streams)
        || parallel == 0
        || !(deliver.is_finite() && deliver > 0.0)
    {
        return Err("--streams must be 1..=10000, --parallel and --deliver-secs positive".into());
    }
    Ok(Some(Options {
        streams,
        parallel,
        deliver,
        clients,
        measure,
    }))
}

// ---------------------------------------------------------------------------
// The feed service (a child process)
// ---------------------------------------------------------------------------

fn feed_service(events: broadcast::Sender<u64>) -> Result<Service, String> {
    let subscribe = events.clone();
    let resource = Resource::new(
        "feed/{id}",
        "One reader's feed.",
        |_ctx, params| async move { Ok(ResourceContent::Json(json!({ "id": params.get("id")? }))) },
    )
    .with_stream(move |_ctx, params, _last| {
        // Subscribed before the answer's head is sent: once the client has
        // the stream, the next `fire` reaches it.
        let receiver = subscribe.subscribe();
        let id = params.get("id").map(str::to_string);
        async move {
            let id = id?;
            let stream = futures::stream::unfold(receiver, move |mut receiver| {
                let id = id.clone();
                async move {
                    loop {
                        match receiver.recv().await {
                            Ok(n) => {
                                let data = json!({ "stream": id, "n": n }).to_string();
                                let event = Event::message(data).with_id(n.to_string());
                                return Some((Ok::<_, ServiceError>(event), receiver));
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            });
            Ok(stream.boxed())
        }
    });
    let fire = Tool::new(
        "fire",
        "Publishes `n` to every open feed; answers how many feeds were open.",
        json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "required": ["n"]}),
        move |_ctx, args| {
            let events = events.clone();
            async move {
                let n = args.get("n").and_then(Value::as_u64).unwrap_or(0);
                let receivers = events.send(n).unwrap_or(0);
                Ok(json!({ "receivers": receivers }))
            }
        },
    );
    Service::builder(SERVICE, "0")
        .resource(resource)
        .tool(fire)
        .build()
        .map_err(|e| format!("feed service: {e}"))
}

fn serve_streams_main() -> Res<()> {
    common::exit_with_parent();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let (events, _) = broadcast::channel(16);
        let service = feed_service(events)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        common::announce(listener.local_addr().map_err(|e| format!("addr: {e}"))?);
        // The kit's defaults cap streams at 1,024 and connections at 4,096
        // per process; this service is there to hold 10,000 of each (its
        // connection cap is still fitted to the open-file limit).
        let config = ServiceConfig {
            limits: HttpLimits {
                max_connections: MAX_STREAMS + 1024,
                max_streams: MAX_STREAMS + 1024,
                ..HttpLimits::default()
            },
            ..ServiceConfig::default()
        };
        cortex_service::serve(listener, service, config, std::future::pending())
            .await
            .map_err(|e| format!("serve: {e}"))
    })
}

// ---------------------------------------------------------------------------
// The two clients' streams
// ---------------------------------------------------------------------------

/// An open stream, held until the end of the measurement.
enum Held {
    Cortex(EventStream),
    /// Boxed: the task that waits on a stream carries the largest variant.
    Hyper(Box<BareStream>),
}

/// A bare hyper stream.
struct BareStream {
    /// Held so that nothing closes early.
    _sender: SendRequest<Empty<Bytes>>,
    body: Incoming,
    decoder: Decoder,
}

/// A bare hyper stream: its own connection, one GET, the SSE body.
async fn open_hyper(
    addr: SocketAddr,
    host: HeaderValue,
    id: usize,
    read_buffer: Option<usize>,
) -> Res<Held> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = http1::Builder::new()
        .read_buf_exact_size(read_buffer)
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.uri_mut() =
        http::Uri::try_from(format!("/resource/feed/{id}")).map_err(|e| format!("uri: {e}"))?;
    let headers = request.headers_mut();
    headers.insert(header::HOST, host);
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    Ok(Held::Hyper(Box::new(BareStream {
        _sender: sender,
        body: response.into_body(),
        decoder: Decoder::new(),
    })))
}

/// The first event's data.
async fn next_event(held: &mut Held) -> Res<Value> {
    match held {
        Held::Cortex(stream) => match stream.next().await {
            Some(Ok(event)) => Ok(event.data),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("the stream ended".into()),
        },
        Held::Hyper(bare) => loop {
            let frame = match bare.body.frame().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => return Err(format!("body: {e}")),
                None => return Err("the stream ended".into()),
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let events = bare.decoder.feed(&data).map_err(|e| format!("sse: {e}"))?;
            if let Some(event) = events.into_iter().next() {
                return serde_json::from_str(&event.data).map_err(|e| format!("data: {e}"));
            }
        },
    }
}

/// What a stream's task hands back: the stream (still open), its first
/// event, and when it came.
type Delivery = (usize, Held, Res<Value>, Instant);

async fn first_event(i: usize, mut held: Held) -> Delivery {
    let first = next_event(&mut held).await;
    (i, held, first, Instant::now())
}

/// Opens streams `0..n`, `parallel` at a time.
async fn open_all(
    kind: Kind,
    client: &NetworkMcpClient,
    addr: SocketAddr,
    range: std::ops::Range<usize>,
    parallel: usize,
) -> (Vec<(usize, Held)>, Vec<String>) {
    let host = HeaderValue::from_str(&addr.to_string()).unwrap_or(HeaderValue::from_static("x"));
    let results: Vec<(usize, Res<Held>)> = futures::stream::iter(range.clone())
        .map(|i| {
            let client = client.clone();
            let host = host.clone();
            async move {
                let open = async {
                    match kind {
                        Kind::Cortex | Kind::CortexHttp1 => client
                            .stream_resource(SERVICE, &format!("feed/{i}"))
                            .await
                            .map(Held::Cortex)
                            .map_err(|e| e.to_string()),
                        Kind::Hyper => open_hyper(addr, host, i, None).await,
                        Kind::HyperSmall => open_hyper(addr, host, i, Some(1024)).await,
                    }
                };
                let opened = tokio::time::timeout(Duration::from_secs(60), open)
                    .await
                    .map_err(|_| "no answer in 60 s".to_string())
                    .and_then(|r| r);
                (i, opened)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut streams = Vec::with_capacity(range.len());
    let mut errors = Vec::new();
    for (i, result) in results {
        match result {
            Ok(held) => streams.push((i, held)),
            Err(e) => errors.push(format!("stream {i}: {e}")),
        }
    }
    (streams, errors)
}

// ---------------------------------------------------------------------------
// One client's measurement (a child process)
// ---------------------------------------------------------------------------

/// Bytes on the heap now (allocated less freed), as the allocator counts.
fn live_heap() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 + s.bytes_reallocated as i64 - s.bytes_deallocated as i64
}

struct Snapshot {
    rss: u64,
    heap: i64,
    fds: usize,
}

fn snapshot() -> Res<Snapshot> {
    Ok(Snapshot {
        rss: common::resident_bytes(std::process::id())?,
        heap: live_heap(),
        fds: common::open_fds(),
    })
}

fn kib(bytes: f64) -> String {
    format!("{:.2} KiB", bytes / 1024.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// Opens the streams, measures, fires, checks delivery; prints a
/// `RESULT kind rss_per_stream heap_per_stream delivered n` line last.
async fn measure(kind: Kind, addr: SocketAddr, opts: &Options) -> Res<bool> {
    let n = opts.streams;
    let discovery = Arc::new(StaticDiscovery::new().with(SERVICE, format!("http://{addr}")));
    let config = ClientConfig::builder()
        .stream_http2(kind != Kind::CortexHttp1)
        .max_connections(10_000)
        .pool_timeout(Duration::from_secs(60))
        .request_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("config: {e}"))?;
    let client = NetworkMcpClient::builder(discovery.clone())
        .config(config)
        .build()
        .map_err(|e| format!("client: {e}"))?;
    let control = NetworkMcpClient::new(discovery).map_err(|e| format!("client: {e}"))?;

    // Warm-up: the client's per-service and per-endpoint state, the
    // runtime's and the allocator's first growth, then everything closed.
    let (warm, errors) = open_all(kind, &client, addr, 0..64, 16).await;
    if let Some(e) = errors.first() {
        return Err(format!("warm-up: {e}"));
    }
    drop(warm);
    control
        .call_tool(SERVICE, "fire", json!({"n": 0}))
        .await
        .map_err(|e| format!("fire: {e}"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = snapshot()?;

    let started = Instant::now();
    let (streams, errors) = open_all(kind, &client, addr, 0..n, opts.parallel).await;
    let open_time = started.elapsed();
    println!(
        "  opened {} of {n} streams in {:.2} s ({:.0} streams/s, {} at a time)",
        streams.len(),
        open_time.as_secs_f64(),
        streams.len() as f64 / open_time.as_secs_f64().max(1e-9),
        opts.parallel
    );
    for e in errors.iter().take(5) {
        println!("  FAILED to open: {e}");
    }
    let opened = streams.len();
    let mut tasks = Vec::with_capacity(opened);
    let mut task_size = 0;
    for (i, held) in streams {
        let task = first_event(i, held);
        task_size = std::mem::size_of_val(&task);
        tasks.push(tokio::spawn(task));
    }
    // Let every stream read the head of its answer and go idle.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = snapshot()?;

    let per = |a: f64, b: f64| (a - b) / opened.max(1) as f64;
    let rss_per = per(after.rss as f64, before.rss as f64);
    let heap_per = per(after.heap as f64, before.heap as f64);
    println!(
        "  RSS {} -> {} ({} per stream); live heap +{} ({} per stream); open fds {} -> {}",
        mib(before.rss),
        mib(after.rss),
        kib(rss_per),
        mib((after.heap - before.heap).max(0) as u64),
        kib(heap_per),
        before.fds,
        after.fds
    );
    println!(
        "  (of which the benchmark's waiting task per stream: a {task_size}-byte future plus tokio's task header)"
    );
    if matches!(kind, Kind::Cortex | Kind::CortexHttp1) {
        let pool = client
            .endpoint_status()
            .first()
            .map(|s| format!("{:?}", s.pool))
            .unwrap_or_default();
        println!("  pool: {pool}");
    }

    // Delivery: one event, published to every open feed.
    let fired = Instant::now();
    let answer = control
        .call_tool(SERVICE, "fire", json!({"n": 1}))
        .await
        .map_err(|e| format!("fire: {e}"))?;
    let receivers = answer.get("receivers").and_then(Value::as_u64).unwrap_or(0);
    let bound = Duration::from_secs_f64(opts.deliver);
    let deadline = tokio::time::Instant::now() + bound;
    let mut delivered = 0usize;
    let mut wrong = Vec::new();
    let mut latencies = Vec::with_capacity(opened);
    let mut held = Vec::with_capacity(opened);
    let mut late = 0usize;
    for task in tasks {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok((i, stream, first, at))) => {
                held.push(stream);
                let own = first.as_ref().is_ok_and(|data| {
                    data.get("stream").and_then(Value::as_str) == Some(i.to_string().as_str())
                        && data.get("n").and_then(Value::as_u64) == Some(1)
                });
                if own {
                    delivered += 1;
                    latencies.push(at.saturating_duration_since(fired));
                } else {
                    wrong.push(format!("stream {i}: {first:?}"));
                }
            }
            Ok(Err(e)) => wrong.push(format!("task: {e}")),
            Err(_) => late += 1,
        }
    }
    latencies.sort_unstable();
    println!(
        "  fire: the service had {receivers} open feeds; {delivered} of {n} streams delivered their own event within {bound:?} ({} wrong or failed, {late} not in time)",
        wrong.len()
    );
    for w in wrong.iter().take(5) {
        println!("  FAILED: {w}");
    }
    let (p50, p99, last) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    println!(
        "  fire -> delivery: p50 {:.1} ms, p99 {:.1} ms, last {:.1} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        last.as_secs_f64() * 1e3
    );
    drop(held);
    client.close().await;
    control.close().await;
    println!(
        "{RESULT} {} {rss_per:.0} {heap_per:.0} {delivered} {n} {:.1}",
        kind.name(),
        last.as_secs_f64() * 1e3
    );
    Ok(delivered == n)
}

fn measure_main(kind: Kind, addr: SocketAddr, opts: &Options) -> ExitCode {
    common::exit_with_parent();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("streams_10k: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(measure(kind, addr, opts));
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("streams_10k ({}): {e}", kind.name());
            ExitCode::from(1)
        }
    }
}

// ---------------------------------------------------------------------------
// The parent
// ---------------------------------------------------------------------------

/// Raises the soft open-file limit to `needed` (at most the hard limit);
/// what it is now.
fn raise_open_files(needed: u64) -> Res<u64> {
    use rustix::process::{Resource as Limit, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Limit::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(soft);
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let raised = needed.min(hard);
    setrlimit(
        Limit::Nofile,
        Rlimit {
            current: Some(raised),
            maximum: limit.maximum,
        },
    )
    .map_err(|e| format!("raising the open-file limit to {raised}: {e}"))?;
    if raised < needed {
        return Err(format!(
            "{needed} open files are needed per process but the hard limit is {hard}: raise it (`ulimit -Hn {needed}` as root) or run fewer streams"
        ));
    }
    Ok(raised)
}

/// One client's figures, from its child's `RESULT` line.
struct Outcome {
    kind: Kind,
    rss_per: f64,
    heap_per: f64,
    delivered: usize,
    streams: usize,
    last_ms: f64,
}

fn parse_result(line: &str) -> Option<Outcome> {
    let mut f = line.strip_prefix(RESULT)?.split_whitespace();
    Some(Outcome {
        kind: Kind::parse(f.next()?).ok()?,
        rss_per: f.next()?.parse().ok()?,
        heap_per: f.next()?.parse().ok()?,
        delivered: f.next()?.parse().ok()?,
        streams: f.next()?.parse().ok()?,
        last_ms: f.next()?.parse().ok()?,
    })
}

/// Runs one client's measurement in a child process, echoing its output.
fn run_child(kind: Kind, server: &ChildServer, opts: &Options) -> Res<Outcome> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = std::process::Command::new(exe)
        .args([MEASURE, kind.name(), &server.addr.to_string()])
        .args(["--streams", &opts.streams.to_string()])
        .args(["--parallel", &opts.parallel.to_string()])
        .args(["--deliver-secs", &opts.deliver.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the {} child: {e}", kind.name()))?;
    println!("{} (pid {}):", kind.label(), child.id());
    let mut outcome = None;
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match parse_result(&line) {
                Some(result) => outcome = Some(result),
                None => println!("{line}"),
            }
        }
    }
    let status = child.wait().map_err(|e| format!("waiting: {e}"))?;
    outcome.ok_or_else(|| {
        format!(
            "the {} child ended ({status}) without a result",
            kind.name()
        )
    })
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == SERVE_STREAMS) {
        return match serve_streams_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("feed service: {e}");
                ExitCode::from(1)
            }
        };
    }
    let opts = match parse_args() {
        Ok(Some(opts)) => opts,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("streams_10k: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some((kind, addr)) = opts.measure {
        return measure_main(kind, addr, &opts);
    }
    // A descriptor per stream in each process, plus the runtime's and some
    // slack; the children inherit the raised limit.
    let needed = opts.streams as u64 + 512;
    let limit = match raise_open_files(needed) {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("streams_10k: {e}");
            return ExitCode::from(1);
        }
    };
    let server = match ChildServer::spawn(SERVE_STREAMS, &[]) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("streams_10k: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "streams_10k: {} streams per client; open-file limit {limit} (needs {needed} per process); feed service pid {} on {}",
        opts.streams, server.pid, server.addr
    );
    let mut outcomes = Vec::new();
    let mut failed = false;
    for &kind in &opts.clients {
        match run_child(kind, &server, &opts) {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                println!("  FAILED: {e}");
                failed = true;
            }
        }
    }
    let server_rss = common::resident_bytes(server.pid).unwrap_or(0);
    drop(server);

    println!();
    println!("================================ summary ================================");
    println!(
        "{} concurrent resource streams held by one client, each client in a process of its own; {}",
        opts.streams,
        common::describe_machine()
    );
    let base = outcomes
        .iter()
        .find(|o| o.kind == Kind::Hyper)
        .map(|o| o.heap_per);
    for o in &outcomes {
        let vs = match (o.kind, base) {
            (Kind::Cortex | Kind::CortexHttp1, Some(b)) if b > 0.0 => {
                format!(", {:.2}x the bare connection's heap", o.heap_per / b)
            }
            _ => String::new(),
        };
        println!(
            "  {:<34} {} resident, {} live heap per stream{vs}; delivered {}/{} (last after {:.1} ms)",
            o.kind.label(),
            kib(o.rss_per),
            kib(o.heap_per),
            o.delivered,
            o.streams,
            o.last_ms
        );
    }
    if let Some(o) = outcomes.iter().find(|o| o.kind == Kind::Cortex) {
        println!(
            "  target, client memory per stream < 8 KiB resident: {} ({})",
            if o.rss_per < 8192.0 { "MET" } else { "MISSED" },
            kib(o.rss_per)
        );
        println!(
            "  target, every stream delivers: {} ({}/{})",
            if o.delivered == o.streams {
                "MET"
            } else {
                "MISSED"
            },
            o.delivered,
            o.streams
        );
        failed |= o.delivered != o.streams;
    }
    println!(
        "  (the feed service's own process ended at {} resident)",
        mib(server_rss)
    );
    println!("==========================================================================");
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
