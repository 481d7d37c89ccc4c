//! Who may do what in the memory service, over real loopback HTTP with
//! authentication on: every tool and every resource pattern the service
//! lists (read, and stream where it has one), over the Cortex routes and
//! over `/mcp`, with every kind of credential (none, malformed, expired,
//! wrong signature, `alg: none`, another user's, an admin's, the owner's).
//! Also: another user's item ids reveal nothing, refused changes change
//! nothing, and the same idempotency key from two users stores twice.
//! On both backends.
#![allow(clippy::unwrap_used)]

use cortex_service::ServiceConfig;
use cortex_test_support::auth::McpReply;
use cortex_test_support::auth::{Credential, McpSession, bearer, config, token};
use cortex_test_support::pg::{Backend, StoreFixture};
use cortex_test_support::{TestServer, start_memory_on};
use serde_json::{Value, json};

const OWNER: &str = "alice";

/// What a cell of the matrix must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Refused before the service looks: 401 `unauthorized`.
    Unauthorized,
    /// 403 `forbidden`: the call names another user.
    Forbidden,
    /// 404 `resource_not_found`: the call names another user's item.
    NotFound,
    Ok,
}

/// What an operation names: a user (→ 403 for others) or an item (→ 404).
#[derive(Debug, Clone, Copy)]
enum Scope {
    User,
    Item,
}

fn expect(credential: Credential, scope: Scope) -> Expect {
    match (credential, scope) {
        (c, _) if c.is_refused() => Expect::Unauthorized,
        (Credential::OtherUser, Scope::User) => Expect::Forbidden,
        (Credential::OtherUser, Scope::Item) => Expect::NotFound,
        _ => Expect::Ok,
    }
}

fn code_of(expected: Expect) -> Option<&'static str> {
    match expected {
        Expect::Unauthorized => Some("unauthorized"),
        Expect::Forbidden => Some("forbidden"),
        Expect::NotFound => Some("resource_not_found"),
        Expect::Ok => None,
    }
}

struct Memory {
    server: TestServer,
    http: reqwest::Client,
    _fixture: StoreFixture,
}

impl Memory {
    async fn start(backend: Backend) -> Self {
        let (server, fixture) = start_memory_on(
            backend,
            ServiceConfig {
                auth: config(),
                ..ServiceConfig::default()
            },
        )
        .await;
        Self {
            server,
            http: reqwest::Client::new(),
            _fixture: fixture,
        }
    }

    async fn post(&self, tool: &str, args: &Value, authorization: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.server.url(&format!("/tool/{tool}")))
            .json(&json!({ "arguments": args }));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    /// A new item of `user` (stored with their own token).
    async fn item_of(&self, user: &str, content: &str) -> i64 {
        let args =
            json!({"user_id": user, "input_data": {"content": content, "conversation_id": "c1"}});
        let own = bearer(&token(user, &[]));
        let (status, body) = self.post("store_input", &args, Some(&own)).await;
        assert_eq!(status, 200, "{body}");
        body["result"]["item_id"].as_i64().unwrap()
    }

    async fn content_of(&self, item: i64) -> Option<String> {
        let admin = bearer(&token("root", &["admin"]));
        let (status, body) = self
            .post("get_item", &json!({"item_id": item}), Some(&admin))
            .await;
        (status == 200).then(|| body["result"]["content"].as_str().unwrap().to_string())
    }

    /// The tools and resource patterns the service lists.
    async fn listing(&self) -> (Vec<String>, Vec<(String, bool)>) {
        let admin = bearer(&token("root", &["admin"]));
        let get = |path: &str| {
            self.http
                .get(self.server.url(path))
                .header("authorization", &admin)
                .send()
        };
        let tools: Value = get("/tools").await.unwrap().json().await.unwrap();
        let resources: Value = get("/resources").await.unwrap().json().await.unwrap();
        (
            tools["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect(),
            resources["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["uri_template"].as_str().unwrap().to_string(),
                        r["streaming"] == true,
                    )
                })
                .collect(),
        )
    }
}

/// The arguments of `tool` in a cell, and what it names.
fn tool_case(tool: &str, item: i64) -> (Value, Scope) {
    match tool {
        "store_input" => (
            json!({"user_id": OWNER, "input_data": {"content": "from the matrix"}}),
            Scope::User,
        ),
        "get_item" | "delete_item" => (json!({"item_id": item}), Scope::Item),
        "update_item" => (json!({"item_id": item, "content": "changed"}), Scope::Item),
        other => panic!("tool `{other}` is listed but not in the matrix: add it"),
    }
}

