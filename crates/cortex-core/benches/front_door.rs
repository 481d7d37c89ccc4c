//! Core's front door against memory called directly, in the same run:
//!
//! 1. `POST /input` to core at concurrency 32 against `POST
//!    /tool/store_input` to memory at concurrency 32 (the same HTTP client,
//!    tokens on both), rounds alternating, best of 3: the price of core's
//!    durable log, its event and the context it fetches.
//! 2. Input-to-event latency: from sending `POST /input` to its `input`
//!    event arriving on the user's open output stream, p50 and p99.
//! 3. Drain rate: 10,000 inputs accepted while memory is down, then memory
//!    started: inputs stored per second until the outbox is empty, against
//!    keyed `store_input` calls straight to memory at the drain's
//!    concurrency (8).
//!
//! Run: `cargo bench -p cortex-core --bench front_door` (`-- --quick` for a
//! short run).
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{System, core_client};
use cortex_client::{ClientConfig, MemoryServiceClient};
use cortex_test_support::SseReader;
use cortex_test_support::auth::{bearer, token};
use futures::StreamExt;
use serde_json::json;

/// Core's client in the benchmark: enough connections for concurrency 32.
fn config() -> ClientConfig {
    ClientConfig::builder()
        .max_connections(64)
        .reset_timeout(Duration::from_millis(200))
        .build()
        .unwrap()
}

async fn system(memory_up: bool, max_pending: usize) -> System {
    System::start_with(config(), max_pending, memory_up).await
}

/// Calls/s of `calls` POSTs of `body(i)` to `url` at `concurrency`; every
/// answer must be 2xx.
async fn post_rate(
    http: &reqwest::Client,
    url: &str,
    authorization: &str,
    calls: usize,
    concurrency: usize,
    body: impl Fn(usize) -> serde_json::Value,
) -> f64 {
    let started = Instant::now();
    futures::stream::iter(0..calls)
        .map(|i| {
            let request = http
                .post(url)
                .header("authorization", authorization)
                .json(&body(i));
            async move {
                let response = request.send().await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                let _ = response.bytes().await.unwrap();
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    calls as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        throughput(quick).await;
        latency(quick).await;
        drain(quick).await;
    });
}

async fn throughput(quick: bool) {
    let calls = if quick { 500 } else { 3000 };
    let system = system(true, 100_000).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let user = bearer(&token("bench", &[]));
    let core_url = system.core.url("/input");
    let memory_url = system.memory.as_ref().unwrap().url("/tool/store_input");
    let (mut best_core, mut best_memory) = (0f64, 0f64);
    for round in 0..3 {
        let memory = post_rate(&http, &memory_url, &user, calls, 32, |i| {
            json!({"user_id": "bench", "input_data": {"content": format!("direct {round} {i}")}})
        })
        .await;
        let core = post_rate(
            &http,
            &core_url,
            &user,
            calls,
            32,
            |i| json!({"content": format!("front {round} {i}")}),
        )
        .await;
        println!("round {round}: core /input {core:.0}/s, memory store_input {memory:.0}/s");
        best_core = best_core.max(core);
        best_memory = best_memory.max(memory);
    }
    println!(
        "throughput at concurrency 32 (best of 3): core /input {best_core:.0}/s, memory store_input {best_memory:.0}/s, ratio {:.2}x",
        best_core / best_memory
    );
}

async fn latency(quick: bool) {
    let n = if quick { 100 } else { 500 };
    let system = system(true, 100_000).await;
    let http = reqwest::Client::new();
    let user = bearer(&token("latency", &[]));
    let response = http
        .get(system.core.url("/output/stream"))
        .header("authorization", &user)
        .send()
        .await
        .unwrap();
    let mut stream = SseReader::new(response);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let sent = Instant::now();
        let answer = http
            .post(system.core.url("/input"))
            .header("authorization", &user)
            .json(&json!({"content": format!("latency {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        loop {
            let event = stream.next(Duration::from_secs(10)).await.unwrap();
            if event.event_type() == "input" {
                samples.push(sent.elapsed());
                break;
            }
        }
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "input to its `input` event on the stream ({n} inputs, one at a time): p50 {:?}, p99 {:?}",
        at(0.5),
        at(0.99)
    );
}

async fn drain(quick: bool) {
    let n = if quick { 1000 } else { 10_000 };
    let mut system = system(false, n + 1).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    // 32 users, so the drain works on 8 at once as it would in a crowd.
    let url = system.core.url("/input");
    let tokens: Vec<String> = (0..32)
        .map(|u| bearer(&token(&format!("u{u}"), &[])))
        .collect();
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let request = http
                .post(&url)
                .header("authorization", &tokens[i % 32])
                .json(&json!({"content": format!("backlog {i}")}));
            async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), 202);
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    println!(
        "accepted {n} inputs while memory was down in {:?} ({:.0}/s)",
        started.elapsed(),
        n as f64 / started.elapsed().as_secs_f64()
    );
    system.start_memory().await;
    let started = Instant::now();
    loop {
        let health: serde_json::Value = http
            .get(system.core.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if health["checks"]["core"]["outbox"]["pending"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the drain stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = started.elapsed();
    let drain_rate = n as f64 / drained.as_secs_f64();

    // The baseline: the same number of keyed stores straight to memory at
    // the drain's concurrency.
    let memory = MemoryServiceClient::new(core_client(
        system.memory_addr,
        system.memory_addr,
        config(),
    ));
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let memory = memory.clone();
            async move {
                memory
                    .store_input_with_key(
                        &format!("d{}", i % 32),
                        json!({"content": "direct"}),
                        &format!("k{i}"),
                    )
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let direct_rate = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "drained {n} inputs in {drained:?}: {drain_rate:.0}/s; keyed store_input straight to memory at concurrency 8: {direct_rate:.0}/s; ratio {:.2}x",
        drain_rate / direct_rate
    );
}
