//! One suite, two implementations: what "same interface" means.
//!
//! Every test here runs against `NetworkMcpClient` talking to a real memory
//! service on loopback, and against `InProcessMcpClient` calling the same
//! service's registry directly. Both must give the same answers and the same
//! errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use cortex_client::{McpClient, McpError};
use cortex_proto::ErrorCode;
use cortex_service::InProcessMcpClient;
use cortex_service::ServiceConfig;
use cortex_test_support::{TestServer, memory_service, start_memory};
use futures::StreamExt;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// Keeps the service (and its files) alive for the test.
#[allow(dead_code)]
enum Guard {
    Network(TestServer, tempfile::TempDir),
    InProcess(tempfile::TempDir),
}

async fn network() -> (Arc<dyn McpClient>, Guard) {
    let (server, dir) = start_memory(ServiceConfig::default()).await;
    let client = common::client_for(&server.url(""), common::fast_config().build().unwrap());
    (Arc::new(client), Guard::Network(server, dir))
}

async fn in_process() -> (Arc<dyn McpClient>, Guard) {
    let (service, dir) = memory_service().await;
    let client = InProcessMcpClient::new();
    client.register(service);
    (Arc::new(client), Guard::InProcess(dir))
}

/// Runs `body` against both implementations.
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn network() {
                let (client, _guard) = super::network().await;
                ($body)(client).await;
            }
            #[tokio::test]
            async fn in_process() {
                let (client, _guard) = super::in_process().await;
                ($body)(client).await;
            }
        }
    };
}

both!(
    connect_checks_health,
    |client: Arc<dyn McpClient>| async move {
        client.connect("memory").await.unwrap();
        let err = client.connect("nowhere").await.unwrap_err();
        assert!(
            matches!(err, McpError::ServiceNotFound { ref service, .. } if service == "nowhere"),
            "{err}"
        );
    }
);

both!(
    listings_and_health_are_the_same_through_both,
    |client: Arc<dyn McpClient>| async move {
        let tools = client.list_tools("memory").await.unwrap();
        let names: Vec<&str> = tools.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["delete_item", "get_item", "store_input", "update_item"]
        );
        let store = &tools.tools[2];
        assert_eq!(
            store.input_schema["required"],
            json!(["user_id", "input_data"])
        );
        let resources = client.list_resources("memory").await.unwrap();
        assert!(
            resources
                .resources
                .iter()
                .any(|r| r.uri_template == "history/{user_id}/stream" && r.streaming),
            "{resources:?}"
        );
        let (status, health) = client.health("memory").await.unwrap();
        assert_eq!((status, health.status.as_str()), (200, "healthy"));
        assert_eq!(health.service, "memory");
        assert_eq!(health.checks["database"], "ok");
        let err = client.list_tools("nowhere").await.unwrap_err();
        assert!(matches!(err, McpError::ServiceNotFound { .. }), "{err}");
    }
);

both!(call_tool_returns_the_bare_result, |client: Arc<
    dyn McpClient,
>| async move {
    let id = common::store(&*client, "u1", "hello").await;
    let item = client
        .call_tool("memory", "get_item", json!({"item_id": id}))
        .await
        .unwrap();
    assert_eq!(item["content"], "hello");
    assert_eq!(item["item_id"], id);
});

both!(
    read_resource_returns_content_and_mime_type,
    |client: Arc<dyn McpClient>| async move {
        common::store(&*client, "u1", "one").await;
        common::store(&*client, "u1", "two").await;
        let history = client.read_resource("memory", "history/u1").await.unwrap();
        assert!(
            history.mime_type.starts_with("application/json"),
            "{}",
            history.mime_type
        );
        let contents: Vec<&str> = history
            .content
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["content"].as_str().unwrap())
            .collect();
        assert_eq!(contents, ["two", "one"]);
    }
);

