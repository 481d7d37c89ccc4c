//! DNS SRV discovery: a service name maps to an SRV name, whose records are
//! the service's endpoints, kept current by re-querying when the answer's
//! TTL runs out.
//!
//! ```text
//! _memory._tcp.example.internal. 30 IN SRV 10 60 9000 m1.example.internal.
//! _memory._tcp.example.internal. 30 IN SRV 10 20 9000 m2.example.internal.
//! _memory._tcp.example.internal. 30 IN SRV 20 0  9000 backup.example.internal.
//! m1.example.internal.           30 IN A   10.0.0.5
//! m2.example.internal.           30 IN A   10.0.0.6
//! ```
//!
//! gives `memory` the endpoints `http://10.0.0.5:9000` (weight 60) and
//! `http://10.0.0.6:9000` (weight 20); `backup` is not used while a record of
//! priority 10 yields an address.
//!
//! # Names
//! [`DnsSrvConfig::names`] maps a service to its SRV name; a service that is
//! not in the map uses [`DnsSrvConfig::template`] with `{service}` replaced
//! (only for service names that are one DNS label: letters, digits, `-` and
//! `_`), and without a template it is [`DiscoveryError::Unknown`]. A name
//! without a trailing `.` goes through the resolver's search list as any
//! name does (with the system configuration, that of `/etc/resolv.conf`);
//! end it with `.` to make it absolute.
//!
//! # Answers
//! - **Records**: only those with the lowest priority value are used
//!   (RFC 2782). When none of that priority's targets has an address (the
//!   target name has no A/AAAA records), the next priority is used; this
//!   backend does not fail over on reachability, which is
//!   [`HealthChecked`](crate::HealthChecked)'s job within the set.
//! - **Targets**: each target's addresses come from the answer's additional
//!   section when the server sent them there, otherwise from an A and AAAA
//!   lookup. Each address makes an endpoint `http://{ip}:{port}` (IPv6 in
//!   brackets) carrying the SRV weight in [`Endpoint::weight`] (0 becomes 1;
//!   records that end up at the same URL add their weights). A target of
//!   `.` ("decidedly not available here", RFC 2782) and a target without
//!   addresses are skipped; a target whose lookup *fails* (time-out, server
//!   error) fails the whole lookup, so a transient error never shrinks a set.
//! - **NXDOMAIN** (the SRV name does not exist): on the first lookup of a
//!   service, [`DiscoveryError::Unknown`], since a name that never existed
//!   is most likely a configuration mistake and should say so. Once the
//!   service has had an answer, NXDOMAIN is an authoritative "no instance
//!   now" (CoreDNS answers so for a headless service without ready pods) and
//!   publishes an **empty set**; the set fills again when the name returns.
//! - **No SRV records** at a name that exists (NODATA): an **empty set**,
//!   which the crate treats as a valid answer, not an error.
//! - **Failures** (time-out, SERVFAIL, REFUSED, no server reachable): the
//!   first lookup returns [`DiscoveryError::Backend`] naming the SRV name and
//!   the nameservers, and the next `resolve` tries again; after a good
//!   answer the last good set stays, a warning is logged and the lookup is
//!   retried after `min_ttl`.
//!
//! # Refreshing
//! [`ServiceDiscovery::resolve`] returns the current set from the internal
//! [`Registry`] without any network traffic once a service has been looked
//! up; only the first call for a service waits for DNS (concurrent first
//! calls share one lookup). The first good answer starts one refresh task
//! per service, which re-queries when the answer expires: the smallest TTL
//! among the SRV and address records used (for an empty answer, the SOA's
//! negative TTL), clamped to `[min_ttl, max_ttl]` by [`clamp_ttl`]. Every
//! query is bounded by `query_timeout`. The tasks hold only a weak
//! reference and are aborted when the discovery is dropped. Versions grow
//! only when the set changes, so [`DnsSrvDiscovery::registry`] watchers wake
//! only on real changes.
//!
//! # Kubernetes
//! A headless service (`clusterIP: None`) with a *named* port publishes
//! `_<port-name>._<protocol>.<service>.<namespace>.svc.cluster.local`, one
//! SRV record per ready pod, with the pods' A records in the additional
//! section, so each replica becomes an endpoint. For services named like
//! their Kubernetes Service, with a port named `http`, in namespace `cortex`:
//! `template: Some("_http._tcp.{service}.cortex.svc.cluster.local.".into())`
//! (`{service}` is replaced everywhere it occurs). CoreDNS's default TTL is
//! 5 s, the default `min_ttl`. A ClusterIP (non-headless) service has one
//! SRV record pointing at the virtual IP: that works too, but leaves
//! balancing to kube-proxy. Leave `nameservers` empty to use the pod's
//! resolver (`/etc/resolv.conf`).
//!
//! # Consul
//! Consul's DNS interface answers `_<service>._tcp.service.consul` (and
//! `<service>.service.consul`) with one SRV record per *healthy* instance,
//! targets being node or address names with A records in the additional
//! section: `template: Some("_{service}._tcp.service.consul.".into())`, and
//! point `nameservers` at the agent's DNS port (`127.0.0.1:8600`) unless the
//! system resolver forwards `.consul`. Consul's default service TTL is 0,
//! which `min_ttl` turns into a poll every 5 s.
//!
//! # Example
//! ```no_run
//! use cortex_discovery::{DnsSrvConfig, DnsSrvDiscovery, ServiceDiscovery};
//! # async fn run() -> Result<(), cortex_discovery::DiscoveryError> {
//! let discovery = DnsSrvDiscovery::new(DnsSrvConfig {
//!     nameservers: vec!["127.0.0.1:8600".parse().expect("an address")],
//!     template: Some("_{service}._tcp.service.consul.".into()),
//!     ..DnsSrvConfig::default()
//! })?;
//! let set = discovery.resolve("memory").await?;
//! println!("{} endpoints, version {}", set.endpoints.len(), set.version);
//! # Ok(())
//! # }
//! ```

