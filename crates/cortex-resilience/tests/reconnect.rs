//! The reconnect policy: exponential growth, the cap, full jitter, the
//! server's hint, reset after progress and the attempt limit. Seeded
//! generators make jittered delays reproducible; `wait` runs on paused time.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cortex_resilience::backoff::{InvalidBackoff, Jitter};
use cortex_resilience::reconnect::{Reconnect, ReconnectPolicy};
use proptest::prelude::*;
use tokio::time::Instant;

const MS: fn(u64) -> Duration = Duration::from_millis;
const SECS: fn(u64) -> Duration = Duration::from_secs;

fn policy(jitter: Jitter) -> ReconnectPolicy {
    ReconnectPolicy::try_new(MS(100), 2.0, SECS(5), jitter).unwrap()
}

fn seeded(policy: ReconnectPolicy, seed: u64) -> Reconnect {
    Reconnect::with_rng(policy, fastrand::Rng::with_seed(seed))
}

#[test]
fn grows_exponentially_then_stays_at_the_cap() {
    let mut r = seeded(policy(Jitter::None), 1);
    let got: Vec<u128> = (0..9)
        .map(|_| r.next_delay(None).unwrap().as_millis())
        .collect();
    assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    assert_eq!(r.attempts(), 9);
    assert!(!r.is_exhausted(), "no limit: never exhausted");
}

#[test]
fn full_jitter_stays_within_zero_and_the_ceiling_and_spreads() {
    let ceilings = [100, 200, 400, 800, 1600, 3200, 5000, 5000];
    for seed in 0..200 {
        let mut r = seeded(policy(Jitter::Full), seed);
        for ceiling in ceilings {
            let delay = r.next_delay(None).unwrap();
            assert!(
                delay <= MS(ceiling),
                "seed {seed}: {delay:?} > {ceiling} ms"
            );
        }
    }
    // Spread, not a constant: many clients failing together come back apart.
    let firsts: std::collections::BTreeSet<Duration> = (0..50)
        .map(|seed| seeded(policy(Jitter::Full), seed).next_delay(None).unwrap())
        .collect();
    assert!(firsts.len() > 40, "only {} distinct delays", firsts.len());
    assert!(
        firsts.iter().any(|d| *d < MS(50)),
        "full jitter reaches down towards zero"
    );
}

