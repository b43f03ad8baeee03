//! The `cakelink` binary: parse the command line, set up logging, run.

use clap::Parser;

/// mimalloc: the redirect path allocates a few short-lived strings per request, and
/// mimalloc's thread-local free lists serve them at a fraction of glibc malloc's cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
