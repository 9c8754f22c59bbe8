//! Parses the command line and hands it to the program it names.

use std::process::ExitCode;

use clap::Parser;
use pod_identity_webhook::cli::{Cli, Command};
use pod_identity_webhook::{agent, certs, exchange, webhook};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.init_logging();
    // One crypto provider for every TLS client and server in the process.
    pod_identity_webhook::testing::install_crypto_provider();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Serve(args) => block_on(webhook::run(args)),
        Command::Agent(args) => block_on(agent::run(args)),
        Command::Exchange(args) => block_on(exchange::run(args)),
        Command::Mutate(args) => webhook::offline::command(args).map_err(Into::into),
        Command::Explain(args) => match webhook::explain::command(args) {
            Ok(verdict) => return ExitCode::from(verdict.code()),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        Command::Certs(args) => certs::command(args).map_err(Into::into),
        Command::MigrateAssociations(args) => return ExitCode::from(args.run()),
        Command::Crd => {
            print!("{}", pod_identity_webhook::crd_yaml());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a program on a multi-threaded runtime.
fn block_on<E: std::error::Error + 'static>(
    program: impl Future<Output = Result<(), E>>,
) -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Runtime::new()?.block_on(program)?;
    Ok(())
}
