//! A per-endpoint circuit breaker: consecutive failures open it, and a bounded
//! number of half-open probes decide whether it closes again.
//!
//! # Rules
//! - **Closed**: every call is admitted. `failure_threshold` *consecutive*
//!   failures open the breaker; a success resets the count.
//! - **Open**: calls are refused at once with the time left until a probe is
//!   allowed ([`Rejected::retry_after`]).
//! - Once `reset_timeout` has passed, the next [`CircuitBreaker::try_acquire`]
//!   moves the breaker to **HalfOpen**, which admits at most
//!   `half_open_max_calls` *concurrent* probes. A probe success closes the
//!   breaker; a probe failure re-opens it for a fresh `reset_timeout`.
//! - **Early probe**: when something outside the breaker has seen the
//!   endpoint recover (an active health check passed),
//!   [`CircuitBreaker::probe_now`] moves an Open breaker to HalfOpen at once,
//!   without waiting out the rest of `reset_timeout`. It does not close it:
//!   a real call must still succeed as a probe.
//!
//! Every admitted call holds a [`BreakerPermit`] and reports one
//! [`Outcome`]: [`success`](BreakerPermit::success),
//! [`failure`](BreakerPermit::failure) (connect errors, timeouts, 5xx, 429:
//! the caller decides) or [`ignore`](BreakerPermit::ignore) (a 4xx is the
//! caller's fault and never trips the breaker; so is a cancelled call). A
//! permit dropped without an outcome counts as `ignore`, so a half-open slot
//! is never leaked.
//!
//! # Stale outcomes
//! Each transition starts a new *generation*. A permit remembers the
//! generation it was admitted in, and its outcome only counts if the breaker
//! is still in that generation. So a slow failure admitted while Closed that
//! arrives after the breaker opened does not extend the open period, and a
//! success from before the breaker opened does not close it.
//!
//! # Cost and time
//! The state is a few words behind a [`std::sync::Mutex`] that is never held
//! across an `.await` (there is none inside). A refused call costs one lock,
//! one clock read and one counter increment. Time is [`tokio::time::Instant`],
//! so tests drive the breaker with paused time.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// The policy of one [`CircuitBreaker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before it allows a probe.
    pub reset_timeout: Duration,
    /// How many probes a half-open breaker admits at the same time.
    pub half_open_max_calls: u32,
}

impl BreakerConfig {
    /// A checked configuration: every value must be greater than zero.
    pub fn try_new(
        failure_threshold: u32,
        reset_timeout: Duration,
        half_open_max_calls: u32,
    ) -> Result<Self, InvalidBreakerConfig> {
        let zero = |field| Err(InvalidBreakerConfig { field });
        if failure_threshold == 0 {
            return zero("failure_threshold");
        }
        if reset_timeout.is_zero() {
            return zero("reset_timeout");
        }
        if half_open_max_calls == 0 {
            return zero("half_open_max_calls");
        }
        Ok(Self {
            failure_threshold,
            reset_timeout,
            half_open_max_calls,
        })
    }
}

impl Default for BreakerConfig {
    /// 5 consecutive failures, 30 s open, 1 probe at a time.
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            reset_timeout: Duration::from_secs(30),
            half_open_max_calls: 1,
        }
    }
}

/// A [`BreakerConfig`] value that is out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid circuit breaker config: `{field}` must be greater than zero")]
pub struct InvalidBreakerConfig {
    /// The name of the offending field.
    pub field: &'static str,
}

/// The state of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls are admitted; failures are counted.
    Closed,
    /// Calls are refused until the reset timeout has passed.
    Open,
    /// A bounded number of probe calls decide whether to close again.
    HalfOpen,
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        })
    }
}

/// A change of state, as reported to the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

/// How an admitted call ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint worked.
    Success,
    /// The endpoint failed: connect error, timeout, 5xx, 429.
    Failure,
    /// Says nothing about the endpoint: a 4xx (the caller's fault) or a
    /// cancelled call. Never trips the breaker; releases a half-open slot.
    Ignore,
}

/// A call refused by the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is {state}; retry after {}", crate::human::HumanDuration(*retry_after))]
pub struct Rejected {
    /// While [`Open`](BreakerState::Open): the time left until a probe is
    /// allowed. While [`HalfOpen`](BreakerState::HalfOpen) with every probe
    /// slot taken it is zero: the wait is unknown (it ends when a probe
    /// finishes), so the caller applies its own backoff.
    pub retry_after: Duration,
    /// The state that refused the call: `Open` or `HalfOpen`.
    pub state: BreakerState,
}

/// Counters of one breaker since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerStats {
    /// The current state, as [`CircuitBreaker::state`] reports it.
    pub state: BreakerState,
    /// Consecutive failures counted while Closed. Reset when the breaker
    /// closes or a closed call succeeds; kept while Open or HalfOpen.
    pub consecutive_failures: u32,
    /// Transitions into Open (from Closed or HalfOpen).
    pub opened_total: u64,
    /// Transitions into Closed.
    pub closed_total: u64,
    /// Transitions into HalfOpen.
    pub half_opened_total: u64,
    /// Calls refused.
    pub rejected_total: u64,
    /// Outcomes that arrived after a transition and were disregarded.
    pub stale_outcomes_total: u64,
}

