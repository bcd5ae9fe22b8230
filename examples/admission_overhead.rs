//! Admission overhead of tailguard, measured through a real kube-apiserver.
//!
//! Creates N pods one after another through the apiserver and times each
//! create, with tailguard's webhook configurations (rendered from the Helm
//! chart) registered and without them, in alternating rounds:
//!
//! - `app pod, namespace not opted in`: nothing is sent to tailguard (the
//!   validating webhooks' matchConditions and the mutating namespaceSelector
//!   filter it in the apiserver); the cost of having the configurations at all;
//! - `Tailscale pod`: a valid userspace Tailscale pod, sent to /validate;
//! - `app pod, opted-in namespace`: sent to /mutate (sidecar injected), then,
//!   now with a Tailscale container, to /validate.
//!
//! ```sh
//! source ~/.cache/tailguard/tools/env.sh; eval "$(scripts/build-kube.sh)"
//! export KUBE_APISERVER_BIN ETCD_BIN HELM_BIN
//! cargo run --release --example admission_overhead -- --pods 300 [--rounds 3]
//! ```
//!
//! The server is the release build of `tailguard` next to this example
//! (`target/release/tailguard`), built first with `cargo build --release --bin
//! tailguard` (a no-op when up to date); `TAILGUARD_BIN=path` uses another one.

#[path = "../tests/it/support/kube.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::{KubeBinaries, TestCluster, Webhook, WebhookOptions};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

const OPTED_IN: &str = "bench-inject";
const PLAIN: &str = "bench-plain";

struct Args {
    pods: usize,
    rounds: usize,
    warmup: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        pods: 300,
        rounds: 3,
        warmup: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| die(&format!("{name} needs a number")))
        };
        match flag.as_str() {
            "--pods" => args.pods = value("--pods").max(1),
            "--rounds" => args.rounds = value("--rounds").max(1),
            "--warmup" => args.warmup = value("--warmup"),
            "-h" | "--help" => {
                println!("admission_overhead [--pods N (300)] [--rounds R (3)] [--warmup W (30)]");
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other} (see --help)")),
        }
    }
    args
}

fn die(message: &str) -> ! {
    eprintln!("admission_overhead: {message}");
    std::process::exit(2);
}

fn tool(var: &str, hint: &str) -> PathBuf {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_file() => p,
        _ => die(&format!("{var} is not set or missing ({hint})")),
    }
}

/// The release `tailguard` binary, built if needed.
fn tailguard_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TAILGUARD_BIN") {
        return PathBuf::from(path);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "tailguard", "--manifest-path"])
        .arg(&manifest)
        .status()
        .unwrap_or_else(|e| die(&format!("cannot run cargo: {e}")));
    if !status.success() {
        die("cargo build --release --bin tailguard failed");
    }
    // target/release/examples/admission_overhead -> target/release/tailguard
    let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("current_exe: {e}")));
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("tailguard"))
        .unwrap_or_else(|| die("cannot locate target/release"));
    if !bin.is_file() {
        die(&format!("{} not found after the build", bin.display()));
    }
    bin
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let kb: u64 = text
                .lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(format!("{:.1} GiB RAM", kb as f64 / 1024.0 / 1024.0))
        })
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {memory}")
}

fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The three pod shapes measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    AppNotOpted,
    Tailscale,
    AppOptedIn,
}

impl Shape {
    const ALL: [Shape; 3] = [Shape::AppNotOpted, Shape::Tailscale, Shape::AppOptedIn];

