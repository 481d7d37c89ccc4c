//! A recovered service is used again at once: a real memory service stops,
//! the client's breaker opens (reset timeout 30 s), memory comes back on the
//! same port with the same database, and the first call through the client
//! succeeds within about one health-check interval, because the passing
//! active check half-opens the breaker. The gap is measured and printed.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cortex_client::{McpClient, McpError, NetworkMcpClient, StaticDiscovery};
use cortex_discovery::{Endpoint, HealthChecked, HealthConfig, ServiceDiscovery};
use cortex_resilience::breaker::BreakerState;
use cortex_service::ServiceConfig;
use cortex_test_support::TestServer;
use serde_json::{Value, json};
use tokio::time::Instant;

/// What the breaker would wait without the health signal.
const RESET_TIMEOUT: Duration = Duration::from_secs(30);
/// How often memory's health is checked.
const HEALTH_INTERVAL: Duration = Duration::from_millis(200);
/// The bound asserted on the gap: far below `RESET_TIMEOUT`, and generous
/// for a loaded machine (the expected gap is about one `HEALTH_INTERVAL`).
const GAP_BOUND: Duration = Duration::from_secs(5);

/// The memory service over the SQLite file `db`, on `listener`.
async fn memory_on(listener: tokio::net::TcpListener, db: &Path) -> TestServer {
    let store = cortex_memory::store::Store::open(db).await.unwrap();
    let service = cortex_memory::service::build(store).unwrap();
    TestServer::start_on(listener, service, ServiceConfig::default())
}

/// Binds `addr` again, retrying briefly while the old socket lets go of it.
async fn bind_again(addr: SocketAddr) -> tokio::net::TcpListener {
    let started = Instant::now();
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                eprintln!("binding {addr} again: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

/// Stops memory under `discovery`'s client until its breaker is open,
/// restarts it, and returns how long after memory answered `/health` again
/// the first call through the client succeeded (at most `give_up`).
async fn recovery_gap(
    discovery: impl FnOnce(&str) -> Arc<dyn ServiceDiscovery>,
    give_up: Duration,
) -> (Duration, NetworkMcpClient) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("memory.sqlite3");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let memory = memory_on(listener, &db).await;
    let url = memory.url("");

    let config = common::fast_config()
        .max_retries(0)
        .failure_threshold(2)
        .reset_timeout(RESET_TIMEOUT)
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let client = NetworkMcpClient::builder(discovery(&url))
        .config(config)
        .build()
        .unwrap();
    let stored = client
        .call_tool(
            "memory",
            "store_input",
            json!({"user_id": "u1", "input_data": {"content": "before the outage"}}),
        )
        .await
        .unwrap();
    let item_id = stored["item_id"].clone();
    let get = |client: &NetworkMcpClient| {
        let client = client.clone();
        let item_id = item_id.clone();
        async move {
            client
                .call_tool("memory", "get_item", json!({ "item_id": item_id }))
                .await
        }
    };
    get(&client).await.unwrap();

    // Memory stops; calls fail until the breaker opens.
    memory.shutdown(Duration::from_secs(10)).await;
    let started = Instant::now();
    loop {
        match get(&client).await {
            Err(McpError::CircuitOpen { retry_after, .. }) => {
                assert!(retry_after > RESET_TIMEOUT / 2, "{retry_after:?}");
                break;
            }
            Err(_) => {}
            Ok(value) => panic!("memory is stopped, yet the call answered {value}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the breaker never opened"
        );
    }
    // Down for a while: several health checks fail, and calls keep failing
    // (a check that passed just before memory stopped may let one probe
    // through; it fails and re-opens the breaker).
    let down = Instant::now();
    while down.elapsed() < 5 * HEALTH_INTERVAL {
        assert!(get(&client).await.is_err(), "memory is stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.endpoint_status()[0].breaker, BreakerState::Open);

    // Memory comes back on the same port with the same database.
    let memory = memory_on(bind_again(addr).await, &db).await;
    let endpoint = Endpoint::new(&url);
    let started = Instant::now();
    while let Err(reason) = cortex_discovery::health::check(&endpoint, Duration::from_secs(1)).await
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "memory does not answer /health: {reason}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = Instant::now();
    let (mut refused, mut failed) = (0_u32, Vec::new());
    let answered: Value = loop {
        match get(&client).await {
            Ok(value) => break value,
            Err(McpError::CircuitOpen { .. }) => refused += 1,
            // Not expected, but not what this test is about.
            Err(other) => failed.push(other.to_string()),
        }
        if back.elapsed() >= give_up {
            break Value::Null;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let gap = back.elapsed();
    println!(
        "memory answered /health again; the first successful call came {gap:?} later \
         ({refused} calls refused by the open breaker in between, other failures {failed:?}; \
         reset_timeout {RESET_TIMEOUT:?})"
    );
    if !answered.is_null() {
        assert!(
            answered.to_string().contains("before the outage"),
            "{answered}"
        );
        assert_eq!(client.endpoint_status()[0].breaker, BreakerState::Closed);
    }
    memory.shutdown(Duration::from_secs(10)).await;
    (gap, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_health_check_half_opens_the_breaker_long_before_reset_timeout() {
    let health = HealthConfig {
        interval: HEALTH_INTERVAL,
        timeout: Duration::from_secs(1),
        ..HealthConfig::default()
    };
    let (gap, client) = recovery_gap(
        |url| {
            Arc::new(HealthChecked::new(
                StaticDiscovery::new().with("memory", url),
                health,
            ))
        },
        RESET_TIMEOUT + Duration::from_secs(5),
    )
    .await;
    assert!(
        gap < GAP_BOUND,
        "memory was back but the client kept failing for {gap:?} (health interval {HEALTH_INTERVAL:?}, reset_timeout {RESET_TIMEOUT:?})"
    );
    // Closed -> Open -> HalfOpen (early) -> Closed, each counted.
    let transitions = client.metrics().transitions();
    let count = |state| {
        transitions
            .get(&("memory".to_string(), state))
            .copied()
            .unwrap_or(0)
    };
    assert!(count("open") >= 1, "{transitions:?}");
    assert!(count("half_open") >= 1, "{transitions:?}");
    assert_eq!(count("closed"), 1, "{transitions:?}");
}

/// The same story without active health checks: the breaker waits out
/// `reset_timeout`, so the gap is most of 30 s. Ignored (it takes that
/// long); run it with `--ignored` to see the figure this change improves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes about 30 s: the behaviour without health checks, for comparison"]
async fn without_health_checks_the_breaker_waits_out_reset_timeout() {
    let (gap, _) = recovery_gap(
        |url| Arc::new(StaticDiscovery::new().with("memory", url)),
        RESET_TIMEOUT + Duration::from_secs(5),
    )
    .await;
    assert!(gap > RESET_TIMEOUT / 2, "{gap:?}");
}
