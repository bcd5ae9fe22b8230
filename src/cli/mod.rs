//! The command line: `serve`, `check` (and later `inject`, `certs`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::server::{self, ServeArgs};

pub mod check;

#[derive(Debug, Parser)]
#[command(
    name = "tailguard",
    version,
    about = "Admission webhook and linter for Tailscale workloads on Kubernetes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the admission webhook over HTTPS.
    Serve(ServeArgs),
    /// Check manifests offline with the same rules as the webhook.
    Check(check::CheckArgs),
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => {
            init_tracing();
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("tailguard: cannot start the async runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            match runtime.block_on(server::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "tailguard serve failed");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check(args) => check::run(args),
    }
}

/// Structured logs on stderr; `RUST_LOG` filters, `TAILGUARD_LOG_FORMAT=json` for JSON lines.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("TAILGUARD_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
