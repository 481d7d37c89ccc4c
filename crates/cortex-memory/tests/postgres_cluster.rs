//! A PostgreSQL cluster of the test's own (`initdb`, `pg_ctl`: found on
//! `PATH` or through `pg_config --bindir`; a temporary directory, a free
//! port) is SIGKILLed and restarted while writers store: no acknowledged
//! store is lost, and calls during the outage fail typed and fast.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cortex_memory::store::{NewItem, PgOptions, PostgresStore, Store, StoreError};
use serde_json::json;

/// Where `initdb` and `pg_ctl` are.
fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path).find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        })
        .unwrap_or_else(|| {
            panic!("initdb and pg_ctl are neither on PATH nor in `pg_config --bindir`: this test needs a PostgreSQL installation")
        })
}

/// A cluster in a temporary directory; stopped (immediately) on drop.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// PostgreSQL refuses to run as root: then it runs as `postgres`.
    as_user: Option<String>,
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        match &self.as_user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn init() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let root = Command::new("id").arg("-u").output().unwrap();
        let as_user =
            (String::from_utf8_lossy(&root.stdout).trim() == "0").then(|| "postgres".to_owned());
        if let Some(user) = &as_user {
            let chown = Command::new("chown")
                .args(["-R", user])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(chown.success(), "chown the cluster directory to {user}");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            bin: bindir(),
            dir,
            port,
            as_user,
        };
        let init = cluster
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(cluster.data())
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        cluster.start();
        cluster
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on",
            self.port,
            self.dir.path().display()
        );
        // A cluster just killed may still be tidying up: try for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let started = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "20", "-o", &options, "-l"])
                .arg(self.dir.path().join("log"))
                .arg("start")
                .output()
                .unwrap();
            if started.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pg_ctl start: {}{}",
                String::from_utf8_lossy(&started.stdout),
                std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL to the postmaster and every process it started.
    fn kill(&self) {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap();
        let pid: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let mut victims = vec![pid];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The parent is the 4th field, after the `(name)` in parentheses.
            let parent = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if parent == Some(pid) {
                victims.push(child);
            }
        }
        for victim in &victims {
            let _ = Command::new("kill")
                .args(["-9", &victim.to_string()])
                .status();
        }
        // Until the postmaster is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_and_restarted_during_writes_loses_no_acknowledged_store() {
    let cluster = Cluster::init();
    let store = Store::new(
        PostgresStore::connect(&cluster.url(), PgOptions::default())
            .await
            .unwrap(),
    );
    const ITEMS: usize = 1200;
    const WRITERS: usize = 8;
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                let mut outage_errors = Vec::new();
                for i in (w..ITEMS).step_by(WRITERS) {
                    let key = format!("item-{i}");
                    // Bounded: far longer than the restart takes.
                    for _ in 0..2000 {
                        let started = Instant::now();
                        let stored = store
                            .insert_idempotent(
                                NewItem::new("u", key.clone()),
                                "store_input",
                                &key,
                                |item| json!(item.item_id),
                            )
                            .await;
                        match stored {
                            Ok((id, _)) => {
                                acks.push((key.clone(), id.as_i64().unwrap()));
                                acknowledged.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(error) => {
                                outage_errors.push((started.elapsed(), error));
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                }
                (acks, outage_errors)
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(120);
    while acknowledged.load(Ordering::Relaxed) < ITEMS / 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = acknowledged.load(Ordering::Relaxed);
    cluster.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start();

    let mut acks: HashMap<String, i64> = HashMap::new();
    let mut errors = Vec::new();
    for writer in writers {
        let (list, failed) = writer.await.unwrap();
        acks.extend(list);
        errors.extend(failed);
    }
    assert!(
        killed_at < ITEMS,
        "the cluster was killed during the writes"
    );
    assert_eq!(acks.len(), ITEMS, "every store acknowledged in the end");
    assert!(!errors.is_empty(), "calls during the outage failed");
    for (took, error) in &errors {
        assert!(matches!(error, StoreError::Postgres { .. }), "{error:?}");
        assert!(error.is_retryable(), "{error:?}");
        assert!(
            *took < Duration::from_secs(3),
            "a call took {took:?} to fail: {error}"
        );
    }
    // Every acknowledged store is there, under its id, once.
    let stored = store.history("u", None).await.unwrap();
    assert_eq!(stored.len(), ITEMS, "nothing stored twice");
    let by_content: HashMap<&str, i64> = stored
        .iter()
        .map(|i| (i.content.as_str(), i.item_id))
        .collect();
    for (key, id) in &acks {
        assert_eq!(by_content.get(key.as_str()), Some(id), "{key} lost");
    }
    eprintln!(
        "killed after {killed_at} of {ITEMS} stores; {} calls failed during the outage (slowest {:?})",
        errors.len(),
        errors.iter().map(|(t, _)| *t).max().unwrap_or_default()
    );
}
