//! Circuit breaker: rule-by-rule tests with paused time, and a property test
//! against a small reference model.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use cortex_resilience::breaker::{
    BreakerConfig, BreakerPermit, BreakerState, CircuitBreaker, InvalidBreakerConfig, Outcome,
    Rejected, Transition,
};
use proptest::prelude::*;
use tokio::time::advance;

use BreakerState::{Closed, HalfOpen, Open};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn breaker(threshold: u32, reset: Duration, probes: u32) -> CircuitBreaker {
    CircuitBreaker::new(
        "api.test",
        BreakerConfig::try_new(threshold, reset, probes).unwrap(),
    )
}

fn fail(b: &CircuitBreaker, times: u32) {
    for _ in 0..times {
        b.try_acquire().unwrap().failure();
    }
}

fn rejected(b: &CircuitBreaker) -> Rejected {
    b.try_acquire().unwrap_err()
}

/// A breaker opened by `threshold` failures, then its reset timeout passed.
async fn due_for_probe(threshold: u32, reset: Duration, probes: u32) -> CircuitBreaker {
    let b = breaker(threshold, reset, probes);
    fail(&b, threshold);
    assert_eq!(b.state(), Open);
    advance(reset).await;
    b
}

#[test]
fn config_is_validated_and_defaults_match_the_seed() {
    let d = BreakerConfig::default();
    assert_eq!(
        (d.failure_threshold, d.reset_timeout, d.half_open_max_calls),
        (5, Duration::from_secs(30), 1)
    );
    assert_eq!(BreakerConfig::try_new(5, Duration::from_secs(30), 1), Ok(d));
    let field = |r: Result<BreakerConfig, InvalidBreakerConfig>| r.unwrap_err().field;
    assert_eq!(
        field(BreakerConfig::try_new(0, ms(1), 1)),
        "failure_threshold"
    );
    assert_eq!(field(BreakerConfig::try_new(1, ms(0), 1)), "reset_timeout");
    assert_eq!(
        field(BreakerConfig::try_new(1, ms(1), 0)),
        "half_open_max_calls"
    );
    let err = BreakerConfig::try_new(1, ms(1), 0).unwrap_err().to_string();
    assert!(err.contains("half_open_max_calls"), "{err}");

    // A hand-built zero is clamped rather than wedging the breaker.
    let b = CircuitBreaker::new(
        "x",
        BreakerConfig {
            failure_threshold: 0,
            reset_timeout: ms(5),
            half_open_max_calls: 0,
        },
    );
    assert_eq!(b.config().failure_threshold, 1);
    assert_eq!(b.config().half_open_max_calls, 1);
    assert_eq!(b.name(), "x");
}