use cortex_resilience::human::HumanDuration;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::task::AbortHandle;

use crate::endpoint::{Endpoint, EndpointSet, Protocol};
use crate::registry::Registry;
use crate::{DiscoveryError, ServiceDiscovery};

/// How to find services in DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSrvConfig {
    /// The nameservers to ask (UDP, with TCP for truncated answers); empty
    /// means the system resolver configuration (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Service name to SRV name, such as `memory` to
    /// `_memory._tcp.example.internal`.
    pub names: BTreeMap<String, String>,
    /// SRV name for services not in [`names`](Self::names), with `{service}`
    /// replaced, such as `_{service}._tcp.cluster.local`; `None` means only
    /// mapped services are known.
    pub template: Option<String>,
    /// Shortest time an answer is kept before it is asked again (also the
    /// retry delay after a failure); at least 1 ms. Default 5 s.
    pub min_ttl: Duration,
    /// Longest time an answer is kept before it is asked again, whatever its
    /// TTL. Default 300 s.
    pub max_ttl: Duration,
    /// Bound on each DNS query (the SRV query, each target's address
    /// lookup). Default 2 s.
    pub query_timeout: Duration,
    /// The protocol of the endpoints found. Default [`Protocol::Cortex`].
    pub protocol: Protocol,
}

impl Default for DnsSrvConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            names: BTreeMap::new(),
            template: None,
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
            query_timeout: Duration::from_secs(2),
            protocol: Protocol::Cortex,
        }
    }
}

/// How long to keep an answer whose smallest TTL is `ttl`: `ttl` clamped to
/// `[min, max]` (`max` wins should `min` exceed it; never panics).
pub fn clamp_ttl(ttl: Duration, min: Duration, max: Duration) -> Duration {
    ttl.max(min).min(max)
}

/// What one lookup of an SRV name found.
#[derive(Debug)]
enum Answer {
    /// The name exists: these endpoints (possibly none), valid for `ttl`
    /// (not clamped yet).
    Found {
        endpoints: Vec<Endpoint>,
        ttl: Duration,
    },
    /// NXDOMAIN, with the negative TTL when the server gave one.
    NoSuchName { ttl: Option<Duration> },
}

