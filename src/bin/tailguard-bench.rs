//! `tailguard-bench`: tailguard's admission webhook under load, against the
//! naive webhook most people write first, on the same machine in the same run.
//!
//! ```sh
//! cargo run --release --bin tailguard-bench                 # full run (~10 min)
//! cargo run --release --bin tailguard-bench -- --quick      # smoke run (~1 min)
//! cargo run --release --bin tailguard-bench -- --cases daemonset --protocols h2 --runs 5
//! ```
//!
//! What it does:
//! - generates real-shaped AdmissionReviews (`bodies`): three sizes for /validate
//!   (Tailscale workloads: every rule runs) and three for /mutate (app pods in an
//!   opted-in namespace: the sidecar is injected);
//! - times each review in-process (`admission::validate`/`mutate` in a loop) and
//!   the baseline's handler the same way;
//! - grows objects from 1 KiB to 1 MiB (managedFields, env entries, containers)
//!   and checks that the time per review stays linear;
//! - starts the real `tailguard serve` binary (`--dev` certificates, JSON logs at
//!   info, a loopback fake apiserver for the namespace cache, so /mutate really
//!   injects) and the baseline (`tailguard-bench --serve-baseline`) as separate
//!   processes, and drives both with the same closed-loop clients over TLS:
//!   HTTP/2 (streams multiplexed over a few connections, as the apiserver does)
//!   and HTTP/1.1 keep-alive, TCP_NODELAY; runs interleave tailguard and
//!   baseline, each case `--runs` times (medians and spread reported);
//! - measures small-review latency while a client loops 1 MiB reviews;
//! - measures start-up to ready of `tailguard serve --dev` (fresh and existing certs);
//! - prints the tables and writes `target/bench/results.json` (and `results.md`).

#[path = "tailguard-bench/baseline.rs"]
mod baseline;
#[path = "tailguard-bench/bodies.rs"]
mod bodies;
#[path = "tailguard-bench/client.rs"]
mod client;
#[path = "tailguard-bench/inproc.rs"]
mod inproc;
#[path = "tailguard-bench/namespaces.rs"]
mod namespaces;
#[path = "tailguard-bench/procs.rs"]
mod procs;
#[path = "tailguard-bench/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use hyper::body::Bytes;
use tailguard::config::Config;

use client::{Load, Proto, Target};
use report::{CaseResult, GrowthPoint, GrowthSeries, InProcess, Ratio, Results, Run, Stall, Startup};

/// Benchmark tailguard's webhook over TLS against a naive webhook (see the module docs).
#[derive(Debug, Parser)]
#[command(name = "tailguard-bench")]
struct Args {
    /// Measured time per case and run [default: 5s; 1s with --quick].
    #[arg(long, value_parser = tailguard::server::parse_duration)]
    duration: Option<Duration>,

    /// Load before each measured window (connections set up, caches warm) [default: 1s; 300ms with --quick].
    #[arg(long, value_parser = tailguard::server::parse_duration)]
    warmup: Option<Duration>,

    /// Runs per case; medians and spread are reported [default: 3; 1 with --quick].
    #[arg(long)]
    runs: Option<usize>,

    /// Concurrent requests: HTTP/1.1 keep-alive connections, or HTTP/2 streams.
    #[arg(long, default_value_t = 32)]
    connections: usize,

    /// HTTP/2 connections the streams are multiplexed over.
    #[arg(long, default_value_t = 4)]
    h2_connections: usize,

    /// Only cases whose name or endpoint contains one of these (comma-separated),
    /// e.g. `daemonset,30k` or `/mutate`. Cases: ts-pod-1k, ts-daemonset-8k,
    /// ts-pod-30k (/validate); app-pod-1k, app-pod-8k, app-pod-30k (/mutate).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,

    /// Protocols to load with.
    #[arg(long, value_delimiter = ',', default_values = ["h2", "h1"])]
    protocols: Vec<ProtoArg>,

    /// Short smoke run: 1 run of 1 s per case, smaller time budgets elsewhere.
    #[arg(long)]
    quick: bool,

    /// Parts to skip (comma-separated).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<Part>,

    /// RUST_LOG of the tailguard server (JSON logs to a file; `info` logs one line per review, as deployed).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    server_log: String,

    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,

    /// The tailguard binary to serve with [default: `tailguard` next to this
    /// binary, rebuilt first when run through cargo].
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,

    /// Results file [default: target/bench/results.json].
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,

