//! `tools/call` over standard MCP against the Cortex dialect, on the same
//! memory service in the same run: the network client calls `get_item`
//! through `/mcp` (sessions, JSON-RPC) and through `POST /tool/get_item`.
//! Run: `cargo bench -p cortex-client --bench mcp_vs_cortex` (`-- --quick`
//! for a short run; `-- --only mcp` or `-- --only cortex` runs one dialect
//! alone, for a profile of it).
//!
//! The ratio is the median over many short pairs of adjacent runs, one of
//! each dialect: on a shared machine whose speed drifts over seconds, two
//! runs seconds apart see the same machine, and a median ignores the pairs
//! a burst of other work hit.
#![allow(clippy::unwrap_used)]

mod dialects;

use std::time::{Duration, Instant};

use cortex_client::{McpClient, NetworkMcpClient};
use futures::StreamExt;
use serde_json::json;

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
    let (pairs, calls) = if quick { (3, 2_000) } else { (15, 4_000) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let setup = dialects::setup(32).await;
        let (item, cortex, mcp) = (setup.item, &setup.cortex, &setup.mcp);
        // Warm both (sessions, connections).
        run(cortex, item, 200, 8).await;
        run(mcp, item, 200, 8).await;
        println!(
            "get_item on one memory service: {pairs} pairs of adjacent runs of {calls} calls \
             (order alternating); the ratio is the median of the pairs' ratios"
        );
        println!(
            "{:<12} {:>16} {:>10} {:>16} {:>10} {:>8} {:>15}",
            "concurrency",
            "cortex calls/s",
            "p50",
            "mcp calls/s",
            "p50",
            "mcp/cortex",
            "pairs' range"
        );
        for concurrency in [1usize, 32] {
            // Each pair's two runs are seconds apart, so a drift in the
            // machine's speed moves both: the median of the pairs' ratios
            // is steadier than a ratio of two bests taken minutes apart.
            let mut best = [(0.0f64, Duration::MAX); 2];
            let mut ratios = Vec::with_capacity(pairs);
            for pair in 0..pairs {
                let mut rates = [0.0f64; 2];
                let order: [usize; 2] = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
                for i in order {
                    if !runs[i] {
                        continue;
                    }
                    let c = if i == 0 { cortex } else { mcp };
                    let (rate, p50) = run(c, item, calls, concurrency).await;
                    rates[i] = rate;
                    if rate > best[i].0 {
                        best[i] = (rate, p50);
                    }
                }
                if rates.iter().all(|r| *r > 0.0) {
                    ratios.push(rates[1] / rates[0]);
                }
            }
            ratios.sort_by(f64::total_cmp);
            // `--only` runs one dialect: no ratio.
            let ratio = match (ratios.first(), ratios.get(ratios.len() / 2), ratios.last()) {
                (Some(low), Some(median), Some(high)) => {
                    format!("{median:>9.2}x {low:>7.2}-{high:.2}x")
                }
                _ => format!("{:>9} {:>15}", "-", "-"),
            };
            println!(
                "{concurrency:<12} {:>16.0} {:>10.1?} {:>16.0} {:>10.1?} {ratio}",
                best[0].0, best[0].1, best[1].0, best[1].1,
            );
        }
    });
}
