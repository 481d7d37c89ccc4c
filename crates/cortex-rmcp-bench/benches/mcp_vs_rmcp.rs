//! `tools/call` over MCP (Streamable HTTP, loopback): Cortex's network
//! client and service kit against rmcp's client and server, the official
//! Rust SDK, on the same tool, and each client against each server.
//!
//! ```text
//! cargo bench -p cortex-rmcp-bench --bench mcp_vs_rmcp                     # time
//! cargo bench -p cortex-rmcp-bench --bench mcp_vs_rmcp -- --instructions   # callgrind
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_client::discovery::{Endpoint, Protocol};
use cortex_client::{ClientConfig, McpClient, NetworkMcpClient, StaticDiscovery};
use cortex_service::{Service, ServiceConfig, Tool};
use cortex_test_support::{TestServer, callgrind};
use futures::StreamExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ErrorData, ProtocolVersion,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::{MaybeSendFuture, RequestContext, RoleClient, RoleServer, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ClientLifecycleMode, ClientServiceExt, ServerHandler};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Set in the runs under callgrind: which pairing, and how many calls.
const PAIRING_VAR: &str = "CORTEX_BENCH_PAIRING";
const CALLS_VAR: &str = "CORTEX_BENCH_CALLS";

/// What the tool returns on both servers.
fn item() -> Value {
    json!({
        "content": "x",
        "content_type": "text/plain",
        "conversation_id": null,
        "created_at": "2026-12-05T04:31:46.381Z",
        "input_data": {"content": "x"},
        "item_id": 1,
        "timestamp": "2026-12-05T04:31:46.381Z",
        "updated_at": null,
        "user_id": "u1"
    })
}

/// The Cortex service kit serving `item`.
async fn cortex_server() -> TestServer {
    let service = Service::builder("bench", "1")
        .tool(Tool::new(
            "item",
            "Returns a fixed item.",
            json!({"type": "object", "properties": {"item_id": {"type": "integer"}}}),
            |_ctx, _args| async { Ok(item()) },
        ))
        .build()
        .unwrap();
    TestServer::start(service, ServiceConfig::default()).await
}

/// rmcp's server serving `item`.
#[derive(Clone)]
struct ItemServer;

impl ServerHandler for ItemServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    fn call_tool(
        &self,
        _request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<CallToolResponse, ErrorData>> + MaybeSendFuture + '_ {
        std::future::ready(Ok(CallToolResult::structured(item()).into()))
    }
}

/// rmcp's server on loopback (TCP_NODELAY, as the kit): its `/mcp` URL.
async fn rmcp_server(stop: &CancellationToken) -> String {
    use axum::serve::ListenerExt;
    let service: StreamableHttpService<ItemServer, LocalSessionManager> =
        StreamableHttpService::new(
            || Ok(ItemServer),
            Default::default(),
            StreamableHttpServerConfig::default()
                .with_legacy_session_mode(false)
                .with_json_response(true)
                .with_cancellation_token(stop.child_token()),
        );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let stop = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled_owned().await })
            .await;
    });
    url
}

enum Client {
    Cortex(NetworkMcpClient),
    Rmcp(RunningService<RoleClient, rmcp::model::ClientConfig>),
}

impl Client {
    async fn cortex(url: &str) -> Self {
        let discovery = StaticDiscovery::new();
        discovery.register(
            "bench",
            vec![Endpoint::new(url.to_owned()).with_protocol(Protocol::Mcp)],
        );
        let config = ClientConfig::builder()
            .max_connections(32)
            .pool_timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self::Cortex(
            NetworkMcpClient::builder(Arc::new(discovery))
                .config(config)
                .build()
                .unwrap(),
        )
    }

    async fn rmcp(url: &str) -> Self {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(url.to_owned()),
        );
        let client = rmcp::model::ClientConfig::default()
            .serve_with_lifecycle(
                transport,
                ClientLifecycleMode::Auto {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                    legacy_version: Some(ProtocolVersion::V_2025_11_25),
                },
            )
            .await
            .expect("rmcp's client starts");
        Self::Rmcp(client)
    }

    /// One `tools/call` of `item`: its structured value.
    async fn call(&self) -> Value {
        match self {
            Self::Cortex(client) => client
                .call_tool("bench", "item", json!({"item_id": 1}))
                .await
                .unwrap(),
            Self::Rmcp(client) => {
                let arguments = json!({"item_id": 1}).as_object().cloned().unwrap();
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
    _stop: tokio_util::sync::DropGuard,
    clients: Vec<Client>,
}

async fn setup() -> Setup {
    let cortex = cortex_server().await;
    let stop = CancellationToken::new();
    let rmcp_url = rmcp_server(&stop).await;
    let cortex_url = cortex.url("/mcp");
    let mut clients = Vec::new();
    for pairing in PAIRINGS {
        let url = if pairing.cortex_server {
            &cortex_url
        } else {
            &rmcp_url
        };
        let client = if pairing.cortex_client {
            Client::cortex(url).await
        } else {
            Client::rmcp(url).await
        };
        assert_eq!(client.call().await, item(), "{}", pairing.name);
        clients.push(client);
    }
    Setup {
        _cortex: cortex,
        _stop: stop.drop_guard(),
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