#[test]
fn the_same_seed_gives_the_same_delays() {
    let delays = |seed| {
        let mut r = seeded(policy(Jitter::Full), seed);
        (0..8)
            .map(|_| r.next_delay(None).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(delays(7), delays(7));
    assert_ne!(delays(7), delays(8));
}

#[test]
fn a_server_hint_wins_for_the_first_wait_then_grows_from_there() {
    for jitter in [Jitter::None, Jitter::Full] {
        let mut r = seeded(policy(jitter), 3);
        // Longer than our initial 100 ms, or shorter: the server decides.
        assert_eq!(r.next_delay(Some(MS(1500))), Some(MS(1500)), "{jitter:?}");
        r.reset();
        assert_eq!(r.next_delay(Some(MS(20))), Some(MS(20)), "{jitter:?}");
    }
    // Failing on, the hint is the base of the curve (as `initial` would be).
    let mut plain = seeded(policy(Jitter::None), 3);
    let got: Vec<u128> = (0..5)
        .map(|_| plain.next_delay(Some(MS(1000))).unwrap().as_millis())
        .collect();
    assert_eq!(got, [1000, 2000, 4000, 5000, 5000]);
    // Jitter spreads above the hint, never below it: never sooner than asked.
    for seed in 0..200 {
        let mut r = seeded(policy(Jitter::Full), seed);
        for ceiling in [1000, 2000, 4000, 5000, 5000] {
            let delay = r.next_delay(Some(MS(1000))).unwrap();
            assert!(
                delay >= MS(1000) && delay <= MS(ceiling),
                "seed {seed}: {delay:?}"
            );
        }
    }
}

#[test]
fn a_server_hint_is_capped_at_max() {
    for jitter in [Jitter::None, Jitter::Full] {
        let mut r = seeded(policy(jitter), 5);
        assert_eq!(r.next_delay(Some(SECS(86_400))), Some(SECS(5)));
        assert_eq!(r.next_delay(Some(Duration::MAX)), Some(SECS(5)));
    }
}

#[test]
fn a_zero_hint_means_at_once() {
    let mut r = seeded(policy(Jitter::Full).with_max_attempts(3), 9);
    assert_eq!(r.next_delay(Some(Duration::ZERO)), Some(Duration::ZERO));
    assert_eq!(r.next_delay(Some(Duration::ZERO)), Some(Duration::ZERO));
    assert_eq!(r.next_delay(Some(Duration::ZERO)), Some(Duration::ZERO));
    assert_eq!(
        r.next_delay(Some(Duration::ZERO)),
        None,
        "the limit bounds it"
    );
}

#[test]
fn reset_returns_to_the_initial_delay() {
    let mut r = seeded(policy(Jitter::None), 1);
    for _ in 0..6 {
        r.next_delay(None);
    }
    assert_eq!(r.next_delay(None), Some(SECS(5)));
    r.reset();
    assert_eq!(r.attempts(), 0);
    assert_eq!(r.next_delay(None), Some(MS(100)));
    assert_eq!(r.next_delay(None), Some(MS(200)));
}

#[test]
fn the_attempt_limit_ends_reconnecting_until_progress() {
    let mut r = seeded(policy(Jitter::Full).with_max_attempts(3), 1);
    for attempt in 1..=3 {
        assert!(r.next_delay(None).is_some(), "attempt {attempt}");
    }
    assert!(r.is_exhausted());
    assert_eq!(r.next_delay(None), None);
    assert_eq!(
        r.next_delay(Some(MS(10))),
        None,
        "a hint does not extend it"
    );
    assert_eq!(r.attempts(), 3, "a refused attempt is not counted");
    // Progress gives a full allowance back.
    r.reset();
    assert!(!r.is_exhausted());
    assert!(r.next_delay(None).is_some());

    let mut never = seeded(policy(Jitter::Full).with_max_attempts(0), 1);
    assert_eq!(
        never.next_delay(None),
        None,
        "a zero limit never reconnects"
    );
}

#[tokio::test(start_paused = true)]
async fn wait_sleeps_the_delay_on_tokios_clock() {
    let mut r = seeded(policy(Jitter::None).with_max_attempts(4), 1);
    let start = Instant::now();
    let mut slept = Duration::ZERO;
    while let Some(delay) = r.wait(None).await {
        slept += delay;
        assert_eq!(Instant::now() - start, slept);
    }
    assert_eq!(slept, MS(100 + 200 + 400 + 800));
    // Exhausted: returns at once, without sleeping.
    let before = Instant::now();
    assert_eq!(r.wait(None).await, None);
    assert_eq!(Instant::now(), before);
    // The server's hint is slept as given.
    r.reset();
    assert_eq!(r.wait(Some(MS(1234))).await, Some(MS(1234)));
    assert_eq!(Instant::now() - before, MS(1234));
}

#[test]
fn invalid_numbers_are_refused_naming_the_field() {
    let field = |initial, factor, max| {
        ReconnectPolicy::try_new(initial, factor, max, Jitter::Full)
            .unwrap_err()
            .field()
    };
    assert_eq!(field(Duration::ZERO, 2.0, SECS(1)), "initial");
    assert_eq!(field(MS(1), 0.5, SECS(1)), "factor");
    assert_eq!(field(MS(1), f64::NAN, SECS(1)), "factor");
    assert_eq!(field(MS(1), f64::INFINITY, SECS(1)), "factor");
    assert_eq!(field(SECS(2), 2.0, SECS(1)), "max");
    let error = ReconnectPolicy::try_new(SECS(2), 2.0, SECS(1), Jitter::Full).unwrap_err();
    assert!(matches!(error, InvalidBackoff::Max { .. }));
    assert!(error.to_string().contains("`max`"), "{error}");
    // The edges are valid: a constant delay, and max == initial.
    ReconnectPolicy::try_new(MS(1), 1.0, MS(1), Jitter::None).unwrap();
}

#[test]
fn a_policy_of_constants_is_checked_at_build_time() {
    const POLICY: ReconnectPolicy =
        match ReconnectPolicy::try_new(MS_100, 2.0, SECS_5, Jitter::Full) {
            Ok(policy) => policy.with_max_attempts(10),
            Err(_) => panic!("invalid"),
        };
    const MS_100: Duration = Duration::from_millis(100);
    const SECS_5: Duration = Duration::from_secs(5);
    assert_eq!(POLICY.backoff().initial, MS(100));
    assert_eq!(POLICY.backoff().max, SECS(5));
    assert_eq!(POLICY.max_attempts(), Some(10));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the numbers, the hint, the seed and the history (failures
    /// and resets), every delay is within `[0, min(max, initial *
    /// factor^n)]` without a hint, within `[min(hint, max), max]` with one,
    /// and never above `max`.
    #[test]
    fn delays_stay_within_bounds(
        initial_ns in 1u64..=10_000_000_000,
        factor in 1.0f64..8.0,
        extra_ns in 0u64..=100_000_000_000,
        full in any::<bool>(),
        seed in any::<u64>(),
        steps in proptest::collection::vec(
            prop_oneof![
                4 => proptest::option::of(0u64..=200_000_000_000).prop_map(Step::Fail),
                1 => Just(Step::Reset),
            ],
            1..60,
        ),
    ) {
        let initial = Duration::from_nanos(initial_ns);
        let max = initial + Duration::from_nanos(extra_ns);
        let jitter = if full { Jitter::Full } else { Jitter::None };
        let policy = ReconnectPolicy::try_new(initial, factor, max, jitter).unwrap();
        let mut r = seeded(policy.clone(), seed);
        for step in steps {
            match step {
                Step::Reset => r.reset(),
                Step::Fail(hint_ns) => {
                    let attempt = r.attempts();
                    let hint = hint_ns.map(Duration::from_nanos);
                    let delay = r.next_delay(hint).unwrap();
                    prop_assert!(delay <= max, "{:?} > max {:?}", delay, max);
                    match hint {
                        None => {
                            let ceiling = policy.backoff().ceiling(attempt);
                            prop_assert!(delay <= ceiling, "{:?} > ceiling {:?}", delay, ceiling);
                            if !full {
                                prop_assert_eq!(delay, ceiling);
                            }
                        }
                        Some(hint) => {
                            prop_assert!(delay >= hint.min(max), "{:?} below the hint {:?}", delay, hint);
                            if attempt == 0 {
                                prop_assert_eq!(delay, hint.min(max));
                            }
                        }
                    }
                    prop_assert_eq!(r.attempts(), attempt + 1);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// A failed attempt, with the server's hint (ns) if any.
    Fail(Option<u64>),
    /// Progress.
    Reset,
}
