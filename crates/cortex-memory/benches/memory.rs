//! Benchmark of the memory service, each figure against a baseline measured
//! in the same run, reported as a ratio (the machine may be shared and noisy;
//! ratios taken minutes apart are what stay meaningful).
//!
//! 1. `store_input` with durable commits (WAL, `synchronous=FULL`) over HTTP
//!    on loopback, at 1 and at N (default 32) concurrent writers, against
//!    direct rusqlite inserts with one transaction (one fsync) per insert.
//!    The three contenders run interleaved in rounds, after a warm-up, so a
//!    neighbour's burst of disk traffic hits them alike; the ratios are given
//!    over all calls and as the median of the per-round ratios.
//! 2. SSE fan-out: many concurrent `history/{user}/stream` connections on one
//!    user, N items stored, time until every stream has every item; against
//!    the same items delivered to one stream. Plus the resident memory the
//!    service spends per open stream. Both run against the real `cortex`
//!    binary in a child process, so the client's memory is not counted.
//!    Streams are raw loopback TCP connections decoded with the project's
//!    SSE [`Decoder`] (client side as cheap as it gets).
//!
//! ```text
//! cargo build --release -p cortex-cli
//! cargo bench -p cortex-memory --bench memory            # full
//! cargo bench -p cortex-memory --bench memory -- --quick # calls / 10
//! cargo bench -p cortex-memory --bench memory -- --help
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use cortex_memory::store::Store;
use cortex_proto::sse::Decoder;
use cortex_service::ServiceConfig;
use cortex_test_support::TestServer;
use cortex_test_support::stats::percentile;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinHandle};

type Res<T> = Result<T, String>;

/// Bound on every single wait (a call, a connect, a read, a phase barrier).
const WAIT: Duration = Duration::from_secs(60);
/// Bound on one whole measured phase of many calls.
const PHASE_LIMIT: Duration = Duration::from_secs(600);
/// Streams connecting at the same time (keeps the listen backlog happy).
const CONNECT_PARALLELISM: usize = 64;
/// File descriptors kept aside for everything that is not a stream.
const FD_RESERVE: u64 = 256;
/// Part 1 interleaves its three contenders in this many rounds (half with
/// `--quick`).
const ROUNDS: usize = 10;

const HELP: &str = "\
memory service benchmark (custom harness)

usage: cargo bench -p cortex-memory --bench memory [-- OPTIONS]

  --quick              divide the call counts by 10 (fan-out unchanged)
  --calls-1 N          measured calls at 1 writer          (default 2000)
  --calls-n N          measured calls at --writers writers (default 10000)
  --writers N          concurrent writers of the second run (default 32)
  --streams N          SSE streams of the fan-out          (default 1000)
  --items N            items stored during the fan-out     (default 200)
  --dir PATH           where the temporary databases go
                       (default: the cargo target tmp dir, on real disk)
  --cortex-bin PATH    the cortex binary (default: <workspace>/target/release/cortex)
  --no-fanout          only the store_input part
";

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

