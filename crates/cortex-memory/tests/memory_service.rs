//! The memory service over real loopback HTTP, on both backends: a
//! temporary SQLite file, and a PostgreSQL schema of the test's own.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cortex_service::ServiceConfig;
use cortex_test_support::pg::{Backend, StoreFixture};
use cortex_test_support::{SseReader, TestServer, json_of};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

struct Memory {
    server: TestServer,
    http: reqwest::Client,
    _fixture: StoreFixture,
}

async fn memory(backend: Backend) -> Memory {
    let fixture = backend.store("memory_service").await;
    let service = cortex_memory::service::build(fixture.store.clone()).unwrap();
    let server = TestServer::start(service, ServiceConfig::default()).await;
    Memory {
        server,
        http: reqwest::Client::new(),
        _fixture: fixture,
    }
}

impl Memory {
    async fn call(&self, tool: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.server.url(&format!("/tool/{tool}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn store(&self, user: &str, content: &str) -> i64 {
        let (status, body) = self
            .call(
                "store_input",
                json!({"arguments": {"user_id": user, "input_data": {"content": content}}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["result"]["item_id"].as_i64().unwrap()
    }

    async fn read(&self, uri: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.server.url(&format!("/resource/{uri}")))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn stream(&self, uri: &str, last_event_id: Option<&str>) -> SseReader {
        let mut request = self
            .http
            .get(self.server.url(&format!("/resource/{uri}")))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        SseReader::new(response)
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error envelope: {body}"))
}

async fn seed_shape_bare_in_bare_out_with_message(backend: Backend) {
    let m = memory(backend).await;
    // Exactly what the seed's Python client and examples send.
    let (status, body) = m
        .call("store_input", json!({"user_id": "u1", "input_data": {"message": "hello", "timestamp": "2026-01-01T00:00:00Z"}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "stored");
    assert_eq!(body["user_id"], "u1");
    let id = body["item_id"].as_i64().unwrap();
    let (status, item) = m.read(&format!("item/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(item["content"], "hello");
    assert_eq!(item["timestamp"], "2026-01-01T00:00:00Z");
    assert_eq!(
        item["input_data"]["message"], "hello",
        "other fields are kept"
    );
}

async fn phase4_shape_envelope_in_envelope_out(backend: Backend) {
    let m = memory(backend).await;
    let (status, body) = m
        .call(
            "store_input",
            json!({"arguments": {"user_id": "u1", "input_data": {"content": "hi", "content_type": "text/markdown", "conversation_id": "c1", "mood": "calm"}}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["status"], "stored");
    let id = body["result"]["item_id"].as_i64().unwrap();
    let (status, body) = m
        .call("get_item", json!({"arguments": {"item_id": id}}))
        .await;
    assert_eq!(status, 200);
    let item = &body["result"];
    assert_eq!(
        (
            item["content_type"].as_str(),
            item["conversation_id"].as_str()
        ),
        (Some("text/markdown"), Some("c1"))
    );
    assert_eq!(item["input_data"]["mood"], "calm");
}

async fn bad_input_is_400_naming_the_field(backend: Backend) {
    let m = memory(backend).await;
    let cases = [
        (json!({"user_id": "u1", "input_data": "text"}), "input_data"),
        (json!({"user_id": "u1", "input_data": [1]}), "input_data"),
        (
            json!({"user_id": "u1", "input_data": {"timestamp": "t"}}),
            "input_data.content",
        ),
        (
            json!({"user_id": "u1", "input_data": {"content": 5}}),
            "input_data.content",
        ),
        (
            json!({"user_id": "", "input_data": {"content": "x"}}),
            "user_id",
        ),
        (
            json!({"user_id": "a/b", "input_data": {"content": "x"}}),
            "user_id",
        ),
        (json!({"input_data": {"content": "x"}}), "user_id"),
    ];
    for (body, field) in cases {
        let (status, answer) = m.call("store_input", body.clone()).await;
        assert_eq!(
            (status, code(&answer)),
            (400, "invalid_arguments"),
            "{body}"
        );
        assert_eq!(
            answer["error"]["details"]["field"], field,
            "{body} -> {answer}"
        );
    }
    let (_, history) = m.read("history/u1").await;
    assert_eq!(history, json!([]), "nothing was stored");
}

async fn unknown_items_are_404_not_500(backend: Backend) {
    let m = memory(backend).await;
    for tool in ["get_item", "delete_item"] {
        let (status, body) = m.call(tool, json!({"item_id": 999})).await;
        assert_eq!((status, code(&body)), (404, "resource_not_found"), "{tool}");
    }
    let (status, body) = m
        .call("update_item", json!({"item_id": 999, "content": "x"}))
        .await;
    assert_eq!((status, code(&body)), (404, "resource_not_found"));
    let (status, body) = m.read("item/999").await;
    assert_eq!((status, code(&body)), (404, "resource_not_found"));
    let (status, body) = m.read("item/abc").await;
    assert_eq!((status, code(&body)), (400, "invalid_arguments"));
}

async fn update_and_delete(backend: Backend) {
    let m = memory(backend).await;
    let id = m.store("u1", "first").await;
    let (status, body) = m
        .call("update_item", json!({"item_id": id, "content": "changed"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["content"], "changed");
    assert!(body["updated_at"].is_string());
    let (status, body) = m.call("delete_item", json!({"item_id": id})).await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "deleted", "item_id": id}))
    );
    let (status, _) = m.read(&format!("item/{id}")).await;
    assert_eq!(status, 404);
}

async fn history_resources_newest_first_limit_and_conversation(backend: Backend) {
    let m = memory(backend).await;
    for (i, cid) in ["a", "b", "a", "b", "a"].iter().enumerate() {
        let (status, _) = m
            .call("store_input", json!({"user_id": "u1", "input_data": {"content": format!("m{i}"), "conversation_id": cid}}))
            .await;
        assert_eq!(status, 200);
    }
    m.store("u2", "other user").await;
    let contents = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["content"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let (_, all) = m.read("history/u1").await;
    assert_eq!(contents(&all), ["m4", "m3", "m2", "m1", "m0"]);
    let (_, two) = m.read("history/u1/limit/2").await;
    assert_eq!(contents(&two), ["m4", "m3"]);
    let (_, conv) = m.read("history/u1/conversation/b").await;
    assert_eq!(contents(&conv), ["m3", "m1"]);
    let (_, none) = m.read("history/nobody").await;
    assert_eq!(none, json!([]));
    let (status, body) = m.read("history/u1/limit/many").await;
    assert_eq!((status, code(&body)), (400, "invalid_arguments"));
}

async fn stream_resumes_with_last_event_id_none_twice_none_missing(backend: Backend) {
    let m = memory(backend).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(m.store("u1", &format!("before {i}")).await);
    }
    m.store("u2", "not mine").await;
    let mut reader = m.stream("history/u1/stream", None).await;
    let first = reader.take(3, WAIT).await;
    let seen: Vec<i64> = first
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seen, ids[..3]);
    let last = first[2].id.clone().unwrap();
    drop(reader); // disconnect after 3 events
    for i in 0..5 {
        ids.push(m.store("u1", &format!("while away {i}")).await);
    }
    let mut reader = m.stream("history/u1/stream", Some(&last)).await;
    let rest = reader.take(7, WAIT).await;
    // Then live items, stored after the reconnect.
    for i in 0..2 {
        ids.push(m.store("u1", &format!("live {i}")).await);
    }
    let live = reader.take(2, WAIT).await;
    let mut resumed: Vec<i64> = rest
        .iter()
        .chain(&live)
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(resumed, ids[3..], "exactly the rest, in order");
    resumed.dedup();
    assert_eq!(resumed.len(), 9);
    for event in rest.iter().chain(&live) {
        assert_eq!(event.event.as_deref(), Some("item"));
        let item = json_of(event);
        assert_eq!(item["user_id"], "u1");
        assert_eq!(item["item_id"].to_string(), event.id.clone().unwrap());
    }
    let mut bad = m
        .http
        .get(m.server.url("/resource/history/u1/stream"))
        .header("accept", "text/event-stream");
    bad = bad.header("last-event-id", "not-a-number");
    let response = bad.send().await.unwrap();
    assert_eq!(response.status(), 400);
}

async fn keyed_store_input_sent_five_times_concurrently_stores_once(backend: Backend) {
    let m = memory(backend).await;
    let body = json!({"arguments": {"user_id": "u1", "input_data": {"content": "once"}}});
    let calls = (0..5).map(|_| {
        m.http
            .post(m.server.url("/tool/store_input"))
            .header("idempotency-key", "key-1")
            .json(&body)
            .send()
    });
    let mut item_ids = Vec::new();
    for response in futures::future::join_all(calls).await {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        item_ids.push(answer["result"]["item_id"].as_i64().unwrap());
    }
    assert!(item_ids.iter().all(|id| *id == item_ids[0]), "{item_ids:?}");
    let (_, history) = m.read("history/u1").await;
    assert_eq!(history.as_array().unwrap().len(), 1);
}

async fn many_writers_and_streamers_never_see_a_locked_database(backend: Backend) {
    let m = memory(backend).await;
    const WRITERS: usize = 16;
    const EACH: usize = 25;
    let mut readers = Vec::new();
    for _ in 0..8 {
        readers.push(m.stream("history/shared/stream", None).await);
    }
    let writes = (0..WRITERS).map(|w| {
        let http = m.http.clone();
        let url = m.server.url("/tool/store_input");
        tokio::spawn(async move {
            for i in 0..EACH {
                let body =
                    json!({"user_id": "shared", "input_data": {"content": format!("w{w} i{i}")}});
                let response = http.post(&url).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
            }
        })
    });
    for write in futures::future::join_all(writes).await {
        write.unwrap();
    }
    for mut reader in readers {
        let events = reader.take(WRITERS * EACH, WAIT).await;
        let ids: Vec<i64> = events
            .iter()
            .map(|e| e.id.as_deref().unwrap().parse().unwrap())
            .collect();
        assert_eq!(ids.len(), WRITERS * EACH);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    }
}

async fn health_reports_the_database(backend: Backend) {
    let m = memory(backend).await;
    let response = m.http.get(m.server.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["service"], "memory");
    assert_eq!(body["checks"]["database"], "ok");
}

async fn ids_too_long_to_read_back_are_refused_and_the_longest_round_trips(backend: Backend) {
    let m = memory(backend).await;
    // Stored, it could never be read: its URI would be over any limit.
    let huge = "u".repeat(100_000);
    let (status, body) = m
        .call(
            "store_input",
            json!({"user_id": huge, "input_data": {"content": "lost"}}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(code(&body), "invalid_arguments");
    assert_eq!(body["error"]["details"]["field"], "user_id");
    assert_eq!(body["error"]["details"]["limit_bytes"], 256);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("at most 256 bytes"), "{message}");
    assert!(message.len() < 300, "the id is not echoed back");
    let (status, body) = m
        .call(
            "store_input",
            json!({"user_id": "u1", "input_data": {"content": "x", "conversation_id": "c".repeat(300)}}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["details"]["field"],
        "input_data.conversation_id"
    );

    // The longest id, in characters that percent-encode to 12 bytes each
    // (64 four-byte characters, 256 bytes): stored, then read back.
    let longest = "\u{1F600}".repeat(64);
    let conversation = "\u{1F4AC}".repeat(64);
    let (status, body) = m
        .call(
            "store_input",
            json!({"user_id": longest, "input_data": {"content": "kept", "conversation_id": conversation}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let encode = |s: &str| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    let (status, history) = m.read(&format!("history/{}", encode(&longest))).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history[0]["content"], "kept");
    let (status, history) = m
        .read(&format!(
            "history/{}/conversation/{}",
            encode(&longest),
            encode(&conversation)
        ))
        .await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history[0]["content"], "kept");
}

async fn conversation_pages_chain_by_item_id(backend: Backend) {
    let m = memory(backend).await;
    let mut ids = Vec::new();
    for i in 0..150 {
        let (status, body) = m
            .call(
                "store_input",
                json!({"user_id": "pager", "input_data": {"content": format!("m{i}"), "conversation_id": "c"}}),
            )
            .await;
        assert_eq!(status, 200);
        ids.push(body["item_id"].as_i64().unwrap());
    }
    let (_, first) = m.read("history/pager/conversation/c").await;
    let first = first.as_array().unwrap();
    assert_eq!(first.len(), 100, "one page by default");
    let last = first[99]["item_id"].as_i64().unwrap();
    let (_, second) = m
        .read(&format!("history/pager/conversation/c/before/{last}"))
        .await;
    let second = second.as_array().unwrap();
    assert_eq!(second.len(), 50);
    let end = second[49]["item_id"].as_i64().unwrap();
    let (_, none) = m
        .read(&format!("history/pager/conversation/c/before/{end}"))
        .await;
    assert_eq!(none, json!([]), "an empty page is the end");
    let mut read: Vec<i64> = first
        .iter()
        .chain(second)
        .map(|i| i["item_id"].as_i64().unwrap())
        .collect();
    read.reverse();
    assert_eq!(read, ids, "every item once, none skipped");
    let (status, body) = m.read("history/pager/before/many").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"]["field"], "item_id");
}

cortex_test_support::on_both_backends!(
    #[tokio::test]
    seed_shape_bare_in_bare_out_with_message,
    #[tokio::test]
    phase4_shape_envelope_in_envelope_out,
    #[tokio::test]
    bad_input_is_400_naming_the_field,
    #[tokio::test]
    unknown_items_are_404_not_500,
    #[tokio::test]
    update_and_delete,
    #[tokio::test]
    history_resources_newest_first_limit_and_conversation,
    #[tokio::test]
    stream_resumes_with_last_event_id_none_twice_none_missing,
    #[tokio::test]
    keyed_store_input_sent_five_times_concurrently_stores_once,
    #[tokio::test]
    many_writers_and_streamers_never_see_a_locked_database,
    #[tokio::test]
    health_reports_the_database,
    #[tokio::test]
    ids_too_long_to_read_back_are_refused_and_the_longest_round_trips,
    #[tokio::test]
    conversation_pages_chain_by_item_id,
);
