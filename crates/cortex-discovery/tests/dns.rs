//! DNS SRV discovery against a real DNS server: hickory-server with an
//! in-memory zone `example.internal.` on 127.0.0.1 (UDP and TCP on one random
//! port), whose records the tests change while it runs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cortex_discovery::dns::clamp_ttl;
use cortex_discovery::{
    DiscoveryError, DnsSrvConfig, DnsSrvDiscovery, Endpoint, Protocol, ServiceDiscovery,
};
use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use tokio::net::{TcpListener, UdpSocket};

const ZONE: &str = "example.internal.";
/// A second zone on the same server: its names are not in the first zone's
/// additional sections, so SRV targets there are looked up separately.
const OTHER_ZONE: &str = "hosts.internal.";

fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("a valid name")
}

fn new_zone(origin: &str) -> Arc<InMemoryZoneHandler> {
    let origin = name(origin);
    let mut zone = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let soa = SOA::new(
        name(&format!("ns.{origin}")),
        name(&format!("admin.{origin}")),
        1,
        3600,
        600,
        86_400,
        1,
    );
    assert!(zone.upsert_mut(Record::from_rdata(origin, 1, RData::SOA(soa)), 1));
    Arc::new(zone)
}

/// An authoritative DNS server for [`ZONE`] and [`OTHER_ZONE`].
struct TestDns {
    addr: SocketAddr,
    zone: Arc<InMemoryZoneHandler>,
    other_zone: Arc<InMemoryZoneHandler>,
    server: Option<Server<Catalog>>,
}

impl TestDns {
    async fn start() -> Self {
        let zone = new_zone(ZONE);
        let other_zone = new_zone(OTHER_ZONE);
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&name(ZONE)),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        catalog.upsert(
            LowerName::new(&name(OTHER_ZONE)),
            vec![other_zone.clone() as Arc<dyn ZoneHandler>],
        );
        // UDP on a random port, TCP (for truncated answers) on the same one;
        // retried should that TCP port be taken.
        let mut bound = None;
        for _ in 0..20 {
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind UDP");
            let addr = udp.local_addr().expect("UDP address");
            if let Ok(tcp) = TcpListener::bind(addr).await {
                bound = Some((udp, tcp, addr));
                break;
            }
        }
        let (udp, tcp, addr) = bound.expect("a port free for both UDP and TCP");
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 16);
        Self {
            addr,
            zone,
            other_zone,
            server: Some(server),
        }
    }

    async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), server.shutdown_gracefully()).await;
        }
    }

    /// Replaces the records of `owner`'s `record_type` with `data`, in
    /// whichever zone holds `owner`.
    async fn set(&self, owner: &str, record_type: RecordType, ttl: u32, data: Vec<RData>) {
        let owner = name(owner);
        let zone = if name(OTHER_ZONE).zone_of(&owner) {
            &self.other_zone
        } else {
            &self.zone
        };
        zone.records_mut()
            .await
            .remove(&RrKey::new(LowerName::new(&owner), record_type));
        for rdata in data {
            assert!(
                zone.upsert(Record::from_rdata(owner.clone(), ttl, rdata), 1)
                    .await,
                "record accepted"
            );
        }
    }

    async fn srv(&self, owner: &str, ttl: u32, records: &[(u16, u16, u16, &str)]) {
        let data = records
            .iter()
            .map(|(priority, weight, port, target)| {
                RData::SRV(SRV::new(*priority, *weight, *port, name(target)))
            })
            .collect();
        self.set(owner, RecordType::SRV, ttl, data).await;
    }

    async fn a(&self, owner: &str, ttl: u32, ip: Ipv4Addr) {
        self.set(owner, RecordType::A, ttl, vec![RData::A(A(ip))])
            .await;
    }

    async fn aaaa(&self, owner: &str, ttl: u32, ip: Ipv6Addr) {
        self.set(owner, RecordType::AAAA, ttl, vec![RData::AAAA(AAAA(ip))])
            .await;
    }

    /// Three hosts `h1`..`h3.example.internal.` at 127.0.0.1..3.
    async fn three_hosts(&self, ttl: u32) {
        for i in 1..=3u8 {
            self.a(&format!("h{i}.{ZONE}"), ttl, Ipv4Addr::new(127, 0, 0, i))
                .await;
        }
    }
}

