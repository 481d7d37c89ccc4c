//! The etcd client side ([`EtcdDiscovery`]) and the service side
//! ([`EtcdRegistration`]); see the parent module for how both behave.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use cortex_resilience::backoff::Jitter;
use cortex_resilience::reconnect::{Reconnect, ReconnectPolicy};
use etcd_client::{
    Client, ConnectOptions, Event, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, WatchOptions,
};
use tokio::task::{AbortHandle, JoinHandle};

use super::EtcdConfig;
use crate::endpoint::{Endpoint, EndpointSet};
use crate::registry::Registry;
use crate::{DiscoveryError, ServiceDiscovery};

/// How the watch and the lease keep-alive come back after etcd fails:
/// 100 ms doubling to 5 s, full jitter so that the clients of a restarted
/// etcd do not all return at once, and never giving up (etcd is the source
/// of truth; the last good endpoint sets serve meanwhile). Checked when the
/// crate is built.
const RECONNECT: ReconnectPolicy = match ReconnectPolicy::try_new(
    Duration::from_millis(100),
    2.0,
    Duration::from_secs(5),
    Jitter::Full,
) {
    Ok(policy) => policy,
    Err(_) => panic!("the etcd reconnect policy is valid"),
};

/// The wait before the next attempt. [`RECONNECT`] has no attempt limit, so
/// there always is one; the cap stands in should that ever change, never a
/// busy loop.
fn next_delay(reconnect: &mut Reconnect) -> Duration {
    reconnect
        .next_delay(None)
        .unwrap_or(reconnect.policy().backoff().max)
}

/// HTTP/2 ping interval on the etcd connection; it is what notices a dead
/// etcd under a watch or keep-alive stream that is otherwise silent. etcd
/// refuses pings more often than every 5 s by default.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// Runs one etcd call under the timeout, turning both failures into text.
async fn bounded<T>(
    timeout: Duration,
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("{what}: {error}")),
        Err(_) => Err(format!(
            "{what}: no answer within {}",
            cortex_resilience::human::HumanDuration(timeout)
        )),
    }
}

/// A client for the members of `config` (connecting is lazy in the etcd
/// client: an unreachable etcd shows on the first call).
async fn connect_client(config: &EtcdConfig) -> Result<Client, String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_keep_alive(PING_INTERVAL, config.connect_timeout);
    bounded(
        config.connect_timeout,
        "cannot connect",
        Client::connect(config.endpoints.clone(), Some(options)),
    )
    .await
}

/// `(service, instance)` of a key under `prefix`, if it has that shape.
fn split_key<'k>(prefix: &str, key: &'k [u8]) -> Option<(&'k str, &'k str)> {
    let key = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    let (service, instance) = key.split_once('/')?;
    (!service.is_empty() && !instance.is_empty()).then_some((service, instance))
}

/// The endpoint stored in a value, checked and normalised.
fn parse_endpoint(value: &[u8]) -> Result<Endpoint, String> {
    let stored: Endpoint =
        serde_json::from_slice(value).map_err(|e| format!("not a JSON endpoint: {e}"))?;
    let mut endpoint = Endpoint::new(stored.url).with_protocol(stored.protocol);
    endpoint.weight = stored.weight.max(1);
    endpoint.validate()?;
    Ok(endpoint)
}

/// Service → instance id → endpoint: what the prefix holds now.
type Services = BTreeMap<String, BTreeMap<String, Endpoint>>;

/// Discovery from an etcd prefix, kept current by a watch.
pub struct EtcdDiscovery {
    config: EtcdConfig,
    client: Client,
    registry: Registry,
    state: Mutex<Services>,
    relists: AtomicU64,
    watch_task: Mutex<Option<AbortHandle>>,
}

impl fmt::Debug for EtcdDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdDiscovery")
            .field("config", &self.config)
            .field("registry", &self.registry)
            .field("relists", &self.relists())
            .finish_non_exhaustive()
    }
}

impl EtcdDiscovery {
    /// Lists the prefix and starts watching it. Fails with
    /// [`DiscoveryError::Backend`] naming the etcd members when etcd does not
    /// answer, and with [`DiscoveryError::Config`] for a bad configuration.
    pub async fn connect(config: EtcdConfig) -> Result<Arc<Self>, DiscoveryError> {
        Self::start(config, None).await
    }

