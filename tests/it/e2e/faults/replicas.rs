//! Two replicas behind the chart's Service: one frozen mid-review and killed
//! (SIGKILL), restarted as its container would be; then a rolling restart
//! as the chart's Deployment strategy does it (maxSurge 1, maxUnavailable 0)
//! and an eviction (SIGTERM with the replacement started alongside), with the
//! chart's `--shutdown-delay`/`--shutdown-grace`, all under load with
//! `failurePolicy: Fail`.
//!
//! The route: the webhook configurations reference the chart's Service (no
//! `webhook.url`), and kube-apiserver runs with `--enable-aggregator-routing`,
//! under which it resolves a Service-referenced webhook through its
//! EndpointSlice (a random ready endpoint, looked up when a connection is
//! dialled) rather than the cluster IP. Nothing else writes endpoints here
//! (`--endpoint-reconciler-type=none`, no controller-manager), so the test
//! writes the slice as the EndpointSlice controller would after the kubelet's
//! probes: not ready once the killed container is noticed, terminating the
//! moment a pod is deleted, ready once a new process answers `/readyz`. The
//! replicas listen on 127.0.0.2-5, one port: EndpointSlice validation refuses
//! loopback addresses in an IPv4 slice, so the slice is of addressType FQDN
//! with dotted-quad names, which the resolver dials exactly as it dials an
//! IPv4 slice's addresses (it reads `addresses[0]` whatever the type).
//!
//! Guarantee measured: no verdict is ever wrong. A SIGKILL loses the reviews
//! the killed replica held and those routed to its address before its
//! endpoint went not ready (the apiserver does not retry a webhook call
//! elsewhere; failurePolicy decides), and nothing after. A rolling restart or
//! an eviction loses none: HTTP/1 connections (the apiserver's) are kept
//! through `--shutdown-delay`, each response then saying `Connection: close`,
//! instead of being closed at SIGTERM, which raced with a review the
//! apiserver was writing onto an idle keep-alive connection (it failed 1-4
//! reviews in 6 of 14 runs before).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::load::{Counts, Judged, Load, Sample, Tally};
use super::{APPS_NS, ENFORCE, PLAIN_NS, PSA_NS, no_wrong_verdicts, probes};
use crate::e2e::{RELEASE, RELEASE_NAMESPACE, doc_of_kind};
use crate::support::harness::process::Launching;
use crate::support::harness::{self, FIELD_MANAGER, KubeBinaries, SecretVolume, TestCluster, Webhook};
use crate::support::{BIN, Serve, TempDir, repo};
use crate::tools;

/// The pods' addresses: the two first replicas, then the rollout's new pods
/// (a new pod gets a new address; the old one still drains on its own).
const ADDRESSES: [Ipv4Addr; 4] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
    Ipv4Addr::new(127, 0, 0, 5),
];
/// The victim is stopped (SIGSTOP) until a review waits unread on one of its
/// connections (at most this long), then killed: mid-review for certain.
const FROZEN_AT_MOST: Duration = Duration::from_secs(3);
/// From the container's death to its endpoint going not ready: the kubelet
/// notices the exit (PLEG, ~1 s) and the EndpointSlice controller follows.
const NOTICED_AFTER: Duration = Duration::from_secs(1);
/// After an EndpointSlice write returns, the apiserver's own informer may
/// still route a dial by the old slice for this long.
const SLICE_PROPAGATION: Duration = Duration::from_millis(250);
/// An endpoint's conditions, as the EndpointSlice controller writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Ready,
    /// Container gone or probe failing.
    NotReady,
    /// Pod deleted, still running its shutdown.
    Terminating,
}

impl Condition {
    fn json(self) -> Value {
        let (ready, serving, terminating) = match self {
            Condition::Ready => (true, true, false),
            Condition::NotReady => (false, false, false),
            Condition::Terminating => (false, true, true),
        };
        json!({"ready": ready, "serving": serving, "terminating": terminating})
    }
}

