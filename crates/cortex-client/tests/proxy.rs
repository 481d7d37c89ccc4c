//! HTTP proxies, through a real tinyproxy (Debian's package) on loopback.
//!
//! Each test that needs one starts its own tinyproxy on a free port, in the
//! foreground, with a config file in a temporary directory, and kills it on
//! drop; its log shows which requests went through it. Without tinyproxy
//! installed those tests print that they were skipped and pass, unless the
//! `CI` variable is set: there they fail, so that a CI run cannot skip them
//! unnoticed. The tests of a dead or silent proxy need no tinyproxy.
//!
//! Proxy settings are passed through the builder, or through `with_env`
//! with the variables given as a list: no test changes the process
//! environment, which the tests of a binary share.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cortex_client::proxy::{NoProxy, Proxy, ProxyError};
use cortex_client::{
    Balancer, ClientConfig, ConfigError, Endpoint, McpClient, McpError, NetworkMcpClient,
    StaticDiscovery,
};
use cortex_resilience::breaker::BreakerState;
use cortex_service::ServiceConfig;
use cortex_test_support::start_memory;
use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

/// Upper bound of anything a test waits for: a hang fails, it does not stall.
const LIMIT: Duration = Duration::from_secs(20);

/// A tinyproxy child process on `127.0.0.1`, killed on drop.
struct Tinyproxy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Starts one with `extra` lines of configuration, and waits until it
    /// accepts connections. `None` (after saying so) when tinyproxy is not
    /// installed and `CI` is not set.
    async fn start(extra: &str) -> Option<Self> {
        let binary = tinyproxy_binary()?;
        let mut failures = Vec::new();
        // The free port may be taken between finding it and tinyproxy
        // binding it: a few tries with a new port each.
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = common::dead_port();
            let config = dir.path().join("tinyproxy.conf");
            let log = dir.path().join("tinyproxy.log");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     Listen 127.0.0.1\n\
                     Timeout 60\n\
                     MaxClients 100\n\
                     LogLevel Info\n\
                     LogFile \"{}\"\n\
                     DisableViaHeader Yes\n\
                     {extra}\n",
                    log.display()
                ),
            )
            .unwrap();
            let output = std::fs::File::create(dir.path().join("output")).unwrap();
            let child = Command::new(&binary)
                .arg("-d")
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(output.try_clone().unwrap())
                .stderr(output)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            let mut proxy = Self { child, port, dir };
            match proxy.wait_until_ready().await {
                Ok(()) => return Some(proxy),
                Err(why) => failures.push(why),
            }
        }
        panic!("tinyproxy did not start: {failures:?}");
    }

    /// Bounded: tinyproxy says in its log that it accepts connections, and
    /// a connection to its port succeeds, within 5 s; or it exited.
    async fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("exited with {status}: {}", self.output()));
            }
            if self.log().contains("Accepting connections")
                && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("not ready within 5 s: {}", self.output()))
    }

    /// `http://127.0.0.1:PORT`.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://USER:PASSWORD@127.0.0.1:PORT`.
    fn url_with(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output")).unwrap_or_default()
    }

    /// How many requests tinyproxy logged whose request line contains
    /// `text` (`GET http://127.0.0.1:9000/`, `CONNECT 127.0.0.1:9000`).
    fn requests(&self, text: &str) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains("Request (file descriptor") && line.contains(text))
            .count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tinyproxy binary on `PATH`.
/// Missing: a failure under `CI`, else `None` after a message printed past
/// the test harness's capture, so a skip is seen.
fn tinyproxy_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("tinyproxy"))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "tinyproxy is not installed and CI is set: the proxy tests must run in CI \
             (scripts/install-deps.sh installs it; Debian: apt-get install tinyproxy)"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: tinyproxy is not installed (Debian: apt-get install tinyproxy); \
             this proxy test did not run"
        );
    }
    found
}

/// A client whose `memory` service is at `urls` (replicas), with `config`.
fn client(urls: &[&str], config: ClientConfig, balancer: Balancer) -> NetworkMcpClient {
    let discovery = StaticDiscovery::new();
    discovery.register("memory", urls.iter().copied().map(Endpoint::new).collect());
    NetworkMcpClient::builder(Arc::new(discovery))
        .config(config)
        .balancer(balancer)
        .build()
        .unwrap()
}

