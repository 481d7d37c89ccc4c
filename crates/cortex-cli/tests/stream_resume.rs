//! A history stream survives three SIGKILLs of the memory service: the
//! consumer receives every stored item exactly once, in order.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cortex_client::{ClientConfig, McpClient, NetworkMcpClient, StaticDiscovery, StaticToken};
use futures::StreamExt;
use serde_json::json;

fn start(db: &std::path::Path, port: u16) -> (Child, u16) {
    let (child, url) = common::serve_memory(&["--port", &port.to_string()], db);
    let port = url
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("URL: {url:?}"));
    (child, port)
}

fn client(port: u16) -> NetworkMcpClient {
    let discovery =
        Arc::new(StaticDiscovery::new().with("memory", format!("http://127.0.0.1:{port}")));
    let config = ClientConfig::builder()
        .initial_backoff(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(200))
        .max_retries(5)
        .failure_threshold(1_000)
        .request_timeout(Duration::from_secs(5))
        .stream_idle_timeout(Duration::from_secs(5))
        .stream_max_backoff(Duration::from_secs(2))
        .build()
        .unwrap();
    NetworkMcpClient::builder(discovery)
        .config(config)
        .token_provider(Arc::new(StaticToken::new(common::admin_token())))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_survives_three_kills_with_every_item_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("memory.sqlite3");
    let (mut service, port) = start(&db, 0);
    let reader = client(port);
    let writer = client(port);

    let mut stream = reader
        .stream_resource("memory", "history/u1/stream")
        .await
        .unwrap();
    let received: Arc<Mutex<Vec<i64>>> = Arc::default();
    let consumer = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                let event = event.unwrap_or_else(|e| panic!("stream gave up: {e}"));
                received
                    .lock()
                    .unwrap()
                    .push(event.id.unwrap().parse().unwrap());
            }
        })
    };

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<i64>>> = Arc::default();
    let producer = {
        let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let args = json!({"user_id": "u1", "input_data": {"content": format!("item {i}")}});
                if let Ok(answer) = writer.call_tool("memory", "store_input", args).await {
                    acknowledged
                        .lock()
                        .unwrap()
                        .push(answer["item_id"].as_i64().unwrap());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        service.kill().unwrap(); // SIGKILL
        service.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        service = start(&db, port).0;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    producer.await.unwrap();

    let verifier = client(port);
    // History is read a page at a time: follow the pages to the empty one.
    let mut stored: Vec<i64> = Vec::new();
    let mut uri = "history/u1/limit/1000".to_string();
    for _ in 0..1000 {
        let page = verifier.read_resource("memory", &uri).await.unwrap();
        let ids: Vec<i64> = page
            .content
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["item_id"].as_i64().unwrap())
            .collect();
        let Some(oldest) = ids.last() else { break };
        uri = format!("history/u1/before/{oldest}/limit/1000");
        stored.extend(ids);
    }
    stored.sort_unstable();
    let last = *stored.last().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while received.lock().unwrap().last().copied() != Some(last)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = received.lock().unwrap().clone();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 50,
        "the producer kept storing: {}",
        acknowledged.len()
    );
    assert!(
        acknowledged
            .iter()
            .all(|id| stored.binary_search(id).is_ok()),
        "every acknowledged item is stored"
    );
    assert_eq!(received, stored, "every stored item exactly once, in order");
    consumer.abort();
    service.kill().unwrap();
    service.wait().unwrap();
}
