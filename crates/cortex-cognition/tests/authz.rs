//! Who may do what in the cognition service, with authentication on in
//! cognition and in the memory it reads: every tool and resource, over the
//! Cortex routes and `/mcp`, with every kind of credential. Cognition's
//! memory client has no token of its own, so every answer with data proves
//! that memory was read with the caller's token.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use cortex_client::{NetworkMcpClient, StaticDiscovery};
use cortex_cognition::CognitionConfig;
use cortex_service::ServiceConfig;
use cortex_test_support::auth::{Credential, McpReply, McpSession, bearer, config, token};
use cortex_test_support::{TestServer, start_memory};
use serde_json::{Value, json};

const OWNER: &str = "alice";

struct Stack {
    memory: TestServer,
    cognition: TestServer,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start() -> Self {
        let auth = ServiceConfig {
            auth: config(),
            ..ServiceConfig::default()
        };
        let (memory, dir) = start_memory(auth.clone()).await;
        let discovery = Arc::new(StaticDiscovery::new().with("memory", memory.url("")));
        // No token provider: only a forwarded caller's token reaches memory.
        let client = NetworkMcpClient::builder(discovery).build().unwrap();
        let service =
            cortex_cognition::build(Arc::new(client), CognitionConfig::default()).unwrap();
        let cognition = TestServer::start(service, auth).await;
        Self {
            memory,
            cognition,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn store(&self, user: &str, content: &str) {
        let response = self
            .http
            .post(self.memory.url("/tool/store_input"))
            .header("authorization", bearer(&token(user, &[])))
            .json(&json!({"user_id": user, "input_data": {"content": content, "conversation_id": "c1"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// A tool, its arguments naming the owner, and a check that its answer
/// holds the owner's data.
type ToolCase = (&'static str, Value, fn(&Value) -> bool);

/// Every tool of cognition.
fn tools() -> Vec<ToolCase> {
    vec![
        (
            "get_context",
            json!({"user_id": OWNER, "query": "Lisbon"}),
            |r| r["count"] == 1 && r["degraded"] == false,
        ),
        (
            "analyze_conversation",
            json!({"user_id": OWNER, "conversation_id": "c1"}),
            |r| r["message_count"] == 1,
        ),
        ("extract_entities", json!({"user_id": OWNER}), |r| {
            r["item_count"] == 1
        }),
        ("summarize_history", json!({"user_id": OWNER}), |r| {
            r["item_count"] == 1
        }),
    ]
}

const RESOURCES: [&str; 2] = ["context/alice", "context/alice/query/Lisbon"];

fn code_for(credential: Credential) -> Option<&'static str> {
    match credential {
        c if c.is_refused() => Some("unauthorized"),
        Credential::OtherUser => Some("forbidden"),
        _ => None,
    }
}

fn status_for(credential: Credential) -> u16 {
    match code_for(credential) {
        Some("unauthorized") => 401,
        Some(_) => 403,
        None => 200,
    }
}

#[tokio::test]
async fn every_tool_and_resource_with_every_credential_over_both_protocols() {
    let stack = Stack::start().await;
    stack
        .store(OWNER, "Planning a trip to Lisbon with Ada Lovelace")
        .await;
    stack.store("mallory", "Mallory's own notes").await;
    let names: Vec<&str> = tools().iter().map(|(name, ..)| *name).collect();
    let listed: Value = stack
        .http
        .get(stack.cognition.url("/tools"))
        .header("authorization", bearer(&token(OWNER, &[])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut listed: Vec<&str> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut covered = names.clone();
    covered.sort_unstable();
    assert_eq!(listed, covered, "every listed tool is in the matrix");

    for credential in Credential::ALL {
        let authorization = credential.header(OWNER);
        for (tool, args, holds_data) in tools() {
            let mut request = stack
                .http
                .post(stack.cognition.url(&format!("/tool/{tool}")))
                .json(&args);
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            let cell = format!("cortex {tool} {credential:?}");
            assert_eq!(status, status_for(credential), "{cell}: {body}");
            assert_eq!(
                body["error"]["code"].as_str(),
                code_for(credential),
                "{cell}"
            );
            if status == 200 {
                assert!(holds_data(&body), "{cell}: {body}");
            }
        }
        for uri in RESOURCES {
            let mut request = stack
                .http
                .get(stack.cognition.url(&format!("/resource/{uri}")));
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            let cell = format!("cortex {uri} {credential:?}");
            assert_eq!(status, status_for(credential), "{cell}: {body}");
            if status == 200 {
                assert_eq!(body["count"], 1, "{cell}: {body}");
                assert!(
                    body["context"][0]["content"]
                        .as_str()
                        .unwrap()
                        .contains("Lisbon")
                );
            }
        }

        let url = stack.cognition.url("/mcp");
        let mut session = match McpSession::open(&url, authorization.clone()).await {
            Ok(session) => session,
            Err(refused) => {
                assert!(credential.is_refused(), "{credential:?}: {refused:?}");
                assert_eq!(refused.status, 401);
                assert_eq!(refused.body["error"]["code"], "unauthorized");
                continue;
            }
        };
        assert!(!credential.is_refused(), "{credential:?} opened a session");
        for (tool, args, holds_data) in tools() {
            let reply = session.call_tool(tool, args).await;
            let cell = format!("mcp {tool} {credential:?}");
            check_mcp(&cell, credential, &reply);
            if code_for(credential).is_none() {
                assert!(
                    holds_data(&reply.body["result"]["structuredContent"]),
                    "{cell}: {reply:?}"
                );
            }
        }
        for uri in RESOURCES {
            let reply = session.read(&format!("cognition://{uri}")).await;
            check_mcp(
                &format!("mcp read {uri} {credential:?}"),
                credential,
                &reply,
            );
        }
    }
}

fn check_mcp(cell: &str, credential: Credential, reply: &McpReply) {
    assert_eq!(reply.status, 200, "{cell}: {reply:?}");
    assert_eq!(
        reply.error_code().as_deref(),
        code_for(credential),
        "{cell}: {reply:?}"
    );
}

#[tokio::test]
async fn text_needs_no_user_and_a_user_reaches_only_their_own_memory() {
    let stack = Stack::start().await;
    stack.store(OWNER, "Meet @ada at https://example.com").await;
    let mallory = bearer(&token("mallory", &[]));
    // Entities of a text name no user's data: any caller may ask.
    let response = stack
        .http
        .post(stack.cognition.url("/tool/extract_entities"))
        .header("authorization", &mallory)
        .json(&json!({"text": "Write to ada@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Mallory's own context is empty: alice's item is not hers.
    let own: Value = stack
        .http
        .post(stack.cognition.url("/tool/get_context"))
        .header("authorization", &mallory)
        .json(&json!({"user_id": "mallory"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["count"], 0, "{own}");
    // An admin reads alice's through cognition; memory accepts the
    // forwarded admin token too.
    let admin: Value = stack
        .http
        .post(stack.cognition.url("/tool/get_context"))
        .header("authorization", bearer(&token("root", &["admin"])))
        .json(&json!({"user_id": OWNER}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(admin["count"], 1, "{admin}");
}
