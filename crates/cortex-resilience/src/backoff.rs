//! Retry timing: exponential backoff with optional full jitter, and the HTTP
//! `Retry-After` header.
//!
//! Mechanism only: the numbers (initial delay, growth factor, cap, jitter
//! mode, `Retry-After` cap) come from configuration.
//!
//! # Model
//! The *ceiling* before retry number `attempt` (0-based) is
//! `min(max, initial * factor^attempt)`. With [`Jitter::Full`] the actual
//! delay is drawn uniformly from `[0, ceiling]` (the "full jitter" strategy
//! from the AWS architecture blog, "Exponential Backoff And Jitter"), which
//! spreads out retries from many clients that failed at the same moment.
//!
//! When the server sends `Retry-After`, [`next_delay`] obeys it instead of the
//! backoff, but never waits longer than a caller-chosen cap.

use std::time::{Duration, SystemTime};

/// How the delay is randomised below its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// No randomisation: the delay is exactly the ceiling.
    None,
    /// "Full jitter": the delay is uniform in `[0, ceiling]`.
    Full,
}

/// Exponential backoff policy: the delay before each retry.
///
/// Build it with [`Backoff::try_new`] to have the parameters validated. The
/// fields are public for convenience; the methods never panic even on values
/// that `try_new` would reject (a zero or NaN parameter just produces odd but
/// bounded delays), but only validated values carry the documented guarantees
/// (for example, the ceiling being non-decreasing in `attempt`).
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Ceiling of the delay before the first retry (attempt 0). Must be > 0.
    pub initial: Duration,
    /// Growth per attempt. Must be finite and `>= 1.0`.
    pub factor: f64,
    /// Upper bound of every delay. Must be `>= initial`.
    pub max: Duration,
    /// How the delay is randomised below the ceiling.
    pub jitter: Jitter,
}

/// A [`Backoff`] parameter was out of range. The message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidBackoff {
    /// `initial` was zero.
    #[error("invalid backoff: `initial` must be greater than zero")]
    Initial,
    /// `factor` was NaN, infinite or below 1.0.
    #[error("invalid backoff: `factor` must be finite and >= 1.0 (got {factor})")]
    Factor {
        /// The rejected value.
        factor: f64,
    },
    /// `max` was below `initial`.
    #[error(
        "invalid backoff: `max` ({}) must be >= `initial` ({})",
        crate::human::HumanDuration(*max),
        crate::human::HumanDuration(*initial)
    )]
    Max {
        /// The configured initial delay.
        initial: Duration,
        /// The rejected value.
        max: Duration,
    },
}

impl InvalidBackoff {
    /// Name of the offending field: `"initial"`, `"factor"` or `"max"`.
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Factor { .. } => "factor",
            Self::Max { .. } => "max",
        }
    }
}

impl Default for Backoff {
    /// 100 ms initial, factor 2.0, capped at 10 s, full jitter.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(10),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// Validates and builds a policy.
    ///
    /// A `const fn`, so a policy of constants can be checked when the crate
    /// is built (as [`crate::reconnect::ReconnectPolicy::try_new`] shows).
    ///
    /// # Errors
    /// [`InvalidBackoff`] naming the field when `initial` is zero, `factor` is
    /// not finite or below 1.0, or `max < initial`.
    pub const fn try_new(
        initial: Duration,
        factor: f64,
        max: Duration,
        jitter: Jitter,
    ) -> Result<Self, InvalidBackoff> {
        if initial.is_zero() {
            return Err(InvalidBackoff::Initial);
        }
        // NaN and the infinities fail `is_finite`.
        if !factor.is_finite() || factor < 1.0 {
            return Err(InvalidBackoff::Factor { factor });
        }
        // Compared as nanoseconds: `Duration`'s `<` is not usable in a const fn.
        if max.as_nanos() < initial.as_nanos() {
            return Err(InvalidBackoff::Max { initial, max });
        }
        Ok(Self {
            initial,
            factor,
            max,
            jitter,
        })
    }

