//! Safe retries against a real memory service behind a flaky front.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cortex_client::{McpClient, McpError};
use cortex_service::routes::{ShutdownSignals, router};
use cortex_service::{ServiceConfig, ServiceError};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::watch;

/// Serves the memory service behind a layer that answers 503 to the first
/// `failures` attempts of every call (attempts share an Idempotency-Key),
/// with a `Retry-After` header made by `retry_after` when it is set.
async fn flaky_memory(
    failures: usize,
    retry_after: Option<fn() -> String>,
) -> (
    String,
    tempfile::TempDir,
    Arc<Mutex<HashMap<String, usize>>>,
) {
    let (service, dir) = cortex_test_support::memory_service().await;
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let (_stop_tx, stopping) = watch::channel(false);
    let (_exp_tx, expired) = watch::channel(false);
    let seen_layer = seen.clone();
    let app = router(
        service,
        ServiceConfig::default(),
        ShutdownSignals { stopping, expired },
    )
    .layer(axum::middleware::from_fn(
        move |request: Request, next: Next| {
            let seen = seen_layer.clone();
            async move {
                let key = request
                    .headers()
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                if let Some(key) = key {
                    let attempt = {
                        let mut seen = seen.lock().unwrap();
                        let n = seen.entry(key).or_default();
                        *n += 1;
                        *n
                    };
                    if attempt <= failures {
                        let mut response: Response =
                            ServiceError::unavailable("warming up").into_response();
                        if let Some(value) = retry_after {
                            response
                                .headers_mut()
                                .insert("retry-after", value().parse().unwrap());
                        }
                        return response;
                    }
                }
                next.run(request).await
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _keep = (_stop_tx, _exp_tx);
        axum::serve(listener, app).await
    });
    (url, dir, seen)
}

#[tokio::test]
async fn a_thousand_calls_through_two_503s_each_store_exactly_a_thousand_items() {
    let (url, _dir, seen) = flaky_memory(2, None).await;
    // Two retries per call is far above the default budget (20% of calls),
    // so this test raises the budget: the budget is policy.
    let config = common::fast_config()
        .max_retries(3)
        .failure_threshold(1_000_000)
        .retry_budget_ratio(3.0)
        .build()
        .unwrap();
    let client = common::client_for(&url, config);
    let results: Vec<_> = futures::stream::iter(0..1_000)
        .map(|i| {
            let client = client.clone();
            async move {
                client
                    .call_tool(
                        "memory",
                        "store_input",
                        json!({"user_id": "u1", "input_data": {"content": format!("item {i}")}}),
                    )
                    .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    cortex_test_support::assert_none_failed(&results);
    // 1,000 items: the largest page, where the default one holds 100.
    let history = client
        .read_resource("memory", "history/u1/limit/1000")
        .await
        .unwrap();
    assert_eq!(
        history.content.as_array().unwrap().len(),
        1_000,
        "exactly one item per call"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1_000, "one Idempotency-Key per call");
    assert!(
        seen.values().all(|attempts| *attempts == 3),
        "every attempt of a call carried the same key"
    );
}

#[tokio::test]
async fn the_retry_budget_stops_retries_from_multiplying_load() {
    let (url, _dir, seen) = flaky_memory(usize::MAX, None).await;
    let config = common::fast_config()
        .max_retries(3)
        .failure_threshold(1_000_000)
        .retry_budget_ratio(0.2)
        .retry_budget_min_per_sec(1)
        .build()
        .unwrap();
    let client = common::client_for(&url, config);
    let results: Vec<_> = futures::stream::iter(0..200)
        .map(|_| {
            let client = client.clone();
            async move {
                client
                    .call_tool(
                        "memory",
                        "store_input",
                        json!({"user_id": "u1", "input_data": {"content": "x"}}),
                    )
                    .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(McpError::ServiceCall { status: 503, .. })))
    );
    let attempts: usize = seen.lock().unwrap().values().sum();
    // Without a budget: 200 × 4 = 800 attempts. With it: 200 calls plus at
    // most 20% of them plus the floor (1/s over a 10 s window).
    assert!(
        attempts <= 200 + 40 + 10 + 1,
        "{attempts} attempts reached the service"
    );
    assert!(attempts > 200, "some retries were still allowed");
}

/// How long one `store_input` through `url` takes, retries included (it
/// must succeed).
async fn time_one_store(url: &str) -> Duration {
    let config = common::fast_config()
        .max_retries(2)
        .failure_threshold(1_000_000)
        .build()
        .unwrap();
    let client = common::client_for(url, config);
    let started = std::time::Instant::now();
    client
        .call_tool(
            "memory",
            "store_input",
            json!({"user_id": "u1", "input_data": {"content": "x"}}),
        )
        .await
        .unwrap();
    started.elapsed()
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (url, _dir, _) = flaky_memory(1, Some(|| "1".into())).await;
    let elapsed = time_one_store(&url).await;
    assert!(
        elapsed >= Duration::from_millis(950),
        "waited only {elapsed:?}, Retry-After said 1 s"
    );
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

/// The other form of `Retry-After`: an HTTP date, here 3 s ahead when the
/// 503 is sent (dates have whole seconds, so the wait is between 2 and 3 s).
#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    let in_three_seconds =
        || httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
    let (url, _dir, seen) = flaky_memory(1, Some(in_three_seconds)).await;
    let elapsed = time_one_store(&url).await;
    assert!(
        elapsed >= Duration::from_millis(1_900),
        "waited only {elapsed:?}, Retry-After named a date 3 s ahead"
    );
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
    let attempts: Vec<usize> = seen.lock().unwrap().values().copied().collect();
    assert_eq!(attempts, vec![2], "one refused attempt, one that stored");
}

#[tokio::test]
async fn retry_after_longer_than_the_deadline_gives_up_at_once() {
    let (url, _dir, _) = flaky_memory(1, Some(|| "120".into())).await;
    let config = common::fast_config()
        .max_retries(2)
        .request_timeout(Duration::from_secs(2))
        .retry_after_cap(Duration::from_secs(300))
        .failure_threshold(1_000_000)
        .build()
        .unwrap();
    let client = common::client_for(&url, config);
    let started = std::time::Instant::now();
    let err = client
        .call_tool(
            "memory",
            "store_input",
            json!({"user_id": "u1", "input_data": {"content": "x"}}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            McpError::ServiceCall {
                status: 503,
                attempts: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "did not sleep past its deadline"
    );
}
