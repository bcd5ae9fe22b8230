//! The final tables, printed and written as `results.md`.

use std::fmt::Write as _;

use crate::report::{CaseResult, Results};

/// Prints the final tables; returns them as Markdown.
pub fn print(r: &Results) -> String {
    let mut md = String::new();
    machine(&mut md, r);
    if !r.cases.is_empty() {
        load(&mut md, r);
        server_cpu(&mut md, r);
    }
    in_process(&mut md, r);
    growth(&mut md, r);
    stall(&mut md, r);
    startup(&mut md, r);
    if !r.targets.is_empty() {
        let _ = writeln!(md, "| target (issue 15) | measured | |");
        let _ = writeln!(md, "|---|---|---|");
        for t in &r.targets {
            let met = if t.met { "met" } else { "MISSED" };
            let _ = writeln!(md, "| {} | {} | {met} |", t.target, t.measured);
        }
    }
    println!("\n## Summary\n\n{md}");
    md
}

fn machine(md: &mut String, r: &Results) {
    let m = &r.machine;
    let _ = writeln!(
        md,
        "Machine: {} CPUs ({}), {} MiB, Linux {}; load {:.2} at start, {:.2} at end. Client and servers share the CPUs (nothing pinned); \
         {} rounds of {} s per case and server (servers in turns, the order rotating each round), medians (± half the min-max spread). \
         tailguard binary: {}.\n",
        m.nproc,
        m.cpu_model,
        m.mem_total_kib / 1024,
        m.kernel,
        m.load1_start,
        m.load1_end,
        r.settings["runs"],
        r.settings["duration_s"],
        r.settings["server_bin"].as_str().unwrap_or("none")
    );
    let busiest = r
        .cases
        .iter()
        .chain(r.compared.values().flatten())
        .map(|c| c.others_cpu_pct_max)
        .fold(0.0, f64::max);
    if busiest > 20.0 {
        let _ = writeln!(
            md,
            "**WARNING: other processes used up to {busiest:.0} % of a CPU during some runs: rerun on a quiet machine.**\n"
        );
    }
}

fn rps(c: &CaseResult) -> String {
    format!("{:.0} ± {:.0} %", c.rps, c.spread_pct())
}

/// tailguard's figures, then each comparison server's and the ratios to them.
fn load(md: &mut String, r: &Results) {
    let roles: Vec<&str> = ["baseline", "floor", "diff"]
        .into_iter()
        .filter(|role| r.compared.contains_key(*role))
        .collect();
    let mut head =
        "| case | endpoint | proto | bytes | tailguard reviews/s | p50 / p99 µs | server CPU µs/review | peak RSS MiB"
            .to_owned();
    let mut rule = "|---|---|---|---:|---:|---|---:|---:".to_owned();
    for role in &roles {
        let (name, ratio) = match *role {
            "baseline" => ("baseline (kube-rs)", "× baseline"),
            "floor" => ("floor (null)", "of floor"),
            _ => ("diff", "× diff"),
        };
        let _ = write!(head, " | {name} reviews/s | {name} p50 / p99 µs | {ratio}");
        rule.push_str("|---:|---|---:");
    }
    let _ = writeln!(md, "{head} | others' CPU (max) |");
    let _ = writeln!(md, "{rule}|---:|");
    for t in &r.cases {
        let _ = write!(
            md,
            "| {} | {} | {} | {} | {} | {} / {} | {:.1} | {:.1}",
            t.name,
            t.endpoint,
            t.protocol,
            t.bytes,
            rps(t),
            t.p50_us,
            t.p99_us,
            t.server_cpu_us_per_req,
            t.peak_rss_kib as f64 / 1024.0
        );
        let mut others_cpu = t.others_cpu_pct_max;
        for role in &roles {
            let o = r.compared(role, t);
            let ratio = r.ratio(role, t);
            others_cpu = others_cpu.max(o.map_or(0.0, |o| o.others_cpu_pct_max));
            let ratio = ratio.map_or("-".to_owned(), |x| {
                if *role == "floor" {
                    format!(
                        "{:.0} % ({:.0}-{:.0})",
                        100.0 * x.rps,
                        100.0 * x.rps_min,
                        100.0 * x.rps_max
                    )
                } else {
                    format!("{:.2} ({:.2}-{:.2})", x.rps, x.rps_min, x.rps_max)
                }
            });
            let _ = write!(
                md,
                " | {} | {} | {ratio}",
                o.map_or("-".to_owned(), rps),
                o.map_or("-".to_owned(), |o| format!("{} / {}", o.p50_us, o.p99_us)),
            );
        }
        let _ = writeln!(md, " | {others_cpu:.0} % |");
    }
    let _ = writeln!(
        md,
        "\nRatios: median of the per-round ratios (min-max over rounds). Idle RSS: tailguard {:.1} MiB{}.\n",
        r.server_idle_rss_kib as f64 / 1024.0,
        r.compared_idle_rss_kib
            .iter()
            .map(|(role, kib)| format!(", {role} {:.1} MiB", *kib as f64 / 1024.0))
            .collect::<String>()
    );
}

/// CPU time per review of each server process under load (user + system,
/// all threads): TLS, HTTP, the kernel's share of the loopback, and the work.
fn server_cpu(md: &mut String, r: &Results) {
    let roles: Vec<&str> = ["baseline", "floor", "diff"]
        .into_iter()
        .filter(|role| r.compared.contains_key(*role))
        .collect();
    let _ = write!(md, "| server CPU µs/review under load | proto | tailguard");
    for role in &roles {
        let _ = write!(md, " | {role}");
    }
    let _ = writeln!(md, " | tailguard minus floor |");
    let _ = writeln!(md, "|---|---|---:{}|---:|", "|---:".repeat(roles.len()));
    for t in &r.cases {
        let _ = write!(md, "| {} | {} | {:.1}", t.name, t.protocol, t.server_cpu_us_per_req);
        for role in &roles {
            let cpu = r.compared(role, t).map_or(f64::NAN, |o| o.server_cpu_us_per_req);
            let _ = write!(md, " | {cpu:.1}");
        }
        let floor = r.compared("floor", t).map_or(f64::NAN, |o| o.server_cpu_us_per_req);
        let _ = writeln!(md, " | {:.1} |", t.server_cpu_us_per_req - floor);
    }
    md.push('\n');
}

fn in_process(md: &mut String, r: &Results) {
    if r.in_process.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "| in-process, per review ({}) | endpoint | bytes | tailguard µs | baseline (kube-rs) µs | floor (null) µs | diff µs | × baseline |",
        r.settings["in_process_clock"].as_str().unwrap_or("wall-clock time")
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
    for i in &r.in_process {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            i.name,
            i.endpoint,
            i.bytes,
            i.tailguard_us,
            i.of("baseline"),
            i.of("floor"),
            i.of("diff"),
            i.of("baseline") / i.tailguard_us
        );
    }
    md.push('\n');
}

fn growth(md: &mut String, r: &Results) {
    if r.growth.is_empty() {
        return;
    }
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

fn stall(md: &mut String, r: &Results) {
    let Some(first) = r.stall.first() else {
        return;
    };
    let _ = writeln!(
        md,
        "| stall test | small p50 / p99 / max µs alone | with a client looping {} KiB reviews | big reviews done (p50 µs) |",
        first.big_bytes / 1024
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

fn startup(md: &mut String, r: &Results) {
    if r.startup.is_empty() {
        return;
    }
    let _ = writeln!(md, "| start to ready (`serve --dev`) | median ms | max ms |");
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
