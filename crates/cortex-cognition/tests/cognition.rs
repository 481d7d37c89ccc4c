//! The cognition service over real loopback HTTP, reading a real memory
//! service (temporary SQLite file) through a `NetworkMcpClient`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_client::{ClientConfig, NetworkMcpClient, StaticDiscovery};
use cortex_cognition::CognitionConfig;
use cortex_memory::store::Store;
use cortex_proto::ErrorCode;
use cortex_service::{Resource, ResourceContent, Service, ServiceConfig, ServiceError};
use cortex_test_support::TestServer;
use serde_json::{Value, json};

/// A client that gives up quickly: one second per call, short backoffs.
fn client_config(request_timeout: Duration) -> ClientConfig {
    ClientConfig::builder()
        .request_timeout(request_timeout)
        .connect_timeout(Duration::from_millis(500))
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(100))
        .build()
        .unwrap()
}

async fn start_memory() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("memory.sqlite3"))
        .await
        .unwrap();
    let service = cortex_memory::service::build(store).unwrap();
    (
        TestServer::start(service, ServiceConfig::default()).await,
        dir,
    )
}

async fn start_cognition(
    memory_url: &str,
    client: ClientConfig,
    config: CognitionConfig,
) -> TestServer {
    let discovery = Arc::new(StaticDiscovery::new().with("memory", memory_url));
    let client = NetworkMcpClient::builder(discovery)
        .config(client)
        .build()
        .unwrap();
    let service = cortex_cognition::build(Arc::new(client), config).unwrap();
    TestServer::start(service, ServiceConfig::default()).await
}

/// Memory and cognition, both running.
struct Stack {
    memory: Option<TestServer>,
    cognition: TestServer,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start() -> Self {
        Self::start_with(CognitionConfig::default()).await
    }

