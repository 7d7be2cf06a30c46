//! The `relay` command line: `serve` (the default) and `token`. The tools
//! that drive nodes from outside are `relay-sim simulate` and `relay-sim
//! loadgen` (crates/relay-sim).

use std::{num::NonZeroUsize, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, error::ContextKind, error::ErrorKind};

use crate::{
    auth::{self, Role},
    config::{self, Config, Secret, ServeArgs},
    server::{self, Prepared},
    telemetry,
};

#[derive(Debug, Parser)]
#[command(
    name = "relay",
    version,
    about = "Real-time event relay: Redis Streams to Socket.IO v4 clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (the default when no subcommand is given).
    Serve(Box<ServeArgs>),
    /// Mint an HS256 client token with the configured secret (development and tests).
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// User id (`sub` claim).
    #[arg(long)]
    sub: String,
    /// customer, merchant, driver, admin or support.
    #[arg(long)]
    role: Role,
    /// Stores of a merchant, comma-separated.
    #[arg(long, value_delimiter = ',')]
    store_ids: Vec<String>,
    /// Lifetime: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h", value_parser = config::parse_duration)]
    ttl: Duration,
    #[arg(long, env = "RELAY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Secret,
    #[arg(long, env = "RELAY_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    #[arg(long, env = "RELAY_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

/// Exit code for a bad setting, as for any usage error.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code after a long-lived task of the node panicked and the node
/// drained (EX_SOFTWARE): the orchestrator restarts it.
pub const EXIT_TASK_PANICKED: u8 = 70;

fn exit_code(e: &server::ServeError) -> u8 {
    match e {
        server::ServeError::Panicked(_) => EXIT_TASK_PANICKED,
        _ => 1,
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(with_default_subcommand(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            telemetry::print_error(format_args!("relay: {}", one_line(&e)));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Token(args) => token(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let prepared = match Config::from_args(args).and_then(Prepared::new) {
        Ok(prepared) => prepared,
        Err(e) => {
            telemetry::print_error(format_args!("relay: {e}"));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = prepared_config(&prepared);
    // Kept to the end: dropping it flushes the lines still queued.
    let log = telemetry::init(config.0, &config.1);
    warn_unknown_variables();
    let runtime = match runtime(prepared.config().worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            telemetry::print_error(format_args!("relay: cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(server::serve(prepared));
    // Tasks that outlived the drain (past its grace period) must not hold
    // the exit up.
    runtime.shutdown_background();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "relay failed");
            // Not past the log: a write to a stderr nobody reads would block.
            if log.is_none() {
                telemetry::print_error(format_args!("relay: {e}"));
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

/// A misspelt setting would otherwise be ignored without a word: one line
/// per `RELAY_*` variable that is no setting, with the name it likely meant.
/// Names only: values may be secrets.
fn warn_unknown_variables() {
    for unknown in config::unknown_variables(std::env::vars_os().map(|(name, _)| name)) {
        match &unknown.did_you_mean {
            Some(known) => tracing::warn!(
                variable = %unknown.name,
                did_you_mean = %known,
                "{} is not a relay setting and is ignored; did you mean {known}?",
                unknown.name
            ),
            None => tracing::warn!(
                variable = %unknown.name,
                "{} is not a relay setting and is ignored",
                unknown.name
            ),
        }
    }
}

/// The node's runtime: `threads` workers, or one per CPU the process may
/// use. Always set here, so that tokio never reads `TOKIO_WORKER_THREADS`
/// (which it would panic on when malformed).
fn runtime(threads: Option<NonZeroUsize>) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    tracing::info!(worker_threads = threads, "starting the runtime");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
}

fn prepared_config(prepared: &Prepared) -> (crate::config::LogFormat, String) {
    let config = prepared.config();
    (config.log_format, config.log.clone())
}

fn token(args: TokenArgs) -> ExitCode {
    match auth::mint_hs256(
        &args.jwt_secret,
        &args.sub,
        args.role,
        &args.store_ids,
        args.ttl,
        args.jwt_issuer.as_deref(),
        args.jwt_audience.as_deref(),
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            telemetry::print_error(format_args!("relay: {e}"));
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `relay` and `relay --addr ...` mean `relay serve ...`.
fn with_default_subcommand(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = args.collect();
    let first = args.get(1).and_then(|a| a.to_str()).map(str::to_owned);
    let needs_serve = match first.as_deref() {
        None => true,
        Some("-h" | "--help" | "-V" | "--version" | "help") => false,
        Some(arg) => arg.starts_with('-'),
    };
    if needs_serve {
        args.insert(1.min(args.len()), "serve".into());
    }
    args
}

/// clap's errors span several lines; operators get one, naming the setting
/// both as flag and as environment variable.
pub fn one_line(e: &clap::Error) -> String {
    let arg = e.get(ContextKind::InvalidArg).map(|a| a.to_string());
    let value = e.get(ContextKind::InvalidValue).map(|v| v.to_string());
    let rendered = e.to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ")
        .to_owned();
    match (arg, e.kind()) {
        (Some(arg), ErrorKind::InvalidValue | ErrorKind::ValueValidation) => {
            let flag = arg.split_whitespace().next().unwrap_or(&arg).to_owned();
            let env = env_name(&flag);
            let value = value.map(|v| format!(" '{v}'")).unwrap_or_default();
            let detail = first
                .rsplit_once(": ")
                .map(|(_, d)| d)
                .unwrap_or("invalid value");
            format!("invalid setting {env} ({flag}){value}: {detail}")
        }
        // clap lists the missing arguments on the lines below its first.
        (_, ErrorKind::MissingRequiredArgument) => {
            let missing: Vec<&str> = rendered
                .lines()
                .skip(1)
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            format!("{} {}", first.trim_end_matches(':'), missing.join(", "))
        }
        _ => first,
    }
}

fn env_name(flag: &str) -> String {
    let name = flag
        .trim_start_matches('-')
        .replace('-', "_")
        .to_uppercase();
    if name == "REDIS_URL" {
        name
    } else {
        format!("RELAY_{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_is_the_default_subcommand() {
        let args = |v: &[&str]| with_default_subcommand(v.iter().map(Into::into));
        assert_eq!(args(&["relay"]), ["relay", "serve"]);
        assert_eq!(
            args(&["relay", "--addr", "x"]),
            ["relay", "serve", "--addr", "x"]
        );
        assert_eq!(args(&["relay", "token"]), ["relay", "token"]);
        assert_eq!(args(&["relay", "--help"]), ["relay", "--help"]);
    }

    #[test]
    fn a_bad_value_is_one_line_naming_the_env_var() {
        let err = Cli::try_parse_from(["relay", "serve", "--location-ttl-s", "abc"]).unwrap_err();
        let line = one_line(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("RELAY_LOCATION_TTL_S"), "{line}");
        assert_eq!(env_name("--redis-url"), "REDIS_URL");
    }
}
