//! tailguard against the comparison servers (ratios per round), and the
//! targets of issue 15 met or missed.

use crate::load::Measured;
use crate::report::{self, CaseResult, InProcess, Ratio, Startup, Target};

/// For every tailguard case, its ratio to each comparison server that ran it.
pub fn ratios(measured: &Measured, in_process: &[InProcess]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for t in &measured.tailguard {
        for (role, results) in &measured.compared {
            let Some(o) = results.iter().find(|o| o.name == t.name && o.protocol == t.protocol) else {
                continue;
            };
            // Round i of tailguard and of the other server ran back to back.
            let rounds: Vec<f64> = t
                .runs
                .iter()
                .zip(&o.runs)
                .map(|(t, o)| if o.rps > 0.0 { t.rps / o.rps } else { f64::NAN })
                .collect();
            let inp = in_process.iter().find(|i| i.name == t.name);
            out.push(Ratio {
                case: t.name.clone(),
                protocol: t.protocol.clone(),
                versus: role.clone(),
                server: o.server.clone(),
                rps: report::median_f(rounds.iter().copied()),
                rps_min: rounds.iter().copied().fold(f64::INFINITY, f64::min),
                rps_max: rounds.iter().copied().fold(0.0, f64::max),
                rps_rounds: rounds,
                p99_speedup: f64::from(o.p99_us) / f64::from(t.p99_us.max(1)),
                in_process: inp.map_or(f64::NAN, |i| i.of(role) / i.tailguard_us),
            });
        }
    }
    out
}

/// The targets of issue 15 (2 cores, client sharing them; ratios from one run).
pub fn targets(cases: &[CaseResult], ratios: &[Ratio], in_process: &[InProcess], startup: &[Startup]) -> Vec<Target> {
    let mut out = Vec::new();
    let mut push = |target: String, measured: String, met: bool| out.push(Target { target, measured, met });
    for r in ratios {
        let (need, what) = match (r.case.as_str(), r.versus.as_str()) {
            ("ts-daemonset-8k", "baseline") => (2.5, "x the baseline's reviews/s"),
            ("ts-daemonset-8k", "floor") => (0.70, "x the floor's reviews/s"),
            ("ts-pod-30k" | "app-pod-30k", "baseline") => (5.0, "x the baseline's reviews/s"),
            _ => continue,
        };
        push(
            format!("{} {} {}: >= {need:.2}{what}", r.case, r.protocol, endpoint(&r.case)),
            format!("{:.2}x (rounds {:.2}-{:.2})", r.rps, r.rps_min, r.rps_max),
            r.rps >= need,
        );
    }
    for c in cases.iter().filter(|c| c.name == "ts-daemonset-8k") {
        push(
            format!("{} {} {}: p99 <= 3 ms", c.name, c.protocol, c.endpoint),
            format!(
                "{:.2} ms (rounds {:.2}-{:.2})",
                f64::from(c.p99_us) / 1e3,
                f64::from(c.p99_min_us) / 1e3,
                f64::from(c.p99_max_us) / 1e3
            ),
            c.p99_us <= 3_000,
        );
    }
    for i in in_process {
        let limit = match i.name.as_str() {
            "ts-daemonset-8k" => 25.0,
            "ts-pod-30k" | "app-pod-30k" => 100.0,
            _ => continue,
        };
        push(
            format!("{} {} in-process <= {limit} µs", i.name, i.endpoint),
            format!("{:.1} µs", i.tailguard_us),
            i.tailguard_us <= limit,
        );
    }
    if let Some(peak) = cases.iter().map(|c| c.peak_rss_kib).max() {
        push(
            "tailguard's peak RSS under load <= 32 MiB".to_owned(),
            format!("{:.1} MiB", peak as f64 / 1024.0),
            peak <= 32 * 1024,
        );
    }
    for s in startup {
        push(
            format!("start to ready <= 50 ms, {} certificates", s.certs),
            format!("median {:.1} ms, max {:.1} ms", s.median_ms, s.max_ms),
            s.median_ms <= 50.0,
        );
    }
    out
}

fn endpoint(case: &str) -> &'static str {
    if case.starts_with("app-") {
        "/mutate"
    } else {
        "/validate"
    }
}
