//! A whole benchmark run: in-process, growth, over the wire, stall, start-up,
//! then the verdicts and the results files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tailguard::config::Config;

use crate::args::{Args, Part};
use crate::load::{Measured, Wire};
use crate::namespaces::Known;
use crate::report::{Machine, Results};
use crate::{bodies, growth, inproc, procs, stall, startup, summary, verdict};

pub fn run(args: &Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("WARNING: a debug build; run with --release for meaningful figures");
    }
    let settings = args.settings();
    let exe = std::env::current_exe()?;
    let exe_dir = exe.parent().context("binary directory")?.to_path_buf();
    let out = match &args.out {
        Some(p) => p.clone(),
        None => exe_dir.parent().unwrap_or(&exe_dir).join("bench").join("results.json"),
    };
    let out_dir = out.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    std::fs::create_dir_all(out_dir.join("bodies"))?;

    let mut machine = Machine::probe(args.client_threads);
    println!("{}", machine.summary());
    if machine.load1_start > 0.5 * machine.nproc as f64 {
        println!(
            "WARNING: the machine is busy (1-minute load {:.2} on {} CPUs): figures will be low and noisy",
            machine.load1_start, machine.nproc
        );
    }

    let cases: Vec<bodies::Case> = bodies::cases()
        .into_iter()
        .filter(|c| {
            args.cases.is_empty()
                || args
                    .cases
                    .iter()
                    .any(|want| c.name.contains(want.as_str()) || c.endpoint.contains(want.as_str()))
        })
        .collect();
    if cases.is_empty() {
        bail!("no case matches --cases {:?}", args.cases);
    }
    let config = Config::default();
    let known = Known::new();
    let in_process = inproc::table(&cases, &out_dir.join("bodies"), &config, &known, &settings)?;

    let (growth, growth_series, heaviest) = if args.skips(Part::Growth) {
        (Vec::new(), Vec::new(), None)
    } else {
        growth::run(&config, &known, &settings)
    };

    let server_bin = if args.skips(Part::Load) && args.skips(Part::Startup) {
        None
    } else {
        Some(procs::server_bin(args.server_bin.as_deref(), &exe_dir)?)
    };
    let work = procs::TempDir::new()?;
    let mut measured = Measured {
        tailguard: Vec::new(),
        compared: BTreeMap::new(),
    };
    let mut stall = Vec::new();
    let (mut idle_rss, mut compared_idle_rss) = (0, BTreeMap::new());
    if let (false, Some(bin)) = (args.skips(Part::Load), &server_bin) {
        let wire = Wire::start(args, &settings, bin, &work.0)?;
        wire.check(&cases, &settings.protocols, &config, &known)?;
        (idle_rss, compared_idle_rss) = wire.idle_rss();
        println!(
            "idle RSS: tailguard {idle_rss} KiB{}",
            compared_idle_rss
                .iter()
                .map(|(role, kib)| format!(", {role} {kib} KiB"))
                .collect::<String>()
        );
        measured = wire.measure_all(args, &settings, &cases, &in_process)?;
        if !args.skips(Part::Stall) {
            stall = stall::run(&wire, args, &settings, heaviest)?;
        }
        let Wire { runtime, .. } = wire;
        runtime.shutdown_timeout(Duration::from_secs(1));
    }

    let startup = match (args.skips(Part::Startup), &server_bin) {
        (false, Some(bin)) => startup::run(bin, &work.0, &settings)?,
        _ => Vec::new(),
    };

    machine.load1_end = procs::load1();
    let ratios = verdict::ratios(&measured, &in_process);
    let targets = verdict::targets(&measured.tailguard, &ratios, &in_process, &startup);
    let results = Results {
        machine,
        settings: serde_json::json!({
            "duration_s": settings.duration.as_secs_f64(),
            "warmup_s": settings.warmup.as_secs_f64(),
            "runs": settings.runs,
            "connections": args.connections,
            "h2_connections": args.h2_connections,
            "client_threads": args.client_threads,
            "compare": settings.compare.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "server": "tailguard serve --dev --kubeconfig <fake apiserver>, JSON logs to a file",
            "server_bin": server_bin.as_deref().map(|b| format!("{} ({})", b.display(), procs::linkage(b))),
            "in_process_clock": inproc::clock(),
            "server_log": args.server_log,
        }),
        cases: measured.tailguard,
        compared: measured.compared,
        ratios,
        in_process,
        growth,
        growth_series,
        stall,
        startup,
        server_idle_rss_kib: idle_rss,
        compared_idle_rss_kib: compared_idle_rss,
        targets,
    };
    let markdown = summary::print(&results);
    std::fs::write(&out, serde_json::to_vec_pretty(&results)?)?;
    std::fs::write(out.with_extension("md"), markdown)?;
    println!("\nwrote {} and {}", out.display(), out.with_extension("md").display());
    Ok(())
}