    fn label(self) -> &'static str {
        match self {
            Shape::AppNotOpted => "app pod, namespace not opted in (not sent)",
            Shape::Tailscale => "Tailscale pod (/validate)",
            Shape::AppOptedIn => "app pod, opted-in namespace (/mutate + /validate)",
        }
    }

    fn namespace(self) -> &'static str {
        match self {
            Shape::AppOptedIn => OPTED_IN,
            _ => PLAIN,
        }
    }

    fn pod(self, name: &str) -> Pod {
        let container = match self {
            Shape::Tailscale => json!({
                "name": "tailscale",
                "image": "tailscale/tailscale:v1.96.4",
                "env": [
                    {"name": "TS_AUTHKEY", "valueFrom": {"secretKeyRef": {"name": "tailscale-auth", "key": "authkey"}}},
                    {"name": "TS_USERSPACE", "value": "true"},
                    {"name": "TS_EXTRA_ARGS", "value": "--accept-routes"}
                ],
                "resources": {"limits": {"memory": "128Mi"}}
            }),
            _ => json!({"name": "app", "image": "nginx:1.27", "resources": {"limits": {"memory": "64Mi"}}}),
        };
        let pod: Value = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace(), "labels": {"bench": "overhead"}},
            "spec": {"containers": [container]}
        });
        serde_json::from_value(pod).expect("pod")
    }
}

/// Creates `count` pods of `shape` one after another: each create's latency.
async fn create_pods(client: &kube::Client, shape: Shape, prefix: &str, count: usize, webhook: bool) -> Vec<Duration> {
    let api: Api<Pod> = Api::namespaced(client.clone(), shape.namespace());
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let pod = shape.pod(&format!("{prefix}-{i}"));
        let started = Instant::now();
        let created = api
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| die(&format!("create pod: {e}")));
        latencies.push(started.elapsed());
        let injected = created
            .spec
            .and_then(|s| s.init_containers)
            .is_some_and(|c| c.iter().any(|c| c.name == "tailscale"));
        if injected != (webhook && shape == Shape::AppOptedIn) {
            die(&format!("pod {prefix}-{i}: injected = {injected}, unexpected"));
        }
    }
    latencies
}

async fn delete_pods(client: &kube::Client) {
    for ns in [PLAIN, OPTED_IN] {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let _ = api
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels("bench=overhead"),
            )
            .await;
    }
}

struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
    n: usize,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    Stats {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        mean: ms.iter().sum::<f64>() / ms.len() as f64,
        n: ms.len(),
    }
}

