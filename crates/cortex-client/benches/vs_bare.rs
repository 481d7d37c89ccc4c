//! The full client stack against bare HTTP clients on one reference server.
//!
//! Three clients in this process call `POST /tool/echo` on a reference echo
//! server (hyper HTTP/1, one tokio worker, `TCP_NODELAY`) running in a child
//! process:
//!
//! - bare reqwest (`reqwest::Client`, no proxy lookup, `TCP_NODELAY`),
//! - bare hyper (hyper-util's legacy `Client` over `HttpConnector`),
//! - `NetworkMcpClient::call_tool` with static discovery and the default
//!   configuration: discovery, balancing, breaker, retry budget, deadline,
//!   metrics and headers (ids, `traceparent`, `Idempotency-Key`), at most 10
//!   connections; and, above concurrency 10, the same stack allowed as many
//!   connections as the bare clients open.
//!
//! Every client sends the same body (the Cortex envelope around
//! `{"item_id": n}`) and parses the answer as JSON. At each concurrency the
//! clients run in turn, the order reversed every other round, and the best
//! of the rounds is kept; figures are ratios to bare reqwest taken in the
//! same run. The client's and the server's CPU time per call are read from
//! `/proc` for every run, and so is the share of the machine that other
//! programs used meanwhile.
//!
//! Both processes are pinned to one CPU by default (`--placement same`): a
//! call then costs the client's and the server's CPU time in turn. On a
//! small virtual machine a wake-up across cores costs tens of microseconds,
//! more than a client's whole cost per call, and unpinned runs swing with
//! whatever else the machine does; `--placement split` and `free` measure
//! those cases.
//!
//! ```text
//! cargo bench -p cortex-client --bench vs_bare
//! BENCH_SECONDS=0.5 cargo bench -p cortex-client --bench vs_bare   # short runs
//! cargo bench -p cortex-client --bench vs_bare -- --help
//! ```

mod common;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use common::{ChildServer, Clients, Placement, Res, Run, Variant};

const HELP: &str = "\
the client stack against bare reqwest and bare hyper (custom harness)

