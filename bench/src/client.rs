//! The load generator: closed-loop clients over TLS (TCP_NODELAY), HTTP/1.1
//! keep-alive (one request in flight per connection) or HTTP/2 (concurrent
//! streams multiplexed over a few connections, as the kube-apiserver does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::procs::{cpu_time, machine_busy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
        }
    }
}

/// Where to connect, trusting `ca_pem`.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    h1: TlsConnector,
    h2: TlsConnector,
}

impl Target {
    pub fn new(addr: SocketAddr, ca_pem: &[u8]) -> anyhow::Result<Target> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(tailguard::certs::first_cert(ca_pem).context("CA certificate")?)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let connector = |alpn: &[u8]| -> anyhow::Result<TlsConnector> {
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(TlsConnector::from(Arc::new(config)))
        };
        Ok(Target {
            addr,
            h1: connector(b"http/1.1")?,
            h2: connector(b"h2")?,
        })
    }

    async fn connect(&self, proto: Proto) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let connector = match proto {
            Proto::H1 => &self.h1,
            Proto::H2 => &self.h2,
        };
        let name = ServerName::try_from("localhost")?;
        Ok(connector.connect(name, tcp).await?)
    }
}

/// One load run.
#[derive(Clone)]
pub struct Load {
    pub proto: Proto,
    pub path: &'static str,
    pub body: Bytes,
    /// Requests in flight: connections for HTTP/1.1, streams for HTTP/2.
    pub concurrency: usize,
    /// HTTP/2 connections the streams are spread over.
    pub h2_connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Another client looping on this body alongside (its own HTTP/1.1
    /// connection, or the first HTTP/2 connection), e.g. 1 MB reviews.
    pub extra: Option<(&'static str, Bytes)>,
    /// Process whose CPU time is sampled over the window (the server).
    pub server_pid: Option<u32>,
}

#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// Latencies (µs) of requests started and finished inside the window, sorted.
    pub latencies: Vec<u32>,
    /// Non-200 answers and transport errors.
    pub errors: u64,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
    }

    pub fn percentile(&self, p: f64) -> u32 {
        if self.latencies.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    pub fn max(&self) -> u32 {
        self.latencies.last().copied().unwrap_or(0)
    }
}

pub struct Outcome {
    pub main: Samples,
    pub extra: Samples,
    /// Length of the measurement window.
    pub window: Duration,
    /// CPU time used during the window by the server, by this process, and by
    /// the whole machine.
    pub server_cpu: Option<Duration>,
    pub client_cpu: Option<Duration>,
    pub machine_cpu: Option<Duration>,
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

/// A request sender of either protocol.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn open(target: &Target, proto: Proto) -> anyhow::Result<Sender> {
        let io = TokioIo::new(target.connect(proto).await?);
        Ok(match proto {
            Proto::H1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                Sender::H1(sender)
            }
            Proto::H2 => {
                let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await?;
                tokio::spawn(conn);
                Sender::H2(sender)
            }
        })
    }

    fn h2_clone(&self) -> Option<Sender> {
        match self {
            Sender::H2(s) => Some(Sender::H2(s.clone())),
            Sender::H1(_) => None,
        }
    }

    fn uri(&self, path: &str) -> anyhow::Result<hyper::Uri> {
        Ok(match self {
            Sender::H1(_) => path.parse()?,
            Sender::H2(_) => format!("https://localhost{path}").parse()?,
        })
    }

    /// Sends one review; `Ok(true)` for 200 with a body read to the end.
    async fn review(&mut self, uri: &hyper::Uri, body: &Bytes) -> anyhow::Result<bool> {
        let request = Request::post(uri.clone())
            .header(HOST, "localhost")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))?;
        let response = match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(request).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(request).await?
            }
        };
        let ok = response.status() == hyper::StatusCode::OK;
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(ok && !bytes.is_empty())
    }
}