struct Options {
    quick: bool,
    baseline_inserts: usize,
    calls_1: usize,
    calls_n: usize,
    writers: usize,
    streams: usize,
    items: usize,
    dir: PathBuf,
    cortex_bin: PathBuf,
    fanout: bool,
}

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
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
    let mut calls_1 = None;
    let mut calls_n = None;
    let mut writers = 32;
    let mut streams = 1000;
    let mut items = 200;
    let mut dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let mut cortex_bin = workspace_root().join("target/release/cortex");
    let mut fanout = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // `cargo bench` passes `--bench` to every bench binary.
            "--bench" => {}
            "--quick" => quick = true,
            "--calls-1" => calls_1 = Some(parse_count(&arg, args.next())?),
            "--calls-n" => calls_n = Some(parse_count(&arg, args.next())?),
            "--writers" => writers = parse_count(&arg, args.next())?,
            "--streams" => streams = parse_count(&arg, args.next())?,
            "--items" => items = parse_count(&arg, args.next())?,
            "--dir" => {
                dir = PathBuf::from(args.next().ok_or("--dir needs a path")?);
            }
            "--cortex-bin" => {
                cortex_bin = PathBuf::from(args.next().ok_or("--cortex-bin needs a path")?);
            }
            "--no-fanout" => fanout = false,
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    let div = if quick { 10 } else { 1 };
    let calls_1 = calls_1.unwrap_or(2000 / div);
    let calls_n = calls_n.unwrap_or(10_000 / div);
    Ok(Some(Options {
        quick,
        baseline_inserts: calls_1,
        calls_1,
        calls_n,
        writers,
        streams,
        items,
        dir,
        cortex_bin,
        fanout,
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
    max: Duration,
}

impl Stats {
    fn new(mut samples: Vec<Duration>, elapsed: Duration) -> Self {
        samples.sort_unstable();
        Self {
            count: samples.len(),
            elapsed,
            p50: percentile(&samples, 0.50),
            p99: percentile(&samples, 0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }

    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn rate(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b <= 0.0 {
        "n/a".into()
    } else {
        format!("{:.2}x", a / b)
    }
}

fn row(label: &str, s: &Stats, unit: &str) {
    println!(
        "  {label:<38} {:>7} {:>9.2} s {:>10} {unit:<9} p50 {:>9}  p99 {:>9}  max {:>9}",
        s.count,
        s.elapsed.as_secs_f64(),
        rate(s.rate()),
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
    );
}

// ---------------------------------------------------------------------------
// Environment checks
// ---------------------------------------------------------------------------

/// Soft and hard `RLIMIT_NOFILE` as /proc reports them (`None` = unlimited).
fn open_file_limits() -> Res<(Option<u64>, Option<u64>)> {
    let limits = std::fs::read_to_string("/proc/self/limits")
        .map_err(|e| format!("cannot read /proc/self/limits: {e}"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or("no `Max open files` in /proc/self/limits")?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let parse = |s: Option<&&str>| s.and_then(|s| s.parse::<u64>().ok());
    Ok((parse(fields.get(3)), parse(fields.get(4))))
}

/// The type of the filesystem holding `path` (from /proc/self/mounts).
fn filesystem_of(path: &Path) -> String {
    let Ok(path) = path.canonicalize() else {
        return "?".into();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "?".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(mount), Some(kind)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let mount = mount.replace("\\040", " ");
        if path.starts_with(&mount) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((mount.len(), kind.to_string()));
        }
    }
    best.map_or_else(|| "?".into(), |(_, kind)| kind)
}

fn newest_mtime(dir: &Path, newest: &mut Option<SystemTime>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            newest_mtime(&path, newest);
        } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified())
            && newest.is_none_or(|n| modified > n)
        {
            *newest = Some(modified);
        }
    }
}

/// A warning when the binary is older than the sources it is built from.
fn stale_binary_warning(bin: &Path) -> Option<String> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let mut newest = None;
    let crates = workspace_root().join("crates");
    for name in [
        "cortex-cli",
        "cortex-memory",
        "cortex-service",
        "cortex-proto",
    ] {
        newest_mtime(&crates.join(name).join("src"), &mut newest);
    }
    (newest? > built).then(|| {
        format!(
            "warning: {} is older than the sources; rebuild with `cargo build --release -p cortex-cli`",
            bin.display()
        )
    })
}

fn vm_rss_bytes(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("cannot parse `{line}`"))?;
    Ok(kib * 1024)
}

// ---------------------------------------------------------------------------
// Part 1: store_input throughput
// ---------------------------------------------------------------------------

fn content(tag: &str, i: usize) -> String {
    format!(
        "{tag} item {i:06}: the quick brown fox jumps over the lazy dog; acknowledged only after fsync"
    )
}

const BASELINE_INSERT_SQL: &str = "INSERT INTO items (user_id, conversation_id, content, \
     content_type, timestamp, input_data, created_at, updated_at) VALUES (?1, NULL, ?2, \
     'text/plain', strftime('%Y-%m-%dT%H:%M:%fZ','now'), ?3, \
     strftime('%Y-%m-%dT%H:%M:%fZ','now'), NULL) RETURNING item_id";

/// The naive durable design: one autocommit INSERT (one transaction, one
/// WAL fsync) per item, single thread, same table and indexes as the store.
struct Baseline {
    conn: rusqlite::Connection,
    label: String,
    next: usize,
}

impl Baseline {
    fn open(path: &Path) -> Res<Self> {
        let label = path.display().to_string();
        let db = |e: rusqlite::Error| format!("baseline database {label}: {e}");
        let conn = rusqlite::Connection::open(path).map_err(db)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!(
                "baseline: WAL not available (journal_mode = {mode})"
            ));
        }
        conn.execute_batch(
            "PRAGMA synchronous = FULL;
             CREATE TABLE items (
                 item_id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,
                 conversation_id TEXT, content TEXT NOT NULL, content_type TEXT NOT NULL,
                 timestamp TEXT NOT NULL, input_data TEXT NOT NULL, created_at TEXT NOT NULL,
                 updated_at TEXT);
             CREATE INDEX items_user ON items (user_id, item_id);
             CREATE INDEX items_user_conversation ON items (user_id, conversation_id, item_id);",
        )
        .map_err(db)?;
        let synchronous: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .map_err(db)?;
        if synchronous != 2 {
            return Err(format!(
                "baseline: synchronous is {synchronous}, not FULL (2)"
            ));
        }
        Ok(Self {
            conn,
            label: path.display().to_string(),
            next: 0,
        })
    }

    /// `n` inserts, each its own transaction; their latencies and the time.
    fn chunk(&mut self, n: usize) -> Res<(Vec<Duration>, Duration)> {
        let db = |e: rusqlite::Error| format!("baseline database {}: {e}", self.label);
        let mut insert = self.conn.prepare_cached(BASELINE_INSERT_SQL).map_err(db)?;
        let mut latencies = Vec::with_capacity(n);
        let started = Instant::now();
        for i in 0..n {
            let text = content("baseline", self.next);
            self.next += 1;
            let input = json!({ "content": text }).to_string();
            let sent = Instant::now();
            let _id: i64 = insert
                .query_row(rusqlite::params!["baseline-user", text, input], |r| {
                    r.get(0)
                })
                .map_err(db)?;
            latencies.push(sent.elapsed());
            if started.elapsed() > PHASE_LIMIT {
                return Err(format!(
                    "baseline: timed out after {PHASE_LIMIT:?} with {i} of {n} inserts done"
                ));
            }
        }
        Ok((latencies, started.elapsed()))
    }
}

/// Runs a baseline chunk on the blocking pool (it does blocking fsyncs).
async fn baseline_chunk(baseline: Baseline, n: usize) -> Res<(Baseline, Vec<Duration>, Duration)> {
    let mut baseline = baseline;
    tokio::task::spawn_blocking(move || {
        let (latencies, elapsed) = baseline.chunk(n)?;
        Ok((baseline, latencies, elapsed))
    })
    .await
    .map_err(|e| format!("baseline task failed: {e}"))?
}

fn http_client(pool: usize) -> Res<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .connect_timeout(WAIT)
        .pool_max_idle_per_host(pool.max(1) * 2)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Aborts the tasks it holds when dropped (on every exit path).