/// The first lookup of a service, shared by the callers that arrive while
/// it runs: the first takes the lock and leaves its result for the others.
type Gate = Arc<tokio::sync::Mutex<Option<Result<Arc<EndpointSet>, DiscoveryError>>>>;

/// Discovery from DNS SRV records, refreshed by TTL. See the [module
/// documentation](self) for the semantics.
#[derive(Debug)]
pub struct DnsSrvDiscovery {
    me: Weak<DnsSrvDiscovery>,
    resolver: TokioResolver,
    /// The nameservers, for error messages.
    nameservers: String,
    names: BTreeMap<String, Name>,
    template: Option<String>,
    min_ttl: Duration,
    max_ttl: Duration,
    query_timeout: Duration,
    protocol: Protocol,
    registry: Registry,
    first_lookups: Mutex<HashMap<String, Gate>>,
    refreshers: Mutex<HashMap<String, AbortHandle>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn config_error(message: impl Into<String>) -> DiscoveryError {
    DiscoveryError::Config(message.into())
}

/// Whether `service` can stand for `{service}` in a template: one DNS
/// label, so it cannot add labels or change the name's meaning.
fn is_label(service: &str) -> bool {
    !service.is_empty()
        && service.len() <= 63
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_name(text: &str, what: &str) -> Result<Name, DiscoveryError> {
    if text.trim().is_empty() {
        return Err(config_error(format!("{what} is empty")));
    }
    Name::from_ascii(text)
        .map_err(|e| config_error(format!("{what} `{text}` is not a DNS name: {e}")))
}

fn describe_nameservers(config: &ResolverConfig) -> String {
    let mut servers: Vec<String> = Vec::new();
    for server in config.name_servers() {
        let port = server.connections.first().map(|c| c.port).unwrap_or(53);
        let addr = SocketAddr::new(server.ip, port).to_string();
        if !servers.contains(&addr) {
            servers.push(addr);
        }
    }
    if servers.is_empty() {
        "no nameserver".to_string()
    } else {
        servers.join(", ")
    }
}

fn secs(ttl: u32) -> Duration {
    Duration::from_secs(u64::from(ttl))
}

impl DnsSrvDiscovery {
    /// Checks `config` ([`DiscoveryError::Config`] for an SRV name or
    /// template that is not a DNS name, a template without `{service}`, a
    /// zero `min_ttl` or `query_timeout`, `min_ttl` above `max_ttl`, or an
    /// unreadable system resolver configuration) and builds the discovery.
    /// No query is sent until the first [`resolve`](ServiceDiscovery::resolve).
    pub fn new(config: DnsSrvConfig) -> Result<Arc<Self>, DiscoveryError> {
        if config.min_ttl.is_zero() {
            return Err(config_error("min_ttl must be positive"));
        }
        if config.min_ttl > config.max_ttl {
            return Err(config_error(format!(
                "min_ttl ({}) is above max_ttl ({})",
                HumanDuration(config.min_ttl),
                HumanDuration(config.max_ttl)
            )));
        }
        if config.query_timeout.is_zero() {
            return Err(config_error("query_timeout must be positive"));
        }
        let mut names = BTreeMap::new();
        for (service, srv) in &config.names {
            if service.is_empty() {
                return Err(config_error("a service name in `names` is empty"));
            }
            names.insert(
                service.clone(),
                parse_name(srv, &format!("SRV name of `{service}`"))?,
            );
        }
        if let Some(template) = &config.template {
            if !template.contains("{service}") {
                return Err(config_error(format!(
                    "SRV name template `{template}` has no `{{service}}`"
                )));
            }
            parse_name(
                &template.replace("{service}", "service"),
                "SRV name template",
            )?;
        }

        let (resolver_config, mut options) = if config.nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                config_error(format!(
                    "cannot read the system resolver configuration: {e}"
                ))
            })?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
            )
        };
        let nameservers = describe_nameservers(&resolver_config);
        // Each query is bounded by `query_timeout` from outside; inside it
        // the resolver gets two tries, so one lost UDP packet is retried.
        options.timeout = (config.query_timeout / 2).max(Duration::from_millis(50));
        options.attempts = 2;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // The resolver's own cache: refreshes clear the entries they are
        // about to ask for, so it only throttles repeated first lookups of
        // unknown names, for at most `min_ttl`.
        options.negative_max_ttl = Some(config.min_ttl);
        let resolver =
            TokioResolver::builder_with_config(resolver_config, TokioRuntimeProvider::default())
                .with_options(options)
                .build()
                .map_err(|e| config_error(format!("cannot build the DNS resolver: {e}")))?;

        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            resolver,
            nameservers,
            names,
            template: config.template,
            min_ttl: config.min_ttl,
            max_ttl: config.max_ttl,
            query_timeout: config.query_timeout,
            protocol: config.protocol,
            registry: Registry::new(),
            first_lookups: Mutex::new(HashMap::new()),
            refreshers: Mutex::new(HashMap::new()),
        }))
    }

    /// The registry the lookups publish into, for watching.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The SRV name `service` is looked up under, if it has one.
    pub fn srv_name(&self, service: &str) -> Option<String> {
        self.srv_name_of(service).map(|name| name.to_string())
    }

    fn srv_name_of(&self, service: &str) -> Option<Name> {
        if let Some(name) = self.names.get(service) {
            return Some(name.clone());
        }
        let template = self.template.as_ref()?;
        if !is_label(service) {
            tracing::debug!(%service, "service name is not one DNS label; not expanding the SRV template");
            return None;
        }
        Name::from_ascii(template.replace("{service}", service)).ok()
    }

    fn clamp(&self, ttl: Duration) -> Duration {
        clamp_ttl(ttl, self.min_ttl, self.max_ttl)
    }

    /// Runs `future` within `query_timeout`, as a readable error.
    async fn bounded<T>(
        &self,
        what: impl FnOnce() -> String,
        future: impl Future<Output = Result<T, NetError>>,
    ) -> Result<Result<T, NetError>, String> {
        tokio::time::timeout(self.query_timeout, future)
            .await
            .map_err(|_| {
                format!(
                    "{} via {} timed out after {}",
                    what(),
                    self.nameservers,
                    HumanDuration(self.query_timeout)
                )
            })
    }

    /// Looks `srv` up. With `fresh`, cached answers are dropped first (a
    /// refresh must ask the server).
    async fn lookup(&self, srv: &Name, fresh: bool) -> Result<Answer, String> {
        if fresh {
            self.resolver
                .clear_lookup_cache(srv.clone(), RecordType::SRV);
        }
        let what = || format!("SRV lookup of `{srv}`");
        let lookup = match self
            .bounded(what, self.resolver.srv_lookup(srv.clone()))
            .await?
        {
            Ok(lookup) => lookup,
            Err(NetError::Dns(DnsError::NoRecordsFound(none))) => {
                let ttl = none.negative_ttl.map(secs);
                return Ok(
                    if none.response_code == hickory_resolver::proto::op::ResponseCode::NXDomain {
                        Answer::NoSuchName { ttl }
                    } else {
                        Answer::Found {
                            endpoints: Vec::new(),
                            ttl: ttl.unwrap_or(self.min_ttl),
                        }
                    },
                );
            }
            Err(error) => {
                return Err(format!(
                    "{} via {} failed: {error}",
                    what(),
                    self.nameservers
                ));
            }
        };

        let mut ttl: Option<u32> = None;
        let mut by_priority: BTreeMap<u16, Vec<(Name, u16, u16)>> = BTreeMap::new();
        for record in lookup.answers() {
            if let RData::SRV(srv_record) = &record.data {
                ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
                if srv_record.target.is_root() {
                    continue;
                }
                by_priority.entry(srv_record.priority).or_default().push((
                    srv_record.target.clone(),
                    srv_record.port,
                    srv_record.weight,
                ));
            }
        }
        let glue: Vec<(&Name, IpAddr, u32)> = lookup
            .additionals()
            .iter()
            .filter_map(|r| r.data.ip_addr().map(|ip| (&r.name, ip, r.ttl)))
            .collect();

        for (priority, records) in by_priority {
            let mut targets: Vec<&Name> = Vec::new();
            for (target, _, _) in &records {
                if !targets.contains(&target) {
                    targets.push(target);
                }
            }
            let resolved = futures::future::join_all(
                targets
                    .iter()
                    .map(|target| self.addresses(srv, target, &glue, fresh)),
            )
            .await;
            let mut addresses: Vec<(&Name, Vec<IpAddr>)> = Vec::new();
            for (target, result) in targets.iter().copied().zip(resolved) {
                let (ips, address_ttl) = result?;
                if let Some(address_ttl) = address_ttl {
                    ttl = Some(ttl.map_or(address_ttl, |t| t.min(address_ttl)));
                }
                addresses.push((target, ips));
            }
            let mut weights: BTreeMap<String, u32> = BTreeMap::new();
            for (target, port, weight) in &records {
                let ips = addresses
                    .iter()
                    .find(|(t, _)| *t == target)
                    .map(|(_, ips)| ips.as_slice())
                    .unwrap_or(&[]);
                for ip in ips {
                    let url = format!("http://{}", SocketAddr::new(*ip, *port));
                    let total = weights.entry(url).or_insert(0);
                    *total = total.saturating_add(u32::from(*weight).max(1));
                }
            }
            if weights.is_empty() {
                tracing::debug!(srv = %srv, priority, "no target of this priority has an address; trying the next priority");
                continue;
            }
            let endpoints = weights
                .into_iter()
                .map(|(url, weight)| {
                    let mut endpoint = Endpoint::new(url).with_protocol(self.protocol);
                    endpoint.weight = weight;
                    endpoint
                })
                .collect();
            return Ok(Answer::Found {
                endpoints,
                ttl: secs(ttl.unwrap_or(0)),
            });
        }
        Ok(Answer::Found {
            endpoints: Vec::new(),
            ttl: ttl.map(secs).unwrap_or(self.min_ttl),
        })
    }

    /// The addresses of `target` and their smallest TTL: from `glue` (the
    /// SRV answer's additional section) when it has them, else looked up. A
    /// target without addresses gives none; a failed lookup is an error.
    async fn addresses(
        &self,
        srv: &Name,
        target: &Name,
        glue: &[(&Name, IpAddr, u32)],
        fresh: bool,
    ) -> Result<(Vec<IpAddr>, Option<u32>), String> {
        let mut ips = Vec::new();
        let mut ttl: Option<u32> = None;
        for (name, ip, record_ttl) in glue {
            if *name == target {
                ips.push(*ip);
                ttl = Some(ttl.map_or(*record_ttl, |t| t.min(*record_ttl)));
            }
        }
        if !ips.is_empty() {
            return Ok((ips, ttl));
        }
        if fresh {
            self.resolver
                .clear_lookup_cache(target.clone(), RecordType::A);
            self.resolver
                .clear_lookup_cache(target.clone(), RecordType::AAAA);
        }
        let what = || format!("address lookup of `{target}` (target of SRV `{srv}`)");
        match self
            .bounded(what, self.resolver.lookup_ip(target.clone()))
            .await?
        {
            Ok(lookup) => {
                for record in lookup.as_lookup().answers() {
                    if let Some(ip) = record.data.ip_addr() {
                        ips.push(ip);
                        ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
                    }
                }
                Ok((ips, ttl))
            }
            Err(error) if error.is_no_records_found() => {
                tracing::warn!(srv = %srv, target = %target, "SRV target has no A/AAAA records; skipping it");
                Ok((Vec::new(), None))
            }
            Err(error) => Err(format!(
                "{} via {} failed: {error}",
                what(),
                self.nameservers
            )),
        }
    }

    /// The first lookup of `service`: publishes and starts refreshing on an
    /// answer.
    async fn first_lookup(
        &self,
        service: &str,
        srv: Name,
    ) -> Result<Arc<EndpointSet>, DiscoveryError> {
        match self.lookup(&srv, false).await {
            Ok(Answer::Found { endpoints, ttl }) => {
                let set = self.registry.publish(service, endpoints);
                tracing::debug!(%service, srv = %srv, version = set.version, endpoints = set.endpoints.len(), "DNS SRV answer");
                self.start_refresh(service, srv, self.clamp(ttl));
                Ok(set)
            }
            Ok(Answer::NoSuchName { .. }) => {
                tracing::debug!(%service, srv = %srv, "SRV name does not exist (NXDOMAIN)");
                Err(DiscoveryError::Unknown(service.to_string()))
            }
            Err(reason) => Err(DiscoveryError::Backend {
                service: service.to_string(),
                reason,
            }),
        }
    }

    fn start_refresh(&self, service: &str, srv: Name, delay: Duration) {
        let mut refreshers = lock(&self.refreshers);
        if refreshers.contains_key(service) {
            return;
        }
        let task = tokio::spawn(refresh_loop(
            self.me.clone(),
            service.to_string(),
            srv,
            delay,
        ));
        refreshers.insert(service.to_string(), task.abort_handle());
    }

    /// One refresh of `service`; returns the delay until the next.
    async fn refresh(&self, service: &str, srv: &Name) -> Duration {
        match self.lookup(srv, true).await {
            Ok(Answer::Found { endpoints, ttl }) => {
                let set = self.registry.publish(service, endpoints);
                tracing::debug!(%service, srv = %srv, version = set.version, endpoints = set.endpoints.len(), "DNS SRV refreshed");
                self.clamp(ttl)
            }
            Ok(Answer::NoSuchName { ttl }) => {
                let set = self.registry.publish(service, Vec::new());
                tracing::info!(%service, srv = %srv, version = set.version, "SRV name no longer exists (NXDOMAIN); no endpoints now");
                self.clamp(ttl.unwrap_or(self.min_ttl))
            }
            Err(reason) => {
                tracing::warn!(%service, srv = %srv, %reason, retry_in = ?self.min_ttl, "DNS SRV refresh failed; keeping the last good set");
                self.min_ttl
            }
        }
    }
}

