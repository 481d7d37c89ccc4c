//! A real etcd server for tests: started on 127.0.0.1 with free ports and a
//! temporary data directory, killed on drop.
//!
//! It needs the `etcd` binary (Debian: `apt-get install etcd-server`;
//! `ETCD_BIN` may name another one). Without it the test panics, on purpose:
//! a silent pass would hide that nothing was tested.
#![allow(clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cortex_discovery::EtcdConfig;
use etcd_client::Client;
use tokio::sync::{Mutex, MutexGuard};

/// One etcd at a time per test binary.
static ONE_ETCD_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// A real etcd child process, killed on drop. Servers started through it
/// run one at a time in a test binary (a process-wide lock), so that time
/// bounds do not suffer from several etcd servers fsyncing at once.
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    generation: u32,
    _turn: MutexGuard<'static, ()>,
}

/// Two ports that were free a moment ago.
pub fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let ports = (
        a.local_addr().expect("local address").port(),
        b.local_addr().expect("local address").port(),
    );
    drop((a, b));
    ports
}

/// `ETCD_BIN`, else `etcd`.
fn etcd_binary() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

impl Etcd {
    /// Starts a fresh etcd and waits until it answers.
    pub async fn start() -> Self {
        let turn = ONE_ETCD_AT_A_TIME.lock().await;
        let dir = tempfile::tempdir().expect("temporary directory");
        let data_dir = dir.path().join("data-0");
        let (client_port, peer_port) = free_ports();
        let mut etcd = Self {
            child: None,
            client_port,
            peer_port,
            dir,
            data_dir,
            generation: 0,
            _turn: turn,
        };
        // A port picked as free may be taken before etcd binds it: then etcd
        // exits, and another pair of ports is tried.
        for attempt in 1..=3 {
            match etcd.spawn_and_wait().await {
                Ok(()) => return etcd,
                Err(why) if attempt < 3 && etcd.child.is_none() => {
                    eprintln!("etcd did not start ({why}); trying other ports");
                    (etcd.client_port, etcd.peer_port) = free_ports();
                }
                Err(why) => panic!("etcd did not start: {why}"),
            }
        }
        unreachable!("the last attempt panics or returns")
    }

    /// `http://127.0.0.1:PORT`, the client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// A discovery configuration for this server.
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig::new([self.url()])
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open the etcd log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot open the etcd log: {e}"))?;
        let child = Command::new(etcd_binary())
            .args(["--name", "default", "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--listen-client-urls",
                &self.url(),
                "--advertise-client-urls",
                &self.url(),
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "the `{}` binary was not found: these tests need a real etcd server. \
                 Install it with `apt-get install etcd-server` (or point ETCD_BIN at one).",
                etcd_binary()
            ),
            Err(e) => panic!("cannot start `{}`: {e}", etcd_binary()),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!(
                    "etcd exited with {status}; its log ends with:\n{}",
                    self.log_tail()
                ));
            }
            if answers(&self.url()).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "etcd did not answer within 20 s; its log ends with:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills etcd (SIGKILL: no graceful anything).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir.
    pub async fn restart(&mut self) {
        self.stop();
        if let Err(why) = self.spawn_and_wait().await {
            panic!("etcd did not restart: {why}");
        }
    }

    /// Starts etcd again on the same ports with an empty data dir: a cluster
    /// that lost (or was restored without) everything.
    pub async fn restart_empty(&mut self) {
        self.stop();
        self.generation += 1;
        self.data_dir = self.dir.path().join(format!("data-{}", self.generation));
        if let Err(why) = self.spawn_and_wait().await {
            panic!("etcd did not restart: {why}");
        }
    }

    /// A plain etcd client, for writing keys by hand.
    pub async fn client(&self) -> Client {
        tokio::time::timeout(Duration::from_secs(5), Client::connect([self.url()], None))
            .await
            .expect("etcd client connects in time")
            .expect("etcd client connects")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether an etcd answers at `url`.
pub async fn answers(url: &str) -> bool {
    let Ok(Ok(mut client)) =
        tokio::time::timeout(Duration::from_secs(1), Client::connect([url], None)).await
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), client.get("probe", None)).await,
        Ok(Ok(_))
    )
}