fn config(nameserver: SocketAddr) -> DnsSrvConfig {
    DnsSrvConfig {
        nameservers: vec![nameserver],
        names: BTreeMap::from([("memory".to_string(), format!("_memory._tcp.{ZONE}"))]),
        template: Some(format!("_{{service}}._tcp.{ZONE}")),
        min_ttl: Duration::from_millis(200),
        max_ttl: Duration::from_secs(2),
        query_timeout: Duration::from_millis(500),
        protocol: Protocol::Cortex,
    }
}

fn endpoint(url: &str, weight: u32) -> Endpoint {
    let mut endpoint = Endpoint::new(url);
    endpoint.weight = weight;
    endpoint
}

/// Polls `resolve` until `done` holds, at most 5 s.
async fn resolve_until(
    discovery: &DnsSrvDiscovery,
    service: &str,
    done: impl Fn(&[Endpoint]) -> bool,
) -> Arc<cortex_discovery::EndpointSet> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let set = discovery.resolve(service).await.expect("a set");
        if done(&set.endpoints) {
            return set;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the set never changed: {set:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_targets_become_three_weighted_endpoints() {
    let dns = TestDns::start().await;
    dns.three_hosts(30).await;
    let srv = format!("_memory._tcp.{ZONE}");
    dns.srv(
        &srv,
        30,
        &[
            (10, 5, 9001, "h1.example.internal."),
            (10, 0, 9002, "h2.example.internal."),
            (10, 20, 9003, "h3.example.internal."),
        ],
    )
    .await;

    let discovery = DnsSrvDiscovery::new(DnsSrvConfig {
        protocol: Protocol::Mcp,
        ..config(dns.addr)
    })
    .expect("valid config");
    assert_eq!(discovery.srv_name("memory").as_deref(), Some(srv.as_str()));
    let set = discovery.resolve("memory").await.expect("an answer");
    assert_eq!(set.version, 1);
    let expected: Vec<Endpoint> = [
        endpoint("http://127.0.0.1:9001", 5),
        endpoint("http://127.0.0.2:9002", 1),
        endpoint("http://127.0.0.3:9003", 20),
    ]
    .into_iter()
    .map(|e| e.with_protocol(Protocol::Mcp))
    .collect();
    assert_eq!(
        set.endpoints, expected,
        "one endpoint per target, weight carried (0 -> 1), sorted"
    );
    let again = discovery.resolve("memory").await.expect("cached");
    assert!(
        Arc::ptr_eq(&set, &again),
        "a known service is answered from the registry"
    );
}

#[tokio::test]
async fn lowest_priority_value_hides_the_others() {
    let dns = TestDns::start().await;
    dns.three_hosts(30).await;
    dns.srv(
        &format!("_memory._tcp.{ZONE}"),
        30,
        &[
            (20, 1, 9003, "h3.example.internal."),
            (10, 1, 9001, "h1.example.internal."),
            (10, 3, 9002, "h2.example.internal."),
            // Even lower, but its target has no address: skipped.
            (5, 1, 9000, "nowhere.example.internal."),
            // A `.` target means "not here" (RFC 2782).
            (1, 1, 9000, "."),
        ],
    )
    .await;

    let discovery = DnsSrvDiscovery::new(config(dns.addr)).expect("valid config");
    let set = discovery.resolve("memory").await.expect("an answer");
    assert_eq!(
        set.endpoints,
        vec![
            endpoint("http://127.0.0.1:9001", 1),
            endpoint("http://127.0.0.2:9002", 3)
        ]
    );
}

#[tokio::test]
async fn targets_outside_the_additional_section_are_looked_up_including_ipv6() {
    let dns = TestDns::start().await;
    dns.a(&format!("v4.{OTHER_ZONE}"), 30, Ipv4Addr::new(127, 0, 0, 9))
        .await;
    dns.aaaa(&format!("v6.{OTHER_ZONE}"), 30, Ipv6Addr::LOCALHOST)
        .await;
    dns.srv(
        &format!("_search._tcp.{ZONE}"),
        30,
        &[
            (0, 2, 7000, "v4.hosts.internal."),
            (0, 2, 7001, "v6.hosts.internal."),
        ],
    )
    .await;

    // `search` is not in `names`: the template gives its SRV name.
    let discovery = DnsSrvDiscovery::new(config(dns.addr)).expect("valid config");
    let set = discovery.resolve("search").await.expect("an answer");
    assert_eq!(
        set.endpoints,
        vec![
            endpoint("http://127.0.0.9:7000", 2),
            endpoint("http://[::1]:7001", 2)
        ]
    );
    assert!(set.endpoints.iter().all(|e| e.validate().is_ok()));
}

#[tokio::test]
async fn the_set_follows_record_changes_within_the_ttl() {
    let dns = TestDns::start().await;
    dns.three_hosts(1).await;
    let srv = format!("_memory._tcp.{ZONE}");
    dns.srv(&srv, 1, &[(10, 1, 9001, "h1.example.internal.")])
        .await;

    let discovery = DnsSrvDiscovery::new(config(dns.addr)).expect("valid config");
    let first = discovery.resolve("memory").await.expect("an answer");
    assert_eq!(first.endpoints, vec![endpoint("http://127.0.0.1:9001", 1)]);
    let watcher = discovery.registry().watch("memory").expect("published");

    dns.srv(
        &srv,
        1,
        &[
            (10, 1, 9002, "h2.example.internal."),
            (10, 1, 9003, "h3.example.internal."),
        ],
    )
    .await;
    let started = tokio::time::Instant::now();
    let changed = resolve_until(&discovery, "memory", |e| e.len() == 2).await;
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "followed within the clamped TTL: {:?}",
        started.elapsed()
    );
    assert_eq!(
        changed.endpoints,
        vec![
            endpoint("http://127.0.0.2:9002", 1),
            endpoint("http://127.0.0.3:9003", 1)
        ]
    );
    assert!(
        changed.version > first.version,
        "version grew: {} -> {}",
        first.version,
        changed.version
    );
    assert!(
        watcher.has_changed().unwrap_or(false),
        "watchers were woken"
    );

    // The target's own address changes too.
    dns.a(&format!("h2.{ZONE}"), 1, Ipv4Addr::new(127, 0, 0, 22))
        .await;
    let moved = resolve_until(&discovery, "memory", |e| {
        e.iter().any(|e| e.url == "http://127.0.0.22:9002")
    })
    .await;
    assert!(moved.version > changed.version);

    // An unchanged answer keeps the version.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        discovery.resolve("memory").await.map(|s| s.version),
        Ok(moved.version)
    );

    // The name disappearing (NXDOMAIN) after it was known: no endpoints now.
    dns.zone
        .records_mut()
        .await
        .remove(&RrKey::new(LowerName::new(&name(&srv)), RecordType::SRV));
    let gone = resolve_until(&discovery, "memory", |e| e.is_empty()).await;
    assert!(gone.version > moved.version);
    // ... and back.
    dns.srv(&srv, 1, &[(10, 1, 9001, "h1.example.internal.")])
        .await;
    resolve_until(&discovery, "memory", |e| e.len() == 1).await;
}