fn proxy(url: &str) -> Proxy {
    url.parse().unwrap()
}

async fn store(client: &NetworkMcpClient, content: &str) -> Result<serde_json::Value, McpError> {
    tokio::time::timeout(
        LIMIT,
        client.call_tool(
            "memory",
            "store_input",
            json!({"user_id": "u1", "input_data": {"content": content}}),
        ),
    )
    .await
    .expect("a call through the proxy does not hang")
}

/// The proxy error under a client error, or a failure saying what came instead.
#[track_caller]
fn proxy_error(error: &McpError) -> &ProxyError {
    ProxyError::find(error).unwrap_or_else(|| panic!("not the proxy's error: {error:?}"))
}

fn breaker_of(client: &NetworkMcpClient, url: &str) -> BreakerState {
    client
        .endpoint_status()
        .into_iter()
        .find(|status| status.url == url)
        .unwrap_or_else(|| panic!("no status for {url}"))
        .breaker
}

#[tokio::test]
async fn calls_reads_and_streams_reach_the_service_through_the_proxy() {
    let Some(tinyproxy) = Tinyproxy::start("").await else {
        return;
    };
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let target = server.url("");
    let config = common::fast_config()
        .proxy(proxy(&tinyproxy.url()))
        .build()
        .unwrap();
    let client = client(&[&target], config, Balancer::default());

    let stored = store(&client, "through the proxy").await.unwrap();
    assert_eq!(stored["status"], "stored");
    let history = client.read_resource("memory", "history/u1").await.unwrap();
    assert!(history.content.to_string().contains("through the proxy"));
    let mut stream = client
        .stream_resource("memory", "history/u1/stream")
        .await
        .unwrap();
    let first = tokio::time::timeout(LIMIT, stream.next())
        .await
        .expect("an event within the limit")
        .expect("the stream is open")
        .unwrap();
    assert_eq!(first.data["content"], "through the proxy");
    drop(stream);

    // tinyproxy saw each of them, in absolute form.
    assert_eq!(
        tinyproxy.requests(&format!("POST {target}/tool/store_input ")),
        1
    );
    assert_eq!(
        tinyproxy.requests(&format!("GET {target}/resource/history/u1 ")),
        1
    );
    assert_eq!(
        tinyproxy.requests(&format!("GET {target}/resource/history/u1/stream ")),
        1
    );
}

/// tinyproxy closes its client connection after each answer without saying
/// so (no `Connection: close`). A connection put back in the pool would fail
/// a later call that takes it before hyper sees it closed (measured: about
/// 1 call in 25 without retries). So a forwarding proxy's connection is
/// reused only when it says `keep-alive`, which tinyproxy never does.
#[tokio::test]
async fn connections_a_forwarding_proxy_may_close_are_not_reused() {
    let Some(tinyproxy) = Tinyproxy::start("").await else {
        return;
    };
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let config = common::fast_config()
        .proxy(proxy(&tinyproxy.url()))
        .max_retries(0)
        .build()
        .unwrap();
    let client = client(&[&server.url("")], config, Balancer::default());
    for i in 0..50 {
        let read =
            tokio::time::timeout(LIMIT, client.read_resource("memory", "history/u1/limit/1"))
                .await
                .expect("a read through the proxy does not hang");
        if let Err(error) = read {
            panic!("read {i} failed: {error:?}");
        }
    }
    let pool = client.endpoint_status()[0].pool;
    assert_eq!(pool.dialed_total, 50, "one connection per call: {pool:?}");
}

