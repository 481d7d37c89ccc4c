//! What authentication costs memory's `store_input` and `get_item` over
//! real loopback sockets at concurrency 32: the throughput a client sees,
//! handshake-free kept-alive connections, the whole server (accept loop,
//! bounds, auth layer, router, SQLite store) and the network client.
//!
//! Three memory services (and a diagnostic fourth, below) run side by side,
//! each on its own SQLite file:
//! auth off (the baseline), HS256, and RS256 from a JWKS (its key fetched
//! once and cached, the client's one token verified once and then
//! remembered, as for a client that reuses its token). Each has its own
//! network client (`max_connections` 64, so no call waits for a
//! connection) sending its token. A round of a tool gives each service the
//! same number of calls, in slices that alternate between the three (off,
//! HS256, RS256, off, …), so that load from elsewhere on the machine falls
//! on all three alike; each service's time in a round is the sum of its
//! slices. Three rounds per tool; the best round of each service counts,
//! reported as calls/s and as a ratio against auth off in the same run.
//!
//! On a shared machine calls/s also moves with what other processes do, by
//! more than the few percent in question. So each slice also takes the
//! process's CPU time (client and services are in this one process), and
//! the report adds CPU µs per call and its ratio (off's CPU per call over
//! the case's): the throughput ratio the cost implies when the CPU is the
//! limit, as it is here. A fourth, diagnostic case sends the HS256 token
//! to a service with auth off: the client's and the wire's share.
//!
//! Run: `cargo bench -p cortex-service --bench auth_loopback` (`-- --quick`
//! for a short run).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cortex_client::{ClientConfig, McpClient, NetworkMcpClient, StaticDiscovery, StaticToken};
use cortex_service::auth::{TokenClaims, mint_hs256};
use cortex_service::{AuthConfig, ServiceConfig};
use cortex_test_support::{TestServer, start_memory};
use serde_json::{Value, json};

mod common;
use common::{fail, rs256};

const SECRET: &str = "a benchmark secret that is longer than 32 bytes";

/// Calls in flight at once, as the target says.
const CONCURRENCY: usize = 32;

/// Slices per round and service (see the module docs).
const SLICES: usize = 10;

/// One service under test and its client.
struct Case {
    name: &'static str,
    client: Arc<NetworkMcpClient>,
    /// An item of the user `bench`, for `get_item`.
    item: Value,
    _server: TestServer,
    _store: tempfile::TempDir,
}

async fn case(name: &'static str, auth: AuthConfig, token: Option<String>) -> Case {
    let (server, store) = start_memory(ServiceConfig {
        auth,
        ..ServiceConfig::default()
    })
    .await;
    let discovery = Arc::new(StaticDiscovery::new().with("memory", server.url("")));
    let config = ClientConfig::builder()
        .max_connections(2 * CONCURRENCY)
        .build()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let mut builder = NetworkMcpClient::builder(discovery).config(config);
    if let Some(token) = token {
        builder = builder.token_provider(Arc::new(StaticToken::new(token)));
    }
    let client = builder.build().unwrap_or_else(|e| fail(&e.to_string()));
    let stored = client
        .call_tool("memory", "store_input", store_arguments())
        .await
        .unwrap_or_else(|e| fail(&format!("{name}: store_input: {e}")));
    Case {
        name,
        client: Arc::new(client),
        item: json!({ "item_id": stored["item_id"] }),
        _server: server,
        _store: store,
    }
}

fn store_arguments() -> Value {
    json!({"user_id": "bench", "input_data": {"content": "a benchmark input"}})
}

/// The CPU time this process has used so far (every thread).
fn cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// How long a slice took, and the CPU time it used.
#[derive(Clone, Copy)]
struct Took {
    wall: Duration,
    cpu: Duration,
}

