//! Cost per call of resolving a service and picking an endpoint, with 3 and
//! with 100 endpoints, against a baseline in the same run: taking the next
//! element of a prepared `Vec` (what a client with one cached list would
//! pay). Run: `cargo bench -p cortex-discovery --bench pick`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cortex_discovery::balance::{Balancer, order};
use cortex_discovery::{Endpoint, HealthChecked, HealthConfig, ServiceDiscovery, StaticDiscovery};

const CALLS: usize = 200_000;

fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint::new(format!("http://127.0.0.{}:{}", 1 + i % 250, 9000 + i)))
        .collect()
}

/// Best of three runs of `f` over CALLS calls, in ns per call.
fn best_of_three(mut f: impl FnMut() -> Duration) -> f64 {
    (0..3)
        .map(|_| f().as_nanos() as f64 / CALLS as f64)
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start a runtime: {error}");
            std::process::exit(1);
        }
    };
    println!("resolve + pick, {CALLS} calls each, best of 3 (ns per call)");
    println!(
        "{:<10} {:>10} {:>16} {:>16} {:>22} {:>10}",
        "endpoints", "baseline", "static + p2c", "static + rr", "health-checked + p2c", "p2c/base"
    );
    for n in [3usize, 100] {
        let list = endpoints(n);
        let load: HashMap<Endpoint, AtomicUsize> = list
            .iter()
            .map(|e| (e.clone(), AtomicUsize::new(0)))
            .collect();
        let load_of = |e: &Endpoint| load.get(e).map_or(0, |l| l.load(Ordering::Relaxed));

        let baseline = best_of_three(|| {
            let started = Instant::now();
            for i in 0..CALLS {
                black_box(&list[i % n]);
            }
            started.elapsed()
        });

        let discovery = StaticDiscovery::new();
        discovery.register("memory", list.clone());
        let checked = HealthChecked::new(
            Arc::new(StaticDiscovery::new()),
            HealthConfig {
                interval: Duration::from_secs(3600),
                ..HealthConfig::default()
            },
        );
        checked.backend().register("memory", list.clone());
        let turn = AtomicUsize::new(0);

        let measure = |discovery: &dyn ServiceDiscovery, balancer: Balancer| {
            best_of_three(|| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..CALLS {
                        let set = match discovery.resolve("memory").await {
                            Ok(set) => set,
                            Err(error) => {
                                eprintln!("resolve failed: {error}");
                                std::process::exit(1);
                            }
                        };
                        let ranked = order(balancer, &set.endpoints, &[], &turn, load_of);
                        black_box(ranked.first().map(|e| e.url.len()));
                    }
                    started.elapsed()
                })
            })
        };
        let p2c = measure(&discovery, Balancer::PowerOfTwoChoices);
        let rr = measure(&discovery, Balancer::RoundRobin);
        let health = measure(&checked, Balancer::PowerOfTwoChoices);
        println!(
            "{n:<10} {baseline:>10.1} {p2c:>16.1} {rr:>16.1} {health:>22.1} {:>9.0}x",
            p2c / baseline
        );
    }
}
