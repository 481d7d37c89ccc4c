//! The bounds flags of `cortex serve` and `cortex up`, and the privacy of
//! the data they create, through the built binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{run, serve_memory};

#[test]
fn serve_and_up_explain_their_bounds_in_help() {
    for command in ["serve", "up"] {
        let help = run(&[command, "--help"], None).ok().stdout;
        for flag in [
            "--header-timeout-secs",
            "--body-timeout-secs",
            "--idle-timeout-secs",
            "--max-connections",
            "--max-requests",
            "--max-streams",
            "--mcp-session-ttl-secs",
            "--mcp-sessions-per-client",
            "--allowed-host",
            "--allowed-origin",
        ] {
            assert!(
                help.contains(flag),
                "`cortex {command} --help` lacks {flag}"
            );
        }
        assert!(help.contains("CORTEX_ALLOWED_HOSTS"), "{help}");
    }
}

/// The status of `GET /health` sent with `Host: host`.
fn health_with_host(address: &str, host: &str) -> u16 {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(unix)]
#[test]
fn serve_keeps_its_data_private_and_applies_the_bounds_flags() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir
        .path()
        .join("private")
        .join("memory")
        .join("memory.sqlite3");
    let (mut child, url) = serve_memory(
        &[
            "--port",
            "0",
            "--allowed-host",
            "memory.test",
            "--header-timeout-secs",
            "1",
        ],
        &db,
    );
    let address = url.trim_start_matches("http://").to_string();

    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("private")), 0o700);
    assert_eq!(mode(&dir.path().join("private").join("memory")), 0o700);
    assert_eq!(mode(&db), 0o600);

    assert_eq!(health_with_host(&address, "memory.test:9000"), 200);
    assert_eq!(health_with_host(&address, "localhost"), 200);
    assert_eq!(health_with_host(&address, "evil.example"), 403);

    // A head that never completes is dropped after --header-timeout-secs.
    let mut slow = TcpStream::connect(&address).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    match slow.read(&mut buf) {
        Ok(0) => {}
        Ok(_) => panic!("a head that never completed got an answer"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "still open after 10 s"
        ),
    }

    child.kill().unwrap();
    child.wait().unwrap();
}