    /// Only loop one review in-process, for a profiler (e.g. `valgrind --tool=callgrind`):
    /// a case name, or `growth:<series 1-5>:<KiB>` for a growth body.
    #[arg(long, value_name = "CASE")]
    profile_case: Option<String>,

    /// With --profile-case: how many reviews.
    #[arg(long, default_value_t = 1000)]
    iterations: u64,

    /// With --profile-case: loop the baseline's handler instead of tailguard's.
    #[arg(long)]
    profile_baseline: bool,

    /// (internal) Serve the baseline webhook; used by the benchmark itself.
    #[arg(long, hide = true, requires_all = ["cert", "key"])]
    serve_baseline: bool,

    #[arg(long, hide = true)]
    cert: Option<PathBuf>,

    #[arg(long, hide = true)]
    key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtoArg {
    H2,
    H1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// The over-the-wire load (and the stall test).
    Load,
    /// The baseline server (in-process baseline figures are still computed).
    Baseline,
    Growth,
    Stall,
    Startup,
}

/// Resolved settings.
struct Settings {
    duration: Duration,
    warmup: Duration,
    runs: usize,
    budget: Duration,
    startup_runs: usize,
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    if args.serve_baseline {
        let (Some(cert), Some(key)) = (&args.cert, &args.key) else {
            return ExitCode::from(2);
        };
        return match baseline::serve(cert, key) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("baseline: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(case) = &args.profile_case {
        return match profile(case, args.iterations, args.profile_baseline) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tailguard-bench: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailguard-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("WARNING: a debug build; run with --release for meaningful figures");
    }
    let settings = Settings {
        duration: args.duration.unwrap_or(if args.quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        }),
        warmup: args.warmup.unwrap_or(if args.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(1)
        }),
        runs: args.runs.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        budget: if args.quick {
            Duration::from_millis(150)
        } else {
            Duration::from_millis(600)
        },
        startup_runs: if args.quick { 2 } else { 5 },
    };
    let skip = |p: Part| args.skip.contains(&p);
    let protocols: Vec<Proto> = args
        .protocols
        .iter()
        .map(|p| match p {
            ProtoArg::H1 => Proto::H1,
            ProtoArg::H2 => Proto::H2,
        })
        .collect();

    let exe = std::env::current_exe()?;
    let exe_dir = exe.parent().context("binary directory")?.to_path_buf();
    let out = match &args.out {
        Some(p) => p.clone(),
        None => exe_dir.parent().unwrap_or(&exe_dir).join("bench").join("results.json"),
    };
    let out_dir = out.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    std::fs::create_dir_all(out_dir.join("bodies"))?;

    let mut machine = report::Machine::probe(args.client_threads);
    println!(
        "machine: {} x {} ({} MiB), kernel {}, load {:.2}",
        machine.nproc,
        machine.cpu_model,
        machine.mem_total_kib / 1024,
        machine.kernel,
        machine.load1_start
    );
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
    let known = namespaces::Known::new();

    // --- what each case answers, and its in-process cost ---
    println!("\n## Cases (answers from admission::validate/mutate with a synced namespace cache)\n");
    for c in &cases {
        std::fs::write(out_dir.join("bodies").join(format!("{}.json", c.name)), &c.body)?;
        let answer = inproc::tailguard_review(c.endpoint, &c.body, &config, &known);
        println!(
            "{:<16} {:<9} {:>6} B  {}  ({})",
            c.name,
            c.endpoint,
            c.body.len(),
            summarize(&answer),
            c.what
        );
        if c.endpoint == "/mutate" && !summarize(&answer).contains("patch") {
            bail!(
                "{}: /mutate did not inject: {}",
                c.name,
                String::from_utf8_lossy(&answer)
            );
        }
    }
    println!("\n## In-process cost per review (parse + rules/injection + patch + serialize; median of 5 batches)\n");
    println!(
        "{:<16} {:<9} {:>7} {:>12} {:>12} {:>8}",
        "case", "endpoint", "bytes", "tailguard µs", "baseline µs", "speedup"
    );
    let mut in_process = Vec::new();
    for c in &cases {
        let cost = inproc::cost(c.endpoint, &c.body, &config, &known, settings.budget);
        let (t, b) = (us(cost.tailguard), us(cost.naive));
        println!(
            "{:<16} {:<9} {:>7} {:>12.1} {:>12.1} {:>7.1}x",
            c.name,
            c.endpoint,
            c.body.len(),
            t,
            b,
            b / t
        );
        in_process.push(InProcess {
            name: c.name.to_owned(),
            endpoint: c.endpoint.to_owned(),
            bytes: c.body.len(),
            tailguard_us: t,
            baseline_us: b,
        });
    }