struct AbortOnDrop(Vec<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// One acknowledged call: item id, when it was sent, when it was answered.
#[derive(Debug, Clone, Copy)]
struct Ack {
    id: i64,
    sent: Instant,
    acked: Instant,
}

/// Calls of one run: per-call latency and acknowledgements.
struct CallRun {
    elapsed: Duration,
    acks: Vec<Ack>,
}

impl CallRun {
    fn latencies(&self) -> Vec<Duration> {
        self.acks.iter().map(|a| a.acked - a.sent).collect()
    }
}

async fn store_one(client: &reqwest::Client, url: &str, body: &Value) -> Res<i64> {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("POST {url}: reading the answer: {e}"))?;
    if !status.is_success() {
        return Err(format!("POST {url} answered {status}: {text}"));
    }
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("POST {url}: answer is not JSON ({e}): {text}"))?;
    value["item_id"]
        .as_i64()
        .ok_or_else(|| format!("POST {url}: no item_id in {text}"))
}

/// `total` `store_input` calls spread over `writers` concurrent tasks; writer
/// `w` stores as `users[w % users.len()]`.
async fn store_calls(
    client: &reqwest::Client,
    url: &str,
    users: &[String],
    total: usize,
    writers: usize,
    tag: &str,
) -> Res<CallRun> {
    let next = Arc::new(AtomicUsize::new(0));
    let url: Arc<str> = url.into();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers.min(total) {
        let (client, url, next) = (client.clone(), Arc::clone(&url), Arc::clone(&next));
        let user = users[w % users.len()].clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = json!({"user_id": user, "input_data": {"content": content(&tag, i)}});
                let sent = Instant::now();
                let id = store_one(&client, &url, &body).await?;
                acks.push(Ack {
                    id,
                    sent,
                    acked: Instant::now(),
                });
            }
            Ok::<_, String>(acks)
        }));
    }
    let _guard = AbortOnDrop(tasks.iter().map(JoinHandle::abort_handle).collect());
    let joined = tokio::time::timeout(PHASE_LIMIT, futures::future::join_all(tasks))
        .await
        .map_err(|_| {
            format!(
                "{tag}: timed out after {PHASE_LIMIT:?} with {} of {total} calls started",
                next.load(Ordering::Relaxed).min(total)
            )
        })?;
    let elapsed = started.elapsed();
    let mut acks = Vec::with_capacity(total);
    for result in joined {
        acks.extend(result.map_err(|e| format!("{tag}: writer task failed: {e}"))??);
    }
    Ok(CallRun { elapsed, acks })
}

/// The memory service on a fresh database behind an in-process HTTP server,
/// driven by `writers` concurrent callers.
struct ServiceUnderTest {
    name: String,
    server: TestServer,
    client: reqwest::Client,
    url: String,
    users: Vec<String>,
    writers: usize,
}

