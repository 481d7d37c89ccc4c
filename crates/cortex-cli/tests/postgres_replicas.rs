//! Three `cortex serve memory` processes on one PostgreSQL schema, listed
//! in a discovery file: 32 writers (the network client, following the
//! file, each store under its own idempotency key) and 10 live streams for
//! 10,000 stores while one replica is SIGKILLed and another restarted. No acknowledged store is lost or
//! stored twice, and every stream receives every item of its user exactly
//! once, in order, resuming on another replica with `Last-Event-ID`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortex_client::discovery::FileDiscovery;
use cortex_client::{McpClient, NetworkMcpClient, StaticToken};
use cortex_proto::sse::Decoder;
use cortex_test_support::pg::PgSchema;
use futures::StreamExt;
use serde_json::{Value, json};

const STORES: usize = 10_000;
const WRITERS: usize = 32;
const USERS: usize = 10;
/// Attempts of one store (each on the next replica) before a writer gives
/// up on it; with a short pause, far longer than a replica restart.
const ATTEMPTS: usize = 400;

fn start(url: &str, port: u16) -> (Child, String) {
    let port = port.to_string();
    common::serve_memory(&["--port", &port], std::path::Path::new(url))
}

/// Stores item `i` (user `i % USERS`, content `item-i`, key `item-i`)
/// through the client (which retries on other replicas with the same key);
/// when the client gives up, again with the same key, until one
/// acknowledges.
async fn store(client: &NetworkMcpClient, i: usize) -> Option<(String, i64)> {
    let arguments = json!({"user_id": format!("u{}", i % USERS),
        "input_data": {"content": format!("item-{i}")}});
    let key = format!("item-{i}");
    for _ in 0..ATTEMPTS {
        if let Ok(answer) = client
            .call_tool_with_key("memory", "store_input", arguments.clone(), &key)
            .await
            && let Some(id) = answer["item_id"].as_i64()
        {
            return Some((key, id));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// Follows `user`'s stream, moving to the next replica (with the last id
/// received) whenever the current one fails, until `done` says to stop
/// and nothing new arrives. Returns `(item_id, content)` as received.
async fn follow(
    http: reqwest::Client,
    replicas: Vec<String>,
    token: String,
    user: String,
    start_at: usize,
    expected: Arc<Mutex<Option<usize>>>,
) -> Vec<(i64, String)> {
    let mut received = Vec::new();
    let mut last: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut replica = start_at;
    while Instant::now() < deadline {
        let want = *expected.lock().unwrap();
        if want.is_some_and(|n| received.len() >= n) {
            break;
        }
        let url = &replicas[replica % replicas.len()];
        replica += 1;
        let mut request = http
            .get(format!("{url}/resource/history/{user}/stream"))
            .header("accept", "text/event-stream")
            .header("authorization", &token);
        if let Some(id) = &last {
            request = request.header("last-event-id", id);
        }
        let Ok(response) = request.send().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if response.status() != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let mut body = response.bytes_stream();
        let mut decoder = Decoder::new();
        // Idle for 3 s: look again whether everything arrived.
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_secs(3), body.next()).await
        {
            for event in decoder.feed(&chunk).unwrap() {
                if event.event.as_deref() != Some("item") {
                    continue;
                }
                let item: Value = serde_json::from_str(&event.data).unwrap();
                received.push((
                    item["item_id"].as_i64().unwrap(),
                    item["content"].as_str().unwrap().to_owned(),
                ));
                last = event.id.clone();
            }
            let want = *expected.lock().unwrap();
            if want.is_some_and(|n| received.len() >= n) {
                return received;
            }
        }
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_one_killed_one_restarted_lose_and_duplicate_nothing() {
    let schema = PgSchema::create("cli_replicas").await;
    let url = schema.schema_url();
    let ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let mut children: Vec<Option<Child>> = Vec::new();
    let mut replicas = Vec::new();
    for port in &ports {
        let (child, address) = start(&url, *port);
        children.push(Some(child));
        replicas.push(address);
    }
    let token = format!("Bearer {}", common::admin_token());
    let http = reqwest::Client::new();

    // Streams first: every item of their user must reach them.
    let expected: Vec<Arc<Mutex<Option<usize>>>> =
        (0..USERS).map(|_| Arc::new(Mutex::new(None))).collect();
    let streams: Vec<_> = (0..USERS)
        .map(|u| {
            tokio::spawn(follow(
                http.clone(),
                replicas.clone(),
                token.clone(),
                format!("u{u}"),
                u,
                expected[u].clone(),
            ))
        })
        .collect();

    // The writers' client follows a discovery file listing the replicas.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("discovery.toml");
    let listed: Vec<String> = replicas.iter().map(|r| format!("{r:?}")).collect();
    std::fs::write(
        &file,
        format!("[services.memory]\nendpoints = [{}]\n", listed.join(", ")),
    )
    .unwrap();
    let discovery = FileDiscovery::open(&file, Duration::from_secs(1))
        .await
        .unwrap();
    let bearer = token.trim_start_matches("Bearer ").to_owned();
    let client = NetworkMcpClient::builder(discovery)
        .token_provider(Arc::new(StaticToken::new(bearer)))
        .build()
        .unwrap();

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = client.clone();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                let mut failed = 0;
                for i in (w..STORES).step_by(WRITERS) {
                    match store(&client, i).await {
                        Some(ack) => {
                            acknowledged.fetch_add(1, Ordering::Relaxed);
                            acks.push(ack);
                        }
                        None => failed += 1,
                    }
                }
                (acks, failed)
            })
        })
        .collect();

    // The chaos, while the writers run: SIGKILL replica 0 at 20%, restart
    // replica 1 (SIGKILL, then a new process on its port) at 50%.
    let wait_for = |n: usize| {
        let acknowledged = acknowledged.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            while acknowledged.load(Ordering::Relaxed) < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for(STORES / 5).await;
    let mut killed = children[0].take().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    wait_for(STORES / 2).await;
    let mut restarted = children[1].take().unwrap();
    restarted.kill().unwrap();
    restarted.wait().unwrap();
    let (child, address) = start(&url, ports[1]);
    assert_eq!(address, replicas[1]);
    children[1] = Some(child);

    let mut acks: HashMap<String, i64> = HashMap::new();
    let mut gave_up = 0;
    for writer in writers {
        let (list, failed) = writer.await.unwrap();
        gave_up += failed;
        for (content, id) in list {
            assert!(acks.insert(content, id).is_none());
        }
    }
    assert_eq!(gave_up, 0, "stores never acknowledged");
    assert_eq!(acks.len(), STORES);

    // The database: every acknowledged store, under its acknowledged id,
    // and nothing twice.
    let rows = schema
        .rows("SELECT item_id, user_id, content FROM items ORDER BY item_id")
        .await;
    let mut by_content: HashMap<String, i64> = HashMap::new();
    let mut per_user: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for row in rows {
        let id: i64 = row[0].as_deref().unwrap().parse().unwrap();
        let user = row[1].clone().unwrap();
        let content = row[2].clone().unwrap();
        assert!(
            by_content.insert(content.clone(), id).is_none(),
            "{content} stored twice"
        );
        per_user.entry(user).or_default().push((id, content));
    }
    let lost: Vec<_> = acks
        .iter()
        .filter(|(content, id)| by_content.get(*content) != Some(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert_eq!(by_content.len(), STORES);

    // Every stream: every item of its user, once, in id order.
    for (u, slot) in expected.iter().enumerate() {
        *slot.lock().unwrap() = Some(per_user[&format!("u{u}")].len());
    }
    for (u, stream) in streams.into_iter().enumerate() {
        let received = stream.await.unwrap();
        let user = format!("u{u}");
        let ids: Vec<i64> = received.iter().map(|(id, _)| *id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{user}: out of order or repeated"
        );
        let unique: HashSet<i64> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "{user}: duplicates");
        assert_eq!(received, per_user[&user], "{user}: missing items");
    }

    for child in children.iter_mut().flatten() {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// `cortex up --database-url … --memory-replicas 3`: three memory
/// processes, listed in the discovery file that `cortex status` reads; all
/// stop with `cortex up`.
#[cfg(target_os = "linux")]
#[test]
fn up_runs_replicas_that_status_lists_and_stops_them() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let schema = runtime.block_on(PgSchema::create("cli_up"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut up = common::cortex()
        .arg("up")
        .arg("--data-dir")
        .arg(&data)
        .args(["--memory-port", &common::free_port().to_string()])
        .args(["--cognition-port", &common::free_port().to_string()])
        .args(["--core-port", &common::free_port().to_string()])
        .args([
            "--database-url",
            &schema.schema_url(),
            "--memory-replicas",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    let stdout = up.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("ready:")) {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("cortex up never got ready; said {seen:?}"),
        }
    }
    let pids: Vec<String> = seen
        .iter()
        .filter_map(|l| l.split("(replica, process ").nth(1))
        .map(|rest| rest.trim_end_matches(')').to_owned())
        .collect();
    assert_eq!(pids.len(), 2, "{seen:?}");

    let discovery = data.join("discovery.toml");
    let spec = format!("file:{}", discovery.display());
    let status = common::cortex()
        .arg("status")
        .env("CORTEX_DISCOVERY", &spec)
        .env("CORTEX_DATA_DIR", &data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    let memory_rows: Vec<&str> = text.lines().filter(|l| l.starts_with("memory")).collect();
    assert_eq!(memory_rows.len(), 3, "{text}");
    assert!(
        memory_rows.iter().all(|row| row.contains("healthy")),
        "{text}"
    );

    let term = std::process::Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while up.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "cortex up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z ")),
            "replica {pid} still runs"
        );
    }
    drop(schema);
}

#[test]
fn replicas_without_a_shared_database_are_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = common::cortex()
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--memory-port",
            "0",
            "--cognition-port",
            "0",
            "--core-port",
            "0",
            "--memory-replicas",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--database-url"), "{stderr}");
}
