//! `tailguard-bench --through-apiserver`: pod creates through a real
//! kube-apiserver (and etcd), timed at the client, in interleaved rounds of
//! four cases on the same objects:
//!
//! - no webhook configuration;
//! - the **null webhook** ([`crate::servers::null`]: reads the uid, answers
//!   allowed) registered exactly as tailguard is: the chart's webhook
//!   configurations rendered with the same values but its URL, serving the same
//!   certificate through the same TLS stack, so the difference is the floor of
//!   what any webhook adds;
//! - tailguard's `/validate` (a Tailscale pod);
//! - tailguard's `/mutate` then `/validate` (an app pod in an opted-in namespace:
//!   the sidecar is injected, which makes it a Tailscale pod).
//!
//! A third shape, an app pod no webhook is sent, shows what having the
//! configurations costs; a fourth, the opted-in app pod as tailguard's
//! `/mutate` leaves it (taken from a dry-run create) created where it is only
//! sent to `/validate`, shows what storing the injected pod costs apart from
//! the `/mutate` call. Each round takes the three registrations in turn (the
//! order rotates every round) and creates `--pods` pods of every shape one
//! after another, after `--warmup-pods` unmeasured ones. Reported: each case's
//! added p50/p99 over no webhook and tailguard's added p50/p99 as a ratio to the
//! null webhook's; written to `target/bench/apiserver.json` and `.md`.
//!
//! Needs `KUBE_APISERVER_BIN`, `ETCD_BIN` and `HELM_BIN` (`source
//! ~/.cache/tailguard/tools/env.sh; eval "$(scripts/build-kube.sh)"`).

#[path = "../../../tests/it/support/kube.rs"]
mod harness;
mod pods;
mod report;
mod webhooks;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use harness::{KubeBinaries, TestCluster, Webhook, WebhookOptions};
use serde_json::json;

use crate::args::Args;
use crate::procs::{self, Comparison};
use crate::report::Machine;
use crate::servers::Kind;
use pods::Shape;
use webhooks::{Backend, Calls, Registrations};

/// The Helm release the configurations are rendered as.
const RELEASE: &str = "t";

