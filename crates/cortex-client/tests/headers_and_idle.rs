//! What the client sends with every call, how a stream notices a silent
//! peer, and that a stream's small read buffer bounds neither its events nor
//! the connections other calls get.
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

/// Bytes of the large event: far more than a stream connection's 2 KiB
/// read buffer, and more than hyper's default 8 KiB too.
const LARGE_EVENT: usize = 64 * 1024;

/// A stream of two events, the first [`LARGE_EVENT`] bytes of data, and
/// then its end; a tool to call after it.
fn large_event_service() -> Service {
    Service::builder("large", "0")
        .resource(
            Resource::new(
                "big",
                "A large event, a small one, the end.",
                |_, _| async { Ok(ResourceContent::Json(json!([]))) },
            )
            .with_stream(|_ctx, _params, _last| async move {
                let large = json!({"n": 1, "fill": "x".repeat(LARGE_EVENT)}).to_string();
                let small = json!({"n": 2}).to_string();
                let events = [
                    Ok(Event::message(large).with_id("1")),
                    Ok(Event::message(small).with_id("2")),
                ];
                Ok(futures::stream::iter(events).boxed())
            }),
        )
        .tool(Tool::new(
            "echo",
            "Answers its arguments.",
            json!({"type": "object"}),
            |_ctx, args| async move { Ok(serde_json::Value::Object(args)) },
        ))
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_event_larger_than_the_streams_read_buffer_arrives_whole() {
    let server = TestServer::start(large_event_service(), ServiceConfig::default()).await;
    let discovery = Arc::new(StaticDiscovery::new().with("large", server.url("")));
    let client = NetworkMcpClient::builder(discovery)
        .config(common::fast_config().build().unwrap())
        .build()
        .unwrap();
    let stream = client.stream_resource("large", "big").await.unwrap();
    let events: Vec<_> = tokio::time::timeout(Duration::from_secs(10), stream.collect())
        .await
        .unwrap();
    assert_eq!(
        events.len(),
        2,
        "both events, then the end: {}",
        events.len()
    );
    let first = events[0].as_ref().unwrap();
    assert_eq!(first.data["n"], 1);
    assert_eq!(
        first.data["fill"].as_str().map(str::len),
        Some(LARGE_EVENT),
        "the large event is whole"
    );
    assert_eq!(first.id.as_deref(), Some("1"));
    assert_eq!(events[1].as_ref().unwrap().data["n"], 2);

    // The stream's connection (dialled with the small buffer) was closed
    // when the stream ended, not pooled: the call dials one of its own.
    let pool = |client: &NetworkMcpClient| client.endpoint_status()[0].pool;
    let dialled = pool(&client).dialed_total;
    let answer = client
        .call_tool("large", "echo", json!({"fill": "y".repeat(LARGE_EVENT)}))
        .await
        .unwrap();
    assert_eq!(answer["fill"].as_str().map(str::len), Some(LARGE_EVENT));
    assert_eq!(
        pool(&client).dialed_total,
        dialled + 1,
        "the call did not reuse the stream's connection"
    );
}

/// A stream's answer with a 3 KiB header (what a proxy might add), larger
/// than a stream connection's 2 KiB read buffer; `/health` for the client.
async fn serve_large_head(opened: Arc<AtomicUsize>) -> String {
    use axum::http::header;
    use axum::response::IntoResponse;
    use axum::routing::get;
    let stream = move || {
        let opened = opened.clone();
        async move {
            opened.fetch_add(1, Ordering::SeqCst);
            (
                [
                    (header::CONTENT_TYPE, "text/event-stream".to_string()),
                    (
                        header::HeaderName::from_static("x-padding"),
                        "p".repeat(3 * 1024),
                    ),
                ],
                "id: 1\ndata: {\"n\": 1}\n\n",
            )
                .into_response()
        }
    };
    let health =
        || async { axum::Json(json!({"status": "healthy", "service": "head", "version": "0"})) };
    let app = axum::Router::new()
        .route("/resource/{*uri}", get(stream))
        .route("/health", get(health));
    common::serve(app).await
}

#[tokio::test]
async fn a_stream_answer_head_larger_than_the_read_buffer_is_asked_again_with_full_buffers() {
    let opened = Arc::new(AtomicUsize::new(0));
    let url = serve_large_head(opened.clone()).await;
    let discovery = Arc::new(StaticDiscovery::new().with("head", url));
    // The small read buffer is HTTP/1.1's.
    let config = common::fast_config().stream_http2(false).build().unwrap();
    let client = NetworkMcpClient::builder(discovery)
        .config(config)
        .build()
        .unwrap();
    for round in 0..2 {
        let mut stream = client.stream_resource("head", "feed").await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.data["n"], 1, "round {round}");
    }
    // The first open failed on the small buffer and was asked again; the
    // second stream went straight to a full-size connection.
    assert_eq!(opened.load(Ordering::SeqCst), 3);
    let status = &client.endpoint_status()[0];
    assert_eq!(
        status.breaker,
        cortex_resilience::breaker::BreakerState::Closed,
        "not the endpoint's failure"
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
