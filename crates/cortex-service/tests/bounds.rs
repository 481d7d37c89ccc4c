//! The bounds on what one client can hold, each proved against the attack
//! it stops, over real loopback sockets: slow heads, idle connections,
//! declared-but-never-sent bodies, oversized heads and targets, cross-site
//! writes, foreign `Host` names, request, stream and MCP session floods.
//!
//! Timeouts are set small here (a second or less); every wait is bounded.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cortex_service::{HttpLimits, Resource, ResourceContent, Service, ServiceConfig, Tool};
use cortex_test_support::{SseReader, TestServer};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any single step may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

fn service(calls: Arc<AtomicUsize>) -> Service {
    Service::builder("bounds", "0.0.1")
        .tool(Tool::new(
            "echo",
            "Returns its arguments.",
            json!({"type": "object"}),
            move |_ctx, args| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(Value::Object(args))
                }
            },
        ))
        .tool(cortex_test_support::slow_tool())
        .resource(
            Resource::new("ticks", "A live stream.", |_ctx, _| async {
                Ok(ResourceContent::Json(json!([])))
            })
            .with_stream(|_ctx, _params, _last| async move {
                let ticks = futures::stream::iter(1u64..).then(|i| async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(cortex_proto::sse::Event::message(i.to_string()).with_id(i.to_string()))
                });
                Ok(ticks.boxed())
            }),
        )
        .build()
        .unwrap()
}

fn small_limits() -> ServiceConfig {
    ServiceConfig {
        limits: HttpLimits {
            header_timeout: Duration::from_millis(500),
            body_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(800),
            ..HttpLimits::default()
        },
        ..ServiceConfig::default()
    }
}

async fn start(config: ServiceConfig) -> (TestServer, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    (
        TestServer::start(service(calls.clone()), config).await,
        calls,
    )
}

async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect within the wait")
        .expect("connect")
}

/// Reads until the server closes the connection (EOF or reset); panics
/// when it is still open after `limit`.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(limit, read).await.is_err() {
        panic!("the connection was still open after {limit:?}");
    }
    out
}

/// The status and the JSON body of a raw HTTP/1.1 answer.
fn parse_answer(raw: &[u8]) -> (u16, String, Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, head.to_ascii_lowercase(), body)
}

