//! Core, memory and cognition as separate `cortex serve` processes, killed
//! with SIGKILL: every input core accepted (2xx) reaches memory exactly
//! once, in order per user, and each user's output stream tells each step
//! once, to that user alone.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cortex_test_support::SseReader;
use cortex_test_support::auth::{SECRET, bearer, token};
use serde_json::{Value, json};

/// A `cortex serve` process, killed (SIGKILL) when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(service: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let mut command = common::cortex();
        command
            .args(["serve", service])
            .args(args)
            .env("JWT_SECRET_KEY", SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let url = common::ready_url(&mut child);
        Self { child, url }
    }

    fn port(&self) -> String {
        self.url.rsplit(':').next().unwrap().to_string()
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn memory(db: &Path, port: &str) -> Served {
    Served::start(
        "memory",
        &["--port", port, "--db", db.to_str().unwrap()],
        &[],
    )
}

fn core(data: &Path, memory_url: &str, cognition_url: &str) -> Served {
    Served::start(
        "core",
        &["--port", "0", "--data-dir", data.to_str().unwrap()],
        &[
            ("MEMORY_SERVICE_URL", memory_url.to_string()),
            ("COGNITION_SERVICE_URL", cognition_url.to_string()),
        ],
    )
}

async fn post_input(http: &reqwest::Client, core: &str, user: &str, content: &str) -> (u16, Value) {
    let response = http
        .post(format!("{core}/input"))
        .header("authorization", bearer(&token(user, &[])))
        .json(&json!({"content": content}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn pending(http: &reqwest::Client, core: &str) -> u64 {
    let health: Value = http
        .get(format!("{core}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    health["checks"]["core"]["outbox"]["pending"]
        .as_u64()
        .unwrap_or_else(|| panic!("no outbox depth in {health}"))
}

async fn wait_drained(http: &reqwest::Client, core: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = pending(http, core).await;
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} inputs still pending after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `user`'s items in memory, oldest first, by content.
async fn contents(http: &reqwest::Client, memory: &str, user: &str) -> Vec<String> {
    let items: Value = http
        .get(format!("{memory}/resource/history/{user}/limit/1000"))
        .header("authorization", bearer(&token("tests", &["admin"])))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut contents: Vec<String> = items
        .as_array()
        .unwrap_or_else(|| panic!("{items}"))
        .iter()
        .map(|i| i["content"].as_str().unwrap().to_string())
        .collect();
    contents.reverse();
    contents
}

/// `user`'s log events of `kind`, in order, by input id, read from the
/// start of their output stream until `n` `stored` events came.
async fn log_of(
    http: &reqwest::Client,
    core: &str,
    user: &str,
    n: usize,
) -> (Vec<String>, Vec<String>) {
    let response = http
        .get(format!("{core}/output/stream"))
        .header("authorization", bearer(&token(user, &[])))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    let (mut pending, mut stored) = (Vec::new(), Vec::new());
    let mut last = 0i64;
    while stored.len() < n {
        let event = reader
            .next(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{user}: only {} stored events", stored.len()));
        let Some(id) = event.id.clone() else { continue };
        let id: i64 = id.parse().unwrap();
        assert_eq!(id, last + 1, "{user}: event ids are dense and in order");
        last = id;
        let data: Value = event.json().unwrap();
        let input = data["input_id"].as_str().unwrap_or_default().to_string();
        match event.event_type() {
            "pending" => pending.push(input),
            "stored" => stored.push(input),
            "context" => {}
            other => panic!("{user}: unexpected {other} event: {data}"),
        }
    }
    (pending, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_memory_killed_every_accepted_input_is_stored_once_in_order() {
    const USERS: usize = 16;
    const EACH: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("memory").join("memory.sqlite3");
    let first = memory(&db, "0");
    let memory_port = first.port();
    let memory_url = first.url.clone();
    let cognition = Served::start(
        "cognition",
        &["--port", "0"],
        &[("MEMORY_SERVICE_URL", memory_url.clone())],
    );
    let core = core(&dir.path().join("core"), &memory_url, &cognition.url);
    first.kill(); // SIGKILL

    let http = reqwest::Client::new();
    let writers = (0..USERS).map(|u| {
        let http = http.clone();
        let core = core.url.clone();
        tokio::spawn(async move {
            let user = format!("user{u}");
            let mut ids = Vec::new();
            for n in 0..EACH {
                let (status, body) = post_input(&http, &core, &user, &format!("{user} n{n}")).await;
                assert!(
                    status == 200 || status == 202,
                    "{user} n{n}: {status} {body}"
                );
                ids.push(body["input_id"].as_str().unwrap().to_string());
            }
            (user, ids)
        })
    });
    let accepted: Vec<(String, Vec<String>)> = futures::future::join_all(writers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let memory = memory(&db, &memory_port);
    wait_drained(&http, &core.url, Duration::from_secs(120)).await;
    let mut everyone = HashSet::new();
    for (user, ids) in &accepted {
        let expected: Vec<String> = (0..EACH).map(|n| format!("{user} n{n}")).collect();
        assert_eq!(contents(&http, &memory.url, user).await, expected, "{user}");
        let (pending, stored) = log_of(&http, &core.url, user, EACH).await;
        assert_eq!(pending, *ids, "{user}: each input pending once, in order");
        assert_eq!(stored, *ids, "{user}: each input stored once, in order");
        everyone.extend(ids.iter().cloned());
    }
    assert_eq!(everyone.len(), USERS * EACH, "input ids are never shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_killed_while_draining_loses_and_repeats_nothing() {
    const USERS: usize = 4;
    const EACH: usize = 250;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("memory").join("memory.sqlite3");
    let memory_port = common::free_port().to_string();
    let memory_url = format!("http://127.0.0.1:{memory_port}");
    let cognition = Served::start(
        "cognition",
        &["--port", "0"],
        &[("MEMORY_SERVICE_URL", memory_url.clone())],
    );
    let core_dir = dir.path().join("core");
    let first = core(&core_dir, &memory_url, &cognition.url);

    // Memory is down: every input waits in the outbox.
    let http = reqwest::Client::new();
    let writers = (0..USERS).map(|u| {
        let http = http.clone();
        let core = first.url.clone();
        tokio::spawn(async move {
            let user = format!("user{u}");
            for n in 0..EACH {
                let (status, body) = post_input(&http, &core, &user, &format!("{user} n{n}")).await;
                assert_eq!(status, 202, "{user} n{n}: {body}");
            }
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.unwrap();
    }
    assert_eq!(pending(&http, &first.url).await, (USERS * EACH) as u64);

    // Memory comes back; core is killed in the middle of the drain.
    let memory = self::memory(&db, &memory_port);
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let left = pending(&http, &first.url).await;
        if left < (USERS * EACH) as u64 - 50 {
            break left;
        }
        assert!(Instant::now() < deadline, "the drain never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    first.kill();
    assert!(
        at_kill > 0,
        "the drain finished before core could be killed in it"
    );

    let second = core(&core_dir, &memory_url, &cognition.url);
    wait_drained(&http, &second.url, Duration::from_secs(120)).await;
    for u in 0..USERS {
        let user = format!("user{u}");
        let expected: Vec<String> = (0..EACH).map(|n| format!("{user} n{n}")).collect();
        assert_eq!(
            contents(&http, &memory.url, &user).await,
            expected,
            "{user}: each input once, in order (killed with {at_kill} pending)"
        );
        let (pending, stored) = log_of(&http, &second.url, &user, EACH).await;
        assert_eq!(pending.len(), EACH);
        assert_eq!(stored, pending, "{user}: one `stored` per input, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cortex_input_and_output_through_core() {
    let dir = tempfile::tempdir().unwrap();
    let memory = memory(&dir.path().join("memory.sqlite3"), "0");
    let cognition = Served::start(
        "cognition",
        &["--port", "0"],
        &[("MEMORY_SERVICE_URL", memory.url.clone())],
    );
    let core = core(&dir.path().join("core"), &memory.url, &cognition.url);
    let secret = dir.path().join("secret");
    let run = |args: &[&str]| {
        let output = common::cortex()
            .arg("--service")
            .arg(format!("core={}", core.url))
            .args(["--user", "alice"])
            .args(args)
            .env("JWT_SECRET_KEY", SECRET)
            .env("CORTEX_DATA_DIR", &secret)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (code, stdout, stderr) = run(&["input", "remember the milk", "--conversation", "shop"]);
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(stdout.starts_with("stored: input "), "{stdout}");
    let (code, stdout, stderr) = run(&["--json", "output", "--count", "2"]);
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| e["id"].is_string())
        .collect();
    assert_eq!(events[0]["event"], "input", "{stdout}");
    assert_eq!(events[0]["data"]["item"]["content"], "remember the milk");
    assert_eq!(events[1]["event"], "context", "{stdout}");
}