#[tokio::test]
async fn no_proxy_targets_are_reached_directly() {
    let Some(tinyproxy) = Tinyproxy::start("").await else {
        return;
    };
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let target = server.url("");
    let through = format!("{target}/tool/store_input");

    // The control: without no_proxy, the call goes through the proxy.
    let proxied = client(
        &[&target],
        common::fast_config()
            .proxy(proxy(&tinyproxy.url()))
            .build()
            .unwrap(),
        Balancer::default(),
    );
    store(&proxied, "proxied").await.unwrap();
    assert_eq!(tinyproxy.requests(&through), 1);

    // The option: an IP address, and a CIDR block.
    for entries in ["127.0.0.1", "10.0.0.0/8, 127.0.0.0/8"] {
        let config = common::fast_config()
            .proxy(proxy(&tinyproxy.url()))
            .no_proxy(NoProxy::parse(entries).unwrap())
            .build()
            .unwrap();
        store(&client(&[&target], config, Balancer::default()), "direct")
            .await
            .unwrap();
        assert_eq!(tinyproxy.requests(&through), 1, "no_proxy = {entries}");
    }

    // The standard variables, as the environment would give them.
    let from_env = |vars: &[(&str, &str)]| {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let config = common::fast_config()
            .build()
            .unwrap()
            .with_env(vars)
            .unwrap();
        client(&[&target], config, Balancer::default())
    };
    let url = tinyproxy.url();
    store(&from_env(&[("HTTP_PROXY", &url)]), "HTTP_PROXY")
        .await
        .unwrap();
    assert_eq!(tinyproxy.requests(&through), 2, "HTTP_PROXY is used");
    store(
        &from_env(&[("http_proxy", &url), ("no_proxy", "localhost,127.0.0.1")]),
        "no_proxy",
    )
    .await
    .unwrap();
    assert_eq!(tinyproxy.requests(&through), 2, "NO_PROXY bypasses it");
}

/// `HTTPS_PROXY` carries `https://` targets (in a `CONNECT` tunnel) and
/// `HTTP_PROXY` `http://` ones, each leaving the other scheme direct: a
/// memory service over plain HTTP and one over TLS (a self-signed
/// certificate the client trusts as its `ca_file`), one tinyproxy.
#[tokio::test]
async fn https_proxy_carries_https_targets_and_http_proxy_http_ones() {
    let Some(tinyproxy) = Tinyproxy::start("").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (plain, _plain_dir) = start_memory(ServiceConfig::default()).await;
    let (secure, _secure_dir) = start_memory(ServiceConfig {
        tls: Some(cortex_service::TlsConfig::from_pem_files(&cert, &key, None).unwrap()),
        ..ServiceConfig::default()
    })
    .await;
    let plain_target = plain.url("");
    let secure_target = format!("https://{}", secure.addr);
    let forwarded = format!("POST {plain_target}/tool/store_input");
    let tunnelled = format!("CONNECT {}", secure.addr);

    let from_env = |target: &str, vars: &[(&str, &str)]| {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let config = common::fast_config()
            .ca_file(Some(cert.clone()))
            .build()
            .unwrap()
            .with_env(vars)
            .unwrap();
        client(&[target], config, Balancer::default())
    };
    let url = tinyproxy.url();
    for variable in ["HTTPS_PROXY", "https_proxy"] {
        let before = tinyproxy.requests(&tunnelled);
        store(&from_env(&secure_target, &[(variable, &url)]), variable)
            .await
            .unwrap();
        assert_eq!(
            tinyproxy.requests(&tunnelled),
            before + 1,
            "{variable} tunnels the https:// target"
        );
        store(&from_env(&plain_target, &[(variable, &url)]), variable)
            .await
            .unwrap();
        assert_eq!(
            tinyproxy.requests(&forwarded),
            0,
            "{variable} leaves http:// targets direct"
        );
    }
    let tunnels = tinyproxy.requests(&tunnelled);
    store(&from_env(&secure_target, &[("HTTP_PROXY", &url)]), "direct")
        .await
        .unwrap();
    assert_eq!(
        tinyproxy.requests(&tunnelled),
        tunnels,
        "HTTP_PROXY leaves https:// targets direct"
    );
    store(&from_env(&plain_target, &[("HTTP_PROXY", &url)]), "proxied")
        .await
        .unwrap();
    assert_eq!(
        tinyproxy.requests(&forwarded),
        1,
        "HTTP_PROXY forwards http://"
    );
}

