//! Instrumentation (the seed's `InstrumentedNetworkMcpClient`): per service
//! and operation, calls, errors by kind, a latency histogram and retries;
//! per endpoint, breaker state and pool use. Read through [`Metrics::snapshot`]
//! or as Prometheus text (format 0.0.4) from
//! [`NetworkMcpClient::prometheus`](crate::NetworkMcpClient::prometheus).
//!
//! # Labels are bounded
//! A Prometheus series lives as long as the process, so a label value that
//! carries a user id or a URI is a leak (of memory, and of who used the
//! service). The `operation` label is therefore:
//! - a tool call: the tool's name;
//! - a resource read: `read:` and the URI's first path segment
//!   (`history/u1/limit/5` is `read:history`, `item/42` is `read:item`);
//! - a resource stream: `stream:` and the first segment
//!   (`history/u1/stream` is `stream:history`);
//! - an operation of the client's own (`tools`, `health`, an MCP method):
//!   its name.
//!
//! Two backstops hold whatever a caller passes to [`Metrics::record`]: a
//! label is cut at its first `/` (a raw URI passed by mistake keeps only its
//! first segment), and after [`MAX_SERIES`] distinct (service, operation)
//! pairs every new one is counted under `service="_other",
//! operation="_other"`. `endpoint` labels are the endpoint URLs discovery
//! lists, without any `user:password@`.
//!
//! # No lock on the hot path
//! Series are never removed, so they live in an append-only open-addressed
//! table of [`OnceLock`] slots (twice [`MAX_SERIES`] long), found by a hash
//! of the labels: finding a series is atomic loads and a string compare,
//! with no lock and no allocation; only the first call of a new series
//! initialises a slot. Recording a call is then two atomic adds on the
//! series' own counters (a latency bucket and the latency sum; calls are the
//! histogram's count), plus one for an error; a retry is one. So calls of
//! different operations share nothing, and calls of one operation share
//! only its counters. (`tests/metrics_hot_path.rs` measures it against the
//! previous single mutex.)

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use cortex_proto::metrics::LATENCY_BUCKETS;
use cortex_proto::metrics::LatencyHistogram;
use cortex_resilience::breaker::BreakerState;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::error::McpError;
use crate::operation::Operation;
use crate::pool::PoolStats;

/// What one endpoint looks like now.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStatus {
    /// The service.
    pub service: String,
    /// The endpoint's URL.
    pub url: String,
    /// Its breaker's state.
    pub breaker: cortex_resilience::breaker::BreakerState,
    /// Time until an open breaker admits a probe.
    pub breaker_retry_after: Option<Duration>,
    /// Its pool.
    pub pool: PoolStats,
}

/// At most this many (service, operation) pairs get series of their own.
pub const MAX_SERIES: usize = 512;

/// The label value of everything past [`MAX_SERIES`].
pub const OTHER: &str = "_other";

/// Slots of the series table: twice [`MAX_SERIES`], so a probe is short.
const TABLE: usize = 2 * MAX_SERIES;

/// Error kinds one operation keeps apart; [`McpError::kind`] has fewer.
const ERROR_SLOTS: usize = 24;

/// Counters of one service and operation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperationStats {
    /// Calls made.
    pub calls: u64,
    /// Failed calls by [`McpError::kind`].
    pub errors: BTreeMap<String, u64>,
    /// Retries made (attempts after the first).
    pub retries: u64,
    /// Calls per latency bucket ([`LATENCY_BUCKETS`], then +Inf).
    pub latency_buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of latencies.
    pub latency_sum: Duration,
}

impl OperationStats {
    /// The latency below which `q` (0..=1) of calls fall, as a bucket bound.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let target = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.latency_buckets.iter().enumerate() {
            seen += count;
            if seen >= target {
                let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
                return Some(Duration::try_from_secs_f64(bound).unwrap_or(Duration::MAX));
            }
        }
        None
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    service: String,
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    service: String,
    operation: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    service: String,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    service: String,
    endpoint: String,
}

/// Calls of one operation, read from its latency histogram's count (every
/// call is observed there once): one atomic add fewer per call.
/// (Set once, when the series is made.)
#[derive(Clone, Debug, Default)]
struct Calls(Arc<OnceLock<LatencyHistogram>>);