impl ServiceUnderTest {
    async fn start(dir: &Path, name: &str, writers: usize) -> Res<Self> {
        let db = dir.join(format!("{name}.sqlite3"));
        let store = Store::open(&db)
            .await
            .map_err(|e| format!("{name}: cannot open the store: {e}"))?;
        let service = cortex_memory::service::build(store)
            .map_err(|e| format!("{name}: cannot build the service: {e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("{name}: cannot bind 127.0.0.1:0: {e}"))?;
        let server = TestServer::start_on(listener, service, ServiceConfig::default());
        let url = server.url("/tool/store_input");
        Ok(Self {
            name: name.to_string(),
            server,
            client: http_client(writers)?,
            url,
            users: (0..writers).map(|w| format!("{name}-w{w}")).collect(),
            writers,
        })
    }

    async fn chunk(&self, n: usize) -> Res<CallRun> {
        store_calls(
            &self.client,
            &self.url,
            &self.users,
            n,
            self.writers,
            &self.name,
        )
        .await
    }

    fn stop(mut self) {
        drop(self.client);
        self.server.begin_shutdown();
    }
}

/// Latencies and time accumulated over the rounds of one contender.
#[derive(Default)]
struct Acc {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Acc {
    fn add(&mut self, latencies: Vec<Duration>, elapsed: Duration) -> f64 {
        let rate = latencies.len() as f64 / elapsed.as_secs_f64().max(1e-9);
        self.latencies.extend(latencies);
        self.elapsed += elapsed;
        rate
    }

    fn stats(self) -> Stats {
        Stats::new(self.latencies, self.elapsed)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Splits `total` into `rounds` nearly equal parts.
fn share(total: usize, rounds: usize, round: usize) -> usize {
    total / rounds + usize::from(round < total % rounds)
}

/// Part 1: the baseline and both service runs, interleaved in rounds so that
/// a burst of disk traffic from a neighbour hits all three alike.
async fn part_store_input(opts: &Options, dir: &Path, report: &mut Report) -> Res<()> {
    let rounds = if opts.quick { ROUNDS / 2 } else { ROUNDS };
    let baseline_db = dir.join("baseline.sqlite3");
    let mut baseline = tokio::task::spawn_blocking(move || Baseline::open(&baseline_db))
        .await
        .map_err(|e| format!("baseline task failed: {e}"))??;
    let one = ServiceUnderTest::start(dir, "service-1", 1).await?;
    let many =
        ServiceUnderTest::start(dir, &format!("service-{}", opts.writers), opts.writers).await?;

    // Warm-up: connections, page cache, WAL file growth, JIT-free code paths.
    let (b, _, _) = baseline_chunk(baseline, (opts.baseline_inserts / 20).max(10)).await?;
    baseline = b;
    one.chunk((opts.calls_1 / 20).max(10)).await?;
    many.chunk((opts.calls_n / 20).max(opts.writers * 2))
        .await?;

    let (mut acc_b, mut acc_1, mut acc_n) = (Acc::default(), Acc::default(), Acc::default());
    let mut per_round = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (b, latencies, elapsed) =
            baseline_chunk(baseline, share(opts.baseline_inserts, rounds, round)).await?;
        baseline = b;
        let rate_b = acc_b.add(latencies, elapsed);
        let run = one.chunk(share(opts.calls_1, rounds, round)).await?;
        let rate_1 = acc_1.add(run.latencies(), run.elapsed);
        let run = many.chunk(share(opts.calls_n, rounds, round)).await?;
        let rate_n = acc_n.add(run.latencies(), run.elapsed);
        per_round.push([rate_1 / rate_b, rate_n / rate_b, rate_n / rate_1]);
        println!(
            "  round {}/{rounds}: baseline {} inserts/s, service-1 {} calls/s, service-{} {} calls/s",
            round + 1,
            rate(rate_b),
            rate(rate_1),
            opts.writers,
            rate(rate_n)
        );
    }
    one.stop();
    many.stop();
    drop(baseline);

    let (b, s1, sn) = (acc_b.stats(), acc_1.stats(), acc_n.stats());
    println!(
        "  {:<38} {:>7} {:>11} {:>10}",
        "all rounds", "count", "time", "rate"
    );
    row("baseline rusqlite, 1 commit/insert", &b, "inserts/s");
    row("service, 1 writer", &s1, "calls/s");
    row(
        &format!("service, {} writers", opts.writers),
        &sn,
        "calls/s",
    );
    report.baseline = Some(b);
    report.service_1 = Some(s1);
    report.service_n = Some(sn);
    report.round_ratios = [0, 1, 2].map(|i| median(per_round.iter().map(|r| r[i]).collect()));
    report.rounds = rounds;
    Ok(())
}

// ---------------------------------------------------------------------------
// Part 2: SSE fan-out against the real binary
// ---------------------------------------------------------------------------

struct CortexChild {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    _stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl CortexChild {
    async fn spawn(bin: &Path, db: &Path) -> Res<Self> {
        let mut child = tokio::process::Command::new(bin)
            .args([
                "serve",
                "memory",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                // The fan-out measures streams, not token checks, and its
                // readers carry no token.
                "--no-auth",
                "--db",
            ])
            .arg(db)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id().ok_or("the cortex child exited at once")?;
        let stdout = child
            .stdout
            .take()
            .ok_or("no stdout pipe to the cortex child")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(WAIT, lines.next_line()).await {
            Err(_) => {
                return Err(format!(
                    "`cortex serve memory` printed no `listening` line within {WAIT:?}"
                ));
            }
            Ok(Err(e)) => return Err(format!("reading the cortex child's stdout: {e}")),
            Ok(Ok(None)) => {
                let status = child.try_wait().ok().flatten();
                return Err(format!(
                    "`cortex serve memory` exited before listening (status {status:?}); see its stderr above"
                ));
            }
            Ok(Ok(Some(line))) => line,
        };
        let addr: SocketAddr = line
            .split("listening on http://")
            .nth(1)
            .map(|a| a.trim().trim_end_matches('/'))
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected first line from cortex: {line:?}"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("cortex listens on {addr}, not on loopback"));
        }
        Ok(Self {
            child,
            pid,
            addr,
            _stdout: lines,
        })
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        if tokio::time::timeout(WAIT, self.child.wait()).await.is_err() {
            eprintln!(
                "warning: the cortex child (pid {}) did not exit within {WAIT:?}",
                self.pid
            );
        }
    }
}

/// Incremental `Transfer-Encoding: chunked` decoder (or pass-through).
#[derive(Debug, Clone, Copy)]
enum Chunk {
    Size { value: u64, digits: u8, ext: bool },
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    End,
}

struct BodyDecoder {
    chunked: bool,
    state: Chunk,
}

impl BodyDecoder {
    fn new(chunked: bool) -> Self {
        Self {
            chunked,
            state: Chunk::Size {
                value: 0,
                digits: 0,
                ext: false,
            },
        }
    }

    fn ended(&self) -> bool {
        matches!(self.state, Chunk::End)
    }

    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Res<()> {
        if !self.chunked {
            out.extend_from_slice(input);
            return Ok(());
        }
        let mut i = 0;
        while i < input.len() {
            if let Chunk::Data(left) = self.state {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                out.extend_from_slice(&input[i..i + take]);
                i += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                };
                continue;
            }
            let byte = input[i];
            i += 1;
            self.state = match (self.state, byte) {
                (Chunk::Size { value, digits, .. }, b'\r') if digits > 0 => Chunk::SizeLf(value),
                (Chunk::Size { value, digits, .. }, b';') => Chunk::Size {
                    value,
                    digits,
                    ext: true,
                },
                (state @ Chunk::Size { ext: true, .. }, _) => state,
                (Chunk::Size { value, digits, .. }, _) => {
                    let digit = char::from(byte)
                        .to_digit(16)
                        .ok_or_else(|| format!("bad chunk-size byte {byte:#04x}"))?;
                    if digits >= 15 {
                        return Err("chunk size too large".into());
                    }
                    Chunk::Size {
                        value: value * 16 + u64::from(digit),
                        digits: digits + 1,
                        ext: false,
                    }
                }
                (Chunk::SizeLf(0), b'\n') => Chunk::End,
                (Chunk::SizeLf(size), b'\n') => Chunk::Data(size),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size {
                    value: 0,
                    digits: 0,
                    ext: false,
                },
                (Chunk::End, _) => Chunk::End,
                (state, byte) => {
                    return Err(format!(
                        "malformed chunked body: byte {byte:#04x} in state {state:?}"
                    ));
                }
            };
        }
        Ok(())
    }
}

/// One SSE connection's decoding state and the receipts of its item events.
struct SseConn {
    body: BodyDecoder,
    decoder: Decoder,
    scratch: Vec<u8>,
    receipts: Vec<(i64, Instant)>,
}

impl SseConn {
    /// Decodes `bytes` read at `at`; returns how many item events they completed.
    fn absorb(&mut self, bytes: &[u8], at: Instant) -> Res<usize> {
        self.scratch.clear();
        self.body.decode(bytes, &mut self.scratch)?;
        let events = self
            .decoder
            .feed(&self.scratch)
            .map_err(|e| format!("bad SSE: {e}"))?;
        let before = self.receipts.len();
        for event in events {
            match event.event_type() {
                "item" => {
                    let id = event
                        .id
                        .as_deref()
                        .and_then(|id| id.parse::<i64>().ok())
                        .ok_or_else(|| format!("item event without a numeric id: {event:?}"))?;
                    self.receipts.push((id, at));
                }
                "error" => return Err(format!("the stream sent an error event: {}", event.data)),
                _ => {}
            }
        }
        Ok(self.receipts.len() - before)
    }
}

async fn read_some(tcp: &mut TcpStream, buf: &mut [u8], what: &str) -> Res<usize> {
    match tokio::time::timeout(WAIT, tcp.read(buf)).await {
        Err(_) => Err(format!("no bytes for {WAIT:?} ({what})")),
        Ok(Err(e)) => Err(format!("read failed ({what}): {e}")),
        Ok(Ok(n)) => Ok(n),
    }
}

/// One raw HTTP/1.1 SSE stream: connect, send the GET, signal `ready` once
/// the `retry:` advice arrived, then read until `want` item events arrived.
async fn sse_stream_inner(
    addr: SocketAddr,
    path: &str,
    want: usize,
    gate: Arc<Semaphore>,
    ready: &mut Option<mpsc::UnboundedSender<Res<()>>>,
    progress: &AtomicUsize,
) -> Res<Vec<(i64, Instant)>> {
    let mut permit = Some(
        gate.acquire_owned()
            .await
            .map_err(|_| "connect gate closed")?,
    );
    let mut tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr} timed out after {WAIT:?}"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    tokio::time::timeout(WAIT, tcp.write_all(request.as_bytes()))
        .await
        .map_err(|_| format!("sending the GET timed out after {WAIT:?}"))?
        .map_err(|e| format!("sending the GET: {e}"))?;

    let mut buf = vec![0_u8; 8192];
    let mut head = Vec::new();
    let body_start = loop {
        let n = read_some(&mut tcp, &mut buf, "waiting for the response head").await?;
        if n == 0 {
            return Err("connection closed before the response head".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(pos) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if head.len() > 16 * 1024 {
            return Err("response head larger than 16 KiB".into());
        }
    };
    let head_text = String::from_utf8_lossy(&head[..body_start]).to_ascii_lowercase();
    let status_line = head_text.lines().next().unwrap_or_default().to_string();
    if !status_line.starts_with("http/1.1 200") {
        return Err(format!("the stream answered `{}`", status_line.trim()));
    }
    if !head_text.contains("content-type: text/event-stream") {
        return Err(format!("not an event stream: {}", head_text.trim()));
    }
    let chunked = head_text
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let mut conn = SseConn {
        body: BodyDecoder::new(chunked),
        decoder: Decoder::new(),
        scratch: Vec::with_capacity(8192),
        receipts: Vec::with_capacity(want),
    };
    let got = conn.absorb(&head[body_start..], Instant::now())?;
    progress.fetch_add(got, Ordering::Relaxed);
    loop {
        if ready.is_some() && conn.decoder.retry().is_some() {
            if let Some(tx) = ready.take() {
                let _ = tx.send(Ok(()));
            }
            permit.take();
        }
        if conn.receipts.len() >= want {
            return Ok(conn.receipts);
        }
        if conn.body.ended() {
            return Err(format!(
                "the stream ended after {} of {want} events",
                conn.receipts.len()
            ));
        }
        let what = format!("{} of {want} events received", conn.receipts.len());
        let n = read_some(&mut tcp, &mut buf, &what).await?;
        if n == 0 {
            return Err(format!("the server closed the stream ({what})"));
        }
        let got = conn.absorb(&buf[..n], Instant::now())?;
        progress.fetch_add(got, Ordering::Relaxed);
    }
}

async fn sse_stream(
    addr: SocketAddr,
    path: Arc<str>,
    want: usize,
    gate: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Res<()>>,
    progress: Arc<AtomicUsize>,
) -> Res<Vec<(i64, Instant)>> {
    let mut ready = Some(ready);
    let result = sse_stream_inner(addr, &path, want, gate, &mut ready, &progress).await;
    if let (Err(error), Some(tx)) = (&result, ready.take()) {
        let _ = tx.send(Err(error.clone()));
    }
    result
}

type StreamTask = JoinHandle<Res<Vec<(i64, Instant)>>>;

/// Open streams, all connected; each waits for `want` item events.
struct OpenStreams {
    tasks: Vec<StreamTask>,
    progress: Arc<AtomicUsize>,
    want: usize,
    _guard: AbortOnDrop,
}

/// Opens `count` streams on `user` and waits until every one has received
/// the `retry:` advice (so it is subscribed).
async fn open_streams(addr: SocketAddr, user: &str, count: usize, want: usize) -> Res<OpenStreams> {
    let path: Arc<str> = format!("/resource/history/{user}/stream").into();
    let gate = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let progress = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tasks: Vec<StreamTask> = (0..count)
        .map(|_| {
            tokio::spawn(sse_stream(
                addr,
                Arc::clone(&path),
                want,
                Arc::clone(&gate),
                tx.clone(),
                Arc::clone(&progress),
            ))
        })
        .collect();
    drop(tx);
    let guard = AbortOnDrop(tasks.iter().map(JoinHandle::abort_handle).collect());
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut connected = 0;
    while connected < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(()))) => connected += 1,
            Ok(Some(Err(error))) => {
                return Err(format!(
                    "a stream failed to open ({connected} of {count} connected): {error}"
                ));
            }
            Ok(None) => {
                return Err(format!(
                    "streams ended while opening ({connected} of {count} connected)"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "timed out after {WAIT:?} opening streams: only {connected} of {count} connected"
                ));
            }
        }
    }
    Ok(OpenStreams {
        tasks,
        progress,
        want,
        _guard: guard,
    })
}

