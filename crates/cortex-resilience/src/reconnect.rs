//! Reconnecting a long-lived connection (an SSE stream, an etcd watch, a
//! lease keep-alive): how long to wait before each attempt, and when to stop.
//!
//! One policy for every place that reconnects, so they all back off the same
//! way: exponentially, with full jitter, capped, and obeying the server.
//!
//! # Model
//! A [`ReconnectPolicy`] is data (validated numbers); a [`Reconnect`] is the
//! state of one connection: the failed attempts since the last progress.
//! Before attempt `n` (0-based, counted since the last [`Reconnect::reset`]):
//!
//! - **No server hint**: the [`Backoff`] delay, `min(max, initial * factor^n)`
//!   with full jitter drawn from `[0, that]` (or exactly that without jitter).
//! - **A server hint** (an SSE `retry:` field, or an HTTP `Retry-After`): the
//!   hint replaces `initial` as the base. The first wait is exactly the hint;
//!   if the server stays unreachable the wait grows from there,
//!   `min(max, hint * factor^n)`, and jitter only spreads it *above* the hint,
//!   in `[hint, that]`: we never come back sooner than the server asked, and
//!   a server that keeps failing is not hammered at its own advised rate.
//! - **Capped by `max` either way**, the hint too: a buggy or hostile peer
//!   must not park a stream for a day. (A zero hint means "at once" every
//!   time; the attempt limit is what bounds that.)
//!
//! [`Reconnect::reset`] after progress (an event delivered, a watch opened):
//! the next failure waits as little as the first did. With an attempt limit,
//! [`Reconnect::next_delay`] answers `None` once that many attempts have
//! failed in a row, and the caller gives up.
//!
//! Sleeping is `tokio::time::sleep` ([`Reconnect::wait`]), so tests drive it
//! with paused time; randomness is a `fastrand::Rng` that tests can seed
//! ([`Reconnect::with_rng`]).
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use cortex_resilience::backoff::Jitter;
//! use cortex_resilience::reconnect::{Reconnect, ReconnectPolicy};
//!
//! let policy = ReconnectPolicy::try_new(
//!     Duration::from_millis(100), // initial
//!     2.0,                        // factor
//!     Duration::from_secs(5),     // max
//!     Jitter::Full,
//! )
//! .unwrap()
//! .with_max_attempts(10);
//! let mut reconnect = Reconnect::new(policy);
//!
//! // Without a hint: full jitter below the exponential ceiling.
//! assert!(reconnect.next_delay(None).unwrap() <= Duration::from_millis(100));
//! // The server's `retry: 1500` wins for this wait.
//! reconnect.reset();
//! assert_eq!(reconnect.next_delay(Some(Duration::from_millis(1500))), Some(Duration::from_millis(1500)));
//! assert_eq!(reconnect.attempts(), 1);
//! ```

use std::time::Duration;

use crate::backoff::{Backoff, InvalidBackoff, Jitter, duration_from_nanos};

/// How a connection reconnects: exponential backoff with optional full
/// jitter, capped, and an optional limit of failed attempts in a row.
///
/// Built by [`ReconnectPolicy::try_new`], so its numbers are always valid.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// Initial delay, growth factor, cap and jitter (validated).
    backoff: Backoff,
    /// Failed attempts in a row after which to give up; `None`: never.
    max_attempts: Option<u32>,
}

impl ReconnectPolicy {
    /// Validates and builds a policy without an attempt limit.
    ///
    /// A `const fn`, so a policy of constants can be checked when the crate
    /// is built:
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cortex_resilience::{backoff::Jitter, reconnect::ReconnectPolicy};
    /// const POLICY: ReconnectPolicy = match ReconnectPolicy::try_new(
    ///     Duration::from_millis(100), 2.0, Duration::from_secs(5), Jitter::Full,
    /// ) {
    ///     Ok(policy) => policy,
    ///     Err(_) => panic!("invalid reconnect policy"),
    /// };
    /// assert_eq!(POLICY.max_attempts(), None);
    /// ```
    ///
    /// # Errors
    /// [`InvalidBackoff`] naming the field (see [`InvalidBackoff::field`])
    /// when `initial` is zero, `factor` is not finite or below 1.0, or
    /// `max < initial`.
    pub const fn try_new(
        initial: Duration,
        factor: f64,
        max: Duration,
        jitter: Jitter,
    ) -> Result<Self, InvalidBackoff> {
        match Backoff::try_new(initial, factor, max, jitter) {
            Ok(backoff) => Ok(Self {
                backoff,
                max_attempts: None,
            }),
            Err(error) => Err(error),
        }
    }

