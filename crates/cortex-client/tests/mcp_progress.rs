//! Progress, cancellation, notifications, cached listings and multi
//! round-trip requests over MCP, against a scripted server: what reaches
//! the caller and the application, what the server is told, and how the
//! client holds up when the server misbehaves.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{AcceptDefaults, Hear, Heard, eventually, lock, mcp_client};
use cortex_client::notifications::{ListKind, LogLevel};
use cortex_client::progress::{CallOptions, Progress};
use cortex_client::{McpClient, McpError, McpFeatures};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// What the scripted server saw.
#[derive(Default)]
struct Script {
    /// `tools/call` params, in order.
    calls: Mutex<Vec<Value>>,
    /// Notifications the client sent (method, params).
    notified: Mutex<Vec<(String, Value)>>,
    /// Answers to the server's requests.
    answers: Mutex<Vec<Value>>,
    /// `tools/list` requests.
    listings: AtomicU32,
    /// Messages for the standalone stream.
    events: Mutex<Option<mpsc::UnboundedReceiver<Value>>>,
}

type Shared = Arc<Script>;

/// An SSE answer: each message after its delay; held open at the end
/// when `hold`.
fn sse(messages: Vec<(u64, Value)>, hold: bool) -> Response {
    let stream = futures::stream::iter(messages).then(|(delay, message)| async move {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        Ok::<_, std::io::Error>(Bytes::from(format!("data: {message}\n\n")))
    });
    let body = if hold {
        Body::from_stream(stream.chain(futures::stream::pending()))
    } else {
        Body::from_stream(stream)
    };
    ([("content-type", "text/event-stream")], body).into_response()
}

fn progress(token: &Value, n: u32, total: u32) -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/progress",
           "params": {"progressToken": token, "progress": n, "total": total, "message": format!("step {n}")}})
}

fn result(id: &Value, text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}]}})
}

