//! In-process cost per review: the pure functions called in a loop, no network.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tailguard::admission;
use tailguard::config::Config;

use crate::baseline;
use crate::namespaces::Known;

/// Median time per call of `f` over `batches` batches filling about `budget`.
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
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_secs_f64() / per_batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    Duration::from_secs_f64(samples[samples.len() / 2])
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

pub struct Cost {
    pub tailguard: Duration,
    pub naive: Duration,
}

pub fn cost(endpoint: &str, body: &[u8], config: &Config, namespaces: &Known, budget: Duration) -> Cost {
    let tailguard = time_per_call(budget, 5, || {
        black_box(tailguard_review(endpoint, black_box(body), config, namespaces));
    });
    let naive = time_per_call(budget, 5, || {
        black_box(baseline::in_process(black_box(body)));
    });
    Cost { tailguard, naive }
}