/// Sends one request and returns the answer (status, body), for checking.
pub async fn once(target: &Target, proto: Proto, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
    let mut sender = Sender::open(target, proto).await?;
    let uri = sender.uri(path)?;
    let request = Request::post(uri)
        .header(HOST, "localhost")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = match &mut sender {
        Sender::H1(s) => s.send_request(request).await?,
        Sender::H2(s) => s.send_request(request).await?,
    };
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

async fn closed_loop(mut sender: Sender, path: &'static str, body: Bytes, window: Window) -> Samples {
    let mut samples = Samples {
        latencies: Vec::with_capacity(1 << 16),
        errors: 0,
    };
    let Ok(uri) = sender.uri(path) else {
        samples.errors += 1;
        return samples;
    };
    loop {
        let started = Instant::now();
        if started >= window.end {
            break;
        }
        let result = sender.review(&uri, &body).await;
        let finished = Instant::now();
        let counted = started >= window.start && finished <= window.end;
        match result {
            Ok(true) if counted => {
                let us = finished.duration_since(started).as_micros();
                samples.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok(true) => {}
            Ok(false) => samples.errors += u64::from(counted),
            Err(_) => {
                samples.errors += 1;
                // The connection is gone; do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
                if finished >= window.end {
                    break;
                }
                return samples;
            }
        }
    }
    samples
}

/// Runs `load` against `target`: connects, warms up, measures, returns samples.
pub async fn run(target: &Target, load: &Load) -> anyhow::Result<Outcome> {
    let mut senders = Vec::with_capacity(load.concurrency);
    let mut extra_sender = None;
    match load.proto {
        Proto::H1 => {
            for _ in 0..load.concurrency {
                senders.push(Sender::open(target, Proto::H1).await?);
            }
            if load.extra.is_some() {
                extra_sender = Some(Sender::open(target, Proto::H1).await?);
            }
        }
        Proto::H2 => {
            let conns = load.h2_connections.clamp(1, load.concurrency.max(1));
            let mut opened = Vec::with_capacity(conns);
            for _ in 0..conns {
                opened.push(Sender::open(target, Proto::H2).await?);
            }
            for i in 0..load.concurrency {
                senders.extend(opened[i % conns].h2_clone());
            }
            if load.extra.is_some() {
                extra_sender = opened[0].h2_clone();
            }
        }
    }
    let start = Instant::now() + load.warmup;
    let window = Window {
        start,
        end: start + load.duration,
    };
    let pid = load.server_pid;
    let cpu_sampler = tokio::spawn(async move {
        tokio::time::sleep_until(window.start.into()).await;
        let before = (pid.and_then(|p| cpu_time(Some(p))), cpu_time(None), machine_busy());
        tokio::time::sleep_until(window.end.into()).await;
        let after = (pid.and_then(|p| cpu_time(Some(p))), cpu_time(None), machine_busy());
        let delta = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
        (
            delta(before.0, after.0),
            delta(before.1, after.1),
            delta(before.2, after.2),
        )
    });
    let mut tasks = Vec::with_capacity(senders.len());
    for sender in senders {
        tasks.push(tokio::spawn(closed_loop(sender, load.path, load.body.clone(), window)));
    }
    let extra_task = match (extra_sender, &load.extra) {
        (Some(sender), Some((path, body))) => Some(tokio::spawn(closed_loop(sender, path, body.clone(), window))),
        _ => None,
    };
    let mut main = Samples::default();
    for task in tasks {
        main.merge(task.await?);
    }
    let mut extra = Samples::default();
    if let Some(task) = extra_task {
        extra.merge(task.await?);
    }
    main.latencies.sort_unstable();
    extra.latencies.sort_unstable();
    let (server_cpu, client_cpu, machine_cpu) = cpu_sampler.await?;
    Ok(Outcome {
        main,
        extra,
        window: load.duration,
        server_cpu,
        client_cpu,
        machine_cpu,
    })
}
