//! The service kit over real loopback HTTP: every route, every error code.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cortex_service::{Resource, ResourceContent, Service, ServiceConfig, ServiceError, Tool};
use cortex_test_support::{SseReader, TestServer, json_of};
use futures::StreamExt;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

struct Fixture {
    server: TestServer,
    http: reqwest::Client,
    echo_calls: Arc<AtomicUsize>,
}

fn service(healthy: bool, echo_calls: Arc<AtomicUsize>) -> Service {
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "count": {"type": "integer", "minimum": 0}},
        "required": ["name"]
    });
    Service::builder("test", "1.2.3")
        .tool(Tool::new(
            "echo",
            "Returns its arguments.",
            schema,
            move |_ctx, args| {
                let calls = echo_calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // Long enough that concurrent repeats overlap.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(json!({"echo": args, "call": calls.load(Ordering::SeqCst)}))
                }
            },
        ))
        .tool(Tool::new(
            "fail",
            "Always fails.",
            json!({"type": "object"}),
            |_ctx, _args| async { Err::<Value, _>(ServiceError::internal("the tool broke")) },
        ))
        .tool(Tool::new(
            "panic",
            "Always panics.",
            json!({"type": "object"}),
            |_ctx, _args| async {
                if true {
                    panic!("deliberate panic in a handler");
                }
                Ok(Value::Null)
            },
        ))
        .tool(cortex_test_support::slow_tool())
        .resource(Resource::new(
            "list/{n}",
            "n numbers",
            |_ctx, params| async move {
                let n: usize = params.get_parsed("n")?;
                Ok(ResourceContent::Json(json!((1..=n).collect::<Vec<_>>())))
            },
        ))
        .resource(
            Resource::new("note", "A text note.", |_ctx, _| async {
                Ok(ResourceContent::Text {
                    text: "# hello".into(),
                    mime_type: "text/markdown".into(),
                })
            })
            .with_mime_type("text/markdown"),
        )
        .resource(
            Resource::new("ticks", "A live stream that never ends.", |_ctx, _| async {
                Ok(ResourceContent::Json(json!([])))
            })
            .with_stream(|_ctx, _params, last| async move {
                let start: u64 = last.and_then(|l| l.parse().ok()).unwrap_or(0);
                let ticks = futures::stream::iter(start + 1..).then(|i| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(
                        cortex_proto::sse::Event::message(json!({"tick": i}).to_string())
                            .with_id(i.to_string()),
                    )
                });
                Ok(ticks.boxed())
            }),
        )
        .health_check("database", move || async move {
            if healthy {
                Ok(())
            } else {
                Err("database is down".to_string())
            }
        })
        .build()
        .unwrap()
}

async fn fixture_with(healthy: bool, config: ServiceConfig) -> Fixture {
    let echo_calls = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(service(healthy, echo_calls.clone()), config).await;
    Fixture {
        server,
        http: reqwest::Client::new(),
        echo_calls,
    }
}

async fn fixture() -> Fixture {
    fixture_with(true, ServiceConfig::default()).await
}

impl Fixture {
    async fn post(&self, tool: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .http
            .post(self.server.url(&format!("/tool/{tool}")))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.server.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error envelope: {body}"))
}

#[tokio::test]
async fn envelope_in_envelope_out_and_bare_in_bare_out() {
    let f = fixture().await;
    let (status, body) = f
        .post("echo", json!({"arguments": {"name": "a"}}).to_string())
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["echo"], json!({"name": "a"}));
    let (status, body) = f.post("echo", json!({"name": "b"}).to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["echo"],
        json!({"name": "b"}),
        "bare request gets a bare answer"
    );
    assert!(body.get("result").is_none());
}

