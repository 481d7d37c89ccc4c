//! Durations as people read them, the one format every message and table
//! of Cortex uses: `850 µs`, `12.3 ms`, `1.25 s`, `2 min 5 s`.
//!
//! ```
//! use std::time::Duration;
//! use cortex_resilience::human::HumanDuration;
//! assert_eq!(HumanDuration(Duration::from_millis(1250)).to_string(), "1.25 s");
//! ```

use std::fmt;
use std::time::Duration;

/// Displays a [`Duration`] with three significant figures in the largest
/// unit that keeps it at or above one (µs, ms, s), without trailing zeros
/// (`300 ms`, not `300.0 ms`), and as minutes and seconds from 100 s up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.as_secs_f64() * 1e6;
        // Thresholds where the rounded value would reach the next unit.
        if micros < 999.5 {
            write!(f, "{micros:.0} µs")
        } else if micros < 999_950.0 {
            write!(f, "{} ms", trimmed(format!("{:.1}", micros / 1000.0)))
        } else if micros < 99_995_000.0 {
            write!(f, "{} s", trimmed(format!("{:.2}", micros / 1e6)))
        } else {
            let secs = self.0.as_secs_f64().round() as u64;
            match (secs / 60, secs % 60) {
                (minutes, 0) => write!(f, "{minutes} min"),
                (minutes, seconds) => write!(f, "{minutes} min {seconds} s"),
            }
        }
    }
}

/// `12.50` → `12.5`, `300.0` → `300`.
fn trimmed(number: String) -> String {
    if number.contains('.') {
        number
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        number
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn human(d: Duration) -> String {
        HumanDuration(d).to_string()
    }

    #[test]
    fn each_unit_and_its_edges() {
        assert_eq!(human(Duration::ZERO), "0 µs");
        assert_eq!(human(Duration::from_micros(850)), "850 µs");
        assert_eq!(human(Duration::from_nanos(999_700)), "1 ms");
        assert_eq!(human(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(human(Duration::from_millis(300)), "300 ms");
        assert_eq!(human(Duration::from_micros(999_990)), "1 s");
        assert_eq!(human(Duration::from_millis(1250)), "1.25 s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human(Duration::from_secs(30)), "30 s");
        assert_eq!(human(Duration::from_secs(120)), "2 min");
        assert_eq!(human(Duration::from_secs(125)), "2 min 5 s");
    }
}