fn row(label: &str, s: &Stats) -> String {
    format!(
        "  {label:<9} n={:<5} p50 {:>6.2} ms   p90 {:>6.2} ms   p99 {:>6.2} ms   mean {:>6.2} ms",
        s.n, s.p50, s.p90, s.p99, s.mean
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let hint = "run scripts/build-kube.sh and scripts/install-tools.sh, or source ~/.cache/tailguard/tools/env.sh";
    let bins = KubeBinaries {
        apiserver: tool("KUBE_APISERVER_BIN", hint),
        etcd: tool("ETCD_BIN", hint),
    };
    let helm = tool("HELM_BIN", hint);
    let tailguard = tailguard_bin();
    println!("machine: {}", machine());
    println!(
        "kube-apiserver: {}; {}; tailguard: {} ({})",
        version(&bins.apiserver),
        version(&bins.etcd).lines().next().unwrap_or_default(),
        version(&tailguard),
        tailguard.display()
    );
    println!(
        "{} pods per shape per round, {} rounds alternating without/with the webhooks, {} warm-up creates each",
        args.pods, args.rounds, args.warmup
    );

    let cluster = TestCluster::start(&bins, "admission-overhead").await;
    let client = cluster.client.clone();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/tailguard");
    let base = [("certificates.mode", "secret"), ("certificates.secretName", "bench")];
    let placeholder = {
        let mut values = base.to_vec();
        values.extend([
            ("webhook.url", "https://127.0.0.1:1"),
            ("certificates.caBundle", "eA=="),
        ]);
        harness::render_chart(&helm, &chart, "t", "tailguard", &values)
    };
    harness::apply_rbac(&client, &placeholder).await;
    let kubeconfig = cluster.kubeconfig_for(
        "tailguard.kubeconfig",
        &harness::service_account_user(&placeholder),
        &["system:serviceaccounts"],
    );
    let config = harness::chart_config(&placeholder);
    let webhook = Webhook::start(&WebhookOptions {
        bin: &tailguard,
        kubeconfig: Some(&kubeconfig),
        config: config.as_deref(),
        extra_args: &[],
        log_filter: "info",
    });
    let docs = {
        let (url, bundle) = (webhook.url(), webhook.ca_bundle());
        let mut values = base.to_vec();
        values.extend([
            ("webhook.url", url.as_str()),
            ("certificates.caBundle", bundle.as_str()),
        ]);
        harness::render_chart(&helm, &chart, "t", "tailguard", &values)
    };
    for (name, labels) in [
        (PLAIN, json!({})),
        (OPTED_IN, json!({"tailguard.io/inject": "enabled"})),
    ] {
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels, "annotations": {"tailguard.io/exit-node": "100.64.0.1"}}
        }))
        .expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| die(&format!("namespace {name}: {e}")));
    }

    let mut samples: Vec<[Vec<Duration>; 2]> = Shape::ALL.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    let patience = Duration::from_secs(30);
    for round in 0..args.rounds {
        for with in [false, true] {
            if with {
                harness::apply_webhook_configurations(&client, &docs).await;
            } else {
                harness::delete_webhook_configurations(&client, "t-tailguard").await;
            }
            harness::wait_webhooks(&client, OPTED_IN, with, patience).await;
            let tag = if with { "with" } else { "without" };
            for (s, shape) in Shape::ALL.into_iter().enumerate() {
                let prefix = format!("r{round}-{tag}-{s}");
                create_pods(&client, shape, &format!("{prefix}-warm"), args.warmup, with).await;
                let measured = create_pods(&client, shape, &prefix, args.pods, with).await;
                let st = stats(&measured);
                eprintln!(
                    "round {}/{} {tag:<7} {:<52} p50 {:.2} ms, mean {:.2} ms",
                    round + 1,
                    args.rounds,
                    shape.label(),
                    st.p50,
                    st.mean
                );
                samples[s][usize::from(with)].extend(measured);
            }
            delete_pods(&client).await;
        }
    }

    println!();
    for (s, shape) in Shape::ALL.into_iter().enumerate() {
        let without = stats(&samples[s][0]);
        let with = stats(&samples[s][1]);
        println!("{}:", shape.label());
        println!("{}", row("without", &without));
        println!("{}", row("with", &with));
        println!(
            "  added    p50 {:+.2} ms (x{:.2})   p90 {:+.2} ms   p99 {:+.2} ms   mean {:+.2} ms (x{:.2})",
            with.p50 - without.p50,
            with.p50 / without.p50,
            with.p90 - without.p90,
            with.p99 - without.p99,
            with.mean - without.mean,
            with.mean / without.mean
        );
    }
    let reviews = |endpoint: &str| {
        ["allowed", "denied", "error"]
            .iter()
            .map(|r| {
                webhook
                    .metric(&format!(
                        "tailguard_reviews_total{{endpoint=\"{endpoint}\",result=\"{r}\"}}"
                    ))
                    .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    let server_time = |endpoint: &str| {
        let sum = webhook.metric(&format!(
            "tailguard_review_duration_seconds_sum{{endpoint=\"{endpoint}\"}}"
        ));
        let count = webhook.metric(&format!(
            "tailguard_review_duration_seconds_count{{endpoint=\"{endpoint}\"}}"
        ));
        match (sum, count) {
            (Some(sum), Some(count)) if count > 0.0 => format!("{:.3} ms mean in tailguard", sum / count * 1000.0),
            _ => "no data".into(),
        }
    };
    println!(
        "\ntailguard answered {} /validate ({}) and {} /mutate ({}) reviews",
        reviews("validate"),
        server_time("validate"),
        reviews("mutate"),
        server_time("mutate")
    );
    drop(webhook);
    drop(cluster);
}
