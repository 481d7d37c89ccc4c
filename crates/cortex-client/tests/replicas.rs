//! Three replicas behind discovery; one dies during 5,000 calls and comes
//! back: no call fails, the dead one is ejected, the restarted one takes
//! traffic again.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cortex_client::{McpClient, NetworkMcpClient};
use cortex_discovery::{FileDiscovery, HealthChecked, HealthConfig, ServiceDiscovery};
use cortex_service::{Service, ServiceConfig, Tool};
use cortex_test_support::TestServer;
use cortex_test_support::proxy::{Mode, TcpProxy};
use futures::StreamExt;
use serde_json::json;

/// A stateless replica that counts the calls it served.
fn replica(name: &'static str, served: Arc<AtomicUsize>) -> Service {
    Service::builder("echo", "0")
        .tool(Tool::new(
            "whoami",
            "Names the replica.",
            json!({"type": "object"}),
            move |_, _| {
                served.fetch_add(1, Ordering::SeqCst);
                async move { Ok(json!(name)) }
            },
        ))
        .build()
        .unwrap()
}

struct Replica {
    _server: TestServer,
    proxy: TcpProxy,
    served: Arc<AtomicUsize>,
}

async fn replicas() -> Vec<Replica> {
    let mut out = Vec::new();
    for (i, name) in ["one", "two", "three"].into_iter().enumerate() {
        let served = Arc::new(AtomicUsize::new(0));
        let server =
            TestServer::start(replica(name, served.clone()), ServiceConfig::default()).await;
        // Each replica has an address of its own: 127.0.0.1, .2, .3.
        let proxy = TcpProxy::start_on(&format!("127.0.0.{}", i + 1), server.addr).await;
        out.push(Replica {
            _server: server,
            proxy,
            served,
        });
    }
    out
}

fn health() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(200),
        healthy_threshold: 1,
        unhealthy_threshold: 2,
        ejection_failures: 3,
        base_ejection: Duration::from_millis(500),
        max_ejection: Duration::from_secs(2),
    }
}

async fn run_story(discovery: Arc<HealthChecked<Arc<FileDiscovery>>>, replicas: &[Replica]) {
    let config = common::fast_config()
        .max_retries(3)
        .failure_threshold(5)
        .reset_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let client = NetworkMcpClient::builder(discovery.clone())
        .config(config)
        .build()
        .unwrap();
    discovery
        .wait_for_services(&["echo"], Duration::from_secs(5))
        .await
        .unwrap();

    let done = Arc::new(AtomicUsize::new(0));
    let calls = futures::stream::iter(0..5_000)
        .map(|_| {
            let (client, done) = (client.clone(), done.clone());
            async move {
                let result = client.call_tool("echo", "whoami", json!({})).await;
                done.fetch_add(1, Ordering::SeqCst);
                result
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>();
    let dead = &replicas[1];
    let story = async {
        while done.load(Ordering::SeqCst) < 1_000 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Kill replica two: open connections cut, new ones refused.
        dead.proxy.set_mode(Mode::Refuse);
        dead.proxy.cut_all();
        let served_at_death = dead.served.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ejected = !discovery.is_endpoint_usable("echo", &dead.proxy.url(""));
        while done.load(Ordering::SeqCst) < 3_000 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Bring it back.
        dead.proxy.set_mode(Mode::Forward);
        let served_at_rebirth = dead.served.load(Ordering::SeqCst);
        (served_at_death, ejected, served_at_rebirth)
    };
    let (results, (served_at_death, ejected, served_at_rebirth)) = tokio::join!(calls, story);
    cortex_test_support::assert_none_failed(&results);
    assert!(ejected, "the dead replica was ejected");
    assert!(served_at_death > 0, "replica two served before it died");
    assert!(
        served_at_rebirth - served_at_death < 50,
        "hardly any call reached it while dead"
    );
    // Keep calling until the restarted replica takes traffic (bounded).
    let mut rejoined = false;
    for _ in 0..200 {
        client.call_tool("echo", "whoami", json!({})).await.unwrap();
        if dead.served.load(Ordering::SeqCst) > served_at_rebirth {
            rejoined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rejoined, "the restarted replica takes traffic again");
    for r in replicas {
        assert!(
            r.served.load(Ordering::SeqCst) > 100,
            "traffic spread over replicas"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_backend_three_replicas_one_dies_no_call_fails() {
    let replicas = replicas().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("services.toml");
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| format!("\"{}\"", r.proxy.url("")))
        .collect();
    std::fs::write(
        &path,
        format!("[services.echo]\nendpoints = [{}]\n", urls.join(", ")),
    )
    .unwrap();
    let file = FileDiscovery::open(&path, Duration::from_millis(100))
        .await
        .unwrap();
    let discovery = Arc::new(HealthChecked::new(file, health()));
    run_story(discovery, &replicas).await;
}

#[tokio::test]
async fn file_reload_moves_traffic_to_a_new_endpoint() {
    let replicas = replicas().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("services.toml");
    std::fs::write(
        &path,
        format!(
            "[services.echo]\nendpoints = [\"{}\"]\n",
            replicas[0].proxy.url("")
        ),
    )
    .unwrap();
    let file = FileDiscovery::open(&path, Duration::from_millis(50))
        .await
        .unwrap();
    let client = NetworkMcpClient::builder(file.clone())
        .config(common::fast_config().build().unwrap())
        .build()
        .unwrap();
    assert_eq!(
        client.call_tool("echo", "whoami", json!({})).await.unwrap(),
        json!("one")
    );
    // The service moves: the file now names replica three only.
    std::fs::write(
        &path,
        format!(
            "[services.echo]\nendpoints = [\"{}\"]\n",
            replicas[2].proxy.url("")
        ),
    )
    .unwrap();
    let mut moved = false;
    for _ in 0..100 {
        if client.call_tool("echo", "whoami", json!({})).await.unwrap() == json!("three") {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(moved, "the client followed the file");
    // A broken file keeps the last good set.
    std::fs::write(&path, "[services.echo\nendpoints = ").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        client.call_tool("echo", "whoami", json!({})).await.unwrap(),
        json!("three")
    );
    assert_eq!(file.resolve("echo").await.unwrap().endpoints.len(), 1);
}

#[tokio::test]
async fn discovery_errors_are_clear() {
    let missing = FileDiscovery::open("/nonexistent/services.toml", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/services.toml"),
        "{missing}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[services.echo]\nendpoints = [\"ftp://x\"]\n").unwrap();
    let bad = FileDiscovery::open(&path, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("services.echo"), "{bad}");
    std::fs::write(&path, "[services.echo]\nendpoints = []\n").unwrap();
    let empty = FileDiscovery::open(&path, Duration::from_secs(1))
        .await
        .unwrap();
    let client = NetworkMcpClient::builder(empty)
        .config(common::fast_config().max_retries(0).build().unwrap())
        .build()
        .unwrap();
    let err = client
        .call_tool("echo", "whoami", json!({}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no endpoint"), "{err}");
    let err = client
        .call_tool("other", "whoami", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, cortex_client::McpError::ServiceNotFound { .. }),
        "{err}"
    );
}
