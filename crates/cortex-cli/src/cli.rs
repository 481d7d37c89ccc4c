//! The raw command line, as clap parses it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cortex_client::discovery::Protocol;
use cortex_client::{DiscoverySpec, Endpoint};

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
                  Any MCP server: `cortex --url http://HOST:PORT/mcp tools`, then \
                  `cortex --url … call TOOL key=value …` (with --url, leave SERVICE out).\n\n\
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
    /// are replicas). Wins over NAME_SERVICE_URL. `mcp+http://…` says the
    /// service speaks standard MCP, `auto+http://…` finds out; plain
    /// http:// is the Cortex dialect.
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
    /// Talk to the server at URL instead of a named service, and leave
    /// SERVICE out of the command: `cortex --url http://127.0.0.1:3001/mcp
    /// tools`. Plain http:// finds out whether it speaks MCP or the Cortex
    /// dialect; `mcp+http://` or `cortex+http://` says which.
    #[arg(long, global = true, value_name = "URL", value_parser = parse_url)]
    pub(crate) url: Option<Endpoint>,
    /// Bearer token client commands send (a JWT). Without one, they make
    /// short-lived tokens from JWT_SECRET_KEY or from the secret `cortex up`
    /// keeps in its data directory (CORTEX_DATA_DIR, default ./.cortex),
    /// when there is one.
    #[arg(
        long,
        global = true,
        env = "CORTEX_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub(crate) token: Option<String>,
    /// The user tokens made from the local secret are for (and `cortex
    /// token`'s): that user's own token, no role. Without it, client
    /// commands act as your login name with the role `admin`, which acts
    /// for every user.
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) user: Option<String>,
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
    pub(crate) endpoints: Vec<Endpoint>,
}

/// `--url URL`: plain http:// is `auto` here, since the user did not say.
fn parse_url(raw: &str) -> Result<Endpoint, String> {
    let (endpoint, named) = Endpoint::parse(raw)?;
    Ok(endpoint.with_protocol(named.unwrap_or(Protocol::Auto)))
}

