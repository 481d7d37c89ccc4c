//! Standard MCP (Streamable HTTP) at `/mcp`, over real loopback HTTP, on the
//! memory service: lifecycle, sessions, tools, resources, subscriptions,
//! errors, batches, and the stateless 2026-07-28 revision.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cortex_proto::sse::Event;
use cortex_service::{McpConfig, ServiceConfig};
use cortex_test_support::{SseReader, TestServer, json_of, start_memory};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

struct Mcp {
    server: TestServer,
    http: reqwest::Client,
    _dir: Box<dyn std::any::Any + Send>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn memory() -> Mcp {
    memory_with(ServiceConfig::default()).await
}

async fn memory_with(config: ServiceConfig) -> Mcp {
    let (server, dir) = start_memory(config).await;
    Mcp {
        server,
        http: reqwest::Client::new(),
        _dir: Box::new(dir),
    }
}

fn mcp_config(mcp: McpConfig) -> ServiceConfig {
    ServiceConfig {
        mcp,
        ..ServiceConfig::default()
    }
}

impl Mcp {
    fn url(&self) -> String {
        self.server.url("/mcp")
    }

    fn request(&self, session: Option<&str>) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(self.url())
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, session: Option<&str>, body: Value) -> Reply {
        self.send(self.request(session).body(body.to_string()))
            .await
    }

    async fn initialize(&self, version: &str) -> Reply {
        self.post(
            None,
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "cortex-test", "version": "1.0.0"}
            }}),
        )
        .await
    }

    /// Initializes at `version`, sends `initialized`, returns the session id.
    async fn session(&self, version: &str) -> String {
        let reply = self.initialize(version).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let id = reply.headers["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        let note = self
            .post(
                Some(&id),
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            )
            .await;
        assert_eq!(note.status, 202);
        id
    }

    async fn rpc(&self, session: &str, method: &str, params: Value) -> Value {
        let reply = self
            .post(
                Some(session),
                json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
            )
            .await;
        assert_eq!(reply.status, 200, "{method}: {}", reply.body);
        assert_eq!(reply.body["id"], 1);
        reply.body
    }

    async fn call(&self, session: &str, tool: &str, arguments: Value) -> Value {
        let body = self
            .rpc(
                session,
                "tools/call",
                json!({"name": tool, "arguments": arguments}),
            )
            .await;
        body["result"].clone()
    }

    async fn open_stream(&self, session: &str, last_event_id: Option<&str>) -> SseReader {
        let mut request = self
            .http
            .get(self.url())
            .header("accept", "text/event-stream")
            .header("mcp-session-id", session);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        SseReader::new(response)
    }

    /// A stateless (2026-07-28) request with its mirrored headers.
    fn stateless(
        &self,
        method: &str,
        name: Option<&str>,
        params: Value,
    ) -> reqwest::RequestBuilder {
        self.stateless_headed("2026-07-28", method, name, params)
    }

    /// Like [`Self::stateless`], with `header_version` in MCP-Protocol-Version.
    fn stateless_headed(
        &self,
        header_version: &str,
        method: &str,
        name: Option<&str>,
        params: Value,
    ) -> reqwest::RequestBuilder {
        let mut params = params;
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "cortex-test", "version": "1.0.0"},
            "io.modelcontextprotocol/clientCapabilities": {}
        });
        let mut request = self
            .request(None)
            .header("mcp-protocol-version", header_version)
            .header("mcp-method", method)
            .body(
                json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params}).to_string(),
            );
        if let Some(name) = name {
            request = request.header("mcp-name", name);
        }
        request
    }
}

/// The next event that carries a message (priming events have no data).
async fn next_message(reader: &mut SseReader) -> Value {
    loop {
        let event: Event = reader.next(WAIT).await.expect("stream ended");
        if !event.data.is_empty() {
            return json_of(&event);
        }
    }
}

fn store(user: &str, content: &str) -> Value {
    json!({"user_id": user, "input_data": {"content": content}})
}

