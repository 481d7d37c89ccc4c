//! `GET /metrics` of a kit service over real loopback HTTP: series per
//! registered tool and pattern, errors by code, open streams and
//! connections as gauges, extra text appended, and no caller-chosen value
//! (user id, URI, unknown tool name) ever in a label.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cortex_service::{
    CallContext, Resource, ResourceContent, Service, ServiceConfig, ServiceError, Tool,
};
use cortex_test_support::prometheus::{self, Exposition};
use cortex_test_support::{SseReader, TestServer};
use futures::StreamExt;
use serde_json::{Map, Value, json};

const WAIT: Duration = Duration::from_secs(5);

fn service() -> Service {
    Service::builder("test", "1.2.3")
        .tool(Tool::new(
            "echo",
            "Returns its arguments.",
            json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}),
            |_ctx, args| async move { Ok(Value::Object(args)) },
        ))
        .tool(Tool::new(
            "fail",
            "Always fails.",
            json!({"type": "object"}),
            |_ctx, _args| async { Err::<Value, _>(ServiceError::internal("the tool broke")) },
        ))
        .resource(
            Resource::new("history/{user_id}", "A user's items.", |_ctx, params| async move {
                let user: String = params.get_parsed("user_id")?;
                Ok(ResourceContent::Json(json!([{"user": user}])))
            })
            .with_stream(|_ctx, _params, _last| async move {
                let first = futures::stream::iter([Ok(cortex_proto::sse::Event::message("{}")
                    .with_id("1"))]);
                Ok(first.chain(futures::stream::pending()).boxed())
            }),
        )
        .extra_metrics(|| "# TYPE extra_things gauge\nextra_things 7\n".to_string())
        .build()
        .unwrap()
}

async fn scrape(http: &reqwest::Client, server: &TestServer) -> Exposition {
    let response = http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

async fn scrape_text(http: &reqwest::Client, server: &TestServer) -> String {
    http.get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn calls_and_errors_are_counted_per_tool_and_pattern_by_code() {
    let server = TestServer::start(service(), ServiceConfig::default()).await;
    let http = reqwest::Client::new();
    let post = |tool: &str, body: String| {
        http.post(server.url(&format!("/tool/{tool}")))
            .body(body)
            .send()
    };
    for body in [
        json!({"arguments": {"name": "a"}}).to_string(),
        json!({"arguments": {"name": "b"}}).to_string(),
        json!({"arguments": {}}).to_string(),
        "not json".to_string(),
    ] {
        post("echo", body).await.unwrap();
    }
    post("fail", "{}".into()).await.unwrap();
    post("secret-tool-of-carol", "{}".into()).await.unwrap();
    for path in ["/resource/history/alice", "/resource/nothing/bob"] {
        http.get(server.url(path)).send().await.unwrap();
    }

    let m = scrape(&http, &server).await;
    let tool_calls = |tool| m.value("cortex_service_tool_calls_total", &[("tool", tool)]);
    let tool_errors = |tool, code| {
        m.value(
            "cortex_service_tool_errors_total",
            &[("tool", tool), ("code", code)],
        )
    };
    assert_eq!(tool_calls("echo"), Some(4.0));
    assert_eq!(tool_errors("echo", "invalid_arguments"), Some(1.0));
    assert_eq!(
        tool_errors("echo", "invalid_request"),
        Some(1.0),
        "bad JSON counts"
    );
    assert_eq!(tool_errors("fail", "tool_execution_error"), Some(1.0));
    assert_eq!(tool_calls("_unknown"), Some(1.0));
    assert_eq!(tool_errors("_unknown", "tool_not_found"), Some(1.0));
    assert_eq!(
        m.value(
            "cortex_service_tool_duration_seconds_count",
            &[("tool", "echo")]
        ),
        Some(4.0)
    );
    assert_eq!(
        m.value(
            "cortex_service_tool_duration_seconds_bucket",
            &[("tool", "echo"), ("le", "+Inf")]
        ),
        Some(4.0)
    );
    assert_eq!(
        m.value(
            "cortex_service_resource_requests_total",
            &[("pattern", "history/{user_id}"), ("mode", "read")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "cortex_service_resource_errors_total",
            &[
                ("pattern", "_unknown"),
                ("mode", "read"),
                ("code", "resource_not_found")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "cortex_service_info",
            &[("service", "test"), ("version", "1.2.3")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value("extra_things", &[]),
        Some(7.0),
        "extra text appended"
    );

    let text = scrape_text(&http, &server).await;
    for secret in ["alice", "bob", "carol", "nothing"] {
        assert!(!text.contains(secret), "`{secret}` leaked into:\n{text}");
    }
}

#[tokio::test]
async fn open_streams_and_connections_are_gauges() {
    let server = TestServer::start(service(), ServiceConfig::default()).await;
    let streams = reqwest::Client::new();
    let response = streams
        .get(server.url("/resource/history/alice"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut reader = SseReader::new(response);
    assert!(reader.next(WAIT).await.is_some());

    let http = reqwest::Client::new();
    let m = scrape(&http, &server).await;
    let open_streams = |m: &Exposition| {
        m.value(
            "cortex_service_open_streams",
            &[("pattern", "history/{user_id}")],
        )
    };
    assert_eq!(open_streams(&m), Some(1.0));
    assert_eq!(
        m.value("cortex_service_open_connections", &[]),
        Some(2.0),
        "the stream's connection and this one"
    );
    assert_eq!(
        m.value(
            "cortex_service_resource_requests_total",
            &[("pattern", "history/{user_id}"), ("mode", "stream")]
        ),
        Some(1.0)
    );

    drop(reader);
    drop(streams);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = scrape(&http, &server).await;
        let connections = m.value("cortex_service_open_connections", &[]);
        if open_streams(&m) == Some(0.0) && connections == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams {:?}, connections {connections:?}",
            open_streams(&m)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A thousand users' reads and streams, through the registry the HTTP routes
/// and `/mcp` share, add no series: labels are patterns, not URIs.
#[tokio::test]
async fn a_thousand_users_add_no_series() {
    let service = service();
    let ctx = CallContext::default;
    let calls = |service: &Service, user: usize| {
        let service = service.clone();
        async move {
            service
                .read_resource(ctx(), &format!("history/user-{user}"))
                .await
                .unwrap();
            let mut events = service
                .stream_resource(ctx(), &format!("history/user-{user}"), None)
                .await
                .unwrap();
            events.next().await.unwrap().unwrap();
            let _ = service
                .read_resource(ctx(), &format!("unknown/user-{user}"))
                .await;
            let mut args = Map::new();
            args.insert("name".into(), json!(format!("user-{user}")));
            service.call_tool(ctx(), "echo", args).await.unwrap();
        }
    };
    calls(&service, 0).await;
    let before = prometheus::parse(&service.render_metrics()).unwrap();
    for user in 1..=1000 {
        calls(&service, user).await;
    }
    let text = service.render_metrics();
    let after = prometheus::parse(&text).unwrap();
    assert_eq!(before.series(), after.series());
    assert_eq!(
        after.value("cortex_service_tool_calls_total", &[("tool", "echo")]),
        Some(1001.0)
    );
    assert!(!text.contains("user-"), "{text}");
}