    /// The same policy, giving up after `attempts` failed attempts in a row
    /// (zero: never reconnect).
    #[must_use]
    pub const fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// The initial delay, factor, cap and jitter.
    #[must_use]
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Failed attempts in a row after which to give up; `None`: never.
    #[must_use]
    pub fn max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The delay before attempt number `attempt` (0-based since the last
    /// progress), drawing any jitter from `rng`; the module docs give the
    /// rules. Pure: [`Reconnect`] keeps the count and calls this.
    #[must_use]
    pub fn delay(
        &self,
        attempt: u32,
        server_hint: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        let Some(hint) = server_hint else {
            return self.backoff.delay_with(attempt, rng);
        };
        let max = self.backoff.max;
        if hint > max {
            tracing::debug!(
                ?hint,
                ?max,
                "server reconnect hint exceeds the cap; capping"
            );
        }
        let floor = hint.min(max);
        // The hint as the base of the same exponential curve. `ceiling` does
        // the saturating arithmetic, and keeps the result in [floor, max].
        let ceiling = Backoff {
            initial: floor,
            ..self.backoff.clone()
        }
        .ceiling(attempt);
        match self.backoff.jitter {
            Jitter::None => ceiling,
            Jitter::Full => {
                let nanos = rng.u128(floor.as_nanos()..=ceiling.as_nanos());
                duration_from_nanos(nanos).unwrap_or(ceiling)
            }
        }
    }
}

/// The reconnect state of one connection: failed attempts since the last
/// progress, under a [`ReconnectPolicy`].
#[derive(Debug, Clone)]
pub struct Reconnect {
    policy: ReconnectPolicy,
    /// Attempts since the last [`reset`](Self::reset); the exponent of the
    /// next delay.
    attempts: u32,
    /// Own generator, so a test can seed one connection's jitter.
    rng: fastrand::Rng,
}

impl Reconnect {
    /// A fresh connection's state, with a randomly seeded jitter source.
    #[must_use]
    pub fn new(policy: ReconnectPolicy) -> Self {
        Self::with_rng(policy, fastrand::Rng::new())
    }

    /// Like [`new`](Self::new) with a given generator
    /// (`fastrand::Rng::with_seed`) for reproducible delays.
    #[must_use]
    pub fn with_rng(policy: ReconnectPolicy, rng: fastrand::Rng) -> Self {
        Self {
            policy,
            attempts: 0,
            rng,
        }
    }

    /// Counts one more attempt and returns how long to wait before it, or
    /// `None` (counting nothing) when the attempt limit is used up.
    ///
    /// `server_hint` is the server's latest advice, an SSE `retry:` or a
    /// parsed `Retry-After` (see [`crate::backoff::parse_retry_after`]); it
    /// wins over the backoff, within the cap.
    pub fn next_delay(&mut self, server_hint: Option<Duration>) -> Option<Duration> {
        if self.is_exhausted() {
            return None;
        }
        let delay = self.policy.delay(self.attempts, server_hint, &mut self.rng);
        self.attempts = self.attempts.saturating_add(1);
        Some(delay)
    }

    /// [`next_delay`](Self::next_delay), then sleeps that long on tokio's
    /// clock; returns the delay slept, or `None` at once when the attempt
    /// limit is used up.
    pub async fn wait(&mut self, server_hint: Option<Duration>) -> Option<Duration> {
        let delay = self.next_delay(server_hint)?;
        tokio::time::sleep(delay).await;
        Some(delay)
    }

    /// Progress was made (an event arrived, the connection is established):
    /// the next failure starts over from the initial delay and a full
    /// attempt allowance.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// Attempts counted since the last [`reset`](Self::reset).
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether the attempt limit is used up (never without a limit).
    #[must_use]
    pub fn is_exhausted(&self) -> bool {
        self.policy
            .max_attempts
            .is_some_and(|max| self.attempts >= max)
    }

    /// The policy it follows.
    #[must_use]
    pub fn policy(&self) -> &ReconnectPolicy {
        &self.policy
    }
}
