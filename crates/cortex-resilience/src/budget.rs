//! A retry budget: retries may be at most a fixed fraction of recent calls,
//! so that in an outage retries cannot multiply the load on a struggling
//! peer.
//!
//! This is the same idea as `tower::retry::budget::TpsBudget` (and Finagle's
//! `RetryBudget`): every first attempt *deposits* into the budget, every
//! retry must *withdraw* from it, and both expire after a sliding window.
//!
//! # Semantics
//! At any instant, the number of retries still allowed is
//!
//! ```text
//! tokens = min_per_sec * window_secs            (the floor, or reserve)
//!        + ratio * deposits_in_window
//!        - withdrawals_in_window
//! ```
//!
//! and [`RetryBudget::try_withdraw`] succeeds (and records a withdrawal) only
//! when `tokens >= 1`.
//!
//! - The floor lets a quiet service still retry: with no traffic at all,
//!   `min_per_sec * window_secs` retries are allowed per window.
//! - With traffic, about `ratio` retries are allowed per call made
//!   (`ratio = 0.2` means "retries add at most 20 % load").
//! - Deposits and withdrawals both expire, so the budget recovers once a burst
//!   of retries has left the window. Because deposits can expire before the
//!   withdrawals they paid for, the balance can be temporarily negative.
//!
//! The window is a ring of [`SLOTS`] time slots of `window / SLOTS` each, not a
//! token bucket refilled by the clock: an event is forgotten between
//! `window - window / SLOTS` and `window` after it happened. Time is
//! [`tokio::time::Instant`], so the budget follows tokio's paused test clock.
//!
//! Arithmetic is exact: the ledger counts micro-tokens in integers, `ratio`
//! being rounded to six decimal places once, at construction (so `0.2` really
//! means one retry per five calls despite `f32` representation error).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Number of time slots the window is divided into.
pub const SLOTS: usize = 10;

/// Micro-tokens per token: the ledger's fixed-point unit.
const MICROS: i128 = 1_000_000;

/// Shortest accepted window.
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Longest accepted window.
const MAX_WINDOW: Duration = Duration::from_secs(60);
/// Largest accepted ratio.
const MAX_RATIO: f32 = 1000.0;

/// A [`RetryBudget`] parameter was out of range. The message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidBudget {
    /// `window` was outside `1s..=60s`.
    #[error("invalid retry budget: `window` must be between 1 s and 60 s (got {})", crate::human::HumanDuration(*window))]
    Window {
        /// The rejected value.
        window: Duration,
    },
    /// `ratio` was NaN or outside `0.0..=1000.0`.
    #[error("invalid retry budget: `ratio` must be between 0.0 and 1000.0 (got {ratio})")]
    Ratio {
        /// The rejected value.
        ratio: f32,
    },
}

impl InvalidBudget {
    /// Name of the offending field: `"window"` or `"ratio"`.
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            Self::Window { .. } => "window",
            Self::Ratio { .. } => "ratio",
        }
    }
}

/// A sliding-window retry budget; see the [module docs](self).
///
/// Thread safe and cheap: every operation takes one uncontended
/// `std::sync::Mutex` and does O(1) work (plus expiring at most [`SLOTS`]
/// slots). Share it between tasks with an `Arc`.
#[derive(Debug)]
pub struct RetryBudget {
    window: Duration,
    slot_len: Duration,
    min_per_sec: u32,
    ratio: f32,
    /// The floor, `min_per_sec * window_secs`, in micro-tokens.
    reserve_micros: i128,
    /// Micro-tokens earned per deposit (`ratio` in fixed point).
    deposit_micros: i128,
    ring: Mutex<Ring>,
}

/// Deposits and withdrawals recorded in one time slot.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    deposits: u64,
    withdrawals: u64,
}

/// The ring of slots plus running totals over all of them.
#[derive(Debug)]
struct Ring {
    slots: [Slot; SLOTS],
    /// Index of the slot that receives new events.
    head: usize,
    /// When the head slot started.
    head_start: Instant,
    deposits: u64,
    withdrawals: u64,
}

impl Ring {
    fn new(now: Instant) -> Self {
        Self {
            slots: [Slot::default(); SLOTS],
            head: 0,
            head_start: now,
            deposits: 0,
            withdrawals: 0,
        }
    }

    /// Moves the head forward to the slot covering `now`, expiring the slots
    /// it passes over. A `now` earlier than the head (clocks from different
    /// contexts) is treated as "no time has passed".
    fn advance(&mut self, now: Instant, slot_len: Duration) {
        let elapsed = now.saturating_duration_since(self.head_start);
        if elapsed < slot_len {
            return;
        }
        let steps = elapsed.as_nanos() / slot_len.as_nanos();
        match u32::try_from(steps) {
            Ok(steps) if (steps as usize) < SLOTS => {
                for _ in 0..steps {
                    self.head = (self.head + 1) % SLOTS;
                    let expired = std::mem::take(&mut self.slots[self.head]);
                    self.deposits = self.deposits.saturating_sub(expired.deposits);
                    self.withdrawals = self.withdrawals.saturating_sub(expired.withdrawals);
                }
                self.head_start += slot_len * steps;
            }
            // The whole window has passed: forget everything.
            _ => *self = Self::new(now),
        }
    }
}

