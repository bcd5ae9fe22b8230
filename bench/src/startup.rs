//! Start-up to ready of `tailguard serve --dev`: spawn to the first `/readyz` 200,
//! with certificates to generate and with existing ones.

use std::path::Path;

use crate::args::Settings;
use crate::procs;
use crate::report::{self, Startup};

pub fn run(bin: &Path, work: &Path, settings: &Settings) -> anyhow::Result<Vec<Startup>> {
    println!("\n## Start-up: spawn `tailguard serve --dev --certs-dir DIR` to the first /readyz 200\n");
    let existing = work.join("startup-existing");
    procs::startup(bin, &existing)?; // creates the certificates reused below
    let mut fresh = Vec::new();
    let mut reused = Vec::new();
    for i in 0..settings.startup_runs {
        fresh.push(procs::startup(bin, &work.join(format!("startup-fresh-{i}")))?);
        reused.push(procs::startup(bin, &existing)?);
    }
    let mut out = Vec::new();
    for (certs, runs) in [("fresh (generated)", fresh), ("existing (reused)", reused)] {
        let ms: Vec<f64> = runs.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        let s = Startup {
            certs: certs.to_owned(),
            median_ms: report::median_f(ms.iter().copied()),
            max_ms: ms.iter().copied().fold(0.0, f64::max),
            runs_ms: ms,
        };
        println!(
            "{:<18} median {:.1} ms, max {:.1} ms ({:?})",
            s.certs,
            s.median_ms,
            s.max_ms,
            s.runs_ms.iter().map(|m| format!("{m:.1}")).collect::<Vec<_>>()
        );
        out.push(s);
    }
    Ok(out)
}
