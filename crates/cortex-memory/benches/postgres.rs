//! Memory on PostgreSQL against memory on SQLite, in the same run, over
//! real loopback HTTP (the service kit's server, `reqwest` clients):
//!
//! 1. durable `store_input` at 32 concurrent writers (each its own user):
//!    SQLite, PostgreSQL with 1 replica, PostgreSQL with 3 replicas (three
//!    services, each with its own pool and listener, on one schema; the
//!    writers spread over them), interleaved in rounds; stores/s and the
//!    ratios against SQLite;
//! 2. live stream delivery across replicas: a stream open on replica 3,
//!    stores sent to replica 1 one at a time; the time from sending a store
//!    to the stream receiving it, p50/p99 (with SQLite's, one process, as
//!    the baseline);
//! 3. history reads (`history/{user}/limit/100`, 32 at once): reads/s on
//!    SQLite and on PostgreSQL.
//!
//! Needs the PostgreSQL server of the tests (`CORTEX_TEST_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432/test`); works in a schema of
//! its own, dropped at the end.
//!
//! ```text
//! cargo bench -p cortex-memory --bench postgres
//! cargo bench -p cortex-memory --bench postgres -- --quick
//! ```
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cortex_memory::store::Store;
use cortex_proto::sse::Decoder;
use cortex_service::ServiceConfig;
use cortex_test_support::TestServer;
use cortex_test_support::pg::{Backend, PgSchema, StoreFixture};
use cortex_test_support::stats::percentile;
use futures::StreamExt;
use serde_json::{Value, json};

const WRITERS: usize = 32;

async fn serve(store: Store) -> TestServer {
    let service = cortex_memory::service::build(store).unwrap();
    TestServer::start(service, ServiceConfig::default()).await
}

/// `calls` stores from `WRITERS` writers spread over `urls`; stores/s.
async fn store_round(http: &reqwest::Client, urls: &[String], calls: usize, round: usize) -> f64 {
    let started = Instant::now();
    let writers = (0..WRITERS).map(|w| {
        let http = http.clone();
        let url = urls[w % urls.len()].clone();
        async move {
            for i in (w..calls).step_by(WRITERS) {
                let body = json!({"arguments": {"user_id": format!("w{w}"),
                    "input_data": {"content": format!("r{round} {i}")}}});
                let response = http
                    .post(format!("{url}/tool/store_input"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        }
    });
    futures::future::join_all(writers).await;
    calls as f64 / started.elapsed().as_secs_f64()
}

/// Stores sent to `writer` one at a time, received on a stream from
/// `reader`: the delay of each, sorted.
async fn delivery(http: &reqwest::Client, writer: &str, reader: &str, n: usize) -> Vec<Duration> {
    let response = http
        .get(format!("{reader}/resource/history/latency/stream"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut decoder = Decoder::new();
    // The stream is open once its backlog is read; let the feed settle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut delays = Vec::with_capacity(n);
    for i in 0..n {
        let sent = Instant::now();
        let answer = http
            .post(format!("{writer}/tool/store_input"))
            .json(&json!({"arguments": {"user_id": "latency", "input_data": {"content": format!("{i}")}}}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        'wait: loop {
            let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
                .await
                .expect("an event within 10 s")
                .unwrap()
                .unwrap();
            for event in decoder.feed(&chunk).unwrap() {
                if event.event.as_deref() == Some("item") {
                    let item: Value = serde_json::from_str(&event.data).unwrap();
                    if item["content"] == format!("{i}") {
                        delays.push(sent.elapsed());
                        break 'wait;
                    }
                }
            }
        }
    }
    delays.sort();
    delays
}

/// `calls` reads of `history/w0/limit/100`, 32 at once; reads/s.
async fn reads(http: &reqwest::Client, url: &str, calls: usize) -> f64 {
    let started = Instant::now();
    let readers = (0..WRITERS).map(|r| {
        let http = http.clone();
        let url = url.to_owned();
        async move {
            for _ in (r..calls).step_by(WRITERS) {
                let response = http
                    .get(format!("{url}/resource/history/w0/limit/100"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
            }
        }
    });
    futures::future::join_all(readers).await;
    calls as f64 / started.elapsed().as_secs_f64()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, per_round, latency_n, read_n) = if quick {
        (2, 640, 100, 2000)
    } else {
        (5, 3200, 500, 10_000)
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();

    let sqlite: StoreFixture = Backend::Sqlite.store("bench").await;
    let sqlite_server = serve(sqlite.store.clone()).await;
    let schema = PgSchema::create("bench").await;
    let pg: Vec<TestServer> =
        futures::future::join_all((0..3).map(|_| async { serve(schema.store().await).await }))
            .await;
    let sqlite_url = vec![sqlite_server.url("")];
    let pg_one = vec![pg[0].url("")];
    let pg_three: Vec<String> = pg.iter().map(|s| s.url("")).collect();

    println!(
        "1. durable store_input, {WRITERS} writers (each its own user), {rounds} rounds of {per_round}"
    );
    let (mut s, mut p1, mut p3) = (Vec::new(), Vec::new(), Vec::new());
    // Warm-up, then interleaved rounds so a noisy neighbour hits all alike.
    store_round(&http, &sqlite_url, 320, 0).await;
    store_round(&http, &pg_three, 320, 0).await;
    for round in 1..=rounds {
        s.push(store_round(&http, &sqlite_url, per_round, round).await);
        p1.push(store_round(&http, &pg_one, per_round, round).await);
        p3.push(store_round(&http, &pg_three, per_round, round + 100).await);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (s, p1, p3) = (mean(&s), mean(&p1), mean(&p3));
    println!("   SQLite (1 process)        {s:>8.0} stores/s   1.00");
    println!(
        "   PostgreSQL, 1 replica     {p1:>8.0} stores/s   {:.2} x SQLite",
        p1 / s
    );
    println!(
        "   PostgreSQL, 3 replicas    {p3:>8.0} stores/s   {:.2} x SQLite",
        p3 / s
    );

    println!("2. stream delivery, {latency_n} stores one at a time");
    let local = delivery(&http, &sqlite_url[0], &sqlite_url[0], latency_n).await;
    let across = delivery(&http, &pg_three[0], &pg_three[2], latency_n).await;
    println!(
        "   SQLite, same process           p50 {}  p99 {}",
        ms(percentile(&local, 0.5)),
        ms(percentile(&local, 0.99))
    );
    println!(
        "   PostgreSQL, replica 1 -> 3     p50 {}  p99 {}",
        ms(percentile(&across, 0.5)),
        ms(percentile(&across, 0.99))
    );

    println!("3. history reads (history/w0/limit/100), {read_n} reads, {WRITERS} at once");
    let rs = reads(&http, &sqlite_url[0], read_n).await;
    let rp = reads(&http, &pg_one[0], read_n).await;
    println!("   SQLite        {rs:>8.0} reads/s   1.00");
    println!(
        "   PostgreSQL    {rp:>8.0} reads/s   {:.2} x SQLite",
        rp / rs
    );
}
