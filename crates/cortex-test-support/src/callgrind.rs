//! Instructions counted by callgrind, for the benches that compare two
//! paths by the work they do rather than by time (which a shared machine
//! moves by more than the differences in question).
//!
//! A bench runs itself under `valgrind --tool=callgrind` ([`instructions`])
//! with settings in environment variables; the run under callgrind reads
//! them and does the work. Twice, with two amounts of work, and the
//! difference divided by the difference in amount is the cost of one unit,
//! with start-up and shutdown taken out ([`per_unit`]).

use std::path::Path;
use std::process::Command;

/// Whether `valgrind` can be run; benches that need it say so and stop.
pub fn available() -> bool {
    Command::new("valgrind").arg("--version").output().is_ok()
}

/// The instructions callgrind counted in one run of this executable with
/// `env` set, its profile written to `out` (for `callgrind_annotate`).
///
/// # Panics
/// When valgrind cannot be run, the run fails, or it prints no total: a
/// bench has nothing to report then.
pub fn instructions(out: &Path, env: &[(&str, String)]) -> u64 {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("this executable: {e}"));
    let run = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("valgrind: {e}"));
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the run under callgrind ({env:?}) failed:\n{log}"
    );
    // `==pid== Collected : 222415403`
    log.lines()
        .find_map(|line| line.split_once("Collected :"))
        .and_then(|(_, count)| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("callgrind printed no total:\n{log}"))
}

/// Instructions per unit of work: `run(low)` and `run(high)` are the totals
/// of runs doing `low` and `high` units after the same start.
pub fn per_unit(low: usize, high: usize, run: impl Fn(usize) -> u64) -> f64 {
    let (a, b) = (run(low), run(high));
    (b as f64 - a as f64) / (high - low) as f64
}
