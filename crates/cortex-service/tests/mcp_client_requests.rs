//! Requests from a handler to its MCP client (elicitation, sampling) and
//! resumable call streams, over real loopback HTTP: the request goes out on
//! the call's response stream, the answer comes back as a POST of the same
//! session and user, and every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cortex_service::{CreateMessageParams, McpConfig, Service, ServiceConfig, ServiceError, Tool};
use cortex_test_support::auth::{bearer, config as auth_config, token};
use cortex_test_support::{SseReader, TestServer};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

fn service() -> Service {
    Service::builder("asking", "0.1.0")
        .tool(Tool::new(
            "ask_name",
            "Asks the user for a name.",
            json!({"type": "object"}),
            |ctx, _args| async move {
                let form = json!({
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"]
                });
                let answer = ctx.elicit("Who are you?", form).await?;
                Ok(json!({"action": answer.action, "content": answer.content}))
            },
        ))
        .tool(Tool::new(
            "ask_model",
            "Asks the client's model.",
            json!({"type": "object"}),
            |ctx, _args| async move {
                let sampled = ctx
                    .sample(CreateMessageParams::user("Say hello", 20))
                    .await?;
                Ok(json!({"text": sampled.text(), "model": sampled.model}))
            },
        ))
        .tool(Tool::new(
            "poll",
            "Ends its stream, then answers.",
            json!({"type": "object"}),
            |ctx, _args| async move {
                if !ctx.end_stream() {
                    return Err(ServiceError::internal("the stream could not end early"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(json!({"after": "the stream ended"}))
            },
        ))
        .build()
        .unwrap()
}

struct Client {
    server: TestServer,
    http: reqwest::Client,
}

/// A POST's answer: JSON or an SSE stream.
enum Answer {
    Json(reqwest::StatusCode, Value),
    Stream(Box<SseReader>),
}

impl Answer {
    fn json(self) -> (reqwest::StatusCode, Value) {
        match self {
            Self::Json(status, body) => (status, body),
            Self::Stream(_) => panic!("expected JSON, got a stream"),
        }
    }

    fn stream(self) -> SseReader {
        match self {
            Self::Stream(stream) => *stream,
            Self::Json(status, body) => panic!("expected a stream, got {status} {body}"),
        }
    }
}

impl Client {
    async fn start(service: Service, config: ServiceConfig) -> Self {
        Self {
            server: TestServer::start(service, config).await,
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, session: Option<&str>, user: Option<&str>, body: Value) -> Answer {
        let mut request = self
            .http
            .post(self.server.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        if let Some(user) = user {
            request = request.header("authorization", bearer(&token(user, &[])));
        }
        let response = request.body(body.to_string()).send().await.unwrap();
        let is_stream = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
        if is_stream {
            return Answer::Stream(Box::new(SseReader::new(response)));
        }
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        Answer::Json(status, body)
    }

    /// Opens a session whose client declares `capabilities`.
    async fn session(&self, user: Option<&str>, capabilities: Value) -> String {
        let mut request = self
            .http
            .post(self.server.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json");
        if let Some(user) = user {
            request = request.header("authorization", bearer(&token(user, &[])));
        }
        let response = request
            .body(
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": capabilities,
                    "clientInfo": {"name": "test", "version": "1"}
                }})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string()
    }

    async fn call(&self, session: &str, user: Option<&str>, tool: &str) -> Answer {
        self.post(
            Some(session),
            user,
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                   "params": {"name": tool, "arguments": {}}}),
        )
        .await
    }

    async fn answer(
        &self,
        session: &str,
        user: Option<&str>,
        id: &Value,
        result: Value,
    ) -> (reqwest::StatusCode, Value) {
        self.post(
            Some(session),
            user,
            json!({"jsonrpc": "2.0", "id": id, "result": result}),
        )
        .await
        .json()
    }
}

fn both() -> Value {
    json!({"elicitation": {}, "sampling": {}})
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

fn with_mcp(mcp: McpConfig) -> ServiceConfig {
    ServiceConfig {
        mcp,
        ..ServiceConfig::default()
    }
}

#[tokio::test]
async fn a_tool_elicits_and_gets_the_answer_on_its_stream() {
    let client = Client::start(service(), ServiceConfig::default()).await;
    let session = client.session(None, both()).await;
    let mut stream = client.call(&session, None, "ask_name").await.stream();
    let request = next_message(&mut stream).await;
    assert_eq!(request["method"], "elicitation/create");
    assert_eq!(request["params"]["message"], "Who are you?");
    assert_eq!(
        request["params"]["requestedSchema"]["required"],
        json!(["name"])
    );
    let (status, _) = client
        .answer(
            &session,
            None,
            &request["id"],
            json!({"action": "accept", "content": {"name": "Ada"}}),
        )
        .await;
    assert_eq!(status, 202);
    let reply = next_message(&mut stream).await;
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["result"]["isError"], false, "{reply}");
    assert_eq!(
        reply["result"]["structuredContent"],
        json!({"action": "accept", "content": {"name": "Ada"}})
    );
    assert!(
        stream.next(WAIT).await.is_none(),
        "the stream ends after the answer"
    );
    // The answer was taken: the same id again is refused.
    let (status, body) = client
        .answer(&session, None, &request["id"], json!({"action": "cancel"}))
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_tool_samples_with_typed_parameters() {
    let client = Client::start(service(), ServiceConfig::default()).await;
    let session = client.session(None, both()).await;
    let mut stream = client.call(&session, None, "ask_model").await.stream();
    let request = next_message(&mut stream).await;
    assert_eq!(request["method"], "sampling/createMessage");
    assert_eq!(request["params"]["maxTokens"], 20);
    assert_eq!(
        request["params"]["messages"],
        json!([{"role": "user", "content": {"type": "text", "text": "Say hello"}}])
    );
    let (status, _) = client
        .answer(
            &session,
            None,
            &request["id"],
            json!({"role": "assistant", "content": {"type": "text", "text": "hello"},
                   "model": "m1", "stopReason": "endTurn"}),
        )
        .await;
    assert_eq!(status, 202);
    let reply = next_message(&mut stream).await;
    assert_eq!(
        reply["result"]["structuredContent"],
        json!({"text": "hello", "model": "m1"})
    );

    // A result of the wrong shape is the tool's error, not a hang.
    let mut stream = client.call(&session, None, "ask_model").await.stream();
    let request = next_message(&mut stream).await;
    client
        .answer(&session, None, &request["id"], json!({"nonsense": true}))
        .await;
    let reply = next_message(&mut stream).await;
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert!(
        reply["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("not valid"),
        "{reply}"
    );
}

#[tokio::test]
async fn an_undeclared_capability_sends_nothing() {
    let client = Client::start(service(), ServiceConfig::default()).await;
    let session = client.session(None, json!({"sampling": {}})).await;
    // Nothing was sent, so the answer stays JSON.
    let (status, reply) = client.call(&session, None, "ask_name").await.json();
    assert_eq!(status, 200);
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert_eq!(
        reply["result"]["structuredContent"]["error"]["code"],
        "invalid_request"
    );
    assert!(
        reply["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("`elicitation` capability"),
        "{reply}"
    );

    // The Cortex dialect has no client to ask.
    let response = client
        .http
        .post(client.server.url("/tool/ask_model"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");
}

#[tokio::test]
async fn only_the_asked_session_and_its_user_can_answer() {
    let client = Client::start(
        service(),
        ServiceConfig {
            auth: auth_config(),
            ..ServiceConfig::default()
        },
    )
    .await;
    let alice = client.session(Some("alice"), both()).await;
    let other = client.session(Some("alice"), both()).await;
    let mut stream = client
        .call(&alice, Some("alice"), "ask_name")
        .await
        .stream();
    let request = next_message(&mut stream).await;
    let id = request["id"].clone();
    let forged = json!({"action": "accept", "content": {"name": "Mallory"}});

    // Another user's token cannot even name the session.
    let (status, _) = client
        .answer(&alice, Some("mallory"), &id, forged.clone())
        .await;
    assert_eq!(status, 404);
    // Without a token: 401.
    let (status, _) = client.answer(&alice, None, &id, forged.clone()).await;
    assert_eq!(status, 401);
    // The same user's other session was not asked.
    let (status, body) = client
        .answer(&other, Some("alice"), &id, forged.clone())
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], -32600);
    // An id nobody waits on.
    let (status, _) = client
        .answer(&alice, Some("alice"), &json!(9999), forged.clone())
        .await;
    assert_eq!(status, 400);

    // The request still waits for its own session's answer.
    let (status, _) = client
        .answer(
            &alice,
            Some("alice"),
            &id,
            json!({"action": "accept", "content": {"name": "Alice"}}),
        )
        .await;
    assert_eq!(status, 202);
    let reply = next_message(&mut stream).await;
    assert_eq!(
        reply["result"]["structuredContent"]["content"]["name"],
        "Alice"
    );
}

#[tokio::test]
async fn an_unanswered_request_times_out_and_is_cancelled() {
    let client = Client::start(
        service(),
        with_mcp(McpConfig {
            client_request_timeout: Duration::from_millis(300),
            ..McpConfig::default()
        }),
    )
    .await;
    let session = client.session(None, both()).await;
    let mut stream = client.call(&session, None, "ask_name").await.stream();
    let request = next_message(&mut stream).await;
    let cancelled = next_message(&mut stream).await;
    assert_eq!(cancelled["method"], "notifications/cancelled");
    assert_eq!(cancelled["params"]["requestId"], request["id"]);
    let reply = next_message(&mut stream).await;
    assert_eq!(reply["result"]["isError"], true);
    assert_eq!(
        reply["result"]["structuredContent"]["error"]["code"],
        "unavailable"
    );
    // A late answer is refused.
    let (status, _) = client
        .answer(&session, None, &request["id"], json!({"action": "cancel"}))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn waiting_requests_are_capped_and_forgotten_with_their_stream() {
    let client = Client::start(
        service(),
        with_mcp(McpConfig {
            max_client_requests: 1,
            ..McpConfig::default()
        }),
    )
    .await;
    let session = client.session(None, both()).await;
    let mut first = client.call(&session, None, "ask_name").await.stream();
    let request = next_message(&mut first).await;

    // The session already waits for its one answer.
    let (_, reply) = client.call(&session, None, "ask_model").await.json();
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert!(
        reply["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("already waits"),
        "{reply}"
    );

    // The client goes away: the call ends and its request is forgotten.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = client
            .answer(&session, None, &request["id"], json!({"action": "cancel"}))
            .await;
        if status == 400 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still waiting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // So the session may ask again.
    let mut again = client.call(&session, None, "ask_model").await.stream();
    assert_eq!(
        next_message(&mut again).await["method"],
        "sampling/createMessage"
    );
}

#[tokio::test]
async fn a_stream_ended_early_is_resumed_with_last_event_id() {
    let client = Client::start(service(), ServiceConfig::default()).await;
    let session = client.session(None, json!({})).await;
    let mut stream = client.call(&session, None, "poll").await.stream();
    let priming = stream.next(WAIT).await.expect("a priming event");
    assert!(priming.data.is_empty());
    let last = priming.id.clone().expect("an event id");
    assert!(stream.next(WAIT).await.is_none(), "ended before the answer");

    let response = client
        .http
        .get(client.server.url("/mcp"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut resumed = SseReader::new(response);
    let event = resumed.next(WAIT).await.expect("the answer");
    let reply: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(reply["id"], 7);
    assert_eq!(
        reply["result"]["structuredContent"]["after"],
        "the stream ended"
    );
    assert_ne!(event.id, Some(last.clone()));
    assert!(resumed.next(WAIT).await.is_none(), "ends after the answer");

    // Delivered, the stream is forgotten: the same id now opens the
    // session's own stream.
    let response = client
        .http
        .get(client.server.url("/mcp"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Answers elicitations with a name and sampling with a fixed text, as an
/// application using the network client would.
struct Answers;

#[async_trait::async_trait]
impl cortex_client::server_requests::ServerRequestHandler for Answers {
    fn capabilities(&self) -> Value {
        json!({"elicitation": {}, "sampling": {}})
    }

    async fn handle(
        &self,
        _service: &str,
        method: &str,
        _params: Value,
    ) -> Result<Value, cortex_client::server_requests::RequestError> {
        match method {
            "elicitation/create" => Ok(json!({"action": "accept", "content": {"name": "Grace"}})),
            "sampling/createMessage" => Ok(json!({
                "role": "assistant",
                "content": {"type": "text", "text": "hi there"},
                "model": "local"
            })),
            other => Err(cortex_client::server_requests::RequestError::method_not_found(other)),
        }
    }
}

#[tokio::test]
async fn the_network_client_answers_the_kit() {
    use cortex_client::discovery::Protocol;
    use cortex_client::{Endpoint, McpClient, NetworkMcpClient, StaticDiscovery};

    let server = TestServer::start(service(), ServiceConfig::default()).await;
    let discovery = StaticDiscovery::new();
    discovery.register(
        "asking",
        vec![Endpoint::new(server.url("/mcp")).with_protocol(Protocol::Mcp)],
    );
    let client = NetworkMcpClient::builder(std::sync::Arc::new(discovery))
        .server_requests(std::sync::Arc::new(Answers))
        .build()
        .unwrap();
    let named = client
        .call_tool("asking", "ask_name", json!({}))
        .await
        .unwrap();
    assert!(named.to_string().contains("Grace"), "{named}");
    let sampled = client
        .call_tool("asking", "ask_model", json!({}))
        .await
        .unwrap();
    assert!(sampled.to_string().contains("hi there"), "{sampled}");
    // A stream ended early is resumed by the client itself.
    let polled = client.call_tool("asking", "poll", json!({})).await.unwrap();
    assert!(polled.to_string().contains("the stream ended"), "{polled}");
}
