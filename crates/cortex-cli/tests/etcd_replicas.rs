//! Three memory replicas register themselves in a real etcd
//! (`cortex serve memory --register etcd://…`); a client discovers them
//! through etcd. One replica is SIGKILLed during 5,000 calls at concurrency
//! 32: no call fails, it leaves discovery when its lease expires, and when
//! it is started again it registers and takes traffic.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cortex_client::{ClientConfig, McpClient, NetworkMcpClient};
use cortex_discovery::{EtcdDiscovery, HealthChecked, HealthConfig, ServiceDiscovery};
use cortex_test_support::etcd::Etcd;
use futures::StreamExt;
use serde_json::json;

/// A `cortex serve memory` replica on `ip`, registered in etcd.
struct Replica {
    child: Child,
    url: String,
}

impl Replica {
    fn start(ip: &str, etcd: &Etcd, db: &std::path::Path) -> Self {
        let register = format!(
            "etcd://{}/cortex-test",
            etcd.url().trim_start_matches("http://")
        );
        let (child, url) = common::serve_memory(
            &[
                "--host",
                ip,
                "--port",
                "0",
                "--register",
                &register,
                "--register-ttl",
                "2",
            ],
            db,
        );
        assert!(url.starts_with(&format!("http://{ip}:")), "URL: {url:?}");
        Self { child, url }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn urls(discovery: &dyn ServiceDiscovery) -> Vec<String> {
    discovery
        .resolve("memory")
        .await
        .map(|set| set.endpoints.iter().map(|e| e.url.clone()).collect())
        .unwrap_or_default()
}

async fn wait_for(
    discovery: &dyn ServiceDiscovery,
    what: &str,
    limit: Duration,
    check: impl Fn(&[String]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let now = urls(discovery).await;
        if check(&now) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {limit:?}; discovery has {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_registered_replicas_one_dies_no_call_fails() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut replicas: Vec<Replica> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .enumerate()
        .map(|(i, ip)| Replica::start(ip, &etcd, &dir.path().join(format!("r{i}.sqlite3"))))
        .collect();

    let mut config = etcd.config();
    config.prefix = "/cortex-test/".into();
    let etcd_discovery = EtcdDiscovery::connect(config).await.unwrap();
    let health = HealthConfig {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(300),
        ejection_failures: 3,
        base_ejection: Duration::from_secs(1),
        ..HealthConfig::default()
    };
    let discovery = Arc::new(HealthChecked::new(etcd_discovery.clone(), health));
    let expected: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    wait_for(
        etcd_discovery.as_ref(),
        "all three registered",
        Duration::from_secs(5),
        |now| expected.iter().all(|u| now.contains(u)),
    )
    .await;

    let client_config = ClientConfig::builder()
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(100))
        .max_retries(4)
        .failure_threshold(5)
        .reset_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let token = Arc::new(cortex_client::StaticToken::new(common::admin_token()));
    let client = NetworkMcpClient::builder(discovery.clone())
        .config(client_config)
        .token_provider(token.clone())
        .build()
        .unwrap();

    let done = Arc::new(AtomicUsize::new(0));
    let calls = futures::stream::iter(0..5_000)
        .map(|i| {
            let (client, done) = (client.clone(), done.clone());
            async move {
                let result = client
                    .call_tool(
                        "memory",
                        "store_input",
                        json!({"user_id": "u1", "input_data": {"content": format!("c{i}")}}),
                    )
                    .await;
                done.fetch_add(1, Ordering::SeqCst);
                result
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>();
    let dead_url = replicas[1].url.clone();
    let kill = async {
        while done.load(Ordering::SeqCst) < 1_000 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        replicas[1].kill(); // SIGKILL: its lease is not revoked, it expires
    };
    let (results, ()) = tokio::join!(calls, kill);
    cortex_test_support::assert_none_failed(&results);

    // The dead replica leaves discovery within its lease TTL (2 s) + 1 s.
    wait_for(
        etcd_discovery.as_ref(),
        "the dead replica's lease expired",
        Duration::from_secs(3),
        |now| !now.contains(&dead_url),
    )
    .await;

    // Started again, it registers and takes traffic.
    let reborn = Replica::start("127.0.0.2", &etcd, &dir.path().join("r1.sqlite3"));
    let reborn_url = reborn.url.clone();
    replicas[1] = reborn;
    wait_for(
        etcd_discovery.as_ref(),
        "the restarted replica registered",
        Duration::from_secs(2),
        |now| now.contains(&reborn_url),
    )
    .await;
    let mut served_by_reborn = 0;
    for i in 0..200 {
        client
            .call_tool(
                "memory",
                "store_input",
                json!({"user_id": "after", "input_data": {"content": format!("a{i}")}}),
            )
            .await
            .unwrap();
    }
    let direct = NetworkMcpClient::builder(Arc::new(
        cortex_client::StaticDiscovery::new().with("memory", reborn_url.as_str()),
    ))
    .token_provider(token)
    .build()
    .unwrap();
    if let Ok(history) = direct.read_resource("memory", "history/after").await {
        served_by_reborn = history.content.as_array().map_or(0, Vec::len);
    }
    assert!(
        served_by_reborn > 0,
        "the restarted replica takes traffic again"
    );
}
