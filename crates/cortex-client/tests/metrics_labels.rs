//! The client's metric labels are bounded: a thousand users' reads and
//! streams, and their streams' reconnects, add no series, and no user id
//! reaches the exposition. Against a real memory service on loopback,
//! behind a proxy that can cut every connection.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use cortex_client::{McpClient, McpError, NetworkMcpClient};
use cortex_service::ServiceConfig;
use cortex_test_support::prometheus;
use cortex_test_support::proxy::TcpProxy;
use futures::StreamExt;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);
const USERS: usize = 1000;
/// Users whose streams are cut and resumed at once (each holds one of the
/// pool's connections).
const RECONNECTING: usize = 20;

/// The number of series in the exposition, and the (service, operation)
/// pairs of the snapshot.
fn series(client: &NetworkMcpClient) -> (usize, BTreeSet<(String, String)>) {
    let text = client.prometheus();
    let parsed = prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (
        parsed.series(),
        client.metrics().snapshot().into_keys().collect(),
    )
}

/// Everything a user does that names them in a URI: reads of two history
/// patterns and of an item (missing: an error), and a stream opened and
/// dropped.
async fn one_user(client: &NetworkMcpClient, user: &str, item: usize) {
    client
        .read_resource("memory", &format!("history/{user}"))
        .await
        .unwrap();
    client
        .read_resource("memory", &format!("history/{user}/limit/3"))
        .await
        .unwrap();
    let missing = client
        .read_resource("memory", &format!("item/{}", 1_000_000 + item))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, McpError::ResourceNotFound { .. }),
        "{missing}"
    );
    let events = client
        .stream_resource("memory", &format!("history/{user}/stream"))
        .await
        .unwrap();
    drop(events);
}

/// Opens the streams of `users`, cuts every connection, and waits until
/// each stream, resumed, delivers an item stored after the cut.
async fn cut_and_resume(client: &NetworkMcpClient, proxy: &TcpProxy, users: &[String]) {
    let mut streams = Vec::new();
    for user in users {
        common::store(client, user, "before the cut").await;
        let mut events = client
            .stream_resource("memory", &format!("history/{user}/stream"))
            .await
            .unwrap();
        tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        streams.push(events);
    }
    proxy.cut_all();
    for (user, events) in users.iter().zip(&mut streams) {
        common::store(client, user, "after the cut").await;
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.data["content"], Value::from("after the cut"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_add_no_series() {
    let config = ServiceConfig {
        stream_retry: Duration::from_millis(10),
        ..ServiceConfig::default()
    };
    let (memory, _dir) = cortex_test_support::start_memory(config).await;
    let proxy = TcpProxy::start(memory.addr).await;
    let client = common::client_for(
        &proxy.url(""),
        common::fast_config()
            .max_retries(10)
            .max_connections(RECONNECTING + 5)
            .build()
            .unwrap(),
    );

    // One user first: every series a user can make now exists.
    one_user(&client, "user-0", 0).await;
    cut_and_resume(&client, &proxy, &["user-0".to_string()]).await;
    let (before, pairs_before) = series(&client);
    let snapshot = client.metrics().snapshot();
    let resumed = &snapshot[&("memory".to_string(), "stream:history".to_string())];
    assert!(resumed.retries >= 1, "{snapshot:?}");

    for n in 1..=USERS {
        one_user(&client, &format!("user-{n}"), n).await;
    }
    let reconnecting: Vec<String> = (1..=RECONNECTING).map(|n| format!("user-{n}")).collect();
    cut_and_resume(&client, &proxy, &reconnecting).await;

    let (after, pairs_after) = series(&client);
    assert_eq!(pairs_before, pairs_after);
    assert_eq!(before, after, "series before and after {USERS} users");
    let expected: BTreeSet<(String, String)> =
        ["store_input", "read:history", "read:item", "stream:history"]
            .into_iter()
            .map(|op| ("memory".to_string(), op.to_string()))
            .collect();
    assert_eq!(pairs_after, expected);

    let snapshot = client.metrics().snapshot();
    let reads = &snapshot[&("memory".to_string(), "read:item".to_string())];
    assert_eq!(reads.calls, USERS as u64 + 1);
    assert_eq!(
        reads.errors.get("resource_not_found"),
        Some(&(USERS as u64 + 1))
    );
    let resumed = &snapshot[&("memory".to_string(), "stream:history".to_string())];
    assert!(resumed.retries > RECONNECTING as u64, "{snapshot:?}");

    let text = client.prometheus();
    assert!(!text.contains("user-"), "a user id leaked:\n{text}");
    assert!(
        text.contains(
            "cortex_client_errors_total{service=\"memory\",operation=\"read:item\",kind=\"resource_not_found\"} 1001"
        ),
        "{text}"
    );
}
