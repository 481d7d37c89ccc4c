//! Resilience mechanisms without I/O: the circuit breaker, retry backoff,
//! `Retry-After`, the retry budget, and the reconnect policy.
//!
//! Mechanism only: every number is policy that the caller passes in. Time is
//! `tokio::time::Instant`, so tests drive these with paused time.
//!
//! # Layout
//! - [`breaker`]: consecutive-failure circuit breaker with bounded half-open probes.
//! - [`backoff`]: exponential backoff with full jitter, and `Retry-After` parsing.
//! - [`budget`]: a retry budget, so retries cannot multiply load in an outage.
//! - [`reconnect`]: the one reconnect policy of long-lived connections (streams,
//!   etcd watches): capped exponential backoff, full jitter, the server's
//!   `retry:` or `Retry-After` first.
//! - [`human`]: the one way durations are written for people.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod human;
pub mod reconnect;