    // --- growth ---
    let (growth, growth_series, heaviest) = if skip(Part::Growth) {
        (Vec::new(), Vec::new(), None)
    } else {
        growth(&config, &known, &settings)
    };

    // --- over the wire ---
    let mut results = Vec::new();
    let mut baseline_results = Vec::new();
    let mut stall = Vec::new();
    let (mut idle_rss, mut baseline_idle_rss) = (0, 0);
    let server_bin = if skip(Part::Load) && skip(Part::Startup) {
        None
    } else {
        Some(server_bin(args, &exe_dir)?)
    };
    let work = TempDir::new()?;
    if let (false, Some(bin)) = (skip(Part::Load), &server_bin) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads.max(1))
            .enable_all()
            .build()?;
        let apiserver = runtime.block_on(namespaces::fake_apiserver())?;
        let kubeconfig = work.0.join("kubeconfig");
        std::fs::write(&kubeconfig, namespaces::kubeconfig(apiserver))?;
        let started = Instant::now();
        let server = procs::Tailguard::start(bin, &work.0, &kubeconfig, &args.server_log)?;
        println!(
            "\ntailguard serve (pid {}) on {}, ready in {:.0} ms (namespace cache synced from the fake apiserver {apiserver})",
            server.proc.pid(),
            server.addr,
            started.elapsed().as_secs_f64() * 1e3
        );
        let ca = std::fs::read(server.certs.join(tailguard::certs::CA_CERT_FILE))?;
        let tg_target = Target::new(server.addr, &ca)?;
        let base = if skip(Part::Baseline) {
            None
        } else {
            let b = procs::Baseline::start(
                &server.certs.join(tailguard::certs::TLS_CERT_FILE),
                &server.certs.join(tailguard::certs::TLS_KEY_FILE),
            )?;
            println!("baseline (pid {}) on {}", b.proc.pid(), b.addr);
            let t = Target::new(b.addr, &ca)?;
            Some((b, t))
        };
        // Every case answers 200 on every protocol, from both servers.
        for c in &cases {
            for &proto in &protocols {
                let body = Bytes::from(c.body.clone());
                let (status, answer) = runtime.block_on(client::once(&tg_target, proto, c.endpoint, body.clone()))?;
                if status != 200
                    || summarize(&answer) != summarize(&inproc::tailguard_review(c.endpoint, &c.body, &config, &known))
                {
                    bail!(
                        "tailguard {} {} over {}: {status} {}",
                        c.name,
                        c.endpoint,
                        proto.as_str(),
                        String::from_utf8_lossy(&answer)
                    );
                }
                if let Some((_, t)) = &base {
                    let (status, answer) = runtime.block_on(client::once(t, proto, c.endpoint, body))?;
                    if status != 200 {
                        bail!("baseline {}: {status} {}", c.name, String::from_utf8_lossy(&answer));
                    }
                }
            }
        }
        idle_rss = procs::status_kib(server.proc.pid(), "VmRSS").unwrap_or(0);
        baseline_idle_rss = base
            .as_ref()
            .and_then(|(b, _)| procs::status_kib(b.proc.pid(), "VmRSS"))
            .unwrap_or(0);
        println!("idle RSS: tailguard {idle_rss} KiB, baseline {baseline_idle_rss} KiB");

        println!(
            "\n## Load: {} concurrent requests (HTTP/1.1: {} connections; HTTP/2: {} streams over {} connections), {} runs x {:?} (+{:?} warm-up)\n",
            args.connections,
            args.connections,
            args.connections,
            args.h2_connections,
            settings.runs,
            settings.duration,
            settings.warmup
        );
        let mut tg_runs: BTreeMap<(usize, Proto), Vec<Run>> = BTreeMap::new();
        let mut base_runs: BTreeMap<(usize, Proto), Vec<Run>> = BTreeMap::new();
        for run in 0..settings.runs {
            for (i, c) in cases.iter().enumerate() {
                for &proto in &protocols {
                    let load = Load {
                        proto,
                        path: c.endpoint,
                        body: Bytes::from(c.body.clone()),
                        concurrency: args.connections,
                        h2_connections: args.h2_connections,
                        warmup: settings.warmup,
                        duration: settings.duration,
                        extra: None,
                        server_pid: None,
                    };
                    server.truncate_log();
                    let r = measure(&runtime, &tg_target, server.proc.pid(), &load)?;
                    print_run(run, c, proto, "tailguard", &r);
                    tg_runs.entry((i, proto)).or_default().push(r);
                    if let Some((b, t)) = &base {
                        let r = measure(&runtime, t, b.proc.pid(), &load)?;
                        print_run(run, c, proto, "baseline", &r);
                        base_runs.entry((i, proto)).or_default().push(r);
                    }
                }
            }
        }
        for (i, c) in cases.iter().enumerate() {
            for &proto in &protocols {
                let inp = &in_process[i];
                if let Some(runs) = tg_runs.remove(&(i, proto)) {
                    results.push(CaseResult::from_runs(
                        c.name,
                        c.endpoint,
                        proto.as_str(),
                        c.body.len(),
                        inp.tailguard_us,
                        runs,
                    ));
                }
                if let Some(runs) = base_runs.remove(&(i, proto)) {
                    baseline_results.push(CaseResult::from_runs(
                        c.name,
                        c.endpoint,
                        proto.as_str(),
                        c.body.len(),
                        inp.baseline_us,
                        runs,
                    ));
                }
            }
        }
        drop(base);

        if !skip(Part::Stall) {
            let (big_name, big_endpoint, big_body) = match heaviest {
                Some(h) => h,
                None => {
                    let s = &bodies::series()[1];
                    (s.name.to_owned(), s.endpoint, bodies::sized(s, 1 << 20).1)
                }
            };
            let small = bodies::cases().into_iter().next().context("small case")?;
            println!(
                "\n## Stall: {} latency while one more client loops {} KiB reviews ({big_name}, {big_endpoint})\n",
                small.name,
                big_body.len() / 1024
            );
            for &proto in &protocols {
                let mut load = Load {
                    proto,
                    path: small.endpoint,
                    body: Bytes::from(small.body.clone()),
                    concurrency: args.connections,
                    h2_connections: args.h2_connections,
                    warmup: settings.warmup,
                    duration: settings.duration,
                    extra: None,
                    server_pid: Some(server.proc.pid()),
                };
                server.truncate_log();
                let without = runtime.block_on(client::run(&tg_target, &load))?;
                load.extra = Some((big_endpoint, Bytes::from(big_body.clone())));
                server.truncate_log();
                let with = runtime.block_on(client::run(&tg_target, &load))?;
                let rps = |o: &client::Outcome| o.main.latencies.len() as f64 / o.window.as_secs_f64();
                let s = Stall {
                    protocol: proto.as_str().to_owned(),
                    small_case: small.name.to_owned(),
                    big_series: big_name.clone(),
                    big_bytes: big_body.len(),
                    without_p50_us: without.main.percentile(50.0),
                    without_p99_us: without.main.percentile(99.0),
                    without_max_us: without.main.max(),
                    without_rps: rps(&without),
                    with_p50_us: with.main.percentile(50.0),
                    with_p99_us: with.main.percentile(99.0),
                    with_max_us: with.main.max(),
                    with_rps: rps(&with),
                    big_reviews: with.extra.latencies.len(),
                    big_p50_us: with.extra.percentile(50.0),
                    big_max_us: with.extra.max(),
                };
                println!(
                    "{}: small p50/p99/max {}/{}/{} µs at {:.0}/s alone; {}/{}/{} µs at {:.0}/s with {} big reviews (p50 {} µs, max {} µs)",
                    s.protocol,
                    s.without_p50_us,
                    s.without_p99_us,
                    s.without_max_us,
                    s.without_rps,
                    s.with_p50_us,
                    s.with_p99_us,
                    s.with_max_us,
                    s.with_rps,
                    s.big_reviews,
                    s.big_p50_us,
                    s.big_max_us
                );
                stall.push(s);
            }
        }
        drop(server);
        runtime.shutdown_timeout(Duration::from_secs(1));
    }

    // --- start-up ---
    let mut startup = Vec::new();
    if let (false, Some(bin)) = (skip(Part::Startup), &server_bin) {
        println!("\n## Start-up: spawn `tailguard serve --dev --certs-dir DIR` to the first /readyz 200\n");
        let existing = work.0.join("startup-existing");
        procs::startup(bin, &existing)?; // creates the certificates reused below
        let mut fresh = Vec::new();
        let mut reused = Vec::new();
        for i in 0..settings.startup_runs {
            fresh.push(procs::startup(bin, &work.0.join(format!("startup-fresh-{i}")))?);
            reused.push(procs::startup(bin, &existing)?);
        }
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
            startup.push(s);
        }
    }

    machine.load1_end = procs::load1();
    let ratios = ratios(&results, &baseline_results, &in_process);
    let targets = targets(&results, &ratios, &in_process, &startup);
    let results = Results {
        machine,
        settings: serde_json::json!({
            "duration_s": settings.duration.as_secs_f64(),
            "warmup_s": settings.warmup.as_secs_f64(),
            "runs": settings.runs,
            "connections": args.connections,
            "h2_connections": args.h2_connections,
            "client_threads": args.client_threads,
            "server": "tailguard serve --dev --kubeconfig <fake apiserver>, JSON logs to a file",
            "server_log": args.server_log,
        }),
        cases: results,
        baseline: baseline_results,
        ratios,
        in_process,
        growth,
        growth_series,
        stall,
        startup,
        server_idle_rss_kib: idle_rss,
        baseline_idle_rss_kib: baseline_idle_rss,
        targets,
    };
    let markdown = print_summary(&results);
    std::fs::write(&out, serde_json::to_vec_pretty(&results)?)?;
    std::fs::write(out.with_extension("md"), markdown)?;
    println!("\nwrote {} and {}", out.display(), out.with_extension("md").display());
    Ok(())
}