usage: cargo bench -p cortex-client --bench vs_bare [-- OPTIONS]

  --seconds S          length of one measured run       (env BENCH_SECONDS, default 2)
  --rounds N           runs per client; the best is kept (env BENCH_ROUNDS, default 3)
  --concurrency LIST   comma-separated concurrencies     (default 1,32,256)
  --only LIST          clients to run: reqwest,hyper,cortex,cortex-wide
                       (default: all; cortex-wide only above concurrency 10)
  --client-threads N   tokio worker threads of the clients (default 1; the
                       server has one, and the machine may have only two cores)
  --placement P        same: client and server both on the first CPU (default:
                       no cross-core wake-ups, whose cost on a small virtual
                       machine swamps a client's); split: client on the first
                       CPU, server on the second; free: unpinned
  --quick              BENCH_SECONDS=0.5 and 2 rounds
";

struct Options {
    seconds: f64,
    rounds: usize,
    concurrency: Vec<usize>,
    only: Option<Vec<Variant>>,
    client_threads: usize,
    placement: Placement,
}

fn parse_args() -> Res<Option<Options>> {
    let mut seconds = common::env_number("BENCH_SECONDS")?.unwrap_or(2.0);
    let mut rounds = common::env_number("BENCH_ROUNDS")?.map_or(3, |r| r as usize);
    let mut concurrency = vec![1, 32, 256];
    let mut only = None;
    let mut client_threads = 1;
    let mut placement = Placement::Same;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--seconds" => seconds = common::flag_value(&arg, args.next())?,
            "--rounds" => rounds = common::flag_value(&arg, args.next())?,
            "--concurrency" => concurrency = common::number_list(&arg, args.next())?,
            "--client-threads" => client_threads = common::flag_value(&arg, args.next())?,
            "--placement" => {
                placement = Placement::parse(&args.next().ok_or("--placement needs a value")?)?;
            }
            "--only" => {
                let list = args.next().ok_or("--only needs a list")?;
                only = Some(
                    list.split(',')
                        .map(Variant::parse)
                        .collect::<Res<Vec<_>>>()?,
                );
            }
            "--quick" => {
                seconds = 0.5;
                rounds = 2;
            }
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    if !(seconds.is_finite() && seconds > 0.0) || rounds == 0 || client_threads == 0 {
        return Err("--seconds, --rounds and --client-threads must be positive".into());
    }
    Ok(Some(Options {
        seconds,
        rounds,
        concurrency,
        only,
        client_threads,
        placement,
    }))
}

/// The best (fastest) run of one client at one concurrency, and its
/// cheapest client CPU per call over the rounds.
#[derive(Default, Clone)]
struct Best {
    run: Option<Run>,
    client_us: Option<f64>,
    worst_rate: Option<f64>,
    /// The largest share of the machine other programs took in a run.
    others: f64,
    /// The slowest call of any round.
    slowest: Duration,
    error: Option<String>,
}

impl Best {
    fn add(&mut self, outcome: Res<Run>) {
        match outcome {
            Ok(run) => {
                if self.run.is_none_or(|b| run.rate() > b.rate()) {
                    self.run = Some(run);
                }
                if self.client_us.is_none_or(|c| run.client_us() < c) {
                    self.client_us = Some(run.client_us());
                }
                if self.worst_rate.is_none_or(|w| run.rate() < w) {
                    self.worst_rate = Some(run.rate());
                }
                self.others = self.others.max(run.others);
                self.slowest = self.slowest.max(run.max);
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10_000.0 {
        format!("{us:.0}µs")
    } else {
        format!("{:.0}ms", us / 1e3)
    }
}

fn variants_at(opts: &Options, concurrency: usize) -> Vec<Variant> {
    match &opts.only {
        Some(only) => only.clone(),
        None => {
            let mut v = vec![Variant::Reqwest, Variant::Hyper, Variant::Cortex];
            if concurrency > 10 {
                v.push(Variant::CortexWide);
            }
            v
        }
    }
}

async fn run(opts: Options, server: &ChildServer) -> Res<bool> {
    let clients = Arc::new(Clients::new(server.addr)?);
    // Every client answers correctly before anything is timed.
    for variant in Variant::ALL {
        tokio::time::timeout(common::CALL_LIMIT, clients.call(variant, 7))
            .await
            .map_err(|_| format!("{}: no answer", variant.label()))?
            .map_err(|e| format!("{}: {e}", variant.label()))?;
    }
    let length = Duration::from_secs_f64(opts.seconds);
    let warm = Duration::from_secs_f64((opts.seconds / 4.0).clamp(0.1, 0.5));
    let mut table: Vec<(usize, Vec<(Variant, Best)>)> = Vec::new();
    for &concurrency in &opts.concurrency {
        let variants = variants_at(&opts, concurrency);
        for &variant in &variants {
            common::run_timed(&clients, variant, concurrency, warm, server.pid)
                .await
                .map_err(|e| format!("warm-up of {} at {concurrency}: {e}", variant.label()))?;
        }
        let mut bests: Vec<(Variant, Best)> =
            variants.iter().map(|&v| (v, Best::default())).collect();
        for round in 0..opts.rounds {
            let mut order: Vec<usize> = (0..variants.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let variant = bests[i].0;
                let outcome =
                    common::run_timed(&clients, variant, concurrency, length, server.pid).await;
                match &outcome {
                    Ok(r) => println!(
                        "  c={concurrency:<4} round {} {:<31} {:>8.0} calls/s  p50 {:>7}  p99 {:>7}  max {:>7}  client CPU {:>5.1} µs/call  server CPU {:>5.1} µs/call  others {:>3.0}%",
                        round + 1,
                        variant.label(),
                        r.rate(),
                        us(r.p50),
                        us(r.p99),
                        us(r.max),
                        r.client_us(),
                        r.server_us(),
                        r.others * 100.0,
                    ),
                    Err(e) => println!(
                        "  c={concurrency:<4} round {} {:<31} FAILED: {e}",
                        round + 1,
                        variant.label()
                    ),
                }
                bests[i].1.add(outcome);
            }
        }
        if let Some(stack) = clients.stack(Variant::CortexWide) {
            let pools: Vec<String> = stack
                .endpoint_status()
                .iter()
                .map(|s| format!("{:?}", s.pool))
                .collect();
            println!("  c={concurrency:<4} wide stack pool: {}", pools.join(", "));
        }
        table.push((concurrency, bests));
    }
    Ok(print_summary(&opts, &table))
}

/// Prints the tables; whether every run succeeded.
fn print_summary(opts: &Options, table: &[(usize, Vec<(Variant, Best)>)]) -> bool {
    println!();
    println!("================================ summary ================================");
    println!(
        "POST /tool/echo on one echo server (child process, 1 worker, TCP_NODELAY); {} s runs, best of {}, clients on {} tokio worker(s), placement {:?}; {}",
        opts.seconds,
        opts.rounds,
        opts.client_threads,
        opts.placement,
        common::describe_machine()
    );
    let mut complete = true;
    let mut verdicts = Vec::new();
    println!("calls/s (ratio to bare reqwest in the same run):");
    for (concurrency, bests) in table {
        let base = bests
            .iter()
            .find(|(v, _)| *v == Variant::Reqwest)
            .and_then(|(_, b)| b.run);
        let mut line = format!("  c={concurrency:<4}");
        for (variant, best) in bests {
            match (&best.run, base) {
                (Some(r), Some(b)) => {
                    let ratio = r.rate() / b.rate();
                    line.push_str(&format!(
                        "  {} {:.0} ({:.2}x)",
                        variant.short(),
                        r.rate(),
                        ratio
                    ));
                    if matches!(variant, Variant::Cortex | Variant::CortexWide) {
                        let target = if *concurrency == 32 { 1.1 } else { 1.0 };
                        verdicts.push((*variant, *concurrency, ratio, target));
                    }
                }
                (Some(r), None) => line.push_str(&format!("  {} {:.0}", variant.short(), r.rate())),
                _ => {
                    complete = false;
                    line.push_str(&format!(
                        "  {} FAILED ({})",
                        variant.short(),
                        best.error.as_deref().unwrap_or("no run")
                    ));
                }
            }
        }
        println!("{line}");
    }
    println!("client CPU per call, cheapest round (ratio to bare reqwest; below 1 is cheaper):");
    for (concurrency, bests) in table {
        let base = bests
            .iter()
            .find(|(v, _)| *v == Variant::Reqwest)
            .and_then(|(_, b)| b.client_us);
        let mut line = format!("  c={concurrency:<4}");
        for (variant, best) in bests {
            if let Some(c) = best.client_us {
                match base {
                    Some(b) => {
                        line.push_str(&format!("  {} {c:.1} µs ({:.2}x)", variant.short(), c / b))
                    }
                    None => line.push_str(&format!("  {} {c:.1} µs", variant.short())),
                }
            }
        }
        println!("{line}");
    }
    if opts.rounds > 1 {
        println!("run-to-run spread (slowest-fastest calls/s):");
        for (concurrency, bests) in table {
            let mut line = format!("  c={concurrency:<4}");
            for (variant, best) in bests {
                if let (Some(r), Some(w)) = (best.run, best.worst_rate) {
                    line.push_str(&format!("  {} {w:.0}-{:.0}", variant.short(), r.rate()));
                }
            }
            println!("{line}");
        }
    }
    let others = table
        .iter()
        .flat_map(|(_, bests)| bests.iter().map(|(_, b)| b.others))
        .fold(0.0f64, f64::max);
    println!(
        "other programs used at most {:.0}% of the machine during a run{}",
        others * 100.0,
        if others > 0.1 {
            " (a shared machine: compare runs taken when it is quiet)"
        } else {
            ""
        }
    );
    println!("slowest call of any round (a caller that waits most of a run is starved):");
    let length = Duration::from_secs_f64(opts.seconds);
    for (concurrency, bests) in table {
        let mut line = format!("  c={concurrency:<4}");
        for (variant, best) in bests {
            let starved = if best.slowest > length / 2 {
                " STARVED"
            } else {
                ""
            };
            line.push_str(&format!(
                "  {} {}{starved}",
                variant.short(),
                us(best.slowest)
            ));
        }
        println!("{line}");
    }
    if !verdicts.is_empty() {
        println!("targets against bare reqwest (calls/s ratio):");
        for (variant, concurrency, ratio, target) in verdicts {
            let verdict = if ratio >= target { "MET" } else { "MISSED" };
            println!(
                "  c={concurrency:<4} {:<31} {ratio:.2}x, target >= {target:.1}x: {verdict}",
                variant.label()
            );
        }
    }
    println!("==========================================================================");
    complete
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == common::SERVE_ECHO) {
        return match common::serve_echo_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("echo server: {e}");
                ExitCode::from(1)
            }
        };
    }
    let opts = match parse_args() {
        Ok(Some(opts)) => opts,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vs_bare: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match ChildServer::spawn(common::SERVE_ECHO, &[]) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("vs_bare: {e}");
            return ExitCode::from(1);
        }
    };
    let placed = match common::place(opts.placement, server.pid) {
        Ok(placed) => placed,
        Err(e) => {
            eprintln!("vs_bare: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "vs_bare: client pid {}, echo server pid {} on {}; {placed}",
        std::process::id(),
        server.pid,
        server.addr
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.client_threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vs_bare: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(run(opts, &server));
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(server);
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("vs_bare: some runs FAILED (see above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("vs_bare FAILED: {e}");
            ExitCode::from(1)
        }
    }
}