#[tokio::test]
async fn initialize_opens_a_session_and_initialized_is_accepted() {
    let mcp = memory().await;
    let reply = mcp.initialize("2025-06-18").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let session = reply.headers["mcp-session-id"].to_str().unwrap();
    assert!(session.len() >= 32, "a random id: {session}");
    let result = &reply.body["result"];
    assert_eq!(reply.body["id"], 0);
    assert_eq!(result["protocolVersion"], "2025-06-18");
    assert_eq!(result["serverInfo"]["name"], "memory");
    assert_eq!(result["capabilities"]["resources"]["subscribe"], true);
    assert!(result["capabilities"]["tools"].is_object());
    let note = mcp
        .post(
            Some(session),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
    assert_eq!(note.status, 202);
    assert_eq!(note.body, Value::Null);
}

#[tokio::test]
async fn version_negotiation_echoes_a_served_version_else_answers_the_latest() {
    let mcp = memory().await;
    for served in ["2025-03-26", "2025-06-18", "2025-11-25"] {
        let reply = mcp.initialize(served).await;
        assert_eq!(reply.body["result"]["protocolVersion"], served);
    }
    for other in ["2024-11-05", "2099-01-01", "2026-07-28"] {
        let reply = mcp.initialize(other).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.body["result"]["protocolVersion"], "2025-11-25",
            "{other}"
        );
    }
}

