//! What the benchmark found: the JSON written to `target/bench/results.json`
//! and the tables printed.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_kib: u64,
    pub kernel: String,
    pub load1_start: f64,
    pub load1_end: f64,
    pub client_threads: usize,
    pub note: String,
}

impl Machine {
    /// One line for the console: CPUs, model, memory, kernel, load at the start.
    pub fn summary(&self) -> String {
        format!(
            "machine: {} x {} ({} MiB), kernel {}, load {:.2}",
            self.nproc,
            self.cpu_model,
            self.mem_total_kib / 1024,
            self.kernel,
            self.load1_start
        )
    }
}

impl Machine {
    pub fn probe(client_threads: usize) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            mem_total_kib,
            kernel,
            load1_start: crate::procs::load1(),
            load1_end: f64::NAN,
            client_threads,
            note: "client (this process) and server share the machine's CPUs; nothing is pinned".to_owned(),
        }
    }
}

/// One load run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub rps: f64,
    pub p50_us: u32,
    pub p90_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
    pub errors: u64,
    pub server_cpu_us_per_req: f64,
    pub client_cpu_us_per_req: f64,
    pub peak_rss_kib: u64,
    pub load1: f64,
    /// CPU used by other processes on the machine during the window, in % of one CPU.
    pub others_cpu_pct: f64,
}

/// A case on one server and protocol: medians over runs, with the spread.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// `tailguard`, or a comparison server (`kube-rs`, `null`, `diff`).
    pub server: String,
    pub name: String,
    pub endpoint: String,
    pub protocol: String,
    pub bytes: usize,
    pub rps: f64,
    pub p50_us: u32,
    pub p90_us: u32,
    pub p99_us: u32,
    /// Largest over all runs.
    pub max_us: u32,
    pub in_process_us: f64,
    /// Largest over all runs (VmHWM, reset before each run).
    pub peak_rss_kib: u64,
    pub server_cpu_us_per_req: f64,
    pub client_cpu_us_per_req: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub p99_min_us: u32,
    pub p99_max_us: u32,
    pub errors: u64,
    /// Largest CPU use by other processes during a run, in % of one CPU.
    pub others_cpu_pct_max: f64,
    pub runs: Vec<Run>,
}

pub fn median_f(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_u(values: impl Iterator<Item = u32>) -> u32 {
    median_f(values.map(f64::from)).round() as u32
}

impl CaseResult {
    pub fn from_runs(
        server: &str,
        name: &str,
        endpoint: &str,
        protocol: &str,
        bytes: usize,
        in_process_us: f64,
        runs: Vec<Run>,
    ) -> CaseResult {
        let f = |g: fn(&Run) -> f64| median_f(runs.iter().map(g));
        let u = |g: fn(&Run) -> u32| median_u(runs.iter().map(g));
        CaseResult {
            server: server.to_owned(),
            name: name.to_owned(),
            endpoint: endpoint.to_owned(),
            protocol: protocol.to_owned(),
            bytes,
            rps: f(|r| r.rps),
            p50_us: u(|r| r.p50_us),
            p90_us: u(|r| r.p90_us),
            p99_us: u(|r| r.p99_us),
            max_us: runs.iter().map(|r| r.max_us).max().unwrap_or(0),
            in_process_us,
            peak_rss_kib: runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0),
            server_cpu_us_per_req: f(|r| r.server_cpu_us_per_req),
            client_cpu_us_per_req: f(|r| r.client_cpu_us_per_req),
            rps_min: runs.iter().map(|r| r.rps).fold(f64::INFINITY, f64::min),
            rps_max: runs.iter().map(|r| r.rps).fold(0.0, f64::max),
            p99_min_us: runs.iter().map(|r| r.p99_us).min().unwrap_or(0),
            p99_max_us: runs.iter().map(|r| r.p99_us).max().unwrap_or(0),
            errors: runs.iter().map(|r| r.errors).sum(),
            others_cpu_pct_max: runs.iter().map(|r| r.others_cpu_pct).fold(0.0, f64::max),
            runs,
        }
    }

    /// `± x %`: half the min-max spread relative to the median.
    pub fn spread_pct(&self) -> f64 {
        if self.rps > 0.0 {
            50.0 * (self.rps_max - self.rps_min) / self.rps
        } else {
            0.0
        }
    }
}

