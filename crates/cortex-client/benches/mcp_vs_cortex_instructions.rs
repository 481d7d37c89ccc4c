//! Instructions per `tools/call`: standard MCP against the Cortex dialect,
//! on the same in-process memory service (`get_item`, as in
//! `mcp_vs_cortex`), counted by callgrind. Everything the process executes
//! is counted: client, service, their connection tasks and the database's
//! threads. Unlike time, the count barely moves with the machine's load, so
//! it shows what a change to either path saves, down to a percent, and
//! where the rest goes (the profiles are kept for `callgrind_annotate`).
//!
//! ```text
//! cargo bench -p cortex-client --bench mcp_vs_cortex_instructions
//! ```
//!
//! Needs `valgrind` (the Debian package). Each dialect runs twice under
//! callgrind, with `LOW` and `HIGH` calls after the same warm-up; the
//! difference of the two totals over `HIGH - LOW` calls is the cost of a
//! call, with the start-up, the warm-up and the shutdown taken out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dialects;

use cortex_client::McpClient;
use cortex_test_support::callgrind;
use serde_json::json;

const LOW: usize = 100;
const HIGH: usize = 1_100;
/// Set in the runs under callgrind: which dialect, and how many calls.
const DIALECT_VAR: &str = "CORTEX_BENCH_DIALECT";
const CALLS_VAR: &str = "CORTEX_BENCH_CALLS";

fn main() {
    match std::env::var(DIALECT_VAR) {
        Ok(dialect) => {
            let calls = std::env::var(CALLS_VAR).unwrap().parse().unwrap();
            calls_of(&dialect, calls);
        }
        Err(_) => compare(),
    }
}

/// One run under callgrind: the setup, 200 calls of warm-up, then `calls`.
fn calls_of(dialect: &str, calls: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let setup = dialects::setup(10).await;
        let (item, cortex, mcp) = (setup.item, &setup.cortex, &setup.mcp);
        let client = if dialect == "mcp" { mcp } else { cortex };
        for _ in 0..200 + calls {
            client
                .call_tool("memory", "get_item", json!({"item_id": item}))
                .await
                .unwrap();
        }
    });
}

fn compare() {
    if !callgrind::available() {
        eprintln!(
            "valgrind was not found: this bench counts instructions with callgrind \
             (install the `valgrind` package)"
        );
        std::process::exit(2);
    }
    let dir = std::env::temp_dir().join(format!("cortex-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let per_call = |dialect: &str| {
        callgrind::per_unit(LOW, HIGH, |calls| {
            callgrind::instructions(
                &dir.join(format!("callgrind.{dialect}.{calls}")),
                &[
                    (DIALECT_VAR, dialect.to_owned()),
                    (CALLS_VAR, calls.to_string()),
                ],
            )
        })
    };
    println!(
        "get_item on one in-process memory service, instructions per call (client and service counted)"
    );
    let cortex = per_call("cortex");
    println!("cortex dialect  {cortex:>9.0}");
    let mcp = per_call("mcp");
    println!(
        "mcp             {mcp:>9.0}  ({:.2}x the instructions: {:.2}x the calls per instruction)",
        mcp / cortex,
        cortex / mcp
    );
    println!(
        "profiles: {} (callgrind_annotate --inclusive=yes <file>)",
        dir.display()
    );
}
