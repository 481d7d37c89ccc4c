//! Running the built `cortex` binary as a memory service, for the tests
//! that kill and restart it.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `cortex serve memory ARGS --db DB` (environment defaults removed)
/// and waits for its ready line; returns the process and the URL it printed.
pub(crate) fn serve_memory(args: &[&str], db: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cortex"))
        .args(["serve", "memory"])
        .args(args)
        .arg("--db")
        .arg(db)
        .env_remove("DATABASE_URL")
        .env_remove("PORT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        url.starts_with("http://"),
        "unexpected ready line: {line:?}"
    );
    (child, url)
}
