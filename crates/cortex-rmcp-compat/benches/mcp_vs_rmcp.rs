//! `tools/call` over MCP (Streamable HTTP, loopback): Cortex's network
//! client and service kit against rmcp's client and server, the official
//! Rust SDK, on the same tool, and each client against each server.
//!
//! ```text
//! cargo bench -p cortex-rmcp-compat --bench mcp_vs_rmcp                     # time
//! cargo bench -p cortex-rmcp-compat --bench mcp_vs_rmcp -- --instructions   # callgrind
//! ```
//!
//! The tool (`item`) returns the same object on both servers (the shape of
//! a memory item, 9 fields), as `structuredContent` and as its text copy.
//! rmcp's server runs in its fastest setting: no sessions, JSON answers
//! (`legacy_session_mode = false`, `json_response = true`); the kit in its
//! defaults (sessions, the tool's arguments checked against its schema).
//! Each client speaks whatever revision it negotiates with each server.
//!
//! Time: the median over 9 rounds (pairs method, as `mcp_vs_cortex`) of
//! each pairing's calls/s over rmcp's own (rmcp client and server) in the
//! same round, all on one multi-thread runtime; `--quick` for 3 rounds.
//! Instructions: each pairing under callgrind on one current-thread
//! runtime, 100 and 1,100 calls after the same warm-up.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use cortex_client::{McpClient, NetworkMcpClient};
use cortex_rmcp_compat::{SERVICE, cortex_client, cortex_kit, item, rmcp_client, rmcp_server};
use cortex_test_support::{TestServer, callgrind};
use futures::StreamExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use serde_json::{Value, json};

/// Set in the runs under callgrind: which pairing, and how many calls.
const PAIRING_VAR: &str = "CORTEX_BENCH_PAIRING";
const CALLS_VAR: &str = "CORTEX_BENCH_CALLS";

enum Client {
    Cortex(NetworkMcpClient),
    Rmcp(RunningService<RoleClient, rmcp::model::ClientConfig>),
}

impl Client {
    /// One `tools/call` of `item`: its structured value.
    async fn call(&self) -> Value {
        match self {
            Self::Cortex(client) => client
                .call_tool(SERVICE, "item", json!({"item_id": 1}))
                .await
                .unwrap(),
            Self::Rmcp(client) => {
                // Built as the Cortex client's arguments are, not copied.
                let Value::Object(arguments) = json!({"item_id": 1}) else {
                    unreachable!("an object literal")
                };
                client
                    .call_tool(CallToolRequestParams::new("item").with_arguments(arguments))
                    .await
                    .unwrap()
                    .structured_content
                    .unwrap()
            }
        }
    }
}

/// Which client calls which server.
#[derive(Clone, Copy)]
struct Pairing {
    name: &'static str,
    cortex_client: bool,
    cortex_server: bool,
}

const PAIRINGS: [Pairing; 4] = [
    Pairing {
        name: "rmcp client -> rmcp server",
        cortex_client: false,
        cortex_server: false,
    },
    Pairing {
        name: "cortex client -> cortex kit",
        cortex_client: true,
        cortex_server: true,
    },
    Pairing {
        name: "cortex client -> rmcp server",
        cortex_client: true,
        cortex_server: false,
    },
    Pairing {
        name: "rmcp client -> cortex kit",
        cortex_client: false,
        cortex_server: true,
    },
];

/// Both servers, and a client of each kind for each.
struct Setup {
    _cortex: TestServer,
    _rmcp: cortex_rmcp_compat::RmcpServer,
    clients: Vec<Client>,
}

