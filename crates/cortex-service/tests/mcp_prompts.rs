//! MCP prompts, completion and logging at `/mcp`, over real loopback HTTP,
//! on a small service with a prompt, a completable resource template and a
//! tool that logs to its caller.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cortex_service::{
    LogLevel, Prompt, PromptArgument, PromptMessage, Resource, ResourceContent, Role, Service,
    ServiceConfig, ServiceError, Tool,
};
use cortex_test_support::{SseReader, TestServer};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

const USERS: [&str; 3] = ["alice", "albert", "bob"];

fn service() -> Service {
    Service::builder("notes", "0.1.0")
        .prompt(
            Prompt::new(
                "summarize",
                "Summarizes a user's notes.",
                |_ctx, args| async move {
                    let user = args.get("user_id").cloned().unwrap_or_default();
                    let style = args.get("style").cloned().unwrap_or_else(|| "short".into());
                    Ok(vec![
                        PromptMessage::user(format!("Summarize the notes of {user}, {style}.")),
                        PromptMessage::resource(
                            Role::User,
                            format!("notes://notes/{user}"),
                            "text/plain",
                            "first note",
                        ),
                    ])
                },
            )
            .with_title("Summarize notes")
            .argument(
                PromptArgument::new("user_id", "Whose notes.")
                    .required()
                    .with_completer(|typed, _context| {
                        USERS
                            .iter()
                            .filter(|u| u.starts_with(typed))
                            .map(|u| u.to_string())
                            .collect()
                    }),
            )
            .argument(PromptArgument::new("style", "How long."))
            .argument(
                PromptArgument::new("mood", "Breaks its completer.")
                    .with_completer(|_, _| panic!("completer bug")),
            ),
        )
        .prompt(Prompt::new(
            "broken",
            "Always fails.",
            |_ctx, _args| async move { Err(ServiceError::unavailable("the store is away")) },
        ))
        .resource(
            Resource::new(
                "notes/{user_id}",
                "A user's notes.",
                |_ctx, _params| async { Ok(ResourceContent::Json(json!([]))) },
            )
            .with_completer("user_id", |typed, _context| {
                (0..150).map(|i| format!("{typed}{i}")).collect()
            }),
        )
        .tool(Tool::new(
            "work",
            "Logs at every level, then answers.",
            json!({"type": "object"}),
            |ctx, _args| async move {
                ctx.log(LogLevel::Debug, json!("debug detail"));
                ctx.log(LogLevel::Info, json!({"step": 1}));
                ctx.log_as(LogLevel::Error, Some("work"), json!("it went wrong"));
                Ok(json!({"done": true}))
            },
        ))
        .tool(Tool::new(
            "slow",
            "Reports progress three times, logs, then answers.",
            json!({"type": "object"}),
            |ctx, _args| async move {
                for step in 1..=3 {
                    ctx.progress(f64::from(step), Some(3.0), Some(&format!("step {step}")));
                }
                ctx.log(LogLevel::Warning, json!("almost done"));
                Ok(json!({"sent": true}))
            },
        ))
        .tool(Tool::new(
            "chatty",
            "Reports more progress than a call may send.",
            json!({"type": "object"}),
            |ctx, _args| async move {
                let mut queued = 0u64;
                for step in 0..2000 {
                    if ctx.progress(f64::from(step), None, None) {
                        queued += 1;
                    }
                }
                Ok(json!({"queued": queued}))
            },
        ))
        .build()
        .unwrap()
}

fn bare_service() -> Service {
    Service::builder("bare", "0.1.0").build().unwrap()
}

struct Client {
    server: TestServer,
    http: reqwest::Client,
}

