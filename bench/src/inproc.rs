//! In-process cost per review: the pure functions called in a loop, no network.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

use tailguard::admission;
use tailguard::config::Config;

use crate::args::Settings;
use crate::bodies::Case;
use crate::namespaces::Known;
use crate::report::InProcess;
use crate::servers::Kind;

/// This thread's time on a CPU so far (`/proc/thread-self/schedstat`, in ns),
/// if the kernel keeps it.
fn on_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Median time per call of `f` over `batches` batches filling about `budget`:
/// this thread's on-CPU time where the kernel reports it (so other processes
/// sharing the CPUs do not inflate it), else wall-clock time.
pub fn time_per_call(budget: Duration, batches: u32, mut f: impl FnMut()) -> Duration {
    // Calibrate: how many calls fit in a batch.
    let start = Instant::now();
    let mut calls: u64 = 0;
    while calls < 3 || start.elapsed() < Duration::from_millis(20) {
        f();
        calls += 1;
        if calls >= 1_000_000 {
            break;
        }
    }
    let each = start.elapsed().as_secs_f64() / calls as f64;
    let per_batch =
        ((budget.as_secs_f64() / f64::from(batches.max(1))) / each.max(1e-9)).clamp(1.0, 5_000_000.0) as u64;
    let mut samples: Vec<f64> = (0..batches.max(1))
        .map(|_| {
            let (wall, cpu) = (Instant::now(), on_cpu());
            for _ in 0..per_batch {
                f();
            }
            let took = match (cpu, on_cpu()) {
                (Some(before), Some(after)) => after.saturating_sub(before),
                _ => wall.elapsed(),
            };
            took.as_secs_f64() / per_batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    Duration::from_secs_f64(samples[samples.len() / 2])
}

/// What [`time_per_call`] measures on this machine.
pub fn clock() -> &'static str {
    if on_cpu().is_some() {
        "on-CPU time of the timing thread (/proc/thread-self/schedstat)"
    } else {
        "wall-clock time"
    }
}

/// One review through tailguard's pure core: parse, rules or injection, patch, serialize.
pub fn tailguard_review(endpoint: &str, body: &[u8], config: &Config, namespaces: &Known) -> Vec<u8> {
    let result = if endpoint == "/mutate" {
        admission::mutate(body, config, namespaces)
    } else {
        admission::validate(body, config, namespaces)
    };
    match result {
        Ok(reviewed) => reviewed.body,
        Err(e) => e.to_string().into_bytes(),
    }
}

/// Median time per review of tailguard and of each of `others`.
pub struct Cost {
    pub tailguard: Duration,
    pub others: Vec<(Kind, Duration)>,
}

impl Cost {
    pub fn of(&self, kind: Kind) -> Option<Duration> {
        self.others.iter().find(|(k, _)| *k == kind).map(|(_, d)| *d)
    }
}

pub fn cost(
    endpoint: &str,
    body: &[u8],
    config: &Config,
    namespaces: &Known,
    budget: Duration,
    others: &[Kind],
) -> Cost {
    let tailguard = time_per_call(budget, 5, || {
        black_box(tailguard_review(endpoint, black_box(body), config, namespaces));
    });
    let others = others
        .iter()
        .map(|&kind| {
            let took = time_per_call(budget, 5, || {
                black_box(kind.in_process(black_box(body)));
            });
            (kind, took)
        })
        .collect();
    Cost { tailguard, others }
}

/// Every comparison server, timed in-process whatever `--compare` says.
const IN_PROCESS: [Kind; 3] = [Kind::KubeRs, Kind::Null, Kind::Diff];

/// Prints what each case answers (and writes the bodies to `bodies_dir`), then
/// times each case in-process on tailguard and on every comparison server.
pub fn table(
    cases: &[Case],
    bodies_dir: &Path,
    config: &Config,
    known: &Known,
    settings: &Settings,
) -> anyhow::Result<Vec<InProcess>> {
    println!("\n## Cases (answers from admission::validate/mutate with a synced namespace cache)\n");
    for c in cases {
        std::fs::write(bodies_dir.join(format!("{}.json", c.name)), &c.body)?;
        let answer = summarize(&tailguard_review(c.endpoint, &c.body, config, known));
        println!(
            "{:<16} {:<9} {:>6} B  {answer}  ({})",
            c.name,
            c.endpoint,
            c.body.len(),
            c.what
        );
        if c.endpoint == "/mutate" && !answer.contains("patch") {
            bail!("{}: /mutate did not inject: {answer}", c.name);
        }
        for kind in IN_PROCESS {
            let v: serde_json::Value = serde_json::from_slice(&kind.in_process(&c.body)).unwrap_or_default();
            if v["response"]["uid"] != crate::bodies::UID || v["response"]["allowed"] != true {
                bail!("{}: the {} webhook does not allow it: {v}", c.name, kind.name());
            }
        }
    }
    println!(
        "\n## In-process cost per review (decode + decide + encode; median of 5 batches; {})\n\n\
         tailguard: admission::validate/mutate (parse, rules or injection, patch, serialize); \
         baseline: kube-rs's example's work; floor: the null webhook; diff: json_patch::diff of whole objects\n",
        clock()
    );
    println!(
        "{:<16} {:<9} {:>7} {:>12} {:>12} {:>9} {:>9} {:>9}",
        "case", "endpoint", "bytes", "tailguard µs", "baseline µs", "floor µs", "diff µs", "× base"
    );
    let mut out = Vec::new();
    for c in cases {
        let cost = cost(c.endpoint, &c.body, config, known, settings.budget, &IN_PROCESS);
        let t = us(cost.tailguard);
        let others: BTreeMap<String, f64> = cost.others.iter().map(|(k, d)| (k.role().to_owned(), us(*d))).collect();
        let of = |role: &str| others.get(role).copied().unwrap_or(f64::NAN);
        println!(
            "{:<16} {:<9} {:>7} {:>12.1} {:>12.1} {:>9.1} {:>9.1} {:>8.1}x",
            c.name,
            c.endpoint,
            c.body.len(),
            t,
            of("baseline"),
            of("floor"),
            of("diff"),
            of("baseline") / t
        );
        out.push(InProcess {
            name: c.name.to_owned(),
            endpoint: c.endpoint.to_owned(),
            bytes: c.body.len(),
            tailguard_us: t,
            others_us: others,
        });
    }
    Ok(out)
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `allowed`/`denied`, warnings, patch size: what a review answered.
pub fn summarize(answer: &[u8]) -> String {
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
