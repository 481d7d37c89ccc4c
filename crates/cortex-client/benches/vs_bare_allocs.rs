//! Heap allocations per call: the full client stack against bare reqwest
//! and bare hyper, on the reference echo server of `vs_bare` (run in a
//! child process, so that only the clients' allocations are counted).
//!
//! A counting global allocator (`stats_alloc` around the system allocator;
//! the workspace forbids the `unsafe` a hand-written one would need) counts
//! every allocation of this process over N calls of each client, after a
//! warm-up that opens the connections. Counted: the client, its connection
//! tasks, and the benchmark's own share, which is the same for every
//! client (the arguments value, printed apart). Its own bench binary, so that
//! the counting does not slow the throughput runs of `vs_bare`.
//!
//! ```text
//! cargo bench -p cortex-client --bench vs_bare_allocs
//! BENCH_CALLS=1000 cargo bench -p cortex-client --bench vs_bare_allocs
//! ```

mod common;

use std::alloc::System;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use common::{ChildServer, Clients, Res, Variant};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const HELP: &str = "\
heap allocations per call: the client stack against bare reqwest and hyper

usage: cargo bench -p cortex-client --bench vs_bare_allocs [-- OPTIONS]

  --calls N            calls counted per run              (env BENCH_CALLS, default 5000)
  --rounds N           runs per client; the lowest is kept (env BENCH_ROUNDS, default 3)
  --concurrency LIST   comma-separated concurrencies       (default 1,32)
";

struct Options {
    calls: u64,
    rounds: usize,
    concurrency: Vec<usize>,
}

fn parse_args() -> Res<Option<Options>> {
    let mut calls = common::env_number("BENCH_CALLS")?.map_or(5000, |c| c as u64);
    let mut rounds = common::env_number("BENCH_ROUNDS")?.map_or(3, |r| r as usize);
    let mut concurrency = vec![1, 32];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--calls" => calls = common::flag_value(&arg, args.next())?,
            "--rounds" => rounds = common::flag_value(&arg, args.next())?,
            "--concurrency" => concurrency = common::number_list(&arg, args.next())?,
            "--quick" => {
                calls = 1000;
                rounds = 2;
            }
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    if calls == 0 || rounds == 0 {
        return Err("--calls and --rounds must be positive".into());
    }
    Ok(Some(Options {
        calls,
        rounds,
        concurrency,
    }))
}

/// Allocations of one counted run, per call.
#[derive(Debug, Clone, Copy)]
struct PerCall {
    /// Allocations plus reallocations.
    allocs: f64,
    /// Bytes asked for by them.
    bytes: f64,
}

fn per_call(stats: stats_alloc::Stats, calls: u64) -> PerCall {
    let calls = calls as f64;
    PerCall {
        allocs: (stats.allocations + stats.reallocations) as f64 / calls,
        bytes: (stats.bytes_allocated as f64 + stats.bytes_reallocated.max(0) as f64) / calls,
    }
}

async fn count(clients: &Arc<Clients>, variant: Variant, c: usize, calls: u64) -> Res<PerCall> {
    let region = Region::new(GLOBAL);
    common::run_calls(clients, variant, c, calls).await?;
    Ok(per_call(region.change(), calls))
}

async fn run(opts: Options, server: &ChildServer) -> Res<()> {
    let clients = Arc::new(Clients::new(server.addr)?);
    // The benchmark's own share of every call: the arguments value.
    let region = Region::new(GLOBAL);
    for n in 0..1000 {
        black_box(common::arguments(n));
    }
    let harness = per_call(region.change(), 1000);
    let mut table = Vec::new();
    for &c in &opts.concurrency {
        let mut variants = vec![Variant::Reqwest, Variant::Hyper, Variant::Cortex];
        if c > 10 {
            variants.push(Variant::CortexWide);
        }
        for &variant in &variants {
            common::run_calls(&clients, variant, c, (opts.calls / 5).max(c as u64 * 20))
                .await
                .map_err(|e| format!("warm-up of {} at {c}: {e}", variant.label()))?;
        }
        let mut best: Vec<Option<PerCall>> = vec![None; variants.len()];
        for round in 0..opts.rounds {
            let mut order: Vec<usize> = (0..variants.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let variant = variants[i];
                let counted = count(&clients, variant, c, opts.calls)
                    .await
                    .map_err(|e| format!("{} at {c}: {e}", variant.label()))?;
                println!(
                    "  c={c:<3} round {} {:<31} {:>6.1} allocs/call {:>8.0} bytes/call",
                    round + 1,
                    variant.label(),
                    counted.allocs,
                    counted.bytes
                );
                if best[i].is_none_or(|b| counted.allocs < b.allocs) {
                    best[i] = Some(counted);
                }
            }
        }
        table.push((c, variants, best));
    }

    println!();
    println!("================================ summary ================================");
    println!(
        "heap allocations per call over {} calls, lowest of {} rounds; the echo server runs in a child process",
        opts.calls, opts.rounds
    );
    println!(
        "(each figure includes the benchmark's share, the arguments value: {:.1} allocs, {:.0} bytes)",
        harness.allocs, harness.bytes
    );
    for (c, variants, best) in &table {
        let base = best.first().copied().flatten();
        for (variant, counted) in variants.iter().zip(best) {
            let Some(counted) = counted else { continue };
            let ratio = base.map_or(String::new(), |b| {
                format!(
                    "  ({:.2}x allocs, {:.2}x bytes of bare reqwest)",
                    counted.allocs / b.allocs,
                    counted.bytes / b.bytes
                )
            });
            println!(
                "  c={c:<3} {:<31} {:>6.1} allocs/call {:>8.0} bytes/call{ratio}",
                variant.label(),
                counted.allocs,
                counted.bytes
            );
        }
        if let (Some(b), Some(Some(s))) = (base, best.get(2)) {
            let verdict = if s.allocs <= b.allocs {
                "MET"
            } else {
                "MISSED"
            };
            println!(
                "  c={c:<3} target: cortex allocs/call <= bare reqwest's: {verdict} ({:+.1})",
                s.allocs - b.allocs
            );
        }
    }
    println!("==========================================================================");
    Ok(())
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
            eprintln!("vs_bare_allocs: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match ChildServer::spawn(common::SERVE_ECHO, &[]) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("vs_bare_allocs: {e}");
            return ExitCode::from(1);
        }
    };
    // One worker, as in `vs_bare`.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vs_bare_allocs: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(run(opts, &server));
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(server);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vs_bare_allocs FAILED: {e}");
            ExitCode::from(1)
        }
    }
}
