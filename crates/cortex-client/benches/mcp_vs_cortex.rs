//! `tools/call` over standard MCP against the Cortex dialect, on the same
//! memory service in the same run: the network client calls `get_item`
//! through `/mcp` (sessions, JSON-RPC) and through `POST /tool/get_item`.
//! Run: `cargo bench -p cortex-client --bench mcp_vs_cortex` (`-- --quick`
//! for a short run; `-- --only mcp` or `-- --only cortex` runs one dialect
//! alone, for a profile of it).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_client::discovery::{Endpoint, Protocol};
use cortex_client::{ClientConfig, McpClient, NetworkMcpClient, StaticDiscovery};
use cortex_service::ServiceConfig;
use futures::StreamExt;
use serde_json::json;

fn client(url: String, protocol: Protocol, connections: usize) -> NetworkMcpClient {
    let discovery = StaticDiscovery::new();
    discovery.register("memory", vec![Endpoint::new(url).with_protocol(protocol)]);
    let config = ClientConfig::builder()
        .max_connections(connections)
        .pool_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    NetworkMcpClient::builder(Arc::new(discovery))
        .config(config)
        .build()
        .unwrap()
}

/// Calls/s and p50 of `calls` get_item calls at `concurrency`.
async fn run(
    client: &NetworkMcpClient,
    item: i64,
    calls: usize,
    concurrency: usize,
) -> (f64, Duration) {
    let started = Instant::now();
    let mut latencies: Vec<Duration> = futures::stream::iter(0..calls)
        .map(|_| async move {
            let t = Instant::now();
            client
                .call_tool("memory", "get_item", json!({"item_id": item}))
                .await
                .unwrap();
            t.elapsed()
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    (
        calls as f64 / elapsed.as_secs_f64(),
        latencies[latencies.len() / 2],
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let runs = [only != Some("mcp"), only != Some("cortex")];
    let calls = if quick { 2_000 } else { 20_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (server, _dir) = cortex_test_support::start_memory(ServiceConfig::default()).await;
        let cortex = client(server.url(""), Protocol::Cortex, 32);
        let mcp = client(server.url("/mcp"), Protocol::Mcp, 32);
        let stored = cortex
            .call_tool(
                "memory",
                "store_input",
                json!({"user_id": "u1", "input_data": {"content": "x"}}),
            )
            .await
            .unwrap();
        let item = stored["item_id"].as_i64().unwrap();
        // Warm both (sessions, connections).
        run(&cortex, item, 200, 8).await;
        run(&mcp, item, 200, 8).await;
        println!("get_item on one memory service, {calls} calls each, best of 3 alternating runs");
        println!(
            "{:<12} {:>16} {:>10} {:>16} {:>10} {:>8}",
            "concurrency", "cortex calls/s", "p50", "mcp calls/s", "p50", "mcp/cortex"
        );
        for concurrency in [1usize, 32] {
            let mut best = [(0.0f64, Duration::MAX); 2];
            for _ in 0..3 {
                for (i, c) in [&cortex, &mcp].into_iter().enumerate() {
                    if !runs[i] {
                        continue;
                    }
                    let (rate, p50) = run(c, item, calls, concurrency).await;
                    if rate > best[i].0 {
                        best[i] = (rate, p50);
                    }
                }
            }
            println!(
                "{concurrency:<12} {:>16.0} {:>10.1?} {:>16.0} {:>10.1?} {:>7.2}x",
                best[0].0,
                best[0].1,
                best[1].0,
                best[1].1,
                best[1].0 / best[0].0
            );
        }
    });
}
