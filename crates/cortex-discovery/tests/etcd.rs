//! etcd discovery and self-registration against a real etcd that each test
//! starts itself (on 127.0.0.1, free ports, a temporary data dir) and kills
//! when it ends.
//!
//! These tests need the `etcd` binary (Debian: `apt-get install
//! etcd-server`; `ETCD_BIN` may name another one). Without it they fail, on
//! purpose: a silent pass would hide that nothing was tested.
//!
//! The tests that run etcd take a process-wide lock, one at a time, so that
//! their time bounds do not suffer from several etcd servers fsyncing on two
//! cores at once.
//!
//! Compaction: a live watch that keeps up is not affected by a compaction,
//! and making a real watch fall behind is not deterministic. So the
//! compaction test starts a discovery whose watch begins at an old revision
//! (`EtcdDiscovery::connect_with_watch_start`) after that revision was
//! compacted: etcd then cancels the watch with its compact revision, exactly
//! what a watch that fell behind gets, and the discovery must back off,
//! re-list, and follow changes again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_discovery::{
    DiscoveryError, Endpoint, EtcdConfig, EtcdDiscovery, EtcdRegistration, Protocol,
    ServiceDiscovery,
};
use cortex_test_support::etcd::Etcd;
use etcd_client::{Client, CompactionOptions, GetOptions};

async fn urls(discovery: &EtcdDiscovery, service: &str) -> Result<Vec<String>, DiscoveryError> {
    discovery
        .resolve(service)
        .await
        .map(|set| set.endpoints.iter().map(|e| e.url.clone()).collect())
}