both!(stream_resource_yields_backlog_then_live, |client: Arc<
    dyn McpClient,
>| async move {
    let first = common::store(&*client, "u1", "before").await;
    let mut stream = client
        .stream_resource("memory", "history/u1/stream")
        .await
        .unwrap();
    let event = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.id, Some(first.to_string()));
    assert_eq!(event.event, "item");
    assert_eq!(event.data["content"], "before");
    let second = common::store(&*client, "u1", "live").await;
    let event = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.id, Some(second.to_string()));
    assert_eq!(event.data["content"], "live");
});

both!(finite_stream_of_a_plain_resource_ends, |client: Arc<
    dyn McpClient,
>| async move {
    common::store(&*client, "u1", "a").await;
    common::store(&*client, "u1", "b").await;
    let events: Vec<_> = tokio::time::timeout(
        WAIT,
        client
            .stream_resource("memory", "history/u1")
            .await
            .unwrap()
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let contents: Vec<Value> = events
        .into_iter()
        .map(|e| e.unwrap().data["content"].clone())
        .collect();
    assert_eq!(contents, [json!("b"), json!("a")]);
});

both!(unknown_service_tool_and_resource, |client: Arc<
    dyn McpClient,
>| async move {
    let err = client
        .call_tool("nowhere", "x", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, McpError::ServiceNotFound { .. }), "{err}");
    let err = client
        .call_tool("memory", "no_such_tool", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, McpError::ToolNotFound { ref tool, .. } if tool == "no_such_tool"),
        "{err}"
    );
    assert!(err.to_string().contains("no_such_tool") && err.to_string().contains("memory"));
    let err = client
        .read_resource("memory", "no/such/resource")
        .await
        .unwrap_err();
    assert!(
        matches!(err, McpError::ResourceNotFound { ref uri, .. } if uri == "no/such/resource"),
        "{err}"
    );
    let err = client
        .stream_resource("memory", "no/such/resource")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, McpError::ResourceNotFound { .. }), "{err}");
    let err = client
        .read_resource("memory", "item/424242")
        .await
        .unwrap_err();
    assert!(
        matches!(err, McpError::ResourceNotFound { .. }),
        "a missing item is not found: {err}"
    );
});

both!(service_error_envelope_is_a_tool_error, |client: Arc<
    dyn McpClient,
>| async move {
    let err = client
        .call_tool(
            "memory",
            "store_input",
            json!({"user_id": "u1", "input_data": {}}),
        )
        .await
        .unwrap_err();
    match &err {
        McpError::Tool {
            code,
            details,
            status,
            ..
        } => {
            assert_eq!(*code, ErrorCode::InvalidArguments);
            assert_eq!(details["field"], "input_data.content");
            assert_eq!(*status, 400);
        }
        other => panic!("expected a tool error, got {other}"),
    }
    assert!(!err.is_retryable());
    let err = client
        .call_tool("memory", "store_input", json!([1, 2]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            McpError::Tool {
                code: ErrorCode::InvalidArguments,
                ..
            }
        ),
        "{err}"
    );
});

both!(
    close_ends_the_client,
    |client: Arc<dyn McpClient>| async move {
        common::store(&*client, "u1", "x").await;
        client.close().await;
        let err = client
            .call_tool("memory", "get_item", json!({"item_id": 1}))
            .await
            .unwrap_err();
        assert!(
            matches!(err, McpError::Closed | McpError::ServiceNotFound { .. }),
            "{err}"
        );
    }
);

both!(raw_uris_are_encoded_the_same_way, |client: Arc<
    dyn McpClient,
>| async move {
    // A URI written by hand, with characters that may not stand in a path.
    common::store(&*client, "ann smith?", "hello").await;
    let history = client
        .read_resource("memory", "history/ann smith?")
        .await
        .unwrap();
    assert_eq!(history.content[0]["content"], "hello");
    assert_eq!(history.content[0]["user_id"], "ann smith?");
});