fn parse_service(raw: &str) -> Result<ServiceUrl, String> {
    let (name, urls) = raw
        .split_once('=')
        .ok_or_else(|| format!("`{raw}` is not NAME=URL"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{raw}` has no service name before `=`"));
    }
    let endpoints = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| Endpoint::parse(url).map(|(endpoint, _)| endpoint))
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Err(format!("`{raw}` has no URL after `=`"));
    }
    Ok(ServiceUrl {
        name: name.to_string(),
        endpoints,
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
    /// Callers need a bearer token (JWT): on first start a random secret is
    /// made in the data directory (jwt-secret, mode 0600) and kept; client
    /// commands run where they find it (./.cortex, or CORTEX_DATA_DIR) make
    /// their tokens from it, and `cortex token` prints one. --no-auth turns
    /// this off.
    ///
    /// With --tls-cert and --tls-key both services serve https://, and
    /// cognition reaches memory over TLS trusting the --tls-cert file (or
    /// the ca_file of --config / CORTEX_CLIENT_CA_FILE); client commands
    /// need CORTEX_CLIENT_CA_FILE too when the certificate is not signed
    /// by a CA the system trusts.
    ///
    /// Example: cortex up --data-dir ./.cortex --memory-port 9000 --cognition-port 9100
    ///
    /// Example: cortex up --tls-cert cert.pem --tls-key key.pem
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
    /// Arguments, as httpie takes them: `key=value` pairs, typed by the
    /// tool's input schema (a number, a boolean or a string as the schema
    /// says); `key:=JSON` for raw JSON; `a.b=value` for a nested field.
    /// Or one JSON object, `@FILE`, or `-` for stdin, optionally followed
    /// by pairs that override its fields. Without arguments, piped stdin
    /// is read (when it is not a terminal); otherwise the tool gets `{}`.
    /// Files and stdin are capped at 8 MiB.
    ///
    /// Over MCP, a tool that reports progress has it shown on stderr (one
    /// updating line on a terminal), and each report starts the request
    /// timeout over (30 minutes in all at most).
    ///
    /// Example: cortex call memory store_input user_id=u1 input_data.content=hi
    ///
    /// Example: cortex call memory get_item item_id=1
    ///
    /// Example: cortex call memory store_input '{"user_id":"u1","input_data":{"content":"hi"}}'
    ///
    /// Example: cortex --url http://127.0.0.1:3001/mcp call echo message=hello
    #[command(
        override_usage = "cortex call SERVICE TOOL [ARG]...\n       cortex --url URL call TOOL [ARG]..."
    )]
    Call(CallArgs),
    /// Read a resource and print it.
    ///
    /// Example: cortex read memory history/u1/limit/5
    ///
    /// Example: cortex --url http://127.0.0.1:3001/mcp read demo://resource/static/document/architecture.md
    #[command(override_usage = "cortex read SERVICE URI\n       cortex --url URL read URI")]
    Read(ReadArgs),
    /// Stream a resource: one line per event (`#ID EVENT DATA`) until Ctrl-C.
    ///
    /// The stream resumes after faults without losing or repeating events.
    /// Over MCP it is a subscription: one event per update of the resource.
    ///
    /// Example: cortex stream memory history/u1/stream --from 10 --count 5
    #[command(
        override_usage = "cortex stream SERVICE URI [OPTIONS]\n       cortex --url URL stream URI [OPTIONS]"
    )]
    Stream(StreamArgs),
    /// List a service's tools with their parameters; with TOOL, that tool's
    /// parameters in full (name, type, required, description).
    ///
    /// Example: cortex tools memory
    ///
    /// Example: cortex tools memory store_input
    #[command(override_usage = "cortex tools SERVICE [TOOL]\n       cortex --url URL tools [TOOL]")]
    Tools(ToolsArgs),
    /// List a service's resources (URI patterns) with their descriptions.
    ///
    /// Example: cortex resources memory
    #[command(override_usage = "cortex resources SERVICE\n       cortex --url URL resources")]
    Resources(ServiceArg),
    /// List an MCP server's prompts with their arguments (`name*` is
    /// required).
    ///
    /// Example: cortex --url http://127.0.0.1:3001/mcp prompts
    #[command(override_usage = "cortex prompts SERVICE\n       cortex --url URL prompts")]
    Prompts(ServiceArg),
    /// Get one prompt of an MCP server, filled with `key=value` arguments,
    /// and print its messages.
    ///
    /// Example: cortex --url http://127.0.0.1:3001/mcp prompt args-prompt city=Lisbon
    #[command(
        override_usage = "cortex prompt SERVICE NAME [ARG]...\n       cortex --url URL prompt NAME [ARG]..."
    )]
    Prompt(CallArgs),
    /// Check health: of SERVICE, or of every known service. Over MCP the
    /// check is a `ping`.
    ///
    /// Exits 0 when every service checked is healthy, 4 when one is
    /// unhealthy or unreachable.
    ///
    /// Example: cortex health memory
    #[command(override_usage = "cortex health [SERVICE]\n       cortex --url URL health")]
    Health(HealthArgs),
    /// Each known service (or the --url server): endpoints, version, health,
    /// breaker state and the latency this process saw. Exits 0 once it has
    /// reported, whatever the services' state.
    Status,
    /// Call a tool many times concurrently and report calls/s, latency
    /// percentiles and errors by type.
    ///
    /// Exits 0 when every call succeeded; otherwise with the code of the
    /// most frequent error.
    ///
    /// Example: cortex bench memory get_item item_id=1 --calls 5000 --concurrency 16
    #[command(
        override_usage = "cortex bench SERVICE TOOL [ARG]... [OPTIONS]\n       cortex --url URL bench TOOL [ARG]... [OPTIONS]"
    )]
    Bench(BenchArgs),
    /// Send an input to core: stored in memory now when memory answers,
    /// else kept by core and stored when memory is back, exactly once.
    ///
    /// The user is --user (default: your login name). Prints where the
    /// input went; `cortex output` shows what happens to it next.
    ///
    /// Example: cortex input "remember the milk" --conversation shopping
    ///
    /// Example: cortex --user alice input "hello"
    Input(InputArgs),
    /// Follow your output stream from core: each input (stored or
    /// pending), each pending input stored, cognition's context for it, and
    /// memory and cognition going down or coming back; until Ctrl-C.
    ///
    /// Resumes after faults without losing or repeating an event; --from
    /// starts after an event id (as printed: `#ID`).
    ///
    /// Example: cortex output --from 10
    ///
    /// Example: cortex --user alice output --count 5 --json
    Output(OutputArgs),
    /// Print a bearer token (JWT, HS256) for the services of `cortex up` and
    /// `cortex serve`.
    ///
    /// Signed with JWT_SECRET_KEY, else with the secret in the data
    /// directory (--data-dir, else CORTEX_DATA_DIR, else ./.cortex) that
    /// `cortex up` makes on first start. The user is --user (default: your
    /// login name); JWT_ISSUER and JWT_AUDIENCE, when set, go in as `iss`
    /// and `aud`.
    ///
    /// Example: cortex token --user alice --ttl 8h
    ///
    /// Example: curl -H "Authorization: Bearer $(cortex token --user alice)" localhost:9000/resource/history/alice
    ///
    /// Example: cortex token --user prometheus --role metrics --ttl 366d
    Token(crate::auth::TokenArgs),
    /// Log in to an MCP server that requires OAuth; later commands with
    /// `--url URL` use the token.
    ///
    /// Finds the server's authorization server (its protected resource
    /// metadata, else the 2025-03-26 defaults), registers this client when
    /// it has to (or uses --client-id), prints the authorization URL and
    /// waits for the browser to come back to a loopback port; --open also
    /// tries to open a browser. The token (and its refresh token) goes to
    /// oauth-tokens.json in the data directory (--data-dir, else
    /// CORTEX_DATA_DIR, else ./.cortex), mode 0600; client commands refresh
    /// it before it expires. Run it again when a command says the
    /// authorization failed.
    ///
    /// Example: cortex login https://mcp.example.com/mcp --open
    ///
    /// Example: cortex --url https://mcp.example.com/mcp tools
    ///
    /// Example: cortex login http://127.0.0.1:3001/mcp --port 8765 --scope mcp:read
    // The text is `--help`'s, where a URL is typed as is, not a doc link.
    #[allow(rustdoc::bare_urls)]
    Login(crate::login::LoginArgs),
    /// Run one service until Ctrl-C or SIGTERM.
    ///
    /// Callers need a bearer token (see `cortex token`) unless --no-auth;
    /// /health stays open.
    ///
    /// Example: cortex serve memory --port 9000 --db ./.cortex/memory.sqlite3
    ///
    /// Example: cortex serve memory --tls-cert cert.pem --tls-key key.pem --tls-client-ca clients-ca.pem
    ///
    /// Example: MEMORY_SERVICE_URL=http://127.0.0.1:9000 cortex serve cognition --port 9100
    ///
    /// Example: cortex serve core --port 8000 --data-dir ./.cortex
    Serve(ServeArgs),
    /// Print a shell completion script.
    ///
    /// Example (bash): cortex completions bash > ~/.local/share/bash-completion/completions/cortex
    ///
    /// Example (zsh): cortex completions zsh > ~/.zfunc/_cortex   (with `fpath+=~/.zfunc` before compinit)
    ///
    /// Example (fish): cortex completions fish > ~/.config/fish/completions/cortex.fish
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    pub(crate) shell: clap_complete::Shell,
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
    /// Port of core (the front door: POST /input, GET /output/stream, the
    /// console at /).
    #[arg(long, default_value_t = cortex_core::DEFAULT_PORT)]
    pub(crate) core_port: u16,
    /// Directory of the SQLite database (memory.sqlite3) and the JWT secret
    /// (jwt-secret); created (mode 0700) if missing.
    #[arg(long, env = "CORTEX_DATA_DIR", default_value = crate::auth::DEFAULT_DATA_DIR)]
    pub(crate) data_dir: PathBuf,
    /// Keep memory on PostgreSQL (`postgres://USER@HOST:PORT/DB`) instead
    /// of the SQLite file in the data directory.
    #[arg(long, value_name = "URL")]
    pub(crate) database_url: Option<String>,
    /// How many memory processes to run on the --database-url database:
    /// this one and N-1 `cortex serve memory` processes, all listed in
    /// DATA_DIR/discovery.toml, which cognition follows (and `cortex
    /// status` with CORTEX_DISCOVERY=file:DATA_DIR/discovery.toml).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) memory_replicas: usize,
    /// Seconds in-flight calls may take to finish after Ctrl-C.
    #[arg(long, default_value_t = 10)]
    pub(crate) grace_secs: u64,
    /// Inputs core's outbox keeps while memory is down; past it, POST
    /// /input answers 503 with Retry-After.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub(crate) max_pending: usize,
    #[command(flatten)]
    pub(crate) auth: crate::auth::AuthArgs,
    #[command(flatten)]
    pub(crate) tls: crate::tls::TlsArgs,
    #[command(flatten)]
    pub(crate) limits: crate::limits::LimitArgs,
}