impl Client {
    async fn start(service: Service) -> Self {
        Self {
            server: TestServer::start(service, ServiceConfig::default()).await,
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, session: Option<&str>, body: Value) -> (reqwest::StatusCode, Value) {
        let mut request = self
            .http
            .post(self.server.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        let response = request.body(body.to_string()).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, body)
    }

    /// Initializes; the session id and the capabilities.
    async fn session(&self) -> (String, Value) {
        let response = self
            .http
            .post(self.server.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "test", "version": "1"}
                }})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        let id = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body: Value = response.json().await.unwrap();
        let (status, _) = self
            .post(
                Some(&id),
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            )
            .await;
        assert_eq!(status, 202);
        (id, body["result"]["capabilities"].clone())
    }

    /// A request's whole JSON-RPC response.
    async fn rpc(&self, session: &str, method: &str, params: Value) -> Value {
        let (status, body) = self
            .post(
                Some(session),
                json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn stream(&self, session: &str) -> SseReader {
        let response = self
            .http
            .get(self.server.url("/mcp"))
            .header("accept", "text/event-stream")
            .header("mcp-session-id", session)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        SseReader::new(response)
    }
}

/// The next JSON-RPC message on `stream`, skipping priming events.
async fn next_message(stream: &mut SseReader) -> Value {
    loop {
        let event = stream.next(WAIT).await.expect("stream open");
        if !event.data.trim().is_empty() {
            return serde_json::from_str(&event.data).unwrap();
        }
    }
}

#[tokio::test]
async fn capabilities_follow_the_registry() {
    let client = Client::start(service()).await;
    let (_, capabilities) = client.session().await;
    assert_eq!(capabilities["prompts"], json!({"listChanged": false}));
    assert_eq!(capabilities["completions"], json!({}));
    assert_eq!(capabilities["logging"], json!({}));

    let bare = Client::start(bare_service()).await;
    let (session, capabilities) = bare.session().await;
    assert!(capabilities.get("prompts").is_none(), "{capabilities}");
    assert!(capabilities.get("completions").is_none(), "{capabilities}");
    assert_eq!(capabilities["logging"], json!({}));
    let listed = bare.rpc(&session, "prompts/list", json!({})).await;
    assert_eq!(listed["result"]["prompts"], json!([]));
}

#[tokio::test]
async fn prompts_are_listed_and_filled_in() {
    let client = Client::start(service()).await;
    let (session, _) = client.session().await;
    let listed = client.rpc(&session, "prompts/list", json!({})).await;
    let prompts = listed["result"]["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 2);
    let summarize = prompts.iter().find(|p| p["name"] == "summarize").unwrap();
    assert_eq!(summarize["title"], "Summarize notes");
    assert_eq!(summarize["description"], "Summarizes a user's notes.");
    assert_eq!(
        summarize["arguments"],
        json!([
            {"name": "user_id", "description": "Whose notes.", "required": true},
            {"name": "style", "description": "How long.", "required": false},
            {"name": "mood", "description": "Breaks its completer.", "required": false},
        ])
    );
    let paged = client
        .rpc(&session, "prompts/list", json!({"cursor": "x"}))
        .await;
    assert_eq!(paged["error"]["code"], -32602);

    let got = client
        .rpc(
            &session,
            "prompts/get",
            json!({"name": "summarize", "arguments": {"user_id": "alice"}}),
        )
        .await;
    let result = &got["result"];
    assert_eq!(result["description"], "Summarizes a user's notes.");
    assert_eq!(
        result["messages"][0],
        json!({"role": "user", "content": {"type": "text", "text": "Summarize the notes of alice, short."}})
    );
    assert_eq!(
        result["messages"][1]["content"],
        json!({"type": "resource", "resource": {
            "uri": "notes://notes/alice", "mimeType": "text/plain", "text": "first note"
        }})
    );
}

#[tokio::test]
async fn bad_prompt_requests_are_invalid_params() {
    let client = Client::start(service()).await;
    let (session, _) = client.session().await;
    let missing = client
        .rpc(
            &session,
            "prompts/get",
            json!({"name": "summarize", "arguments": {"style": "long"}}),
        )
        .await;
    assert_eq!(missing["error"]["code"], -32602, "{missing}");
    let message = missing["error"]["message"].as_str().unwrap();
    assert!(message.contains("user_id"), "{message}");

    let unknown = client
        .rpc(&session, "prompts/get", json!({"name": "nope"}))
        .await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    assert!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope")
    );

    let not_text = client
        .rpc(
            &session,
            "prompts/get",
            json!({"name": "summarize", "arguments": {"user_id": 7}}),
        )
        .await;
    assert_eq!(not_text["error"]["code"], -32602, "{not_text}");

    let failing = client
        .rpc(&session, "prompts/get", json!({"name": "broken"}))
        .await;
    assert_eq!(failing["error"]["code"], -32603, "{failing}");
    assert_eq!(failing["error"]["data"]["code"], "unavailable");
}

#[tokio::test]
async fn prompt_arguments_and_template_parameters_complete() {
    let client = Client::start(service()).await;
    let (session, _) = client.session().await;
    let prompt = client
        .rpc(
            &session,
            "completion/complete",
            json!({
                "ref": {"type": "ref/prompt", "name": "summarize"},
                "argument": {"name": "user_id", "value": "al"},
            }),
        )
        .await;
    assert_eq!(
        prompt["result"]["completion"],
        json!({"values": ["alice", "albert"], "total": 2, "hasMore": false})
    );
    let no_completer = client
        .rpc(
            &session,
            "completion/complete",
            json!({
                "ref": {"type": "ref/prompt", "name": "summarize"},
                "argument": {"name": "style", "value": ""},
            }),
        )
        .await;
    assert_eq!(no_completer["result"]["completion"]["values"], json!([]));

    let template = client
        .rpc(
            &session,
            "completion/complete",
            json!({
                "ref": {"type": "ref/resource", "uri": "notes://notes/{user_id}"},
                "argument": {"name": "user_id", "value": "u"},
                "context": {"arguments": {}},
            }),
        )
        .await;
    let completion = &template["result"]["completion"];
    assert_eq!(completion["values"].as_array().unwrap().len(), 100);
    assert_eq!(completion["values"][0], "u0");
    assert_eq!(completion["total"], 150);
    assert_eq!(completion["hasMore"], true);

    let panicked = client
        .rpc(
            &session,
            "completion/complete",
            json!({
                "ref": {"type": "ref/prompt", "name": "summarize"},
                "argument": {"name": "mood", "value": ""},
            }),
        )
        .await;
    assert_eq!(panicked["error"]["code"], -32603, "{panicked}");
    // The connection and the session still serve.
    let again = client.rpc(&session, "ping", json!({})).await;
    assert_eq!(again["result"], json!({}));

    for bad in [
        json!({"ref": {"type": "ref/prompt", "name": "nope"}, "argument": {"name": "a", "value": ""}}),
        json!({"ref": {"type": "ref/resource", "uri": "notes://other/{x}"}, "argument": {"name": "x", "value": ""}}),
        json!({"ref": {"type": "ref/tool", "name": "work"}, "argument": {"name": "a", "value": ""}}),
        json!({"ref": {"type": "ref/prompt", "name": "summarize"}}),
    ] {
        let reply = client
            .rpc(&session, "completion/complete", bad.clone())
            .await;
        assert_eq!(reply["error"]["code"], -32602, "{bad}: {reply}");
    }
}

#[tokio::test]
async fn handler_logs_reach_the_session_stream_at_its_level() {
    let client = Client::start(service()).await;
    let (session, _) = client.session().await;
    let mut stream = client.stream(&session).await;

    // The default level is info: debug is held back.
    let called = client
        .rpc(
            &session,
            "tools/call",
            json!({"name": "work", "arguments": {}}),
        )
        .await;
    assert_eq!(called["result"]["isError"], false, "{called}");
    let first = next_message(&mut stream).await;
    assert_eq!(first["method"], "notifications/message");
    assert_eq!(
        first["params"],
        json!({"level": "info", "data": {"step": 1}})
    );
    let second = next_message(&mut stream).await;
    assert_eq!(
        second["params"],
        json!({"level": "error", "logger": "work", "data": "it went wrong"})
    );

    // At error, only the error arrives; at debug, all three.
    let set = client
        .rpc(&session, "logging/setLevel", json!({"level": "error"}))
        .await;
    assert_eq!(set["result"], json!({}));
    client
        .rpc(
            &session,
            "tools/call",
            json!({"name": "work", "arguments": {}}),
        )
        .await;
    let only = next_message(&mut stream).await;
    assert_eq!(only["params"]["level"], "error");
    client
        .rpc(&session, "logging/setLevel", json!({"level": "debug"}))
        .await;
    client
        .rpc(
            &session,
            "tools/call",
            json!({"name": "work", "arguments": {}}),
        )
        .await;
    let levels: Vec<Value> = [
        next_message(&mut stream).await,
        next_message(&mut stream).await,
        next_message(&mut stream).await,
    ]
    .iter()
    .map(|m| m["params"]["level"].clone())
    .collect();
    assert_eq!(levels, vec![json!("debug"), json!("info"), json!("error")]);

    let bad = client
        .rpc(&session, "logging/setLevel", json!({"level": "verbose"}))
        .await;
    assert_eq!(bad["error"]["code"], -32602);
    let missing = client.rpc(&session, "logging/setLevel", json!({})).await;
    assert_eq!(missing["error"]["code"], -32602);
}

#[tokio::test]
async fn logs_are_per_session() {
    let client = Client::start(service()).await;
    let (quiet, _) = client.session().await;
    let (loud, _) = client.session().await;
    client
        .rpc(&quiet, "logging/setLevel", json!({"level": "emergency"}))
        .await;
    let mut quiet_stream = client.stream(&quiet).await;
    let mut loud_stream = client.stream(&loud).await;
    client
        .rpc(
            &quiet,
            "tools/call",
            json!({"name": "work", "arguments": {}}),
        )
        .await;
    client
        .rpc(
            &loud,
            "tools/call",
            json!({"name": "work", "arguments": {}}),
        )
        .await;
    let loud_first = next_message(&mut loud_stream).await;
    assert_eq!(loud_first["params"]["level"], "info");
    // The quiet session's stream carries nothing but keep-alives.
    let quiet_next =
        tokio::time::timeout(Duration::from_millis(300), next_message(&mut quiet_stream)).await;
    assert!(quiet_next.is_err(), "{quiet_next:?}");
}

#[tokio::test]
async fn the_dialect_and_in_process_calls_log_nowhere() {
    // A tool called directly has no MCP caller: logging is a no-op.
    let service = Service::builder("x", "1")
        .tool(Tool::new(
            "t",
            "logs",
            json!({"type": "object"}),
            |ctx, _| async move { Ok(json!({"queued": ctx.log(LogLevel::Emergency, json!("x"))})) },
        ))
        .build()
        .unwrap();
    let value = service
        .call_tool(Default::default(), "t", Default::default())
        .await
        .unwrap();
    assert_eq!(value, json!({"queued": false}));
}

/// POSTs `body` and reads the answer as SSE: every JSON-RPC message in order.
async fn post_streamed(client: &Client, session: &str, body: Value) -> Vec<Value> {
    let response = client
        .http
        .post(client.server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", session)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = SseReader::new(response);
    let mut messages = Vec::new();
    while let Some(event) = stream.next(WAIT).await {
        if !event.data.trim().is_empty() {
            // A 2025-11-25 session's POST stream is resumable: its events
            // carry the call stream's ids.
            assert!(
                event.id.as_deref().is_some_and(|id| id.starts_with('c')),
                "{:?}",
                event.id
            );
            messages.push(serde_json::from_str(&event.data).unwrap());
        }
    }
    messages
}

#[tokio::test]
async fn progress_and_logs_arrive_on_the_post_stream_before_the_answer() {
    let client = Client::start(service()).await;
    let (session, _) = client.session().await;
    let messages = post_streamed(
        &client,
        &session,
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
            "name": "slow", "arguments": {}, "_meta": {"progressToken": "tok-1"}
        }}),
    )
    .await;
    assert_eq!(messages.len(), 5, "{messages:?}");
    for (i, message) in messages[..3].iter().enumerate() {
        assert_eq!(message["method"], "notifications/progress");
        assert_eq!(
            message["params"],
            json!({"progressToken": "tok-1", "progress": (i + 1) as f64, "total": 3.0,
                   "message": format!("step {}", i + 1)})
        );
    }
    assert_eq!(messages[3]["method"], "notifications/message");
    assert_eq!(messages[3]["params"]["level"], "warning");
    assert_eq!(messages[4]["id"], 5);
    assert_eq!(
        messages[4]["result"]["structuredContent"],
        json!({"sent": true})
    );

    // The log went to the POST stream, not the session's GET stream.
    let mut stream = client.stream(&session).await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), next_message(&mut stream)).await;
    assert!(quiet.is_err(), "{quiet:?}");
}