#[tokio::test]
async fn bad_json_is_invalid_request() {
    let f = fixture().await;
    let (status, body) = f.post("echo", "{not json").await;
    assert_eq!((status, code(&body)), (400, "invalid_request"));
    let (status, body) = f.post("echo", "[1, 2]").await;
    assert_eq!((status, code(&body)), (400, "invalid_request"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("an array")
    );
}

#[tokio::test]
async fn schema_violations_name_the_field() {
    let f = fixture().await;
    let (status, body) = f.post("echo", json!({"arguments": {}}).to_string()).await;
    assert_eq!((status, code(&body)), (400, "invalid_arguments"));
    assert_eq!(body["error"]["details"]["field"], "name");
    let (status, body) = f
        .post("echo", json!({"name": "x", "count": -1}).to_string())
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_arguments"));
    assert_eq!(body["error"]["details"]["field"], "count");
    assert_eq!(
        f.echo_calls.load(Ordering::SeqCst),
        0,
        "handler must not run on invalid arguments"
    );
}

#[tokio::test]
async fn unknown_tool_resource_and_route_are_404_envelopes() {
    let f = fixture().await;
    let (status, body) = f.post("nope", "{}").await;
    assert_eq!((status, code(&body)), (404, "tool_not_found"));
    let (status, body) = f.get("/resource/missing/thing").await;
    assert_eq!((status, code(&body)), (404, "resource_not_found"));
    let (status, body) = f.get("/nowhere").await;
    assert_eq!((status, code(&body)), (404, "resource_not_found"));
    let (status, body) = f.get("/tool/echo").await;
    assert_eq!(
        (status, code(&body)),
        (400, "invalid_request"),
        "GET on a tool explains itself"
    );
}

#[tokio::test]
async fn oversized_body_is_413_envelope() {
    let config = ServiceConfig {
        max_body_bytes: 1024,
        ..ServiceConfig::default()
    };
    let f = fixture_with(true, config).await;
    let big = json!({"name": "x".repeat(2048)}).to_string();
    let (status, body) = f.post("echo", big).await;
    assert_eq!((status, code(&body)), (413, "payload_too_large"));
    assert_eq!(body["error"]["details"]["limit_bytes"], 1024);
    let (status, _) = f.post("echo", json!({"name": "small"}).to_string()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn default_limit_is_one_mebibyte() {
    let f = fixture().await;
    let big = json!({"name": "x".repeat(1024 * 1024 + 1)}).to_string();
    let (status, body) = f.post("echo", big).await;
    assert_eq!((status, code(&body)), (413, "payload_too_large"));
}

#[tokio::test]
async fn handler_error_and_panic_are_500_and_service_keeps_serving() {
    let f = fixture().await;
    let (status, body) = f.post("fail", "{}").await;
    assert_eq!((status, code(&body)), (500, "tool_execution_error"));
    assert_eq!(body["error"]["message"], "the tool broke");
    for _ in 0..3 {
        let (status, body) = f.post("panic", "{}").await;
        assert_eq!((status, code(&body)), (500, "tool_execution_error"));
        assert!(
            !body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("deliberate"),
            "panic text must not leak"
        );
    }
    let (status, _) = f
        .post("echo", json!({"name": "still here"}).to_string())
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let f = fixture().await;
    let response = f
        .http
        .get(f.server.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let response = f
        .http
        .post(f.server.url("/tool/nope"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a generated UUID: {generated}");
}

#[tokio::test]
async fn listings_describe_tools_and_resources() {
    let f = fixture().await;
    let (status, body) = f.get("/tools").await;
    assert_eq!(status, 200);
    let names: Vec<_> = body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "fail", "panic", "slow"]);
    assert_eq!(
        body["tools"][0]["input_schema"]["required"],
        json!(["name"])
    );
    let (status, body) = f.get("/resources").await;
    assert_eq!(status, 200);
    assert_eq!(body["resources"][0]["uri_template"], "list/{n}");
    assert_eq!(body["resources"][2]["streaming"], true);
}

#[tokio::test]
async fn health_is_200_or_503_with_the_same_shape() {
    let f = fixture().await;
    let (status, body) = f.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["checks"]["database"], "ok");
    let sick = fixture_with(false, ServiceConfig::default()).await;
    let (status, body) = sick.get("/health").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["checks"]["database"], "database is down");
    assert_eq!(body["service"], "test");
}

#[tokio::test]
async fn resources_read_as_json_or_their_own_mime_type() {
    let f = fixture().await;
    let (status, body) = f.get("/resource/list/3").await;
    assert_eq!((status, body), (200, json!([1, 2, 3])));
    let response = f
        .http
        .get(f.server.url("/resource/note"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/markdown");
    assert_eq!(response.text().await.unwrap(), "# hello");
    let (status, body) = f.get("/resource/list/abc").await;
    assert_eq!((status, code(&body)), (400, "invalid_arguments"));
}

#[tokio::test]
async fn a_resource_without_a_stream_is_sent_as_a_finite_stream() {
    let f = fixture().await;
    let sse = |last: Option<&str>| {
        let mut request = f
            .http
            .get(f.server.url("/resource/list/4"))
            .header("accept", "text/event-stream");
        if let Some(last) = last {
            request = request.header("last-event-id", last);
        }
        request.send()
    };
    let mut reader = SseReader::new(sse(None).await.unwrap());
    let events = reader.take(10, WAIT).await;
    let values: Vec<_> = events.iter().map(json_of).collect();
    assert_eq!(values, [json!(1), json!(2), json!(3), json!(4)]);
    assert_eq!(events[3].id.as_deref(), Some("4"));
    assert!(
        reader.next(WAIT).await.is_none(),
        "the finite stream ends normally"
    );
    let mut resumed = SseReader::new(sse(Some("2")).await.unwrap());
    let values: Vec<_> = resumed.take(10, WAIT).await.iter().map(json_of).collect();
    assert_eq!(values, [json!(3), json!(4)]);
}

#[tokio::test]
async fn live_streams_resume_and_send_keep_alives() {
    let config = ServiceConfig {
        keep_alive: Duration::from_millis(5),
        ..ServiceConfig::default()
    };
    let f = fixture_with(true, config).await;
    let response = f
        .http
        .get(f.server.url("/resource/ticks"))
        .header("accept", "text/event-stream")
        .header("last-event-id", "10")
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(response);
    let raw = reader.raw_for(Duration::from_millis(200)).await;
    assert!(
        raw.starts_with("retry: 1000\n\n"),
        "reconnect advice first: {raw:?}"
    );
    assert!(
        raw.contains(": keep-alive\n\n"),
        "keep-alive comments while idle: {raw:?}"
    );
    assert!(
        raw.contains("id: 11\n"),
        "resumes after Last-Event-ID: {raw:?}"
    );
    assert!(!raw.contains("id: 10\n"));
}

#[tokio::test]
async fn keyed_calls_run_once_even_when_concurrent() {
    let f = fixture().await;
    let calls = (0..5).map(|_| {
        f.http
            .post(f.server.url("/tool/echo"))
            .header("idempotency-key", "k-1")
            .body(json!({"arguments": {"name": "once"}}).to_string())
            .send()
    });
    let mut answers = Vec::new();
    for response in futures::future::join_all(calls).await {
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        answers.push(response.json::<Value>().await.unwrap());
    }
    assert_eq!(
        f.echo_calls.load(Ordering::SeqCst),
        1,
        "the handler ran once"
    );
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "all answers equal: {answers:?}"
    );
    // A bare repeat gets the same result, in its own shape.
    let response = f
        .http
        .post(f.server.url("/tool/echo"))
        .header("idempotency-key", "k-1")
        .body(json!({"name": "once"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        answers[0]["result"]
    );
    // Another key runs again.
    let response = f
        .http
        .post(f.server.url("/tool/echo"))
        .header("idempotency-key", "k-2")
        .body(json!({"name": "twice"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(f.echo_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_calls_and_cuts_live_streams() {
    let f = fixture().await;
    let Fixture {
        mut server, http, ..
    } = f;
    let stream = http
        .get(server.url("/resource/ticks"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(stream);
    assert!(reader.next(WAIT).await.is_some());
    let slow = tokio::spawn({
        let url = server.url("/tool/slow");
        let http = http.clone();
        async move {
            http.post(url)
                .body(json!({"ms": 300}).to_string())
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.begin_shutdown();
    // The live stream is cut (so its reader resumes elsewhere), promptly;
    // the slow call completes.
    let ended = reader.finish(WAIT).await;
    assert!(
        ended.is_err(),
        "a live stream is cut at shutdown, not completed: {ended:?}"
    );
    let response = slow.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"slept_ms": 300})
    );
    server.shutdown(WAIT).await;
}

#[tokio::test]
async fn grace_period_bounds_shutdown() {
    let config = ServiceConfig {
        grace_period: Duration::from_millis(200),
        ..ServiceConfig::default()
    };
    let f = fixture_with(true, config).await;
    let Fixture { server, http, .. } = f;
    let url = server.url("/tool/slow");
    let slow = tokio::spawn(async move {
        http.post(url)
            .body(json!({"ms": 60_000}).to_string())
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    server.shutdown(WAIT).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?}",
        started.elapsed()
    );
    let response = slow.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        503,
        "the over-long call is stopped with a retryable answer"
    );
    assert_eq!(code(&response.json().await.unwrap()), "unavailable");
}

#[tokio::test]
async fn read_only_tools_are_not_recorded_under_a_key() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = Service::builder("ro", "0")
        .tool(
            Tool::new(
                "peek",
                "Reads.",
                json!({"type": "object"}),
                move |_ctx, _args| {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    async move { Ok(json!(n)) }
                },
            )
            .read_only(),
        )
        .build()
        .unwrap();
    let server = TestServer::start(service, ServiceConfig::default()).await;
    let http = reqwest::Client::new();
    for expected in [1, 2] {
        let response = http
            .post(server.url("/tool/peek"))
            .header("idempotency-key", "same")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!(expected),
            "a read runs every time"
        );
    }
    let tools: Value = http
        .get(server.url("/tools"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tools["tools"][0]["read_only"], true);
}
