//! The `tailguard` binary: parse the command line, set up logging, dispatch.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // rustls: ring is the only provider compiled in; make it the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = tailguard::cli::Cli::parse();
    tailguard::cli::run(cli)
}