/// Waits (at most [`WAIT`]) until every stream has all its events.
async fn collect_streams(streams: OpenStreams) -> Res<Vec<Vec<(i64, Instant)>>> {
    let OpenStreams {
        tasks,
        progress,
        want,
        _guard,
    } = streams;
    let expected = tasks.len() * want;
    let results = tokio::time::timeout(WAIT, futures::future::join_all(tasks))
        .await
        .map_err(|_| {
            format!(
                "timed out after {WAIT:?} waiting for delivery: {} of {expected} events received",
                progress.load(Ordering::Relaxed)
            )
        })?;
    results
        .into_iter()
        .map(|r| r.map_err(|e| format!("stream task failed: {e}"))?)
        .collect()
}

/// Signed milliseconds from `reference` to `at` (negative: `at` came first).
fn signed_ms(at: Instant, reference: Instant) -> f64 {
    if at >= reference {
        (at - reference).as_secs_f64() * 1e3
    } else {
        -((reference - at).as_secs_f64() * 1e3)
    }
}

/// p50, p99 and max of signed millisecond samples.
fn signed_percentiles(mut samples: Vec<f64>) -> [f64; 3] {
    samples.sort_unstable_by(f64::total_cmp);
    let pick = |p: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1]
    };
    [pick(0.50), pick(0.99), pick(1.0)]
}