/// Waits until `service` resolves to exactly `want` (any order), at most
/// `within`; returns how long it took.
async fn wait_until(
    discovery: &EtcdDiscovery,
    service: &str,
    within: Duration,
    want: &[&str],
) -> Duration {
    let mut want: Vec<String> = want.iter().map(|u| u.to_string()).collect();
    want.sort();
    let started = Instant::now();
    loop {
        let now = urls(discovery, service).await;
        if now.as_ref() == Ok(&want) {
            return started.elapsed();
        }
        if started.elapsed() > within {
            panic!("`{service}` did not become {want:?} within {within:?}; it is {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn register(etcd: &Etcd, service: &str, url: &str, ttl: Duration) -> EtcdRegistration {
    EtcdRegistration::register(etcd.config(), service, Endpoint::new(url), ttl)
        .await
        .unwrap_or_else(|e| panic!("registering {service} at {url}: {e}"))
}

async fn discover(etcd: &Etcd) -> Arc<EtcdDiscovery> {
    EtcdDiscovery::connect(etcd.config())
        .await
        .unwrap_or_else(|e| panic!("connecting the discovery: {e}"))
}

async fn put_endpoint(client: &mut Client, key: &str, endpoint: &Endpoint) -> i64 {
    let value = serde_json::to_vec(endpoint).expect("endpoint encodes");
    let response = client.put(key, value, None).await.expect("put");
    response
        .header()
        .expect("put answer has a header")
        .revision()
}

#[test]
fn from_url_parses_members_and_prefix() {
    let c = EtcdConfig::from_url("etcd://127.0.0.1:2379").expect("valid");
    assert_eq!(c.endpoints, vec!["http://127.0.0.1:2379"]);
    assert_eq!(c.prefix, "/cortex/services/");
    assert_eq!(c.connect_timeout, Duration::from_secs(2));

    let c = EtcdConfig::from_url("etcd://10.0.0.1:2379, etcd-b:2380/my/prefix").expect("valid");
    assert_eq!(
        c.endpoints,
        vec!["http://10.0.0.1:2379", "http://etcd-b:2380"]
    );
    assert_eq!(c.prefix, "/my/prefix/", "a trailing slash is added");
    assert_eq!(
        EtcdConfig::from_url("etcd://h:1/my/prefix/").map(|c| c.prefix),
        Ok("/my/prefix/".to_string())
    );
    assert_eq!(
        EtcdConfig::from_url("etcd://h:1/").map(|c| c.prefix),
        Ok("/cortex/services/".to_string())
    );
    assert_eq!(
        EtcdConfig::from_url("etcd://etcd").map(|c| c.endpoints),
        Ok(vec!["http://etcd:2379".to_string()])
    );
    assert_eq!(
        EtcdConfig::from_url("etcd://[::1]:2390,[fe80::1]").map(|c| c.endpoints),
        Ok(vec![
            "http://[::1]:2390".to_string(),
            "http://[fe80::1]:2379".to_string()
        ])
    );
    assert_eq!(
        EtcdConfig::default().endpoints,
        vec!["http://127.0.0.1:2379"]
    );
}

#[test]
fn from_url_rejects_malformed_urls() {
    for bad in [
        "http://127.0.0.1:2379",
        "127.0.0.1:2379",
        "etcd://",
        "etcd:///prefix",
        "etcd://a:1,,b:2",
        "etcd://a:",
        "etcd://a:0",
        "etcd://a:x",
        "etcd://a:70000",
        "etcd://user:pw@a:1",
        "etcd://a:1?x=1",
        "etcd://a:1#frag",
        "etcd://::1:2379",
        "etcd://[::1",
        "etcd://[nope]:1",
        "etcd://[::1]x",
        "etcd://bad host:1",
        "etcd://a:1/with space",
    ] {
        match EtcdConfig::from_url(bad) {
            Err(DiscoveryError::Config(message)) => {
                assert!(
                    message.contains(bad),
                    "the error for `{bad}` names the URL: {message}"
                )
            }
            other => panic!("`{bad}` should be a Config error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_etcd_at_start_is_a_backend_error_naming_the_endpoint() {
    let (port, _) = cortex_test_support::etcd::free_ports();
    let url = format!("http://127.0.0.1:{port}");
    let config = EtcdConfig {
        connect_timeout: Duration::from_millis(500),
        ..EtcdConfig::new([url.clone()])
    };
    let started = Instant::now();
    match EtcdDiscovery::connect(config.clone()).await {
        Err(DiscoveryError::Backend { service, reason }) => {
            assert!(
                reason.contains(&url),
                "the reason names the etcd endpoint: {reason}"
            );
            assert_eq!(service, "/cortex/services/*");
        }
        other => panic!("expected a Backend error, got {other:?}"),
    }
    match EtcdRegistration::register(
        config,
        "memory",
        Endpoint::new("http://127.0.0.1:9000"),
        Duration::from_secs(5),
    )
    .await
    {
        Err(DiscoveryError::Backend { service, reason }) => {
            assert!(
                reason.contains(&url),
                "the reason names the etcd endpoint: {reason}"
            );
            assert_eq!(service, "memory");
        }
        other => panic!("expected a Backend error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeout: {:?}",
        started.elapsed()
    );

    let bad = EtcdRegistration::register(
        EtcdConfig::default(),
        "a/b",
        Endpoint::new("http://h:1"),
        Duration::from_secs(5),
    )
    .await;
    assert!(matches!(bad, Err(DiscoveryError::Config(_))), "{bad:?}");
    let bad = EtcdRegistration::register(
        EtcdConfig::default(),
        "m",
        Endpoint::new("ftp://h:1"),
        Duration::from_secs(5),
    )
    .await;
    assert!(matches!(bad, Err(DiscoveryError::Config(_))), "{bad:?}");
    let bad = EtcdDiscovery::connect(EtcdConfig::new(Vec::<String>::new())).await;
    assert!(matches!(bad, Err(DiscoveryError::Config(_))), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_appears_stays_alive_and_goes_when_dropped_or_deregistered() {
    let etcd = Etcd::start().await;
    let discovery = discover(&etcd).await;
    assert_eq!(
        discovery.resolve("memory").await,
        Err(DiscoveryError::Unknown("memory".into()))
    );

    let ttl = Duration::from_secs(2);
    let a = register(&etcd, "memory", "http://127.0.0.1:9001", ttl).await;
    assert!(
        a.key().starts_with("/cortex/services/memory/"),
        "{}",
        a.key()
    );
    let took = wait_until(
        &discovery,
        "memory",
        Duration::from_secs(1),
        &["http://127.0.0.1:9001"],
    )
    .await;
    eprintln!("registration seen after {took:?}");

    // Well past the TTL, the keep-alives hold the key.
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    assert_eq!(
        urls(&discovery, "memory").await,
        Ok(vec!["http://127.0.0.1:9001".to_string()])
    );

    // Process death: no more keep-alives, the lease expires.
    drop(a);
    let took = wait_until(&discovery, "memory", ttl + Duration::from_secs(1), &[]).await;
    eprintln!("dropped registration gone after {took:?}");
    let set = discovery
        .resolve("memory")
        .await
        .expect("a known service with no endpoint is an empty set");
    assert!(set.endpoints.is_empty());
    assert!(set.version >= 2, "published, then emptied: {set:?}");

    // Graceful shutdown: the key goes at once.
    let b = register(
        &etcd,
        "memory",
        "http://127.0.0.1:9002",
        Duration::from_secs(30),
    )
    .await;
    wait_until(
        &discovery,
        "memory",
        Duration::from_secs(1),
        &["http://127.0.0.1:9002"],
    )
    .await;
    b.deregister().await.expect("deregister");
    let took = wait_until(&discovery, "memory", Duration::from_secs(1), &[]).await;
    eprintln!("deregistered key gone after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_with_several_instances() {
    let etcd = Etcd::start().await;
    let ttl = Duration::from_secs(10);
    // Registered before the discovery connects: found by the initial list.
    let m1 = register(&etcd, "memory", "http://127.0.0.1:9001", ttl).await;
    let discovery = discover(&etcd).await;
    assert_eq!(
        urls(&discovery, "memory").await,
        Ok(vec!["http://127.0.0.1:9001".to_string()])
    );

    let m2 = register(&etcd, "memory", "http://127.0.0.1:9002", ttl).await;
    let m3 = register(&etcd, "memory", "http://127.0.0.1:9003", ttl).await;
    let c1 = EtcdRegistration::register(
        etcd.config(),
        "cognition",
        Endpoint {
            weight: 3,
            ..Endpoint::new("http://127.0.0.1:9101").with_protocol(Protocol::Mcp)
        },
        ttl,
    )
    .await
    .expect("register");
    let c2 = register(&etcd, "cognition", "http://127.0.0.1:9102", ttl).await;
    // Keys that are not endpoints are ignored, not trusted.
    let mut client = etcd.client().await;
    client
        .put("/cortex/services/cognition/junk", "not json", None)
        .await
        .expect("put");
    client
        .put("/cortex/services/stray-key", "{}", None)
        .await
        .expect("put");
    client
        .put(
            "/elsewhere/cognition/x",
            r#"{"url":"http://127.0.0.1:1"}"#,
            None,
        )
        .await
        .expect("put");

    let memory = [
        "http://127.0.0.1:9001",
        "http://127.0.0.1:9002",
        "http://127.0.0.1:9003",
    ];
    wait_until(&discovery, "memory", Duration::from_secs(1), &memory).await;
    wait_until(
        &discovery,
        "cognition",
        Duration::from_secs(1),
        &["http://127.0.0.1:9101", "http://127.0.0.1:9102"],
    )
    .await;
    let cognition = discovery.resolve("cognition").await.expect("known");
    assert_eq!(cognition.endpoints[0].protocol, Protocol::Mcp);
    assert_eq!(cognition.endpoints[0].weight, 3);
    assert_eq!(cognition.endpoints[1].protocol, Protocol::Cortex);

    // One instance goes; the other service does not move.
    let cognition_version = cognition.version;
    m2.deregister().await.expect("deregister");
    wait_until(
        &discovery,
        "memory",
        Duration::from_secs(1),
        &["http://127.0.0.1:9001", "http://127.0.0.1:9003"],
    )
    .await;
    assert_eq!(
        discovery.resolve("cognition").await.map(|s| s.version),
        Ok(cognition_version)
    );
    assert_eq!(discovery.registry().names(), vec!["cognition", "memory"]);

    // A second discovery agrees, from its own list.
    let other = discover(&etcd).await;
    assert_eq!(
        urls(&other, "memory").await,
        urls(&discovery, "memory").await
    );
    assert_eq!(
        urls(&other, "cognition").await,
        urls(&discovery, "cognition").await
    );
    drop((m1, m3, c1, c2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_keeps_the_last_good_sets_and_a_restart_is_followed() {
    let mut etcd = Etcd::start().await;
    let discovery = discover(&etcd).await;
    let a = register(
        &etcd,
        "memory",
        "http://127.0.0.1:9001",
        Duration::from_secs(3),
    )
    .await;
    wait_until(
        &discovery,
        "memory",
        Duration::from_secs(1),
        &["http://127.0.0.1:9001"],
    )
    .await;
    let before = discovery.resolve("memory").await.expect("known");

    etcd.stop();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            discovery.resolve("memory").await,
            Ok(before.clone()),
            "the last good set stays"
        );
    }
    assert_eq!(
        discovery.relists(),
        0,
        "no list can succeed while etcd is down"
    );

    etcd.restart().await;
    let b = register(
        &etcd,
        "memory",
        "http://127.0.0.1:9002",
        Duration::from_secs(3),
    )
    .await;
    let took = wait_until(
        &discovery,
        "memory",
        Duration::from_secs(15),
        &["http://127.0.0.1:9001", "http://127.0.0.1:9002"],
    )
    .await;
    eprintln!("new registration seen {took:?} after the restart");
    assert!(discovery.relists() >= 1, "the discovery listed again");

    // The registration from before the outage kept (or renewed) its lease:
    // still there well past its TTL.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        urls(&discovery, "memory").await,
        Ok(vec![
            "http://127.0.0.1:9001".to_string(),
            "http://127.0.0.1:9002".to_string()
        ])
    );
    assert!(a.lease_id().is_some());

    // And changes are followed as usual.
    a.deregister().await.expect("deregister");
    wait_until(
        &discovery,
        "memory",
        Duration::from_secs(1),
        &["http://127.0.0.1:9002"],
    )
    .await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_that_lost_its_data_empties_vanished_services_and_registrations_come_back() {
    let mut etcd = Etcd::start().await;
    let discovery = discover(&etcd).await;
    let kept = register(
        &etcd,
        "memory",
        "http://127.0.0.1:9001",
        Duration::from_secs(2),
    )
    .await;
    let lease_before = kept.lease_id();
    let mut client = etcd.client().await;
    put_endpoint(
        &mut client,
        "/cortex/services/orphan/x",
        &Endpoint::new("http://127.0.0.1:9500"),
    )
    .await;
    wait_until(
        &discovery,
        "memory",
        Duration::from_secs(1),
        &["http://127.0.0.1:9001"],
    )
    .await;
    wait_until(
        &discovery,
        "orphan",
        Duration::from_secs(1),
        &["http://127.0.0.1:9500"],
    )
    .await;

    etcd.restart_empty().await;
    // Nobody re-registers the orphan: after the re-list it is a known
    // service with no endpoint. The registration notices its lease is gone,
    // grants a new one and puts its key again.
    let took = wait_until(&discovery, "orphan", Duration::from_secs(15), &[]).await;
    eprintln!("vanished service emptied {took:?} after the restart");
    wait_until(
        &discovery,
        "memory",
        Duration::from_secs(10),
        &["http://127.0.0.1:9001"],
    )
    .await;
    assert!(discovery.relists() >= 1);
    let lease_after = kept.lease_id();
    assert!(
        lease_after.is_some() && lease_after != lease_before,
        "{lease_before:?} → {lease_after:?}"
    );
    let mut fresh = etcd.client().await;
    let stored = fresh.get(kept.key(), None).await.expect("get");
    assert_eq!(stored.kvs().len(), 1, "the key was put again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_a_compaction_relists_and_converges() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let live = discover(&etcd).await;

    let key = |i: usize| format!("/cortex/services/churn/i{i:02}");
    let url = |i: usize| format!("http://127.0.0.1:{}", 10_000 + i);
    let first = put_endpoint(&mut client, &key(0), &Endpoint::new(url(0))).await;
    for i in 1..40 {
        put_endpoint(&mut client, &key(i), &Endpoint::new(url(i))).await;
    }
    for i in 0..35 {
        client.delete(key(i), None).await.expect("delete");
    }
    put_endpoint(
        &mut client,
        "/cortex/services/ghost/x",
        &Endpoint::new("http://127.0.0.1:9999"),
    )
    .await;
    client
        .delete("/cortex/services/ghost/x", None)
        .await
        .expect("delete");
    let survivors: Vec<String> = (35..40).map(url).collect();
    let survivors: Vec<&str> = survivors.iter().map(String::as_str).collect();

    // A watch that is behind but not compacted replays history and converges.
    let replaying = EtcdDiscovery::connect_with_watch_start(etcd.config(), first)
        .await
        .expect("connect");
    wait_until(&replaying, "churn", Duration::from_secs(2), &survivors).await;
    wait_until(&replaying, "ghost", Duration::from_secs(2), &[]).await;
    assert_eq!(replaying.relists(), 0, "nothing was compacted yet");

    // Compact everything up to now.
    let now = client
        .get("/cortex/services/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let now = now.header().expect("header").revision();
    client
        .compact(now, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");

    // A watch from a compacted revision: etcd cancels it with its compact
    // revision; the discovery backs off, lists again and watches from there.
    let behind = EtcdDiscovery::connect_with_watch_start(etcd.config(), first)
        .await
        .expect("connect");
    let started = Instant::now();
    while behind.relists() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the compacted watch was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until(&behind, "churn", Duration::from_secs(1), &survivors).await;

    // After the recovery the watch follows new changes.
    put_endpoint(&mut client, &key(50), &Endpoint::new(url(50))).await;
    client.delete(key(35), None).await.expect("delete");
    let mut expected: Vec<&str> = survivors[1..].to_vec();
    let new_url = url(50);
    expected.push(&new_url);
    for discovery in [&behind, &replaying, &live] {
        wait_until(discovery, "churn", Duration::from_secs(1), &expected).await;
    }
    assert_eq!(behind.relists(), 1, "one recovery, then a healthy watch");
    // The live watch kept up all along: the compaction did not touch it.
    assert_eq!(live.relists(), 0);
}