/// tailguard against one comparison server, on one case and protocol.
#[derive(Debug, Serialize)]
pub struct Ratio {
    pub case: String,
    pub protocol: String,
    /// `baseline`, `floor` or `diff`.
    pub versus: String,
    /// The comparison server (`kube-rs`, `null`, `diff`).
    pub server: String,
    /// tailguard's reviews/s over the other's: the median of the per-round
    /// ratios (in a round the servers run one after the other).
    pub rps: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub rps_rounds: Vec<f64>,
    /// The other's p99 over tailguard's (medians): above 1, tailguard's is lower.
    pub p99_speedup: f64,
    /// The other's in-process time over tailguard's.
    pub in_process: f64,
}

/// In-process time per review of one case.
#[derive(Debug, Serialize)]
pub struct InProcess {
    pub name: String,
    pub endpoint: String,
    pub bytes: usize,
    pub tailguard_us: f64,
    /// By role: `baseline` (kube-rs), `floor` (null), `diff`.
    pub others_us: BTreeMap<String, f64>,
}

impl InProcess {
    pub fn of(&self, role: &str) -> f64 {
        self.others_us.get(role).copied().unwrap_or(f64::NAN)
    }
}

#[derive(Debug, Serialize)]
pub struct GrowthPoint {
    pub series: String,
    pub endpoint: String,
    pub n: usize,
    pub bytes: usize,
    pub tailguard_us: f64,
    pub tailguard_us_per_kib: f64,
    /// The kube-rs-equivalent baseline's time.
    pub baseline_us: f64,
}

#[derive(Debug, Serialize)]
pub struct GrowthSeries {
    pub series: String,
    pub endpoint: String,
    /// µs/KiB at the largest size over µs/KiB at 64 KiB (1.0 = perfectly linear).
    pub slope_ratio_largest_vs_64k: f64,
    pub linear: bool,
}

#[derive(Debug, Serialize)]
pub struct Stall {
    pub protocol: String,
    pub small_case: String,
    pub big_series: String,
    pub big_bytes: usize,
    pub without_p50_us: u32,
    pub without_p99_us: u32,
    pub without_max_us: u32,
    pub without_rps: f64,
    pub with_p50_us: u32,
    pub with_p99_us: u32,
    pub with_max_us: u32,
    pub with_rps: f64,
    pub big_reviews: usize,
    pub big_p50_us: u32,
    pub big_max_us: u32,
}

#[derive(Debug, Serialize)]
pub struct Startup {
    pub certs: String,
    pub runs_ms: Vec<f64>,
    pub median_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub settings: serde_json::Value,
    /// tailguard over the wire.
    pub cases: Vec<CaseResult>,
    /// The comparison servers over the wire, by role (`baseline`, `floor`, `diff`).
    pub compared: BTreeMap<String, Vec<CaseResult>>,
    pub ratios: Vec<Ratio>,
    pub in_process: Vec<InProcess>,
    pub growth: Vec<GrowthPoint>,
    pub growth_series: Vec<GrowthSeries>,
    pub stall: Vec<Stall>,
    pub startup: Vec<Startup>,
    pub server_idle_rss_kib: u64,
    /// By role.
    pub compared_idle_rss_kib: BTreeMap<String, u64>,
    pub targets: Vec<Target>,
}

impl Results {
    /// A comparison server's result for tailguard's case `t`.
    pub fn compared(&self, role: &str, t: &CaseResult) -> Option<&CaseResult> {
        self.compared
            .get(role)?
            .iter()
            .find(|c| c.name == t.name && c.protocol == t.protocol)
    }

    pub fn ratio(&self, role: &str, t: &CaseResult) -> Option<&Ratio> {
        self.ratios
            .iter()
            .find(|r| r.versus == role && r.case == t.name && r.protocol == t.protocol)
    }
}
