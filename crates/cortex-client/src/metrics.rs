//! Instrumentation (the seed's `InstrumentedNetworkMcpClient`): per service
//! and operation, calls, errors by kind, a latency histogram and retries;
//! per endpoint, breaker state and pool use. Read through [`Metrics::snapshot`]
//! or as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use cortex_resilience::breaker::BreakerState;

use crate::error::McpError;
use crate::network::EndpointStatus;

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

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

/// The client's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Service, then operation: nested so that the hot path looks both up
    /// by `&str` and allocates only the first time a pair is seen.
    operations: Mutex<BTreeMap<String, BTreeMap<String, OperationStats>>>,
    transitions: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Metrics {
    fn with<R>(
        &self,
        service: &str,
        operation: &str,
        f: impl FnOnce(&mut OperationStats) -> R,
    ) -> R {
        let mut operations = self.operations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stats) = operations
            .get_mut(service)
            .and_then(|ops| ops.get_mut(operation))
        {
            return f(stats);
        }
        let stats = operations
            .entry(service.to_string())
            .or_default()
            .entry(operation.to_string())
            .or_default();
        f(stats)
    }

    pub(crate) fn record(
        &self,
        service: &str,
        operation: &str,
        latency: Duration,
        error: Option<&McpError>,
    ) {
        self.with(service, operation, |stats| {
            stats.calls += 1;
            let secs = latency.as_secs_f64();
            let bucket = LATENCY_BUCKETS
                .iter()
                .position(|b| secs <= *b)
                .unwrap_or(LATENCY_BUCKETS.len());
            stats.latency_buckets[bucket] += 1;
            stats.latency_sum += latency;
            if let Some(error) = error {
                *stats.errors.entry(error.kind().to_string()).or_default() += 1;
            }
        });
    }

    pub(crate) fn retry(&self, service: &str, operation: &str) {
        self.with(service, operation, |stats| stats.retries += 1);
    }

    pub(crate) fn breaker_transition(&self, service: &str, to: BreakerState) {
        let name = match to {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        };
        *self
            .transitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((service.to_string(), name))
            .or_default() += 1;
    }

    /// Every (service, operation) and its counters.
    pub fn snapshot(&self) -> BTreeMap<(String, String), OperationStats> {
        let operations = self.operations.lock().unwrap_or_else(|p| p.into_inner());
        operations
            .iter()
            .flat_map(|(service, ops)| {
                ops.iter()
                    .map(move |(op, stats)| ((service.clone(), op.clone()), stats.clone()))
            })
            .collect()
    }

    /// Breaker transitions into each state, per service.
    pub fn transitions(&self) -> BTreeMap<(String, &'static str), u64> {
        self.transitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Prometheus text exposition.
    pub fn render(&self, endpoints: &[EndpointStatus]) -> String {
        let mut out = String::new();
        let ops = self.snapshot();
        let _ = writeln!(
            out,
            "# HELP cortex_client_calls_total Calls made, per service and operation."
        );
        let _ = writeln!(out, "# TYPE cortex_client_calls_total counter");
        for ((service, op), stats) in &ops {
            let _ = writeln!(
                out,
                "cortex_client_calls_total{{service=\"{}\",operation=\"{}\"}} {}",
                esc(service),
                esc(op),
                stats.calls
            );
        }
        let _ = writeln!(
            out,
            "# HELP cortex_client_errors_total Failed calls, per service, operation and error kind."
        );
        let _ = writeln!(out, "# TYPE cortex_client_errors_total counter");
        for ((service, op), stats) in &ops {
            for (kind, count) in &stats.errors {
                let _ = writeln!(
                    out,
                    "cortex_client_errors_total{{service=\"{}\",operation=\"{}\",kind=\"{kind}\"}} {count}",
                    esc(service),
                    esc(op)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP cortex_client_retries_total Retries (attempts after the first)."
        );
        let _ = writeln!(out, "# TYPE cortex_client_retries_total counter");
        for ((service, op), stats) in &ops {
            let _ = writeln!(
                out,
                "cortex_client_retries_total{{service=\"{}\",operation=\"{}\"}} {}",
                esc(service),
                esc(op),
                stats.retries
            );
        }
        let _ = writeln!(
            out,
            "# HELP cortex_client_latency_seconds Call latency, over all attempts."
        );
        let _ = writeln!(out, "# TYPE cortex_client_latency_seconds histogram");
        for ((service, op), stats) in &ops {
            let labels = format!("service=\"{}\",operation=\"{}\"", esc(service), esc(op));
            let mut cumulative = 0;
            for (i, count) in stats.latency_buckets.iter().enumerate() {
                cumulative += count;
                let le = LATENCY_BUCKETS
                    .get(i)
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "+Inf".into());
                let _ = writeln!(
                    out,
                    "cortex_client_latency_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "cortex_client_latency_seconds_sum{{{labels}}} {}",
                stats.latency_sum.as_secs_f64()
            );
            let _ = writeln!(
                out,
                "cortex_client_latency_seconds_count{{{labels}}} {}",
                stats.calls
            );
        }
        let _ = writeln!(
            out,
            "# HELP cortex_client_breaker_state Breaker state per endpoint (0 closed, 1 half-open, 2 open)."
        );
        let _ = writeln!(out, "# TYPE cortex_client_breaker_state gauge");
        for e in endpoints {
            let value = match e.breaker {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            };
            let _ = writeln!(
                out,
                "cortex_client_breaker_state{{service=\"{}\",endpoint=\"{}\"}} {value}",
                esc(&e.service),
                esc(&e.url)
            );
        }
        let _ = writeln!(
            out,
            "# HELP cortex_client_breaker_transitions_total Breaker transitions into a state."
        );
        let _ = writeln!(
            out,
            "# TYPE cortex_client_breaker_transitions_total counter"
        );
        for ((service, to), count) in self.transitions() {
            let _ = writeln!(
                out,
                "cortex_client_breaker_transitions_total{{service=\"{}\",to=\"{to}\"}} {count}",
                esc(&service)
            );
        }
        for (name, help, pick) in [
            (
                "cortex_client_pool_open",
                "Open connections per endpoint.",
                (|e: &EndpointStatus| e.pool.open) as fn(&EndpointStatus) -> usize,
            ),
            (
                "cortex_client_pool_in_use",
                "Connections carrying a call or stream.",
                |e: &EndpointStatus| e.pool.in_use,
            ),
            (
                "cortex_client_pool_waiting",
                "Calls waiting for a connection.",
                |e: &EndpointStatus| e.pool.waiting,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for e in endpoints {
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{}\",endpoint=\"{}\"}} {}",
                    esc(&e.service),
                    esc(&e.url),
                    pick(e)
                );
            }
        }
        out
    }
}

/// Escapes a Prometheus label value.
fn esc(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