async fn post_mcp(State(script): State<Shared>, body: Bytes) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let method = message["method"].as_str().unwrap_or_default().to_string();
    let id = message["id"].clone();
    let params = message["params"].clone();
    if message.get("method").is_none() {
        lock(&script.answers).push(message);
        return StatusCode::ACCEPTED.into_response();
    }
    if id.is_null() {
        lock(&script.notified).push((method, params));
        return StatusCode::ACCEPTED.into_response();
    }
    let reply = |result: Value| {
        axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
    };
    match method.as_str() {
        "initialize" => {
            let result = json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {"listChanged": true}, "logging": {}}, "serverInfo": {"name": "script", "version": "1"}});
            (
                [("mcp-session-id", "s1")],
                axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})),
            )
                .into_response()
        }
        "ping" => reply(json!({})),
        "tools/list" => {
            let n = script.listings.fetch_add(1, Ordering::SeqCst) + 1;
            reply(
                json!({"tools": [{"name": format!("listed-{n}"), "inputSchema": {"type": "object"}}], "ttlMs": 60_000, "cacheScope": "public"}),
            )
        }
        "prompts/list" => reply(json!({"prompts": [], "ttlMs": -5})),
        "tools/call" => {
            lock(&script.calls).push(params.clone());
            let token = params["_meta"]["progressToken"].clone();
            let args = &params["arguments"];
            match params["name"].as_str().unwrap_or_default() {
                // Three steps, with noise between them.
                "work" => sse(
                    vec![
                        (10, progress(&token, 1, 3)),
                        (
                            10,
                            json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token, "progress": "lots"}}),
                        ),
                        (10, progress(&json!("no-such-call"), 9, 9)),
                        (
                            10,
                            json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "warning", "logger": "w", "data": "half way"}}),
                        ),
                        (10, progress(&token, 2, 3)),
                        (10, progress(&token, 3, 3)),
                        (10, result(&id, "worked")),
                    ],
                    false,
                ),
                // Progress every `every` ms for `steps` steps, then the result.
                "long" => {
                    let steps = args["steps"].as_u64().unwrap_or(6) as u32;
                    let every = args["every"].as_u64().unwrap_or(200);
                    let mut messages: Vec<(u64, Value)> = (1..=steps)
                        .map(|n| (every, progress(&token, n, steps)))
                        .collect();
                    messages.push((every, result(&id, "long done")));
                    sse(messages, false)
                }
                // Never answers.
                "hang" => sse(vec![(0, progress(&token, 0, 1))], true),
                // Asks the client, then takes the question back.
                "ask-then-cancel" => sse(
                    vec![
                        (
                            0,
                            json!({"jsonrpc": "2.0", "id": "q1", "method": "elicitation/create", "params": {"message": "wait", "requestedSchema": {"type": "object", "properties": {}}}}),
                        ),
                        (
                            100,
                            json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "q1", "reason": "changed my mind"}}),
                        ),
                        (300, result(&id, "asked")),
                    ],
                    false,
                ),
                // 2026-07-28 multi round-trip: asks for input until it has it.
                "mrtr" => {
                    if params["requestState"] == "st1"
                        && params["inputResponses"]["name"]["action"] == "accept"
                    {
                        let name = params["inputResponses"]["name"]["content"]["name"].clone();
                        reply(
                            json!({"content": [{"type": "text", "text": format!("hello {}", name.as_str().unwrap_or("?"))}]}),
                        )
                    } else {
                        reply(
                            json!({"resultType": "input_required", "requestState": "st1", "inputRequests": {
                                "name": {"method": "elicitation/create", "params": {"message": "name?", "requestedSchema": {"type": "object", "properties": {"name": {"type": "string", "default": "Ada"}}}}}
                            }}),
                        )
                    }
                }
                "mrtr-forever" => {
                    reply(json!({"resultType": "input_required", "requestState": "again"}))
                }
                "mrtr-bad" => reply(
                    json!({"resultType": "input_required", "inputRequests": ["not", "a", "map"]}),
                ),
                "mrtr-empty" => reply(json!({"resultType": "input_required"})),
                "mrtr-odd" => reply(
                    json!({"resultType": "input_required", "inputRequests": {"x": {"method": "tools/call", "params": {}}}}),
                ),
                _ => reply(json!({"content": [{"type": "text", "text": "plain"}]})),
            }
        }
        _ => axum::Json(
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "no"}}),
        )
        .into_response(),
    }
}

