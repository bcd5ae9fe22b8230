//! `tailguard policy export`: the CEL fallback policy (see `crate::policy`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Write a ValidatingAdmissionPolicy and its binding covering the rules CEL can express
    /// that hold on every runtime (privileged, literal-auth-key, exit-node-hostname).
    Export {
        /// Name of the policy and the binding.
        #[arg(long, default_value = "tailguard-fallback")]
        name: String,
        /// Write to this file instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
}

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Export { name, output } => {
            let yaml = match crate::policy::fallback_policy_yaml(&name) {
                Ok(y) => y,
                Err(e) => {
                    eprintln!("tailguard policy export: {e}");
                    return ExitCode::from(2);
                }
            };
            let written = match &output {
                Some(path) => std::fs::write(path, &yaml).map_err(|e| format!("{}: {e}", path.display())),
                None => {
                    print!("{yaml}");
                    Ok(())
                }
            };
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tailguard policy export: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
