//! Cost growth with object size, in-process: 1 KiB to 1 MiB of managedFields,
//! env entries or containers; the time per KiB should stay flat.

use std::collections::BTreeMap;
use std::time::Duration;

use tailguard::config::Config;

use crate::args::Settings;
use crate::bodies;
use crate::inproc::{self, us};
use crate::namespaces::Known;
use crate::report::{GrowthPoint, GrowthSeries};
use crate::servers::Kind;

/// A growth body picked for the stall test: series name, endpoint, body.
pub type BigBody = (String, &'static str, Vec<u8>);

/// Growth of in-process time with object size; returns the points, a
/// linearity verdict per series, and the costliest 1 MiB body (for the stall test).
pub fn run(
    config: &Config,
    known: &Known,
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
            let cost = inproc::cost(s.endpoint, &body, config, known, budget, &[Kind::KubeRs]);
            let baseline = cost.of(Kind::KubeRs).map_or(f64::NAN, us);
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
                baseline
            );
            points.push(GrowthPoint {
                series: s.name.to_owned(),
                endpoint: s.endpoint.to_owned(),
                n,
                bytes: body.len(),
                tailguard_us: t,
                tailguard_us_per_kib: slope,
                baseline_us: baseline,
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
