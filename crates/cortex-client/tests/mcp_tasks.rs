//! The tasks extension and the standard headers of the 2026-07-28
//! transport, against a scripted stateless server: a tool call answered
//! with a task is polled to its end, its input answered, cancelled when the
//! caller gives up; malformed tasks and spent poll budgets are errors; and
//! every request names its method, target and annotated arguments in
//! headers.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{AcceptDefaults, eventually, lock};
use cortex_client::tasks::TaskPolicy;
use cortex_client::{McpClient, NetworkMcpClient};
use serde_json::{Value, json};

/// One request the server saw: method, params, and its `mcp-*` headers.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    params: Value,
    headers: HashMap<String, String>,
}

#[derive(Default)]
struct Script {
    seen: Mutex<Vec<Seen>>,
    /// `tasks/get` per task id.
    polls: Mutex<HashMap<String, u32>>,
}

type Shared = Arc<Script>;

fn task(id: &str, status: &str) -> Value {
    json!({"taskId": id, "status": status, "createdAt": "2026-01-01T00:00:00Z",
           "lastUpdatedAt": "2026-01-01T00:00:00Z", "ttlMs": 60_000, "pollIntervalMs": 20})
}

fn created(id: &str) -> Value {
    let mut task = task(id, "working");
    task["resultType"] = json!("task");
    task
}

async fn post_mcp(State(script): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let method = message["method"].as_str().unwrap_or_default().to_string();
    let params = message["params"].clone();
    let id = message["id"].clone();
    let mcp_headers = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("mcp-"))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                value.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    lock(&script.seen).push(Seen {
        method: method.clone(),
        params: params.clone(),
        headers: mcp_headers,
    });
    if id.is_null() {
        return StatusCode::ACCEPTED.into_response();
    }
    let reply = |result: Value| {
        axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
    };
    let task_id = params["taskId"].as_str().unwrap_or_default().to_string();
    match method.as_str() {
        // A stateless server that answers `initialize` with its own revision.
        "initialize" => reply(
            json!({"protocolVersion": "2026-07-28", "capabilities": {}, "serverInfo": {"name": "script", "version": "1"}}),
        ),
        "server/discover" => reply(
            json!({"resultType": "complete", "supportedVersions": ["2026-07-28"],
            "capabilities": {"tools": {}, "extensions": {"io.modelcontextprotocol/tasks": {}}},
            "serverInfo": {"name": "script", "version": "1"}}),
        ),
        "tools/list" => reply(json!({"resultType": "complete", "tools": [
            {"name": "slow", "inputSchema": {"type": "object", "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "count": {"type": "integer", "x-mcp-header": "Count"},
                "query": {"type": "string"}}}},
            {"name": "bad", "inputSchema": {"type": "object", "properties": {
                "score": {"type": "number", "x-mcp-header": "Score"}}}},
        ]})),
        "tools/call" => match params["name"].as_str().unwrap_or_default() {
            "slow" => reply(created("t-slow")),
            "doomed" => reply(created("t-doomed")),
            "forever" => reply(created(&format!("t-forever-{}", params["arguments"]["n"]))),
            "anonymous" => reply(json!({"resultType": "task", "status": "working"})),
            "odd" => reply(created("t-odd")),
            "plain" => reply(
                json!({"resultType": "complete", "content": [{"type": "text", "text": "plain"}]}),
            ),
            _ => reply(json!({"content": [], "isError": true})),
        },
        "tasks/get" => {
            let n = {
                let mut polls = lock(&script.polls);
                let n = polls.entry(task_id.clone()).or_default();
                *n += 1;
                *n
            };
            let mut state = match task_id.as_str() {
                // Working, then asking for input (twice the same key), then done.
                "t-slow" => match n {
                    1 => task("t-slow", "working"),
                    2 | 3 => {
                        let mut state = task("t-slow", "input_required");
                        state["inputRequests"] = json!({"confirm": {"method": "elicitation/create",
                            "params": {"message": "go?", "requestedSchema": {"type": "object",
                                "properties": {"ok": {"type": "boolean", "default": true}}}}}});
                        state
                    }
                    _ => {
                        let mut state = task("t-slow", "completed");
                        state["result"] =
                            json!({"content": [{"type": "text", "text": "{\"done\": true}"}]});
                        state
                    }
                },
                "t-doomed" => {
                    let mut state = task("t-doomed", "failed");
                    state["error"] = json!({"code": -32603, "message": "API rate limit exceeded"});
                    state
                }
                "t-odd" => task("t-odd", "sleeping"),
                forever if forever.starts_with("t-forever") => task(forever, "working"),
                _ => {
                    return axum::Json(json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32602, "message": "Task not found"}}))
                    .into_response();
                }
            };
            state["resultType"] = json!("complete");
            reply(state)
        }
        "tasks/update" | "tasks/cancel" => reply(json!({"resultType": "complete"})),
        // The stateless revision has no `ping`.
        "ping" => axum::Json(json!({"jsonrpc": "2.0", "id": id,
            "error": {"code": -32601, "message": "Method not found: ping"}}))
        .into_response(),
        _ => reply(json!({})),
    }
}

