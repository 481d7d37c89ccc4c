//! An acknowledged `store_input` survives `kill -9` of the service process.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command};

use serde_json::{Value, json};

/// Starts `cortex serve memory` on a free port and returns it with its URL.
fn start(db: &std::path::Path) -> (Child, String) {
    let (child, url) = common::serve_memory(&["--port", "0"], db);
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "unexpected URL: {url}"
    );
    (child, url)
}

#[tokio::test]
async fn acknowledged_items_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("memory.sqlite3");
    let (mut child, url) = start(&db);
    let http = reqwest::Client::new();
    let authorization = format!("Bearer {}", common::admin_token());
    const N: usize = 200;
    let mut acknowledged = Vec::new();
    for i in 0..N {
        let body = json!({"user_id": "u1", "input_data": {"content": format!("item {i}")}});
        let answer: Value = http
            .post(format!("{url}/tool/store_input"))
            .header("authorization", &authorization)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        acknowledged.push(answer["item_id"].as_i64().unwrap());
    }
    child.kill().unwrap(); // SIGKILL: no shutdown code runs
    child.wait().unwrap();

    let (mut child, url) = start(&db);
    let history: Value = http
        // 200 items: more than the default page of 100.
        .get(format!("{url}/resource/history/u1/limit/1000"))
        .header("authorization", &authorization)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut stored: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["item_id"].as_i64().unwrap())
        .collect();
    stored.sort_unstable();
    assert_eq!(stored, acknowledged);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn an_unknown_database_url_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_cortex"))
        .args(["serve", "memory", "--port", "0"])
        .env("DATABASE_URL", "mysql://localhost/test")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("use `postgres://…`"), "{stderr}");
}

#[test]
fn an_unreachable_postgres_database_is_unavailable_and_named() {
    let port = common::free_port();
    let output = common::cortex()
        .args(["serve", "memory", "--port", "0", "--database-url"])
        .arg(format!(
            "postgres://someone:pw-xyzzy@127.0.0.1:{port}/memory"
        ))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}/memory")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("pw-xyzzy"),
        "the password leaked: {stderr}"
    );
}

#[test]
fn a_taken_port_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cortex"))
        .args(["serve", "memory", "--port", &port, "--db"])
        .arg(dir.path().join("m.sqlite3"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("port {port}")) && stderr.contains("already in use"),
        "{stderr}"
    );
}
