//! A user with 100,000 items, read through every history URI: each read is
//! one bounded page, and the service's memory stays bounded.
//!
//! Its own test binary: it measures this process's resident memory, where
//! the service runs, so no other test may run beside it. What is measured
//! is the whole test process (service, client and test), from
//! `/proc/self/status`: the peak resident size during the reads (after
//! resetting the peak through `/proc/self/clear_refs`) against the resident
//! size just before them. It runs on SQLite, then on PostgreSQL, one after
//! the other (in one test, so that the two never share the measurement).
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cortex_memory::store::NewItem;
use cortex_service::ServiceConfig;
use cortex_test_support::TestServer;
use cortex_test_support::pg::Backend;
use futures::StreamExt;
use serde_json::{Value, json};

const ITEMS: usize = 100_000;
/// What a read may add to the process's resident memory. One read of the
/// whole history added over 500 MB before reads were paged.
const GROWTH_LIMIT_KB: u64 = 64 * 1024;

/// A field of `/proc/self/status`, in kB.
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status"))
}

/// Resets the peak resident size (`VmHWM`) to the current one; false
/// where the kernel does not allow it.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_item_history_is_read_a_page_at_a_time() {
    read_a_page_at_a_time(Backend::Sqlite).await;
    read_a_page_at_a_time(Backend::Postgres).await;
}

/// The same items the SQLite run stores through the store, written by one
/// statement: one user's stores are serialized on PostgreSQL (each waits
/// for the previous commit), and this test is about reads.
const POSTGRES_FILL: &str = r#"
    INSERT INTO items (user_id, content, content_type, "timestamp", input_data, created_at)
    SELECT 'heavy', c, 'text/plain', t, json_build_object('user_id', 'heavy', 'content', c)::text, t
    FROM (SELECT i, lpad(i::text, 6, '0') || ' ' || repeat('x', 500) AS c,
                 to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS t
          FROM generate_series(0, 99999) AS i) AS rows
    ORDER BY i"#;

async fn read_a_page_at_a_time(backend: Backend) {
    let fixture = backend.store("bounded_reads").await;
    let store = fixture.store.clone();
    // ~1 KB per item as stored (content, and again inside input_data).
    let content = "x".repeat(500);
    let items = match &fixture.schema {
        Some(schema) => {
            schema.execute(POSTGRES_FILL).await;
            0
        }
        None => ITEMS,
    };
    let inserted = futures::stream::iter(0..items)
        .map(|i| {
            let store = store.clone();
            let item = NewItem::new("heavy", format!("{i:06} {content}"));
            async move { store.insert(item).await.map(|_| ()) }
        })
        .buffer_unordered(512)
        .fold(0usize, |n, result| async move {
            result.unwrap();
            n + 1
        });
    let inserted = tokio::time::timeout(Duration::from_secs(600), inserted)
        .await
        .expect("100,000 inserts within the wait");
    assert_eq!(inserted, items);
    let service = cortex_memory::service::build(store).unwrap();
    let server = TestServer::start(service, ServiceConfig::default()).await;
    let http = reqwest::Client::new();
    let read = |uri: String| {
        let request = http.get(server.url(&format!("/resource/{uri}")));
        async move {
            let response = tokio::time::timeout(Duration::from_secs(60), request.send())
                .await
                .expect("a read within the wait")
                .unwrap();
            assert_eq!(response.status(), 200);
            let body = response.bytes().await.unwrap();
            (body.len(), serde_json::from_slice::<Value>(&body).unwrap())
        }
    };

    let peak_reset = reset_peak();
    let before = status_kb("VmRSS:");
    // One read, then ten at once: the attack that took the service from
    // 20 MB to 537 MB, and to 1.28 GB.
    let (bytes, first) = read("history/heavy".into()).await;
    let reads = futures::future::join_all((0..10).map(|_| read("history/heavy".into()))).await;
    let peak = if peak_reset {
        status_kb("VmHWM:")
    } else {
        status_kb("VmRSS:")
    };
    let after = status_kb("VmRSS:");
    let growth = peak.saturating_sub(before);
    eprintln!(
        "resident before the reads {before} kB, peak during them {peak} kB ({}), after {after} kB; \
         first page {bytes} bytes",
        if peak_reset {
            "VmHWM after reset"
        } else {
            "VmRSS after, no peak reset"
        }
    );
    assert!(
        growth < GROWTH_LIMIT_KB,
        "reading the history grew the process by {growth} kB"
    );

    // Each read is the newest page: 100 items, newest first.
    let page = first.as_array().unwrap();
    assert_eq!(page.len(), 100);
    assert!(bytes < 1024 * 1024, "{bytes} bytes");
    assert_eq!(page[0]["item_id"], ITEMS as i64);
    assert!(reads.iter().all(|(_, body)| body == &first));

    // The next page follows the last item's id; pages chain without gaps.
    let last = page[99]["item_id"].as_i64().unwrap();
    let (_, next) = read(format!("history/heavy/before/{last}")).await;
    let next = next.as_array().unwrap();
    assert_eq!(next.len(), 100);
    assert_eq!(next[0]["item_id"], last - 1);
    let (_, ten) = read(format!("history/heavy/before/{last}/limit/10")).await;
    assert_eq!(ten.as_array().unwrap().len(), 10);

    // A count past the maximum page reads the maximum page.
    let (_, many) = read("history/heavy/limit/100000".into()).await;
    assert_eq!(many.as_array().unwrap().len(), 1000);
    // The stream's read (not SSE) is the oldest page.
    let (_, oldest) = read("history/heavy/stream".into()).await;
    let oldest = oldest.as_array().unwrap();
    assert_eq!(oldest.len(), 100);
    assert_eq!(oldest[0]["item_id"], 1);

    // The same pages through /mcp.
    let mcp = |uri: String| {
        http.post(server.url("/mcp"))
            .header("Accept", "application/json, text/event-stream")
            .header("Mcp-Protocol-Version", "2026-07-28")
            .header("Mcp-Method", "resources/read")
            .header("Mcp-Name", &uri)
            .json(&json!({
                "jsonrpc": "2.0", "id": 1, "method": "resources/read",
                "params": {"uri": uri, "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientInfo": {"name": "pager", "version": "0"},
                    "io.modelcontextprotocol/clientCapabilities": {}}}
            }))
            .send()
    };
    let answer: Value = mcp(format!("memory://history/heavy/before/{last}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = answer["result"]["contents"][0]["text"].as_str().unwrap();
    let over_mcp: Value = serde_json::from_str(text).unwrap();
    assert_eq!(over_mcp.as_array().unwrap(), next);
}
