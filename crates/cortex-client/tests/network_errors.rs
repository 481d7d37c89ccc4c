//! Every error of the network client, produced for real on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cortex_client::{McpClient, McpError};
use cortex_service::{Service, ServiceConfig, ServiceError, Tool};
use cortex_test_support::TestServer;
use cortex_test_support::proxy::{Mode, TcpProxy};
use serde_json::{Value, json};

/// A service whose tools fail in chosen ways; counts calls.
fn faulty(calls: Arc<AtomicUsize>) -> Service {
    let count = move || calls.fetch_add(1, Ordering::SeqCst);
    let c1 = count.clone();
    let c2 = count.clone();
    Service::builder("faulty", "0")
        .tool(Tool::new(
            "fail",
            "500 always",
            json!({"type": "object"}),
            move |_, _| {
                c1();
                async { Err::<Value, _>(ServiceError::internal("boom")) }
            },
        ))
        .tool(Tool::new(
            "slow",
            "sleeps ms",
            json!({"type": "object"}),
            move |_, args| {
                c2();
                async move {
                    let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(json!({"slept": ms}))
                }
            },
        ))
        .tool(Tool::new(
            "ok",
            "fine",
            json!({"type": "object"}),
            |_, _| async { Ok(json!("ok")) },
        ))
        .build()
        .unwrap()
}

async fn faulty_server() -> (TestServer, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    (
        TestServer::start(faulty(calls.clone()), ServiceConfig::default()).await,
        calls,
    )
}