/// `--profile-case`: one body reviewed `iterations` times, nothing else.
fn profile(case: &str, iterations: u64, naive: bool) -> anyhow::Result<()> {
    let (endpoint, body) = if let Some(rest) = case.strip_prefix("growth:") {
        let (series, kib) = rest.split_once(':').context("growth:<series>:<KiB>")?;
        let all = bodies::series();
        let s = all
            .get(series.parse::<usize>()?.checked_sub(1).context("series from 1")?)
            .context("no such series")?;
        (s.endpoint, bodies::sized(s, kib.parse::<usize>()? * 1024).1)
    } else {
        let c = bodies::cases()
            .into_iter()
            .find(|c| c.name == case)
            .with_context(|| format!("no case {case}"))?;
        (c.endpoint, c.body)
    };
    let config = Config::default();
    let known = namespaces::Known::new();
    let started = Instant::now();
    for _ in 0..iterations {
        if naive {
            std::hint::black_box(baseline::in_process(std::hint::black_box(&body)));
        } else {
            std::hint::black_box(inproc::tailguard_review(
                endpoint,
                std::hint::black_box(&body),
                &config,
                &known,
            ));
        }
    }
    println!(
        "{case} ({} B, {endpoint}): {:.1} µs per review over {iterations}",
        body.len(),
        us(started.elapsed()) / iterations as f64
    );
    Ok(())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `allowed`/`denied`, warnings, patch size: what a review answered.
fn summarize(answer: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(answer) else {
        return format!("not JSON: {}", String::from_utf8_lossy(answer));
    };
    let r = &v["response"];
    let mut s = if r["allowed"] == true {
        "allowed".to_owned()
    } else {
        "DENIED".to_owned()
    };
    let warnings = r["warnings"].as_array().map_or(0, Vec::len);
    let _ = write!(s, ", {warnings} warnings");
    if let Some(p) = r["patch"].as_str() {
        let _ = write!(s, ", patch {} B base64", p.len());
    }
    s
}

fn measure(runtime: &tokio::runtime::Runtime, target: &Target, pid: u32, load: &Load) -> anyhow::Result<Run> {
    procs::reset_peak(pid);
    let mut load = load.clone();
    load.server_pid = Some(pid);
    let o = runtime.block_on(client::run(target, &load))?;
    let n = o.main.latencies.len() as f64;
    let per_req = |cpu: Option<Duration>| cpu.map_or(f64::NAN, |c| if n > 0.0 { us(c) / n } else { f64::NAN });
    let others = match (o.machine_cpu, o.server_cpu, o.client_cpu) {
        (Some(m), Some(s), Some(c)) => 100.0 * m.saturating_sub(s + c).as_secs_f64() / o.window.as_secs_f64(),
        _ => f64::NAN,
    };
    Ok(Run {
        rps: n / o.window.as_secs_f64(),
        p50_us: o.main.percentile(50.0),
        p90_us: o.main.percentile(90.0),
        p99_us: o.main.percentile(99.0),
        max_us: o.main.max(),
        errors: o.main.errors,
        server_cpu_us_per_req: per_req(o.server_cpu),
        client_cpu_us_per_req: per_req(o.client_cpu),
        peak_rss_kib: procs::status_kib(pid, "VmHWM").unwrap_or(0),
        load1: procs::load1(),
        others_cpu_pct: others,
    })
}

fn print_run(run: usize, c: &bodies::Case, proto: Proto, server: &str, r: &Run) {
    println!(
        "run {} {:<16} {:<9} {} {:<9} {:>8.0}/s  p50 {:>6}  p90 {:>6}  p99 {:>6}  max {:>7} µs  server {:>6.1} µs/req  client {:>5.1} µs/req  RSS {:>6} KiB  others {:>3.0}% CPU{}",
        run + 1,
        c.name,
        c.endpoint,
        proto.as_str(),
        server,
        r.rps,
        r.p50_us,
        r.p90_us,
        r.p99_us,
        r.max_us,
        r.server_cpu_us_per_req,
        r.client_cpu_us_per_req,
        r.peak_rss_kib,
        r.others_cpu_pct,
        if r.errors > 0 {
            format!("  {} ERRORS", r.errors)
        } else {
            String::new()
        }
    );
}

/// Growth of in-process time with object size; returns the points, a
/// linearity verdict per series, and the costliest 1 MiB body (for the stall test).
/// A growth body picked for the stall test: series name, endpoint, body.
type BigBody = (String, &'static str, Vec<u8>);

fn growth(
    config: &Config,
    known: &namespaces::Known,
    settings: &Settings,
) -> (Vec<GrowthPoint>, Vec<GrowthSeries>, Option<BigBody>) {
    println!("\n## Cost growth with object size (in-process, per review)\n");
    println!(
        "{:<40} {:<9} {:>6} {:>9} {:>13} {:>8} {:>12}",
        "series", "endpoint", "n", "bytes", "tailguard µs", "µs/KiB", "baseline µs"
    );
    let sizes = [1usize, 4, 16, 64, 256, 1024];
    let mut points = Vec::new();
    let mut verdicts = Vec::new();
    let mut heaviest: Option<(f64, String, &'static str, Vec<u8>)> = None;
    for s in bodies::series() {
        let mut last_n = None;
        let mut per_kib = BTreeMap::new();
        for kib in sizes {
            let (n, body) = bodies::sized(&s, kib * 1024);
            if last_n == Some(n) {
                continue;
            }
            last_n = Some(n);
            let budget = settings
                .budget
                .max(Duration::from_millis(if kib >= 256 { 400 } else { 0 }));
            let cost = inproc::cost(s.endpoint, &body, config, known, budget);
            let t = us(cost.tailguard);
            let slope = t / (body.len() as f64 / 1024.0);
            per_kib.insert(kib, slope);
            println!(
                "{:<40} {:<9} {:>6} {:>9} {:>13.1} {:>8.2} {:>12.1}",
                s.name,
                s.endpoint,
                n,
                body.len(),
                t,
                slope,
                us(cost.naive)
            );
            points.push(GrowthPoint {
                series: s.name.to_owned(),
                endpoint: s.endpoint.to_owned(),
                n,
                bytes: body.len(),
                tailguard_us: t,
                tailguard_us_per_kib: slope,
                baseline_us: us(cost.naive),
            });
            if kib == 1024 && heaviest.as_ref().is_none_or(|h| h.0 < t) {
                heaviest = Some((t, s.name.to_owned(), s.endpoint, body));
            }
        }
        let (Some(at64), Some((_, largest))) = (per_kib.get(&64), per_kib.iter().next_back()) else {
            continue;
        };
        let ratio = largest / at64;
        verdicts.push(GrowthSeries {
            series: s.name.to_owned(),
            endpoint: s.endpoint.to_owned(),
            slope_ratio_largest_vs_64k: ratio,
            linear: ratio <= 1.5,
        });
    }
    println!();
    for v in &verdicts {
        println!(
            "{:<40} µs/KiB at 1 MiB is {:.2}x that at 64 KiB: {}",
            v.series,
            v.slope_ratio_largest_vs_64k,
            if v.linear { "linear" } else { "SUPERLINEAR" }
        );
    }
    (points, verdicts, heaviest.map(|(_, n, e, b)| (n, e, b)))
}

fn ratios(cases: &[CaseResult], baseline: &[CaseResult], in_process: &[InProcess]) -> BTreeMap<String, Ratio> {
    let mut out = BTreeMap::new();
    for t in cases {
        let Some(b) = baseline.iter().find(|b| b.name == t.name && b.protocol == t.protocol) else {
            continue;
        };
        let per_run: Vec<f64> = t.runs.iter().zip(&b.runs).map(|(t, b)| t.rps / b.rps).collect();
        let inp = in_process.iter().find(|i| i.name == t.name);
        out.insert(
            format!("{}/{}", t.name, t.protocol),
            Ratio {
                case: t.name.clone(),
                protocol: t.protocol.clone(),
                rps: t.rps / b.rps,
                rps_run_min: per_run.iter().copied().fold(f64::INFINITY, f64::min),
                rps_run_max: per_run.iter().copied().fold(0.0, f64::max),
                p99_speedup: f64::from(b.p99_us) / f64::from(t.p99_us.max(1)),
                in_process: inp.map_or(f64::NAN, |i| i.baseline_us / i.tailguard_us),
            },
        );
    }
    out
}

fn targets(
    cases: &[CaseResult],
    ratios: &BTreeMap<String, Ratio>,
    in_process: &[InProcess],
    startup: &[Startup],
) -> Vec<report::Target> {
    let mut out = Vec::new();
    let mut push = |target: String, measured: String, met: bool| out.push(report::Target { target, measured, met });
    for r in ratios.values() {
        let need = match r.case.as_str() {
            "ts-daemonset-8k" => 1.5,
            "ts-pod-30k" | "app-pod-30k" => 3.0,
            _ => continue,
        };
        push(
            format!("{} {}: >= {need}x baseline reviews/s", r.case, r.protocol),
            format!("{:.2}x (runs {:.2}-{:.2})", r.rps, r.rps_run_min, r.rps_run_max),
            r.rps >= need,
        );
    }
    for i in in_process {
        let limit = match i.name.as_str() {
            "ts-daemonset-8k" => 50.0,
            "ts-pod-30k" | "app-pod-30k" => 250.0,
            _ => continue,
        };
        push(
            format!("{} in-process <= {limit} µs", i.name),
            format!("{:.1} µs", i.tailguard_us),
            i.tailguard_us <= limit,
        );
    }
    for c in cases.iter().filter(|c| c.name == "ts-daemonset-8k") {
        push(
            format!(
                "{} {} over TLS: >= 10,000 reviews/s with p99 <= 5 ms",
                c.name, c.protocol
            ),
            format!("{:.0}/s, p99 {:.2} ms", c.rps, f64::from(c.p99_us) / 1e3),
            c.rps >= 10_000.0 && c.p99_us <= 5_000,
        );
    }
    if let Some(peak) = cases.iter().map(|c| c.peak_rss_kib).max() {
        push(
            "peak RSS under load <= 40 MiB".to_owned(),
            format!("{:.1} MiB", peak as f64 / 1024.0),
            peak <= 40 * 1024,
        );
    }
    for s in startup {
        push(
            format!("start-up to ready <= 200 ms, {} certificates", s.certs),
            format!("median {:.1} ms, max {:.1} ms", s.median_ms, s.max_ms),
            s.median_ms <= 200.0,
        );
    }
    out
}

/// Prints the final tables; returns them as Markdown.
fn print_summary(r: &Results) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(
        md,
        "Machine: {} CPUs ({}), {} MiB, Linux {}; load {:.2} at start, {:.2} at end. Client and server share the CPUs (nothing pinned); \
         {} runs of {} s per case, medians (± half the min-max spread of reviews/s).\n",
        m.nproc,
        m.cpu_model,
        m.mem_total_kib / 1024,
        m.kernel,
        m.load1_start,
        m.load1_end,
        r.settings["runs"],
        r.settings["duration_s"]
    );
    let busiest = r
        .cases
        .iter()
        .chain(&r.baseline)
        .map(|c| c.others_cpu_pct_max)
        .fold(0.0, f64::max);
    if busiest > 20.0 {
        let _ = writeln!(
            md,
            "**WARNING: other processes used up to {busiest:.0} % of a CPU during some runs: rerun on a quiet machine.**\n"
        );
    }
    if !r.cases.is_empty() {
        let _ = writeln!(
            md,
            "| case | endpoint | proto | bytes | tailguard reviews/s | p50 / p90 / p99 / max µs | server CPU µs/review | in-process µs | peak RSS MiB | baseline reviews/s | baseline p99 µs | baseline in-process µs | baseline RSS MiB | × rps | other processes' CPU (max) |"
        );
        let _ = writeln!(
            md,
            "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for t in &r.cases {
            let b = r.baseline.iter().find(|b| b.name == t.name && b.protocol == t.protocol);
            let ratio = r.ratios.get(&format!("{}/{}", t.name, t.protocol));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} ± {:.0} % | {} / {} / {} / {} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {:.0} % |",
                t.name,
                t.endpoint,
                t.protocol,
                t.bytes,
                t.rps,
                t.spread_pct(),
                t.p50_us,
                t.p90_us,
                t.p99_us,
                t.max_us,
                t.server_cpu_us_per_req,
                t.in_process_us,
                t.peak_rss_kib as f64 / 1024.0,
                b.map_or("-".to_owned(), |b| format!("{:.0} ± {:.0} %", b.rps, b.spread_pct())),
                b.map_or("-".to_owned(), |b| b.p99_us.to_string()),
                b.map_or("-".to_owned(), |b| format!("{:.1}", b.in_process_us)),
                b.map_or("-".to_owned(), |b| format!("{:.1}", b.peak_rss_kib as f64 / 1024.0)),
                ratio.map_or("-".to_owned(), |r| format!("{:.2}", r.rps)),
                t.others_cpu_pct_max.max(b.map_or(0.0, |b| b.others_cpu_pct_max)),
            );
        }
        md.push('\n');
    }
    if !r.growth.is_empty() {
        let _ = writeln!(
            md,
            "| growth series | endpoint | bytes | tailguard µs | µs/KiB | baseline µs |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
        for g in &r.growth {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.2} | {:.1} |",
                g.series, g.endpoint, g.bytes, g.tailguard_us, g.tailguard_us_per_kib, g.baseline_us
            );
        }
        md.push('\n');
    }
    if !r.stall.is_empty() {
        let _ = writeln!(
            md,
            "| stall test | small p50 / p99 / max µs alone | with a client looping {} KiB reviews | big reviews done (p50 µs) |",
            r.stall[0].big_bytes / 1024
        );
        let _ = writeln!(md, "|---|---|---|---|");
        for s in &r.stall {
            let _ = writeln!(
                md,
                "| {} {} | {} / {} / {} ({:.0}/s) | {} / {} / {} ({:.0}/s) | {} ({}) |",
                s.small_case,
                s.protocol,
                s.without_p50_us,
                s.without_p99_us,
                s.without_max_us,
                s.without_rps,
                s.with_p50_us,
                s.with_p99_us,
                s.with_max_us,
                s.with_rps,
                s.big_reviews,
                s.big_p50_us
            );
        }
        md.push('\n');
    }
    if !r.startup.is_empty() {
        let _ = writeln!(md, "| start-up to ready (`serve --dev`) | median ms | max ms |");
        let _ = writeln!(md, "|---|---:|---:|");
        for s in &r.startup {
            let _ = writeln!(
                md,
                "| {} certificates | {:.1} | {:.1} |",
                s.certs, s.median_ms, s.max_ms
            );
        }
        md.push('\n');
    }
    if !r.targets.is_empty() {
        let _ = writeln!(md, "| target | measured | |");
        let _ = writeln!(md, "|---|---|---|");
        for t in &r.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                t.target,
                t.measured,
                if t.met { "met" } else { "MISSED" }
            );
        }
    }
    println!("\n## Summary\n\n{md}");
    md
}

/// The tailguard binary to benchmark.
fn server_bin(args: &Args, exe_dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.server_bin {
        return Ok(p.clone());
    }
    // Through `cargo run`, make sure the server is built from the same sources.
    if let Some(cargo) = std::env::var_os("CARGO") {
        let profile = if cfg!(debug_assertions) { "dev" } else { "release" };
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--profile",
                profile,
                "--bin",
                "tailguard",
                "--manifest-path",
            ])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .status()
            .context("cargo build --bin tailguard")?;
        if !status.success() {
            bail!("cargo build --bin tailguard failed");
        }
    }
    let bin = exe_dir.join("tailguard");
    if !bin.exists() {
        bail!(
            "{} not found: build it (cargo build --release --bin tailguard) or pass --server-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// A scratch directory removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("tailguard-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
