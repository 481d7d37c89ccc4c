//! The pool's hard cap, seen from the service's side of the wire.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cortex_client::McpClient;
use cortex_service::ServiceConfig;
use cortex_test_support::proxy::TcpProxy;
use cortex_test_support::start_memory;
use futures::StreamExt;
use serde_json::json;

#[tokio::test]
async fn two_thousand_calls_at_concurrency_64_never_open_more_than_4_connections() {
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let proxy = TcpProxy::start(server.addr).await;
    let config = common::fast_config()
        .max_connections(4)
        .pool_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let client = common::client_for(&proxy.url(""), config);
    let id = client
        .call_tool(
            "memory",
            "store_input",
            json!({"user_id": "u1", "input_data": {"content": "x"}}),
        )
        .await
        .unwrap()["item_id"]
        .as_i64()
        .unwrap();
    let results: Vec<_> = futures::stream::iter(0..2_000)
        .map(|_| {
            let client = client.clone();
            async move {
                client
                    .call_tool("memory", "get_item", json!({"item_id": id}))
                    .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    cortex_test_support::assert_none_failed(&results);
    assert!(
        proxy.max_open() <= 4,
        "the service saw {} connections at once",
        proxy.max_open()
    );
    assert!(proxy.max_open() >= 1);
    assert!(
        proxy.accepted() <= 4,
        "connections are reused, not re-dialled: {}",
        proxy.accepted()
    );
}

#[tokio::test]
async fn five_hundred_streams_dropped_after_their_first_event_leave_no_connection() {
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let proxy = TcpProxy::start(server.addr).await;
    // HTTP/1.1: a connection per stream (`stream_http2.rs` has HTTP/2's).
    let config = common::fast_config()
        .stream_http2(false)
        .max_connections(50)
        .pool_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let client = common::client_for(&proxy.url(""), config);
    client
        .call_tool(
            "memory",
            "store_input",
            json!({"user_id": "u1", "input_data": {"content": "x"}}),
        )
        .await
        .unwrap();
    let outcomes: Vec<bool> = futures::stream::iter(0..500)
        .map(|_| {
            let client = client.clone();
            async move {
                let mut stream = client
                    .stream_resource("memory", "history/u1/stream")
                    .await
                    .unwrap();
                let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
                matches!(first, Ok(Some(Ok(_))))
                // dropped here, mid-stream
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert!(
        outcomes.iter().all(|ok| *ok),
        "every stream got its first event"
    );
    assert!(proxy.max_open() <= 50, "cap held: {}", proxy.max_open());
    assert!(
        proxy.wait_open_at_most(0, Duration::from_secs(5)).await,
        "{} connections left open",
        proxy.open()
    );
    let status = client.endpoint_status();
    assert_eq!(status[0].pool.in_use, 0);
    assert_eq!(status[0].pool.open, 0);
}

#[tokio::test]
async fn idle_connections_are_closed_after_idle_timeout() {
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let proxy = TcpProxy::start(server.addr).await;
    let config = common::fast_config()
        .max_connections(8)
        .idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = common::client_for(&proxy.url(""), config);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.read_resource("memory", "history/u1").await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert!(proxy.open() >= 1, "connections stay open for reuse");
    let open_before = proxy.open();
    assert!(
        proxy
            .wait_open_at_most(0, Duration::from_millis(300 + 1_000))
            .await,
        "{} of {open_before} idle connections still open",
        proxy.open()
    );
    // The pool dials again when needed.
    client.read_resource("memory", "history/u1").await.unwrap();
}

#[tokio::test]
async fn a_cancelled_call_returns_no_connection_to_the_pool_half_read() {
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let proxy = TcpProxy::start(server.addr).await;
    let config = common::fast_config().max_connections(2).build().unwrap();
    let client = common::client_for(&proxy.url(""), config);
    for _ in 0..20 {
        let call = client.read_resource("memory", "history/u1");
        // Cancel some calls at random points.
        let _ = tokio::time::timeout(Duration::from_micros(200), call).await;
    }
    for _ in 0..20 {
        client.read_resource("memory", "history/u1").await.unwrap();
    }
    assert!(proxy.max_open() <= 2);
    assert_eq!(client.endpoint_status()[0].pool.in_use, 0);
}
