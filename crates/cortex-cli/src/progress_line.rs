//! The progress of a long tool call on stderr: one line rewritten in
//! place on a terminal, one plain line per report otherwise (a log file
//! or a pipe keeps every step). The server's words are cleaned of control
//! characters first: a peer must not be able to drive the terminal.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cortex_client::progress::{CallOptions, Progress};

/// The most a call that reports progress may take in all: each report
/// starts the request timeout over, up to this.
const MAX_TOTAL: Duration = Duration::from_secs(30 * 60);

/// The longest server message shown.
const MAX_MESSAGE: usize = 120;

/// Shows a call's progress on stderr.
pub(crate) struct ProgressLine {
    terminal: bool,
    /// Something is on the line (a terminal's line must be cleared).
    shown: Arc<AtomicBool>,
}

impl ProgressLine {
    pub(crate) fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            shown: Arc::default(),
        }
    }

    /// The call's options: progress shown, and the deadline pushed out by it.
    pub(crate) fn options(&self) -> CallOptions {
        let (terminal, shown) = (self.terminal, self.shown.clone());
        CallOptions::new()
            .on_progress(move |progress| {
                let text = render(&progress);
                let mut stderr = std::io::stderr().lock();
                let _ = if terminal {
                    write!(stderr, "\r\x1b[2K{text}")
                } else {
                    writeln!(stderr, "{text}")
                };
                let _ = stderr.flush();
                shown.store(true, Ordering::Release);
            })
            .reset_timeout_on_progress(MAX_TOTAL)
    }

    /// The call is over: a terminal's progress line is cleared.
    pub(crate) fn done(&self) {
        if self.terminal && self.shown.load(Ordering::Acquire) {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
        }
    }
}

/// `progress: 2/3 (67%) copying`, or `progress: 5` without a total.
fn render(progress: &Progress) -> String {
    let mut text = match (progress.total, progress.fraction()) {
        (Some(total), Some(fraction)) => format!(
            "progress: {}/{} ({:.0}%)",
            number(progress.progress),
            number(total),
            fraction * 100.0
        ),
        _ => format!("progress: {}", number(progress.progress)),
    };
    if let Some(message) = progress
        .message
        .as_deref()
        .map(clean)
        .filter(|m| !m.is_empty())
    {
        text.push(' ');
        text.push_str(&message);
    }
    text
}

/// A whole number without its `.0`.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

/// `message` on one line, without control characters, cut to
/// [`MAX_MESSAGE`] characters.
fn clean(message: &str) -> String {
    let one_line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    if trimmed.chars().count() > MAX_MESSAGE {
        let cut: String = trimmed.chars().take(MAX_MESSAGE).collect();
        format!("{cut}…")
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_as_one_clean_line() {
        let step = Progress::new(2.0, Some(3.0), Some("copying".into()));
        assert_eq!(render(&step), "progress: 2/3 (67%) copying");
        assert_eq!(render(&Progress::new(5.0, None, None)), "progress: 5");
        assert_eq!(
            render(&Progress::new(0.5, Some(0.0), None)),
            "progress: 0.5"
        );
        let hostile = Progress::new(1.0, Some(2.0), Some("\x1b[2Jwiped\r\nline".into()));
        assert_eq!(render(&hostile), "progress: 1/2 (50%) [2Jwiped  line");
        let long = Progress::new(1.0, None, Some("x".repeat(500)));
        assert_eq!(
            render(&long).chars().count(),
            "progress: 1 ".len() + MAX_MESSAGE + 1
        );
    }
}
