//! `cortex up --memory-replicas N`: memory replicas as processes of their
//! own (`cortex serve memory`) on one PostgreSQL database, and the
//! discovery file that lists every replica for cognition and the client
//! commands.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::exit::Failure;

/// How long a replica gets to say where it listens.
const START_WITHIN: Duration = Duration::from_secs(15);
/// How long a replica gets to stop after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// One memory replica process.
pub(crate) struct Replica {
    /// Where it listens.
    pub(crate) url: String,
    child: Child,
}

/// What a replica process is started with.
pub(crate) struct ReplicaArgs<'a> {
    /// Address to listen on (the port is chosen by the system).
    pub(crate) host: &'a str,
    /// The PostgreSQL URL every replica shares.
    pub(crate) database_url: &'a str,
    /// Where the JWT secret is (the same for every replica).
    pub(crate) data_dir: &'a Path,
    /// `--no-auth` was given.
    pub(crate) no_auth: bool,
}

impl Replica {
    /// Starts `cortex serve memory` on a free port and waits for the line
    /// that says where it listens.
    pub(crate) async fn start(args: &ReplicaArgs<'_>) -> Result<Replica, Failure> {
        let exe = std::env::current_exe()
            .map_err(|e| Failure::other(format!("cannot find the cortex binary: {e}")))?;
        let mut command = Command::new(exe);
        command
            .args(["serve", "memory", "--host", args.host, "--port", "0"])
            .arg("--database-url")
            .arg(args.database_url)
            .arg("--data-dir")
            .arg(args.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if args.no_auth {
            command.arg("--no-auth");
        }
        let mut child = command
            .spawn()
            .map_err(|e| Failure::other(format!("cannot start a memory replica: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Failure::other("a memory replica has no output to read"))?;
        let mut lines = BufReader::new(stdout).lines();
        let listening = async {
            while let Some(line) = lines.next_line().await.ok().flatten() {
                if let Some(url) = line.strip_prefix("memory service listening on ") {
                    return Some(url.trim().to_owned());
                }
            }
            None
        };
        let url = match tokio::time::timeout(START_WITHIN, listening).await {
            Ok(Some(url)) => url,
            Ok(None) => {
                let status = child.wait().await.ok();
                return Err(Failure::other(format!(
                    "a memory replica stopped before listening ({})",
                    status.map_or_else(|| "no status".to_owned(), |s| s.to_string())
                )));
            }
            Err(_) => {
                let _ = child.kill().await;
                return Err(Failure::other(format!(
                    "a memory replica did not listen within {}",
                    crate::output::duration(START_WITHIN)
                )));
            }
        };
        // Keep reading, so the replica never writes into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // A wildcard address is reached on loopback.
        let url = url
            .replace("http://0.0.0.0:", "http://127.0.0.1:")
            .replace("http://[::]:", "http://[::1]:");
        Ok(Replica { url, child })
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Asks the replica to stop (SIGTERM: it finishes calls in flight) and
    /// waits; kills it if it does not stop in time.
    pub(crate) async fn stop(mut self) {
        #[cfg(unix)]
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok())
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(STOP_WITHIN, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Writes the discovery file listing every memory replica and cognition
/// (replaced atomically: written beside, then renamed, so a reader never
/// sees half a file).
pub(crate) fn write_discovery(
    path: &Path,
    memory: &[String],
    cognition: &str,
) -> Result<(), Failure> {
    let quoted = |urls: &[String]| {
        urls.iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "# Written by `cortex up`: every memory replica and cognition.\n\
         [services.memory]\nendpoints = [{}]\n\n\
         [services.cognition]\nendpoints = [{}]\n",
        quoted(memory),
        quoted(&[cognition.to_owned()])
    );
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| {
            Failure::other(format!(
                "cannot write the discovery file {}: {e}",
                path.display()
            ))
        })
}
