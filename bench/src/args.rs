//! Command line and the settings resolved from it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::client::Proto;
use crate::servers::Kind;

/// Benchmark tailguard's webhook over TLS against a kube-rs-equivalent webhook
/// and a null webhook (see the module docs).
#[derive(Debug, Parser)]
#[command(name = "tailguard-bench")]
pub struct Args {
    /// Measured time per case and run [default: 5s; 1s with --quick].
    #[arg(long, value_parser = tailguard::server::parse_duration)]
    pub duration: Option<Duration>,

    /// Load before each measured window (connections set up, caches warm) [default: 1s; 300ms with --quick].
    #[arg(long, value_parser = tailguard::server::parse_duration)]
    pub warmup: Option<Duration>,

    /// Rounds per case (each server once per round); medians and spread are reported [default: 3; 1 with --quick].
    #[arg(long)]
    pub runs: Option<usize>,

    /// Concurrent requests: HTTP/1.1 keep-alive connections, or HTTP/2 streams.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,

    /// HTTP/2 connections the streams are multiplexed over.
    #[arg(long, default_value_t = 4)]
    pub h2_connections: usize,

    /// Only cases whose name or endpoint contains one of these (comma-separated),
    /// e.g. `daemonset,30k` or `/mutate`. Cases: ts-pod-1k, ts-daemonset-8k,
    /// ts-pod-30k (/validate); app-pod-1k, app-pod-8k, app-pod-30k (/mutate).
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,

    /// Protocols to load with.
    #[arg(long, value_delimiter = ',', default_values = ["h2", "h1"])]
    pub protocols: Vec<ProtoArg>,

    /// Servers tailguard is compared with over the wire: `kube-rs` (the
    /// baseline: what kube-rs's admission example does), `null` (the floor),
    /// `diff` (a naive webhook diffing whole objects with json_patch::diff).
    #[arg(long, value_delimiter = ',', default_values = ["kube-rs", "null"])]
    pub compare: Vec<Kind>,

    /// Short smoke run: 1 run of 1 s per case, smaller time budgets elsewhere.
    #[arg(long)]
    pub quick: bool,

    /// Parts to skip (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<Part>,

    /// RUST_LOG of the tailguard server (JSON logs to a file; `info` logs one line per review, as deployed).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    pub server_log: String,

    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,

    /// The tailguard binary to serve with [default: `tailguard` next to this
    /// binary, rebuilt first when run through cargo]. The image ships the
    /// static musl build of scripts/static-binary.sh; its linkage is reported.
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,

    /// Results file [default: target/bench/results.json].
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,

    /// Only loop one review in-process, for a profiler (e.g. `valgrind --tool=callgrind`):
    /// a case name, or `growth:<series 1-5>:<KiB>` for a growth body.
    #[arg(long, value_name = "CASE")]
    pub profile_case: Option<String>,

    /// With --profile-case: how many reviews.
    #[arg(long, default_value_t = 1000)]
    pub iterations: u64,

    /// With --profile-case: loop this comparison server's handler instead of tailguard's.
    #[arg(long, value_name = "SERVER")]
    pub profile_server: Option<Kind>,

    /// Instead of the load: pod creates through a real kube-apiserver with no
    /// webhook, the null webhook and tailguard registered by the chart's webhook
    /// configurations, in interleaved rounds (`--runs`; needs KUBE_APISERVER_BIN,
    /// ETCD_BIN, HELM_BIN). Writes target/bench/apiserver.json unless --out.
    #[arg(long)]
    pub through_apiserver: bool,

    /// With --through-apiserver: measured creates per pod shape, case and round [default: 300; 100 with --quick].
    #[arg(long, requires = "through_apiserver")]
    pub pods: Option<usize>,

    /// With --through-apiserver: unmeasured creates before each series [default: 30; 10 with --quick].
    #[arg(long, requires = "through_apiserver")]
    pub warmup_pods: Option<usize>,

    /// (internal) Serve this comparison webhook; used by the benchmark itself.
    #[arg(long, hide = true, requires_all = ["cert", "key"])]
    pub serve: Option<Kind>,

    #[arg(long, hide = true)]
    pub cert: Option<PathBuf>,

    #[arg(long, hide = true)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    H2,
    H1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// The over-the-wire load (and the stall test).
    Load,
    /// The comparison servers over the wire (their in-process figures are still computed).
    Compare,
    Growth,
    Stall,
    Startup,
}

/// Settings resolved from the arguments.
pub struct Settings {
    pub duration: Duration,
    pub warmup: Duration,
    pub runs: usize,
    /// Time spent on one in-process measurement.
    pub budget: Duration,
    pub startup_runs: usize,
    pub protocols: Vec<Proto>,
    /// Comparison servers loaded over the wire, in a fixed order, no repeats.
    pub compare: Vec<Kind>,
}

impl Args {
    pub fn settings(&self) -> Settings {
        let quick = self.quick;
        let mut compare: Vec<Kind> = if self.skips(Part::Compare) {
            Vec::new()
        } else {
            self.compare.clone()
        };
        compare.sort();
        compare.dedup();
        Settings {
            duration: self.duration.unwrap_or(if quick {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(5)
            }),
            warmup: self.warmup.unwrap_or(if quick {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(1)
            }),
            runs: self.runs.unwrap_or(if quick { 1 } else { 3 }).max(1),
            budget: if quick {
                Duration::from_millis(150)
            } else {
                Duration::from_millis(600)
            },
            startup_runs: if quick { 2 } else { 5 },
            protocols: self
                .protocols
                .iter()
                .map(|p| match p {
                    ProtoArg::H1 => Proto::H1,
                    ProtoArg::H2 => Proto::H2,
                })
                .collect(),
            compare,
        }
    }

    pub fn skips(&self, part: Part) -> bool {
        self.skip.contains(&part)
    }
}