/// The standalone stream: what the test queues.
async fn get_mcp(State(script): State<Shared>, headers: HeaderMap) -> Response {
    if headers.get("mcp-session-id").is_none() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Some(events) = lock(&script.events).take() else {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    };
    let stream = tokio_stream_of(events)
        .map(|m| Ok::<_, std::io::Error>(Bytes::from(format!("data: {m}\n\n"))));
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn tokio_stream_of(mut rx: mpsc::UnboundedReceiver<Value>) -> impl futures::Stream<Item = Value> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A scripted server; its state, its URL, and a sender onto its
/// standalone stream.
async fn serve() -> (Shared, String, mpsc::UnboundedSender<Value>) {
    let script = Shared::default();
    let (events, rx) = mpsc::unbounded_channel();
    *lock(&script.events) = Some(rx);
    let app = Router::new()
        .route(
            "/mcp",
            post(post_mcp)
                .get(get_mcp)
                .delete(|| async { StatusCode::OK }),
        )
        .with_state(script.clone());
    let url = format!("{}/mcp", common::serve(app).await);
    (script, url, events)
}

#[tokio::test]
async fn progress_reaches_the_caller_and_only_when_asked() {
    let (script, url, _events) = serve().await;
    let heard = Arc::new(Heard::default());
    let client = mcp_client(&url, Duration::from_secs(10), |b| {
        b.notifications(Hear::only("svc", heard.clone()))
    });
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = seen.clone();
    let options = CallOptions::new().on_progress(move |p| lock(&sink).push(p));
    let value = client
        .call_tool_with("svc", "work", json!({}), options)
        .await
        .unwrap_or_else(|e| panic!("work: {e}"));
    assert_eq!(value, json!("worked"));
    // Every progress of the call, in order, before the call returned; the
    // malformed one and the stranger's are dropped.
    let seen = lock(&seen).clone();
    assert_eq!(
        seen,
        (1..=3)
            .map(|n| Progress::new(f64::from(n), Some(3.0), Some(format!("step {n}"))))
            .collect::<Vec<_>>()
    );
    assert_eq!(seen[2].fraction(), Some(1.0));
    // The log message in the answer reached the application too.
    let logs = lock(&heard.logs).clone();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(
        (logs[0].level, logs[0].data.clone()),
        (LogLevel::Warning, json!("half way"))
    );

    // A plain call sends no progress token; one that asks sends its own.
    let plain = client.call_tool("svc", "other", json!({})).await;
    assert_eq!(plain.ok(), Some(json!("plain")));
    let calls = lock(&script.calls).clone();
    assert!(calls[0]["_meta"]["progressToken"].is_u64(), "{}", calls[0]);
    assert!(
        calls.last().is_some_and(|c| c.get("_meta").is_none()),
        "{calls:?}"
    );
    client.close().await;
}

#[tokio::test]
async fn progress_pushes_the_deadline_out_only_when_asked_and_within_the_maximum() {
    let (script, url, _events) = serve().await;
    // A 400 ms timeout; the tool reports every 150 ms for 1.2 s.
    let client = mcp_client(&url, Duration::from_millis(400), |b| b);
    let args = json!({"steps": 8, "every": 150});
    let reset = CallOptions::new().reset_timeout_on_progress(Duration::from_secs(10));
    let started = std::time::Instant::now();
    let value = client
        .call_tool_with("svc", "long", args.clone(), reset)
        .await;
    assert_eq!(value.ok(), Some(json!("long done")));
    assert!(started.elapsed() >= Duration::from_millis(1_200));

    // Without the option the deadline stands, and the server is told.
    let started = std::time::Instant::now();
    let watched = CallOptions::new().on_progress(|_| {});
    let cut = client
        .call_tool_with("svc", "long", args.clone(), watched)
        .await;
    assert!(matches!(cut, Err(McpError::Timeout { .. })), "{cut:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
    let id = lock(&script.calls)
        .last()
        .map(|c| c["_meta"]["progressToken"].clone());
    eventually("notifications/cancelled after the timeout", || {
        lock(&script.notified)
            .iter()
            .any(|(m, p)| m == "notifications/cancelled" && Some(&p["requestId"]) == id.as_ref())
    })
    .await;

    // With it, never past the maximum.
    let started = std::time::Instant::now();
    let capped = CallOptions::new().reset_timeout_on_progress(Duration::from_millis(700));
    let cut = client.call_tool_with("svc", "long", args, capped).await;
    assert!(matches!(cut, Err(McpError::Timeout { .. })), "{cut:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_millis(1_100),
        "{took:?}"
    );
    client.close().await;
}

#[tokio::test]
async fn a_call_the_caller_drops_is_cancelled_on_the_server() {
    let (script, url, _events) = serve().await;
    let client = mcp_client(&url, Duration::from_secs(30), |b| b);
    let options = CallOptions::new().on_progress(|_| {});
    let started = std::time::Instant::now();
    let call = client.call_tool_with("svc", "hang", json!({}), options);
    let gave_up = tokio::time::timeout(Duration::from_millis(300), call).await;
    assert!(gave_up.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "the caller was held"
    );
    let id = lock(&script.calls)[0]["_meta"]["progressToken"].clone();
    eventually("notifications/cancelled after the drop", || {
        lock(&script.notified).iter().any(|(m, p)| {
            m == "notifications/cancelled"
                && p["requestId"] == id
                && p["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("no longer waits"))
        })
    })
    .await;
    client.close().await;
}

#[tokio::test]
async fn the_server_cancelling_its_request_stops_the_handler_and_nothing_is_answered() {
    let (script, url, _events) = serve().await;
    let dropped = Arc::new(AtomicBool::new(false));
    let client = mcp_client(&url, Duration::from_secs(10), |b| {
        b.server_requests(Arc::new(AcceptDefaults {
            dropped: dropped.clone(),
        }))
    });
    let value = client.call_tool("svc", "ask-then-cancel", json!({})).await;
    assert_eq!(value.ok(), Some(json!("asked")));
    eventually("the handler was stopped", || dropped.load(Ordering::SeqCst)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answers = lock(&script.answers).clone();
    assert!(answers.iter().all(|a| a["id"] != "q1"), "{answers:?}");
    client.close().await;
}

#[tokio::test]
async fn listings_are_kept_for_their_ttl_until_the_server_says_they_changed() {
    let (script, url, events) = serve().await;
    let heard = Arc::new(Heard::default());
    let client = mcp_client(&url, Duration::from_secs(10), |b| {
        b.notifications(Hear::only("svc", heard.clone()))
    });
    let first = client
        .mcp_tools("svc")
        .await
        .unwrap_or_else(|e| panic!("tools: {e}"));
    assert_eq!(first[0]["name"], "listed-1");
    let again = client
        .mcp_tools("svc")
        .await
        .unwrap_or_else(|e| panic!("tools: {e}"));
    assert_eq!(again, first, "fresh for ttlMs: kept");
    assert_eq!(script.listings.load(Ordering::SeqCst), 1);
    // A negative ttlMs is not kept.
    for _ in 0..2 {
        let prompts = client.list_prompts("svc").await;
        assert_eq!(prompts.ok(), Some(vec![]));
    }

    // The standalone stream (opened because a handler listens) says the
    // list changed; log messages there reach the handler too.
    let _ = events.send(json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}));
    let _ = events.send(json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "error", "data": {"disk": "full"}}}));
    let _ = events.send(json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "shouting", "data": 1}}));
    eventually("list_changed reached the handler", || {
        lock(&heard.changed).as_slice() == [ListKind::Tools]
    })
    .await;
    eventually("the log reached the handler", || {
        lock(&heard.logs).len() == 1
    })
    .await;
    assert_eq!(lock(&heard.logs)[0].data, json!({"disk": "full"}));
    let fresh = client
        .mcp_tools("svc")
        .await
        .unwrap_or_else(|e| panic!("tools: {e}"));
    assert_eq!(fresh[0]["name"], "listed-2");
    assert_eq!(script.listings.load(Ordering::SeqCst), 2);
    client.close().await;
}

