//! `--profile-case`: one body reviewed `iterations` times and nothing else, for
//! a profiler (`perf record`, `valgrind --tool=callgrind`).

use std::time::Instant;

use anyhow::Context as _;
use tailguard::config::Config;

use crate::bodies;
use crate::inproc::{self, us};
use crate::namespaces::Known;
use crate::servers::Kind;

/// Loops tailguard's review of `case`, or `server`'s handler if given.
pub fn run(case: &str, iterations: u64, server: Option<Kind>) -> anyhow::Result<()> {
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
    let known = Known::new();
    let started = Instant::now();
    for _ in 0..iterations {
        match server {
            Some(kind) => {
                std::hint::black_box(kind.in_process(std::hint::black_box(&body)));
            }
            None => {
                std::hint::black_box(inproc::tailguard_review(
                    endpoint,
                    std::hint::black_box(&body),
                    &config,
                    &known,
                ));
            }
        }
    }
    println!(
        "{case} ({} B, {endpoint}, {}): {:.1} µs per review over {iterations}",
        body.len(),
        server.map_or("tailguard", Kind::name),
        us(started.elapsed()) / iterations as f64
    );
    Ok(())
}