async fn setup() -> Setup {
    let cortex = cortex_kit().await;
    let rmcp = rmcp_server().await;
    let cortex_url = cortex.url("/mcp");
    let mut clients = Vec::new();
    for pairing in PAIRINGS {
        let url = if pairing.cortex_server {
            &cortex_url
        } else {
            &rmcp.url
        };
        let client = if pairing.cortex_client {
            Client::Cortex(cortex_client(url))
        } else {
            Client::Rmcp(rmcp_client(url).await)
        };
        assert_eq!(client.call().await, item(), "{}", pairing.name);
        clients.push(client);
    }
    Setup {
        _cortex: cortex,
        _rmcp: rmcp,
        clients,
    }
}

/// Calls/s of `calls` calls at `concurrency`.
async fn run(client: &Client, calls: usize, concurrency: usize) -> f64 {
    let started = Instant::now();
    futures::stream::iter(0..calls)
        .map(|_| client.call())
        .buffer_unordered(concurrency)
        .for_each(|_| async {})
        .await;
    calls as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn time(quick: bool) {
    let (rounds, calls) = if quick { (3, 1_000) } else { (9, 4_000) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let setup = setup().await;
        println!(
            "tools/call `item` over Streamable HTTP on loopback: {rounds} rounds of {calls} calls per pairing; \
             ratios are medians of each round's calls/s over rmcp's own"
        );
        for concurrency in [1, 32] {
            for client in &setup.clients {
                run(client, 200, concurrency).await;
            }
            let mut rates = vec![Vec::new(); PAIRINGS.len()];
            let mut ratios = vec![Vec::new(); PAIRINGS.len()];
            for round in 0..rounds {
                let mut round_rates = vec![0.0; PAIRINGS.len()];
                // The order turns each round: none always runs first.
                for k in 0..PAIRINGS.len() {
                    let i = (k + round) % PAIRINGS.len();
                    round_rates[i] = run(&setup.clients[i], calls, concurrency).await;
                }
                for i in 0..PAIRINGS.len() {
                    rates[i].push(round_rates[i]);
                    ratios[i].push(round_rates[i] / round_rates[0]);
                }
            }
            println!("concurrency {concurrency}");
            for (i, pairing) in PAIRINGS.iter().enumerate() {
                println!(
                    "  {:<30} {:>8.0} calls/s  {:.2}x",
                    pairing.name,
                    median(rates[i].clone()),
                    median(ratios[i].clone())
                );
            }
        }
    });
}

/// One run under callgrind: the setup, 200 calls of warm-up, then `calls`.
fn calls_of(pairing: usize, calls: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let setup = setup().await;
        let client = &setup.clients[pairing];
        for _ in 0..200 + calls {
            client.call().await;
        }
    });
}

fn instructions() {
    if !callgrind::available() {
        eprintln!(
            "valgrind was not found: --instructions counts with callgrind \
             (install the `valgrind` package)"
        );
        std::process::exit(2);
    }
    let dir = std::env::temp_dir().join(format!("cortex-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "tools/call `item`, instructions per call (client and server in one process, counted by callgrind)"
    );
    let mut rmcp = 0.0;
    for (i, pairing) in PAIRINGS.iter().enumerate() {
        let per_call = callgrind::per_unit(100, 1_100, |calls| {
            callgrind::instructions(
                &dir.join(format!("callgrind.{i}.{calls}")),
                &[(PAIRING_VAR, i.to_string()), (CALLS_VAR, calls.to_string())],
            )
        });
        if i == 0 {
            rmcp = per_call;
        }
        println!(
            "  {:<30} {per_call:>9.0}  ({:.2}x rmcp's calls per instruction)",
            pairing.name,
            rmcp / per_call
        );
    }
    println!(
        "profiles: {} (callgrind_annotate --inclusive=yes <file>)",
        dir.display()
    );
}

fn main() {
    if let (Ok(pairing), Ok(calls)) = (std::env::var(PAIRING_VAR), std::env::var(CALLS_VAR)) {
        calls_of(pairing.parse().unwrap(), calls.parse().unwrap());
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--instructions") {
        instructions();
    } else {
        time(args.iter().any(|a| a == "--quick"));
    }
}
