//! The through-the-apiserver figures: per pod shape, each case's create
//! latency, what the webhook adds over no webhook, and tailguard's addition
//! as a ratio to the null webhook's.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::pods::Shape;
use super::webhooks::{Backend, Calls};

/// Every measured create of one shape, by backend (in [`Backend::ALL`]
/// order) and round, and the apiserver's webhook calls during them.
#[derive(Default)]
pub struct Series {
    pub rounds: [Vec<Vec<Duration>>; 3],
    pub calls: [Calls; 3],
}

/// One percentile (nearest rank) of `samples`, in ms; NaN when empty.
fn percentile(samples: &[Duration], q: f64) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    if ms.is_empty() {
        return f64::NAN;
    }
    ms.sort_by(f64::total_cmp);
    let rank = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
    ms[rank - 1]
}

/// p50 and p99 in ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
}

impl Quantiles {
    fn of(samples: &[Duration]) -> Quantiles {
        Quantiles {
            p50: percentile(samples, 0.50),
            p99: percentile(samples, 0.99),
        }
    }

    fn minus(self, base: Quantiles) -> Quantiles {
        Quantiles {
            p50: self.p50 - base.p50,
            p99: self.p99 - base.p99,
        }
    }
}

/// A webhook case against no webhook, for one shape.
#[derive(Debug, Serialize)]
pub struct Case {
    pub backend: &'static str,
    pub creates: usize,
    /// All rounds' creates together.
    pub latency_ms: Quantiles,
    /// `latency_ms` minus no webhook's.
    pub added_ms: Quantiles,
    /// Each round's added p50 (that round's creates minus its no-webhook creates).
    pub round_added_p50_ms: Vec<f64>,
    /// Webhook calls the apiserver made per create, and its mean time per call.
    pub calls_per_create: f64,
    pub apiserver_ms_per_call: f64,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub shape: &'static str,
    pub endpoints: &'static str,
    pub no_webhook_ms: Quantiles,
    pub null: Case,
    pub tailguard: Case,
    /// tailguard's added p50 / p99 over the null webhook's (pooled), and the
    /// per-round p50 ratios (of the rounds where the null webhook added time).
    pub ratio_p50: f64,
    pub ratio_p99: f64,
    pub round_ratio_p50: Vec<f64>,
}

pub fn rows(series: &[(Shape, Series)]) -> Vec<Row> {
    series
        .iter()
        .map(|(shape, s)| {
            let pooled = |b: usize| s.rounds[b].concat();
            let none = Quantiles::of(&pooled(0));
            let case = |b: usize| {
                let samples = pooled(b);
                let latency = Quantiles::of(&samples);
                let calls = s.calls[b];
                let n = calls.validating + calls.mutating;
                Case {
                    backend: Backend::ALL[b].name(),
                    creates: samples.len(),
                    latency_ms: latency,
                    added_ms: latency.minus(none),
                    round_added_p50_ms: s.rounds[b]
                        .iter()
                        .zip(&s.rounds[0])
                        .map(|(with, without)| percentile(with, 0.5) - percentile(without, 0.5))
                        .collect(),
                    calls_per_create: n / samples.len().max(1) as f64,
                    apiserver_ms_per_call: if n > 0.0 {
                        (calls.validating_s + calls.mutating_s) / n * 1000.0
                    } else {
                        f64::NAN
                    },
                }
            };
            let (null, tailguard) = (case(1), case(2));
            Row {
                shape: shape.label(),
                endpoints: shape.endpoints(),
                no_webhook_ms: none,
                ratio_p50: tailguard.added_ms.p50 / null.added_ms.p50,
                ratio_p99: tailguard.added_ms.p99 / null.added_ms.p99,
                round_ratio_p50: tailguard
                    .round_added_p50_ms
                    .iter()
                    .zip(&null.round_added_p50_ms)
                    .filter(|(_, n)| **n > 0.0)
                    .map(|(t, n)| t / n)
                    .collect(),
                null,
                tailguard,
            }
        })
        .collect()
}

fn range(values: &[f64], digits: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.len() < 2 {
        String::new()
    } else {
        format!(" ({min:.digits$} to {max:.digits$})")
    }
}

/// A ratio of additions; meaningless when the null webhook added nothing measurable.
fn ratio(value: f64, rounds: &[f64]) -> String {
    if value.is_finite() && value > 0.0 {
        format!("{value:.2}{}", range(rounds, 2))
    } else {
        "n/a".into()
    }
}

/// `value` in ms, or `-` when there was nothing to measure.
fn ms(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}")
    } else {
        "-".into()
    }
}

/// The markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| pod | tailguard's endpoints | no webhook p50 / p99 ms | null webhook added p50 / p99 ms | \
         tailguard added p50 / p99 ms | tailguard ÷ null, added p50 (rounds) | added p99 | \
         webhook calls per create: null / tailguard | apiserver's ms per call: null / tailguard |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} / {:.2} | {:+.2}{} / {:+.2} | {:+.2}{} / {:+.2} | {} | {} | {:.1} / {:.1} | {} / {} |",
            r.shape,
            r.endpoints,
            r.no_webhook_ms.p50,
            r.no_webhook_ms.p99,
            r.null.added_ms.p50,
            range(&r.null.round_added_p50_ms, 2),
            r.null.added_ms.p99,
            r.tailguard.added_ms.p50,
            range(&r.tailguard.round_added_p50_ms, 2),
            r.tailguard.added_ms.p99,
            ratio(r.ratio_p50, &r.round_ratio_p50),
            ratio(r.ratio_p99, &[]),
            r.null.calls_per_create,
            r.tailguard.calls_per_create,
            ms(r.null.apiserver_ms_per_call),
            ms(r.tailguard.apiserver_ms_per_call),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.5), 50.0);
        assert_eq!(percentile(&samples, 0.99), 99.0);
        assert_eq!(percentile(&samples[..1], 0.99), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
