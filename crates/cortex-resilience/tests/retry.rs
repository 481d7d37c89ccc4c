//! Retry timing (backoff, `Retry-After`) and the retry budget.
//!
//! The budget tests drive time through the `*_at` methods with explicit
//! `tokio::time::Instant`s rather than `#[tokio::test(start_paused = true)]`:
//! the crate's tokio dependency does not enable the `test-util` feature, so a
//! paused clock is not available here. The explicit timestamps give the same
//! determinism.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cortex_resilience::backoff::{Backoff, InvalidBackoff, Jitter, next_delay, parse_retry_after};
use cortex_resilience::budget::{InvalidBudget, RetryBudget};
use proptest::prelude::*;
use tokio::time::Instant;

const MS: fn(u64) -> Duration = Duration::from_millis;
const SECS: fn(u64) -> Duration = Duration::from_secs;

fn plain(initial: Duration, factor: f64, max: Duration) -> Backoff {
    Backoff::try_new(initial, factor, max, Jitter::None).unwrap()
}

// ---------------------------------------------------------------- backoff

#[test]
fn default_matches_seed() {
    let b = Backoff::default();
    assert_eq!(b.initial, MS(100));
    assert_eq!(b.factor, 2.0);
    assert_eq!(b.max, SECS(10));
    assert_eq!(b.jitter, Jitter::Full);
}

#[test]
fn ceiling_doubles_then_caps() {
    let b = plain(MS(100), 2.0, SECS(10));
    let got: Vec<u128> = (0..10).map(|a| b.ceiling(a).as_millis()).collect();
    assert_eq!(
        got,
        [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
    );
}

#[test]
fn ceiling_does_not_overflow_for_huge_attempts() {
    let b = Backoff::default();
    for attempt in [31, 32, 63, 64, 65, 1000, 1_000_000, u32::MAX] {
        assert_eq!(b.ceiling(attempt), SECS(10), "attempt {attempt}");
        assert!(b.delay(attempt) <= SECS(10));
    }
    // An unbounded max saturates too instead of panicking.
    let unbounded = plain(MS(1), 10.0, Duration::MAX);
    assert_eq!(unbounded.ceiling(1000), Duration::MAX);
    assert_eq!(unbounded.ceiling(u32::MAX), Duration::MAX);
    // factor 1.0 is a constant backoff, even at u32::MAX.
    let constant = plain(MS(250), 1.0, SECS(10));
    assert_eq!(constant.ceiling(1), MS(250));
    assert_eq!(constant.ceiling(u32::MAX), MS(250));
}

#[test]
fn full_jitter_stays_within_ceiling_and_varies() {
    let b = Backoff::default();
    let mut rng = fastrand::Rng::with_seed(7);
    for attempt in 0..12 {
        let ceiling = b.ceiling(attempt);
        let samples: Vec<Duration> = (0..200).map(|_| b.delay_with(attempt, &mut rng)).collect();
        assert!(samples.iter().all(|d| *d <= ceiling), "attempt {attempt}");
        let mut distinct = samples.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 100, "attempt {attempt}: not jittered");
        // Full jitter spans the whole range, not just the top of it.
        assert!(samples.iter().any(|d| *d < ceiling / 4));
        assert!(samples.iter().any(|d| *d > ceiling * 3 / 4));
    }
    // Unseeded delay() is bounded as well.
    for _ in 0..100 {
        assert!(b.delay(3) <= MS(800));
    }
}

#[test]
fn seeded_jitter_is_reproducible() {
    let b = Backoff::default();
    let mut r1 = fastrand::Rng::with_seed(42);
    let mut r2 = fastrand::Rng::with_seed(42);
    let a: Vec<Duration> = (0..20).map(|n| b.delay_with(n, &mut r1)).collect();
    let c: Vec<Duration> = (0..20).map(|n| b.delay_with(n, &mut r2)).collect();
    assert_eq!(a, c);
}

#[test]
fn no_jitter_equals_ceiling() {
    let b = plain(MS(100), 3.0, SECS(30));
    let mut rng = fastrand::Rng::with_seed(1);
    for attempt in 0..40 {
        assert_eq!(b.delay(attempt), b.ceiling(attempt));
        assert_eq!(b.delay_with(attempt, &mut rng), b.ceiling(attempt));
    }
}

