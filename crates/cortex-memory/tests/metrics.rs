//! The memory service's `GET /metrics` over real loopback HTTP after a few
//! calls: tool counters and latency histograms, reads per registered
//! pattern, errors by code, Prometheus text that reads back line by line,
//! and no user id or content anywhere in it.
#![allow(clippy::unwrap_used)]

use cortex_service::ServiceConfig;
use cortex_test_support::prometheus;
use serde_json::{Value, json};

#[tokio::test]
async fn metrics_after_a_few_calls() {
    let (memory, _dir) = cortex_test_support::start_memory(ServiceConfig::default()).await;
    let http = reqwest::Client::new();
    let call = |tool: &str, args: Value| {
        http.post(memory.url(&format!("/tool/{tool}")))
            .json(&json!({ "arguments": args }))
            .send()
    };
    for (user, content) in [
        ("ann", "first note"),
        ("ann", "second note"),
        ("ben", "third note"),
    ] {
        let response = call(
            "store_input",
            json!({"user_id": user, "input_data": {"content": content}}),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
    }
    let missing = call("get_item", json!({"item_id": 999_999})).await.unwrap();
    assert_eq!(missing.status(), 404);
    let invalid = call("store_input", json!({"user_id": "ann"}))
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    for path in ["history/ann", "history/ben/limit/1", "item/1"] {
        let response = http
            .get(memory.url(&format!("/resource/{path}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }

    let response = http.get(memory.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    let m = prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let tool = |name| [("tool", name)];
    assert_eq!(
        m.value("cortex_service_tool_calls_total", &tool("store_input")),
        Some(4.0)
    );
    assert_eq!(
        m.value(
            "cortex_service_tool_duration_seconds_count",
            &tool("store_input")
        ),
        Some(4.0)
    );
    assert_eq!(
        m.matching(
            "cortex_service_tool_duration_seconds_bucket",
            &tool("store_input")
        )
        .count(),
        cortex_service::metrics::LATENCY_BUCKETS.len() + 1
    );
    assert!(
        m.value(
            "cortex_service_tool_duration_seconds_sum",
            &tool("store_input")
        )
        .is_some_and(|s| s > 0.0)
    );
    assert_eq!(
        m.value(
            "cortex_service_tool_errors_total",
            &[("tool", "store_input"), ("code", "invalid_arguments")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "cortex_service_tool_errors_total",
            &[("tool", "get_item"), ("code", "resource_not_found")]
        ),
        Some(1.0)
    );
    for (pattern, reads) in [
        ("history/{user_id}", 1.0),
        ("history/{user_id}/limit/{n}", 1.0),
        ("item/{item_id}", 1.0),
        ("history/{user_id}/conversation/{conversation_id}", 0.0),
    ] {
        assert_eq!(
            m.value(
                "cortex_service_resource_requests_total",
                &[("pattern", pattern), ("mode", "read")]
            ),
            Some(reads),
            "{pattern}"
        );
    }
    assert_eq!(
        m.value(
            "cortex_service_open_streams",
            &[("pattern", "history/{user_id}/stream")]
        ),
        Some(0.0)
    );
    assert!(
        m.value("cortex_service_open_connections", &[])
            .is_some_and(|n| n >= 1.0)
    );
    for secret in ["ann", "ben", "note"] {
        assert!(!text.contains(secret), "`{secret}` leaked into:\n{text}");
    }
}
