//! Warnings a flood could repeat: logged at most once per interval, so a
//! refusal triggered thousands of times a second does not move the flood to
//! the disk. A leaf: the server, the bounds layer and the registry use it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A warning that may be logged at most once per [`RateLimitedLog::EVERY`]:
/// a refusal a flood can trigger thousands of times a second must not
/// turn into as many log lines (the flood would move to the disk).
pub(crate) struct RateLimitedLog {
    /// Milliseconds since [`log_epoch`] of the last line, plus one; 0: none.
    last: AtomicU64,
}

fn log_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl RateLimitedLog {
    /// The shortest time between two lines.
    pub(crate) const EVERY: Duration = Duration::from_secs(10);

    pub(crate) const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
        }
    }

    /// True when a line may be logged now (and counts it as logged).
    pub(crate) fn allow(&self) -> bool {
        let now = u64::try_from(log_epoch().elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last.load(Ordering::Relaxed);
        let every = u64::try_from(Self::EVERY.as_millis()).unwrap_or(u64::MAX);
        (last == 0 || now.saturating_sub(last) >= every)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
