//! Over the wire: the servers started, checked, and loaded in turns.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use hyper::body::Bytes;
use tailguard::config::Config;

use crate::args::{Args, Settings};
use crate::bodies::{self, Case};
use crate::client::{self, Load, Proto, Target};
use crate::inproc::{self, summarize, us};
use crate::namespaces::{self, Known};
use crate::procs::{self, Comparison};
use crate::report::{CaseResult, InProcess, Run};
use crate::servers::Kind;

/// The running servers and the load generator's runtime.
pub struct Wire {
    pub runtime: tokio::runtime::Runtime,
    pub tailguard: procs::Tailguard,
    pub target: Target,
    pub others: Vec<(Comparison, Target)>,
}

/// What the load found: tailguard's cases, and each comparison server's by role.
pub struct Measured {
    pub tailguard: Vec<CaseResult>,
    pub compared: BTreeMap<String, Vec<CaseResult>>,
}

impl Wire {
    /// Starts `tailguard serve` (with a fake apiserver for its namespace cache)
    /// and the comparison servers, which serve tailguard's `--dev` certificate.
    pub fn start(args: &Args, settings: &Settings, bin: &Path, work: &Path) -> anyhow::Result<Wire> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads.max(1))
            .enable_all()
            .build()?;
        let apiserver = runtime.block_on(namespaces::fake_apiserver())?;
        let kubeconfig = work.join("kubeconfig");
        std::fs::write(&kubeconfig, namespaces::kubeconfig(apiserver))?;
        let started = Instant::now();
        let tailguard = procs::Tailguard::start(bin, work, &kubeconfig, &args.server_log)?;
        println!(
            "\ntailguard serve (pid {}) on {}, ready in {:.0} ms (namespace cache synced from the fake apiserver {apiserver})",
            tailguard.proc.pid(),
            tailguard.addr,
            started.elapsed().as_secs_f64() * 1e3
        );
        let ca = std::fs::read(tailguard.certs.join(tailguard::certs::CA_CERT_FILE))?;
        let target = Target::new(tailguard.addr, &ca)?;
        let mut others = Vec::new();
        for &kind in &settings.compare {
            let c = Comparison::start(
                kind,
                &tailguard.certs.join(tailguard::certs::TLS_CERT_FILE),
                &tailguard.certs.join(tailguard::certs::TLS_KEY_FILE),
            )?;
            println!("{} ({}, pid {}) on {}", kind.name(), kind.role(), c.proc.pid(), c.addr);
            let t = Target::new(c.addr, &ca)?;
            others.push((c, t));
        }
        Ok(Wire {
            runtime,
            tailguard,
            target,
            others,
        })
    }

    /// Every case answers 200 on every protocol from every server, tailguard
    /// as it does in-process, the others allowing with the review's uid.
    pub fn check(&self, cases: &[Case], protocols: &[Proto], config: &Config, known: &Known) -> anyhow::Result<()> {
        for c in cases {
            let expected = summarize(&inproc::tailguard_review(c.endpoint, &c.body, config, known));
            for &proto in protocols {
                let body = Bytes::from(c.body.clone());
                let (status, answer) =
                    self.runtime
                        .block_on(client::once(&self.target, proto, c.endpoint, body.clone()))?;
                if status != 200 || summarize(&answer) != expected {
                    bail!(
                        "tailguard {} {} over {}: {status} {}",
                        c.name,
                        c.endpoint,
                        proto.as_str(),
                        String::from_utf8_lossy(&answer)
                    );
                }
                for (server, target) in &self.others {
                    let (status, answer) =
                        self.runtime
                            .block_on(client::once(target, proto, c.endpoint, body.clone()))?;
                    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
                    if status != 200 || v["response"]["uid"] != bodies::UID || v["response"]["allowed"] != true {
                        bail!(
                            "{} {} over {}: {status} {}",
                            server.kind.name(),
                            c.name,
                            proto.as_str(),
                            String::from_utf8_lossy(&answer)
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Resident memory now: tailguard's, and each comparison server's by role.
    pub fn idle_rss(&self) -> (u64, BTreeMap<String, u64>) {
        let tailguard = procs::status_kib(self.tailguard.proc.pid(), "VmRSS").unwrap_or(0);
        let others = self
            .others
            .iter()
            .map(|(c, _)| {
                let rss = procs::status_kib(c.proc.pid(), "VmRSS").unwrap_or(0);
                (c.kind.role().to_owned(), rss)
            })
            .collect();
        (tailguard, others)
    }

    /// `settings.runs` rounds; in each, every case and protocol is loaded on
    /// every server in turn, starting with a different server each round.
    pub fn measure_all(
        &self,
        args: &Args,
        settings: &Settings,
        cases: &[Case],
        in_process: &[InProcess],
    ) -> anyhow::Result<Measured> {
        println!(
            "\n## Load: {} concurrent requests (HTTP/1.1: {} connections; HTTP/2: {} streams over {} connections), {} rounds x {:?} (+{:?} warm-up) per server\n",
            args.connections,
            args.connections,
            args.connections,
            args.h2_connections,
            settings.runs,
            settings.duration,
            settings.warmup
        );
        // None: tailguard; Some(i): self.others[i].
        let servers: Vec<Option<usize>> = std::iter::once(None).chain((0..self.others.len()).map(Some)).collect();
        let mut runs: BTreeMap<(Option<usize>, usize, Proto), Vec<Run>> = BTreeMap::new();
        for round in 0..settings.runs {
            for (i, c) in cases.iter().enumerate() {
                for &proto in &settings.protocols {
                    let load = Load {
                        proto,
                        path: c.endpoint,
                        body: Bytes::from(c.body.clone()),
                        concurrency: args.connections,
                        h2_connections: args.h2_connections,
                        warmup: settings.warmup,
                        duration: settings.duration,
                        extra: None,
                        server_pid: None,
                    };
                    let mut order = servers.clone();
                    order.rotate_left(round % servers.len());
                    for server in order {
                        let (name, target, pid) = match server {
                            None => {
                                self.tailguard.truncate_log();
                                ("tailguard", &self.target, self.tailguard.proc.pid())
                            }
                            Some(o) => {
                                let (c, t) = &self.others[o];
                                (c.kind.name(), t, c.proc.pid())
                            }
                        };
                        let r = measure(&self.runtime, target, pid, &load)?;
                        print_run(round, c, proto, name, &r);
                        runs.entry((server, i, proto)).or_default().push(r);
                    }
                }
            }
        }
        let mut measured = Measured {
            tailguard: Vec::new(),
            compared: BTreeMap::new(),
        };
        for (i, c) in cases.iter().enumerate() {
            for &proto in &settings.protocols {
                for &server in &servers {
                    let Some(r) = runs.remove(&(server, i, proto)) else {
                        continue;
                    };
                    let kind: Option<Kind> = server.map(|o| self.others[o].0.kind);
                    let (name, inp) = match kind {
                        None => ("tailguard", in_process[i].tailguard_us),
                        Some(k) => (k.name(), in_process[i].of(k.role())),
                    };
                    let result = CaseResult::from_runs(name, c.name, c.endpoint, proto.as_str(), c.body.len(), inp, r);
                    match kind {
                        None => measured.tailguard.push(result),
                        Some(k) => measured.compared.entry(k.role().to_owned()).or_default().push(result),
                    }
                }
            }
        }
        Ok(measured)
    }
}

/// One load run against the server `pid` behind `target`.
fn measure(runtime: &tokio::runtime::Runtime, target: &Target, pid: u32, load: &Load) -> anyhow::Result<Run> {
    procs::reset_peak(pid);
    let mut load = load.clone();
    load.server_pid = Some(pid);
    let o = runtime.block_on(client::run(target, &load))?;
    let n = o.main.latencies.len() as f64;
    let per_req = |cpu: Option<Duration>| cpu.map_or(f64::NAN, |c| if n > 0.0 { us(c) / n } else { f64::NAN });
    let others = match (o.machine_cpu, o.server_cpu, o.client_cpu) {
        (Some(m), Some(s), Some(c)) => 100.0 * m.saturating_sub(s + c).as_secs_f64() / o.window.as_secs_f64(),
        _ => f64::NAN,
    };
    Ok(Run {
        rps: n / o.window.as_secs_f64(),
        p50_us: o.main.percentile(50.0),
        p90_us: o.main.percentile(90.0),
        p99_us: o.main.percentile(99.0),
        max_us: o.main.max(),
        errors: o.main.errors,
        server_cpu_us_per_req: per_req(o.server_cpu),
        client_cpu_us_per_req: per_req(o.client_cpu),
        peak_rss_kib: procs::status_kib(pid, "VmHWM").unwrap_or(0),
        load1: procs::load1(),
        others_cpu_pct: others,
    })
}

fn print_run(round: usize, c: &Case, proto: Proto, server: &str, r: &Run) {
    println!(
        "round {} {:<16} {:<9} {} {:<9} {:>8.0}/s  p50 {:>6}  p90 {:>6}  p99 {:>6}  max {:>7} µs  server {:>6.1} µs/req  client {:>5.1} µs/req  RSS {:>6} KiB  others {:>3.0}% CPU{}",
        round + 1,
        c.name,
        c.endpoint,
        proto.as_str(),
        server,
        r.rps,
        r.p50_us,
        r.p90_us,
        r.p99_us,
        r.max_us,
        r.server_cpu_us_per_req,
        r.client_cpu_us_per_req,
        r.peak_rss_kib,
        r.others_cpu_pct,
        if r.errors > 0 {
            format!("  {} ERRORS", r.errors)
        } else {
            String::new()
        }
    );
}