async fn serve() -> (Shared, String) {
    let script = Shared::default();
    let app = Router::new()
        .route("/mcp", post(post_mcp))
        .with_state(script.clone());
    (script.clone(), format!("{}/mcp", common::serve(app).await))
}

/// A client of the scripted server that accepts elicitations with their
/// defaults, and follows tasks under `tasks` when given.
fn client(url: &str, timeout: Duration, tasks: Option<TaskPolicy>) -> NetworkMcpClient {
    common::mcp_client(url, timeout, |builder| {
        let builder = builder.server_requests(Arc::new(AcceptDefaults::default()));
        match tasks {
            Some(policy) => builder.tasks(policy),
            None => builder,
        }
    })
}

fn fast() -> TaskPolicy {
    TaskPolicy::try_new(
        Duration::from_millis(20),
        Duration::from_millis(10),
        Duration::from_millis(50),
        50,
    )
    .unwrap_or_else(|e| panic!("policy: {e}"))
}

fn seen(script: &Script, method: &str) -> Vec<Seen> {
    lock(&script.seen)
        .iter()
        .filter(|s| s.method == method)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_task_is_polled_to_its_result_and_its_input_answered_once() {
    let (script, url) = serve().await;
    let client = client(&url, Duration::from_secs(5), Some(fast()));
    let result = client
        .call_tool(
            "svc",
            "slow",
            json!({"region": "us west", "count": 3, "query": "q"}),
        )
        .await
        .unwrap_or_else(|e| panic!("call: {e}"));
    assert_eq!(result, json!({"done": true}));
    let gets = seen(&script, "tasks/get");
    assert_eq!(gets.len(), 4, "polled until completed");
    assert!(gets.iter().all(
        |g| g.headers.get("mcp-name").map(String::as_str) == Some("t-slow")
            && g.headers.get("mcp-method").map(String::as_str) == Some("tasks/get")
    ));
    let updates = seen(&script, "tasks/update");
    assert_eq!(
        updates.len(),
        1,
        "one key, answered once though asked twice"
    );
    assert_eq!(updates[0].params["taskId"], "t-slow");
    assert_eq!(
        updates[0].params["inputResponses"]["confirm"],
        json!({"action": "accept", "content": {"ok": true}})
    );
    assert!(
        seen(&script, "tasks/cancel").is_empty(),
        "nothing to cancel"
    );
    // The call declared the extension and the handler's capabilities,
    // and mirrored its annotated arguments.
    let call = &seen(&script, "tools/call")[0];
    let declared = &call.params["_meta"]["io.modelcontextprotocol/clientCapabilities"];
    assert_eq!(
        declared["extensions"]["io.modelcontextprotocol/tasks"],
        json!({})
    );
    assert_eq!(declared["elicitation"], json!({}));
    assert_eq!(
        call.headers.get("mcp-method").map(String::as_str),
        Some("tools/call")
    );
    assert_eq!(
        call.headers.get("mcp-name").map(String::as_str),
        Some("slow")
    );
    assert_eq!(
        call.headers.get("mcp-param-region").map(String::as_str),
        Some("us west")
    );
    assert_eq!(
        call.headers.get("mcp-param-count").map(String::as_str),
        Some("3")
    );
    assert!(!call.headers.contains_key("mcp-param-query"));
    // `initialize` named its method too, and carried `_meta`.
    let init = &seen(&script, "initialize")[0];
    assert_eq!(
        init.headers.get("mcp-method").map(String::as_str),
        Some("initialize")
    );
    assert!(init.params["_meta"]["io.modelcontextprotocol/clientCapabilities"].is_object());
}

#[tokio::test]
async fn a_stateless_server_without_ping_is_healthy_through_server_discover() {
    let (script, url) = serve().await;
    let client = client(&url, Duration::from_secs(5), None);
    let (status, health) = client.health("svc").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 200, "{health:?}");
    assert_eq!(health.status, "healthy");
    assert_eq!(seen(&script, "ping").len(), 1, "ping was tried first");
    // One to open the session, one as the health check.
    assert_eq!(seen(&script, "server/discover").len(), 2);
}

