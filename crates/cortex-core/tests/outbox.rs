//! The outbox keeps what it accepted across a restart, in order per user,
//! within its bound; the drain stores each waiting input in a real memory
//! service exactly once, also when memory had already stored it (a lost
//! acknowledgement), and waits while memory is down.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cortex_client::{ClientConfig, MemoryServiceClient, NetworkMcpClient, StaticDiscovery};
use cortex_core::{Drainer, Input, InputState, Outbox, OutboxError};
use cortex_service::ServiceConfig;
use cortex_test_support::TestServer;
use serde_json::json;

/// A memory service on `listener` over the SQLite file in `dir`.
async fn memory_on(listener: tokio::net::TcpListener, dir: &Path) -> TestServer {
    let store = cortex_memory::store::Store::open(dir.join("memory.sqlite3"))
        .await
        .unwrap();
    let service = cortex_memory::service::build(store).unwrap();
    TestServer::start_on(listener, service, ServiceConfig::default())
}

fn memory_client(url: &str) -> MemoryServiceClient {
    let discovery = Arc::new(StaticDiscovery::new().with("memory", url));
    let config = ClientConfig::builder()
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(20))
        .max_retries(1)
        .connect_timeout(Duration::from_millis(300))
        .request_timeout(Duration::from_secs(5))
        .reset_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let client = NetworkMcpClient::builder(discovery)
        .config(config)
        .build()
        .unwrap();
    MemoryServiceClient::new(Arc::new(client))
}

#[tokio::test]
async fn what_was_accepted_survives_a_reopen_in_order_and_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core").join("outbox.sqlite3");
    let inputs: Vec<Input> = (0..6)
        .map(|i| Input::new(["ann", "bob"][i % 2], json!({"content": format!("n{i}")})))
        .collect();
    {
        let outbox = Outbox::open(&path, 100).unwrap();
        for input in &inputs {
            let event = outbox.enqueue(input).await.unwrap().unwrap();
            assert_eq!(event.kind, "pending");
        }
        // The same input again (a retried request): nothing new.
        assert_eq!(outbox.enqueue(&inputs[0]).await.unwrap(), None);
    }
    let outbox = Outbox::open(&path, 100).unwrap();
    assert_eq!(outbox.depth().await.unwrap().0, 6);
    assert_eq!(outbox.pending_users().await.unwrap(), ["ann", "bob"]);
    let first = outbox.next_pending("ann").await.unwrap().unwrap();
    assert_eq!(first.input_id, inputs[0].input_id);
    assert_eq!(first.data, json!({"content": "n0"}));
    // Each user's log counts from 1, densely.
    let ids: Vec<i64> = outbox
        .events_after("bob", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(outbox.events_after("bob", 2, 100).await.unwrap().len(), 1);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "the outbox holds users' inputs");
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }
}