#[test]
fn invalid_backoff_is_rejected_naming_the_field() {
    let cases = [
        (Duration::ZERO, 2.0, SECS(1), "initial"),
        (MS(100), 0.5, SECS(1), "factor"),
        (MS(100), 0.0, SECS(1), "factor"),
        (MS(100), -2.0, SECS(1), "factor"),
        (MS(100), f64::NAN, SECS(1), "factor"),
        (MS(100), f64::INFINITY, SECS(1), "factor"),
        (MS(100), 2.0, MS(99), "max"),
    ];
    for (initial, factor, max, field) in cases {
        let err = Backoff::try_new(initial, factor, max, Jitter::Full).unwrap_err();
        assert_eq!(err.field(), field, "{err}");
        assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
    }
    assert_eq!(
        Backoff::try_new(MS(100), 2.0, MS(99), Jitter::None),
        Err(InvalidBackoff::Max {
            initial: MS(100),
            max: MS(99)
        })
    );
    // Boundaries are accepted.
    assert!(
        Backoff::try_new(
            Duration::from_nanos(1),
            1.0,
            Duration::from_nanos(1),
            Jitter::Full
        )
        .is_ok()
    );
}

// ------------------------------------------------------------ Retry-After

/// A fixed "now" on a whole second: Sun, 06 Nov 1994 08:49:37 GMT.
fn now() -> SystemTime {
    UNIX_EPOCH + SECS(784_111_777)
}

#[test]
fn retry_after_delay_seconds() {
    assert_eq!(parse_retry_after("120", now()), Some(SECS(120)));
    assert_eq!(parse_retry_after("0", now()), Some(Duration::ZERO));
    assert_eq!(parse_retry_after("007", now()), Some(SECS(7)));
    // Decision: optional whitespace around the value is ignored (RFC 9110
    // §5.5: it is not part of the field value).
    assert_eq!(parse_retry_after(" 5 ", now()), Some(SECS(5)));
    assert_eq!(parse_retry_after("\t5", now()), Some(SECS(5)));
    // Larger than u64 seconds: saturates rather than failing.
    assert_eq!(
        parse_retry_after("99999999999999999999999", now()),
        Some(SECS(u64::MAX))
    );
}

#[test]
fn retry_after_garbage_is_none() {
    for bad in [
        "-1",
        "+5",
        "abc",
        "1.5",
        "1e3",
        "",
        "   ",
        "5 s",
        "0x10",
        "١٢",
        "Sun, 06 Nov 1994",
        "Mon, 06 Nov 1994 08:49:37 GMT", // wrong weekday
    ] {
        assert_eq!(parse_retry_after(bad, now()), None, "{bad:?}");
    }
}

#[test]
fn retry_after_http_dates() {
    let in_30s = httpdate::fmt_http_date(now() + SECS(30));
    assert_eq!(in_30s, "Sun, 06 Nov 1994 08:50:07 GMT");
    assert_eq!(parse_retry_after(&in_30s, now()), Some(SECS(30)));
    // Sub-second "now" still gives about 30 s.
    let later = now() + MS(400);
    let d = parse_retry_after(&in_30s, later).unwrap();
    assert!(d > SECS(29) && d <= SECS(30), "{d:?}");

    // Past and present dates mean "retry now".
    let past = httpdate::fmt_http_date(now() - SECS(3600));
    assert_eq!(parse_retry_after(&past, now()), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now()),
        Some(Duration::ZERO)
    );

    // Obsolete forms: RFC 850 and asctime.
    let before = now() - SECS(60);
    assert_eq!(
        parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", before),
        Some(SECS(60))
    );
    assert_eq!(
        parse_retry_after("Sun Nov  6 08:49:37 1994", before),
        Some(SECS(60))
    );
}

#[test]
fn next_delay_prefers_retry_after_and_caps_it() {
    let b = plain(MS(100), 2.0, SECS(10));
    let cap = SECS(60);
    // Retry-After wins over the backoff, whether longer or shorter.
    assert_eq!(next_delay(&b, 0, Some(SECS(30)), cap), SECS(30));
    assert_eq!(next_delay(&b, 6, Some(Duration::ZERO), cap), Duration::ZERO);
    // ... but never beyond the cap, which may exceed the backoff's max.
    assert_eq!(next_delay(&b, 0, Some(SECS(86_400)), cap), cap);
    assert_eq!(next_delay(&b, 0, Some(SECS(u64::MAX)), cap), cap);
    // Without it, the backoff decides.
    assert_eq!(next_delay(&b, 3, None, cap), MS(800));
    let jittered = Backoff::default();
    for _ in 0..100 {
        assert!(next_delay(&jittered, 3, None, cap) <= MS(800));
    }
    // End to end: a parsed header.
    let ra = parse_retry_after("120", now());
    assert_eq!(next_delay(&b, 0, ra, cap), cap);
}