#[tokio::test]
async fn a_tool_with_a_bad_header_annotation_is_not_listed() {
    let (_script, url) = serve().await;
    let client = client(&url, Duration::from_secs(5), None);
    let tools = client
        .mcp_tools("svc")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<_> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, vec!["slow"]);
}

#[tokio::test]
async fn a_failed_task_is_the_calls_error() {
    let (_script, url) = serve().await;
    let client = client(&url, Duration::from_secs(5), Some(fast()));
    let error = client
        .call_tool("svc", "doomed", json!({}))
        .await
        .err()
        .unwrap_or_else(|| panic!("a failed task must fail the call"));
    assert!(
        error.to_string().contains("API rate limit exceeded"),
        "{error}"
    );
}

#[tokio::test]
async fn a_dropped_call_cancels_its_task() {
    let (script, url) = serve().await;
    let client = client(&url, Duration::from_secs(5), Some(fast()));
    let call = client.call_tool("svc", "forever", json!({"n": 1}));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), call)
            .await
            .is_err()
    );
    eventually("tasks/cancel after the caller gave up", || {
        seen(&script, "tasks/cancel").iter().any(|c| {
            c.params["taskId"] == "t-forever-1"
                && c.headers.get("mcp-name").map(String::as_str) == Some("t-forever-1")
        })
    })
    .await;
}

#[tokio::test]
async fn a_spent_poll_budget_or_deadline_ends_the_call_and_cancels() {
    let (script, url) = serve().await;
    let three = TaskPolicy::try_new(
        Duration::from_millis(10),
        Duration::from_millis(10),
        Duration::from_millis(10),
        3,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let client_3 = client(&url, Duration::from_secs(5), Some(three));
    let error = client_3
        .call_tool("svc", "forever", json!({"n": 2}))
        .await
        .err()
        .unwrap_or_else(|| panic!("the budget must end the call"));
    assert!(error.to_string().contains("within 3 polls"), "{error}");
    assert_eq!(lock(&script.polls).get("t-forever-2").copied(), Some(3));
    eventually("tasks/cancel after the budget", || {
        seen(&script, "tasks/cancel")
            .iter()
            .any(|c| c.params["taskId"] == "t-forever-2")
    })
    .await;
    // The request timeout bounds the whole task.
    let short = client(&url, Duration::from_millis(300), Some(fast()));
    let started = std::time::Instant::now();
    let error = short
        .call_tool("svc", "forever", json!({"n": 3}))
        .await
        .err()
        .unwrap_or_else(|| panic!("the deadline must end the call"));
    assert!(error.is_timeout(), "{error}");
    assert!(started.elapsed() < Duration::from_secs(1));
    eventually("tasks/cancel after the deadline", || {
        seen(&script, "tasks/cancel")
            .iter()
            .any(|c| c.params["taskId"] == "t-forever-3")
    })
    .await;
}

#[tokio::test]
async fn malformed_or_undeclared_tasks_are_errors() {
    let (script, url) = serve().await;
    let client_tasks = client(&url, Duration::from_secs(5), Some(fast()));
    let anonymous = client_tasks.call_tool("svc", "anonymous", json!({})).await;
    assert!(
        anonymous
            .as_ref()
            .is_err_and(|e| e.to_string().contains("without a taskId")),
        "{anonymous:?}"
    );
    let odd = client_tasks.call_tool("svc", "odd", json!({})).await;
    assert!(
        odd.as_ref()
            .is_err_and(|e| e.to_string().contains("unknown status")),
        "{odd:?}"
    );
    let plain = client_tasks.call_tool("svc", "plain", json!({})).await;
    assert_eq!(plain.ok(), Some(json!("plain")));
    // Without the extension declared, a task is refused, not followed.
    let client_plain = client(&url, Duration::from_secs(5), None);
    let undeclared = client_plain.call_tool("svc", "slow", json!({})).await;
    assert!(
        undeclared.as_ref().is_err_and(|e| e
            .to_string()
            .contains("does not declare the tasks extension")),
        "{undeclared:?}"
    );
    let last = seen(&script, "tools/call")
        .pop()
        .unwrap_or_else(|| panic!("no call"));
    assert!(
        last.params["_meta"]["io.modelcontextprotocol/clientCapabilities"]
            .get("extensions")
            .is_none()
    );
}