#[tokio::test]
async fn a_full_outbox_refuses_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path().join("outbox.sqlite3"), 2).unwrap();
    for i in 0..2 {
        outbox
            .enqueue(&Input::new("ann", json!({"content": i})))
            .await
            .unwrap();
    }
    let refused = outbox
        .enqueue(&Input::new("ann", json!({"content": "third"})))
        .await;
    assert!(
        matches!(refused, Err(OutboxError::Full { pending: 2 })),
        "{refused:?}"
    );
    assert_eq!(outbox.depth().await.unwrap().0, 2);
    assert_eq!(outbox.events_after("ann", 0, 100).await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_drain_stores_each_input_once_even_when_memory_already_had_it() {
    let memory_dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let memory = memory_on(listener, memory_dir.path()).await;
    let client = memory_client(&memory.url(""));

    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path().join("outbox.sqlite3"), 1000).unwrap();
    let users = ["ann", "bob", "cy", "dee"];
    let mut inputs = Vec::new();
    for n in 0..10 {
        for user in users {
            let input = Input::new(user, json!({"content": format!("{user} {n}")}));
            outbox.enqueue(&input).await.unwrap();
            inputs.push(input);
        }
    }
    // Memory stored bob's first input, but its answer never reached core
    // (core died while the drain was sending it).
    let lost = &inputs[1];
    let first = client
        .store_input_with_key(&lost.user_id, lost.data.clone(), &lost.input_id)
        .await
        .unwrap();

    let drainer = Drainer::new(outbox.clone(), client.clone());
    let pass = drainer.drain_once().await.unwrap();
    assert_eq!((pass.stored, pass.failed, pass.blocked), (40, 0, 0));
    assert_eq!(outbox.depth().await.unwrap().0, 0);
    let stored = outbox.input(&lost.input_id).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.item_id),
        (InputState::Stored, Some(first.item_id))
    );
    // Exactly ten per user in memory, in the order they were accepted.
    for user in users {
        let history = client.get_history(user).await.unwrap();
        let contents: Vec<String> = history
            .iter()
            .rev() // newest first
            .map(|item| item["content"].as_str().unwrap().to_string())
            .collect();
        let expected: Vec<String> = (0..10).map(|n| format!("{user} {n}")).collect();
        assert_eq!(contents, expected, "{user}");
        // The user's log: ten `pending` then ten `stored`, each once.
        let kinds: Vec<String> = outbox
            .events_after(user, 0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds.iter().filter(|k| *k == "pending").count(), 10);
        assert_eq!(kinds.iter().filter(|k| *k == "stored").count(), 10);
    }
    // Another pass finds nothing to do and stores nothing.
    assert_eq!(drainer.drain_once().await.unwrap().stored, 0);
    memory.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn inputs_wait_while_memory_is_down_and_are_stored_once_it_is_back() {
    let memory_dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener); // memory is down
    let client = memory_client(&format!("http://{addr}"));

    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path().join("outbox.sqlite3"), 1000).unwrap();
    for n in 0..5 {
        outbox
            .enqueue(&Input::new("ann", json!({"content": format!("n{n}")})))
            .await
            .unwrap();
    }
    let drainer = Drainer::new(outbox.clone(), client.clone());
    let pass = drainer.drain_once().await.unwrap();
    assert_eq!((pass.stored, pass.blocked), (0, 1), "{pass:?}");
    assert_eq!(outbox.depth().await.unwrap().0, 5, "nothing is dropped");

    // The drain runs on its own; memory comes back on the same address.
    let mut live = outbox.subscribe();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(drainer.clone().run(async {
        let _ = stop_rx.await;
    }));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let memory = memory_on(listener, memory_dir.path()).await;
    let mut stored = 0;
    while stored < 5 {
        let event = tokio::time::timeout(Duration::from_secs(10), live.recv())
            .await
            .expect("every input is stored within the drain's backoff")
            .unwrap();
        if event.kind == "stored" {
            stored += 1;
        }
    }
    stop_tx.send(()).unwrap();
    running.await.unwrap();
    assert_eq!(outbox.depth().await.unwrap().0, 0);
    assert_eq!(client.get_history("ann").await.unwrap().len(), 5);
    memory.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_input_memory_refuses_for_good_is_marked_failed_and_does_not_block() {
    let memory_dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let memory = memory_on(listener, memory_dir.path()).await;
    let client = memory_client(&memory.url(""));
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path().join("outbox.sqlite3"), 1000).unwrap();
    // Not an object: memory's schema refuses it.
    let bad = Input::new("ann", json!("not an object"));
    outbox.enqueue(&bad).await.unwrap();
    outbox
        .enqueue(&Input::new("ann", json!({"content": "fine"})))
        .await
        .unwrap();
    let pass = Drainer::new(outbox.clone(), client.clone())
        .drain_once()
        .await
        .unwrap();
    assert_eq!(
        (pass.stored, pass.failed, pass.blocked),
        (1, 1, 0),
        "{pass:?}"
    );
    assert_eq!(
        outbox.input(&bad.input_id).await.unwrap().unwrap().state,
        InputState::Failed
    );
    let events = outbox.events_after("ann", 0, 100).await.unwrap();
    assert!(events.iter().any(|e| e.kind == "failed"), "{events:?}");
    memory.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_outbox_that_cannot_be_opened_names_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the outbox's directory should be.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let refused = Outbox::open(blocker.join("outbox.sqlite3"), 10);
    assert!(
        matches!(&refused, Err(OutboxError::Directory { path, .. }) if *path == blocker),
        "{refused:?}"
    );
    // A directory where the database file should be.
    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    let refused = Outbox::open(&taken, 10);
    assert!(
        matches!(&refused, Err(OutboxError::Database { path, .. }) if *path == taken),
        "{refused:?}"
    );
}