#[tokio::test]
async fn proxy_credentials_are_sent_and_refused_ones_are_a_typed_error() {
    let Some(tinyproxy) = Tinyproxy::start("BasicAuth alice s3cret").await else {
        return;
    };
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let target = server.url("");
    let with = |url: String, tunnel: bool| {
        let config = common::fast_config()
            .proxy(proxy(&url))
            .proxy_tunnel(tunnel)
            .failure_threshold(2)
            .build()
            .unwrap();
        client(&[&target], config, Balancer::default())
    };

    for tunnel in [false, true] {
        let good = with(tinyproxy.url_with("alice", "s3cret"), tunnel);
        store(&good, "authorised").await.unwrap();

        // Without credentials: the proxy's 407, typed, in both modes. More
        // calls than the failure threshold: a refusal by the proxy is not
        // the target's failure, so its breaker stays closed and every call
        // says what the proxy said (not "circuit open").
        let anonymous = with(tinyproxy.url(), tunnel);
        for _ in 0..3 {
            let error = store(&anonymous, "anonymous").await.unwrap_err();
            assert!(error.is_connect(), "nothing reached the service: {error}");
            let cause = proxy_error(&error);
            assert!(cause.is_auth(), "{cause:?}");
            assert_eq!(cause.status(), Some(407));
            assert!(matches!(
                cause,
                ProxyError::AuthRequired {
                    credentials_sent: false,
                    ..
                }
            ));
            let message = error.to_string();
            assert!(
                message.contains(&format!("proxy {} answered 407", tinyproxy.url())),
                "{message}"
            );
            assert!(message.contains("it wants credentials"), "{message}");
        }
        assert_eq!(breaker_of(&anonymous, &target), BreakerState::Closed);

        // Wrong credentials: tinyproxy 1.11 answers them with a 401 and
        // `WWW-Authenticate` (RFC 9110 wants a 407). To a CONNECT only the
        // proxy answers, so that is the proxy's refusal, typed. To a
        // forwarded request the service could have answered the same, so
        // it is taken as the service's 401: a refusal, not retried, not
        // counted by the breaker; a proxy that answers 407, as the standard
        // says, gets the typed error there too (the case above).
        let wrong = with(tinyproxy.url_with("alice", "wrong-password"), tunnel);
        for _ in 0..3 {
            let error = store(&wrong, "refused").await.unwrap_err();
            let message = error.to_string();
            assert!(!message.contains("wrong-password"), "{message}");
            if tunnel {
                let cause = proxy_error(&error);
                assert!(
                    matches!(
                        cause,
                        ProxyError::AuthRequired {
                            status: 401,
                            credentials_sent: true,
                            ..
                        }
                    ),
                    "{cause:?}"
                );
                assert!(
                    message.contains(&format!(
                        "proxy http://alice:***@127.0.0.1:{} answered 401: it refused the user and password",
                        tinyproxy.port
                    )),
                    "{message}"
                );
            } else {
                assert_eq!(error.status(), Some(401), "{error:?}");
                assert!(!error.is_retryable(), "{error:?}");
                assert_eq!(error.attempts(), None, "one attempt: {error:?}");
            }
        }
        assert_eq!(breaker_of(&wrong, &target), BreakerState::Closed);
    }
    // The authorised calls went through it: one forwarded, one tunnelled.
    assert!(tinyproxy.requests(&format!("POST {target}/tool/store_input ")) >= 1);
    assert!(tinyproxy.requests(&format!("CONNECT {}", &target["http://".len()..])) >= 1);
    let history = with(tinyproxy.url_with("alice", "s3cret"), false)
        .read_resource("memory", "history/u1")
        .await
        .unwrap();
    // Only the authorised calls stored anything.
    let stored: Vec<&str> = history
        .content
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["content"].as_str().unwrap())
        .collect();
    assert_eq!(stored, ["authorised", "authorised"]);
}