/// A URI of `pattern` for the owner's data, and what it names.
fn resource_case(pattern: &str, item: i64) -> (String, Scope) {
    let mut scope = Scope::Item;
    let uri = pattern
        .split('/')
        .map(|segment| match segment {
            "{user_id}" => {
                scope = Scope::User;
                OWNER.to_string()
            }
            "{item_id}" => (item + 1).to_string(),
            "{n}" => "5".to_string(),
            "{conversation_id}" => "c1".to_string(),
            other if other.starts_with('{') => panic!("parameter {other} of `{pattern}`: add it"),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/");
    // `item/{item_id}` names the item itself, not a cursor after it.
    let uri = if pattern == "item/{item_id}" {
        format!("item/{item}")
    } else {
        uri
    };
    (uri, scope)
}

fn check(cell: &str, expected: Expect, status: u16, code: Option<&str>) {
    let wanted_status = match expected {
        Expect::Unauthorized => 401,
        Expect::Forbidden => 403,
        Expect::NotFound => 404,
        Expect::Ok => 200,
    };
    assert_eq!(status, wanted_status, "{cell}: {code:?}");
    assert_eq!(code, code_of(expected), "{cell}");
}

async fn every_tool_and_resource_with_every_credential_over_both_protocols(backend: Backend) {
    let memory = Memory::start(backend).await;
    let (tools, resources) = memory.listing().await;
    assert!(
        tools.len() >= 4 && resources.len() >= 5,
        "{tools:?} {resources:?}"
    );
    let mut cells = 0;
    for credential in Credential::ALL {
        let authorization = credential.header(OWNER);

        // The Cortex routes.
        for tool in &tools {
            let item = memory.item_of(OWNER, "original").await;
            let (args, scope) = tool_case(tool, item);
            let (status, body) = memory.post(tool, &args, authorization.as_deref()).await;
            let cell = format!("cortex {tool} {credential:?}");
            check(
                &cell,
                expect(credential, scope),
                status,
                body["error"]["code"].as_str(),
            );
            if expect(credential, scope) != Expect::Ok && tool != "store_input" {
                assert_eq!(
                    memory.content_of(item).await.as_deref(),
                    Some("original"),
                    "{cell}: a refused call changed nothing"
                );
            }
            cells += 1;
        }
        for (pattern, streaming) in &resources {
            let item = memory.item_of(OWNER, "read me").await;
            let (uri, scope) = resource_case(pattern, item);
            let expected = expect(credential, scope);
            let mut modes = vec![false];
            if *streaming {
                modes.push(true);
            }
            for stream in modes {
                let mut request = memory
                    .http
                    .get(memory.server.url(&format!("/resource/{uri}")));
                if stream {
                    request = request.header("accept", "text/event-stream");
                }
                if let Some(value) = &authorization {
                    request = request.header("authorization", value);
                }
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let cell = format!("cortex {uri} stream={stream} {credential:?}");
                if stream && status == 200 {
                    // A live stream opened: its first event is the owner's.
                    let mut events = cortex_test_support::SseReader::new(response);
                    let first = events
                        .next(std::time::Duration::from_secs(5))
                        .await
                        .unwrap();
                    let item: Value = serde_json::from_str(&first.data).unwrap();
                    assert_eq!(item["user_id"], OWNER, "{cell}");
                    check(&cell, expected, status, None);
                } else {
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    check(&cell, expected, status, body["error"]["code"].as_str());
                }
                cells += 1;
            }
        }

        // `/mcp`, in a session opened with the same credential.
        let url = memory.server.url("/mcp");
        let mut session = match McpSession::open(&url, authorization.clone()).await {
            Ok(session) => {
                assert!(!credential.is_refused(), "{credential:?} opened a session");
                session
            }
            Err(refused) => {
                let cell = format!("mcp initialize {credential:?}");
                check(
                    &cell,
                    Expect::Unauthorized,
                    refused.status,
                    refused.body["error"]["code"].as_str(),
                );
                assert!(
                    refused
                        .challenge
                        .unwrap_or_default()
                        .contains("resource_metadata=")
                );
                cells += 1;
                continue;
            }
        };
        for tool in &tools {
            let item = memory.item_of(OWNER, "original").await;
            let (args, scope) = tool_case(tool, item);
            let reply = session.call_tool(tool, args).await;
            check_mcp(
                &format!("mcp {tool} {credential:?}"),
                expect(credential, scope),
                &reply,
            );
            cells += 1;
        }
        for (pattern, streaming) in &resources {
            let item = memory.item_of(OWNER, "read me").await;
            let (uri, scope) = resource_case(pattern, item);
            let expected = expect(credential, scope);
            let reply = session.read(&format!("memory://{uri}")).await;
            check_mcp(&format!("mcp read {uri} {credential:?}"), expected, &reply);
            if expected == Expect::Ok {
                let text = reply.body["result"]["contents"][0]["text"]
                    .as_str()
                    .unwrap();
                assert!(text.contains(OWNER), "mcp read {uri}: {text}");
            }
            if *streaming {
                let reply = session.subscribe(&format!("memory://{uri}")).await;
                check_mcp(
                    &format!("mcp subscribe {uri} {credential:?}"),
                    expected,
                    &reply,
                );
                cells += 1;
            }
            cells += 1;
        }
    }
    assert!(cells >= 8 * 2 * 9, "{cells} cells");
}

/// Over `/mcp`, with a session open, the service answers in JSON-RPC
/// (HTTP 200): a refused tool call is a result with `isError` and the
/// Cortex error as `structuredContent`; a refused read or subscription is
/// an error whose `data.code` is the Cortex code.
fn check_mcp(cell: &str, expected: Expect, reply: &McpReply) {
    assert_eq!(reply.status, 200, "{cell}: {reply:?}");
    assert_eq!(
        reply.error_code().as_deref(),
        code_of(expected),
        "{cell}: {reply:?}"
    );
    if expected == Expect::Ok {
        assert!(reply.body["result"].is_object(), "{cell}: {reply:?}");
    }
}

async fn another_users_item_reads_exactly_as_a_missing_one(backend: Backend) {
    let memory = Memory::start(backend).await;
    let item = memory.item_of(OWNER, "private").await;
    let missing = item + 1000;
    let mallory = bearer(&token("mallory", &[]));
    for tool in ["get_item", "update_item", "delete_item"] {
        let (status, theirs) = memory
            .post(
                tool,
                &json!({"item_id": item, "content": "x"}),
                Some(&mallory),
            )
            .await;
        let (status_missing, none) = memory
            .post(
                tool,
                &json!({"item_id": missing, "content": "x"}),
                Some(&mallory),
            )
            .await;
        assert_eq!((status, status_missing), (404, 404), "{tool}");
        let same = |body: &Value, id: i64| body.to_string().replace(&id.to_string(), "ID");
        assert_eq!(same(&theirs, item), same(&none, missing), "{tool}");
    }
    let read = |id: i64| {
        memory
            .http
            .get(memory.server.url(&format!("/resource/item/{id}")))
            .header("authorization", &mallory)
            .send()
    };
    let theirs: Value = read(item).await.unwrap().json().await.unwrap();
    let none: Value = read(missing).await.unwrap().json().await.unwrap();
    assert_eq!(
        theirs.to_string().replace(&item.to_string(), "ID"),
        none.to_string().replace(&missing.to_string(), "ID")
    );
    assert_eq!(memory.content_of(item).await.as_deref(), Some("private"));
}

async fn the_same_idempotency_key_from_two_users_stores_twice(backend: Backend) {
    let memory = Memory::start(backend).await;
    let store = |user: &'static str| {
        let request = memory
            .http
            .post(memory.server.url("/tool/store_input"))
            .header("idempotency-key", "same-key")
            .header("authorization", bearer(&token(user, &[])))
            .json(&json!({"user_id": user, "input_data": {"content": format!("{user}'s")}}));
        async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            body["item_id"].as_i64().unwrap()
        }
    };
    let alice = store("alice").await;
    let bob = store("bob").await;
    assert_ne!(
        alice, bob,
        "bob's input was stored, not alice's answer replayed"
    );
    assert_eq!(store("alice").await, alice, "alice's retry stores nothing");
    assert_eq!(store("bob").await, bob, "bob's retry stores nothing");
    for (user, item) in [("alice", alice), ("bob", bob)] {
        let history: Value = memory
            .http
            .get(memory.server.url(&format!("/resource/history/{user}")))
            .header("authorization", bearer(&token(user, &[])))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<i64> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["item_id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [item], "{user}: {history}");
    }
    // An admin's key is the admin's: storing for alice with it is a call
    // of its own.
    let (_, body) = memory
        .post(
            "store_input",
            &json!({"user_id": "alice", "input_data": {"content": "by root"}}),
            Some(&bearer(&token("root", &["admin"]))),
        )
        .await;
    assert_ne!(body["result"]["item_id"], json!(alice));
}

cortex_test_support::on_both_backends!(
    #[tokio::test]
    every_tool_and_resource_with_every_credential_over_both_protocols,
    #[tokio::test]
    another_users_item_reads_exactly_as_a_missing_one,
    #[tokio::test]
    the_same_idempotency_key_from_two_users_stores_twice,
);