fn client(url: &str, config: cortex_client::ClientConfig) -> cortex_client::NetworkMcpClient {
    let discovery = Arc::new(cortex_client::StaticDiscovery::new().with("faulty", url));
    cortex_client::NetworkMcpClient::builder(discovery)
        .config(config)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_500_is_retried_then_reported_with_attempts() {
    let (server, calls) = faulty_server().await;
    let client = client(
        &server.url(""),
        common::fast_config()
            .max_retries(3)
            .failure_threshold(100)
            .build()
            .unwrap(),
    );
    let err = client
        .call_tool("faulty", "fail", json!({}))
        .await
        .unwrap_err();
    match &err {
        McpError::ServiceCall {
            status,
            attempts,
            message,
            endpoint,
            ..
        } => {
            assert_eq!((*status, *attempts), (500, 4));
            assert_eq!(message, "boom");
            assert_eq!(endpoint, &server.url(""));
        }
        other => panic!("expected ServiceCall, got {other}"),
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "one call and three retries"
    );
    assert!(err.to_string().contains("after 4 attempt(s)"), "{err}");
}

#[tokio::test]
async fn connection_refused_names_the_endpoint() {
    let url = format!("http://127.0.0.1:{}", common::dead_port());
    let client = client(
        &url,
        common::fast_config()
            .max_retries(2)
            .failure_threshold(100)
            .build()
            .unwrap(),
    );
    let err = client
        .call_tool("faulty", "ok", json!({}))
        .await
        .unwrap_err();
    match &err {
        McpError::Connection {
            endpoint,
            attempts,
            reason,
            ..
        } => {
            assert_eq!(endpoint, &url);
            assert_eq!(*attempts, 3);
            assert!(reason.to_lowercase().contains("refused"), "{reason}");
        }
        other => panic!("expected Connection, got {other}"),
    }
    assert!(err.is_retryable());
}

#[tokio::test]
async fn timeout_is_one_deadline_over_all_attempts() {
    let (server, _) = faulty_server().await;
    let config = common::fast_config()
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = client(&server.url(""), config);
    let started = Instant::now();
    let err = client
        .call_tool("faulty", "slow", json!({"ms": 5_000}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, McpError::Timeout { attempts: 1, .. }),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_blackholed_service_times_out() {
    let (server, _) = faulty_server().await;
    let proxy = TcpProxy::start(server.addr).await;
    proxy.set_mode(Mode::Blackhole);
    let config = common::fast_config()
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = client(&proxy.url(""), config);
    let err = client
        .call_tool("faulty", "ok", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, McpError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn circuit_opens_after_consecutive_failures_and_fails_fast() {
    let (server, calls) = faulty_server().await;
    let config = common::fast_config()
        .max_retries(0)
        .failure_threshold(3)
        .reset_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let client = client(&server.url(""), config);
    for _ in 0..3 {
        let err = client
            .call_tool("faulty", "fail", json!({}))
            .await
            .unwrap_err();
        assert!(matches!(err, McpError::ServiceCall { .. }), "{err}");
    }
    let err = client
        .call_tool("faulty", "ok", json!({}))
        .await
        .unwrap_err();
    match &err {
        McpError::CircuitOpen {
            retry_after,
            endpoint,
            ..
        } => {
            assert!(
                *retry_after > Duration::from_secs(25) && *retry_after <= Duration::from_secs(30),
                "{retry_after:?}"
            );
            assert_eq!(endpoint, &server.url(""));
        }
        other => panic!("expected CircuitOpen, got {other}"),
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the refused call never reached the service"
    );
    let status = client.endpoint_status();
    assert_eq!(
        status[0].breaker,
        cortex_resilience::breaker::BreakerState::Open
    );
}

#[tokio::test]
async fn a_4xx_never_opens_the_circuit() {
    let (server, _) = faulty_server().await;
    let client = client(
        &server.url(""),
        common::fast_config().failure_threshold(2).build().unwrap(),
    );
    for _ in 0..5 {
        let err = client
            .call_tool("faulty", "missing", json!({}))
            .await
            .unwrap_err();
        assert!(matches!(err, McpError::ToolNotFound { .. }), "{err}");
    }
    assert_eq!(
        client.call_tool("faulty", "ok", json!({})).await.unwrap(),
        json!("ok")
    );
}

#[tokio::test]
async fn circuit_half_opens_and_closes_after_a_successful_probe() {
    let (server, _) = faulty_server().await;
    let proxy = TcpProxy::start(server.addr).await;
    let config = common::fast_config()
        .max_retries(0)
        .failure_threshold(2)
        .reset_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let client = client(&proxy.url(""), config);
    proxy.set_mode(Mode::Refuse);
    for _ in 0..2 {
        assert!(client.call_tool("faulty", "ok", json!({})).await.is_err());
    }
    assert!(matches!(
        client.call_tool("faulty", "ok", json!({})).await,
        Err(McpError::CircuitOpen { .. })
    ));
    proxy.set_mode(Mode::Forward);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        client.call_tool("faulty", "ok", json!({})).await.unwrap(),
        json!("ok")
    );
    assert_eq!(
        client.endpoint_status()[0].breaker,
        cortex_resilience::breaker::BreakerState::Closed
    );
    let transitions = client.metrics().transitions();
    assert_eq!(transitions.get(&("faulty".to_string(), "open")), Some(&1));
    assert_eq!(transitions.get(&("faulty".to_string(), "closed")), Some(&1));
}

#[tokio::test]
async fn pool_timeout_when_every_connection_stays_busy() {
    let (server, _) = faulty_server().await;
    let config = common::fast_config()
        .max_connections(1)
        .pool_timeout(Duration::from_millis(100))
        .max_retries(0)
        .build()
        .unwrap();
    let client = client(&server.url(""), config);
    let busy = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call_tool("faulty", "slow", json!({"ms": 1_000}))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = client
        .call_tool("faulty", "ok", json!({}))
        .await
        .unwrap_err();
    match &err {
        McpError::PoolTimeout {
            max_connections,
            waited,
            ..
        } => {
            assert_eq!(*max_connections, 1);
            assert!(*waited >= Duration::from_millis(90), "{waited:?}");
        }
        other => panic!("expected PoolTimeout, got {other}"),
    }
    assert!(busy.await.unwrap().is_ok());
}

#[tokio::test]
async fn unknown_service_is_not_retried() {
    let client = client("http://127.0.0.1:1", common::fast_config().build().unwrap());
    let err = client
        .call_tool("elsewhere", "ok", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, McpError::ServiceNotFound { ref service, .. } if service == "elsewhere"),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn metrics_count_calls_errors_and_retries() {
    let (server, _) = faulty_server().await;
    let client = client(
        &server.url(""),
        common::fast_config()
            .max_retries(2)
            .failure_threshold(100)
            .build()
            .unwrap(),
    );
    client.call_tool("faulty", "ok", json!({})).await.unwrap();
    client
        .call_tool("faulty", "fail", json!({}))
        .await
        .unwrap_err();
    let snapshot = client.metrics().snapshot();
    let ok = &snapshot[&("faulty".to_string(), "ok".to_string())];
    assert_eq!((ok.calls, ok.retries), (1, 0));
    let fail = &snapshot[&("faulty".to_string(), "fail".to_string())];
    assert_eq!((fail.calls, fail.retries), (1, 2));
    assert_eq!(fail.errors.get("service_call"), Some(&1));
    let text = client.prometheus();
    assert!(
        text.contains("cortex_client_calls_total{service=\"faulty\",operation=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("cortex_client_retries_total{service=\"faulty\",operation=\"fail\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("cortex_client_pool_open{service=\"faulty\""),
        "{text}"
    );
    assert!(
        text.contains("cortex_client_latency_seconds_count{service=\"faulty\",operation=\"ok\"} 1"),
        "{text}"
    );
}

/// A replica's health is asked of that replica alone; one discovery does
/// not list is a `Discovery` error naming it, and nothing is sent elsewhere.
#[tokio::test]
async fn health_of_one_replica_and_of_an_unlisted_one() {
    let (server, _) = faulty_server().await;
    let client = client(&server.url(""), common::fast_config().build().unwrap());
    let listed = cortex_client::Endpoint::new(server.url(""));
    let (status, health) = client.health_at("faulty", &listed).await.unwrap();
    assert_eq!((status, health.status.as_str()), (200, "healthy"));

    let unlisted = cortex_client::Endpoint::new("http://127.0.0.1:9");
    let error = client.health_at("faulty", &unlisted).await.unwrap_err();
    assert!(
        matches!(&error, McpError::Discovery { reason, .. } if reason.contains("127.0.0.1:9")),
        "{error}"
    );
}