    async fn start_with(config: CognitionConfig) -> Self {
        let (memory, dir) = start_memory().await;
        let cognition = start_cognition(
            &memory.url(""),
            client_config(Duration::from_secs(1)),
            config,
        )
        .await;
        Self {
            memory: Some(memory),
            cognition,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// Stores one item in memory (over HTTP); returns its id.
    async fn store(&self, user: &str, content: &str, cid: Option<&str>, ts: Option<&str>) -> i64 {
        let mut input = json!({"content": content});
        if let Some(cid) = cid {
            input["conversation_id"] = json!(cid);
        }
        if let Some(ts) = ts {
            input["timestamp"] = json!(ts);
        }
        let memory = self.memory.as_ref().unwrap();
        let response = self
            .http
            .post(memory.url("/tool/store_input"))
            .json(&json!({"user_id": user, "input_data": input}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["item_id"].as_i64().unwrap()
    }

    async fn call(&self, tool: &str, arguments: Value) -> (u16, Value) {
        call(&self.http, &self.cognition, tool, arguments).await
    }

    async fn read(&self, uri: &str) -> (u16, Value) {
        read(&self.http, &self.cognition, uri).await
    }
}

async fn call(
    http: &reqwest::Client,
    server: &TestServer,
    tool: &str,
    args: Value,
) -> (u16, Value) {
    let response = http
        .post(server.url(&format!("/tool/{tool}")))
        .json(&args)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn read(http: &reqwest::Client, server: &TestServer, uri: &str) -> (u16, Value) {
    let response = http
        .get(server.url(&format!("/resource/{uri}")))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn contents(answer: &Value) -> Vec<String> {
    answer["context"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"].as_str().unwrap().to_string())
        .collect()
}

fn scores(answer: &Value) -> Vec<Value> {
    answer["context"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["score"].clone())
        .collect()
}

fn assert_error(status: u16, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

#[tokio::test]
async fn get_context_without_a_query_is_the_newest_items() {
    let stack = Stack::start().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(stack.store("u1", &format!("note {i}"), None, None).await);
    }
    stack.store("u2", "someone else's note", None, None).await;

    let (status, answer) = stack.call("get_context", json!({"user_id": "u1"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["user_id"], "u1");
    assert_eq!(answer["degraded"], false);
    assert!(answer["query"].is_null());
    assert!(answer.get("reason").is_none());
    // The default limit is 10, newest first.
    assert_eq!(answer["count"], 10);
    let expected: Vec<String> = (2..12).rev().map(|i| format!("note {i}")).collect();
    assert_eq!(contents(&answer), expected);
    assert!(scores(&answer).iter().all(Value::is_null));
    let first = &answer["context"][0];
    assert_eq!(first["item_id"], ids[11]);
    assert!(first["conversation_id"].is_null());
    assert!(first["timestamp"].as_str().is_some_and(|t| !t.is_empty()));

    let (status, answer) = stack
        .call("get_context", json!({"user_id": "u1", "limit": 3}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["count"], 3);
    assert_eq!(contents(&answer), ["note 11", "note 10", "note 9"]);

    let (status, answer) = stack
        .call("get_context", json!({"user_id": "nobody"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["count"], 0);
    assert_eq!(answer["context"], json!([]));
    assert_eq!(answer["degraded"], false);
}

#[tokio::test]
async fn get_context_ranks_by_term_overlap_then_recency() {
    let stack = Stack::start().await;
    stack
        .store("u1", "I love Rust programming", None, None)
        .await;
    stack
        .store("u1", "Rust and Tokio make async easy", None, None)
        .await;
    stack
        .store("u1", "the weather is nice today", None, None)
        .await;
    stack
        .store("u1", "a Tokio runtime question", None, None)
        .await;
    stack.store("u1", "lunch plans", None, None).await;

    let (status, answer) = stack
        .call(
            "get_context",
            json!({"user_id": "u1", "query": "What about rust and TOKIO?", "limit": 3}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["query"], "What about rust and TOKIO?");
    assert_eq!(answer["count"], 3);
    assert_eq!(
        contents(&answer),
        [
            "Rust and Tokio make async easy",
            "a Tokio runtime question",
            "I love Rust programming",
        ]
    );
    assert_eq!(scores(&answer), [json!(2), json!(1), json!(1)]);

    // Items without any query term come last, newest first.
    let (_, answer) = stack
        .call("get_context", json!({"user_id": "u1", "query": "rust"}))
        .await;
    assert_eq!(answer["count"], 5);
    assert_eq!(
        scores(&answer),
        [json!(1), json!(1), json!(0), json!(0), json!(0)]
    );
    assert_eq!(contents(&answer)[2], "lunch plans");
}

#[tokio::test]
async fn get_context_filters_by_conversation() {
    let stack = Stack::start().await;
    stack.store("u1", "alpha one", Some("team/α"), None).await;
    stack.store("u1", "beta one", Some("beta"), None).await;
    stack
        .store("u1", "alpha two rust", Some("team/α"), None)
        .await;
    stack.store("u1", "alpha three", Some("team/α"), None).await;
    stack.store("u1", "no conversation", None, None).await;

    let (status, answer) = stack
        .call(
            "get_context",
            json!({"user_id": "u1", "conversation_id": "team/α"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        contents(&answer),
        ["alpha three", "alpha two rust", "alpha one"]
    );
    assert!(
        answer["context"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["conversation_id"] == "team/α")
    );

    let (_, answer) = stack
        .call(
            "get_context",
            json!({"user_id": "u1", "conversation_id": "team/α", "limit": 2}),
        )
        .await;
    assert_eq!(contents(&answer), ["alpha three", "alpha two rust"]);

    let (_, answer) = stack
        .call(
            "get_context",
            json!({"user_id": "u1", "conversation_id": "team/α", "query": "rust", "limit": 1}),
        )
        .await;
    assert_eq!(contents(&answer), ["alpha two rust"]);
    assert_eq!(scores(&answer), [json!(1)]);
}

#[tokio::test]
async fn analyze_conversation_reports_its_numbers() {
    let stack = Stack::start().await;
    let c = Some("c1");
    stack
        .store("u1", "Rust memory safety", c, Some("2024-05-01T10:00:00Z"))
        .await;
    stack
        .store("u1", "unrelated", Some("c2"), Some("2024-05-01T10:30:00Z"))
        .await;
    stack
        .store(
            "u1",
            "the borrow checker and rust",
            c,
            Some("2024-05-01T11:00:00Z"),
        )
        .await;
    stack
        .store("u1", "rust is fast", c, Some("2024-05-01T12:00:00Z"))
        .await;

    let (status, answer) = stack
        .call(
            "analyze_conversation",
            json!({"user_id": "u1", "conversation_id": "c1"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["user_id"], "u1");
    assert_eq!(answer["conversation_id"], "c1");
    assert_eq!(answer["message_count"], 3);
    assert_eq!(answer["first_timestamp"], "2024-05-01T10:00:00Z");
    assert_eq!(answer["last_timestamp"], "2024-05-01T12:00:00Z");
    // (18 + 27 + 12) / 3 = 19.0 characters.
    assert_eq!(answer["average_length"], 19.0);
    let top = answer["top_terms"].as_array().unwrap();
    assert_eq!(top[0], json!({"term": "rust", "count": 3}));
    let terms: Vec<&str> = top.iter().map(|t| t["term"].as_str().unwrap()).collect();
    // Stop words ("the", "and", "is") are removed; ties are alphabetical.
    assert_eq!(
        terms,
        ["rust", "borrow", "checker", "fast", "memory", "safety"]
    );

    let (status, body) = stack
        .call(
            "analyze_conversation",
            json!({"user_id": "u1", "conversation_id": "nope"}),
        )
        .await;
    assert_error(status, &body, 404, "resource_not_found");
    assert_eq!(body["error"]["details"]["conversation_id"], "nope");
}

#[tokio::test]
async fn extract_entities_finds_each_kind() {
    let stack = Stack::start().await;
    let text = "Yesterday Ada Lovelace wrote to grace@navy.example.org about \
                https://example.org/engines, cc @babbage and #math. \
                Later Ada Lovelace posted #math again.";
    let (status, answer) = stack.call("extract_entities", json!({"text": text})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"entities": [
            {"text": "#math", "kind": "hashtag", "count": 2},
            {"text": "Ada Lovelace", "kind": "name", "count": 2},
            {"text": "@babbage", "kind": "mention", "count": 1},
            {"text": "grace@navy.example.org", "kind": "email", "count": 1},
            {"text": "https://example.org/engines", "kind": "url", "count": 1},
        ]})
    );

    // From a user's newest items instead of a text.
    // The oldest item is beyond the limit.
    stack
        .store("u1", "old: see http://old.example", None, None)
        .await;
    stack.store("u1", "ping @ann about #rust", None, None).await;
    stack.store("u1", "#rust is great, @ann", None, None).await;
    let (status, answer) = stack
        .call("extract_entities", json!({"user_id": "u1", "limit": 2}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["user_id"], "u1");
    assert_eq!(answer["item_count"], 2);
    assert_eq!(
        answer["entities"],
        json!([
            {"text": "#rust", "kind": "hashtag", "count": 2},
            {"text": "@ann", "kind": "mention", "count": 2},
        ])
    );
}

#[tokio::test]
async fn summarize_history_reports_statistics_and_a_sentence() {
    let stack = Stack::start().await;
    stack
        .store(
            "u1",
            "planning the Rust workshop",
            Some("a"),
            Some("2024-01-01T09:00:00Z"),
        )
        .await;
    stack
        .store(
            "u1",
            "workshop slides about rust",
            Some("b"),
            Some("2024-01-02T09:00:00Z"),
        )
        .await;
    stack
        .store("u1", "rust exercises", None, Some("2024-01-03T09:00:00Z"))
        .await;

    let (status, answer) = stack
        .call("summarize_history", json!({"user_id": "u1"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["user_id"], "u1");
    assert_eq!(answer["item_count"], 3);
    assert_eq!(answer["conversations"], 2);
    assert_eq!(answer["first_timestamp"], "2024-01-01T09:00:00Z");
    assert_eq!(answer["last_timestamp"], "2024-01-03T09:00:00Z");
    assert_eq!(answer["top_terms"][0], json!({"term": "rust", "count": 3}));
    assert_eq!(
        answer["top_terms"][1],
        json!({"term": "workshop", "count": 2})
    );
    assert_eq!(
        answer["summary"],
        "User u1 has 3 stored items in 2 conversations, from 2024-01-01T09:00:00Z to \
         2024-01-03T09:00:00Z; the most frequent terms are rust, workshop and exercises."
    );

    let (_, answer) = stack
        .call("summarize_history", json!({"user_id": "u1", "limit": 2}))
        .await;
    assert_eq!(answer["item_count"], 2);
    assert_eq!(answer["first_timestamp"], "2024-01-02T09:00:00Z");
    assert!(
        answer["summary"]
            .as_str()
            .unwrap()
            .starts_with("The newest 2 items of user u1 are in 1 conversation")
    );

    let (_, answer) = stack
        .call("summarize_history", json!({"user_id": "empty"}))
        .await;
    assert_eq!(answer["item_count"], 0);
    assert!(answer["first_timestamp"].is_null());
    assert_eq!(answer["top_terms"], json!([]));
    assert_eq!(answer["summary"], "User empty has no stored items.");
}

#[tokio::test]
async fn context_resources_are_get_context_with_defaults() {
    let stack = Stack::start_with(CognitionConfig {
        default_limit: 2,
        ..CognitionConfig::default()
    })
    .await;
    stack.store("u1", "rust ownership", None, None).await;
    stack.store("u1", "cooking pasta", None, None).await;
    stack.store("u1", "gardening tips", None, None).await;

    let (status, answer) = stack.read("context/u1").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["degraded"], false);
    assert_eq!(contents(&answer), ["gardening tips", "cooking pasta"]);
    let (_, tool) = stack.call("get_context", json!({"user_id": "u1"})).await;
    assert_eq!(answer, tool);

    let (status, answer) = stack.read("context/u1/query/rust%20ownership%3F").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["query"], "rust ownership?");
    assert_eq!(contents(&answer), ["rust ownership", "gardening tips"]);
    assert_eq!(scores(&answer), [json!(2), json!(0)]);

    let (status, body) = stack.read("context/a%2Fb").await;
    assert_error(status, &body, 400, "invalid_arguments");
    assert_eq!(body["error"]["details"]["field"], "user_id");
}

#[tokio::test]
async fn bad_arguments_are_400_naming_the_field() {
    let stack = Stack::start().await;
    let cases = [
        ("get_context", json!({}), "user_id"),
        ("get_context", json!({"user_id": ""}), "user_id"),
        ("get_context", json!({"user_id": "a/b"}), "user_id"),
        ("get_context", json!({"user_id": 7}), "user_id"),
        ("get_context", json!({"user_id": "u", "limit": 0}), "limit"),
        (
            "get_context",
            json!({"user_id": "u", "limit": "5"}),
            "limit",
        ),
        ("get_context", json!({"user_id": "u", "query": 3}), "query"),
        (
            "get_context",
            json!({"user_id": "u", "conversation_id": ""}),
            "conversation_id",
        ),
        (
            "analyze_conversation",
            json!({"user_id": "u"}),
            "conversation_id",
        ),
        ("extract_entities", json!({}), "text"),
        (
            "extract_entities",
            json!({"text": "x", "user_id": "u"}),
            "text",
        ),
        (
            "extract_entities",
            json!({"text": "x", "limit": 3}),
            "limit",
        ),
        ("extract_entities", json!({"user_id": "a/b"}), "user_id"),
        (
            "summarize_history",
            json!({"user_id": "u", "limit": 100_000}),
            "limit",
        ),
    ];
    for (tool, args, field) in cases {
        let (status, body) = stack.call(tool, args.clone()).await;
        assert_error(status, &body, 400, "invalid_arguments");
        assert_eq!(
            body["error"]["details"]["field"], field,
            "{tool} {args}: {body}"
        );
    }
}

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// What every tool answers while memory cannot be reached.
async fn assert_memory_down_answers(
    http: &reqwest::Client,
    cognition: &TestServer,
    deadline: Duration,
) {
    let started = Instant::now();
    let (status, answer) = call(
        http,
        cognition,
        "get_context",
        json!({"user_id": "u1", "query": "rust"}),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["degraded"], true);
    assert_eq!(answer["context"], json!([]));
    assert_eq!(answer["count"], 0);
    assert_eq!(answer["query"], "rust");
    let reason = answer["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("memory service is unavailable: "),
        "{reason}"
    );
    assert!(
        elapsed < deadline + Duration::from_secs(1),
        "took {elapsed:?}"
    );

    let (status, answer) = read(http, cognition, "context/u1").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["degraded"], true);

    for (tool, args) in [
        ("summarize_history", json!({"user_id": "u1"})),
        (
            "analyze_conversation",
            json!({"user_id": "u1", "conversation_id": "c"}),
        ),
        ("extract_entities", json!({"user_id": "u1"})),
    ] {
        let (status, body) = call(http, cognition, tool, args).await;
        assert_error(status, &body, 503, "unavailable");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("memory service is unavailable: "),
            "{message}"
        );
        assert!(!message.contains("127.0.0.1"), "internals leak: {message}");
    }

    // Entities of a given text need no memory.
    let (status, answer) = call(
        http,
        cognition,
        "extract_entities",
        json!({"text": "hi @ann"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["entities"][0]["text"], "@ann");
}

#[tokio::test]
async fn memory_on_a_closed_port_degrades_context_and_fails_the_rest_with_503() {
    let config = CognitionConfig::default();
    let deadline = config.context_deadline;
    let cognition = start_cognition(
        &closed_port_url(),
        client_config(Duration::from_secs(1)),
        config,
    )
    .await;
    let http = reqwest::Client::new();
    assert_memory_down_answers(&http, &cognition, deadline).await;

    // Health reports memory as down.
    let response = http.get(cognition.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn memory_shut_down_mid_life_degrades_context() {
    let mut stack = Stack::start().await;
    stack.store("u1", "rust notes", None, None).await;
    let (_, answer) = stack
        .call("get_context", json!({"user_id": "u1", "query": "rust"}))
        .await;
    assert_eq!(answer["degraded"], false);
    assert_eq!(answer["count"], 1);
    let response = stack
        .http
        .get(stack.cognition.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    stack
        .memory
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await;
    assert_memory_down_answers(
        &stack.http,
        &stack.cognition,
        CognitionConfig::default().context_deadline,
    )
    .await;
}

#[tokio::test]
async fn a_memory_that_never_answers_is_cut_off_at_the_context_deadline() {
    // Accepts connections and reads, but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let blackhole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let deadline = Duration::from_millis(300);
    // The client alone would wait 10 s: only the context deadline bounds
    // get_context.
    let cognition = start_cognition(
        &url,
        client_config(Duration::from_secs(10)),
        CognitionConfig {
            context_deadline: deadline,
            ..CognitionConfig::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let (status, answer) = call(&http, &cognition, "get_context", json!({"user_id": "u1"})).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["degraded"], true);
    assert_eq!(
        answer["reason"],
        "memory service is unavailable: no answer within 300 ms"
    );
    assert!(elapsed >= deadline, "took {elapsed:?}");
    assert!(
        elapsed < deadline + Duration::from_secs(1),
        "took {elapsed:?}"
    );
    blackhole.abort();
}

/// A stand-in memory whose history resource fails the way its user id says.
fn refusing_memory() -> Service {
    Service::builder("memory", "0")
        .resource(Resource::new(
            "history/{user_id}/limit/{n}",
            "fails on purpose",
            |_ctx, params| async move {
                match params.get("user_id")? {
                    "forbidden" => Err(ServiceError::new(
                        ErrorCode::Forbidden,
                        "you may not read this history",
                    )),
                    "overloaded" => {
                        Err(ServiceError::unavailable("the memory store is unavailable"))
                    }
                    _ => Ok(ResourceContent::Json(json!({"not": "a list"}))),
                }
            },
        ))
        .build()
        .unwrap()
}

#[tokio::test]
async fn memory_errors_map_to_the_same_code_or_unavailable() {
    let memory = TestServer::start(refusing_memory(), ServiceConfig::default()).await;
    let cognition = start_cognition(
        &memory.url(""),
        client_config(Duration::from_secs(1)),
        CognitionConfig::default(),
    )
    .await;
    let http = reqwest::Client::new();

    // A refusal keeps its code, for get_context too: it is not an outage.
    for tool in ["get_context", "summarize_history"] {
        let (status, body) = call(&http, &cognition, tool, json!({"user_id": "forbidden"})).await;
        assert_error(status, &body, 403, "forbidden");
        assert_eq!(body["error"]["message"], "you may not read this history");
    }

    // An answer that is not a list of items is cognition's failure to report.
    let (status, body) = call(&http, &cognition, "get_context", json!({"user_id": "odd"})).await;
    assert_error(status, &body, 500, "tool_execution_error");

    // A memory without the resource asked for: 404, passed on.
    let (status, body) = call(
        &http,
        &cognition,
        "analyze_conversation",
        json!({"user_id": "u1", "conversation_id": "c"}),
    )
    .await;
    assert_error(status, &body, 404, "resource_not_found");

    // A 503 from memory is an outage: degraded context, 503 elsewhere. (Last:
    // the failures open the endpoint's circuit breaker.)
    let (status, answer) = call(
        &http,
        &cognition,
        "get_context",
        json!({"user_id": "overloaded"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["degraded"], true);
    assert!(
        answer["reason"].as_str().unwrap().contains("HTTP 503"),
        "{answer}"
    );
    let (status, body) = call(
        &http,
        &cognition,
        "summarize_history",
        json!({"user_id": "overloaded"}),
    )
    .await;
    assert_error(status, &body, 503, "unavailable");
}

#[tokio::test]
async fn an_unknown_memory_service_name_degrades_context() {
    let (memory, _dir) = start_memory().await;
    let cognition = start_cognition(
        &memory.url(""),
        client_config(Duration::from_secs(1)),
        CognitionConfig {
            memory_service: "memory-elsewhere".into(),
            ..CognitionConfig::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let (status, answer) = call(&http, &cognition, "get_context", json!({"user_id": "u1"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["degraded"], true);
    assert_eq!(
        answer["reason"],
        "memory service is unavailable: it is not known to service discovery"
    );
    let (status, body) = call(
        &http,
        &cognition,
        "summarize_history",
        json!({"user_id": "u1"}),
    )
    .await;
    assert_error(status, &body, 503, "unavailable");
}

#[tokio::test]
async fn the_service_lists_its_tools_and_resources() {
    let stack = Stack::start().await;
    let tools: Value = stack
        .http
        .get(stack.cognition.url("/tools"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = tools.to_string();
    for name in [
        "get_context",
        "analyze_conversation",
        "extract_entities",
        "summarize_history",
    ] {
        assert!(text.contains(name), "{name} missing from {text}");
    }
    let resources: Value = stack
        .http
        .get(stack.cognition.url("/resources"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = resources.to_string();
    assert!(text.contains("context/{user_id}/query/{query}"), "{text}");
}

/// A stand-in memory that records the `Authorization` of every read.
fn recording_memory(seen: Arc<std::sync::Mutex<Vec<Option<String>>>>) -> Service {
    Service::builder("memory", "0")
        .resource(Resource::new(
            "history/{user_id}/limit/{n}",
            "records who asked",
            move |ctx, _params| {
                let authorization = ctx
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                seen.lock().unwrap().push(authorization);
                async { Ok(ResourceContent::Json(json!([]))) }
            },
        ))
        .build()
        .unwrap()
}

/// Cognition reads memory as its caller: the caller's token when it sent
/// one, for tools and resources alike; its own token otherwise.
#[tokio::test]
async fn memory_is_read_with_the_callers_token() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let memory = TestServer::start(recording_memory(seen.clone()), ServiceConfig::default()).await;
    let discovery = Arc::new(StaticDiscovery::new().with("memory", memory.url("")));
    let client = NetworkMcpClient::builder(discovery)
        .config(client_config(Duration::from_secs(1)))
        .token_provider(Arc::new(cortex_client::StaticToken::new("cognition-own")))
        .build()
        .unwrap();
    let service = cortex_cognition::build(Arc::new(client), CognitionConfig::default()).unwrap();
    let cognition = TestServer::start(service, ServiceConfig::default()).await;
    let http = reqwest::Client::new();

    let response = http
        .post(cognition.url("/tool/get_context"))
        .bearer_auth("caller-1")
        .json(&json!({"user_id": "u1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = http
        .get(cognition.url("/resource/context/u1"))
        .bearer_auth("caller-2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, _) = call(&http, &cognition, "get_context", json!({"user_id": "u1"})).await;
    assert_eq!(status, 200);

    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            Some("Bearer caller-1".to_string()),
            Some("Bearer caller-2".to_string()),
            Some("Bearer cognition-own".to_string()),
        ]
    );
}