#[tokio::test]
async fn input_required_results_are_answered_and_sent_again() {
    let (script, url, _events) = serve().await;
    let client = mcp_client(&url, Duration::from_secs(10), |b| {
        b.server_requests(Arc::new(AcceptDefaults::default()))
    });
    let value = client.call_tool("svc", "mrtr", json!({"q": 1})).await;
    assert_eq!(value.ok(), Some(json!("hello Ada")));
    let calls = lock(&script.calls).clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["arguments"], json!({"q": 1}));
    assert_eq!(calls[1]["requestState"], "st1");

    // A server that keeps asking, or asks in a shape that is not MRTR,
    // gets a typed error, not a loop or a panic.
    for tool in ["mrtr-forever", "mrtr-bad", "mrtr-empty", "mrtr-odd"] {
        let outcome = client.call_tool("svc", tool, json!({})).await;
        assert!(
            matches!(outcome, Err(McpError::ServiceCall { .. })),
            "{tool}: {outcome:?}"
        );
    }
    let rounds = lock(&script.calls)
        .iter()
        .filter(|c| c["name"] == "mrtr-forever")
        .count();
    assert_eq!(rounds, 9, "the first request and eight rounds");

    // Without a handler there is nobody to ask.
    let bare = mcp_client(&url, Duration::from_secs(10), |b| b);
    let outcome = bare.call_tool("svc", "mrtr", json!({})).await;
    assert!(
        matches!(&outcome, Err(McpError::ServiceCall { message, .. }) if message.contains("no handler")),
        "{outcome:?}"
    );
    client.close().await;
    bare.close().await;
}