#[tokio::test]
async fn requests_need_a_live_session() {
    let mcp = memory().await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    // No session header: 400.
    let reply = mcp.post(None, list.clone()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"]["code"], -32600);
    // An unknown session: 404.
    let reply = mcp.post(Some("no-such-session"), list.clone()).await;
    assert_eq!(reply.status, 404);
    // DELETE ends a session; it is then unknown.
    let session = mcp.session("2025-11-25").await;
    assert_eq!(mcp.post(Some(&session), list.clone()).await.status, 200);
    let deleted = mcp
        .http
        .delete(mcp.url())
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(mcp.post(Some(&session), list.clone()).await.status, 404);
    let again = mcp
        .http
        .delete(mcp.url())
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn idle_sessions_expire_and_the_table_is_bounded() {
    let mcp = memory_with(mcp_config(McpConfig {
        session_ttl: Duration::from_millis(1000),
        max_sessions: 2,
        ..McpConfig::default()
    }))
    .await;
    let first = mcp.session("2025-11-25").await;
    let _second = mcp.session("2025-11-25").await;
    let refused = mcp.initialize("2025-11-25").await;
    assert_eq!(refused.status, 503);
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(refused.body["error"]["code"], -32603);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    assert_eq!(mcp.post(Some(&first), ping).await.status, 404, "expired");
    assert_eq!(mcp.initialize("2025-11-25").await.status, 200, "room again");
}

#[tokio::test]
async fn foreign_origins_are_refused_and_loopback_ones_allowed() {
    let mcp = memory().await;
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let foreign = mcp
        .send(
            mcp.request(None)
                .header("origin", "http://evil.example.com")
                .body(init.to_string()),
        )
        .await;
    assert_eq!(foreign.status, 403);
    assert_eq!(foreign.body["error"]["code"], -32600);
    let local = mcp
        .send(
            mcp.request(None)
                .header(
                    "origin",
                    format!("http://127.0.0.1:{}", mcp.server.addr.port()),
                )
                .body(init.to_string()),
        )
        .await;
    assert_eq!(local.status, 200);
    assert!(local.headers.contains_key("access-control-allow-origin"));
    let localhost = mcp
        .send(
            mcp.request(None)
                .header("origin", "http://localhost:6274")
                .body(init.to_string()),
        )
        .await;
    assert_eq!(localhost.status, 200);
    // A configured origin is allowed too.
    let configured = memory_with(mcp_config(McpConfig {
        allowed_origins: vec!["https://inspector.example.com".into()],
        ..McpConfig::default()
    }))
    .await;
    let reply = configured
        .send(
            configured
                .request(None)
                .header("origin", "https://inspector.example.com")
                .body(init.to_string()),
        )
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn protocol_version_header_must_name_a_served_version() {
    let mcp = memory().await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    // Before initialize (no session) and after it.
    let session = mcp.session("2025-11-25").await;
    for bad in ["invalid-protocol-version", "2000-01-01", "2099-01-01"] {
        for session in [None, Some(session.as_str())] {
            let reply = mcp
                .send(
                    mcp.request(session)
                        .header("mcp-protocol-version", bad)
                        .body(list.to_string()),
                )
                .await;
            assert_eq!(reply.status, 400, "{bad} {session:?}");
        }
    }
    // Another served version than the negotiated one is fine.
    let reply = mcp
        .send(
            mcp.request(Some(&session))
                .header("mcp-protocol-version", "2025-03-26")
                .body(list.to_string()),
        )
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn http_level_errors() {
    let mcp = memory().await;
    // Malformed JSON: -32700.
    let reply = mcp.send(mcp.request(None).body("{not json")).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"]["code"], -32700);
    let session = mcp.session("2025-11-25").await;
    let reply = mcp.send(mcp.request(Some(&session)).body("[1, 2")).await;
    assert_eq!(reply.body["error"]["code"], -32700);
    // Not a JSON-RPC message: -32600.
    let reply = mcp
        .post(Some(&session), json!({"id": 1, "method": "ping"}))
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"]["code"], -32600);
    // Not JSON at all: 415.
    let reply = mcp
        .http
        .post(mcp.url())
        .header("content-type", "text/plain")
        .body("ping")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 415);
    // Refusing JSON: 406.
    let reply = mcp
        .http
        .post(mcp.url())
        .header("content-type", "application/json")
        .header("accept", "text/html")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 406);
    // Methods other than POST, GET, DELETE: 405.
    let reply = mcp.http.put(mcp.url()).send().await.unwrap();
    assert_eq!(reply.status(), 405);
    assert!(reply.headers().contains_key("allow"));
    // GET needs a session and an event-stream Accept.
    let reply = mcp
        .http
        .get(mcp.url())
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    let reply = mcp
        .http
        .get(mcp.url())
        .header("accept", "application/json")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 406);
    // An unknown method: -32601; ping: {}.
    let reply = mcp.rpc(&session, "roots/list", json!({})).await;
    assert_eq!(reply["error"]["code"], -32601);
    let reply = mcp.rpc(&session, "ping", json!({})).await;
    assert_eq!(reply["result"], json!({}));
}

#[tokio::test]
async fn tools_list_carries_the_registry_schemas() {
    let mcp = memory().await;
    let (service, _dir) = cortex_test_support::memory_service().await;
    let session = mcp.session("2025-11-25").await;
    let reply = mcp.rpc(&session, "tools/list", json!({})).await;
    let tools = reply["result"]["tools"].as_array().unwrap();
    let expected = service.tools();
    assert_eq!(tools.len(), expected.len());
    for (tool, info) in tools.iter().zip(&expected) {
        assert_eq!(tool["name"], info.name);
        assert_eq!(tool["description"], info.description);
        assert_eq!(tool["inputSchema"], info.input_schema);
        assert_eq!(tool["inputSchema"]["type"], "object");
        let read_only = tool["annotations"]["readOnlyHint"] == true;
        assert_eq!(read_only, info.read_only, "{}", info.name);
    }
    assert!(
        tools
            .iter()
            .any(|t| t["name"] == "get_item" && t["annotations"]["readOnlyHint"] == true)
    );
    let reply = mcp
        .rpc(&session, "tools/list", json!({"cursor": "bogus"}))
        .await;
    assert_eq!(reply["error"]["code"], -32602);
}

#[tokio::test]
async fn tools_call_returns_structured_content_and_reports_failures_in_the_result() {
    let mcp = memory().await;
    let session = mcp.session("2025-11-25").await;
    let result = mcp
        .call(&session, "store_input", store("u1", "hello"))
        .await;
    assert_eq!(result["isError"], false);
    assert_eq!(result["structuredContent"]["status"], "stored");
    assert_eq!(result["structuredContent"]["user_id"], "u1");
    let item_id = result["structuredContent"]["item_id"].as_i64().unwrap();
    let text: Value = serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, result["structuredContent"]);
    let item = mcp
        .call(&session, "get_item", json!({"item_id": item_id}))
        .await;
    assert_eq!(item["structuredContent"]["content"], "hello");

    // A schema violation: a result with isError, naming the field.
    let failed = mcp
        .call(
            &session,
            "store_input",
            json!({"input_data": {"content": "x"}}),
        )
        .await;
    assert_eq!(failed["isError"], true);
    let text = failed["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("invalid_arguments"), "{text}");
    assert!(text.contains("user_id"), "{text}");
    assert_eq!(
        failed["structuredContent"]["error"]["code"],
        "invalid_arguments"
    );
    // A tool error (no such item): isError too.
    let missing = mcp
        .call(&session, "get_item", json!({"item_id": 999_999}))
        .await;
    assert_eq!(missing["isError"], true);

    // An unknown tool: a JSON-RPC error.
    let reply = mcp
        .rpc(
            &session,
            "tools/call",
            json!({"name": "nope", "arguments": {}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], -32602);
    assert!(reply["error"]["message"].as_str().unwrap().contains("nope"));
    let reply = mcp
        .rpc(
            &session,
            "tools/call",
            json!({"name": "get_item", "arguments": [1]}),
        )
        .await;
    assert_eq!(reply["error"]["code"], -32602);

    // 2025-03-26 predates structuredContent.
    let old = mcp.session("2025-03-26").await;
    let result = mcp.call(&old, "store_input", store("u1", "again")).await;
    assert!(result.get("structuredContent").is_none());
    assert_eq!(result["content"][0]["type"], "text");
}

#[tokio::test]
async fn resources_are_listed_as_templates_and_read_by_uri() {
    let mcp = memory().await;
    let session = mcp.session("2025-06-18").await;
    let reply = mcp.rpc(&session, "resources/list", json!({})).await;
    assert_eq!(
        reply["result"]["resources"],
        json!([]),
        "memory has only templates"
    );
    let reply = mcp
        .rpc(&session, "resources/templates/list", json!({}))
        .await;
    let templates = reply["result"]["resourceTemplates"].as_array().unwrap();
    let uris: Vec<&str> = templates
        .iter()
        .map(|t| t["uriTemplate"].as_str().unwrap())
        .collect();
    assert!(uris.contains(&"memory://history/{user_id}"), "{uris:?}");
    assert!(uris.contains(&"memory://item/{item_id}"), "{uris:?}");
    let stream = templates
        .iter()
        .find(|t| t["uriTemplate"] == "memory://history/{user_id}/stream")
        .unwrap();
    assert_eq!(stream["_meta"]["cortex/liveStream"], true);
    assert!(stream["name"].is_string() && stream["mimeType"] == "application/json");

    mcp.call(&session, "store_input", store("reader", "first"))
        .await;
    mcp.call(&session, "store_input", store("reader", "second"))
        .await;
    let reply = mcp
        .rpc(
            &session,
            "resources/read",
            json!({"uri": "memory://history/reader"}),
        )
        .await;
    let contents = reply["result"]["contents"].as_array().unwrap();
    assert_eq!(contents.len(), 1);
    assert_eq!(contents[0]["uri"], "memory://history/reader");
    assert_eq!(contents[0]["mimeType"], "application/json");
    let items: Value = serde_json::from_str(contents[0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(items[0]["content"], "second", "newest first");
    assert_eq!(items[1]["content"], "first");

    // Unknown resource, other scheme: -32002 (resource not found).
    for uri in ["memory://nothing/here", "other://history/reader"] {
        let reply = mcp
            .rpc(&session, "resources/read", json!({"uri": uri}))
            .await;
        assert_eq!(reply["error"]["code"], -32002, "{uri}");
    }
    // A bad parameter: -32602.
    let reply = mcp
        .rpc(
            &session,
            "resources/read",
            json!({"uri": "memory://history/reader/limit/many"}),
        )
        .await;
    assert_eq!(reply["error"]["code"], -32602);
}

#[tokio::test]
async fn subscribed_resources_send_updates_on_the_session_stream() {
    let mcp = memory().await;
    let session = mcp.session("2025-11-25").await;
    let uri = "memory://history/watcher/stream";
    let mut stream = mcp.open_stream(&session, None).await;
    let reply = mcp
        .rpc(&session, "resources/subscribe", json!({"uri": uri}))
        .await;
    assert_eq!(reply["result"], json!({}));

    mcp.call(&session, "store_input", store("watcher", "news"))
        .await;
    let note = next_message(&mut stream).await;
    assert_eq!(note["method"], "notifications/resources/updated");
    assert_eq!(note["params"]["uri"], uri);
    assert!(note.get("id").is_none(), "a notification");

    // Another user's item does not notify this subscription.
    mcp.call(&session, "store_input", store("someone-else", "x"))
        .await;
    let raw = stream.raw_for(Duration::from_millis(300)).await;
    assert!(!raw.contains("resources/updated"), "{raw}");

    // After unsubscribe, nothing more arrives.
    let reply = mcp
        .rpc(&session, "resources/unsubscribe", json!({"uri": uri}))
        .await;
    assert_eq!(reply["result"], json!({}));
    mcp.call(&session, "store_input", store("watcher", "later"))
        .await;
    let raw = stream.raw_for(Duration::from_millis(400)).await;
    assert!(!raw.contains("resources/updated"), "{raw}");
}

#[tokio::test]
async fn updates_wait_for_the_stream_and_resume_after_the_last_event_id() {
    let mcp = memory().await;
    let session = mcp.session("2025-11-25").await;
    let uri = "memory://history/later/stream";
    mcp.rpc(&session, "resources/subscribe", json!({"uri": uri}))
        .await;
    // Stored before any stream is open: queued for it.
    mcp.call(&session, "store_input", store("later", "one"))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut stream = mcp.open_stream(&session, None).await;
    let first = stream.next(WAIT).await.unwrap();
    assert_eq!(first.data, "", "a priming event first");
    let event = loop {
        let event = stream.next(WAIT).await.unwrap();
        if !event.data.is_empty() {
            break event;
        }
    };
    assert_eq!(json_of(&event)["params"]["uri"], uri);
    let id = event.id.clone().unwrap();
    drop(stream);
    // A reconnect naming an earlier id gets the update again.
    let mut resumed = mcp.open_stream(&session, Some("0")).await;
    let again = loop {
        let event = resumed.next(WAIT).await.unwrap();
        if !event.data.is_empty() {
            break event;
        }
    };
    assert_eq!(again.id.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn subscribe_needs_a_resource_with_a_live_stream() {
    let mcp = memory().await;
    let session = mcp.session("2025-11-25").await;
    let reply = mcp
        .rpc(
            &session,
            "resources/subscribe",
            json!({"uri": "memory://history/u"}),
        )
        .await;
    assert_eq!(reply["error"]["code"], -32602);
    let reply = mcp
        .rpc(
            &session,
            "resources/subscribe",
            json!({"uri": "memory://nope"}),
        )
        .await;
    assert_eq!(reply["error"]["code"], -32002);
    let limited = memory_with(mcp_config(McpConfig {
        max_subscriptions: 1,
        ..McpConfig::default()
    }))
    .await;
    let session = limited.session("2025-11-25").await;
    let ok = limited
        .rpc(
            &session,
            "resources/subscribe",
            json!({"uri": "memory://history/a/stream"}),
        )
        .await;
    assert_eq!(ok["result"], json!({}));
    let over = limited
        .rpc(
            &session,
            "resources/subscribe",
            json!({"uri": "memory://history/b/stream"}),
        )
        .await;
    assert_eq!(over["error"]["code"], -32603);
}

#[tokio::test]
async fn batches_follow_the_negotiated_revision() {
    let mcp = memory().await;
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "no/such"},
        {"jsonrpc": "2.0", "id": 4}
    ]);
    // 2025-03-26 allowed batches: one response per request, in order.
    let old = mcp.session("2025-03-26").await;
    let reply = mcp.post(Some(&old), batch.clone()).await;
    assert_eq!(reply.status, 200);
    let replies = reply.body.as_array().unwrap();
    assert_eq!(replies.len(), 4, "{}", reply.body);
    assert_eq!(replies[0]["id"], 1);
    assert_eq!(replies[0]["result"], json!({}));
    assert!(replies[1]["result"]["tools"].is_array());
    assert_eq!(replies[2]["error"]["code"], -32601);
    assert_eq!(replies[3]["error"]["code"], -32600);
    // Notifications only: 202.
    let reply = mcp
        .post(
            Some(&old),
            json!([{"jsonrpc": "2.0", "method": "notifications/initialized"}]),
        )
        .await;
    assert_eq!(reply.status, 202);
    // Later revisions removed them: 400 with one JSON-RPC error.
    for version in ["2025-06-18", "2025-11-25"] {
        let session = mcp.session(version).await;
        let reply = mcp.post(Some(&session), batch.clone()).await;
        assert_eq!(reply.status, 400, "{version}");
        assert_eq!(reply.body["error"]["code"], -32600);
    }
    // The header can declare 2025-03-26 on a later session.
    let session = mcp.session("2025-11-25").await;
    let reply = mcp
        .send(
            mcp.request(Some(&session))
                .header("mcp-protocol-version", "2025-03-26")
                .body(batch.to_string()),
        )
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn shutdown_ends_the_session_stream() {
    let mcp = memory().await;
    let session = mcp.session("2025-11-25").await;
    let mut stream = mcp.open_stream(&session, None).await;
    let Mcp { server, .. } = mcp;
    server.shutdown(WAIT).await;
    stream.finish(WAIT).await.unwrap();
}

#[tokio::test]
async fn a_new_stream_replaces_the_old_one() {
    let mcp = memory().await;
    let session = mcp.session("2025-11-25").await;
    let mut first = mcp.open_stream(&session, None).await;
    let _second = mcp.open_stream(&session, None).await;
    first.finish(WAIT).await.unwrap();
}

mod stateless {
    use super::*;

    #[tokio::test]
    async fn discover_and_calls_without_a_session() {
        let mcp = memory().await;
        let reply = mcp
            .send(mcp.stateless("server/discover", None, json!({})))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(!reply.headers.contains_key("mcp-session-id"));
        let result = &reply.body["result"];
        assert_eq!(result["resultType"], "complete");
        assert_eq!(result["supportedVersions"][0], "2026-07-28");
        assert_eq!(result["serverInfo"]["name"], "memory");

        let reply = mcp
            .send(mcp.stateless(
                "tools/call",
                Some("store_input"),
                json!({"name": "store_input", "arguments": store("s1", "hi")}),
            ))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["result"]["resultType"], "complete");
        assert_eq!(
            reply.body["result"]["structuredContent"]["status"],
            "stored"
        );

        let reply = mcp.send(mcp.stateless("tools/list", None, json!({}))).await;
        assert!(reply.body["result"]["tools"].is_array());

        // Not found is -32602 in this revision.
        let uri = "memory://nothing";
        let reply = mcp
            .send(mcp.stateless("resources/read", Some(uri), json!({"uri": uri})))
            .await;
        assert_eq!(reply.body["error"]["code"], -32602);
        // Names outside plain ASCII travel base64-encoded.
        let uri = "memory://history/s1";
        let reply = mcp
            .send(mcp.stateless(
                "resources/read",
                Some("=?base64?bWVtb3J5Oi8vaGlzdG9yeS9zMQ==?="),
                json!({"uri": uri}),
            ))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["result"]["contents"][0]["uri"], uri);
        // Sessions and their methods are not part of it.
        let reply = mcp
            .send(mcp.stateless("resources/subscribe", None, json!({"uri": uri})))
            .await;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.body["error"]["code"], -32601);
    }

    #[tokio::test]
    async fn every_request_carries_its_metadata() {
        let mcp = memory().await;
        let request = |params: Value| {
            mcp.request(None)
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "server/discover")
                .body(
                    json!({"jsonrpc": "2.0", "id": 5, "method": "server/discover", "params": params})
                        .to_string(),
                )
        };
        for params in [
            json!({}),
            json!({"_meta": {"io.modelcontextprotocol/clientCapabilities": {}}}),
            json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}),
        ] {
            let reply = mcp.send(request(params.clone())).await;
            assert_eq!(reply.status, 400, "{params}");
            assert_eq!(reply.body["error"]["code"], -32602, "{params}");
            assert_eq!(reply.body["id"], 5);
        }
        // clientInfo is optional.
        let reply = mcp
            .send(request(json!({"_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}}})))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let result = &reply.body["result"];
        assert_eq!(
            result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "memory"
        );
        assert_eq!(result["cacheScope"], "public");
        assert_eq!(result["ttlMs"], 60_000);
    }

    #[tokio::test]
    async fn lists_carry_caching_hints_and_session_methods_are_gone() {
        let mcp = memory().await;
        for method in ["tools/list", "resources/list", "resources/templates/list"] {
            let reply = mcp.send(mcp.stateless(method, None, json!({}))).await;
            assert_eq!(reply.status, 200, "{method}");
            assert_eq!(reply.body["result"]["cacheScope"], "public", "{method}");
            assert!(reply.body["result"]["ttlMs"].is_u64(), "{method}");
        }
        for removed in [
            "initialize",
            "ping",
            "logging/setLevel",
            "resources/unsubscribe",
        ] {
            let reply = mcp.send(mcp.stateless(removed, None, json!({}))).await;
            assert_eq!(reply.status, 404, "{removed}");
            assert_eq!(reply.body["error"]["code"], -32601, "{removed}");
            assert_eq!(reply.body["id"], 9);
        }
        // A session header on a stateless request is ignored.
        let reply = mcp
            .send(
                mcp.stateless("tools/list", None, json!({}))
                    .header("mcp-session-id", "stale-session"),
            )
            .await;
        assert_eq!(reply.status, 200);
        assert!(!reply.headers.contains_key("mcp-session-id"));
        // The URI of a missing resource is named in the error.
        let uri = "memory://item/424242";
        let reply = mcp
            .send(mcp.stateless("resources/read", Some(uri), json!({"uri": uri})))
            .await;
        assert_eq!(reply.body["error"]["code"], -32602);
        assert_eq!(reply.body["error"]["data"]["uri"], uri);
    }

    #[tokio::test]
    async fn mirrored_tool_parameters_are_checked() {
        use cortex_service::{Service, Tool};
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "n": {"type": "integer", "x-mcp-header": "N"},
            "query": {"type": "string"}
        }, "required": ["query"]});
        let service = Service::builder("regional", "1.0.0")
            .tool(Tool::new(
                "search",
                "Searches a region.",
                schema,
                |_ctx, args| async move { Ok(Value::Object(args)) },
            ))
            .build()
            .unwrap();
        let server = TestServer::start(service, ServiceConfig::default()).await;
        let mcp = Mcp {
            server,
            http: reqwest::Client::new(),
            _dir: Box::new(()),
        };
        let call = |args: Value| {
            mcp.stateless(
                "tools/call",
                Some("search"),
                json!({"name": "search", "arguments": args}),
            )
        };
        let args = json!({"region": "Zürich", "n": 42, "query": "q"});
        // Matching headers (the non-ASCII value base64-encoded): served.
        let reply = mcp
            .send(
                call(args.clone())
                    .header("mcp-param-region", "=?base64?WsO8cmljaA==?=")
                    .header("mcp-param-n", "42"),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.body["result"]["structuredContent"]["region"],
            "Zürich"
        );
        // Missing, or disagreeing: 400 HeaderMismatch.
        let reply = mcp
            .send(call(args.clone()).header("mcp-param-n", "42"))
            .await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.body["error"]["code"], -32020);
        let reply = mcp
            .send(
                call(args.clone())
                    .header("mcp-param-region", "=?base64?WsO8cmljaA==?=")
                    .header("mcp-param-n", "41"),
            )
            .await;
        assert_eq!(reply.body["error"]["code"], -32020);
        // An argument that is absent needs no header.
        let reply = mcp.send(call(json!({"query": "q"}))).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    #[tokio::test]
    async fn mirrored_headers_must_match_the_body() {
        let mcp = memory().await;
        let params = json!({"name": "get_item", "arguments": {"item_id": 1}});
        // Mcp-Name disagrees.
        let reply = mcp
            .send(mcp.stateless("tools/call", Some("store_input"), params.clone()))
            .await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.body["error"]["code"], -32020);
        // Mcp-Name missing.
        let reply = mcp
            .send(mcp.stateless("tools/call", None, params.clone()))
            .await;
        assert_eq!(reply.body["error"]["code"], -32020);
        // Mcp-Method sent twice, one disagreeing.
        let reply = mcp
            .send(
                mcp.stateless("tools/call", Some("get_item"), params.clone())
                    .header("mcp-method", "tools/list"),
            )
            .await;
        assert_eq!(reply.body["error"]["code"], -32020);
        // Header and _meta versions disagree.
        let reply = mcp
            .send(mcp.stateless_headed("2025-11-25", "tools/list", None, json!({})))
            .await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.body["error"]["code"], -32020);
        // A version not served: -32022 naming the supported ones.
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2099-01-01",
                      "io.modelcontextprotocol/clientCapabilities": {}}}});
        let reply = mcp
            .send(
                mcp.request(None)
                    .header("mcp-protocol-version", "2099-01-01")
                    .header("mcp-method", "tools/list")
                    .body(body.to_string()),
            )
            .await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.body["error"]["code"], -32022);
        assert_eq!(reply.body["error"]["data"]["requested"], "2099-01-01");
        assert!(reply.body["error"]["data"]["supported"].is_array());
        // Unknown methods: 404 with -32601.
        let reply = mcp.send(mcp.stateless("no/such", None, json!({}))).await;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.body["error"]["code"], -32601);
        // No batches.
        let reply = mcp
            .send(
                mcp.request(None)
                    .header("mcp-protocol-version", "2026-07-28")
                    .body(json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]).to_string()),
            )
            .await;
        assert_eq!(reply.status, 400);
        assert_eq!(reply.body["error"]["code"], -32600);
    }

    #[tokio::test]
    async fn listen_acknowledges_and_streams_updates() {
        let mcp = memory().await;
        let uri = "memory://history/listener/stream";
        let response = mcp
            .stateless(
                "subscriptions/listen",
                None,
                json!({"notifications": {
                    "resourceSubscriptions": [uri, "memory://history/not-live"],
                    "toolsListChanged": true
                }}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut stream = SseReader::new(response);
        let ack = next_message(&mut stream).await;
        assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
        assert_eq!(
            ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            9
        );
        assert_eq!(
            ack["params"]["notifications"],
            json!({"resourceSubscriptions": [uri]}),
            "only what is honoured"
        );
        let reply = mcp
            .send(mcp.stateless(
                "tools/call",
                Some("store_input"),
                json!({"name": "store_input", "arguments": store("listener", "ping")}),
            ))
            .await;
        assert_eq!(reply.status, 200);
        let note = next_message(&mut stream).await;
        assert_eq!(note["method"], "notifications/resources/updated");
        assert_eq!(note["params"]["uri"], uri);
        assert_eq!(
            note["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            9
        );
    }
}
