//! `cortex`: run the Cortex services and talk to them.
//!
//! Arguments are parsed in two steps: [`cli`] holds the raw flags (clap
//! validates their syntax, and its errors exit 2), and each command
//! resolves them into what it needs (a client, a listener, a database path)
//! before anything starts. Every failure is one [`exit::Failure`]: one line
//! on stderr and a documented exit code.

mod auth;
mod bench;
mod cli;
mod client_cmds;
mod connect;
mod core_cmds;
mod demo;
mod exit;
mod hints;
mod input;
mod limits;
mod login;
mod output;
mod progress_line;
mod prompt_cmds;
mod replicas;
mod serve;
mod system;
mod tls;
mod up;
mod words;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::Command;
use crate::connect::{ClientFlags, Credentials};
use crate::exit::Failure;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // `--json` is known only once parsing worked: look for it.
        Err(error) => return clap_error(&error, std::env::args().any(|a| a == "--json")),
    };
    if let Command::Completions(args) = &cli.command {
        use clap::CommandFactory;
        clap_complete::generate(
            args.shell,
            &mut cli::Cli::command(),
            "cortex",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    init_tracing(&cli.command, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cortex: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    // Client commands send the user's token, or make one; the services
    // `up` and `serve` run act only for their own callers.
    let credentials = match &cli.command {
        Command::Up(_)
        | Command::Serve(_)
        | Command::Demo
        | Command::Token(_)
        | Command::Completions(_) => Credentials::None,
        _ => match cli.token {
            Some(token) => Credentials::Token(token),
            None => Credentials::Local {
                user: cli.user.clone(),
            },
        },
    };
    let flags = ClientFlags {
        services: cli.services,
        config: cli.config,
        discovery: cli.discovery,
        url: cli.url,
        credentials,
    };
    let user = cli.user;
    let json = cli.json;
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args, &flags).await,
            Command::Demo => demo::run().await,
            Command::Call(args) => client_cmds::call(args, &flags, json).await,
            Command::Read(args) => client_cmds::read(args, &flags, json).await,
            Command::Stream(args) => client_cmds::stream(args, &flags, json).await,
            Command::Tools(args) => client_cmds::tools(args, &flags, json).await,
            Command::Resources(args) => client_cmds::resources(args, &flags, json).await,
            Command::Prompts(args) => prompt_cmds::prompts(args, &flags, json).await,
            Command::Prompt(args) => prompt_cmds::prompt(args, &flags, json).await,
            Command::Health(args) => client_cmds::health(args, &flags, json).await,
            Command::Status => client_cmds::status(&flags, json).await,
            Command::Bench(args) => bench::run(args, &flags, json).await,
            Command::Serve(args) => serve::run(args, &flags).await,
            Command::Input(args) => core_cmds::input(args, &flags, user.as_deref(), json).await,
            Command::Output(args) => core_cmds::output(args, &flags, user.as_deref(), json).await,
            Command::Token(args) => auth::token(args, user, json),
            Command::Login(args) => match flags.config() {
                Ok(config) => login::run(args, &config, json).await,
                Err(failure) => Err(failure),
            },
            Command::Completions(_) => Ok(()),
        }
    });
    // Do not wait for background tasks (a stream reader, an idle
    // connection) once the command is done.
    runtime.shutdown_background();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(&failure, json),
    }
}

/// Help and version go out as clap writes them; a usage error becomes one
/// line and exit 2.
fn clap_error(error: &clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            ExitCode::from(if error.use_stderr() { 2 } else { 0 })
        }
        _ => report(
            &Failure::usage(exit::clap_line(&error.render().to_string())),
            json,
        ),
    }
}

/// One line on stderr: `cortex: MESSAGE`, or with `--json` one JSON
/// object, `{"error": {"exit_code", "code", "kind", "message"}}`.
fn report(failure: &Failure, json: bool) -> ExitCode {
    if !failure.message.is_empty() {
        if json {
            eprintln!("{}", failure.to_json());
        } else {
            eprintln!("cortex: {failure}");
        }
    }
    ExitCode::from(failure.exit_code())
}

/// Logs go to stderr. `cortex serve` logs at `info`, as a service does;
/// everything else, `cortex up` included (it prints its own lines), only
/// logs errors unless `-v`.
fn init_tracing(command: &Command, verbose: u8) {
    let quiet = !matches!(command, Command::Serve(_));
    let default = match (verbose, quiet) {
        (0, true) => "error",
        (0, false) => "info",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
