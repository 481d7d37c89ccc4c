//! The raw command line, as clap parses it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Cortex: a network MCP stack. Runs the memory service and talks to it.
#[derive(Debug, Parser)]
#[command(name = "cortex", version, about, long_about = None)]
pub(crate) struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run one service until Ctrl-C or SIGTERM.
    ///
    /// Example: cortex serve memory --port 9000 --db ./.cortex/memory.sqlite3
    Serve(ServeArgs),
}

/// The services `cortex serve` can run.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ServiceName {
    /// Stores user inputs (SQLite) and serves and streams their history.
    Memory,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Which service to run.
    pub(crate) service: ServiceName,
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port to listen on (memory defaults to 9000).
    #[arg(long, env = "PORT")]
    pub(crate) port: Option<u16>,
    /// SQLite file of the memory service; created with its directory on first
    /// start. Also read from DATABASE_URL (`sqlite:PATH` or a plain path).
    #[arg(long, env = "DATABASE_URL", default_value = "./.cortex/memory.sqlite3")]
    pub(crate) db: String,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub(crate) max_body_bytes: usize,
    /// Seconds in-flight calls may take to finish after a shutdown signal.
    #[arg(long, default_value_t = 10)]
    pub(crate) grace_secs: u64,
}

impl ServeArgs {
    /// The database file named by `--db` or `DATABASE_URL`.
    pub(crate) fn db_path(&self) -> Result<PathBuf, String> {
        let raw = self.db.trim();
        let path = if let Some(rest) = raw.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = raw.strip_prefix("sqlite:") {
            rest
        } else if raw.contains("://") {
            return Err(format!(
                "--db / DATABASE_URL `{raw}`: only SQLite is supported so far (use `sqlite:PATH` or a file path)"
            ));
        } else {
            raw
        };
        // `sqlite:///abs/path` leaves `/abs/path`; drop query options.
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err("--db / DATABASE_URL is empty".into());
        }
        Ok(PathBuf::from(path))
    }
}
