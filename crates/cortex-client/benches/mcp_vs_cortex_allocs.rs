//! Heap allocations per `tools/call`: standard MCP against the Cortex
//! dialect, on the same in-process memory service (`get_item`, as in
//! `mcp_vs_cortex`). Counted: everything the process allocates over N calls
//! of each dialect, after a warm-up: client, service and their connection
//! tasks, on one current-thread runtime so that the count does not depend
//! on scheduling. Unlike time, the count is the same from run to run on a
//! busy machine, so it shows what a change to either path saves.
//!
//! ```text
//! cargo bench -p cortex-client --bench mcp_vs_cortex_allocs
//! ```
#![allow(clippy::unwrap_used)]

mod dialects;

use std::alloc::System;

use cortex_client::{McpClient, NetworkMcpClient};
use serde_json::json;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CALLS: usize = 2_000;

/// Allocations (with reallocations) and bytes asked for, per call.
async fn count(client: &NetworkMcpClient, item: i64) -> (f64, f64) {
    let call = || client.call_tool("memory", "get_item", json!({"item_id": item}));
    for _ in 0..200 {
        call().await.unwrap();
    }
    let region = Region::new(GLOBAL);
    for _ in 0..CALLS {
        call().await.unwrap();
    }
    let stats = region.change();
    let calls = CALLS as f64;
    (
        (stats.allocations + stats.reallocations) as f64 / calls,
        (stats.bytes_allocated as f64 + stats.bytes_reallocated.max(0) as f64) / calls,
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let setup = dialects::setup(10).await;
        let (item, cortex, mcp) = (setup.item, &setup.cortex, &setup.mcp);
        let (cortex_allocs, cortex_bytes) = count(cortex, item).await;
        let (mcp_allocs, mcp_bytes) = count(mcp, item).await;
        println!("get_item on one in-process memory service, {CALLS} calls each (client and service counted)");
        println!("cortex dialect  {cortex_allocs:>7.1} allocs/call {cortex_bytes:>8.0} bytes/call");
        println!(
            "mcp             {mcp_allocs:>7.1} allocs/call {mcp_bytes:>8.0} bytes/call  ({:.2}x allocs, {:.2}x bytes)",
            mcp_allocs / cortex_allocs,
            mcp_bytes / cortex_bytes
        );
    });
}
