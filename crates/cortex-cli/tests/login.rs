//! `cortex login URL` against an authorization server and MCP server on
//! loopback that approve at once (`cortex_test_support::oauth_server`, the
//! one the client library's OAuth tests use): the URL is printed, the
//! browser's part is played by an HTTP client following the redirects, the
//! token lands in a file of mode 0600, and `cortex --url URL tools` sends
//! it.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use cortex_test_support::oauth_server::{self, seen};

#[test]
fn login_keeps_a_private_token_that_later_commands_send() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (base, state) = runtime.block_on(oauth_server::start(|s| s.tools = vec!["whoami"]));

    let dir = tempfile::tempdir().unwrap();
    let url = format!("{base}/mcp");
    let mut login = common::cortex()
        .args(["login", &url, "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The authorization URL is printed on stderr: play the browser.
    let mut stderr = BufReader::new(login.stderr.take().unwrap()).lines();
    let mut printed = Vec::new();
    let mut authorize_url = None;
    for line in stderr.by_ref() {
        let line = line.unwrap();
        printed.push(line.clone());
        if let Some(at) = line.find("http").filter(|_| line.contains("/authorize?")) {
            authorize_url = Some(line[at..].trim().to_string());
            break;
        }
    }
    // Keep reading what it says while it waits.
    std::thread::spawn(move || stderr.for_each(drop));
    let authorize_url =
        authorize_url.unwrap_or_else(|| panic!("no authorization URL printed: {printed:?}"));
    assert!(
        authorize_url.contains("code_challenge_method=S256"),
        "{authorize_url}"
    );
    let page = runtime
        .block_on(async { reqwest::get(&authorize_url).await?.text().await })
        .unwrap();
    assert!(page.contains("Authorized"), "{page}");
    let output = login.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "login failed: {stdout}");
    assert!(stdout.contains(&format!("logged in to {url}")), "{stdout}");
    assert!(seen(&state).authorizations[0]["redirect_uri"].starts_with("http://127.0.0.1:"));

    let file = dir.path().join("oauth-tokens.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is private");
    }
    let kept = std::fs::read_to_string(&file).unwrap();
    let refresh_token = seen(&state).refresh_tokens.keys().next().cloned().unwrap();
    assert!(kept.contains(&refresh_token), "{kept}");

    // A later command on the same data directory sends the token.
    let tools = common::cortex()
        .env("CORTEX_DATA_DIR", dir.path())
        .args(["--url", &url, "tools"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&tools.stdout);
    assert!(
        tools.status.success(),
        "{listing} {}",
        String::from_utf8_lossy(&tools.stderr)
    );
    assert!(listing.contains("whoami"), "{listing}");
    assert!(!seen(&state).accepted.is_empty());
}

#[test]
fn login_help_teaches() {
    let run = common::run(&["login", "--help"], None).ok();
    for needle in [
        "oauth-tokens.json",
        "--open",
        "--port",
        "--scope",
        "cortex --url",
    ] {
        assert!(
            run.stdout.contains(needle),
            "`cortex login --help` lacks {needle}"
        );
    }
}