    /// For tests of the recovery path only: lists the prefix now but watches
    /// from `start_revision`, as a watch that fell behind would. When that
    /// revision was compacted, etcd cancels the watch and the discovery takes
    /// the compaction path (back off, re-list, re-watch).
    #[doc(hidden)]
    pub async fn connect_with_watch_start(
        config: EtcdConfig,
        start_revision: i64,
    ) -> Result<Arc<Self>, DiscoveryError> {
        Self::start(config, Some(start_revision)).await
    }

    async fn start(
        config: EtcdConfig,
        watch_start: Option<i64>,
    ) -> Result<Arc<Self>, DiscoveryError> {
        let config = config.checked()?;
        let failed = |reason: String| DiscoveryError::Backend {
            service: format!("{}*", config.prefix),
            reason: format!("etcd at {}: {reason}", config.members()),
        };
        let client = connect_client(&config).await.map_err(failed)?;
        let discovery = Arc::new(Self {
            config: config.clone(),
            client,
            registry: Registry::new(),
            state: Mutex::new(Services::new()),
            relists: AtomicU64::new(0),
            watch_task: Mutex::new(None),
        });
        let (revision, services) = discovery.list().await.map_err(failed)?;
        discovery.apply_list(services);
        tracing::info!(etcd = %config.members(), prefix = %config.prefix, revision, services = discovery.registry.names().len(), "etcd discovery listed");
        let task = tokio::spawn(watch_loop(
            Arc::downgrade(&discovery),
            discovery.client.clone(),
            config,
            watch_start.unwrap_or(revision + 1),
        ));
        *discovery
            .watch_task
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        Ok(discovery)
    }

    /// The registry the discovery publishes into, for watching.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The configuration in use (prefix normalised).
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// How many times the prefix was listed again after a broken watch
    /// (compaction, cancellation, lost connection); the initial list is not
    /// counted.
    pub fn relists(&self) -> u64 {
        self.relists.load(Ordering::Relaxed)
    }

    /// Reads the whole prefix: its revision and the services in it.
    async fn list(&self) -> Result<(i64, Services), String> {
        let prefix = &self.config.prefix;
        let mut kv = self.client.kv_client();
        let what = format!("cannot list `{prefix}`");
        let response = bounded(
            self.config.connect_timeout,
            &what,
            kv.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| format!("{what}: answer without a header"))?;
        let mut services = Services::new();
        for kv in response.kvs() {
            let Some((service, instance)) = split_key(prefix, kv.key()) else {
                tracing::debug!(key = %String::from_utf8_lossy(kv.key()), "ignoring a key that is not {{prefix}}{{service}}/{{instance}}");
                continue;
            };
            match parse_endpoint(kv.value()) {
                Ok(endpoint) => {
                    services
                        .entry(service.to_string())
                        .or_default()
                        .insert(instance.to_string(), endpoint);
                }
                Err(reason) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), %reason, "ignoring a bad endpoint in etcd")
                }
            }
        }
        Ok((revision, services))
    }

    /// Replaces the whole state by a fresh list; services that vanished are
    /// published as empty sets.
    fn apply_list(&self, services: Services) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: BTreeSet<String> = self.registry.names().into_iter().collect();
        names.extend(services.keys().cloned());
        *state = services;
        for name in names {
            self.publish(&state, &name);
        }
    }

    /// Applies the events of one watch response.
    fn apply_events(&self, events: &[Event]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut touched = BTreeSet::new();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let Some((service, instance)) = split_key(&self.config.prefix, kv.key()) else {
                tracing::debug!(key = %String::from_utf8_lossy(kv.key()), "ignoring a key that is not {{prefix}}{{service}}/{{instance}}");
                continue;
            };
            let endpoint = match event.event_type() {
                EventType::Put => match parse_endpoint(kv.value()) {
                    Ok(endpoint) => Some(endpoint),
                    Err(reason) => {
                        tracing::warn!(key = %String::from_utf8_lossy(kv.key()), %reason, "ignoring a bad endpoint in etcd");
                        None
                    }
                },
                EventType::Delete => None,
            };
            match endpoint {
                Some(endpoint) => {
                    state
                        .entry(service.to_string())
                        .or_default()
                        .insert(instance.to_string(), endpoint);
                }
                None => {
                    if let Some(instances) = state.get_mut(service) {
                        instances.remove(instance);
                        if instances.is_empty() {
                            state.remove(service);
                        }
                    }
                }
            }
            touched.insert(service.to_string());
        }
        for name in touched {
            self.publish(&state, &name);
        }
    }

    fn publish(&self, state: &Services, service: &str) {
        let endpoints: Vec<Endpoint> = state
            .get(service)
            .map(|i| i.values().cloned().collect())
            .unwrap_or_default();
        let set = self.registry.publish(service, endpoints);
        tracing::debug!(
            service,
            version = set.version,
            endpoints = set.endpoints.len(),
            "etcd discovery published"
        );
    }
}

