//! The console at `/` in a real browser: headless Chromium, driven through
//! chromedriver's W3C WebDriver endpoint, connects with a user's token and
//! sends inputs; the page shows their events: `input` and `context` while
//! memory is up, `pending` and then `stored` for an input sent while memory
//! is down. Another user's events never appear.
//!
//! Needs `chromium` and `chromedriver` on `PATH` (Debian's `chromium` and
//! `chromium-driver`, which `scripts/install-deps.sh` installs). Without
//! them the test fails; it does not skip.
//!
//! The WebDriver client is the few commands the test uses, over reqwest:
//! the protocol is plain JSON over HTTP, and a WebDriver crate would bring
//! a second copy of `http`, `cookie` and ICU's segmenter data for them.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::System;
use cortex_test_support::auth::{bearer, token};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The longest the page may take to show what the test waits for.
const PAGE_WAIT: Duration = Duration::from_secs(20);
/// How often the page is looked at while waiting.
const POLL: Duration = Duration::from_millis(100);
/// The longest chromedriver may take to listen.
const DRIVER_START: Duration = Duration::from_secs(15);

/// What the tests ask of the front door over HTTP, beside the page.
impl System {
    /// `user` sends `content` over HTTP, not through the page; its input id.
    async fn input(&self, user: &str, content: &str) -> String {
        let response = self
            .http
            .post(self.core.url("/input"))
            .header("authorization", bearer(&token(user, &[])))
            .json(&json!({"content": content}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let body: Value = response.json().await.unwrap();
        body["input_id"].as_str().unwrap().to_string()
    }
}

/// The first of `names` found on `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// chromedriver and the browser it started. Dropping it kills both: the
/// browser's other processes end with its main one. Both stay in the
/// test's process group, so an interrupted run (Ctrl-C) ends them too.
struct Driver {
    child: tokio::process::Child,
    /// The browser's main process, once a session has started it.
    browser: Option<rustix::process::Pid>,
    /// What chromedriver printed, for failure messages.
    log: Arc<Mutex<String>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(browser) = self.browser {
            let _ = rustix::process::kill_process(browser, rustix::process::Signal::KILL);
        }
        let _ = self.child.start_kill();
    }
}

/// Copies `from`'s lines into `log`, and sends the port of chromedriver's
/// "started successfully on port N" line once it comes.
fn read_driver_output(
    from: impl AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<String>>,
    port: Option<tokio::sync::oneshot::Sender<u16>>,
) {
    tokio::spawn(async move {
        let mut port = port;
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                let number: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let (Ok(number), Some(sender)) = (number.parse(), port.take()) {
                    let _ = sender.send(number);
                }
            }
            let mut log = log.lock().unwrap();
            if log.len() < 64 * 1024 {
                log.push_str(&line);
                log.push('\n');
            }
        }
    });
}

/// What the page shows: its connection state, the last answer to Send, and
/// the output events in order.
#[derive(Debug)]
struct Page {
    state: String,
    answer: String,
    events: Vec<Shown>,
}

/// One `<li>` of `#events`.
#[derive(Debug, Clone)]
struct Shown {
    kind: String,
    input: Option<String>,
    text: String,
}

impl Page {
    fn find(&self, kind: &str, input: Option<&str>) -> Option<&Shown> {
        self.events
            .iter()
            .find(|e| e.kind == kind && (input.is_none() || e.input.as_deref() == input))
    }
}

/// Headless Chromium through chromedriver, on one session.
struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    driver: Driver,
    /// The browser's profile and temporary files (chromedriver's and the
    /// browser's `TMPDIR`); removed after the driver is killed (fields drop
    /// in order).
    _scratch: tempfile::TempDir,
}

/// Reads what the page shows (see [`Page`]).
const PAGE_SCRIPT: &str = r##"
    const text = (id) => document.getElementById(id).textContent;
    return {
        state: text("state"),
        answer: text("answer"),
        events: Array.from(document.querySelectorAll("#events li"), (li) => ({
            kind: li.dataset.kind,
            input: li.dataset.input || null,
            text: li.textContent,
        })),
    };
