//! The kit serves HTTP/2 with prior knowledge (h2c) on the same port as
//! HTTP/1.1, with the same bounds: a peer that sends the preface and no
//! request is closed within the header timeout, an idle connection after
//! the idle timeout, a head over `max_header_bytes` is refused with 431,
//! and each request is authenticated and authorized as over HTTP/1.1.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use cortex_service::{HttpLimits, Service, ServiceConfig};
use cortex_test_support::TestServer;
use cortex_test_support::auth;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

fn small_limits() -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(800),
        max_header_bytes: 4096,
        ..HttpLimits::default()
    }
}

async fn start() -> TestServer {
    start_with(small_limits()).await
}

async fn start_with(limits: HttpLimits) -> TestServer {
    let service = Service::builder("h2", "0.0.1")
        .tool(cortex_test_support::slow_tool())
        .build()
        .unwrap();
    let config = ServiceConfig {
        limits,
        ..ServiceConfig::default()
    };
    TestServer::start(service, config).await
}

/// An HTTP/2 connection to `addr`, and the task driving it (it ends when
/// the connection does).
async fn h2(
    addr: SocketAddr,
) -> (
    http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

fn get(addr: SocketAddr, path: &str) -> http::request::Builder {
    http::Request::get(format!("http://{addr}{path}"))
}

async fn send(
    sender: &mut http2::SendRequest<Empty<Bytes>>,
    request: http::request::Builder,
) -> (http::StatusCode, Bytes) {
    sender.ready().await.unwrap();
    let response = tokio::time::timeout(
        WAIT,
        sender.send_request(request.body(Empty::new()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let status = response.status();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    (status, body)
}

#[tokio::test]
async fn http2_and_http1_are_served_on_one_port() {
    let server = start().await;
    let (mut sender, _connection) = h2(server.addr).await;
    // Many requests at once on one connection.
    let answers = futures::future::join_all((0..20).map(|_| {
        let mut sender = sender.clone();
        async move { send(&mut sender, get(server.addr, "/health")).await }
    }))
    .await;
    for (status, _) in answers {
        assert_eq!(status, 200);
    }
    let (status, _) = send(&mut sender, get(server.addr, "/health")).await;
    assert_eq!(status, 200);
    let http1 = reqwest::get(server.url("/health")).await.unwrap();
    assert_eq!(http1.status(), 200);
    assert_eq!(http1.version(), http::Version::HTTP_11);
}

#[tokio::test]
async fn a_peer_that_sends_only_the_preface_is_closed_within_the_header_timeout() {
    let server = start().await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // the server's SETTINGS, then its GOAWAY
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after {WAIT:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let server = start().await;
    let (mut sender, connection) = h2(server.addr).await;
    let (status, _) = send(&mut sender, get(server.addr, "/health")).await;
    assert_eq!(status, 200);
    // Kept, then nothing: the server sends GOAWAY after 800 ms idle and the
    // connection ends, though this side still holds its sender.
    let ended = tokio::time::timeout(WAIT, connection).await;
    assert!(ended.is_ok(), "the idle connection was not closed");
    assert!(sender.is_closed());
}

#[tokio::test]
async fn an_http2_head_over_the_limit_is_refused_with_431() {
    let server = start().await;
    let (mut sender, _connection) = h2(server.addr).await;
    let big = "x".repeat(8 * 1024);
    let (status, _) = send(
        &mut sender,
        get(server.addr, "/health").header("x-big", big),
    )
    .await;
    assert_eq!(status, 431);
    // The connection goes on serving.
    let (status, _) = send(&mut sender, get(server.addr, "/health")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn over_http2_each_user_reads_only_their_own_history() {
    let config = ServiceConfig {
        auth: auth::config(),
        ..ServiceConfig::default()
    };
    let (server, _dir) = cortex_test_support::start_memory(config).await;
    let (mut sender, _connection) = h2(server.addr).await;
    let alice = auth::bearer(&auth::token("alice", &[]));
    let path = "/resource/history/bob";

    let (status, _) = send(&mut sender, get(server.addr, path)).await;
    assert_eq!(status, 401, "no token");
    let (status, body) = send(
        &mut sender,
        get(server.addr, path).header("authorization", &alice),
    )
    .await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    let own = "/resource/history/alice";
    let (status, body) = send(
        &mut sender,
        get(server.addr, own).header("authorization", &alice),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn past_the_cap_an_http2_connection_answers_health_once_and_is_closed() {
    let server = start_with(HttpLimits {
        max_connections: 1,
        health_connections: 1,
        // Longer than the wait below: only being health-only closes it.
        idle_timeout: Duration::from_secs(60),
        ..small_limits()
    })
    .await;
    // The one connection busy with a call: nothing idle to close.
    let busy = tokio::spawn({
        let url = server.url("/tool/slow");
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"ms": 1500}))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut sender, connection) = h2(server.addr).await;
    let (status, _) = send(&mut sender, get(server.addr, "/health")).await;
    assert_eq!(status, 200);
    // One request, then the health-only connection is closed.
    let ended = tokio::time::timeout(WAIT, connection).await;
    assert!(ended.is_ok(), "the health-only connection stayed open");
    assert_eq!(busy.await.unwrap().unwrap().status(), 200);
}