fn tool(var: &str) -> anyhow::Result<PathBuf> {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_file() => Ok(p),
        _ => anyhow::bail!(
            "{var} is not set or not a file (source ~/.cache/tailguard/tools/env.sh and eval \"$(scripts/build-kube.sh)\")"
        ),
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("WARNING: a debug build; run with --release for meaningful figures");
    }
    let settings = args.settings();
    let pods = args.pods.unwrap_or(if args.quick { 100 } else { 300 }).max(1);
    let warmup = args.warmup_pods.unwrap_or(if args.quick { 10 } else { 30 });
    let bins = KubeBinaries {
        apiserver: tool("KUBE_APISERVER_BIN")?,
        etcd: tool("ETCD_BIN")?,
    };
    let helm = tool("HELM_BIN")?;
    let exe = std::env::current_exe()?;
    let exe_dir = exe.parent().context("binary directory")?.to_path_buf();
    let bin = procs::server_bin(args.server_bin.as_deref(), &exe_dir)?;
    let out = match &args.out {
        Some(p) => p.clone(),
        None => exe_dir
            .parent()
            .unwrap_or(&exe_dir)
            .join("bench")
            .join("apiserver.json"),
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut machine = Machine::probe(args.client_threads);
    println!("{}", machine.summary());
    println!(
        "{pods} creates per shape and case per round, {} rounds (registrations in turns, order rotating), {warmup} warm-up creates before each series",
        settings.runs
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (rows, review_ms) = runtime.block_on(measure(args, &bins, &helm, &bin, settings.runs, pods, warmup))?;
    machine.load1_end = procs::load1();

    let mut markdown = format!(
        "Through kube-apiserver: {} rounds x {pods} creates per shape and case ({warmup} warm-up); \
         load {:.2} at start, {:.2} at end; tailguard's own time per review (its metrics): {review_ms}.\n\n",
        settings.runs, machine.load1_start, machine.load1_end
    );
    markdown.push_str(&report::table(&rows));
    println!("\n{markdown}");
    let results = json!({
        "machine": machine,
        "settings": {"rounds": settings.runs, "pods": pods, "warmup_pods": warmup, "server_log": args.server_log},
        "tailguard_review_time": review_ms,
        "shapes": rows,
    });
    std::fs::write(&out, serde_json::to_vec_pretty(&results)?)?;
    std::fs::write(out.with_extension("md"), markdown)?;
    println!("wrote {} and {}", out.display(), out.with_extension("md").display());
    Ok(())
}

/// Starts the cluster, tailguard and the null webhook, runs the rounds, and
/// returns the table's rows and tailguard's own mean time per review.
async fn measure(
    args: &Args,
    bins: &KubeBinaries,
    helm: &Path,
    bin: &Path,
    rounds: usize,
    pods: usize,
    warmup: usize,
) -> anyhow::Result<(Vec<report::Row>, String)> {
    let cluster = TestCluster::start(bins, "bench-apiserver").await;
    let client = cluster.client.clone();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/tailguard");
    let render = |url: &str, bundle: &str| {
        let values = [
            ("certificates.mode", "secret"),
            ("certificates.secretName", "bench"),
            ("webhook.url", url),
            ("certificates.caBundle", bundle),
        ];
        harness::render_chart(helm, &chart, RELEASE, "tailguard", &values)
    };
    let placeholder = render("https://127.0.0.1:1", "eA==");
    harness::apply_rbac(&client, &placeholder).await;
    let kubeconfig = cluster.kubeconfig_for(
        "tailguard.kubeconfig",
        &harness::service_account_user(&placeholder),
        &["system:serviceaccounts"],
    );
    let config = harness::chart_config(&placeholder);
    let webhook = Webhook::start(&WebhookOptions {
        bin,
        kubeconfig: Some(&kubeconfig),
        config: config.as_deref(),
        extra_args: &[],
        log_filter: &args.server_log,
    });
    // The null webhook serves tailguard's certificate files, under the same caBundle.
    let null = Comparison::start(Kind::Null, &webhook.certs.cert(), &webhook.certs.key())?;
    let bundle = webhook.ca_bundle();
    let registrations = Registrations {
        tailguard: render(&webhook.url(), &bundle),
        null: render(&format!("https://{}", null.addr), &bundle),
        name: format!("{RELEASE}-tailguard"),
    };
    pods::create_namespaces(&client).await?;
    registrations.switch(&client, Backend::Tailguard).await?;
    let injected_pod = pods::injected_by_tailguard(&client).await?;

    let mut series: Vec<(Shape, report::Series)> = Shape::ALL.iter().map(|&s| (s, Default::default())).collect();
    for round in 0..rounds {
        for turn in 0..Backend::ALL.len() {
            let b = (round + turn) % Backend::ALL.len();
            let backend = Backend::ALL[b];
            let took = registrations.switch(&client, backend).await?;
            for (shape, s) in &mut series {
                let shape = *shape;
                let injected = shape.injected(backend == Backend::Tailguard);
                let prefix = format!("r{round}-{b}-{}", shape.name());
                let warm = format!("{prefix}-warm");
                pods::create(&client, shape, &injected_pod, &warm, warmup, injected).await?;
                let before = Calls::read(&client).await?;
                let measured = pods::create(&client, shape, &injected_pod, &prefix, pods, injected).await?;
                s.calls[b].add(&Calls::read(&client).await?.since(&before));
                let mut ms: Vec<f64> = measured.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
                ms.sort_by(f64::total_cmp);
                println!(
                    "round {}/{rounds} {:<12} {:<28} p50 {:6.2} ms  p99 {:6.2} ms  (switched in {:.0} ms, load {:.2})",
                    round + 1,
                    backend.name(),
                    shape.label(),
                    ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN),
                    ms.get((ms.len() * 99).div_ceil(100).saturating_sub(1))
                        .copied()
                        .unwrap_or(f64::NAN),
                    took.as_secs_f64() * 1000.0,
                    procs::load1()
                );
                s.rounds[b].push(measured);
            }
            pods::delete_all(&client).await?;
        }
    }
    registrations.switch(&client, Backend::None).await?;

    let review = |endpoint: &str| {
        let sum = webhook.metric(&format!(
            "tailguard_review_duration_seconds_sum{{endpoint=\"{endpoint}\"}}"
        ));
        let count = webhook.metric(&format!(
            "tailguard_review_duration_seconds_count{{endpoint=\"{endpoint}\"}}"
        ));
        match (sum, count) {
            (Some(sum), Some(count)) if count > 0.0 => {
                format!("/{endpoint} {:.3} ms mean over {count}", sum / count * 1000.0)
            }
            _ => format!("/{endpoint} no data"),
        }
    };
    let review_ms = format!("{}, {}", review("validate"), review("mutate"));
    drop(null);
    drop(webhook);
    drop(cluster);
    Ok((report::rows(&series), review_ms))
}
