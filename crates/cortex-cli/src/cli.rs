//! The raw command line, as clap parses it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cortex_client::DiscoverySpec;

use crate::exit::EXIT_CODES_HELP;

/// Cortex: a network MCP stack. Runs the services and talks to them.
#[derive(Debug, Parser)]
#[command(
    name = "cortex",
    version,
    about,
    long_about = "Cortex: a network MCP stack. Runs the memory and cognition services \
                  and talks to them.\n\n\
                  Start here: `cortex demo` shows the whole system in one process; \
                  `cortex up` runs it for real use.\n\n\
                  Client commands find services through discovery: --service NAME=URL, \
                  else NAME_SERVICE_URL (MEMORY_SERVICE_URL, COGNITION_SERVICE_URL), \
                  else memory at http://localhost:9000 and cognition at \
                  http://localhost:9100; --discovery (or CORTEX_DISCOVERY, or the config \
                  file's `discovery` key) chooses another backend. Client settings come \
                  from --config FILE (TOML), overlaid with CORTEX_CLIENT_* variables.",
    after_long_help = EXIT_CODES_HELP
)]
pub(crate) struct Cli {
    /// More log output on stderr (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Print machine-readable JSON: one document, or one per line for `stream`.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Where a service answers, as NAME=URL (repeatable; comma-separated URLs
    /// are replicas). Wins over NAME_SERVICE_URL.
    #[arg(
        long = "service",
        global = true,
        value_name = "NAME=URL",
        value_parser = parse_service
    )]
    pub(crate) services: Vec<ServiceUrl>,
    /// How client commands find services: env (NAME_SERVICE_URL variables),
    /// file:PATH (TOML, reloaded on change), `dns:DOMAIN[@HOST:PORT]` (SRV
    /// records _NAME._tcp.DOMAIN) or etcd://HOST:PORT/PREFIX. Wins over the
    /// config file's `discovery` key; without either, env.
    #[arg(
        long,
        global = true,
        env = "CORTEX_DISCOVERY",
        value_name = "SPEC",
        value_parser = DiscoverySpec::parse
    )]
    pub(crate) discovery: Option<DiscoverySpec>,
    /// Client configuration file (TOML, the options of cortex_client::ClientConfig,
    /// and `discovery = "SPEC"`, used when neither --discovery nor
    /// CORTEX_DISCOVERY is set); CORTEX_CLIENT_* variables override its options.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// A `--service NAME=URL` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceUrl {
    pub(crate) name: String,
    pub(crate) urls: Vec<String>,
}

