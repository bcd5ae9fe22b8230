//! `tailguard check`: the webhook's rules, offline, on manifest files or stdin.
//!
//! Exit status: 0 no deny finding, 1 at least one, 2 some input could not be
//! read (findings for the rest are still printed).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;

use crate::catalog::Severity;
use crate::manifest;

pub use crate::check::{Located, Report, check_documents};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
    /// SARIF 2.1.0, for GitHub code scanning and other SARIF viewers.
    Sarif,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Policy config (YAML): rule levels, image patterns, exemptions.
    #[arg(long, env = "TAILGUARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Manifest files or directories (searched for *.yaml, *.yml, *.json); `-` reads stdin.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn run(args: CheckArgs) -> ExitCode {
    let Some(config) = super::load_config(args.config.as_deref(), "check") else {
        return ExitCode::from(2);
    };
    let (sources, mut errors) = super::read_inputs(&args.paths);
    let mut docs = Vec::new();
    for (source, text) in &sources {
        let (d, e) = manifest::parse_stream(source, text);
        docs.extend(d);
        errors.extend(e);
    }
    let report = check_documents(&docs, errors, &config);
    let mut stdout = std::io::stdout().lock();
    let written = match args.output {
        Output::Json => serde_json::to_writer_pretty(&mut stdout, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(stdout)),
        Output::Text => write_text(&mut stdout, &report),
        Output::Sarif => {
            let cwd = std::env::current_dir().ok();
            serde_json::to_writer_pretty(&mut stdout, &super::sarif::log(&report, &config, cwd.as_deref()))
                .map_err(std::io::Error::from)
                .and_then(|()| writeln!(stdout))
        }
    };
    if let Err(e) = written
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("tailguard check: cannot write output: {e}");
        return ExitCode::from(2);
    }
    if args.output == Output::Sarif {
        // SARIF usually goes to a file nobody reads in the CI log: say there why it failed.
        for e in &report.errors {
            eprintln!("error: {e}");
        }
    }
    if args.output == Output::Text {
        let (deny, warn) = report
            .findings
            .iter()
            .fold((0, 0), |(d, w), f| match f.finding.severity {
                Severity::Deny => (d + 1, w),
                Severity::Warn => (d, w + 1),
            });
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        eprintln!(
            "tailguard check: {} object(s) with a pod spec checked: {deny} deny, {warn} warn, {} unreadable input(s)",
            report.objects,
            report.errors.len()
        );
    }
    ExitCode::from(report.exit_code())
}

fn write_text(w: &mut impl Write, report: &Report) -> std::io::Result<()> {
    for f in &report.findings {
        writeln!(
            w,
            "{}:{}: {}: {} {}: {}: {} (fix: {})",
            f.file,
            f.line,
            f.object,
            f.finding.severity,
            f.finding.rule,
            f.finding.path,
            f.finding.message,
            f.finding.hint
        )?;
    }
    Ok(())
}