#[tokio::test]
async fn slowloris_connections_are_closed_within_the_header_timeout() {
    let (server, _) = start(small_limits()).await;
    // 500 clients each trickle a request head a byte at a time and never
    // finish it.
    let mut clients = Vec::new();
    for _ in 0..500 {
        let mut stream = connect(server.addr).await;
        stream
            .write_all(b"POST /tool/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        clients.push(stream);
    }
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for stream in &mut clients {
                // Errors are expected once the server has closed it.
                let _ = stream.write_all(b"a").await;
            }
        }
    };
    trickle.await;
    // The header timeout (500 ms) has long passed for every one of them.
    for stream in &mut clients {
        let answer = read_to_close(stream, WAIT).await;
        assert!(answer.is_empty(), "no answer to a head that never came");
    }
    // And the service still serves.
    let health = reqwest::get(server.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let (server, _) = start(small_limits()).await;
    let mut stream = connect(server.addr).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive, then nothing: closed after the idle timeout (800 ms).
    let rest = read_to_close(&mut stream, WAIT).await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_huge_declared_body_is_refused_before_it_is_read() {
    let (server, calls) = start(small_limits()).await;
    let mut stream = connect(server.addr).await;
    // 10 GB declared, 1 KB sent, the rest never.
    stream
        .write_all(
            b"POST /tool/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n",
        )
        .await
        .unwrap();
    stream.write_all(&[b' '; 1024]).await.unwrap();
    let answer = read_to_close(&mut stream, WAIT).await;
    let (status, head, body) = parse_answer(&answer);
    assert_eq!(status, 413);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_eq!(body["error"]["details"]["limit_bytes"], 1024 * 1024);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_refused() {
    let (server, calls) = start(small_limits()).await;
    let mut stream = connect(server.addr).await;
    // Under the size limit, but only 1 KB of it ever comes.
    stream
        .write_all(
            b"POST /tool/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
        )
        .await
        .unwrap();
    stream.write_all(&[b' '; 1024]).await.unwrap();
    let answer = read_to_close(&mut stream, WAIT).await;
    let (status, _, body) = parse_answer(&answer);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("did not arrive within"), "{message}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // The same on /mcp, as a JSON-RPC error.
    let mut stream = connect(server.addr).await;
    stream
        .write_all(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: 5000\r\n\r\n{",
        )
        .await
        .unwrap();
    let answer = read_to_close(&mut stream, WAIT).await;
    let (status, _, body) = parse_answer(&answer);
    assert_eq!(status, 400);
    assert_eq!(body["jsonrpc"], "2.0");
}

/// Sends `request` on a new connection and returns the answer, read until
/// the server closes the connection.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, Value) {
    let mut stream = connect(addr).await;
    stream.write_all(request).await.unwrap();
    let answer = read_to_close(&mut stream, WAIT).await;
    parse_answer(&answer)
}

#[tokio::test]
async fn rejections_of_the_http_layer_carry_the_error_envelope() {
    let (server, _) = start(ServiceConfig::default()).await;

    // Not HTTP: hyper's own 400, given the envelope.
    let (status, head, body) = raw_exchange(server.addr, b"GARBAGE\r\n\r\n").await;
    assert_eq!(status, 400);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(body["error"]["code"], "invalid_request");

    // A head over the 64 KiB limit: hyper's 431, given the envelope.
    let mut request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 70 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let (status, head, body) = raw_exchange(server.addr, &request).await;
    assert_eq!(status, 431);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(body["error"]["code"], "invalid_request");
    assert_eq!(body["error"]["details"]["limit_bytes"], 64 * 1024);

    // A target over the 8 KiB limit: 414 with the envelope.
    let long = "a".repeat(10 * 1024);
    let response = reqwest::get(server.url(&format!("/resource/{long}")))
        .await
        .unwrap();
    assert_eq!(response.status(), 414);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
    assert_eq!(body["error"]["details"]["limit_bytes"], 8 * 1024);

    // A target hyper itself refuses (over 65534 bytes, within a head limit
    // raised to let it through): 414, given the envelope.
    let (server, _) = start(ServiceConfig {
        limits: HttpLimits {
            max_header_bytes: 256 * 1024,
            max_uri_bytes: 256 * 1024,
            ..HttpLimits::default()
        },
        ..ServiceConfig::default()
    })
    .await;
    let request = format!(
        "GET /resource/{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "a".repeat(100_000)
    );
    let (status, head, body) = raw_exchange(server.addr, request.as_bytes()).await;
    assert_eq!(status, 414);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(body["error"]["code"], "invalid_request");
}

#[tokio::test]
async fn a_cross_site_write_is_refused() {
    let (server, calls) = start(ServiceConfig::default()).await;
    let http = reqwest::Client::new();
    // What a form or `fetch` on any web page can send without a preflight.
    let response = http
        .post(server.url("/tool/echo"))
        .header("Origin", "http://evil.example")
        .header("Content-Type", "text/plain")
        .body(r#"{"user_id": "u1", "content": "planted"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("http://evil.example")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the tool never ran");

    // A loopback page (a local tool's UI) and a client without Origin are
    // served.
    for origin in [Some("http://localhost:5173"), None] {
        let mut request = http.post(server.url("/tool/echo")).json(&json!({}));
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        assert_eq!(request.send().await.unwrap().status(), 200, "{origin:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A configured origin is served too.
    let (server, _) = start(ServiceConfig {
        mcp: cortex_service::McpConfig {
            allowed_origins: vec!["https://app.example".into()],
            ..cortex_service::McpConfig::default()
        },
        ..ServiceConfig::default()
    })
    .await;
    let response = http
        .post(server.url("/tool/echo"))
        .header("Origin", "https://app.example")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_foreign_host_is_refused() {
    let (server, calls) = start(ServiceConfig::default()).await;
    let http = reqwest::Client::new();
    let send = |host: &'static str, path: &'static str| {
        http.post(server.url(path))
            .header("Host", host)
            .json(&json!({}))
            .send()
    };
    // A page whose own name was rebound to 127.0.0.1 (DNS rebinding).
    let response = send("evil.example:9000", "/tool/echo").await.unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // /mcp answers in JSON-RPC.
    let response = send("evil.example", "/mcp").await.unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0");

    for host in ["localhost:9000", "127.0.0.1", "[::1]:1"] {
        assert_eq!(
            send(host, "/tool/echo").await.unwrap().status(),
            200,
            "{host}"
        );
    }

    let (server, _) = start(ServiceConfig {
        limits: HttpLimits {
            allowed_hosts: vec!["memory.internal".into()],
            ..HttpLimits::default()
        },
        ..ServiceConfig::default()
    })
    .await;
    let response = http
        .get(server.url("/health"))
        .header("Host", "memory.internal:9000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn requests_beyond_the_cap_get_503_and_health_stays_up() {
    let (server, _) = start(ServiceConfig {
        limits: HttpLimits {
            max_requests: 2,
            ..HttpLimits::default()
        },
        ..ServiceConfig::default()
    })
    .await;
    let http = reqwest::Client::new();
    let slow = |ms: u64| {
        http.post(server.url("/tool/slow"))
            .json(&json!({"ms": ms}))
            .send()
    };
    let held = futures::future::join(slow(1500), slow(1500));
    let refused = async {
        // Both slots are taken by now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let refused = slow(0).await.unwrap();
        let health = http.get(server.url("/health")).send().await.unwrap();
        (refused, health)
    };
    let ((a, b), (refused, health)) =
        tokio::time::timeout(WAIT, futures::future::join(held, refused))
            .await
            .unwrap();
    assert_eq!(a.unwrap().status(), 200);
    assert_eq!(b.unwrap().status(), 200);
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(health.status(), 200, "/health takes no request slot");
}

#[tokio::test]
async fn streams_beyond_the_cap_get_503() {
    let (server, _) = start(ServiceConfig {
        limits: HttpLimits {
            max_streams: 1,
            ..HttpLimits::default()
        },
        ..ServiceConfig::default()
    })
    .await;
    let http = reqwest::Client::new();
    let open = || {
        http.get(server.url("/resource/ticks"))
            .header("Accept", "text/event-stream")
            .send()
    };
    let first = open().await.unwrap();
    assert_eq!(first.status(), 200);
    let mut reader = SseReader::new(first);
    assert!(reader.next(WAIT).await.is_some());
    let second = open().await.unwrap();
    assert_eq!(second.status(), 503);
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    // Its slot comes back when the stream ends.
    drop(reader);
    let mut reopened = None;
    for _ in 0..50 {
        let response = open().await.unwrap();
        if response.status() == 200 {
            reopened = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened.is_some(), "the slot was never given back");
}

#[tokio::test]
async fn when_every_connection_is_busy_health_still_answers() {
    let (server, _) = start(ServiceConfig {
        limits: HttpLimits {
            max_connections: 2,
            health_connections: 2,
            ..HttpLimits::default()
        },
        ..ServiceConfig::default()
    })
    .await;
    // Two connections, each busy with a call: no idle one to close.
    let busy = |_| {
        let url = server.url("/tool/slow");
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"ms": 2000}))
                .send()
                .await
        }
    };
    let held = futures::future::join_all((0..2).map(busy));
    let probe = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let health = reqwest::Client::new()
            .get(server.url("/health"))
            .send()
            .await
            .unwrap();
        let call = reqwest::Client::new()
            .post(server.url("/tool/echo"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        (health, call)
    };
    let (held, (health, call)) = tokio::time::timeout(WAIT, futures::future::join(held, probe))
        .await
        .unwrap();
    for response in held {
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(health.status(), 200);
    assert_eq!(call.status(), 503);
    let body: Value = call.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connections")
    );
}

/// `initialize` on `/mcp` through `http`.
async fn initialize(http: &reqwest::Client, server: &TestServer) -> reqwest::Response {
    http.post(server.url("/mcp"))
        .header("Accept", "application/json, text/event-stream")
        .json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "flood", "version": "0"}}
        }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_mcp_initialize_flood_from_one_client_leaves_room_for_others() {
    // Default settings: 10,000 sessions in all, 64 per client.
    let (server, _) = start(ServiceConfig::default()).await;
    let flooder = reqwest::Client::builder()
        .local_address("127.0.0.1".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let first = initialize(&flooder, &server).await;
    let first_id = first.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let flood = futures::stream::iter(1..10_000)
        .map(|_| initialize(&flooder, &server))
        .buffer_unordered(16)
        .fold(0usize, |ok, response| async move {
            ok + usize::from(response.status() == 200)
        });
    let ok = tokio::time::timeout(Duration::from_secs(300), flood)
        .await
        .expect("10,000 initialize calls within the wait");
    // The flooder is never locked out: each new session ends its oldest.
    assert_eq!(ok, 9_999);
    let gone = flooder
        .post(server.url("/mcp"))
        .header("Accept", "application/json, text/event-stream")
        .header("Mcp-Session-Id", &first_id)
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404, "the flooder's oldest session was ended");

    // Another client (another address) still opens a session.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let response = initialize(&other, &server).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("mcp-session-id"));
}

#[tokio::test]
async fn with_tokens_sessions_count_against_the_user_not_the_address() {
    let secret = [7u8; 32];
    let (server, _) = start(ServiceConfig {
        auth: cortex_service::AuthConfig::hs256(secret).unwrap(),
        mcp: cortex_service::McpConfig {
            max_sessions_per_client: 4,
            ..cortex_service::McpConfig::default()
        },
        ..ServiceConfig::default()
    })
    .await;
    let token = |user: &str| {
        cortex_service::auth::mint_hs256(
            &secret,
            &cortex_service::auth::TokenClaims::new(user, Duration::from_secs(600)),
        )
        .unwrap()
    };
    let open = |token: String| {
        let request = reqwest::Client::new()
            .post(server.url("/mcp"))
            .bearer_auth(token)
            .header("Accept", "application/json, text/event-stream")
            .json(&json!({
                "jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                           "clientInfo": {"name": "t", "version": "0"}}
            }));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.headers()["mcp-session-id"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    let ping = |token: String, session: String| {
        let request = reqwest::Client::new()
            .post(server.url("/mcp"))
            .bearer_auth(token)
            .header("Accept", "application/json, text/event-stream")
            .header("Mcp-Session-Id", session)
            .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}));
        async move { request.send().await.unwrap().status() }
    };
    // Same address (loopback) for both users: the token decides.
    let bob_first = open(token("bob")).await;
    let alice: Vec<String> = futures::stream::iter(0..10)
        .then(|_| open(token("alice")))
        .collect()
        .await;
    assert_eq!(
        ping(token("bob"), bob_first).await,
        200,
        "bob's session kept"
    );
    assert_eq!(
        ping(token("alice"), alice[0].clone()).await,
        404,
        "alice's oldest ended"
    );
    assert_eq!(ping(token("alice"), alice[9].clone()).await, 200);
}
