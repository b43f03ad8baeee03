//! The `cakelink` binary: parse the command line, set up logging, run.

use clap::Parser;

fn main() -> std::process::ExitCode {
    cakelink::telemetry::init_logging();
    match cakelink::cli::run(cakelink::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
