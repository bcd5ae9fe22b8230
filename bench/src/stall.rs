//! The stall test: small reviews' latency while one more client loops 1 MiB
//! reviews on the same server (a big review must not hold up small ones).

use anyhow::Context as _;
use hyper::body::Bytes;

use crate::args::{Args, Settings};
use crate::bodies;
use crate::client::{self, Load};
use crate::growth::BigBody;
use crate::load::Wire;
use crate::report::Stall;

/// Runs the small case alone and then alongside `heaviest` (or a 1 MiB env body), per protocol.
pub fn run(wire: &Wire, args: &Args, settings: &Settings, heaviest: Option<BigBody>) -> anyhow::Result<Vec<Stall>> {
    let mut out = Vec::new();
    let (big_name, big_endpoint, big_body) = match heaviest {
        Some(h) => h,
        None => {
            let s = &bodies::series()[1];
            (s.name.to_owned(), s.endpoint, bodies::sized(s, 1 << 20).1)
        }
    };
    let small = bodies::cases().into_iter().next().context("small case")?;
    println!(
        "\n## Stall: {} latency while one more client loops {} KiB reviews ({big_name}, {big_endpoint})\n",
        small.name,
        big_body.len() / 1024
    );
    for &proto in &settings.protocols {
        let mut load = Load {
            proto,
            path: small.endpoint,
            body: Bytes::from(small.body.clone()),
            concurrency: args.connections,
            h2_connections: args.h2_connections,
            warmup: settings.warmup,
            duration: settings.duration,
            extra: None,
            server_pid: Some(wire.tailguard.proc.pid()),
        };
        wire.tailguard.truncate_log();
        let without = wire.runtime.block_on(client::run(&wire.target, &load))?;
        load.extra = Some((big_endpoint, Bytes::from(big_body.clone())));
        wire.tailguard.truncate_log();
        let with = wire.runtime.block_on(client::run(&wire.target, &load))?;
        let rps = |o: &client::Outcome| o.main.latencies.len() as f64 / o.window.as_secs_f64();
        let s = Stall {
            protocol: proto.as_str().to_owned(),
            small_case: small.name.to_owned(),
            big_series: big_name.clone(),
            big_bytes: big_body.len(),
            without_p50_us: without.main.percentile(50.0),
            without_p99_us: without.main.percentile(99.0),
            without_max_us: without.main.max(),
            without_rps: rps(&without),
            with_p50_us: with.main.percentile(50.0),
            with_p99_us: with.main.percentile(99.0),
            with_max_us: with.main.max(),
            with_rps: rps(&with),
            big_reviews: with.extra.latencies.len(),
            big_p50_us: with.extra.percentile(50.0),
            big_max_us: with.extra.max(),
        };
        println!(
            "{}: small p50/p99/max {}/{}/{} µs at {:.0}/s alone; {}/{}/{} µs at {:.0}/s with {} big reviews (p50 {} µs, max {} µs)",
            s.protocol,
            s.without_p50_us,
            s.without_p99_us,
            s.without_max_us,
            s.without_rps,
            s.with_p50_us,
            s.with_p99_us,
            s.with_max_us,
            s.with_rps,
            s.big_reviews,
            s.big_p50_us,
            s.big_max_us
        );
        out.push(s);
    }
    Ok(out)
}