#[tokio::test]
async fn without_a_progress_token_the_answer_is_json_and_progress_goes_nowhere() {
    let client = Client::start(service()).await;
    let (session, _) = client.session().await;
    let (status, body) = client
        .post(
            Some(&session),
            json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": {
                "name": "slow", "arguments": {}
            }}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["structuredContent"], json!({"sent": true}));
    // The warning went to the GET stream; no progress anywhere.
    let mut stream = client.stream(&session).await;
    let message = next_message(&mut stream).await;
    assert_eq!(message["method"], "notifications/message");

    // A client that does not accept SSE gets JSON even with a token.
    let response = client
        .http
        .post(client.server.url("/mcp"))
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .header("mcp-session-id", &session)
        .body(
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
                "name": "slow", "arguments": {}, "_meta": {"progressToken": 1}
            }})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 7);
}

#[tokio::test]
async fn progress_per_call_is_bounded() {
    let client = Client::start(service()).await;
    let (session, _) = client.session().await;
    let messages = post_streamed(
        &client,
        &session,
        json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {
            "name": "chatty", "arguments": {}, "_meta": {"progressToken": 9}
        }}),
    )
    .await;
    let answer = messages.last().unwrap();
    assert_eq!(answer["id"], 8);
    assert_eq!(
        answer["result"]["structuredContent"]["queued"],
        cortex_service::notify::MAX_PROGRESS_PER_CALL
    );
    // A slow reader may lose the oldest (the buffer holds 256 by default),
    // never the newest or the answer.
    let progress = messages.len() - 1;
    assert!((1..=1024).contains(&progress), "{progress}");
    assert_eq!(messages[progress - 1]["params"]["progress"], 1023.0);
}

