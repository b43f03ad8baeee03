//! The `cakelink` binary: parse the command line, set up logging, run, and exit with
//! a status that tells a bad config (64) from other failures (1).

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
            cakelink::cli::exit_code(&e)
        }
    }
}
