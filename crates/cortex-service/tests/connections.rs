//! Thousands of idle connections against the connection cap, under an
//! open-file limit too small to hold them all on both ends.
//!
//! Its own test binary: it lowers this process's soft `RLIMIT_NOFILE`,
//! which would disturb any test running beside it.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cortex_service::{HttpLimits, Service, ServiceConfig};
use cortex_test_support::TestServer;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

const WAIT: Duration = Duration::from_secs(10);
const CONNECT_WAIT: Duration = Duration::from_secs(60);

/// The connection cap of the service under attack.
const CAP: usize = 1_000;
/// Descriptors beyond the client's connections and the cap: the runtime,
/// the test harness, the health check's own connection.
const SLACK: u64 = 600;

fn service() -> Service {
    Service::builder("conns", "0.0.1").build().unwrap()
}

/// The service's `cortex_service_open_connections` gauge.
async fn open_connections(server: &TestServer) -> u64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("cortex_service_open_connections "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_leave_health_reachable() {
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    // 5,000 idle connections, unless the hard limit cannot hold them and
    // the cap: then as many as it can.
    let idle = 5_000u64.min(hard.saturating_sub(CAP as u64 + SLACK));
    assert!(idle >= 500, "the hard open-file limit ({hard}) is too low");
    if idle < 5_000 {
        eprintln!("hard open-file limit {hard}: {idle} idle connections instead of 5000");
    }
    // Room for the client's connections and the cap, not for the same
    // connections twice: a service that kept every connection would run
    // this process out of descriptors (as `ulimit -n 1024` did to it with
    // 1,100 connections), and neither end could open another socket.
    let soft = idle + CAP as u64 + SLACK;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft),
            maximum: limit.maximum,
        },
    )
    .unwrap();

    let server = TestServer::start(
        service(),
        ServiceConfig {
            limits: HttpLimits {
                max_connections: CAP,
                // Long enough that no timeout closes anything during the
                // test: the cap alone has to hold.
                header_timeout: Duration::from_secs(300),
                idle_timeout: Duration::from_secs(300),
                ..HttpLimits::default()
            },
            ..ServiceConfig::default()
        },
    )
    .await;

    let mut clients = Vec::with_capacity(idle as usize);
    for i in 0..idle {
        // A connect waits in the listen backlog while the service works
        // through those before it; when the backlog overflows, the kernel
        // retries the handshake after a second or more.
        let stream =
            tokio::time::timeout(CONNECT_WAIT, tokio::net::TcpStream::connect(server.addr))
                .await
                .unwrap_or_else(|_| panic!("connection {i} not accepted within {CONNECT_WAIT:?}"))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        clients.push(stream);
        if i % 100 == 99 {
            // Paced, so the backlog rarely overflows: the point is how many
            // are held, not how fast they come.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    // Every one of them is still open on this end; the service answers.
    let health = tokio::time::timeout(WAIT, reqwest::get(server.url("/health")))
        .await
        .expect("/health within the wait")
        .unwrap();
    assert_eq!(health.status(), 200);
    let open = open_connections(&server).await;
    let health_slots = HttpLimits::default().health_connections as u64;
    assert!(
        open <= CAP as u64 + health_slots,
        "{open} connections open, the cap is {CAP}"
    );
    eprintln!(
        "{idle} idle connections held by the client, {open} open in the service (cap {CAP}), \
         soft open-file limit {soft}"
    );
    drop(clients);
}