fn sms(x: f64) -> String {
    if x.abs() < 10.0 {
        format!("{x:.2} ms")
    } else if x.abs() < 100.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.0} ms")
    }
}

/// User plus system CPU time of process `pid` (all threads), from
/// /proc/PID/stat in clock ticks of (on every Linux we know) 10 ms.
fn cpu_time(pid: u32) -> Res<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    let after_name = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| format!("cannot parse /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime); `fields[0]` is field 3 (state).
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok(Duration::from_millis((user + system) * 10)),
        _ => Err(format!("cannot parse utime/stime in /proc/{pid}/stat")),
    }
}

#[derive(Debug, Clone, Copy)]
struct FanOut {
    streams: usize,
    items: usize,
    /// Item events received over all streams.
    events: usize,
    /// First store call sent → last event received.
    window: Duration,
    /// Duration of the store phase (all N calls acknowledged).
    store: Duration,
    /// Delivery delay, store call acknowledged → event received (signed ms:
    /// an event may reach a stream before the caller has its answer).
    from_ack: [f64; 3],
    /// Store call sent → event received (ms).
    from_send: [f64; 3],
    /// Events that arrived before their store call was acknowledged.
    early: usize,
    /// CPU time the service process spent from the first store to the last
    /// receipt (stores, encoding, writing).
    child_cpu: Duration,
}

