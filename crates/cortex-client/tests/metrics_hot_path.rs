//! What recording a call costs, alone and with two threads at once, against
//! a copy of the previous design (one mutex over a map, taken by every
//! call). Ignored: it measures, it does not check; run it with
//! `cargo test --release -p cortex-client --test metrics_hot_path -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use cortex_client::metrics::{LATENCY_BUCKETS, Metrics};

const CALLS: usize = 2_000_000;

/// The previous shape: service, then operation, under one mutex; the same
/// counts (calls, a latency bucket, the latency sum).
#[derive(Default)]
struct OneMutex {
    operations: Mutex<BTreeMap<String, BTreeMap<String, Stats>>>,
}

#[derive(Default)]
struct Stats {
    calls: u64,
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: Duration,
}

impl Stats {
    fn add(&mut self, latency: Duration) {
        self.calls += 1;
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket] += 1;
        self.sum += latency;
    }
}

impl OneMutex {
    fn record(&self, service: &str, operation: &str, latency: Duration) {
        let mut ops = self.operations.lock().unwrap();
        if let Some(stats) = ops.get_mut(service).and_then(|o| o.get_mut(operation)) {
            return stats.add(latency);
        }
        ops.entry(service.into())
            .or_default()
            .entry(operation.into())
            .or_default()
            .add(latency);
    }
}

/// Nanoseconds per call with `threads` threads, each calling `record` with
/// its own operation name from `ops`.
fn per_call(threads: usize, ops: &[&str], record: &(dyn Fn(&str) + Sync)) -> f64 {
    let barrier = Barrier::new(threads);
    let elapsed: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                let op = ops[t % ops.len()];
                s.spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    for _ in 0..CALLS {
                        record(black_box(op));
                    }
                    started.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let slowest = elapsed.into_iter().max().unwrap_or_default();
    slowest.as_nanos() as f64 / CALLS as f64
}

#[test]
#[ignore = "a measurement; run with --release -- --ignored --nocapture"]
fn record_costs() {
    let latency = Duration::from_micros(300);
    let metrics = Metrics::default();
    let old = OneMutex::default();
    let new = |op: &str| metrics.record("memory", op, latency, None);
    let previous = |op: &str| old.record("memory", op, latency);
    for (name, record) in [
        ("lock-free table (now)", &new as &(dyn Fn(&str) + Sync)),
        ("one mutex (before)", &previous),
    ] {
        println!(
            "{name:24} 1 thread {:6.1} ns | 2 threads, same tool {:6.1} ns | 2 threads, two tools {:6.1} ns",
            per_call(1, &["store_input"], record),
            per_call(2, &["store_input"], record),
            per_call(2, &["store_input", "get_item"], record),
        );
    }
}
