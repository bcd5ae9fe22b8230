//! `tailguard inject`: the webhook's sidecar injection, offline, on manifests
//! (Pods and the pod templates of Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, Jobs and CronJobs). Documents that are not changed are printed
//! exactly as they were read.
//!
//! Exit status: 0 done, 1 a workload was refused (bad annotation, tun mode in a
//! restricted namespace), 2 unreadable input.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

pub use crate::inject::manifests::{Injected, inject_stream};

#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// Manifest file or directory; `-` (the default) reads stdin.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    pub files: Vec<PathBuf>,
    /// Annotations of the target namespace, as the webhook would read them
    /// (`tailguard.io/exit-node=100.64.0.1,tailguard.io/mode=userspace`). A
    /// Namespace in the input takes precedence for its own objects.
    #[arg(long, value_delimiter = ',')]
    pub namespace_annotations: Vec<String>,
    /// Policy config (YAML): injection defaults.
    #[arg(long, env = "TAILGUARD_CONFIG")]
    pub config: Option<PathBuf>,
}

pub fn run(args: InjectArgs) -> ExitCode {
    let Some(config) = super::load_config(args.config.as_deref(), "inject") else {
        return ExitCode::from(2);
    };
    let mut annotations = BTreeMap::new();
    for pair in &args.namespace_annotations {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                annotations.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => {
                eprintln!("tailguard inject: --namespace-annotations: `{pair}` is not key=value");
                return ExitCode::from(2);
            }
        }
    }
    let (sources, read_errors) = super::read_inputs(&args.files);
    let mut unreadable = !read_errors.is_empty();
    for e in read_errors {
        eprintln!("error: {e}");
    }
    let mut denied = false;
    let mut stdout = std::io::stdout().lock();
    for (i, (source, text)) in sources.iter().enumerate() {
        let result = inject_stream(source, text, &annotations, &config);
        for note in &result.notes {
            eprintln!("{note}");
        }
        for e in &result.errors {
            eprintln!("error: {e}");
        }
        denied |= result.denied;
        unreadable |= !result.errors.is_empty() && !result.denied;
        let sep = if i > 0 { "---\n" } else { "" };
        if let Err(e) = write!(stdout, "{sep}{}", result.output)
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            eprintln!("tailguard inject: cannot write output: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::from(if unreadable {
        2
    } else if denied {
        1
    } else {
        0
    })
}