proptest! {
    #[test]
    fn ceiling_is_monotone_and_bounded(
        initial_ns in 1u64..=10_000_000_000,
        factor in 1.0f64..16.0,
        extra_ns in 0u64..=100_000_000_000,
        attempt in any::<u32>(),
    ) {
        let initial = Duration::from_nanos(initial_ns);
        let max = initial + Duration::from_nanos(extra_ns);
        let b = Backoff::try_new(initial, factor, max, Jitter::Full).unwrap();
        let here = b.ceiling(attempt);
        prop_assert!(here >= initial && here <= max);
        if let Some(next) = attempt.checked_add(1) {
            prop_assert!(b.ceiling(next) >= here, "{:?} then {:?}", here, b.ceiling(next));
        }
        let mut rng = fastrand::Rng::with_seed(u64::from(attempt));
        prop_assert!(b.delay_with(attempt, &mut rng) <= here);
    }

    #[test]
    fn ceiling_is_monotone_for_small_attempts(
        initial_ns in 1u64..=1_000_000_000,
        factor in prop_oneof![Just(1.0f64), 1.0f64..1.001, 1.0f64..3.0],
        extra_ns in 0u64..=600_000_000_000,
    ) {
        let initial = Duration::from_nanos(initial_ns);
        let max = initial + Duration::from_nanos(extra_ns);
        let b = Backoff::try_new(initial, factor, max, Jitter::None).unwrap();
        let mut prev = b.ceiling(0);
        prop_assert_eq!(prev, initial);
        for attempt in 1..200 {
            let here = b.ceiling(attempt);
            prop_assert!(here >= prev && here <= max, "attempt {}", attempt);
            prev = here;
        }
    }
}

// ----------------------------------------------------------------- budget

#[test]
fn default_budget_parameters() {
    let b = RetryBudget::default();
    assert_eq!(b.window(), SECS(10));
    assert_eq!(b.min_per_sec(), 10);
    assert_eq!(b.ratio(), 0.2);
    assert_eq!(b.balance(), 100.0);
}

#[test]
fn without_deposits_only_the_floor_is_available() {
    let b = RetryBudget::try_new(SECS(10), 10, 0.2).unwrap();
    let t = Instant::now();
    for i in 0..100 {
        assert!(b.try_withdraw_at(t), "retry {i} within the floor");
    }
    assert!(!b.try_withdraw_at(t));
    assert!(!b.try_withdraw_at(t + MS(500)));
    assert_eq!(b.balance_at(t), 0.0);
}

#[test]
fn deposits_add_ratio_retries_and_overspending_fails() {
    let b = RetryBudget::default();
    let t = Instant::now();
    for _ in 0..1000 {
        b.deposit_at(t);
    }
    // floor 10/s * 10 s = 100, plus 0.2 * 1000 = 200.
    assert_eq!(b.balance_at(t), 300.0);
    let granted = (0..1000).filter(|_| b.try_withdraw_at(t)).count();
    assert_eq!(granted, 300);
    assert!(!b.try_withdraw_at(t + SECS(5)));
    assert_eq!(b.balance_at(t), 0.0);
}

#[test]
fn budget_recovers_after_the_window() {
    let b = RetryBudget::default();
    let t = Instant::now();
    for _ in 0..1000 {
        b.deposit_at(t);
    }
    let spent_at = t + SECS(5);
    assert_eq!(
        (0..400).filter(|_| b.try_withdraw_at(spent_at)).count(),
        300
    );
    // At t+10s the deposits expired but the withdrawals (made at t+5s) have
    // not: the balance is negative, no retries.
    assert_eq!(b.balance_at(t + SECS(10)), -200.0);
    assert!(!b.try_withdraw_at(t + SECS(10)));
    // Once the withdrawals left the window too, the floor is back.
    assert_eq!(b.balance_at(spent_at + SECS(10)), 100.0);
    assert!(b.try_withdraw_at(spent_at + SECS(10)));
    assert_eq!(b.balance_at(spent_at + SECS(10)), 99.0);
}