impl Default for RetryBudget {
    /// Window 10 s, floor 10 retries per second, ratio 0.2.
    fn default() -> Self {
        Self::new_unchecked(Duration::from_secs(10), 10, 0.2)
    }
}

impl RetryBudget {
    /// Validates and builds a budget allowing, per sliding `window`,
    /// `min_per_sec * window_secs` retries plus `ratio` retries per deposit.
    ///
    /// # Errors
    /// [`InvalidBudget`] naming the field when `window` is outside
    /// `1s..=60s` or `ratio` is NaN or outside `0.0..=1000.0`.
    pub fn try_new(window: Duration, min_per_sec: u32, ratio: f32) -> Result<Self, InvalidBudget> {
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
            return Err(InvalidBudget::Window { window });
        }
        // NaN is not contained in any range.
        if !(0.0..=MAX_RATIO).contains(&ratio) {
            return Err(InvalidBudget::Ratio { ratio });
        }
        Ok(Self::new_unchecked(window, min_per_sec, ratio))
    }

    fn new_unchecked(window: Duration, min_per_sec: u32, ratio: f32) -> Self {
        // `min_per_sec * window_secs` tokens, i.e. `min_per_sec * nanos / 1e3`
        // micro-tokens; exact in integers.
        let reserve_micros = i128::from(min_per_sec) * (window.as_nanos() as i128) / 1000;
        // `ratio <= 1000`, so this is at most 1e9 micro-tokens.
        let deposit_micros = (f64::from(ratio) * 1e6).round() as i128;
        Self {
            window,
            slot_len: window / SLOTS as u32,
            min_per_sec,
            ratio,
            reserve_micros,
            deposit_micros,
            ring: Mutex::new(Ring::new(Instant::now())),
        }
    }

    /// The sliding window over which deposits and withdrawals count.
    #[must_use]
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The floor: retries per second allowed even with no traffic.
    #[must_use]
    pub fn min_per_sec(&self) -> u32 {
        self.min_per_sec
    }

    /// Retries allowed per deposited call.
    #[must_use]
    pub fn ratio(&self) -> f32 {
        self.ratio
    }

    /// Records one call made. Call it for first attempts only, never for
    /// retries (a retry that deposited would pay for itself).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// [`deposit`](Self::deposit) at an explicit time, for callers that
    /// already hold a timestamp and for tests. Times must be non-decreasing
    /// across calls; an earlier time is treated as the latest one seen.
    pub fn deposit_at(&self, now: Instant) {
        let mut ring = self.lock(now);
        let head = ring.head;
        ring.slots[head].deposits = ring.slots[head].deposits.saturating_add(1);
        ring.deposits = ring.deposits.saturating_add(1);
    }

    /// May I retry? Returns `true` and consumes one token if the balance is
    /// at least one token, `false` (consuming nothing) otherwise.
    #[must_use = "a granted withdrawal is spent even if the result is ignored"]
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    /// [`try_withdraw`](Self::try_withdraw) at an explicit time; see
    /// [`deposit_at`](Self::deposit_at).
    #[must_use = "a granted withdrawal is spent even if the result is ignored"]
    pub fn try_withdraw_at(&self, now: Instant) -> bool {
        let mut ring = self.lock(now);
        if self.balance_micros(&ring) < MICROS {
            tracing::trace!(
                deposits = ring.deposits,
                withdrawals = ring.withdrawals,
                "retry budget exhausted"
            );
            return false;
        }
        let head = ring.head;
        ring.slots[head].withdrawals = ring.slots[head].withdrawals.saturating_add(1);
        ring.withdrawals = ring.withdrawals.saturating_add(1);
        true
    }

    /// The current number of tokens (retries allowed right now, if >= 1),
    /// for metrics and debugging. May be fractional and, after deposits
    /// expired, negative.
    #[must_use]
    pub fn balance(&self) -> f64 {
        self.balance_at(Instant::now())
    }

    /// [`balance`](Self::balance) at an explicit time; see
    /// [`deposit_at`](Self::deposit_at).
    #[must_use]
    pub fn balance_at(&self, now: Instant) -> f64 {
        let ring = self.lock(now);
        self.balance_micros(&ring) as f64 / MICROS as f64
    }

    fn balance_micros(&self, ring: &Ring) -> i128 {
        self.reserve_micros + self.deposit_micros * i128::from(ring.deposits)
            - MICROS * i128::from(ring.withdrawals)
    }

    /// Locks the ring and expires slots up to `now`. The ring is consistent
    /// after every statement that can panic, so a poisoned lock is recovered.
    fn lock(&self, now: Instant) -> std::sync::MutexGuard<'_, Ring> {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.advance(now, self.slot_len);
        ring
    }
}