/// A stateless (2026-07-28) request: no session, the revision in `_meta`
/// and the mirrored headers.
async fn stateless(client: &Client, method: &str, name: Option<&str>, params: Value) -> Value {
    let mut params = params;
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let mut request = client
        .http
        .post(client.server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = name {
        request = request.header("mcp-name", name);
    }
    let response = request
        .body(json!({"jsonrpc": "2.0", "id": 3, "method": method, "params": params}).to_string())
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

#[tokio::test]
async fn prompts_are_served_statelessly_without_logging() {
    let client = Client::start(service()).await;
    let discovered = stateless(&client, "server/discover", None, json!({})).await;
    let capabilities = &discovered["result"]["capabilities"];
    assert!(capabilities["prompts"].is_object(), "{discovered}");
    assert!(capabilities.get("logging").is_none(), "{discovered}");
    let listed = stateless(&client, "prompts/list", None, json!({})).await;
    assert_eq!(listed["result"]["cacheScope"], "public", "{listed}");
    assert_eq!(
        listed["result"]["prompts"].as_array().map(Vec::len),
        Some(2)
    );
    let got = stateless(
        &client,
        "prompts/get",
        Some("summarize"),
        json!({"name": "summarize", "arguments": {"user_id": "bob"}}),
    )
    .await;
    assert_eq!(
        got["result"]["messages"][0]["content"]["text"],
        "Summarize the notes of bob, short."
    );
    let mismatch = stateless(
        &client,
        "prompts/get",
        Some("other"),
        json!({"name": "summarize", "arguments": {"user_id": "bob"}}),
    )
    .await;
    assert_eq!(mismatch["error"]["code"], -32020, "{mismatch}");
}
