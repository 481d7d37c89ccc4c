//! Core's front door over real sockets, with real memory and cognition
//! services and tokens: an input is stored or kept, streamed to its user
//! once, in order, and to nobody else.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{System, cognition_on, core_client, core_on, memory_on, quick_config};
use cortex_client::{MemoryServiceClient, NetworkMcpClient, StaticDiscovery, StaticToken};
use cortex_test_support::SseReader;
use cortex_test_support::auth::{bearer, token};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

/// What the tests ask of the front door, over HTTP as a user.
impl System {
    async fn input(&self, user: &str, body: Value, key: Option<&str>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(self.core.url("/input"))
            .header("authorization", bearer(&token(user, &[])))
            .json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn stream(&self, user: &str, last: Option<&str>) -> SseReader {
        let mut request = self
            .http
            .get(self.core.url("/output/stream"))
            .header("authorization", bearer(&token(user, &[])));
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        SseReader::new(response)
    }

    async fn core_outbox_depth(&self) -> u64 {
        let health: Value = self
            .http
            .get(self.core.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        health["checks"]["core"]["outbox"]["pending"]
            .as_u64()
            .unwrap()
    }
}

/// The next events of `reader` that are not `status`, until `n` are read.
async fn log_events(reader: &mut SseReader, n: usize) -> Vec<(String, String, Value)> {
    let mut events = Vec::new();
    while events.len() < n {
        let event = reader
            .next(WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} of {n} events: {events:?}", events.len()));
        if event.event_type() == "status" {
            continue;
        }
        let data: Value = event.json().unwrap();
        events.push((
            event.event_type().to_string(),
            event.id.clone().unwrap_or_default(),
            data,
        ));
    }
    events
}

#[tokio::test]
async fn an_input_is_stored_at_once_and_its_user_sees_it_with_context() {
    let system = System::start(100, true).await;
    let (status, body) = system
        .input(
            "alice",
            json!({"content": "hello core", "conversation_id": "c1"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "stored");
    let item_id = body["item_id"].as_i64().unwrap();

    let mut stream = system.stream("alice", None).await;
    let events = log_events(&mut stream, 2).await;
    assert_eq!(events[0].0, "input");
    assert_eq!(events[0].1, "1");
    assert_eq!(events[0].2["item_id"], item_id);
    assert_eq!(events[1].0, "context");
    assert_eq!(events[1].2["degraded"], false, "{}", events[1].2);
    assert_eq!(events[1].2["item_id"], item_id);

    // The same through the seed's other field name, and a retry with the
    // same Idempotency-Key is the same input: one item.
    let (s1, first) = system
        .input("alice", json!({"message": "again"}), Some("k-1"))
        .await;
    let (s2, second) = system
        .input("alice", json!({"message": "again"}), Some("k-1"))
        .await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(first, second);
    let history = system.memory_client().get_history("alice").await.unwrap();
    assert_eq!(history.len(), 2, "{history:?}");

    // Bob's same key is bob's own input.
    let (_, bobs) = system
        .input("bob", json!({"message": "again"}), Some("k-1"))
        .await;
    assert_ne!(bobs["input_id"], first["input_id"]);
    assert_eq!(
        system
            .memory_client()
            .get_history("bob")
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn while_memory_is_down_inputs_are_pending_then_stored_once_in_order() {
    let mut system = System::start(100, false).await;
    let mut stream = system.stream("alice", None).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let (status, body) = system
            .input("alice", json!({"content": format!("n{n}")}), None)
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "storage_pending");
        ids.push(body["input_id"].as_str().unwrap().to_string());
    }
    let health: Value = system
        .http
        .get(system.core.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["checks"]["core"]["outbox"]["pending"], 5, "{health}");

    system.start_memory().await;
    // Five `pending`, then five `stored` in the same order; contexts may
    // interleave after each `stored`.
    let mut pending = Vec::new();
    let mut stored = Vec::new();
    let mut last_id = 0;
    while stored.len() < 5 {
        let (kind, id, data) = log_events(&mut stream, 1).await.remove(0);
        let id: i64 = id.parse().unwrap();
        assert_eq!(id, last_id + 1, "ids are dense and in order");
        last_id = id;
        match kind.as_str() {
            "pending" => pending.push(data["input_id"].as_str().unwrap().to_string()),
            "stored" => stored.push(data["input_id"].as_str().unwrap().to_string()),
            "context" => {}
            other => panic!("unexpected {other}: {data}"),
        }
    }
    assert_eq!(pending, ids);
    assert_eq!(stored, ids);
    let history = system.memory_client().get_history("alice").await.unwrap();
    let contents: Vec<&str> = history
        .iter()
        .rev()
        .map(|i| i["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["n0", "n1", "n2", "n3", "n4"]);

    // A stream resumed after the third event starts at the fourth.
    let mut resumed = system.stream("alice", Some("3")).await;
    let next = log_events(&mut resumed, 1).await;
    assert_eq!(next[0].1, "4");
    system.stop_memory().await;
}

#[tokio::test]
async fn a_full_outbox_answers_503_with_retry_after_and_keeps_nothing() {
    let system = System::start(2, false).await;
    for n in 0..2 {
        let (status, _) = system
            .input("alice", json!({"content": n.to_string()}), None)
            .await;
        assert_eq!(status, 202);
    }
    let response = system
        .http
        .post(system.core.url("/input"))
        .header("authorization", bearer(&token("alice", &[])))
        .json(&json!({"content": "third"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let mut stream = system.stream("alice", None).await;
    let events = log_events(&mut stream, 2).await;
    assert!(events.iter().all(|e| e.0 == "pending"));
    let rest = stream.raw_for(Duration::from_millis(300)).await;
    assert!(
        !rest.contains("id:"),
        "the refused input left an event: {rest}"
    );
}

#[tokio::test]
async fn a_user_sees_only_their_own_stream_and_bad_credentials_are_refused() {
    let system = System::start(100, true).await;
    let (status, _) = system
        .input("alice", json!({"content": "alice's secret"}), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = system
        .input("bob", json!({"content": "bob's note"}), None)
        .await;
    assert_eq!(status, 200);

    // Bob's ticket opens bob's stream, which has only bob's events.
    let ticket: Value = system
        .http
        .post(system.core.url("/output/ticket"))
        .header("authorization", bearer(&token("bob", &[])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = ticket["ticket"].as_str().unwrap();
    let response = system
        .http
        .get(system.core.url(&format!("/output/stream?ticket={ticket}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut bobs = SseReader::new(response);
    let events = log_events(&mut bobs, 2).await;
    for (_, _, data) in &events {
        assert!(!data.to_string().contains("alice"), "{data}");
    }
    assert!(events[0].2.to_string().contains("bob's note"));

    // No token, a bad token, an unknown ticket: 401, nothing streamed.
    for (path, authorization) in [
        ("/output/stream", None),
        ("/output/stream", Some("Bearer not-a-token".to_string())),
        ("/output/stream?ticket=0123", None),
        ("/input", None),
        ("/history", None),
    ] {
        let mut request = if path == "/input" {
            system
                .http
                .post(system.core.url(path))
                .json(&json!({"content": "x"}))
        } else {
            system.http.get(system.core.url(path))
        };
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    // Through the resource, another user's output is forbidden.
    let other = system
        .http
        .get(system.core.url("/resource/output/alice"))
        .header("authorization", bearer(&token("bob", &[])))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);

    // History is the caller's own.
    let history: Value = system
        .http
        .get(system.core.url("/history?limit=10"))
        .header("authorization", bearer(&token("bob", &[])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{history}");
    assert_eq!(items[0]["content"], "bob's note");
}

#[tokio::test]
async fn with_cognition_down_context_is_degraded_and_inputs_are_stored() {
    let mut system = System::start(100, true).await;
    if let Some(cognition) = system.cognition.take() {
        cognition.shutdown(WAIT).await;
    }
    let (status, body) = system
        .input("alice", json!({"content": "still stored"}), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let mut stream = system.stream("alice", None).await;
    let events = log_events(&mut stream, 2).await;
    assert_eq!(events[0].0, "input");
    assert_eq!(events[1].0, "context");
    assert_eq!(events[1].2["degraded"], true, "{}", events[1].2);
    assert!(
        events[1].2["reason"]
            .as_str()
            .unwrap()
            .contains("cognition")
    );
}

#[tokio::test]
async fn malformed_inputs_are_refused_and_nothing_is_kept() {
    let system = System::start(100, true).await;
    for body in [
        json!({}),
        json!({"content": 5}),
        json!({"content": "a", "user_id": "bob"}),
        json!({"content": "a", "conversation_id": "a/b"}),
        json!({"content": "x".repeat(cortex_core::front::MAX_CONTENT_BYTES + 1)}),
    ] {
        let (status, answer) = system.input("alice", body.clone(), None).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    let response = system
        .http
        .post(system.core.url("/input"))
        .header("authorization", bearer(&token("alice", &[])))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let bad_resume = system
        .http
        .get(system.core.url("/output/stream"))
        .header("authorization", bearer(&token("alice", &[])))
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_resume.status(), 400);
    assert_eq!(
        system
            .memory_client()
            .get_history("alice")
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        system.core_outbox_depth().await,
        0,
        "nothing refused is kept"
    );
}

#[tokio::test]
async fn a_lost_acknowledgement_still_stores_the_input_once() {
    // Core reaches memory through a front that loses memory's answers: the
    // store happens, core never hears of it.
    let memory_dir = tempfile::tempdir().unwrap();
    let memory = memory_on(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        memory_dir.path(),
    )
    .await;
    let front = cortex_test_support::proxy::TcpProxy::start(memory.addr).await;
    front.set_mode(cortex_test_support::proxy::Mode::LoseAnswers);
    let cognition =
        cognition_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), memory.addr).await;
    let core_dir = tempfile::tempdir().unwrap();
    let (server, running) = core_on(
        core_dir.path(),
        100,
        core_client(front.addr, cognition.addr, quick_config()),
    )
    .await;
    let http = reqwest::Client::new();
    let answer: Value = http
        .post(server.url("/input"))
        .header("authorization", bearer(&token("alice", &[])))
        .json(&json!({"content": "once only"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "storage_pending", "{answer}");
    let admin = MemoryServiceClient::new(Arc::new(
        NetworkMcpClient::builder(Arc::new(
            StaticDiscovery::new().with("memory", format!("http://{}", memory.addr)),
        ))
        .token_provider(Arc::new(StaticToken::new(token("admin", &["admin"]))))
        .build()
        .unwrap(),
    ));
    let first = admin.get_history("alice").await.unwrap();
    assert_eq!(first.len(), 1, "memory did store it: {first:?}");

    // The front heals; the drain repeats the store under the same key.
    front.set_mode(cortex_test_support::proxy::Mode::Forward);
    let response = http
        .get(server.url("/output/stream"))
        .header("authorization", bearer(&token("alice", &[])))
        .send()
        .await
        .unwrap();
    let mut stream = SseReader::new(response);
    let events = log_events(&mut stream, 2).await;
    assert_eq!(events[0].0, "pending");
    assert_eq!(events[1].0, "stored");
    assert_eq!(
        events[1].2["item_id"], first[0]["item_id"],
        "the first store, replayed"
    );
    assert_eq!(
        admin.get_history("alice").await.unwrap().len(),
        1,
        "stored once"
    );
    running.abort();
}

#[tokio::test]
async fn a_user_holds_at_most_eight_streams_and_others_still_get_theirs() {
    let system = System::start(100, true).await;
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(system.stream("alice", None).await);
    }
    let ninth = system
        .http
        .get(system.core.url("/output/stream"))
        .header("authorization", bearer(&token("alice", &[])))
        .send()
        .await
        .unwrap();
    assert_eq!(ninth.status(), 503);
    let body: Value = ninth.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("8 output streams"),
        "{body}"
    );
    // Bob's slots are his own.
    let _bobs = system.stream("bob", None).await;
    // A closed stream gives its slot back.
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let again = system
            .http
            .get(system.core.url("/output/stream"))
            .header("authorization", bearer(&token("alice", &[])))
            .send()
            .await
            .unwrap();
        if again.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_input_tool_refuses_another_users_id() {
    let system = System::start(100, true).await;
    let call = |user: &str, args: Value| {
        system
            .http
            .post(system.core.url("/tool/input"))
            .header("authorization", bearer(&token(user, &[])))
            .json(&json!({"arguments": args}))
            .send()
    };
    let refused = call("bob", json!({"content": "as alice", "user_id": "alice"}))
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let own = call("bob", json!({"content": "as bob"})).await.unwrap();
    assert_eq!(own.status(), 200);
    assert!(
        system
            .memory_client()
            .get_history("alice")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        system
            .memory_client()
            .get_history("bob")
            .await
            .unwrap()
            .len(),
        1
    );
}
