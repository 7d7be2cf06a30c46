//! The `relay-sim` command line: `simulate` and `loadgen`.

use std::process::ExitCode;

use crate::{
    loadgen::{self, LoadgenArgs},
    simulate::{self, SimulateArgs, SimulateError},
};
use clap::{Parser, Subcommand, error::ErrorKind};
use relay::{
    cli::{EXIT_CONFIG, one_line},
    config::LogFormat,
    server::signals,
    telemetry,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "relay-sim",
    version,
    about = "Drive relay nodes from outside: a simulated city, or benchmark load"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Play a small city against running nodes: orders, merchants, drivers,
    /// customers, operations (until Ctrl-C or --duration).
    Simulate(Box<SimulateArgs>),
    /// Drive running nodes with real WebSocket clients and report figures.
    Loadgen(Box<LoadgenArgs>),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            eprintln!("relay-sim: {}", one_line(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (name, filter) = match &cli.command {
        // Problems worth a line (a node gone, an order abandoned) are
        // warnings; RELAY_LOG=info,relay_sim=debug shows every step.
        Command::Simulate(_) => (
            "simulate",
            std::env::var("RELAY_LOG").unwrap_or_else(|_| "warn".to_owned()),
        ),
        Command::Loadgen(_) => ("loadgen", "warn".to_owned()),
    };
    telemetry::init(LogFormat::Human, &filter);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay-sim {name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Simulate(args) => run_simulate(*args).await,
            Command::Loadgen(args) => match loadgen::run(*args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("relay-sim loadgen: {e}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}

async fn run_simulate(args: SimulateArgs) -> ExitCode {
    let stop = CancellationToken::new();
    if let Err(e) = signals::listen(stop.clone()) {
        eprintln!("relay-sim simulate: cannot listen for signals: {e}");
        return ExitCode::FAILURE;
    }
    match simulate::run(args, stop).await {
        Ok(summary) => {
            println!("relay-sim simulate: stopped. {summary}");
            ExitCode::SUCCESS
        }
        Err(e @ SimulateError::Args(_)) => {
            eprintln!("relay-sim simulate: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e @ SimulateError::Stopped) => {
            eprintln!("relay-sim simulate: {e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relay-sim simulate: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_arguments_are_named_on_the_one_line() {
        let err = Cli::try_parse_from(["relay-sim", "simulate"]).unwrap_err();
        let line = one_line(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--api-key"), "{line}");
        assert!(line.contains("--jwt-secret"), "{line}");
    }
}