#[tokio::test(start_paused = true)]
async fn opens_after_exactly_threshold_consecutive_failures() {
    let b = breaker(3, Duration::from_secs(10), 1);
    fail(&b, 2);
    assert_eq!(b.state(), Closed);
    assert_eq!(b.stats().consecutive_failures, 2);
    assert!(b.try_acquire().is_ok());
    fail(&b, 1);
    assert_eq!(b.state(), Open);
    let r = rejected(&b);
    assert_eq!(r.state, Open);
    assert_eq!(r.retry_after, Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_success_in_between_resets_the_count() {
    let b = breaker(3, Duration::from_secs(10), 1);
    fail(&b, 2);
    b.try_acquire().unwrap().success();
    assert_eq!(b.stats().consecutive_failures, 0);
    fail(&b, 2);
    assert_eq!(b.state(), Closed);
    fail(&b, 1);
    assert_eq!(b.state(), Open);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_never_trip_and_do_not_reset() {
    let b = breaker(1, Duration::from_secs(10), 1);
    for _ in 0..100 {
        b.try_acquire().unwrap().ignore();
        b.try_acquire().unwrap().record(Outcome::Ignore);
        drop(b.try_acquire().unwrap());
    }
    assert_eq!(b.state(), Closed);
    assert_eq!(b.stats().opened_total, 0);

    // A 4xx between two failures neither trips nor resets the count.
    let b = breaker(2, Duration::from_secs(10), 1);
    fail(&b, 1);
    b.try_acquire().unwrap().ignore();
    assert_eq!(b.stats().consecutive_failures, 1);
    fail(&b, 1);
    assert_eq!(b.state(), Open);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_with_a_decreasing_retry_after() {
    let b = breaker(1, Duration::from_secs(10), 1);
    assert_eq!(b.retry_after(), None);
    fail(&b, 1);
    assert_eq!(b.retry_after(), Some(Duration::from_secs(10)));
    advance(Duration::from_secs(3)).await;
    assert_eq!(rejected(&b).retry_after, Duration::from_secs(7));
    assert_eq!(b.retry_after(), Some(Duration::from_secs(7)));
    advance(ms(6_999)).await;
    assert_eq!(rejected(&b).retry_after, ms(1));
    advance(ms(1)).await;
    // Due, but reading never transitions: Open until the next acquire.
    assert_eq!(b.retry_after(), Some(Duration::ZERO));
    assert_eq!(b.state(), Open);
    let probe = b.try_acquire().unwrap();
    assert!(probe.is_probe());
    assert_eq!(b.state(), HalfOpen);
    assert_eq!(b.retry_after(), None);
    assert_eq!(b.stats().rejected_total, 2);
}

async fn admits_exactly(max: u32) {
    let b = due_for_probe(2, Duration::from_secs(5), max).await;
    let probes: Vec<BreakerPermit> = (0..max).map(|_| b.try_acquire().unwrap()).collect();
    assert!(probes.iter().all(BreakerPermit::is_probe));
    for _ in 0..3 {
        let r = rejected(&b);
        assert_eq!(r.state, HalfOpen);
        assert_eq!(r.retry_after, Duration::ZERO);
    }
    assert_eq!(b.state(), HalfOpen);
    assert_eq!(b.stats().half_opened_total, 1);
    assert_eq!(b.stats().rejected_total, 3);
    drop(probes);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_one_probe() {
    admits_exactly(1).await;
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_three_probes() {
    admits_exactly(3).await;
}

#[tokio::test(start_paused = true)]
async fn a_probe_success_closes_and_other_probes_become_stale() {
    let b = due_for_probe(2, Duration::from_secs(5), 3).await;
    let first = b.try_acquire().unwrap();
    let second = b.try_acquire().unwrap();
    let third = b.try_acquire().unwrap();
    second.success();
    assert_eq!(b.state(), Closed);
    assert_eq!(b.stats().consecutive_failures, 0);
    // Probes admitted while half-open report into a closed breaker: stale.
    first.failure();
    third.failure();
    assert_eq!(b.state(), Closed);
    assert_eq!(b.stats().consecutive_failures, 0);
    assert_eq!(b.stats().stale_outcomes_total, 2);
    let p = b.try_acquire().unwrap();
    assert!(!p.is_probe());
    p.success();
}

#[tokio::test(start_paused = true)]
async fn a_probe_failure_reopens_for_a_full_reset_timeout() {
    let reset = Duration::from_secs(5);
    let b = due_for_probe(1, reset, 1).await;
    advance(Duration::from_secs(7)).await; // long after it became due
    let probe = b.try_acquire().unwrap();
    advance(Duration::from_secs(2)).await; // the probe is slow
    probe.failure();
    assert_eq!(b.state(), Open);
    assert_eq!(b.retry_after(), Some(reset));
    assert_eq!(rejected(&b).retry_after, reset);
    advance(reset - ms(1)).await;
    assert_eq!(rejected(&b).retry_after, ms(1));
    advance(ms(1)).await;
    assert!(b.try_acquire().unwrap().is_probe());
    assert_eq!(b.stats().opened_total, 2);
    assert_eq!(b.stats().half_opened_total, 2);
}

#[tokio::test(start_paused = true)]
async fn probe_now_half_opens_an_open_breaker_at_once() {
    let reset = Duration::from_secs(30);
    let seen: Arc<Mutex<Vec<Transition>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let b = CircuitBreaker::new("api.early", BreakerConfig::try_new(1, reset, 2).unwrap())
        .with_listener(move |_, t| sink.lock().unwrap().push(t));

    // Closed: nothing to do.
    assert!(!b.probe_now());
    assert_eq!(b.state(), Closed);

    let slow = b.try_acquire().unwrap(); // admitted while Closed
    fail(&b, 1);
    advance(Duration::from_secs(1)).await; // 29 s of the reset timeout left
    assert_eq!(rejected(&b).retry_after, Duration::from_secs(29));
    assert!(b.probe_now());
    assert_eq!(b.state(), HalfOpen);
    assert_eq!(b.retry_after(), None);
    // Already half-open: a second signal changes nothing.
    assert!(!b.probe_now());
    // An outcome from before the move is stale: it neither closes nor re-opens.
    slow.success();
    assert_eq!(b.state(), HalfOpen);

    // Probes as usual: at most `half_open_max_calls` at a time, and a
    // failure re-opens for a full reset timeout...
    let first = b.try_acquire().unwrap();
    let second = b.try_acquire().unwrap();
    assert!(first.is_probe() && second.is_probe());
    assert_eq!(rejected(&b).state, HalfOpen);
    drop(second);
    first.failure();
    assert_eq!(b.state(), Open);
    assert_eq!(b.retry_after(), Some(reset));
    // ...and after another early signal, a success closes.
    assert!(b.probe_now());
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), Closed);
    assert!(!b.probe_now());

    let s = b.stats();
    assert_eq!(
        (s.opened_total, s.half_opened_total, s.closed_total),
        (2, 2, 1)
    );
    assert_eq!(s.stale_outcomes_total, 1);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            Transition {
                from: Closed,
                to: Open
            },
            Transition {
                from: Open,
                to: HalfOpen
            },
            Transition {
                from: HalfOpen,
                to: Open
            },
            Transition {
                from: Open,
                to: HalfOpen
            },
            Transition {
                from: HalfOpen,
                to: Closed
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_or_ignored_probe_releases_its_slot() {
    let b = due_for_probe(1, Duration::from_secs(5), 1).await;
    drop(b.try_acquire().unwrap());
    b.try_acquire().unwrap().ignore();
    let probe = b.try_acquire().unwrap();
    rejected(&b);
    drop(probe);

    // A probe held by a task that is cancelled is released too.
    let held = b.try_acquire().unwrap();
    let task = tokio::spawn(async move {
        let _held = held;
        std::future::pending::<()>().await;
    });
    tokio::task::yield_now().await;
    rejected(&b);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let probe = b.try_acquire().unwrap();
    assert_eq!(b.state(), HalfOpen);
    assert_eq!(b.stats().half_opened_total, 1);
    probe.success();
    assert_eq!(b.state(), Closed);
}

#[tokio::test(start_paused = true)]
async fn stale_outcomes_do_not_affect_a_newer_state() {
    let reset = Duration::from_secs(10);
    let b = breaker(2, reset, 1);
    let slow_failure = b.try_acquire().unwrap();
    let slow_success = b.try_acquire().unwrap();
    let slower_success = b.try_acquire().unwrap();
    fail(&b, 2);
    assert_eq!(b.state(), Open);

    // A failure admitted while Closed does not extend the open period...
    advance(Duration::from_secs(4)).await;
    slow_failure.failure();
    assert_eq!(b.retry_after(), Some(Duration::from_secs(6)));
    // ...and a success from before opening does not close the breaker.
    slow_success.success();
    assert_eq!(b.state(), Open);

    // Nor does it close a half-open breaker or free a probe slot.
    advance(Duration::from_secs(6)).await;
    let probe = b.try_acquire().unwrap();
    slower_success.success();
    assert_eq!(b.state(), HalfOpen);
    rejected(&b);
    assert_eq!(b.stats().stale_outcomes_total, 3);
    probe.failure();
    assert_eq!(b.retry_after(), Some(reset));
}

#[tokio::test(start_paused = true)]
async fn the_listener_sees_every_transition_in_order() {
    let seen: Arc<Mutex<Vec<(String, Transition)>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let b = CircuitBreaker::new(
        "api.listener",
        BreakerConfig::try_new(2, Duration::from_secs(1), 2).unwrap(),
    )
    .with_listener(move |name, t| sink.lock().unwrap().push((name.to_owned(), t)));

    fail(&b, 2); // Closed -> Open
    advance(Duration::from_secs(1)).await;
    b.try_acquire().unwrap().failure(); // -> HalfOpen -> Open
    advance(Duration::from_secs(1)).await;
    let a = b.try_acquire().unwrap(); // -> HalfOpen
    let c = b.try_acquire().unwrap();
    c.ignore();
    a.success(); // -> Closed

    let t = |from, to| ("api.listener".to_owned(), Transition { from, to });
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            t(Closed, Open),
            t(Open, HalfOpen),
            t(HalfOpen, Open),
            t(Open, HalfOpen),
            t(HalfOpen, Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn stats_count_transitions_and_rejections() {
    let b = breaker(1, Duration::from_secs(1), 1);
    let clone = b.clone(); // clones share state
    fail(&clone, 1);
    rejected(&b);
    rejected(&b);
    advance(Duration::from_secs(1)).await;
    let probe = b.try_acquire().unwrap();
    rejected(&b);
    probe.success();
    fail(&b, 1);
    let s = clone.stats();
    assert_eq!(s.state, Open);
    assert_eq!(s.consecutive_failures, 1);
    assert_eq!(s.opened_total, 2);
    assert_eq!(s.half_opened_total, 1);
    assert_eq!(s.closed_total, 1);
    assert_eq!(s.rejected_total, 3);
    assert_eq!(s.stale_outcomes_total, 0);
    assert!(format!("{b:?}").contains("api.test"));
}

/// Real threads race for the probe slots: never more than the limit.
#[test]
fn concurrent_probes_are_bounded_across_threads() {
    const THREADS: usize = 8;
    for max in [1_u32, 3] {
        let b = breaker(1, ms(1), max);
        fail(&b, 1);
        std::thread::sleep(ms(5));
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (b, barrier) = (b.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let permit = b.try_acquire();
                    barrier.wait(); // hold every permit until all have tried
                    permit.is_ok()
                })
            })
            .collect();
        let admitted = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(admitted, max as usize);
        assert_eq!(b.stats().half_opened_total, 1);
        // Every permit was dropped: the slots are free again.
        assert!(b.try_acquire().is_ok());
    }
}

/// Not a benchmark: a coarse guard that refusing a call stays cheap.
#[test]
fn a_refused_call_is_cheap() {
    const CALLS: u32 = 200_000;
    let b = breaker(1, Duration::from_secs(3600), 1);
    fail(&b, 1);
    let start = std::time::Instant::now();
    for _ in 0..CALLS {
        assert!(std::hint::black_box(b.try_acquire()).is_err());
    }
    let per_call = start.elapsed() / CALLS;
    // Release builds: well under 2 µs. Unoptimized builds on a shared
    // machine get a generous margin.
    let limit = if cfg!(debug_assertions) {
        Duration::from_micros(20)
    } else {
        Duration::from_micros(2)
    };
    assert!(per_call < limit, "a refused call took {per_call:?}");
    println!("refused call: {per_call:?}");
}

// ---------------------------------------------------------------------------
// Property test against a reference model.

/// The rules, written plainly. Time is milliseconds since the start.
#[derive(Debug)]
struct Model {
    threshold: u32,
    max_probes: u32,
    reset: u64,
    phase: ModelPhase,
    generation: u64,
    failures: u32,
    transitions: Vec<Transition>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelPhase {
    Closed,
    Open { until: u64 },
    HalfOpen { in_flight: u32 },
}

impl Model {
    fn new(threshold: u32, max_probes: u32, reset: u64) -> Self {
        Self {
            threshold,
            max_probes,
            reset,
            phase: ModelPhase::Closed,
            generation: 0,
            failures: 0,
            transitions: Vec::new(),
        }
    }

    fn state(&self) -> BreakerState {
        match self.phase {
            ModelPhase::Closed => Closed,
            ModelPhase::Open { .. } => Open,
            ModelPhase::HalfOpen { .. } => HalfOpen,
        }
    }

    fn enter(&mut self, phase: ModelPhase) {
        let from = self.state();
        self.phase = phase;
        self.generation += 1;
        self.transitions.push(Transition {
            from,
            to: self.state(),
        });
    }

    /// `Ok(generation)` when admitted, `Err((state, retry_after_ms))` when not.
    fn acquire(&mut self, now: u64) -> Result<u64, (BreakerState, u64)> {
        if let ModelPhase::Open { until } = self.phase {
            if now < until {
                return Err((Open, until - now));
            }
            self.enter(ModelPhase::HalfOpen { in_flight: 0 });
        }
        match self.phase {
            ModelPhase::Closed => Ok(self.generation),
            ModelPhase::HalfOpen { in_flight } if in_flight < self.max_probes => {
                self.phase = ModelPhase::HalfOpen {
                    in_flight: in_flight + 1,
                };
                Ok(self.generation)
            }
            ModelPhase::HalfOpen { .. } => Err((HalfOpen, 0)),
            ModelPhase::Open { .. } => unreachable!("left Open above"),
        }
    }

    fn complete(&mut self, generation: u64, outcome: Outcome, now: u64) {
        if generation != self.generation {
            return; // admitted before a transition: stale
        }
        match (self.phase, outcome) {
            (ModelPhase::Closed, Outcome::Success) => self.failures = 0,
            (ModelPhase::Closed, Outcome::Failure) => {
                self.failures += 1;
                if self.failures == self.threshold {
                    self.enter(ModelPhase::Open {
                        until: now + self.reset,
                    });
                }
            }
            (ModelPhase::HalfOpen { .. }, Outcome::Success) => {
                self.failures = 0;
                self.enter(ModelPhase::Closed);
            }
            (ModelPhase::HalfOpen { .. }, Outcome::Failure) => self.enter(ModelPhase::Open {
                until: now + self.reset,
            }),
            (ModelPhase::HalfOpen { in_flight }, Outcome::Ignore) => {
                self.phase = ModelPhase::HalfOpen {
                    in_flight: in_flight - 1,
                };
            }
            (ModelPhase::Closed, Outcome::Ignore) => {}
            (ModelPhase::Open { .. }, _) => panic!("no permit is issued while Open"),
        }
    }

    /// An early probe: Open moves to HalfOpen with no probe in flight.
    fn probe_now(&mut self) -> bool {
        if !matches!(self.phase, ModelPhase::Open { .. }) {
            return false;
        }
        self.enter(ModelPhase::HalfOpen { in_flight: 0 });
        true
    }

    fn retry_after(&self, now: u64) -> Option<u64> {
        match self.phase {
            ModelPhase::Open { until } => Some(until.saturating_sub(now)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Complete(usize, Outcome),
    Drop(usize),
    Advance(u64),
    ProbeNow,
}

fn ops(reset: u64) -> impl Strategy<Value = Vec<Op>> {
    let outcome = prop_oneof![
        2 => Just(Outcome::Success),
        3 => Just(Outcome::Failure),
        1 => Just(Outcome::Ignore),
    ];
    let op = prop_oneof![
        4 => Just(Op::Acquire),
        4 => (any::<usize>(), outcome).prop_map(|(i, o)| Op::Complete(i, o)),
        1 => any::<usize>().prop_map(Op::Drop),
        2 => (0..2 * reset).prop_map(Op::Advance),
        1 => Just(Op::ProbeNow),
    ];
    proptest::collection::vec(op, 1..150)
}

fn case() -> impl Strategy<Value = (u32, u32, u64, Vec<Op>)> {
    (1_u32..=6, 1_u32..=4, 10_u64..=1000)
        .prop_flat_map(|(t, h, r)| (Just(t), Just(h), Just(r), ops(r)))
}

async fn run_against_model(
    threshold: u32,
    max_probes: u32,
    reset: u64,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let seen: Arc<Mutex<Vec<Transition>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let b = breaker(threshold, ms(reset), max_probes)
        .with_listener(move |_, t| sink.lock().unwrap().push(t));
    let mut model = Model::new(threshold, max_probes, reset);
    let mut held: Vec<(BreakerPermit, u64)> = Vec::new();
    let mut now = 0_u64;

    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Acquire => match (b.try_acquire(), model.acquire(now)) {
                (Ok(permit), Ok(generation)) => {
                    prop_assert_eq!(permit.is_probe(), model.state() == HalfOpen);
                    held.push((permit, generation));
                }
                (Err(r), Err((state, retry_ms))) => {
                    prop_assert_eq!(r.state, state, "step {}", step);
                    prop_assert_eq!(r.retry_after, ms(retry_ms), "step {}", step);
                }
                (got, want) => {
                    return Err(TestCaseError::fail(format!(
                        "step {step}: breaker {got:?}, model {want:?}"
                    )));
                }
            },
            Op::Complete(i, outcome) if !held.is_empty() => {
                let (permit, generation) = held.swap_remove(i % held.len());
                permit.record(outcome);
                model.complete(generation, outcome, now);
            }
            Op::Drop(i) if !held.is_empty() => {
                let (permit, generation) = held.swap_remove(i % held.len());
                drop(permit);
                model.complete(generation, Outcome::Ignore, now);
            }
            Op::Complete(..) | Op::Drop(_) => {}
            Op::Advance(d) => {
                advance(ms(d)).await;
                now += d;
            }
            Op::ProbeNow => prop_assert_eq!(b.probe_now(), model.probe_now(), "step {}", step),
        }
        prop_assert_eq!(b.state(), model.state(), "step {}", step);
        prop_assert_eq!(b.retry_after(), model.retry_after(now).map(ms));
        prop_assert_eq!(b.stats().consecutive_failures, model.failures);
        prop_assert_eq!(&*seen.lock().unwrap(), &model.transitions);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn breaker_matches_the_reference_model((threshold, max_probes, reset, ops) in case()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run_against_model(threshold, max_probes, reset, ops))?;
    }
}