fn parse_service(raw: &str) -> Result<ServiceUrl, String> {
    let (name, urls) = raw
        .split_once('=')
        .ok_or_else(|| format!("`{raw}` is not NAME=URL"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{raw}` has no service name before `=`"));
    }
    let urls: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(format!("`{raw}` has no URL after `=`"));
    }
    if let Some(bad) = urls.iter().find(|u| !u.starts_with("http://")) {
        return Err(format!("`{bad}`: only http:// URLs are supported"));
    }
    Ok(ServiceUrl {
        name: name.to_string(),
        urls,
    })
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start memory and cognition together and wait until Ctrl-C.
    ///
    /// Binds both ports first (a port in use fails before anything starts),
    /// opens the SQLite database under the data directory, waits until both
    /// services are healthy, then prints their endpoints and one line
    /// starting with `ready:`. Ctrl-C or SIGTERM stops both gracefully.
    ///
    /// Example: cortex up --data-dir ./.cortex --memory-port 9000 --cognition-port 9100
    Up(UpArgs),
    /// Show the whole system at work in one process, narrated (about 5 s).
    ///
    /// Starts memory and cognition on free ports with a temporary database,
    /// stores inputs, reads the history, streams new items live, asks
    /// cognition for context, then stops memory to show the circuit breaker
    /// failing calls fast, restarts it, and checks that calls recover and
    /// the stream resumed without losing or repeating an item.
    Demo,
    /// Call a tool and print its result.
    ///
    /// ARGS is a JSON object, `@FILE` to read it from a file, or `-` to read
    /// it from stdin; without ARGS the tool gets `{}`.
    ///
    /// Example: cortex call memory store_input '{"user_id":"u1","input_data":{"content":"hi"}}'
    Call(CallArgs),
    /// Read a resource and print it.
    ///
    /// Example: cortex read memory history/u1/limit/5
    Read(ReadArgs),
    /// Stream a resource: one line per event (`#ID EVENT DATA`) until Ctrl-C.
    ///
    /// The stream resumes after faults without losing or repeating events.
    ///
    /// Example: cortex stream memory history/u1/stream --from 10 --count 5
    Stream(StreamArgs),
    /// List a service's tools with their descriptions.
    ///
    /// Example: cortex tools memory
    Tools(ServiceArg),
    /// List a service's resources (URI patterns) with their descriptions.
    ///
    /// Example: cortex resources memory
    Resources(ServiceArg),
    /// Check health: of SERVICE, or of every known service.
    ///
    /// Exits 0 when every service checked is healthy, 4 when one is
    /// unhealthy or unreachable.
    ///
    /// Example: cortex health memory
    Health(HealthArgs),
    /// Each known service: endpoints, version, health, breaker state and the
    /// latency this process saw. Exits 0 once it has reported, whatever the
    /// services' state.
    Status,
    /// Call a tool many times concurrently and report calls/s, latency
    /// percentiles and errors by type.
    ///
    /// Exits 0 when every call succeeded; otherwise with the code of the
    /// most frequent error.
    ///
    /// Example: cortex bench memory get_item '{"item_id":1}' --calls 5000 --concurrency 16
    Bench(BenchArgs),
    /// Run one service until Ctrl-C or SIGTERM.
    ///
    /// Example: cortex serve memory --port 9000 --db ./.cortex/memory.sqlite3
    ///
    /// Example: MEMORY_SERVICE_URL=http://127.0.0.1:9000 cortex serve cognition --port 9100
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Address both services listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port of the memory service.
    #[arg(long, default_value_t = 9000)]
    pub(crate) memory_port: u16,
    /// Port of the cognition service.
    #[arg(long, default_value_t = cortex_cognition::DEFAULT_PORT)]
    pub(crate) cognition_port: u16,
    /// Directory of the SQLite database (memory.sqlite3); created if missing.
    #[arg(long, default_value = "./.cortex")]
    pub(crate) data_dir: PathBuf,
    /// Seconds in-flight calls may take to finish after Ctrl-C.
    #[arg(long, default_value_t = 10)]
    pub(crate) grace_secs: u64,
}

#[derive(Debug, Args)]
pub(crate) struct CallArgs {
    /// The service's name, such as `memory`.
    pub(crate) service: String,
    /// The tool, such as `store_input`.
    pub(crate) tool: String,
    /// Arguments: a JSON object, `@FILE`, or `-` for stdin (default `{}`).
    pub(crate) args: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ReadArgs {
    /// The service's name.
    pub(crate) service: String,
    /// The resource URI, such as `history/u1`.
    pub(crate) uri: String,
}

#[derive(Debug, Args)]
pub(crate) struct StreamArgs {
    /// The service's name.
    pub(crate) service: String,
    /// The resource URI, such as `history/u1/stream`.
    pub(crate) uri: String,
    /// Start after this event id (sent as Last-Event-ID).
    #[arg(long, value_name = "ID")]
    pub(crate) from: Option<String>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct ServiceArg {
    /// The service's name.
    pub(crate) service: String,
}

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// The service's name; every known service when omitted.
    pub(crate) service: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// The service's name.
    pub(crate) service: String,
    /// The tool to call.
    pub(crate) tool: String,
    /// Arguments: a JSON object, `@FILE`, or `-` for stdin (default `{}`).
    pub(crate) args: Option<String>,
    /// How many calls in all.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) calls: u64,
    /// How many calls in flight at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub(crate) concurrency: u64,
}

/// The services `cortex serve` can run.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ServiceName {
    /// Stores user inputs (SQLite) and serves and streams their history.
    Memory,
    /// Builds context from memory, which it finds through discovery
    /// (MEMORY_SERVICE_URL or --service memory=URL; default http://localhost:9000).
    Cognition,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Which service to run.
    pub(crate) service: ServiceName,
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port to listen on (memory defaults to 9000, cognition to 9100).
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
    /// Register this service in etcd (etcd://HOST:PORT[/PREFIX]) under a
    /// lease kept alive while it runs; clients with --discovery etcd://…
    /// find it within a second, and lose it within the lease TTL if the
    /// process dies.
    #[arg(long, env = "CORTEX_REGISTER", value_name = "ETCD_URL")]
    pub(crate) register: Option<String>,
    /// The URL clients should use (default: http://HOST:PORT as bound).
    #[arg(long, value_name = "URL", requires = "register")]
    pub(crate) advertise: Option<String>,
    /// Lease TTL of the registration, in seconds.
    #[arg(long, default_value_t = 10, requires = "register")]
    pub(crate) register_ttl: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_flag() {
        assert_eq!(
            parse_service("memory=http://a:1, http://b:2"),
            Ok(ServiceUrl {
                name: "memory".into(),
                urls: vec!["http://a:1".into(), "http://b:2".into()],
            })
        );
        assert!(parse_service("memory").is_err());
        assert!(parse_service("=http://a").is_err());
        assert!(parse_service("memory=").is_err());
        assert!(parse_service("memory=https://a").is_err());
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