type Listener = Box<dyn Fn(&str, Transition) + Send + Sync + 'static>;

/// A per-endpoint circuit breaker. Cloning is cheap and every clone shares
/// the same state.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    config: BreakerConfig,
    core: Mutex<Core>,
}

struct Core {
    phase: Phase,
    /// Bumped on every transition; permits of another generation are stale.
    generation: u64,
    consecutive_failures: u32,
    opened_total: u64,
    closed_total: u64,
    half_opened_total: u64,
    rejected_total: u64,
    stale_outcomes_total: u64,
    listener: Option<Listener>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32 },
}

impl Phase {
    fn state(self) -> BreakerState {
        match self {
            Self::Closed => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker for the endpoint `name` (used in logs and passed to
    /// the listener).
    ///
    /// A config built with [`BreakerConfig::try_new`] is always valid; one
    /// built by hand with a zero `failure_threshold` or `half_open_max_calls`
    /// is treated as 1 (a zero probe limit would never close again).
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let config = BreakerConfig {
            failure_threshold: config.failure_threshold.max(1),
            half_open_max_calls: config.half_open_max_calls.max(1),
            ..config
        };
        Self {
            inner: Arc::new(Inner {
                name: name.into(),
                config,
                core: Mutex::new(Core {
                    phase: Phase::Closed,
                    generation: 0,
                    consecutive_failures: 0,
                    opened_total: 0,
                    closed_total: 0,
                    half_opened_total: 0,
                    rejected_total: 0,
                    stale_outcomes_total: 0,
                    listener: None,
                }),
            }),
        }
    }

    /// Calls `f(name, transition)` on every transition (for metrics),
    /// replacing any previous listener, for every clone of this breaker.
    ///
    /// The listener runs while the breaker's internal lock is held, so that
    /// transitions are reported in the order they happened. It must be cheap,
    /// must not panic, and must not call back into this breaker (that would
    /// deadlock).
    pub fn with_listener(self, f: impl Fn(&str, Transition) + Send + Sync + 'static) -> Self {
        self.inner.lock().listener = Some(Box::new(f));
        self
    }

    /// Admits a call, or refuses it fast.
    ///
    /// An Open breaker whose `reset_timeout` has passed moves to HalfOpen
    /// here, and this call becomes the first probe.
    pub fn try_acquire(&self) -> Result<BreakerPermit, Rejected> {
        let inner = &*self.inner;
        let mut core = inner.lock();
        let probe = match core.phase {
            Phase::Closed => false,
            Phase::Open { until } => {
                let now = Instant::now();
                if now < until {
                    core.rejected_total += 1;
                    return Err(Rejected {
                        retry_after: until - now,
                        state: BreakerState::Open,
                    });
                }
                inner.transition(&mut core, Phase::HalfOpen { in_flight: 1 });
                true
            }
            Phase::HalfOpen { in_flight } => {
                if in_flight >= inner.config.half_open_max_calls {
                    core.rejected_total += 1;
                    return Err(Rejected {
                        retry_after: Duration::ZERO,
                        state: BreakerState::HalfOpen,
                    });
                }
                core.phase = Phase::HalfOpen {
                    in_flight: in_flight + 1,
                };
                true
            }
        };
        let generation = core.generation;
        drop(core);
        Ok(BreakerPermit {
            breaker: Arc::clone(&self.inner),
            generation,
            probe,
            settled: false,
        })
    }

    /// Lets the next call probe now: an Open breaker moves to HalfOpen at
    /// once instead of waiting out the rest of `reset_timeout`, and the next
    /// [`try_acquire`](Self::try_acquire) is admitted as a probe (at most
    /// `half_open_max_calls` at a time, as always). For a caller that knows
    /// the endpoint has recovered, such as an active health check that just
    /// passed. The probe still decides: a success closes the breaker, a
    /// failure re-opens it for a full `reset_timeout`.
    ///
    /// A Closed or HalfOpen breaker is left as it is. Returns whether the
    /// breaker moved; the move is a transition like any other (a new
    /// generation, counted in [`BreakerStats::half_opened_total`], logged,
    /// reported to the listener).
    pub fn probe_now(&self) -> bool {
        let inner = &*self.inner;
        let mut core = inner.lock();
        if !matches!(core.phase, Phase::Open { .. }) {
            return false;
        }
        inner.transition(&mut core, Phase::HalfOpen { in_flight: 0 });
        true
    }

    /// The current state. Reading it never causes a transition: an Open
    /// breaker whose `reset_timeout` has passed reports `Open` until the next
    /// [`try_acquire`](Self::try_acquire) moves it to `HalfOpen`
    /// ([`retry_after`](Self::retry_after) is then `Some(Duration::ZERO)`).
    pub fn state(&self) -> BreakerState {
        self.inner.lock().phase.state()
    }

    /// While Open, the time left until a probe is allowed (zero once the
    /// reset timeout has passed); `None` while Closed or HalfOpen.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.inner.lock().phase {
            Phase::Open { until } => Some(until.saturating_duration_since(Instant::now())),
            Phase::Closed | Phase::HalfOpen { .. } => None,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BreakerStats {
        let core = self.inner.lock();
        BreakerStats {
            state: core.phase.state(),
            consecutive_failures: core.consecutive_failures,
            opened_total: core.opened_total,
            closed_total: core.closed_total,
            half_opened_total: core.half_opened_total,
            rejected_total: core.rejected_total,
            stale_outcomes_total: core.stale_outcomes_total,
        }
    }

    /// The endpoint name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The policy in force (after the clamping described in [`new`](Self::new)).
    pub fn config(&self) -> &BreakerConfig {
        &self.inner.config
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // The state is updated before the listener runs, so it stays
        // consistent even if a listener panicked while holding the lock.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn settle(&self, generation: u64, outcome: Outcome) {
        let mut core = self.lock();
        if core.generation != generation {
            // Admitted before a transition: says nothing about the new state.
            // (A stale half-open slot was already freed by the transition.)
            if outcome != Outcome::Ignore {
                core.stale_outcomes_total += 1;
            }
            return;
        }
        match core.phase {
            Phase::Closed => match outcome {
                Outcome::Success => core.consecutive_failures = 0,
                Outcome::Failure => {
                    core.consecutive_failures = core.consecutive_failures.saturating_add(1);
                    if core.consecutive_failures >= self.config.failure_threshold {
                        let until = self.open_until();
                        self.transition(&mut core, Phase::Open { until });
                    }
                }
                Outcome::Ignore => {}
            },
            Phase::HalfOpen { in_flight } => match outcome {
                Outcome::Success => {
                    core.consecutive_failures = 0;
                    self.transition(&mut core, Phase::Closed);
                }
                Outcome::Failure => {
                    let until = self.open_until();
                    self.transition(&mut core, Phase::Open { until });
                }
                Outcome::Ignore => {
                    core.phase = Phase::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                    };
                }
            },
            // No permit is ever issued in an Open generation.
            Phase::Open { .. } => {}
        }
    }

    /// When a breaker opened now allows a probe. A timeout too large for the
    /// clock means "about 30 years".
    fn open_until(&self) -> Instant {
        const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);
        let now = Instant::now();
        now.checked_add(self.config.reset_timeout)
            .or_else(|| now.checked_add(FAR))
            .unwrap_or(now)
    }