async fn refresh_loop(
    discovery: Weak<DnsSrvDiscovery>,
    service: String,
    srv: Name,
    mut delay: Duration,
) {
    loop {
        tokio::time::sleep(delay).await;
        let Some(discovery) = discovery.upgrade() else {
            return;
        };
        delay = discovery.refresh(&service, &srv).await;
    }
}

impl Drop for DnsSrvDiscovery {
    fn drop(&mut self) {
        for task in lock(&self.refreshers).values() {
            task.abort();
        }
    }
}

#[async_trait]
impl ServiceDiscovery for DnsSrvDiscovery {
    async fn resolve(&self, service: &str) -> Result<Arc<EndpointSet>, DiscoveryError> {
        if let Some(set) = self.registry.current(service) {
            return Ok(set);
        }
        let srv = self
            .srv_name_of(service)
            .ok_or_else(|| DiscoveryError::Unknown(service.to_string()))?;
        let gate = lock(&self.first_lookups)
            .entry(service.to_string())
            .or_default()
            .clone();
        let mut shared = gate.lock().await;
        if let Some(result) = shared.as_ref() {
            return result.clone();
        }
        if let Some(set) = self.registry.current(service) {
            return Ok(set);
        }
        let result = self.first_lookup(service, srv).await;
        *shared = Some(result.clone());
        {
            let mut first_lookups = lock(&self.first_lookups);
            if first_lookups
                .get(service)
                .is_some_and(|g| Arc::ptr_eq(g, &gate))
            {
                first_lookups.remove(service);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_clamping() {
        assert!(is_label("memory"));
        assert!(is_label("search_v2-eu"));
        assert!(!is_label("a.b"));
        assert!(!is_label(""));
        assert!(!is_label(&"x".repeat(64)));
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(300));
        assert_eq!(clamp_ttl(Duration::ZERO, min, max), min);
        assert_eq!(
            clamp_ttl(Duration::from_secs(30), min, max),
            Duration::from_secs(30)
        );
        assert_eq!(clamp_ttl(Duration::from_secs(86_400), min, max), max);
        assert_eq!(
            clamp_ttl(Duration::from_secs(1), max, min),
            min,
            "an inverted range does not panic"
        );
    }
}