impl Drop for EtcdDiscovery {
    fn drop(&mut self) {
        if let Some(task) = self
            .watch_task
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

#[async_trait]
impl ServiceDiscovery for EtcdDiscovery {
    async fn resolve(&self, service: &str) -> Result<Arc<EndpointSet>, DiscoveryError> {
        self.registry
            .current(service)
            .ok_or_else(|| DiscoveryError::Unknown(service.to_string()))
    }
}

/// Watches from `start`, and after every break backs off, re-lists and
/// watches again, until the discovery is dropped.
async fn watch_loop(
    discovery: Weak<EtcdDiscovery>,
    client: Client,
    config: EtcdConfig,
    mut start: i64,
) {
    let mut reconnect = Reconnect::new(RECONNECT);
    loop {
        let Some(reason) =
            watch_until_broken(&discovery, &client, &config, start, &mut reconnect).await
        else {
            return;
        };
        tracing::warn!(etcd = %config.members(), prefix = %config.prefix, %reason, "etcd watch broken; will list again");
        let mut delay = next_delay(&mut reconnect);
        loop {
            tokio::time::sleep(delay).await;
            let Some(discovery) = discovery.upgrade() else {
                return;
            };
            match discovery.list().await {
                Ok((revision, services)) => {
                    discovery.apply_list(services);
                    discovery.relists.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(prefix = %config.prefix, revision, "etcd prefix listed again; watching from there");
                    start = revision + 1;
                    break;
                }
                Err(reason) => {
                    delay = next_delay(&mut reconnect);
                    tracing::warn!(
                        etcd = %config.members(), %reason, retry_in = ?delay,
                        "etcd unreachable; keeping the last good endpoint sets"
                    );
                }
            }
        }
    }
}

/// One watch from `start`: applies its events until it breaks, and says why;
/// `None` when the discovery was dropped.
async fn watch_until_broken(
    discovery: &Weak<EtcdDiscovery>,
    client: &Client,
    config: &EtcdConfig,
    start: i64,
    reconnect: &mut Reconnect,
) -> Option<String> {
    let mut watch_client = client.watch_client();
    let options = WatchOptions::new().with_prefix().with_start_revision(start);
    let open = watch_client.watch(config.prefix.as_str(), Some(options));
    let mut stream = match bounded(config.connect_timeout, "cannot open the watch", open).await {
        Ok(stream) => stream,
        Err(reason) => return Some(reason),
    };
    loop {
        let message = stream.message().await;
        let discovery = discovery.upgrade()?;
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return Some("the watch stream ended".into()),
            Err(error) => return Some(format!("the watch stream failed: {error}")),
        };
        if response.compact_revision() != 0 {
            return Some(format!(
                "revision {start} was compacted (oldest kept: {}); events were lost",
                response.compact_revision()
            ));
        }
        if response.canceled() {
            return Some(format!(
                "etcd canceled the watch: {}",
                response.cancel_reason()
            ));
        }
        if response.created() {
            reconnect.reset();
            tracing::debug!(prefix = %config.prefix, start, "etcd watch open");
        }
        discovery.apply_events(response.events());
    }
}

/// A service instance registered in etcd under a lease that a task keeps
/// alive. Dropping it stops the keep-alives (the key then goes when the lease
/// expires); [`EtcdRegistration::deregister`] removes the key at once.
pub struct EtcdRegistration {
    service: String,
    key: String,
    client: Client,
    timeout: Duration,
    lease: Arc<Mutex<Option<i64>>>,
    task: JoinHandle<()>,
}

impl fmt::Debug for EtcdRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistration")
            .field("service", &self.service)
            .field("key", &self.key)
            .field("lease", &self.lease_id())
            .finish_non_exhaustive()
    }
}