/// `calls` calls of `tool` with `arguments`, `CONCURRENCY` at a time, each
/// checked; how long they took.
async fn round(case: &Case, tool: &'static str, arguments: &Value, calls: usize) -> Took {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = cpu_time();
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, next, arguments) = (case.client.clone(), next.clone(), arguments.clone());
            let name = case.name;
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < calls {
                    if let Err(error) = client.call_tool("memory", tool, arguments.clone()).await {
                        fail(&format!("{name}: {tool}: {error}"));
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        if let Err(error) = worker.await {
            fail(&format!("a worker failed: {error}"));
        }
    }
    Took {
        wall: started.elapsed(),
        cpu: cpu_time().saturating_sub(cpu),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    if args.iter().any(|a| a == "--help") {
        println!("cargo bench -p cortex-service --bench auth_loopback [-- --quick] [--only TEXT]");
        println!("  --only TEXT  run only the cases whose name contains TEXT (for a profiler:");
        println!("               two runs with the same calls compare sample for sample)");
        return;
    }
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let (store_calls, get_calls) = if quick {
        (1_000, 2_000)
    } else {
        (5_000, 20_000)
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => fail(&format!("cannot start a runtime: {error}")),
    };
    runtime.block_on(async {
        let hs_token = mint_hs256(
            SECRET.as_bytes(),
            &TokenClaims::new("bench", Duration::from_secs(3600)),
        )
        .unwrap_or_else(|e| fail(&e.to_string()));
        let hs_auth = AuthConfig::hs256(SECRET).unwrap_or_else(|e| fail(&e.to_string()));
        let (rs_auth, mut rs_tokens) = rs256(1).await;
        let rs_token = rs_tokens.pop().unwrap_or_else(|| fail("no RS256 token"));
        let mut cases = vec![
            case("auth off (baseline)", AuthConfig::disabled(), None).await,
            case("HS256", hs_auth, Some(hs_token.clone())).await,
            case("RS256, cached key", rs_auth, Some(rs_token)).await,
            // A diagnostic: the client's and the wire's share of the cost.
            case("off, token sent", AuthConfig::disabled(), Some(hs_token)).await,
        ];
        if let Some(only) = &only {
            cases.retain(|c| c.name.contains(only.as_str()));
            if cases.is_empty() {
                fail(&format!("no case's name contains `{only}`"));
            }
        }
        let store = store_arguments();
        let tools: [(&'static str, usize); 2] =
            [("store_input", store_calls), ("get_item", get_calls)];
        // Warm up: connections opened, keys fetched, pages cached.
        for case in &cases {
            for (tool, calls) in tools {
                let arguments = if tool == "store_input" {
                    &store
                } else {
                    &case.item
                };
                round(case, tool, arguments, calls / 10).await;
            }
        }
        let mut best = [[Duration::MAX; 4]; 2];
        let mut best_cpu = [[Duration::MAX; 4]; 2];
        for _ in 0..3 {
            for (t, (tool, calls)) in tools.iter().enumerate() {
                let mut wall = [Duration::ZERO; 4];
                let mut cpu = [Duration::ZERO; 4];
                for _ in 0..SLICES {
                    for (c, case) in cases.iter().enumerate() {
                        let arguments = if *tool == "store_input" {
                            &store
                        } else {
                            &case.item
                        };
                        let took = round(case, tool, arguments, calls / SLICES).await;
                        wall[c] += took.wall;
                        cpu[c] += took.cpu;
                    }
                }
                for c in 0..cases.len() {
                    best[t][c] = best[t][c].min(wall[c]);
                    best_cpu[t][c] = best_cpu[t][c].min(cpu[c]);
                }
            }
        }
        println!(
            "memory over loopback, concurrency {CONCURRENCY}, best of 3 interleaved rounds \
             ({store_calls} store_input, {get_calls} get_item calls per round)"
        );
        let done = |t: usize| (tools[t].1 / SLICES * SLICES) as f64;
        let rate = |t: usize, c: usize| done(t) / best[t][c].as_secs_f64();
        let cpu_us = |t: usize, c: usize| best_cpu[t][c].as_secs_f64() * 1e6 / done(t);
        for (t, (tool, _)) in tools.iter().enumerate() {
            println!(
                "{tool:<22} {:>12} {:>8} {:>14} {:>8}",
                "calls/s", "vs off", "CPU µs/call", "vs off"
            );
            for (c, case) in cases.iter().enumerate() {
                println!(
                    "  {:<20} {:>12.0} {:>7.3}x {:>14.1} {:>7.3}x",
                    case.name,
                    rate(t, c),
                    rate(t, c) / rate(t, 0),
                    cpu_us(t, c),
                    cpu_us(t, 0) / cpu_us(t, c),
                );
            }
        }
    });
}