/// The chart's Service's one EndpointSlice, written whole on every change.
struct Endpoints {
    client: kube::Client,
    service: String,
    port_name: String,
    port: u16,
    state: BTreeMap<Ipv4Addr, Condition>,
    /// The slowest write (until the apiserver acknowledged it).
    slowest: Duration,
}

impl Endpoints {
    /// Sets (or with `None` removes) the endpoint of `ip` and writes the slice.
    async fn set(&mut self, ip: Ipv4Addr, condition: Option<Condition>) {
        match condition {
            Some(c) => self.state.insert(ip, c),
            None => self.state.remove(&ip),
        };
        let endpoints: Vec<Value> = self
            .state
            .iter()
            .map(|(ip, c)| json!({"addresses": [ip.to_string()], "conditions": c.json()}))
            .collect();
        let name = format!("{}-e2e", self.service);
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": RELEASE_NAMESPACE,
                "labels": {
                    "kubernetes.io/service-name": self.service,
                    "endpointslice.kubernetes.io/managed-by": "tailguard-e2e",
                },
            },
            "addressType": "FQDN",
            "ports": [{"name": self.port_name, "port": self.port, "protocol": "TCP"}],
            "endpoints": endpoints,
        });
        let started = Instant::now();
        Api::<EndpointSlice>::namespaced(self.client.clone(), RELEASE_NAMESPACE)
            .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&slice))
            .await
            .unwrap_or_else(|e| panic!("write EndpointSlice {name}: {e}"));
        self.slowest = self.slowest.max(started.elapsed());
    }
}

/// One `tailguard serve` process: a pod's container.
struct Replica {
    name: String,
    ip: Ipv4Addr,
    serve: Serve,
}

/// How every replica is started: the chart's flags, one certificate for the
/// Service's names (the Secret the pods would mount), the ServiceAccount's
/// kubeconfig, the chart's policy.
struct Template {
    dir: TempDir,
    certs: SecretVolume,
    kubeconfig: PathBuf,
    config: PathBuf,
    /// `--shutdown-delay=…`, `--shutdown-grace=…` from the rendered Deployment.
    flags: Vec<String>,
    port: u16,
}

impl Template {
    fn launch(&self, name: &str, ip: Ipv4Addr) -> Launching {
        let listen = format!("{ip}:{}", self.port);
        let mut command = Serve::command_on(std::path::Path::new(BIN), "info", &listen);
        command
            .arg("--tls-cert")
            .arg(self.certs.cert())
            .arg("--tls-key")
            .arg(self.certs.key())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--config")
            .arg(&self.config)
            .args(&self.flags);
        Serve::launch(name, &mut command, self.dir.join(format!("{name}.log")))
    }

    /// Starts a replica and waits until `/readyz` answers 200 (certificate
    /// loaded, namespace cache listed), as the readiness probe would.
    async fn start(&self, name: &str, ip: Ipv4Addr) -> Replica {
        let launching = self.launch(name, ip);
        let serve = tokio::task::spawn_blocking(move || {
            let mut serve = launching.listening();
            serve.wait_ready();
            serve
        })
        .await
        .unwrap_or_else(|e| panic!("start replica {name}: {e}"));
        assert_eq!(serve.addr.ip(), ip, "{name} listens where its endpoint points");
        Replica {
            name: name.to_string(),
            ip,
            serve,
        }
    }
}

