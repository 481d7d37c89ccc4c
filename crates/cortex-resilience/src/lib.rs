//! Resilience mechanisms without I/O: the circuit breaker, retry backoff,
//! `Retry-After`, and the retry budget.
//!
//! Mechanism only: every number is policy that the caller passes in. Time is
//! `tokio::time::Instant`, so tests drive these with paused time.
//!
//! # Layout
//! - [`breaker`]: consecutive-failure circuit breaker with bounded half-open probes.
//! - [`backoff`]: exponential backoff with full jitter, and `Retry-After` parsing.
//! - [`budget`]: a retry budget, so retries cannot multiply load in an outage.
//! - [`human`]: the one way durations are written for people.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod human;