    /// Moves to `to`, starts a new generation, counts, logs and notifies.
    fn transition(&self, core: &mut Core, to: Phase) {
        let transition = Transition {
            from: core.phase.state(),
            to: to.state(),
        };
        core.phase = to;
        core.generation = core.generation.wrapping_add(1);
        let endpoint = self.name.as_str();
        match transition.to {
            BreakerState::Open => {
                core.opened_total += 1;
                tracing::info!(
                    endpoint,
                    from = %transition.from,
                    failures = core.consecutive_failures,
                    reset_timeout = ?self.config.reset_timeout,
                    "circuit breaker opened"
                );
            }
            BreakerState::Closed => {
                core.closed_total += 1;
                tracing::info!(endpoint, from = %transition.from, "circuit breaker closed");
            }
            BreakerState::HalfOpen => {
                core.half_opened_total += 1;
                tracing::debug!(endpoint, "circuit breaker half-open: probing");
            }
        }
        if let Some(listener) = &core.listener {
            listener(endpoint, transition);
        }
    }
}

/// Admission of one call. Report how it ended with
/// [`success`](Self::success), [`failure`](Self::failure) or
/// [`ignore`](Self::ignore); dropping it counts as `ignore`.
///
/// The permit owns a handle to its breaker, so it can be held across awaits
/// and moved into spawned tasks.
#[must_use = "a dropped permit counts as `ignore`; report success or failure"]
pub struct BreakerPermit {
    breaker: Arc<Inner>,
    generation: u64,
    probe: bool,
    settled: bool,
}

impl BreakerPermit {
    /// The endpoint worked.
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// The endpoint failed (connect error, timeout, 5xx, 429).
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }

    /// The call says nothing about the endpoint (a 4xx, a cancelled call).
    pub fn ignore(self) {
        self.record(Outcome::Ignore);
    }

    /// Reports `outcome`.
    pub fn record(mut self, outcome: Outcome) {
        self.settle(outcome);
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    fn settle(&mut self, outcome: Outcome) {
        if !self.settled {
            self.settled = true;
            self.breaker.settle(self.generation, outcome);
        }
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        self.settle(Outcome::Ignore);
    }
}

impl fmt::Debug for BreakerPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerPermit")
            .field("endpoint", &self.breaker.name)
            .field("generation", &self.generation)
            .field("probe", &self.probe)
            .finish()
    }
}
