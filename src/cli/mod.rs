//! The command line: `serve`, `check` (and later `inject`, `certs`).

use std::process::ExitCode;

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::manifest::ReadError;

use crate::server::{self, ServeArgs};

pub mod audit;
pub mod certs;
pub mod check;
pub mod inject;
mod json_log;
mod log_queue;
pub mod policy;
pub mod sarif;

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
    /// What the webhook would say about the workloads already in the cluster.
    Audit(audit::AuditArgs),
    /// Inject the Tailscale egress sidecar into manifests offline, as the webhook would.
    Inject(inject::InjectArgs),
    /// Write a CA and a serving certificate (development, or the chart's `secret` mode).
    Certs(certs::CertsArgs),
    /// The CEL fallback policy for when the webhook is unavailable.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => {
            // Held to the end of this arm, past the error line below: dropping it
            // writes out every queued log line before the process exits.
            let _logs = init_tracing();
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
        Command::Audit(args) => audit::run(args),
        Command::Inject(args) => inject::run(args),
        Command::Certs(args) => certs::run(args),
        Command::Policy(command) => policy::run(command),
    }
}

/// Loads `--config` (or the defaults); `None` after printing why it cannot.
pub fn load_config(path: Option<&Path>, command: &str) -> Option<Config> {
    match path.map(Config::load).transpose() {
        Ok(c) => Some(c.unwrap_or_default()),
        Err(e) => {
            eprintln!("tailguard {command}: {e}");
            None
        }
    }
}

/// Reads manifest inputs: files, directories (recursively, sorted, *.yaml,
/// *.yml, *.json) and stdin (`-`). Returns (source name, text) pairs and the
/// inputs that could not be read.
pub fn read_inputs(paths: &[PathBuf]) -> (Vec<(String, String)>, Vec<ReadError>) {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        read_input(path, &mut sources, &mut errors);
    }
    (sources, errors)
}

fn read_input(path: &Path, sources: &mut Vec<(String, String)>, errors: &mut Vec<ReadError>) {
    let io_error = |source: &str, e: &std::io::Error| ReadError {
        source: source.to_owned(),
        line: None,
        message: format!("cannot read: {e}"),
    };
    if path.as_os_str() == "-" {
        let mut text = String::new();
        match std::io::stdin().lock().read_to_string(&mut text) {
            Ok(_) => sources.push(("-".to_owned(), text)),
            Err(e) => errors.push(io_error("-", &e)),
        }
        return;
    }
    let display = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let mut entries = match std::fs::read_dir(path) {
                Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>(),
                Err(e) => return errors.push(io_error(&display, &e)),
            };
            entries.sort();
            for entry in entries {
                let is_manifest = entry
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
                if entry.is_dir() || is_manifest {
                    read_input(&entry, sources, errors);
                }
            }
        }
        Ok(_) => match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => sources.push((display, text)),
                Err(_) => errors.push(ReadError {
                    source: display,
                    line: None,
                    message: "not UTF-8 text".into(),
                }),
            },
            Err(e) => errors.push(io_error(&display, &e)),
        },
        Err(e) => errors.push(io_error(&display, &e)),
    }
}

/// Structured logs on stderr; `RUST_LOG` filters, `TAILGUARD_LOG_FORMAT=json` for JSON lines.
/// The per-review lines are written off the request's path, the others at
/// once ([`log_queue`]); the returned guard writes out what is queued when
/// dropped (`None` if the writer thread could not start: then every line is
/// written at once).
fn init_tracing() -> Option<log_queue::Flush<std::io::Stderr>> {
    match log_queue::stderr() {
        Ok((queue, flush)) => {
            install_subscriber(queue);
            Some(flush)
        }
        Err(e) => {
            eprintln!("tailguard: cannot start the log writer thread ({e}); writing log lines directly");
            install_subscriber(std::io::stderr);
            None
        }
    }
}

/// The global subscriber, writing to `writer`: text, or JSON lines
/// ([`json_log`]) with `TAILGUARD_LOG_FORMAT=json`.
fn install_subscriber<W>(writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if std::env::var("TAILGUARD_LOG_FORMAT").as_deref() == Ok("json") {
        builder
            .json()
            .fmt_fields(json_log::AppendJsonFields)
            .event_format(json_log::JsonEvents::default())
            .init()
    } else {
        builder.init()
    }
}