impl TypedMetric for Calls {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Calls {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let calls = self.0.get().map_or(0, LatencyHistogram::count);
        encoder.encode_counter::<NoLabelSet, _, u64>(&calls, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The handles of one (service, operation).
struct Series {
    labels: OperationLabels,
    retries: Counter,
    latency: LatencyHistogram,
    /// Error kinds in the order first seen; a slot, once set, never changes,
    /// so finding a kind's counter takes no lock.
    errors: [OnceLock<(&'static str, Counter)>; ERROR_SLOTS],
    /// Kinds past the slots, counted as `other` (not expected).
    other_errors: OnceLock<Counter>,
}

impl Series {
    fn error(&self, kind: &'static str, family: &Family<ErrorLabels, Counter>) {
        let new = |kind: &'static str| {
            family.get_or_create_owned(&ErrorLabels {
                service: self.labels.service.clone(),
                operation: self.labels.operation.clone(),
                kind,
            })
        };
        for slot in &self.errors {
            // Taken by another kind (maybe just now, by another thread): next.
            let (taken, counter) = slot.get_or_init(|| (kind, new(kind)));
            if *taken == kind {
                counter.inc();
                return;
            }
        }
        self.other_errors.get_or_init(|| new("other")).inc();
    }

    fn stats(&self) -> OperationStats {
        let mut errors = BTreeMap::new();
        for (kind, counter) in self.errors.iter().filter_map(OnceLock::get) {
            errors.insert(kind.to_string(), counter.get());
        }
        if let Some(other) = self.other_errors.get() {
            *errors.entry("other".to_string()).or_default() += other.get();
        }
        OperationStats {
            calls: self.latency.count(),
            errors,
            retries: self.retries.get(),
            latency_buckets: self.latency.buckets(),
            latency_sum: self.latency.sum(),
        }
    }
}

/// The client's metrics.
pub struct Metrics {
    /// The series, by [`label_hash`] with linear probing; a slot, once set,
    /// never changes.
    table: Box<[OnceLock<Box<Series>>]>,
    /// Series made so far, against [`MAX_SERIES`].
    series: AtomicUsize,
    /// Where calls past [`MAX_SERIES`] are counted.
    overflow: OnceLock<Series>,
    calls: Family<OperationLabels, Calls>,
    retries: Family<OperationLabels, Counter>,
    latency: Family<OperationLabels, LatencyHistogram>,
    errors: Family<ErrorLabels, Counter>,
    transition_counts: Family<TransitionLabels, Counter>,
    /// Transitions are rare (a breaker opening or closing), so one mutex.
    transitions: Mutex<BTreeMap<(String, &'static str), Counter>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            table: (0..TABLE).map(|_| OnceLock::new()).collect(),
            series: AtomicUsize::new(0),
            overflow: OnceLock::new(),
            calls: Family::default(),
            retries: Family::default(),
            latency: Family::default(),
            errors: Family::default(),
            transition_counts: Family::default(),
            transitions: Mutex::new(BTreeMap::new()),
        }
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("series", &self.series.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Counts one call of `operation` on `service` that took `latency`
    /// (over all its attempts) and failed with `error`, if it did. See the
    /// [module docs](self) for what `operation` may be.
    pub fn record(
        &self,
        service: &str,
        operation: &str,
        latency: Duration,
        error: Option<&McpError>,
    ) {
        self.with(service, operation, |series| {
            series.latency.observe(latency);
            if let Some(error) = error {
                series.error(error.kind(), &self.errors);
            }
        });
    }

    /// Counts one retry (an attempt after the first) of `operation`.
    pub fn retry(&self, service: &str, operation: &str) {
        self.with(service, operation, |series| {
            series.retries.inc();
        });
    }

    pub(crate) fn breaker_transition(&self, service: &str, to: BreakerState) {
        let to = match to {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        };
        let mut transitions = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        transitions
            .entry((service.to_string(), to))
            .or_insert_with(|| {
                self.transition_counts
                    .get_or_create_owned(&TransitionLabels {
                        service: service.to_string(),
                        to,
                    })
            })
            .inc();
    }

    /// Runs `f` on the series of (`service`, `operation`), made if new.
    fn with<R>(&self, service: &str, operation: &str, f: impl FnOnce(&Series) -> R) -> R {
        let operation = operation.split('/').next().unwrap_or_default();
        let start = (label_hash(service, operation) % TABLE as u64) as usize;
        for i in 0..TABLE {
            let slot = &self.table[(start + i) % TABLE];
            let series = match slot.get() {
                Some(series) => series,
                None => {
                    // A new series: counted first, so the cap holds even
                    // when threads race for slots.
                    let reserved =
                        self.series
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                (n < MAX_SERIES).then_some(n + 1)
                            });
                    if reserved.is_err() {
                        break;
                    }
                    let mut made = false;
                    let series = slot.get_or_init(|| {
                        made = true;
                        Box::new(self.new_series(service, operation))
                    });
                    if !made {
                        // Another thread took the slot first.
                        self.series.fetch_sub(1, Ordering::Relaxed);
                    }
                    series
                }
            };
            if series.labels.operation == operation && series.labels.service == service {
                return f(series);
            }
        }
        f(self.overflow())
    }

    fn overflow(&self) -> &Series {
        self.overflow.get_or_init(|| self.new_series(OTHER, OTHER))
    }

    fn new_series(&self, service: &str, operation: &str) -> Series {
        let labels = OperationLabels {
            service: service.to_string(),
            operation: operation.to_string(),
        };
        let latency = self.latency.get_or_create_owned(&labels);
        let _ = self.calls.get_or_create(&labels).0.set(latency.clone());
        Series {
            retries: self.retries.get_or_create_owned(&labels),
            latency,
            errors: Default::default(),
            other_errors: OnceLock::new(),
            labels,
        }
    }

    /// Every (service, operation) and its counters.
    pub fn snapshot(&self) -> BTreeMap<(String, String), OperationStats> {
        let mut out = BTreeMap::new();
        for series in self.table.iter().filter_map(OnceLock::get) {
            let labels = &series.labels;
            out.insert(
                (labels.service.clone(), labels.operation.clone()),
                series.stats(),
            );
        }
        if let Some(series) = self.overflow.get() {
            out.insert((OTHER.to_string(), OTHER.to_string()), series.stats());
        }
        out
    }

    /// Breaker transitions into each state, per service.
    pub fn transitions(&self) -> BTreeMap<(String, &'static str), u64> {
        self.transitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(key, counter)| (key.clone(), counter.get()))
            .collect()
    }

    /// Prometheus text exposition (format 0.0.4), with the breaker and pool
    /// gauges of `endpoints`.
    pub fn render(&self, endpoints: &[EndpointStatus]) -> String {
        let mut registry = Registry::default();
        registry.register(
            "cortex_client_calls",
            "Calls made, per service and operation",
            self.calls.clone(),
        );
        registry.register(
            "cortex_client_errors",
            "Failed calls, per service, operation and error kind",
            self.errors.clone(),
        );
        registry.register(
            "cortex_client_retries",
            "Retries (attempts after the first), per service and operation",
            self.retries.clone(),
        );
        registry.register(
            "cortex_client_latency_seconds",
            "Call latency, over all attempts",
            self.latency.clone(),
        );
        registry.register(
            "cortex_client_breaker_transitions",
            "Breaker transitions into a state, per service",
            self.transition_counts.clone(),
        );
        let breaker = Family::<EndpointLabels, Gauge>::default();
        let pool_open = Family::<EndpointLabels, Gauge>::default();
        let pool_in_use = Family::<EndpointLabels, Gauge>::default();
        let pool_waiting = Family::<EndpointLabels, Gauge>::default();
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for e in endpoints {
            let labels = EndpointLabels {
                service: e.service.clone(),
                endpoint: endpoint_label(&e.url).into_owned(),
            };
            breaker.get_or_create(&labels).set(match e.breaker {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            });
            pool_open.get_or_create(&labels).set(gauge(e.pool.open));
            pool_in_use.get_or_create(&labels).set(gauge(e.pool.in_use));
            pool_waiting
                .get_or_create(&labels)
                .set(gauge(e.pool.waiting));
        }
        registry.register(
            "cortex_client_breaker_state",
            "Breaker state per endpoint (0 closed, 1 half-open, 2 open)",
            breaker,
        );
        registry.register(
            "cortex_client_pool_open",
            "Open connections per endpoint",
            pool_open,
        );
        registry.register(
            "cortex_client_pool_in_use",
            "Calls and streams holding a connection (HTTP/2 streams share one)",
            pool_in_use,
        );
        registry.register(
            "cortex_client_pool_waiting",
            "Calls waiting for a connection",
            pool_waiting,
        );
        let mut out = String::new();
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        {
            tracing::warn!(%error, "could not encode the client's metrics");
        }
        out
    }
}

/// A hash of the two labels, eight bytes at a time (names this short take
/// a round or two each, plus a few single bytes), then mixed so that its
/// low bits, which pick the slot, depend on every byte. No allocation.
fn label_hash(service: &str, operation: &str) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut hash: u64 = 0;
    for part in [service.as_bytes(), operation.as_bytes()] {
        let mut words = part.chunks_exact(8);
        for w in &mut words {
            let word = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            hash = (hash.rotate_left(5) ^ word).wrapping_mul(K);
        }
        for byte in words.remainder() {
            hash = (hash.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(K);
        }
        // The length ends each label: ("ab", "c") and ("a", "bc") differ.
        hash = (hash.rotate_left(5) ^ part.len() as u64).wrapping_mul(K);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

/// The `operation` label of one exchange (see the [module docs](self)).
pub(crate) fn operation_label<'a>(operation: &Operation<'a>) -> Cow<'a, str> {
    match *operation {
        Operation::Tool(name) => Cow::Borrowed(name),
        Operation::Read(name) if !name.contains('/') => Cow::Borrowed(name),
        Operation::Read(uri) => Cow::Owned(resource_operation("read", uri)),
        Operation::Stream(uri) => Cow::Owned(resource_operation("stream", uri)),
    }
}

/// `verb:` and the first path segment of `uri`: `history/u1/stream` read
/// as a stream is `stream:history`.
pub(crate) fn resource_operation(verb: &str, uri: &str) -> String {
    let first = uri
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    format!("{verb}:{first}")
}

/// An endpoint URL without credentials (`http://user:pw@host` is
/// `http://host`).
fn endpoint_label(url: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Cow::Borrowed(url);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{scheme}://{}", &rest[at + 1..])),
        None => Cow::Borrowed(url),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn labels_of_reads_and_streams_keep_only_the_first_segment() {
        let label = |op| operation_label(&op).into_owned();
        assert_eq!(label(Operation::Tool("store_input")), "store_input");
        assert_eq!(label(Operation::Read("history/u1/limit/5")), "read:history");
        assert_eq!(label(Operation::Read("/item/42")), "read:item");
        assert_eq!(label(Operation::Read("tools")), "tools");
        assert_eq!(
            label(Operation::Stream("history/u1/stream")),
            "stream:history"
        );
        assert_eq!(
            resource_operation("stream", "history/u2/stream"),
            "stream:history"
        );
    }

    #[test]
    fn a_raw_uri_passed_as_an_operation_is_cut_at_its_first_slash() {
        let metrics = Metrics::default();
        metrics.record("memory", "history/u1", Duration::from_millis(1), None);
        metrics.record("memory", "history/u2", Duration::from_millis(1), None);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.len(), 1, "{snapshot:?}");
        assert_eq!(snapshot[&("memory".into(), "history".into())].calls, 2);
    }