/// One port free on every address of [`ADDRESSES`] (the pods' containerPort).
fn shared_port() -> u16 {
    for _ in 0..20 {
        let port = TcpListener::bind((ADDRESSES[0], 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.2 (Linux routes all of 127/8 to lo)");
        if ADDRESSES.iter().all(|ip| TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
    panic!("no port free on every one of {ADDRESSES:?}");
}

/// Bytes received and not yet read on the established TCP connections of the
/// listener `ip:port` (`rx_queue` in /proc/net/tcp): requests a stopped
/// process holds.
fn unread_bytes(ip: Ipv4Addr, port: u16) -> u64 {
    let local = format!("{:08X}:{port:04X}", u32::from_le_bytes(ip.octets()));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl, local_address, rem_address, st (01: established), tx_queue:rx_queue
            (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"01"))
                .then(|| fields.get(4)?.split_once(':'))
                .flatten()
                .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
        })
        .sum()
}

/// Reviews a replica has answered (every `tailguard_reviews_total` series).
fn reviews(serve: &Serve) -> f64 {
    let (_, text) = serve.health_get("/metrics");
    text.lines()
        .filter(|l| l.starts_with("tailguard_reviews_total{"))
        .filter_map(|l| l.rsplit_once("} ")?.1.split(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Counts of the samples answered from mark `from` until mark `to` (a review
/// sent just before a fault fails after it), and how long after `from` the
/// last one not judged right was answered.
fn window(tally: &Tally, from: &str, to: &str) -> (Counts, Duration) {
    let at = |name: &str| {
        tally
            .marks
            .iter()
            .find(|(_, n)| n == name)
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("no mark {name}"))
    };
    let (start, end) = (at(from), at(to));
    let mut counts = Counts::default();
    let mut recovery = Duration::ZERO;
    let answered = |s: &Sample| s.sent + s.took;
    for (sample, judged) in tally
        .samples
        .iter()
        .filter(|(s, _)| answered(s) >= start && answered(s) < end)
    {
        counts.sent += 1;
        match judged {
            Judged::Right => counts.right += 1,
            Judged::Flagged => counts.flagged += 1,
            Judged::Wrong => counts.wrong += 1,
            Judged::Failed => counts.failed += 1,
            Judged::Unavailable => counts.unavailable += 1,
        }
        if *judged != Judged::Right {
            recovery = recovery.max(answered(sample).saturating_sub(start));
        }
    }
    (counts, recovery)
}

fn line(name: &str, (c, recovery): (Counts, Duration)) -> String {
    format!(
        "  {name:<16} sent {:>4}, right {:>4}, wrong {}, failed {}, flagged {}, apiserver unavailable {}, \
         last non-right answer {:.2}s after it began",
        c.sent,
        c.right,
        c.wrong,
        c.failed,
        c.flagged,
        c.unavailable,
        recovery.as_secs_f64()
    )
}

/// Waits for a SIGTERMed replica to exit, within the pod's
/// terminationGracePeriodSeconds (after which the kubelet would SIGKILL it),
/// and says how many connections it had open when its drain began.
async fn drained(replica: &mut Replica, terminated: Instant, grace_period: Duration) -> String {
    let status = replica
        .serve
        .wait_exit(grace_period.saturating_sub(terminated.elapsed()))
        .await;
    let status = status.unwrap_or_else(|| {
        panic!(
            "{} still running {grace_period:?} after SIGTERM:\n{}",
            replica.name,
            replica.serve.log_text()
        )
    });
    assert!(
        status.success(),
        "{} exited with {status}:\n{}",
        replica.name,
        replica.serve.log_text()
    );
    let open = replica
        .serve
        .logs("draining connections")
        .first()
        .and_then(|fields| fields["connections"].as_u64())
        .unwrap_or_else(|| panic!("{} logged no drain:\n{}", replica.name, replica.serve.log_text()));
    format!(
        "{}: {open} connection(s) open at SIGTERM, exited {:.2}s later",
        replica.name,
        terminated.elapsed().as_secs_f64()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_kube, has_kubectl, has_helm)),
    ignore = "needs kube-apiserver, etcd, kubectl and helm: scripts/build-kube.sh and scripts/install-tools.sh, or run scripts/test.sh"
)]
async fn replica_killed_or_restarted_behind_the_service_loses_no_admission() {
    let case = "replica_killed_or_restarted_behind_the_service_loses_no_admission";
    let _heavy = crate::support::heavy();
    let t0 = Instant::now();
    let bins = KubeBinaries {
        apiserver: tools::tool("KUBE_APISERVER_BIN"),
        etcd: tools::tool("ETCD_BIN"),
    };
    let helm = tools::tool("HELM_BIN");
    let cluster = TestCluster::start_with(&bins, case, &["--enable-aggregator-routing=true"]).await;
    let client = cluster.client.clone();

    // The chart as installed in a cluster: webhooks call its Service; the
    // serving certificate (secret mode) is for the Service's names.
    let ca = Webhook::new_ca();
    let ca_bundle = tailguard::certs::ca_bundle(&ca.cert_pem);
    let docs = harness::render_chart(
        &helm,
        &repo().join("charts/tailguard"),
        RELEASE,
        RELEASE_NAMESPACE,
        &[
            ("certificates.mode", "secret"),
            ("certificates.secretName", "tailguard-e2e-tls"),
            ("certificates.caBundle", &ca_bundle),
        ],
    );
    let service = doc_of_kind(&docs, "Service");
    let service_name = service["metadata"]["name"].as_str().expect("Service name").to_string();
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], "webhook", "{service}");
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"] {
        for webhook in doc_of_kind(&docs, kind)["webhooks"].as_array().expect("webhooks") {
            let reference = &webhook["clientConfig"]["service"];
            assert_eq!(reference["name"], service_name, "{webhook}");
            assert_eq!(reference["port"], service_port["port"], "{webhook}");
            assert!(webhook["clientConfig"].get("url").is_none(), "{webhook}");
            assert_eq!(webhook["failurePolicy"], "Fail", "{webhook}");
        }
    }
    let deployment = doc_of_kind(&docs, "Deployment");
    let pod_spec = &deployment["spec"]["template"]["spec"];
    let flags: Vec<String> = pod_spec["containers"][0]["args"]
        .as_array()
        .expect("container args")
        .iter()
        .filter_map(Value::as_str)
        .filter(|a| a.starts_with("--shutdown-delay=") || a.starts_with("--shutdown-grace="))
        .map(str::to_string)
        .collect();
    assert_eq!(flags.len(), 2, "the chart passes --shutdown-delay and --shutdown-grace");
    let grace_period = Duration::from_secs(
        pod_spec["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds"),
    );
    let strategy = &deployment["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(
        (&strategy["maxSurge"], &strategy["maxUnavailable"]),
        (&json!(1), &json!(0))
    );

    // Namespaces first: every replica's namespace cache lists them at start.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for (name, labels) in [
        (RELEASE_NAMESPACE, json!({})),
        (PSA_NS, json!({ENFORCE: "privileged"})),
        (APPS_NS, json!({"tailguard.io/inject": "enabled"})),
        (PLAIN_NS, json!({})),
    ] {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("ns");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    }
    harness::apply_rbac(&client, &docs).await;
    let user = harness::service_account_user(&docs);
    let kubeconfig = cluster.kubeconfig_for(
        "tailguard.kubeconfig",
        &user,
        &[
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{RELEASE_NAMESPACE}"),
        ],
    );
    let dir = TempDir::new("replicas");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        harness::chart_config(&docs).expect("the chart renders the policy ConfigMap"),
    )
    .expect("write config");
    let dns = [
        service_name.clone(),
        format!("{service_name}.{RELEASE_NAMESPACE}"),
        format!("{service_name}.{RELEASE_NAMESPACE}.svc"),
        format!("{service_name}.{RELEASE_NAMESPACE}.svc.cluster.local"),
    ];
    let cert = tailguard::certs::issue_serving_cert(&ca, dns.as_slice(), &[], Duration::from_secs(30 * 24 * 3600))
        .expect("serving certificate for the Service's names");
    let certs = SecretVolume::create(dir.join("certs"), &cert.cert_pem, &cert.key_pem);
    let template = Template {
        certs,
        kubeconfig,
        config,
        flags,
        port: shared_port(),
        dir,
    };
    let mut pods = vec![
        template.start("a", ADDRESSES[0]).await,
        template.start("b", ADDRESSES[1]).await,
    ];

    let applied: Service = Api::namespaced(client.clone(), RELEASE_NAMESPACE)
        .patch(
            &service_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&service),
        )
        .await
        .expect("apply the chart's Service");
    let cluster_ip = applied.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    let mut endpoints = Endpoints {
        client: client.clone(),
        service: service_name.clone(),
        port_name: service_port["name"].as_str().expect("port name").to_string(),
        port: template.port,
        state: BTreeMap::new(),
        slowest: Duration::ZERO,
    };
    for pod in &pods {
        endpoints.set(pod.ip, Some(Condition::Ready)).await;
    }
    assert_eq!(
        harness::apply_webhook_configurations(&client, &docs).await,
        2,
        "one validating and one mutating configuration"
    );
    let effective = harness::wait_webhooks(&client, APPS_NS, true, Duration::from_secs(30)).await;
    eprintln!(
        "{case}: Service {service_name} (cluster IP {cluster_ip}, unroutable here), replicas on {}:{}, \
         webhooks effective after {effective:?}; set-up took {:?}",
        pods.iter().map(|p| p.ip.to_string()).collect::<Vec<_>>().join(" and "),
        template.port,
        t0.elapsed()
    );

    let load = Load::start(client.clone(), probes(true), 3, Duration::from_millis(20));
    assert!(
        load.wait_right(30, Duration::from_secs(30)).await,
        "the load never got going"
    );

    // --- SIGKILL mid-review, the container restarted on the same address ---
    // The victim is the replica the apiserver is calling most right now (it
    // keeps connections, and dials, hence asks the slice, only for new ones).
    let before: Vec<f64> = pods.iter().map(|p| reviews(&p.serve)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy: Vec<f64> = pods.iter().zip(&before).map(|(p, b)| reviews(&p.serve) - b).collect();
    eprintln!("{case}: reviews per replica in 0.5 s before the kill: {busy:?}");
    let victim = if busy[0] >= busy[1] { 0 } else { 1 };
    assert!(busy[victim] > 0.0, "no replica is being called: {busy:?}");
    let mut dead = pods.remove(victim);
    load.mark("frozen");
    dead.serve.signal("STOP");
    let stopped = Instant::now();
    while unread_bytes(dead.ip, template.port) == 0 && stopped.elapsed() < FROZEN_AT_MOST {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let holding = unread_bytes(dead.ip, template.port);
    load.mark("killed");
    dead.serve.kill();
    eprintln!(
        "{case}: {} killed after {:?} stopped, {holding} request byte(s) unread on its connections",
        dead.name,
        stopped.elapsed()
    );
    tokio::time::sleep(NOTICED_AFTER).await;
    endpoints.set(dead.ip, Some(Condition::NotReady)).await;
    load.mark("not ready");
    let restarted = template.start(&format!("{}-restarted", dead.name), dead.ip).await;
    endpoints.set(restarted.ip, Some(Condition::Ready)).await;
    load.mark("restarted");
    pods.push(restarted);
    assert!(
        load.wait_right(30, Duration::from_secs(30)).await,
        "reviews never came right after the kill"
    );

    // --- rolling restart, as the Deployment does it (maxSurge 1, maxUnavailable 0) ---
    load.mark("rollout");
    let mut drains = Vec::new();
    for new_ip in [ADDRESSES[2], ADDRESSES[3]] {
        let mut old = pods.remove(0);
        let new = template.start(&format!("{}-new", old.name), new_ip).await;
        endpoints.set(new.ip, Some(Condition::Ready)).await;
        load.mark(&format!("{} ready", new.name));
        // The pod deleted: SIGTERM and the endpoint terminating, in parallel.
        load.mark(&format!("{} terminating", old.name));
        let terminated = Instant::now();
        old.serve.signal("TERM");
        endpoints.set(old.ip, Some(Condition::Terminating)).await;
        drains.push(drained(&mut old, terminated, grace_period).await);
        endpoints.set(old.ip, None).await;
        load.mark(&format!("{} gone", old.name));
        pods.push(new);
    }

    // --- eviction (a node drain): SIGTERM, the replacement started alongside ---
    load.mark("eviction");
    let mut evicted = pods.remove(0);
    load.mark(&format!("{} terminating", evicted.name));
    let terminated = Instant::now();
    evicted.serve.signal("TERM");
    endpoints.set(evicted.ip, Some(Condition::Terminating)).await;
    let replacement = template.start("replacement", ADDRESSES[0]).await;
    endpoints.set(replacement.ip, Some(Condition::Ready)).await;
    load.mark("replacement ready");
    drains.push(drained(&mut evicted, terminated, grace_period).await);
    endpoints.set(evicted.ip, None).await;
    load.mark("evicted gone");
    pods.push(replacement);

    load.mark("quiet");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;

    let kill = window(&tally, "frozen", "restarted");
    let rollout = window(&tally, "rollout", "eviction");
    let eviction = window(&tally, "eviction", "quiet");
    let quiet = window(&tally, "quiet", "end");
    eprintln!(
        "{case}: drains: {}\n{case}: per fault (EndpointSlice writes took at most {:?}):\n{}\n{}\n{}\n{}",
        drains.join("; "),
        endpoints.slowest,
        line("kill", kill),
        line("rolling restart", rollout),
        line("eviction", eviction),
        line("afterwards", quiet)
    );
    no_wrong_verdicts(case, &tally);

    // Every failed admission is explained: the SIGKILL (the reviews the
    // victim held, or routed to its address before its endpoint went not
    // ready and the slice reached the apiserver's informer), or, while the
    // server closes idle connections at SIGTERM, that race.
    let at = |name: &str| {
        tally
            .marks
            .iter()
            .find(|(_, n)| n == name)
            .map(|(at, _)| *at)
            .expect("mark")
    };
    let (frozen, not_ready) = (at("frozen"), at("not ready") + SLICE_PROPAGATION);
    let (mut held, mut refused) = (0, 0);
    for (sample, _) in tally.samples.iter().filter(|(_, j)| *j == Judged::Failed) {
        let answered = sample.sent + sample.took;
        let what = sample.got.describe();
        if answered >= frozen && sample.sent < not_ready {
            if what.contains("connection refused") {
                refused += 1;
            } else {
                held += 1;
            }
        } else {
            panic!(
                "a failed admission outside the kill ({frozen:?}..{not_ready:?}): sent at {:?}: {what}\n{}",
                sample.sent,
                tally.report(case)
            );
        }
    }
    eprintln!(
        "{case}: failed admissions: {held} held by the killed replica, {refused} dialled to its address before \
         its endpoint went not ready:\n{}",
        tally.examples(Judged::Failed, 12)
    );
    assert!(held + refused > 0, "the kill failed nothing: was the victim serving?");
    for (name, (counts, _)) in [
        ("rolling restart", rollout),
        ("eviction", eviction),
        ("afterwards", quiet),
    ] {
        assert_eq!(
            (counts.unavailable, counts.flagged),
            (0, 0),
            "{name}:\n{}",
            tally.report(case)
        );
        assert_eq!(counts.failed, 0, "{name}:\n{}", tally.report(case));
        assert!(counts.right > 0, "{name}: no review judged right");
    }
    // The last two pods were reachable only through the slice's new addresses.
    let last: f64 = pods.iter().map(|p| reviews(&p.serve)).sum();
    assert!(last > 0.0, "the replicas started last were never called");
    eprintln!("{case}: total {:?}", t0.elapsed());
}
