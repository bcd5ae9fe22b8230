//! `tailguard audit`: what the webhook would say about the workloads that
//! already run in the cluster (same rules, same policy, the namespaces'
//! labels and annotations), printed like `check`.
//!
//! Exit status: 0 no deny finding, 1 at least one, 2 something could not be
//! read or listed (findings for the rest are still printed).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::audit::AuditReport;
use crate::cluster;
use crate::rules::Severity;

use super::check::Output;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Output format (text or json; `sarif` is for files: use `check` on manifests).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Policy config (YAML), as the webhook runs with.
    #[arg(long, env = "TAILGUARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kubeconfig (default: KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "TAILGUARD_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Only this namespace (default: all).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

pub fn run(args: AuditArgs) -> ExitCode {
    if args.output == Output::Sarif {
        eprintln!(
            "tailguard audit: SARIF locates findings in files; use -o text or -o json here (or `tailguard check -o sarif` on manifests)"
        );
        return ExitCode::from(2);
    }
    let Some(config) = super::load_config(args.config.as_deref(), "audit") else {
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tailguard audit: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = runtime.block_on(async {
        let client = cluster::client(args.kubeconfig.as_deref()).await?;
        anyhow::Ok(cluster::audit::run_once(&client, args.namespace.as_deref(), &config).await)
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tailguard audit: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let written = match args.output {
        Output::Text | Output::Sarif => write_text(&mut stdout, &report),
        Output::Json => serde_json::to_writer_pretty(&mut stdout, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(stdout)),
    };
    if let Err(e) = written
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("tailguard audit: cannot write output: {e}");
        return ExitCode::from(2);
    }
    if args.output == Output::Text {
        let deny = report
            .findings
            .iter()
            .filter(|f| f.finding.severity == Severity::Deny)
            .count();
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        eprintln!(
            "tailguard audit: {} workload(s) checked, {} with a Tailscale container: {deny} deny, {} warn, {} error(s)",
            report.objects,
            report.tailscale_objects,
            report.findings.len() - deny,
            report.errors.len()
        );
    }
    ExitCode::from(report.exit_code())
}

fn write_text(w: &mut impl Write, report: &AuditReport) -> std::io::Result<()> {
    for f in &report.findings {
        writeln!(
            w,
            "{}: {} {}: {}: {} (fix: {})",
            f.object, f.finding.severity, f.finding.rule, f.finding.path, f.finding.message, f.finding.hint
        )?;
    }
    Ok(())
}
