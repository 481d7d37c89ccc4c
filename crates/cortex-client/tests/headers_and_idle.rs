//! What the client sends with every call, and how a stream notices a
//! silent peer.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cortex_client::{McpClient, NetworkMcpClient, StaticDiscovery, StaticToken};
use cortex_proto::sse::Event;
use cortex_service::{Resource, ResourceContent, Service, ServiceConfig, Tool};
use cortex_test_support::TestServer;
use futures::StreamExt;
use serde_json::json;

fn headers_service() -> Service {
    Service::builder("mirror", "0")
        .tool(Tool::new(
            "headers",
            "Returns the request headers it saw.",
            json!({"type": "object"}),
            |ctx, _| async move {
                let pick = |name: &str| {
                    ctx.headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                Ok(json!({
                    "authorization": pick("authorization"),
                    "x-request-id": pick("x-request-id"),
                    "x-trace-id": pick("x-trace-id"),
                    "traceparent": pick("traceparent"),
                    "idempotency-key": pick("idempotency-key"),
                    "user-agent": pick("user-agent"),
                }))
            },
        ))
        .build()
        .unwrap()
}

/// A network client reaching `server` as `service`, with a fixed token.
fn client_with_token(server: &TestServer, service: &str, token: &str) -> NetworkMcpClient {
    let discovery = Arc::new(StaticDiscovery::new().with(service, server.url("")));
    NetworkMcpClient::builder(discovery)
        .token_provider(Arc::new(StaticToken::new(token)))
        .build()
        .unwrap()
}

#[tokio::test]
async fn every_call_carries_token_ids_trace_context_key_and_user_agent() {
    let server = TestServer::start(headers_service(), ServiceConfig::default()).await;
    let client = client_with_token(&server, "mirror", "s3cret");
    let first = client
        .call_tool("mirror", "headers", json!({}))
        .await
        .unwrap();
    let second = client
        .call_tool("mirror", "headers", json!({}))
        .await
        .unwrap();
    assert_eq!(first["authorization"], "Bearer s3cret");
    assert!(
        first["user-agent"]
            .as_str()
            .unwrap()
            .starts_with("cortex-client/")
    );
    let trace = first["x-trace-id"].as_str().unwrap();
    assert_eq!(trace.len(), 32);
    // W3C traceparent: version-traceid-spanid-flags, with our trace id.
    let traceparent = first["traceparent"].as_str().unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(
        (parts.len(), parts[0], parts[1], parts[2].len(), parts[3]),
        (4, "00", trace, 16, "01"),
        "{traceparent}"
    );
    for field in ["x-request-id", "idempotency-key", "x-trace-id"] {
        assert!(first[field].is_string(), "{field} sent");
        assert_ne!(first[field], second[field], "{field} differs per call");
    }
}

/// A live stream that sends one event after the reader's Last-Event-ID and
/// then goes silent: no data, no keep-alive.
fn silent_service(connections: Arc<AtomicUsize>) -> Service {
    Service::builder("silent", "0")
        .resource(
            Resource::new("ticks", "One event, then silence.", |_, _| async {
                Ok(ResourceContent::Json(json!([])))
            })
            .with_stream(move |_ctx, _params, last| {
                connections.fetch_add(1, Ordering::SeqCst);
                async move {
                    let next = last.and_then(|l| l.parse::<u64>().ok()).unwrap_or(0) + 1;
                    let once =
                        futures::stream::iter([Ok(Event::message(json!({"n": next}).to_string())
                            .with_id(next.to_string()))]);
                    Ok(once.chain(futures::stream::pending()).boxed())
                }
            }),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_silent_stream_is_noticed_and_resumed_after_the_last_event() {
    let connections = Arc::new(AtomicUsize::new(0));
    // No keep-alives within the test's time: the peer looks dead.
    let config = ServiceConfig {
        keep_alive: Duration::from_secs(3600),
        stream_retry: Duration::from_millis(20),
        ..ServiceConfig::default()
    };
    let server = TestServer::start(silent_service(connections.clone()), config).await;
    let discovery = Arc::new(StaticDiscovery::new().with("silent", server.url("")));
    let client_config = common::fast_config()
        .stream_idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = NetworkMcpClient::builder(discovery)
        .config(client_config)
        .build()
        .unwrap();
    let mut stream = client.stream_resource("silent", "ticks").await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(event.data["n"].as_u64().unwrap());
    }
    assert_eq!(
        seen,
        [1, 2, 3],
        "each reconnect resumed after the last event"
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        3,
        "two silent peers noticed, two reconnects"
    );
}

/// A token HTTP cannot carry (a line break) is a typed error naming it, and
/// nothing reaches the service: no request with a missing or cut header.
#[tokio::test]
async fn a_token_http_cannot_carry_is_refused_before_sending() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let service = Service::builder("counter", "0")
        .tool(Tool::new(
            "count",
            "Counts its calls.",
            json!({"type": "object"}),
            move |_, _| {
                seen.fetch_add(1, Ordering::SeqCst);
                async { Ok(json!({})) }
            },
        ))
        .build()
        .unwrap();
    let server = TestServer::start(service, ServiceConfig::default()).await;
    let client = client_with_token(&server, "counter", "s3cret\r\nX-Injected: 1");
    let error = client
        .call_tool("counter", "count", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(error, cortex_client::McpError::InvalidRequest { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("bearer token"), "{error}");
    assert!(!error.is_retryable());
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was sent");
    assert!(
        !format!("{:?}", StaticToken::new("s3cret")).contains("s3cret"),
        "Debug shows no token"
    );
}

/// Work wrapped in `with_authorization` reaches services as its caller:
/// over the network in place of the client's own token, and in process in
/// the callee's context; outside the scope the client's own token is back.
#[tokio::test]
async fn a_forwarded_authorization_replaces_the_clients_token() {
    let server = TestServer::start(headers_service(), ServiceConfig::default()).await;
    let network = client_with_token(&server, "mirror", "own");
    let in_process = cortex_service::InProcessMcpClient::new();
    in_process.register(headers_service());
    let caller = http::HeaderValue::from_static("Bearer caller");

    for client in [&network as &dyn McpClient, &in_process] {
        let seen = cortex_client::with_authorization(Some(caller.clone()), async {
            client.call_tool("mirror", "headers", json!({})).await
        })
        .await
        .unwrap();
        assert_eq!(seen["authorization"], "Bearer caller");
    }
    let seen = network
        .call_tool("mirror", "headers", json!({}))
        .await
        .unwrap();
    assert_eq!(seen["authorization"], "Bearer own");
    let seen = in_process
        .call_tool("mirror", "headers", json!({}))
        .await
        .unwrap();
    assert!(seen["authorization"].is_null());
}

/// An in-process callee runs as itself, as a remote one would: it is told
/// who its caller is (in its context), but its own calls carry its own
/// token unless it forwards the caller's. An inner `None` scope also means
/// the client's own token.
#[tokio::test]
async fn an_in_process_callee_does_not_inherit_its_callers_token() {
    let server = TestServer::start(headers_service(), ServiceConfig::default()).await;
    let network = client_with_token(&server, "mirror", "own");
    let onward = network.clone();
    let relay = Service::builder("relay", "0")
        .tool(Tool::new(
            "relay",
            "Calls the mirror and says who called it.",
            json!({"type": "object"}),
            move |ctx, _| {
                let onward = onward.clone();
                async move {
                    let told = ctx
                        .headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let mirror = onward
                        .call_tool("mirror", "headers", json!({}))
                        .await
                        .map_err(|e| cortex_service::ServiceError::internal(e.to_string()))?;
                    Ok(json!({"told": told, "sent": mirror["authorization"]}))
                }
            },
        ))
        .build()
        .unwrap();
    let in_process = cortex_service::InProcessMcpClient::new();
    in_process.register(relay);
    let caller = http::HeaderValue::from_static("Bearer caller");

    let seen = cortex_client::with_authorization(Some(caller.clone()), async {
        in_process.call_tool("relay", "relay", json!({})).await
    })
    .await
    .unwrap();
    assert_eq!(seen, json!({"told": "Bearer caller", "sent": "Bearer own"}));

    let inner = cortex_client::with_authorization(Some(caller), async {
        cortex_client::with_authorization(None, async {
            network.call_tool("mirror", "headers", json!({})).await
        })
        .await
    })
    .await
    .unwrap();
    assert_eq!(inner["authorization"], "Bearer own");
}