"##;

/// The key of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Self {
        let missing = "the console test drives headless Chromium: it needs `chromium` and \
                       `chromedriver` on PATH (Debian packages `chromium` and `chromium-driver`; \
                       scripts/install-deps.sh installs them)";
        let driver_bin = on_path(&["chromedriver"]).unwrap_or_else(|| panic!("{missing}"));
        let browser_bin =
            on_path(&["chromium", "chromium-browser"]).unwrap_or_else(|| panic!("{missing}"));
        let scratch = tempfile::tempdir().unwrap();
        let (profile, tmp) = (scratch.path().join("profile"), scratch.path().join("tmp"));
        std::fs::create_dir(&tmp).unwrap();
        let mut child = tokio::process::Command::new(&driver_bin)
            .arg("--port=0")
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", driver_bin.display()));
        let log = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        read_driver_output(child.stdout.take().unwrap(), log.clone(), Some(port_tx));
        read_driver_output(child.stderr.take().unwrap(), log.clone(), None);
        let driver = Driver {
            child,
            browser: None,
            log,
        };
        let port = match tokio::time::timeout(DRIVER_START, port_rx).await {
            Ok(Ok(port)) => port,
            _ => panic!(
                "chromedriver did not say its port within {DRIVER_START:?}:\n{}",
                driver.log.lock().unwrap()
            ),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser_bin,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    // Containers often have a small /dev/shm.
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Self {
            http,
            session: String::new(),
            driver,
            _scratch: scratch,
        };
        let created = browser
            .command(
                reqwest::Method::POST,
                &format!("{base}/session"),
                capabilities,
            )
            .await;
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {created}"));
        browser.session = format!("{base}/session/{id}");
        browser.driver.browser = created["capabilities"]["goog:processID"]
            .as_i64()
            .and_then(|pid| rustix::process::Pid::from_raw(i32::try_from(pid).ok()?));
        assert!(
            browser.driver.browser.is_some(),
            "chromedriver did not name the browser's process: {created}"
        );
        browser
    }

    /// One WebDriver command to `url`; its `value`. Panics with the driver's
    /// error and log on a refusal.
    async fn command(&self, method: reqwest::Method, url: &str, body: Value) -> Value {
        let sent = self.http.request(method, url).json(&body).send().await;
        let response = sent.unwrap_or_else(|e| {
            panic!(
                "chromedriver is unreachable ({url}): {e}\n{}",
                self.driver.log.lock().unwrap()
            )
        });
        let status = response.status();
        let mut answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            panic!(
                "WebDriver refused {url}: {status} {answer}\n{}",
                self.driver.log.lock().unwrap()
            );
        }
        answer["value"].take()
    }

    async fn session_command(&self, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.session);
        self.command(reqwest::Method::POST, &url, body).await
    }

    async fn goto(&self, url: &str) {
        self.session_command("/url", json!({"url": url})).await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .session_command("/element", json!({"using": "css selector", "value": css}))
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// Clears the field `css` and types `text` into it.
    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.session_command(&format!("/element/{element}/clear"), json!({}))
            .await;
        self.session_command(&format!("/element/{element}/value"), json!({"text": text}))
            .await;
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.session_command(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn double_click_connect(&self) {
        let script = r#"const b = document.getElementById("connect"); b.click(); b.click();"#;
        self.session_command("/execute/sync", json!({"args": [], "script": script}))
            .await;
    }

    async fn page(&self) -> Page {
        let value = self
            .session_command("/execute/sync", json!({"args": [], "script": PAGE_SCRIPT}))
            .await;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Page {
            state: text(&value["state"]),
            answer: text(&value["answer"]),
            events: value["events"]
                .as_array()
                .map(|events| {
                    events
                        .iter()
                        .map(|e| Shown {
                            kind: text(&e["kind"]),
                            input: e["input"].as_str().map(str::to_string),
                            text: text(&e["text"]),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Looks at the page every [`POLL`] until `found` finds something in
    /// it, at most [`PAGE_WAIT`]; panics with what the page shows then.
    async fn wait_for<T>(&self, what: &str, found: impl Fn(&Page) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + PAGE_WAIT;
        loop {
            let page = self.page().await;
            if let Some(found) = found(&page) {
                return found;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("the page did not show {what} within {PAGE_WAIT:?}; it shows {page:#?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[tokio::test]
async fn the_console_shows_an_input_stored_with_its_context_and_pending_while_memory_is_down() {
    let mut system = System::start(100, true).await;
    // Bob's input before alice connects and while she is connected: neither
    // may reach her page.
    let mut bobs = vec![system.input("bob", "bob's first note").await];

    let browser = Browser::start().await;
    browser.goto(&system.core.url("/")).await;
    browser.type_into("#token", &token("alice", &[])).await;
    browser.click("#connect").await;
    // A double click: the second Connect starts before the first has its
    // ticket, and replaces it; every event is still shown once (checked at
    // the end).
    browser.double_click_connect().await;
    browser
        .wait_for("the stream connected", |page| {
            (page.state == "connected").then_some(())
        })
        .await;
    bobs.push(system.input("bob", "bob's second note").await);

    // Memory is up: the input is stored at once, then its context comes.
    browser
        .type_into("#content", "hello from the console")
        .await;
    browser.click("#send").await;
    let first = browser
        .wait_for("an `input` event for the text sent", |page| {
            page.events
                .iter()
                .find(|e| e.kind == "input" && e.text.contains("hello from the console"))
                .and_then(|e| e.input.clone())
        })
        .await;
    let context = browser
        .wait_for("the `context` event of the input", |page| {
            page.find("context", Some(&first)).cloned()
        })
        .await;
    assert!(
        context.text.contains(r#""degraded":false"#),
        "cognition is up, the context is not degraded: {context:?}"
    );
    let page = browser.page().await;
    assert!(page.answer.starts_with("200 stored"), "{page:#?}");

    // Memory is down: the input is kept (`pending`), and stored once memory
    // is back on the same address.
    system.stop_memory().await;
    bobs.push(system.input("bob", "bob's third note").await);
    browser
        .type_into("#content", "kept while memory is down")
        .await;
    browser.click("#send").await;
    let second = browser
        .wait_for("a `pending` event for the second input", |page| {
            page.events
                .iter()
                .find(|e| e.kind == "pending" && e.input.as_deref() != Some(&first))
                .and_then(|e| e.input.clone())
        })
        .await;
    let page = browser.page().await;
    assert!(page.answer.starts_with("202 storage_pending"), "{page:#?}");
    assert!(page.find("stored", Some(&second)).is_none(), "{page:#?}");
    system.start_memory().await;
    browser
        .wait_for("the `stored` event of the pending input", |page| {
            page.find("stored", Some(&second)).cloned()
        })
        .await;
    browser
        .wait_for("the `context` event of the stored input", |page| {
            page.find("context", Some(&second)).cloned()
        })
        .await;

    // Alice's page holds her events only, each once.
    let page = browser.page().await;
    let mut labels = Vec::new();
    for event in &page.events {
        assert!(
            !event.text.contains("bob"),
            "bob's event on alice's page: {event:?}"
        );
        if let Some(input) = &event.input {
            assert!(
                !bobs.contains(input),
                "bob's input on alice's page: {event:?}"
            );
            assert!(*input == first || *input == second, "{event:?}");
        }
        if event.kind != "status" {
            let label = event.text.split(' ').take(2).collect::<Vec<_>>().join(" ");
            assert!(!labels.contains(&label), "{label} shown twice: {page:#?}");
            labels.push(label);
        }
    }
    let kinds: Vec<&str> = page
        .events
        .iter()
        .filter(|e| e.kind != "status")
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["input", "context", "pending", "stored", "context"],
        "{page:#?}"
    );
    drop(browser);
    system.stop_memory().await;
}