#[derive(Debug, Args)]
pub(crate) struct InputArgs {
    /// The text to send.
    pub(crate) text: String,
    /// The conversation it belongs to.
    #[arg(long, value_name = "ID")]
    pub(crate) conversation: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct OutputArgs {
    /// Start after this event id.
    #[arg(long, value_name = "ID")]
    pub(crate) from: Option<u64>,
    /// Stop after this many events of the log (`status` lines not counted).
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct CallArgs {
    /// SERVICE (left out with --url), TOOL, then the arguments:
    /// `key=value`, `key:=JSON`, a JSON object, `@FILE` or `-`.
    #[arg(value_name = "ARG", required = true)]
    pub(crate) words: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ReadArgs {
    /// SERVICE (left out with --url), then the resource URI, such as
    /// `history/u1`.
    #[arg(value_name = "ARG", required = true)]
    pub(crate) words: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct StreamArgs {
    /// SERVICE (left out with --url), then the resource URI, such as
    /// `history/u1/stream`.
    #[arg(value_name = "ARG", required = true)]
    pub(crate) words: Vec<String>,
    /// Start after this event id (sent as Last-Event-ID).
    #[arg(long, value_name = "ID")]
    pub(crate) from: Option<String>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct ServiceArg {
    /// The service's name (left out with --url).
    #[arg(value_name = "SERVICE")]
    pub(crate) words: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ToolsArgs {
    /// SERVICE (left out with --url), then optionally one TOOL to describe
    /// in full.
    #[arg(value_name = "ARG")]
    pub(crate) words: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// The service's name; every known service when omitted (with --url,
    /// the server at the URL).
    #[arg(value_name = "SERVICE")]
    pub(crate) words: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// SERVICE (left out with --url), TOOL, then the arguments as for
    /// `cortex call`.
    #[arg(value_name = "ARG", required = true)]
    pub(crate) words: Vec<String>,
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
    /// The front door users send inputs to (POST /input) and read their
    /// output from (GET /output/stream, the console at /); it keeps inputs
    /// in its outbox (DATA_DIR/core-outbox.sqlite3) while memory is down.
    /// Finds memory and cognition through discovery.
    Core,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Which service to run.
    pub(crate) service: ServiceName,
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port to listen on (memory defaults to 9000, cognition to 9100, core
    /// to 8000).
    #[arg(long, env = "PORT")]
    pub(crate) port: Option<u16>,
    /// Database of the memory service: a SQLite file (`sqlite:PATH` or a
    /// plain path; created with its directory on first start), or
    /// PostgreSQL (`postgres://USER@HOST:PORT/DB`), which any number of
    /// memory replicas may share. Also read from DATABASE_URL.
    #[arg(
        long,
        visible_alias = "database-url",
        env = "DATABASE_URL",
        default_value = "./.cortex/memory.sqlite3"
    )]
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
    /// The URL clients should use (default: http://HOST:PORT as bound, or
    /// https:// with --tls-cert).
    #[arg(long, value_name = "URL", requires = "register")]
    pub(crate) advertise: Option<String>,
    /// Lease TTL of the registration, in seconds.
    #[arg(long, default_value_t = 10, requires = "register")]
    pub(crate) register_ttl: u64,
    /// Directory of the JWT secret (jwt-secret), made on first start when
    /// neither JWT_SECRET_KEY nor --jwks-url gives the key, and of core's
    /// outbox (default: the database's directory for memory, ./.cortex for
    /// cognition and core).
    #[arg(long, env = "CORTEX_DATA_DIR", value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Core: inputs its outbox keeps while memory is down; past it, POST
    /// /input answers 503 with Retry-After.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub(crate) max_pending: usize,
    #[command(flatten)]
    pub(crate) auth: crate::auth::AuthArgs,
    #[command(flatten)]
    pub(crate) tls: crate::tls::TlsArgs,
    #[command(flatten)]
    pub(crate) limits: crate::limits::LimitArgs,
}

/// The database of the memory service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl ServeArgs {
    /// The database named by `--db`, `--database-url` or `DATABASE_URL`.
    pub(crate) fn database(&self) -> Result<Database, String> {
        parse_database(&self.db)
    }
}

/// Reads a database address: `postgres://…` (or `postgresql://…`), else a
/// SQLite file as `sqlite://PATH`, `sqlite:PATH` or a plain path.
pub(crate) fn parse_database(raw: &str) -> Result<Database, String> {
    let raw = raw.trim();
    if cortex_memory::store::is_postgres_url(raw) {
        return Ok(Database::Postgres(raw.to_owned()));
    }
    db_path(raw).map(Database::Sqlite)
}

/// The SQLite file of a database address.
fn db_path(raw: &str) -> Result<PathBuf, String> {
    let path = if let Some(rest) = raw.strip_prefix("sqlite://") {
        rest
    } else if let Some(rest) = raw.strip_prefix("sqlite:") {
        rest
    } else if raw.contains("://") {
        return Err(format!(
            "--db / DATABASE_URL `{raw}`: use `postgres://…`, `sqlite:PATH` or a file path"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_flag() {
        assert_eq!(
            parse_service("memory=http://a:1, mcp+http://b:2/mcp"),
            Ok(ServiceUrl {
                name: "memory".into(),
                endpoints: vec![
                    Endpoint::new("http://a:1"),
                    Endpoint::new("http://b:2/mcp").with_protocol(Protocol::Mcp)
                ],
            })
        );
        assert_eq!(
            parse_url("http://h:1/mcp").map(|e| e.protocol),
            Ok(Protocol::Auto)
        );
        assert!(parse_service("memory").is_err());
        assert!(parse_service("=http://a").is_err());
        assert!(parse_service("memory=").is_err());
        assert!(parse_service("memory=ftp://a").is_err());
        assert!(parse_service("memory=https://a").is_ok());
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