#[tokio::test]
async fn tunnelled_connections_are_kept_alive_and_carry_streams() {
    let Some(tinyproxy) = Tinyproxy::start("").await else {
        return;
    };
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let target = server.url("");
    let config = common::fast_config()
        .proxy(proxy(&tinyproxy.url()))
        .proxy_tunnel(true)
        .build()
        .unwrap();
    let client = client(&[&target], config, Balancer::default());
    for i in 0..5 {
        store(&client, &format!("tunnelled {i}")).await.unwrap();
    }
    let mut stream = client
        .stream_resource("memory", "history/u1/stream")
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(LIMIT, stream.by_ref().take(5).collect::<Vec<_>>())
        .await
        .expect("five events within the limit");
    let contents: Vec<String> = events
        .into_iter()
        .map(|event| event.unwrap().data["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        contents,
        (0..5).map(|i| format!("tunnelled {i}")).collect::<Vec<_>>()
    );

    // One CONNECT per connection the pool opened, and the five sequential
    // calls shared one: HTTP/1.1 keep-alive runs end to end in the tunnel.
    let connects = tinyproxy.requests(&format!("CONNECT {}", &target["http://".len()..]));
    let dialed = client.endpoint_status()[0].pool.dialed_total;
    assert_eq!(connects as u64, dialed);
    assert!((1..=2).contains(&dialed), "dialled {dialed} connections");
    assert_eq!(tinyproxy.requests("POST "), 0, "nothing was forwarded");
}

#[tokio::test]
async fn a_refused_connect_is_a_typed_proxy_error_that_spares_the_breaker() {
    // CONNECT only to port 443: the test service's port is refused.
    let Some(tinyproxy) = Tinyproxy::start("ConnectPort 443").await else {
        return;
    };
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let target = server.url("");
    let config = common::fast_config()
        .proxy(proxy(&tinyproxy.url()))
        .proxy_tunnel(true)
        .failure_threshold(2)
        .build()
        .unwrap();
    let client = client(&[&target], config, Balancer::default());
    for _ in 0..3 {
        let error = store(&client, "x").await.unwrap_err();
        assert!(error.is_connect(), "{error}");
        let cause = proxy_error(&error);
        assert!(
            matches!(cause, ProxyError::TunnelRefused { status: 403, .. }),
            "{cause:?}"
        );
        assert!(
            error.to_string().contains(&format!(
                "proxy {} refused to open a tunnel to {}: HTTP 403",
                tinyproxy.url(),
                &target["http://".len()..]
            )),
            "{error}"
        );
    }
    assert_eq!(breaker_of(&client, &target), BreakerState::Closed);
}

/// Two replicas of one service behind one proxy, one connection each: a
/// stream holding one's connection leaves the other's free, and with both
/// held a third call waits on the caps. Pools keyed by the proxy (the
/// address dialled) would share one connection, and fail the second stream.
#[tokio::test]
async fn two_targets_behind_one_proxy_have_a_connection_cap_each() {
    let Some(tinyproxy) = Tinyproxy::start("").await else {
        return;
    };
    let (a, _a_dir) = start_memory(ServiceConfig::default()).await;
    let (b, _b_dir) = start_memory(ServiceConfig::default()).await;
    let targets = [a.url(""), b.url("")];
    let config = common::fast_config()
        .proxy(proxy(&tinyproxy.url()))
        .max_connections(1)
        .pool_timeout(Duration::from_millis(300))
        .max_retries(0)
        .build()
        .unwrap();
    // Power of two choices: a call goes to the replica with fewer in flight.
    let client = client(
        &[&targets[0], &targets[1]],
        config,
        Balancer::PowerOfTwoChoices,
    );

    let first = client
        .stream_resource("memory", "history/u1/stream")
        .await
        .unwrap();
    store(&client, "beside the first stream").await.unwrap();
    let second = client
        .stream_resource("memory", "history/u1/stream")
        .await
        .unwrap();
    let status = client.endpoint_status();
    assert_eq!(status.len(), 2);
    for endpoint in &status {
        assert_eq!(
            (endpoint.pool.open, endpoint.pool.in_use),
            (1, 1),
            "{}",
            endpoint.url
        );
    }
    let error = store(&client, "no room").await.unwrap_err();
    assert!(
        matches!(
            error,
            McpError::PoolTimeout {
                max_connections: 1,
                ..
            }
        ),
        "{error:?}"
    );
    // Both streams went through the proxy, one to each target.
    for target in &targets {
        assert_eq!(
            tinyproxy.requests(&format!("GET {target}/resource/history/u1/stream ")),
            1,
            "{target}"
        );
    }
    drop((first, second));
}

/// Two replicas behind one proxy, one of them dead: the proxy answers for
/// it (tinyproxy: `500 Unable to connect`), its breaker opens, and the
/// live one's stays closed and takes every call. One breaker for the proxy
/// would have opened for both, or never (reset by the live one's successes).
#[tokio::test]
async fn two_targets_behind_one_proxy_have_a_breaker_each() {
    let Some(tinyproxy) = Tinyproxy::start("").await else {
        return;
    };
    let (live, _dir) = start_memory(ServiceConfig::default()).await;
    let live_url = live.url("");
    let dead_url = format!("http://127.0.0.1:{}", common::dead_port());
    let config = common::fast_config()
        .proxy(proxy(&tinyproxy.url()))
        .failure_threshold(2)
        .reset_timeout(Duration::from_secs(60))
        .max_retries(1)
        .build()
        .unwrap();
    // Round robin: the dead replica is tried first every other call, and
    // its failed attempt retried on the live one.
    let client = client(&[&live_url, &dead_url], config, Balancer::RoundRobin);
    for i in 0..8 {
        store(&client, &format!("call {i}")).await.unwrap();
    }
    assert_eq!(breaker_of(&client, &dead_url), BreakerState::Open);
    assert_eq!(breaker_of(&client, &live_url), BreakerState::Closed);
    // The dead one was tried through the proxy until its breaker opened.
    assert_eq!(
        tinyproxy.requests(&format!("POST {dead_url}/tool/store_input ")),
        2
    );
    assert_eq!(
        tinyproxy.requests(&format!("POST {live_url}/tool/store_input ")),
        8
    );
}

#[tokio::test]
async fn a_dead_proxy_is_a_typed_error_and_not_a_hang() {
    let (server, _dir) = start_memory(ServiceConfig::default()).await;
    let dead = format!("http://127.0.0.1:{}", common::dead_port());
    for tunnel in [false, true] {
        let config = common::fast_config()
            .proxy(proxy(&dead))
            .proxy_tunnel(tunnel)
            .build()
            .unwrap();
        let client = client(&[&server.url("")], config, Balancer::default());
        let started = Instant::now();
        let error = store(&client, "x").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{error}");
        assert!(error.is_connect() && error.is_refused(), "{error:?}");
        assert_eq!(error.attempts(), Some(4), "retried like a refused target");
        let cause = proxy_error(&error);
        assert!(matches!(cause, ProxyError::Unreachable { .. }), "{cause:?}");
        assert_eq!(cause.proxy(), dead);
        assert!(
            error
                .to_string()
                .contains(&format!("cannot connect to proxy {dead}")),
            "{error}"
        );
    }
}

/// A proxy that accepts connections and never answers: a tunnel fails
/// within `connect_timeout` as the proxy's timeout; a forwarded request,
/// which such a proxy cannot be told apart from a slow service on, within
/// the call's deadline.
#[tokio::test]
async fn a_silent_proxy_is_bounded_by_the_timeouts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = format!("http://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });

    let config = common::fast_config()
        .proxy(proxy(&silent))
        .proxy_tunnel(true)
        .connect_timeout(Duration::from_millis(200))
        .max_retries(1)
        .build()
        .unwrap();
    let tunnelled = client(&["http://127.0.0.1:9"], config, Balancer::default());
    let started = Instant::now();
    let error = store(&tunnelled, "x").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{error}");
    assert!(error.is_connect() && error.is_timeout(), "{error:?}");
    assert!(matches!(
        proxy_error(&error),
        ProxyError::Unreachable { .. }
    ));

    let config = common::fast_config()
        .proxy(proxy(&silent))
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let forwarded = client(&["http://127.0.0.1:9"], config, Balancer::default());
    let started = Instant::now();
    let error = store(&forwarded, "x").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{error}");
    assert!(matches!(error, McpError::Timeout { .. }), "{error:?}");
    held.abort();
}

/// Where a proxy setting comes from, and what a malformed one says: the
/// option or variable, and the value without its password.
#[test]
fn proxy_settings_come_from_the_config_then_the_standard_variables() {
    let env = |config: ClientConfig, vars: &[(&str, &str)]| {
        config.with_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    };
    let defaults = ClientConfig::default();
    assert_eq!(defaults.proxy, Proxy::Env);
    let read = env(defaults.clone(), &[("HTTP_PROXY", "proxy.example:3128")]).unwrap();
    assert_eq!(
        read.proxy.to_string(),
        "http: http://proxy.example:3128, https: none"
    );
    let read = env(
        defaults.clone(),
        &[
            ("HTTP_PROXY", "http://plain:1"),
            ("HTTPS_PROXY", "http://secure:2"),
        ],
    )
    .unwrap();
    assert_eq!(
        read.proxy.to_string(),
        "http: http://plain:1, https: http://secure:2"
    );
    let read = env(
        defaults.clone(),
        &[("ALL_PROXY", "http://all:1"), ("NO_PROXY", "a,.b")],
    )
    .unwrap();
    assert_eq!(read.proxy.to_string(), "http://all:1");
    assert_eq!(read.no_proxy.entries(), ["a", ".b"]);

    // The file's choice wins over the standard variables; ours over both.
    let file = ClientConfig::from_toml_str("proxy = \"none\"\nno_proxy = [\"c\"]").unwrap();
    let read = env(
        file.clone(),
        &[("HTTP_PROXY", "not a url at all"), ("NO_PROXY", "a")],
    )
    .unwrap();
    assert_eq!(
        (read.proxy, read.no_proxy.entries()),
        (Proxy::Off, &["c".to_owned()][..])
    );
    let read = env(
        file,
        &[
            ("HTTP_PROXY", "http://ignored:1"),
            ("CORTEX_CLIENT_PROXY", "http://ours:1"),
        ],
    )
    .unwrap();
    assert_eq!(read.proxy.to_string(), "http://ours:1");

    // A service left to the environment gets its proxy too.
    let file =
        ClientConfig::from_toml_str("proxy = \"none\"\n[services.memory]\nproxy = \"env\"\n")
            .unwrap();
    let read = env(file, &[("all_proxy", "http://p:1")]).unwrap();
    assert_eq!(read.for_service("memory").proxy.to_string(), "http://p:1");
    assert_eq!(read.for_service("other").proxy, Proxy::Off);

    // Malformed: named, with the value, and never the password.
    let invalid = |result: Result<ClientConfig, ConfigError>| match result {
        Err(ConfigError::Invalid { option, reason }) => (option, reason),
        other => panic!("expected an invalid value, got {other:?}"),
    };
    let cases = [
        (
            env(
                defaults.clone(),
                &[("HTTP_PROXY", "socks5://u:hunter2@h:1080")],
            ),
            "HTTP_PROXY",
            "`socks5://u:***@h:1080`: SOCKS proxies are not supported",
        ),
        (
            env(
                defaults.clone(),
                &[
                    ("HTTP_PROXY", "http://fine:1"),
                    ("HTTPS_PROXY", "https://u:hunter2@h:443"),
                ],
            ),
            "HTTPS_PROXY",
            "`https://u:***@h:443`: a proxy reached over TLS (https://) is not supported",
        ),
        (
            env(
                defaults.clone(),
                &[("CORTEX_CLIENT_PROXY", "http://u:hunter2@h:99999")],
            ),
            "CORTEX_CLIENT_PROXY",
            "`http://u:***@h:99999`: bad port `99999`",
        ),
        (
            ClientConfig::from_toml_str("proxy = \"https://h:3128\""),
            "proxy",
            "`https://h:3128`: a proxy reached over TLS (https://) is not supported",
        ),
        (
            ClientConfig::from_toml_str("[services.memory]\nproxy = \"http://h:1/path\""),
            "services.memory.proxy",
            "`http://h:1/path`: a proxy URL has no path",
        ),
        (
            ClientConfig::from_toml_str("no_proxy = [\"h:8080\"]"),
            "no_proxy",
            "`h:8080`: ports are not compared",
        ),
        (
            ClientConfig::from_toml_str("proxy = 3128"),
            "proxy",
            "expected a string",
        ),
    ];
    for (result, option, says) in cases {
        let (named, reason) = invalid(result);
        assert_eq!(named, option);
        assert!(reason.contains(says), "{option}: {reason}");
        assert!(!reason.contains("hunter2"), "{reason}");
    }
    // A standard variable the configuration does not use is not checked.
    env(
        defaults,
        &[
            ("HTTPS_PROXY", "not a url"),
            ("CORTEX_CLIENT_PROXY", "none"),
        ],
    )
    .unwrap();
}
