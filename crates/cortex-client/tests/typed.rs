//! The typed memory client and `call_batch`, over both implementations.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use cortex_client::{
    BatchCall, ClientConfig, McpClient, McpError, MemoryServiceClient, call_batch,
};
use cortex_service::{InProcessMcpClient, ServiceConfig};
use cortex_test_support::{memory_service, start_memory};
use futures::StreamExt;
use serde_json::{Map, json};

async fn exercise(client: Arc<dyn McpClient>) {
    let memory = MemoryServiceClient::new(client.clone());
    // An id with characters that need encoding stays one segment.
    let user = "ann smith/42%";
    let receipt = memory
        .store_input(user, json!({"message": "hello", "conversation_id": "c 1"}))
        .await;
    // `/` is not allowed in a user id: the service says so, by field.
    assert!(
        matches!(receipt, Err(McpError::Tool { ref details, .. }) if details["field"] == "user_id")
    );
    let user = "ann smith 42%";
    let first = memory
        .store_input(user, json!({"message": "hello", "conversation_id": "c 1"}))
        .await
        .unwrap();
    assert_eq!(
        (first.status.as_str(), first.user_id.as_str()),
        ("stored", user)
    );
    let second = memory
        .store_input(user, json!({"content": "again"}))
        .await
        .unwrap();
    assert!(second.item_id > first.item_id);
    assert_eq!(memory.get_history(user).await.unwrap().len(), 2);
    assert_eq!(
        memory.get_recent(user, 1).await.unwrap()[0]["content"],
        "again"
    );
    assert_eq!(
        memory.get_conversation(user, "c 1").await.unwrap()[0]["content"],
        "hello"
    );
    let mut changes = Map::new();
    changes.insert("content".into(), json!("changed"));
    assert_eq!(
        memory.update_item(first.item_id, changes).await.unwrap()["content"],
        "changed"
    );
    let mut stream = memory.stream_history(user).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.data["item_id"], first.item_id);
    memory.delete_item(first.item_id).await.unwrap();
    assert!(matches!(
        memory.get_item(first.item_id).await,
        Err(McpError::Tool { status: 404, .. })
    ));

    let calls = (0..20)
        .map(|i| {
            if i == 7 {
                BatchCall::new("memory", "get_item", json!({"item_id": "not a number"}))
            } else {
                BatchCall::new(
                    "memory",
                    "store_input",
                    json!({"user_id": "batch", "input_data": {"content": format!("b{i}")}}),
                )
            }
        })
        .collect();
    let results = call_batch(client.as_ref(), calls, 4).await;
    assert_eq!(results.len(), 20);
    assert!(results[7].is_err(), "the bad call fails alone");
    let ids: Vec<i64> = results
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 7)
        .map(|(_, r)| r.as_ref().unwrap()["item_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 19);
    let history = memory.get_history("batch").await.unwrap();
    assert_eq!(history.len(), 19);
    // Page by page, newest first, until the empty page.
    let mut paged = Vec::new();
    let mut before = None;
    let mut sizes = Vec::new();
    for _ in 0..10 {
        let page = memory
            .get_history_page("batch", before, Some(7))
            .await
            .unwrap();
        sizes.push(page.items.len());
        paged.extend(page.items);
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(sizes, [7, 7, 5, 0]);
    assert_eq!(paged, history);

    // The caller's key: a repeat (a restarted caller draining its queue)
    // stores nothing and gets the first receipt; another key stores anew.
    let keyed = "keyed user";
    let first = memory
        .store_input_with_key(keyed, json!({"content": "once"}), "input-1")
        .await
        .unwrap();
    let repeat = memory
        .store_input_with_key(keyed, json!({"content": "once"}), "input-1")
        .await
        .unwrap();
    assert_eq!(repeat.item_id, first.item_id);
    let other = memory
        .store_input_with_key(keyed, json!({"content": "twice"}), "input-2")
        .await
        .unwrap();
    assert_ne!(other.item_id, first.item_id);
    assert_eq!(memory.get_history(keyed).await.unwrap().len(), 2);
}

#[tokio::test]
async fn typed_memory_client_over_the_network() {
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let client = common::client_for(&server.url(""), common::fast_config().build().unwrap());
    exercise(Arc::new(client)).await;
}

#[tokio::test]
async fn typed_memory_client_in_process() {
    let (service, _dir) = memory_service().await;
    let client = InProcessMcpClient::new();
    client.register(service);
    exercise(Arc::new(client)).await;
}

/// A key HTTP cannot carry (a line break) is refused before anything is
/// sent, naming what is wrong; nothing listens at the address, so a sent
/// request would have been a connection error instead.
#[tokio::test]
async fn an_idempotency_key_http_cannot_carry_is_refused_before_sending() {
    let url = format!("http://127.0.0.1:{}", common::dead_port());
    let client = common::client_for(&url, ClientConfig::default());
    let memory = MemoryServiceClient::new(Arc::new(client));
    let refused = memory
        .store_input_with_key("u1", json!({"content": "x"}), "line\nbreak")
        .await;
    assert!(
        matches!(&refused, Err(McpError::InvalidRequest { reason, .. })
            if reason.contains("idempotency key")),
        "{refused:?}"
    );
}
