//! Writing to stdout: JSON (pretty for people, compact with `--json`),
//! aligned tables, durations. A closed stdout (`cortex stream … | head`)
//! ends the command quietly instead of panicking.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::exit::Failure;

/// Writes one line to stdout.
pub(crate) fn line(text: impl AsRef<str>) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.as_ref())
        .and_then(|()| out.flush())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Failure::stdout_closed()
            } else {
                Failure::other(format!("cannot write to stdout: {e}"))
            }
        })
}

/// Writes `value`: compact (one line) for scripts, pretty for people.
pub(crate) fn json(value: &Value, compact: bool) -> Result<(), Failure> {
    let text = if compact {
        value.to_string()
    } else {
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    };
    line(text)
}

/// Rows as columns aligned on their widest cell; the last column is not
/// padded.
pub(crate) fn table(rows: &[Vec<String>]) -> Result<(), Failure> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in rows {
        let mut text = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        line(text.trim_end())?;
    }
    Ok(())
}

/// A duration for people: `850 µs`, `12.3 ms`, `1.25 s`.
pub(crate) fn duration(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    // Thresholds where the rounded value would reach the next unit.
    if micros < 999.5 {
        format!("{micros:.0} µs")
    } else if micros < 999_950.0 {
        format!("{:.1} ms", micros / 1000.0)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

/// Milliseconds as a JSON number with microsecond precision.
pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1000.0
}

/// The first sentence of a description, for a table cell.
pub(crate) fn first_sentence(text: &str) -> &str {
    let line = text.lines().next().unwrap_or_default().trim();
    match line.find(". ") {
        Some(end) => &line[..=end],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_micros(850)), "850 µs");
        assert_eq!(duration(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(duration(Duration::from_millis(1250)), "1.25 s");
        assert_eq!(duration(Duration::from_micros(999_990)), "1.00 s");
        assert_eq!(duration(Duration::from_nanos(999_700)), "1.0 ms");
        assert_eq!(first_sentence("One. Two."), "One.");
        assert_eq!(millis(Duration::from_micros(1_234_567)), 1234.567);
    }
}