impl EtcdRegistration {
    /// Puts `endpoint` at `{prefix}{service}/{random instance id}` under a
    /// lease of `ttl` (whole seconds, rounded up; etcd may raise a very short
    /// TTL to its minimum, about 2 s by default) and keeps the lease alive
    /// every `ttl / 3`. Fails with [`DiscoveryError::Backend`] when etcd does
    /// not answer, [`DiscoveryError::Config`] for a bad name, endpoint or
    /// configuration.
    pub async fn register(
        config: EtcdConfig,
        service: &str,
        endpoint: Endpoint,
        ttl: Duration,
    ) -> Result<Self, DiscoveryError> {
        let config = config.checked()?;
        if service.is_empty() || service.contains(['/', ' ']) {
            return Err(DiscoveryError::Config(format!(
                "`{service}` is not a service name for etcd (empty, or has `/` or a space)"
            )));
        }
        endpoint.validate().map_err(DiscoveryError::Config)?;
        if ttl.is_zero() {
            return Err(DiscoveryError::Config(
                "the lease TTL must be positive".into(),
            ));
        }
        let ttl_secs = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1);
        let value = serde_json::to_vec(&endpoint)
            .map_err(|e| DiscoveryError::Config(format!("cannot encode the endpoint: {e}")))?;
        let key = format!("{}{service}/{:016x}", config.prefix, fastrand::u64(..));
        let failed = |reason: String| DiscoveryError::Backend {
            service: service.to_string(),
            reason: format!("cannot register in etcd at {}: {reason}", config.members()),
        };
        let client = connect_client(&config).await.map_err(failed)?;
        let lease = Arc::new(Mutex::new(None));
        let keeper = KeepAlive {
            client: client.clone(),
            key: key.clone(),
            value,
            ttl_secs,
            interval: (ttl / 3).max(Duration::from_millis(50)),
            timeout: config.connect_timeout,
            lease: lease.clone(),
        };
        keeper.grant_and_put().await.map_err(failed)?;
        tracing::info!(service, %key, url = %endpoint.url, ttl_secs, "registered in etcd");
        let task = tokio::spawn(keeper.run());
        Ok(Self {
            service: service.to_string(),
            key,
            client,
            timeout: config.connect_timeout,
            lease,
            task,
        })
    }

    /// The etcd key of this instance.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The lease now holding the key; `None` while a lost lease is being
    /// replaced.
    pub fn lease_id(&self) -> Option<i64> {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the keep-alives and revokes the lease, which removes the key at
    /// once (graceful shutdown). A lease that etcd no longer knows counts as
    /// revoked; when etcd cannot be reached the error says so, and the key
    /// still goes when the lease expires.
    pub async fn deregister(mut self) -> Result<(), DiscoveryError> {
        self.task.abort();
        // The task ends at its next await; waiting for it means no re-grant
        // can race the revoke. Its result is only the cancellation.
        let _ = (&mut self.task).await;
        let Some(lease) = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            tracing::info!(service = %self.service, key = %self.key, "deregistered (the lease was already lost)");
            return Ok(());
        };
        let mut leases = self.client.lease_client();
        match bounded(
            self.timeout,
            "cannot revoke the lease",
            leases.revoke(lease),
        )
        .await
        {
            Ok(_) => {
                tracing::info!(service = %self.service, key = %self.key, "deregistered from etcd");
                Ok(())
            }
            Err(reason) if reason.contains("lease not found") => {
                tracing::info!(service = %self.service, key = %self.key, "deregistered (the lease had expired)");
                Ok(())
            }
            Err(reason) => Err(DiscoveryError::Backend {
                service: self.service.clone(),
                reason: format!("{reason}; `{}` goes when its lease expires", self.key),
            }),
        }
    }
}

impl Drop for EtcdRegistration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the keep-alive task owns.
struct KeepAlive {
    client: Client,
    key: String,
    value: Vec<u8>,
    ttl_secs: i64,
    interval: Duration,
    timeout: Duration,
    lease: Arc<Mutex<Option<i64>>>,
}

/// Why a keep-alive stream stopped.
enum KeepEnd {
    /// etcd no longer knows the lease: grant a new one.
    Lost,
    /// The stream broke: open a new one for the same lease.
    Broken(String),
}

