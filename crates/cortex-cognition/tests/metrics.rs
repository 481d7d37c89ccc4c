//! Cognition's `GET /metrics` over real loopback HTTP: its own tool series,
//! then its memory client's: calls, retries, errors by kind and the breaker
//! state of each memory endpoint.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use cortex_client::{ClientConfig, NetworkMcpClient, StaticDiscovery};
use cortex_cognition::CognitionConfig;
use cortex_service::ServiceConfig;
use cortex_test_support::prometheus::{self, Exposition};
use cortex_test_support::{TestServer, start_memory};
use serde_json::{Value, json};

async fn scrape(http: &reqwest::Client, server: &TestServer) -> (String, Exposition) {
    let text = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let parsed = prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (text, parsed)
}

async fn call(http: &reqwest::Client, server: &TestServer, tool: &str, args: Value) -> Value {
    http.post(server.url(&format!("/tool/{tool}")))
        .json(&json!({ "arguments": args }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn cognition_metrics_include_its_memory_clients_breaker_and_retries() {
    let (memory, _dir) = start_memory(ServiceConfig::default()).await;
    let memory_url = memory.url("");
    let discovery = Arc::new(StaticDiscovery::new().with("memory", &memory_url));
    let config = ClientConfig::builder()
        .request_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_millis(500))
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(20))
        .max_retries(1)
        .failure_threshold(2)
        .reset_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let client = NetworkMcpClient::builder(discovery)
        .config(config)
        .build()
        .unwrap();
    let service = cortex_cognition::build_networked(client, CognitionConfig::default()).unwrap();
    let cognition = TestServer::start(service, ServiceConfig::default()).await;
    let http = reqwest::Client::new();

    http.post(memory.url("/tool/store_input"))
        .json(&json!({"arguments": {"user_id": "dora", "input_data": {"content": "secret plans"}}}))
        .send()
        .await
        .unwrap();
    let answer = call(&http, &cognition, "get_context", json!({"user_id": "dora"})).await;
    assert_eq!(answer["result"]["count"], 1, "{answer}");

    let (text, m) = scrape(&http, &cognition).await;
    let endpoint = [("service", "memory"), ("endpoint", memory_url.as_str())];
    assert_eq!(
        m.value("cortex_client_breaker_state", &endpoint),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        m.value(
            "cortex_client_calls_total",
            &[("service", "memory"), ("operation", "read:history")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m.value(
            "cortex_service_tool_calls_total",
            &[("tool", "get_context")]
        ),
        Some(1.0)
    );
    for secret in ["dora", "secret", "plans"] {
        assert!(!text.contains(secret), "`{secret}` leaked into:\n{text}");
    }

    // Memory goes away: calls are retried, then the breaker opens.
    memory.shutdown(Duration::from_secs(5)).await;
    for _ in 0..3 {
        let answer = call(&http, &cognition, "get_context", json!({"user_id": "dora"})).await;
        assert_eq!(answer["result"]["degraded"], true, "{answer}");
    }
    let (text, m) = scrape(&http, &cognition).await;
    assert_eq!(
        m.value("cortex_client_breaker_state", &endpoint),
        Some(2.0),
        "{text}"
    );
    let history = [("service", "memory"), ("operation", "read:history")];
    assert!(
        m.value("cortex_client_retries_total", &history)
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        m.value(
            "cortex_client_breaker_transitions_total",
            &[("service", "memory"), ("to", "open")]
        ),
        Some(1.0),
        "{text}"
    );
    let errors: f64 = m
        .matching("cortex_client_errors_total", &history)
        .map(|s| s.value)
        .sum();
    assert_eq!(errors, 3.0, "one error per degraded call:\n{text}");
}