    /// The un-jittered delay before retry number `attempt` (0-based):
    /// `min(max, initial * factor^attempt)`.
    ///
    /// Computed in floating point and saturated, so huge attempts (up to
    /// `u32::MAX`) return `max` instead of overflowing. The result is never
    /// below `initial` nor above `max` (when `max >= initial`).
    #[must_use]
    pub fn ceiling(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return self.initial.min(self.max);
        }
        let max_secs = self.max.as_secs_f64();
        let secs = self.initial.as_secs_f64() * self.factor.powf(f64::from(attempt));
        // NaN and +inf fail `secs < max_secs`, so they saturate to `max`.
        let raw = if secs < max_secs {
            Duration::try_from_secs_f64(secs).unwrap_or(self.max)
        } else {
            self.max
        };
        // Re-imposing `initial` hides float round-trip error (which could
        // otherwise make attempt 1 a nanosecond shorter than attempt 0 with
        // `factor == 1.0`); `max` is applied last so it always wins.
        raw.max(self.initial).min(self.max)
    }

    /// The delay to sleep before retry number `attempt`: the
    /// [`ceiling`](Self::ceiling) with jitter applied, using a thread-local
    /// random source.
    #[must_use]
    pub fn delay(&self, attempt: u32) -> Duration {
        match self.jitter {
            Jitter::None => self.ceiling(attempt),
            Jitter::Full => self.delay_with(attempt, &mut fastrand::Rng::new()),
        }
    }

    /// Like [`delay`](Self::delay) but drawing from `rng`, so tests can seed
    /// it (`fastrand::Rng::with_seed`) and get reproducible delays.
    #[must_use]
    pub fn delay_with(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => {
                let nanos = rng.u128(0..=ceiling.as_nanos());
                duration_from_nanos(nanos).unwrap_or(ceiling)
            }
        }
    }
}

/// `Duration` from a nanosecond count, `None` if it does not fit.
pub(crate) fn duration_from_nanos(nanos: u128) -> Option<Duration> {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    let sub = u32::try_from(nanos % NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, sub))
}

/// Parses an HTTP `Retry-After` value (RFC 9110 §10.2.3).
///
/// Accepts either form:
/// - `delay-seconds`: one or more ASCII digits (no sign, no fraction). A value
///   too large for a `Duration` saturates to `u64::MAX` seconds rather than
///   being rejected; cap it with [`next_delay`].
/// - an HTTP-date: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) and the
///   obsolete RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime
///   (`Sun Nov  6 08:49:37 1994`) forms, as accepted by `httpdate`. The result
///   is the time from `now` until that date; a date in the past (or equal to
///   `now`) gives `Duration::ZERO`.
///
/// Surrounding whitespace is ignored (`" 5 "` is 5 s): RFC 9110 §5.5 says
/// leading and trailing whitespace is not part of a field value, and some
/// header APIs hand it over untrimmed. Anything else (`"-1"`, `"+5"`, `"1.5"`,
/// `"abc"`, empty) gives `None`.
#[must_use]
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim_matches(|c: char| c == ' ' || c == '\t');
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits, so the sole possible parse error is overflow.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How long to wait before retry number `attempt`.
///
/// The server's `Retry-After` (already parsed, see [`parse_retry_after`])
/// wins over our backoff when present, even when it is shorter, but is capped
/// at `cap` so a hostile or buggy peer cannot park a caller for a day.
/// Without `Retry-After` the result is [`Backoff::delay`], which is bounded
/// by the backoff's own `max` (the `cap` does not apply to it).
#[must_use]
pub fn next_delay(
    backoff: &Backoff,
    attempt: u32,
    retry_after: Option<Duration>,
    cap: Duration,
) -> Duration {
    match retry_after {
        Some(server) => {
            if server > cap {
                tracing::debug!(?server, ?cap, "Retry-After exceeds cap; capping");
            }
            server.min(cap)
        }
        None => backoff.delay(attempt),
    }
}
