//! `tailguard-bench`: tailguard's admission webhook under load, against what a
//! user would otherwise run and against a webhook that does nothing, on the
//! same machine in the same run.
//!
//! ```sh
//! cargo run --release -p tailguard-bench                 # full run (~15 min)
//! cargo run --release -p tailguard-bench -- --quick      # smoke run (~2 min)
//! cargo run --release -p tailguard-bench -- --cases daemonset --protocols h2 --runs 5
//! cargo run --release -p tailguard-bench -- --compare kube-rs,null,diff   # also the diff-based webhook
//! cargo run --release -p tailguard-bench -- --through-apiserver   # pod creates through kube-apiserver
//! ```
//!
//! Through `cargo run`, the bench first builds the `tailguard` binary of the
//! same profile (`cargo build -p tailguard --bin tailguard`, so with the root
//! crate's own features, as users build it) and serves with
//! `target/<profile>/tailguard`; `--server-bin PATH` serves with another one.
//!
//! The servers, each its own process behind the same TLS stack (tokio-rustls
//! with ring, hyper-util HTTP/1.1 + HTTP/2 by ALPN, TCP_NODELAY):
//! - **tailguard**: the real `tailguard serve --dev` (JSON logs at info, one
//!   line per review, to a file; a loopback fake apiserver for the namespace
//!   cache, so /mutate really injects);
//! - **baseline** (`kube-rs`): the work of kube-rs's
//!   `examples/admission_controller.rs` per request: axum's
//!   `Json<AdmissionReview<DynamicObject>>`, `AdmissionRequest::try_from`,
//!   `AdmissionResponse::from(&req)`, its label checks, one label added with a
//!   direct JSON Patch `add`, `with_patch`, `into_review`, `Json` out
//!   ([`servers::kube_rs`]);
//! - **floor** (`null`): reads the body, deserializes only the request's uid and
//!   answers `allowed: true` ([`servers::null`]);
//! - optionally **diff** (`--compare ...,diff`): the naive webhook that diffs the
//!   whole object before and after with `json_patch::diff` (this benchmark's
//!   baseline before issue 15; [`servers::diff`]).
//!
//! What it does:
//! - generates real-shaped AdmissionReviews ([`bodies`]): three sizes for
//!   /validate (Tailscale workloads: every rule runs) and three for /mutate (app
//!   pods in an opted-in namespace: the sidecar is injected);
//! - times each review in-process, tailguard's `admission::validate`/`mutate`
//!   and each comparison server's handler ([`inproc`]);
//! - grows objects from 1 KiB to 1 MiB and checks that the time per review stays
//!   linear ([`growth`]);
//! - drives every server with the same closed-loop clients over TLS ([`load`]):
//!   HTTP/2 (streams multiplexed over a few connections, as the apiserver does)
//!   and HTTP/1.1 keep-alive; within each round the servers take turns (the
//!   order rotates every round), each case `--runs` rounds; tailguard is
//!   reported as a ratio to the baseline and as a fraction of the floor, per
//!   round and as the median over rounds;
//! - measures small-review latency while a client loops 1 MiB reviews ([`stall`]);
//! - measures start-up to ready of `tailguard serve --dev` ([`startup`]);
//! - prints the tables and writes `target/bench/results.json` and `results.md`
//!   ([`summary`], [`verdict`]: the targets of issue 15).
//!
//! `--through-apiserver` measures something else instead ([`apiserver`]): pod
//! creates through a real kube-apiserver with no webhook, the null webhook and
//! tailguard registered the same way, and what each adds.

mod apiserver;
mod args;
mod bodies;
mod client;
mod growth;
mod inproc;
mod load;
mod namespaces;
mod procs;
mod profile;
mod report;
mod run;
mod servers;
mod stall;
mod startup;
mod summary;
mod verdict;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = args::Args::parse();
    let result = if let Some(kind) = args.serve {
        let (Some(cert), Some(key)) = (&args.cert, &args.key) else {
            return ExitCode::from(2);
        };
        servers::serve(kind, cert, key)
    } else if args.through_apiserver {
        apiserver::run(&args)
    } else if let Some(case) = &args.profile_case {
        profile::run(case, args.iterations, args.profile_server)
    } else {
        run::run(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailguard-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