#[tokio::test]
async fn the_last_good_set_stays_when_the_server_stops() {
    let mut dns = TestDns::start().await;
    dns.three_hosts(1).await;
    dns.srv(
        &format!("_memory._tcp.{ZONE}"),
        1,
        &[
            (10, 1, 9001, "h1.example.internal."),
            (10, 1, 9002, "h2.example.internal."),
        ],
    )
    .await;

    let discovery = DnsSrvDiscovery::new(config(dns.addr)).expect("valid config");
    let good = discovery.resolve("memory").await.expect("an answer");
    assert_eq!(good.endpoints.len(), 2);
    dns.stop().await;
    // Several refreshes fail meanwhile (TTL 1 s, retry every 200 ms).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let kept = discovery
        .resolve("memory")
        .await
        .expect("the last good set");
    assert_eq!(kept, good);
}

#[tokio::test]
async fn a_server_down_at_start_is_a_backend_error_naming_the_srv_name() {
    // A bound socket that never answers: the server is down, and the port
    // cannot be taken by another test's server meanwhile.
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind UDP");
    let addr = silent.local_addr().expect("address");
    let discovery = DnsSrvDiscovery::new(config(addr)).expect("valid config");
    let started = tokio::time::Instant::now();
    let error = discovery.resolve("memory").await.expect_err("no server");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the query timeout: {:?}",
        started.elapsed()
    );
    match &error {
        DiscoveryError::Backend { service, reason } => {
            assert_eq!(service, "memory");
            assert!(
                reason.contains("_memory._tcp.example.internal."),
                "names the SRV name: {reason}"
            );
            assert!(
                reason.contains(&addr.to_string()),
                "names the nameserver: {reason}"
            );
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(
        discovery.registry().current("memory").is_none(),
        "nothing published"
    );
    drop(silent);
}

#[tokio::test]
async fn nxdomain_is_unknown_and_a_name_without_srv_records_is_empty() {
    let dns = TestDns::start().await;
    // `_empty._tcp` exists (it has a TXT record) but has no SRV records.
    dns.set(
        &format!("_empty._tcp.{ZONE}"),
        RecordType::TXT,
        30,
        vec![RData::TXT(TXT::new(vec!["x".to_string()]))],
    )
    .await;

    let discovery = DnsSrvDiscovery::new(config(dns.addr)).expect("valid config");
    assert_eq!(
        discovery.resolve("nope").await,
        Err(DiscoveryError::Unknown("nope".into())),
        "NXDOMAIN"
    );
    let empty = discovery
        .resolve("empty")
        .await
        .expect("an empty set is an answer");
    assert!(empty.endpoints.is_empty());
    assert!(!discovery.is_healthy("empty").await);
    // A service name that is not one DNS label is not put in the template.
    assert_eq!(
        discovery.resolve("a.b").await,
        Err(DiscoveryError::Unknown("a.b".into()))
    );

    let no_template = DnsSrvDiscovery::new(DnsSrvConfig {
        template: None,
        ..config(dns.addr)
    })
    .expect("valid config");
    assert_eq!(
        no_template.resolve("empty").await,
        Err(DiscoveryError::Unknown("empty".into())),
        "only mapped names"
    );
}

#[tokio::test]
async fn concurrent_first_lookups_share_one_answer() {
    let dns = TestDns::start().await;
    dns.three_hosts(30).await;
    dns.srv(
        &format!("_memory._tcp.{ZONE}"),
        30,
        &[(10, 1, 9001, "h1.example.internal.")],
    )
    .await;
    let discovery = DnsSrvDiscovery::new(config(dns.addr)).expect("valid config");
    let results = futures::future::join_all((0..8).map(|_| discovery.resolve("memory"))).await;
    for result in results {
        assert_eq!(result.map(|s| (s.version, s.endpoints.len())), Ok((1, 1)));
    }
}

#[tokio::test]
async fn dropping_the_discovery_stops_its_refresh_task() {
    let dns = TestDns::start().await;
    dns.three_hosts(1).await;
    dns.srv(
        &format!("_memory._tcp.{ZONE}"),
        1,
        &[(10, 1, 9001, "h1.example.internal.")],
    )
    .await;
    let discovery = DnsSrvDiscovery::new(config(dns.addr)).expect("valid config");
    discovery.resolve("memory").await.expect("an answer");
    let weak = Arc::downgrade(&discovery);
    drop(discovery);
    assert!(
        weak.upgrade().is_none(),
        "the refresh task holds no strong reference"
    );
}

#[test]
fn ttl_clamping() {
    let (min, max) = (Duration::from_millis(200), Duration::from_secs(2));
    assert_eq!(
        clamp_ttl(Duration::ZERO, min, max),
        min,
        "TTL 0 (Consul's default) polls at min_ttl"
    );
    assert_eq!(
        clamp_ttl(Duration::from_secs(1), min, max),
        Duration::from_secs(1)
    );
    assert_eq!(clamp_ttl(Duration::from_secs(3600), min, max), max);
    assert_eq!(clamp_ttl(min, min, max), min);
    assert_eq!(clamp_ttl(max, min, max), max);
}

#[test]
fn invalid_configs_are_rejected() {
    let ns = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);
    let bad = [
        DnsSrvConfig {
            template: Some("_memory._tcp.example.internal".into()),
            ..config(ns)
        },
        DnsSrvConfig {
            names: BTreeMap::from([("memory".into(), "bad..name".into())]),
            ..config(ns)
        },
        DnsSrvConfig {
            names: BTreeMap::from([("memory".into(), String::new())]),
            ..config(ns)
        },
        DnsSrvConfig {
            min_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(1),
            ..config(ns)
        },
        DnsSrvConfig {
            min_ttl: Duration::ZERO,
            ..config(ns)
        },
        DnsSrvConfig {
            query_timeout: Duration::ZERO,
            ..config(ns)
        },
    ];
    for bad_config in bad {
        let result = DnsSrvDiscovery::new(bad_config.clone());
        assert!(
            matches!(result, Err(DiscoveryError::Config(_))),
            "{bad_config:?} should be rejected"
        );
    }
    let defaults = DnsSrvConfig::default();
    assert_eq!(
        (defaults.min_ttl, defaults.max_ttl, defaults.query_timeout),
        (
            Duration::from_secs(5),
            Duration::from_secs(300),
            Duration::from_secs(2)
        )
    );
}