#[test]
fn window_slides_slot_by_slot() {
    let b = RetryBudget::try_new(SECS(10), 0, 0.5).unwrap();
    let t = Instant::now();
    for _ in 0..10 {
        b.deposit_at(t);
    }
    for _ in 0..20 {
        b.deposit_at(t + SECS(5));
    }
    assert_eq!(b.balance_at(t + SECS(9)), 15.0);
    // The first batch expires when its slot leaves the window...
    assert_eq!(b.balance_at(t + SECS(10)), 10.0);
    assert_eq!(b.balance_at(t + MS(14_900)), 10.0);
    // ... and the second one five seconds later.
    assert_eq!(b.balance_at(t + SECS(15)), 0.0);
    assert!(!b.try_withdraw_at(t + SECS(15)));
    // A long idle gap clears everything at once.
    b.deposit_at(t + SECS(16));
    b.deposit_at(t + SECS(16));
    assert_eq!(b.balance_at(t + SECS(3600)), 0.0);
}

#[test]
fn earlier_timestamps_do_not_break_the_ring() {
    let b = RetryBudget::try_new(SECS(1), 0, 1.0).unwrap();
    let t = Instant::now();
    b.deposit_at(t + SECS(2));
    // Out-of-order time counts as "now".
    b.deposit_at(t);
    assert_eq!(b.balance_at(t), 2.0);
    assert_eq!(b.balance_at(t + SECS(3)), 0.0);
}

#[test]
fn ratio_is_exact_despite_f32() {
    // 0.29f32 is 0.2899999916..., which would truncate 100 deposits to 28.
    let b = RetryBudget::try_new(SECS(1), 0, 0.29).unwrap();
    let t = Instant::now();
    for _ in 0..100 {
        b.deposit_at(t);
    }
    assert_eq!((0..100).filter(|_| b.try_withdraw_at(t)).count(), 29);
}

#[test]
fn zero_floor_and_ratio_never_retries() {
    let b = RetryBudget::try_new(SECS(1), 0, 0.0).unwrap();
    let t = Instant::now();
    for _ in 0..1000 {
        b.deposit_at(t);
    }
    assert!(!b.try_withdraw_at(t));
    // ratio 0.0 with a floor: only the floor (3/s * 2 s).
    let b = RetryBudget::try_new(SECS(2), 3, 0.0).unwrap();
    for _ in 0..1000 {
        b.deposit_at(t);
    }
    assert_eq!((0..100).filter(|_| b.try_withdraw_at(t)).count(), 6);
}

#[test]
fn invalid_budget_is_rejected_naming_the_field() {
    let cases = [
        (MS(999), 0.2, "window"),
        (Duration::ZERO, 0.2, "window"),
        (MS(60_001), 0.2, "window"),
        (SECS(10), -0.1, "ratio"),
        (SECS(10), 1000.1, "ratio"),
        (SECS(10), f32::NAN, "ratio"),
        (SECS(10), f32::INFINITY, "ratio"),
    ];
    for (window, ratio, field) in cases {
        let err = RetryBudget::try_new(window, 10, ratio).unwrap_err();
        assert_eq!(err.field(), field, "{err}");
        assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
    }
    assert_eq!(
        RetryBudget::try_new(MS(999), 1, 0.2).unwrap_err(),
        InvalidBudget::Window { window: MS(999) }
    );
    // Boundaries are accepted.
    assert!(RetryBudget::try_new(SECS(1), 0, 0.0).is_ok());
    assert!(RetryBudget::try_new(SECS(60), u32::MAX, 1000.0).is_ok());
}

#[test]
fn concurrent_withdrawals_never_overspend() {
    let budget = Arc::new(RetryBudget::default());
    for _ in 0..1000 {
        budget.deposit();
    }
    let granted = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let budget = Arc::clone(&budget);
            let granted = Arc::clone(&granted);
            std::thread::spawn(move || {
                for _ in 0..100 {
                    if budget.try_withdraw() {
                        granted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // 800 attempts against a balance of exactly 300.
    assert_eq!(granted.load(Ordering::Relaxed), 300);
    assert_eq!(budget.balance(), 0.0);
}

#[test]
fn concurrent_mixed_traffic_respects_the_formula() {
    let budget = Arc::new(RetryBudget::try_new(SECS(60), 1, 0.1).unwrap());
    let granted = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let budget = Arc::clone(&budget);
            let granted = Arc::clone(&granted);
            std::thread::spawn(move || {
                for _ in 0..500 {
                    budget.deposit();
                    for _ in 0..3 {
                        if budget.try_withdraw() {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // floor 1/s * 60 s + 0.1 * 4000 deposits; everything stays in the window.
    assert_eq!(granted.load(Ordering::Relaxed), 60 + 400);
    assert_eq!(budget.balance(), 0.0);
}