    #[test]
    fn series_past_the_cap_are_counted_together() {
        let metrics = Metrics::default();
        for i in 0..MAX_SERIES + 100 {
            metrics.record("s", &format!("op{i}"), Duration::from_millis(1), None);
        }
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.len(), MAX_SERIES + 1);
        assert_eq!(snapshot[&(OTHER.into(), OTHER.into())].calls, 100);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let metrics = Metrics::default();
        let closed = McpError::Closed;
        let config = McpError::ServiceNotFound {
            service: "s".into(),
            reason: "unknown".into(),
        };
        metrics.record("s", "t", Duration::ZERO, Some(&closed));
        metrics.record("s", "t", Duration::ZERO, Some(&closed));
        metrics.record("s", "t", Duration::ZERO, Some(&config));
        metrics.record("s", "t", Duration::ZERO, None);
        let stats = &metrics.snapshot()[&("s".into(), "t".into())];
        assert_eq!(stats.calls, 4);
        assert_eq!(stats.errors.get("closed"), Some(&2));
        assert_eq!(stats.errors.get("service_not_found"), Some(&1));
        let text = metrics.render(&[]);
        assert!(
            text.contains(
                "cortex_client_errors_total{service=\"s\",operation=\"t\",kind=\"closed\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn concurrent_first_calls_make_one_series_each() {
        let metrics = Metrics::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..1000 {
                        metrics.record("s", &format!("op{}", i % 50), Duration::ZERO, None);
                    }
                });
            }
        });
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.len(), 50);
        assert!(snapshot.values().all(|stats| stats.calls == 4 * 20));
        assert_eq!(metrics.series.load(Ordering::Relaxed), 50);
    }

    #[test]
    fn endpoint_labels_drop_credentials() {
        assert_eq!(endpoint_label("http://a:b@host:1/x"), "http://host:1/x");
        assert_eq!(endpoint_label("http://host:1"), "http://host:1");
    }
}