impl FanOut {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

/// Opens `streams` streams on a fresh user, stores `items`, waits for all.
/// `between` runs after the streams are connected and before the stores.
async fn fan_out(
    child: &CortexChild,
    client: &reqwest::Client,
    user: &str,
    (streams, items, writers): (usize, usize, usize),
    mut between: impl AsyncFnMut() -> Res<()>,
) -> Res<FanOut> {
    let open = open_streams(child.addr, user, streams, items).await?;
    between().await?;
    let url = format!("http://{}/tool/store_input", child.addr);
    let cpu_before = cpu_time(child.pid)?;
    let started = Instant::now();
    let calls = store_calls(client, &url, &[user.to_string()], items, writers, user).await?;
    let store = started.elapsed();
    let receipts = collect_streams(open).await?;
    let cpu_after = cpu_time(child.pid)?;
    let acks: HashMap<i64, Ack> = calls.acks.iter().map(|a| (a.id, *a)).collect();
    let mut from_ack = Vec::with_capacity(streams * items);
    let mut from_send = Vec::with_capacity(streams * items);
    let mut early = 0;
    let mut last = started;
    for stream in &receipts {
        for &(id, at) in stream {
            let ack = acks.get(&id).ok_or_else(|| {
                format!("a stream received item {id}, which this phase did not store")
            })?;
            if at < ack.acked {
                early += 1;
            }
            from_ack.push(signed_ms(at, ack.acked));
            from_send.push(signed_ms(at, ack.sent));
            last = last.max(at);
        }
    }
    Ok(FanOut {
        streams,
        items,
        events: from_ack.len(),
        window: last - started,
        store,
        from_ack: signed_percentiles(from_ack),
        from_send: signed_percentiles(from_send),
        early,
        child_cpu: cpu_after.saturating_sub(cpu_before),
    })
}

fn fan_row(label: &str, f: &FanOut) {
    println!(
        "  {label:<22} {:>7} events in {:>6.3} s = {:>9} events/s | ack->receipt p50 {:>9} p99 {:>9} max {:>9} | send->receipt p50 {:>9} p99 {:>9} | stores took {}, {} of {} events arrived before their ack, child CPU {}",
        f.events,
        f.window.as_secs_f64(),
        rate(f.events_per_s()),
        sms(f.from_ack[0]),
        sms(f.from_ack[1]),
        sms(f.from_ack[2]),
        sms(f.from_send[0]),
        sms(f.from_send[1]),
        ms(f.store),
        f.early,
        f.events,
        ms(f.child_cpu),
    );
}

struct Memory {
    before: u64,
    after: u64,
    streams: usize,
}

impl Memory {
    fn per_stream(&self) -> f64 {
        (self.after as f64 - self.before as f64) / self.streams as f64
    }
}

struct FanOutReport {
    baseline: FanOut,
    many: FanOut,
    memory: Memory,
}

impl FanOutReport {
    /// Extra service CPU per extra delivered event, 1 stream → many streams.
    fn marginal_cpu_per_event(&self) -> Option<Duration> {
        let events = self.many.events.checked_sub(self.baseline.events)?;
        let cpu = self.many.child_cpu.checked_sub(self.baseline.child_cpu)?;
        (events > 0).then(|| cpu / u32::try_from(events).unwrap_or(u32::MAX))
    }
}

async fn part_fan_out(opts: &Options, dir: &Path, streams: usize) -> Res<FanOutReport> {
    let child = CortexChild::spawn(&opts.cortex_bin, &dir.join("m.sqlite3")).await?;
    let result = async {
        println!(
            "  cortex child pid {} listening on http://{}   VmRSS at start {:.1} MiB",
            child.pid,
            child.addr,
            vm_rss_bytes(child.pid)? as f64 / 1048576.0
        );
        fan_out_with(opts, &child, streams).await
    }
    .await;
    child.stop().await;
    result
}

async fn fan_out_with(opts: &Options, child: &CortexChild, streams: usize) -> Res<FanOutReport> {
    let client = http_client(opts.writers)?;
    let health = format!("http://{}/health", child.addr);
    let status = client
        .get(&health)
        .send()
        .await
        .map_err(|e| format!("GET {health}: {e}"))?
        .status();
    if !status.is_success() {
        return Err(format!("GET {health} answered {status}"));
    }

    // Warm-up: some stores and a few streams reading them back as backlog.
    let url = format!("http://{}/tool/store_input", child.addr);
    store_calls(&client, &url, &["warmup".to_string()], 50, 8, "warmup").await?;
    let warm = open_streams(child.addr, "warmup", 4, 50).await?;
    collect_streams(warm).await?;

    let shape = |n| (n, opts.items, opts.writers);
    let baseline = fan_out(child, &client, "fanout-baseline", shape(1), async || Ok(())).await?;
    fan_row("baseline: 1 stream", &baseline);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = vm_rss_bytes(child.pid)?;
    let mut after = before;
    let pid = child.pid;
    let many = fan_out(child, &client, "fanout-many", shape(streams), async || {
        // Let the streams' first backlog reads finish.
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = vm_rss_bytes(pid)?;
        Ok(())
    })
    .await?;
    fan_row(&format!("{streams} streams"), &many);
    let memory = Memory {
        before,
        after,
        streams,
    };
    println!(
        "  child VmRSS: {:.1} MiB before opening, {:.1} MiB with {streams} streams open = {:.1} KiB per stream",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        memory.per_stream() / 1024.0
    );
    Ok(FanOutReport {
        baseline,
        many,
        memory,
    })
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Report {
    baseline: Option<Stats>,
    service_1: Option<Stats>,
    service_n: Option<Stats>,
    /// Medians over the rounds of Y/X, Z/X and Z/Y.
    round_ratios: [f64; 3],
    rounds: usize,
    fan_out: Option<FanOutReport>,
    fan_out_note: Option<String>,
}

fn print_summary(opts: &Options, streams: usize, report: &Report) {
    let w = opts.writers;
    println!();
    println!("================================ summary ================================");
    println!("store_input, durable (WAL, synchronous=FULL), HTTP loopback");
    if let Some(b) = &report.baseline {
        println!(
            "  {:<38} {:>9} inserts/s  p50 {:>9}  p99 {:>9}",
            "baseline (rusqlite, 1 commit/insert):",
            rate(b.rate()),
            ms(b.p50),
            ms(b.p99)
        );
    }
    let x = report.baseline.map_or(0.0, |b| b.rate());
    if let Some(s) = &report.service_1 {
        println!(
            "  {:<38} {:>9} calls/s    p50 {:>9}  p99 {:>9}   (Y/X = {}; median of rounds {:.2}x)",
            "service, 1 writer:",
            rate(s.rate()),
            ms(s.p50),
            ms(s.p99),
            ratio(s.rate(), x),
            report.round_ratios[0]
        );
    }
    let y = report.service_1.map_or(0.0, |s| s.rate());
    if let Some(s) = &report.service_n {
        println!(
            "  {:<38} {:>9} calls/s    p50 {:>9}  p99 {:>9}   (Z/X = {}, Z/Y = {}; medians of {} rounds {:.2}x, {:.2}x)",
            format!("service, {w} writers:"),
            rate(s.rate()),
            ms(s.p50),
            ms(s.p99),
            ratio(s.rate(), x),
            ratio(s.rate(), y),
            report.rounds,
            report.round_ratios[1],
            report.round_ratios[2]
        );
    }
    match &report.fan_out {
        Some(f) => {
            println!(
                "SSE fan-out, {} streams, {} items (child `cortex serve memory`; {w} writers store the items)",
                f.many.streams, f.many.items
            );
            let b = &f.baseline;
            println!(
                "  {:<38} {:>9} events/s   delivery p50 {:>9}  p99 {:>9}",
                "baseline (1 stream):",
                rate(b.events_per_s()),
                sms(b.from_ack[0]),
                sms(b.from_ack[1])
            );
            let m = &f.many;
            println!(
                "  {:<38} {:>9} events/s   delivery p50 {:>9}  p99 {:>9}   (events/s {}/1 = {}; time per event = {} of the 1-stream time)",
                format!("{} streams:", m.streams),
                rate(m.events_per_s()),
                sms(m.from_ack[0]),
                sms(m.from_ack[1]),
                m.streams,
                ratio(m.events_per_s(), b.events_per_s()),
                ratio(b.events_per_s(), m.events_per_s()),
            );
            if let Some(cpu) = f.marginal_cpu_per_event() {
                println!(
                    "  {:<38} {:>9.1} µs   (child CPU {} for 1 stream, {} for {})",
                    "service CPU per extra delivered event:",
                    cpu.as_secs_f64() * 1e6,
                    ms(b.child_cpu),
                    ms(m.child_cpu),
                    m.streams
                );
            }
            println!(
                "  {:<38} {:>9.1} KiB   (child VmRSS {:.1} -> {:.1} MiB)",
                "resident memory per open stream:",
                f.memory.per_stream() / 1024.0,
                f.memory.before as f64 / 1048576.0,
                f.memory.after as f64 / 1048576.0
            );
            println!(
                "  (delivery = store ack -> receipt, negative when the event beats the HTTP answer; send -> receipt p50/p99: 1 stream {}/{}, {} streams {}/{})",
                sms(b.from_send[0]),
                sms(b.from_send[1]),
                m.streams,
                sms(m.from_send[0]),
                sms(m.from_send[1])
            );
        }
        None => {
            println!("SSE fan-out, {streams} streams, {} items", opts.items);
        }
    }
    if let Some(note) = &report.fan_out_note {
        println!("  {note}");
    }
    println!("==========================================================================");
}

/// Flushes dirty pages (e.g. the freshly linked bench binary) so that the
/// first fsyncs measured do not pay for them.
async fn settle_disk() {
    let sync = tokio::process::Command::new("sync")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(WAIT, sync).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => println!("  note: `sync` exited with {status}"),
        Ok(Err(error)) => println!("  note: could not run `sync`: {error}"),
        Err(_) => println!("  note: `sync` did not finish within {WAIT:?}"),
    }
}

async fn run(opts: Options) -> Res<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (soft, hard) = open_file_limits()?;
    let show = |l: Option<u64>| l.map_or_else(|| "unlimited".to_string(), |l| l.to_string());
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| format!("cannot create {}: {e}", opts.dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("cortex-memory-bench-")
        .tempdir_in(&opts.dir)
        .map_err(|e| {
            format!(
                "cannot create a temporary directory in {}: {e}",
                opts.dir.display()
            )
        })?;
    let fs = filesystem_of(tmp.path());
    println!(
        "memory service benchmark{}: {cores} cores, open files soft {} / hard {}",
        if opts.quick { " (--quick)" } else { "" },
        show(soft),
        show(hard)
    );
    println!("  databases in {} (filesystem: {fs})", tmp.path().display());
    if fs == "tmpfs" || fs == "ramfs" {
        println!(
            "  warning: {fs} does not fsync to a device; durable-commit figures are meaningless (use --dir on a disk)"
        );
    }

    // Fan-out preconditions first, so a missing binary fails fast.
    let mut streams = opts.streams;
    let mut report = Report::default();
    if opts.fanout {
        if !opts.cortex_bin.is_file() {
            return Err(format!(
                "the cortex binary is missing at {}\n  build it first:  cd {} && cargo build --release -p cortex-cli\n  (or pass --cortex-bin PATH, or --no-fanout to skip the SSE part)",
                opts.cortex_bin.display(),
                workspace_root().display()
            ));
        }
        println!("  cortex binary: {}", opts.cortex_bin.display());
        if let Some(warning) = stale_binary_warning(&opts.cortex_bin) {
            println!("  {warning}");
        }
        // Each stream costs one descriptor here and one in the child, which
        // inherits this limit.
        if let Some(soft) = soft {
            let fit = usize::try_from(soft.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
            if fit < streams {
                let note = format!(
                    "ulimit -n is {soft}: too low for {} streams (needs about {}); raise it with `ulimit -n 8192` (hard limit {}) and rerun; falling back to {fit} streams",
                    opts.streams,
                    opts.streams as u64 + FD_RESERVE,
                    show(hard)
                );
                println!("  {note}");
                report.fan_out_note = Some(note);
                streams = fit;
            }
        }
        if streams == 0 {
            return Err("no file descriptors left for any stream; raise `ulimit -n`".into());
        }
    }
    settle_disk().await;

    println!();
    println!(
        "== store_input, durable (WAL, synchronous=FULL), HTTP loopback; {} interleaved rounds after a warm-up ==",
        if opts.quick { ROUNDS / 2 } else { ROUNDS }
    );
    let dir = tmp.path().to_path_buf();
    if let Err(error) = part_store_input(&opts, &dir, &mut report).await {
        print_summary(&opts, streams, &report);
        return Err(error);
    }

    if !opts.fanout {
        report.fan_out_note = Some("skipped (--no-fanout)".into());
        print_summary(&opts, streams, &report);
        return Ok(());
    }
    println!();
    println!(
        "== SSE fan-out: {streams} streams on one user, {} items stored by {} writers ==",
        opts.items, opts.writers
    );
    let fan_dir = dir.join("fanout");
    std::fs::create_dir_all(&fan_dir)
        .map_err(|e| format!("cannot create {}: {e}", fan_dir.display()))?;
    match part_fan_out(&opts, &fan_dir, streams).await {
        Ok(fan_out) => {
            report.fan_out = Some(fan_out);
            print_summary(&opts, streams, &report);
            Ok(())
        }
        Err(error) => {
            report.fan_out_note = Some(format!("FAILED: {error}"));
            print_summary(&opts, streams, &report);
            Err(error)
        }
    }
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Some(opts)) => opts,
        Ok(None) => return ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("memory bench: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("memory bench: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(run(opts));
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\nmemory bench FAILED: {error}");
            ExitCode::from(1)
        }
    }
}
