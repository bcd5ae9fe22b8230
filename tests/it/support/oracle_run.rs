//! Running `tailguard-oracle run` on one case (oracle.rs and
//! injection_traffic.rs).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::process;

/// Runs one case and returns the oracle's outcome document. `backstop` bounds
/// the whole run (the oracle bounds each case itself).
pub fn run_oracle(bin: &Path, request: &Value, backstop: Duration) -> Result<Value, String> {
    let input = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let out =
        process::run(Command::new(bin).arg("run"), Some(&input), backstop).ok_or("the oracle itself did not finish")?;
    if !out.status.success() {
        return Err(format!(
            "oracle failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "oracle output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs `work` over `items` on `TAILGUARD_ORACLE_JOBS` (default 3) threads;
/// the results come back in the order of `items`.
pub fn in_parallel<T: Sync, R: Send>(items: &[T], work: impl Fn(usize, &T) -> R + Sync) -> Vec<R> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let jobs: usize = std::env::var("TAILGUARD_ORACLE_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(3);
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = work(i, item);
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}