impl KeepAlive {
    fn set_lease(&self, lease: Option<i64>) {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner()) = lease;
    }

    /// Grants a lease and puts the key under it. The lease is recorded as soon
    /// as it exists, so that a deregistration revokes it.
    async fn grant_and_put(&self) -> Result<i64, String> {
        let mut leases = self.client.lease_client();
        let lease = bounded(
            self.timeout,
            "cannot grant a lease",
            leases.grant(self.ttl_secs, None),
        )
        .await?
        .id();
        self.set_lease(Some(lease));
        let mut kv = self.client.kv_client();
        let put = kv.put(
            self.key.as_str(),
            self.value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        );
        if let Err(reason) = bounded(self.timeout, "cannot put the key", put).await {
            self.set_lease(None);
            // Best effort: an unused lease expires by itself anyway.
            let _ = bounded(
                self.timeout,
                "cannot revoke the unused lease",
                leases.revoke(lease),
            )
            .await;
            return Err(reason);
        }
        Ok(lease)
    }

    async fn run(self) {
        let mut reconnect = Reconnect::new(RECONNECT);
        loop {
            let current = *self.lease.lock().unwrap_or_else(|p| p.into_inner());
            let lease = match current {
                Some(lease) => lease,
                None => match self.grant_and_put().await {
                    Ok(lease) => {
                        tracing::info!(key = %self.key, lease, "registered again in etcd under a new lease");
                        lease
                    }
                    Err(reason) => {
                        let delay = next_delay(&mut reconnect);
                        tracing::warn!(key = %self.key, %reason, retry_in = ?delay, "cannot register again in etcd");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                },
            };
            let mut leases = self.client.lease_client();
            let reason = match tokio::time::timeout(self.timeout, leases.keep_alive(lease)).await {
                Ok(Ok((keeper, stream))) => {
                    reconnect.reset();
                    match self.keep(keeper, stream).await {
                        KeepEnd::Lost => {
                            tracing::warn!(key = %self.key, lease, "etcd lost the lease; granting a new one and putting the key again");
                            self.set_lease(None);
                            continue;
                        }
                        KeepEnd::Broken(reason) => reason,
                    }
                }
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) => {
                    tracing::warn!(key = %self.key, lease, %why, "etcd lost the lease; granting a new one and putting the key again");
                    self.set_lease(None);
                    // A short pause, growing if etcd keeps refusing fresh leases.
                    tokio::time::sleep(next_delay(&mut reconnect)).await;
                    continue;
                }
                Ok(Err(error)) => format!("cannot open the keep-alive stream: {error}"),
                Err(_) => format!(
                    "keep-alive stream not open within {}",
                    cortex_resilience::human::HumanDuration(self.timeout)
                ),
            };
            let delay = next_delay(&mut reconnect);
            tracing::warn!(key = %self.key, lease, %reason, retry_in = ?delay, "etcd lease keep-alive failed");
            tokio::time::sleep(delay).await;
        }
    }

    /// Refreshes the lease every interval until the stream breaks or etcd
    /// says the lease is gone. Opening the stream already refreshed it once.
    async fn keep(&self, mut keeper: LeaseKeeper, mut stream: LeaseKeepAliveStream) -> KeepEnd {
        loop {
            tokio::time::sleep(self.interval).await;
            if let Err(reason) = bounded(
                self.timeout,
                "cannot send a keep-alive",
                keeper.keep_alive(),
            )
            .await
            {
                return KeepEnd::Broken(reason);
            }
            match bounded(self.timeout, "no keep-alive answer", stream.message()).await {
                Ok(Some(answer)) if answer.ttl() <= 0 => return KeepEnd::Lost,
                Ok(Some(answer)) => {
                    tracing::trace!(key = %self.key, ttl = answer.ttl(), "lease kept alive")
                }
                Ok(None) => return KeepEnd::Broken("the keep-alive stream ended".into()),
                Err(reason) => return KeepEnd::Broken(reason),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Protocol;

    #[test]
    fn keys_and_values() {
        let p = "/cortex/services/";
        assert_eq!(
            split_key(p, b"/cortex/services/memory/abc"),
            Some(("memory", "abc"))
        );
        assert_eq!(
            split_key(p, b"/cortex/services/memory/a/b"),
            Some(("memory", "a/b"))
        );
        assert_eq!(split_key(p, b"/cortex/services/memory"), None);
        assert_eq!(split_key(p, b"/cortex/services//x"), None);
        assert_eq!(split_key(p, b"/cortex/services/memory/"), None);
        assert_eq!(split_key(p, b"/other/memory/x"), None);
        assert_eq!(split_key(p, &[0xff, 0xfe]), None);

        let e = parse_endpoint(br#"{"url":"http://127.0.0.1:9000/","protocol":"mcp","weight":0}"#);
        assert_eq!(
            e,
            Ok(Endpoint {
                url: "http://127.0.0.1:9000".into(),
                protocol: Protocol::Mcp,
                weight: 1
            })
        );
        assert_eq!(
            parse_endpoint(br#"{"url":"http://h:1"}"#),
            Ok(Endpoint::new("http://h:1"))
        );
        assert!(parse_endpoint(b"http://h:1").is_err());
        assert!(parse_endpoint(br#"{"url":"ftp://h:1"}"#).is_err());
        assert!(parse_endpoint(br#"{"url":"https://h:1"}"#).is_ok());
    }
}
