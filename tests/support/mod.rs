//! Helpers shared by integration tests: temporary directories, test PKI,
//! running the built `tailguard` binary, and TLS/HTTP clients.
//!
//! Use with `mod support;` in a test file. Not every test file uses every helper.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tailguard::certs::{self, CaPem, CertPem};

/// The `tailguard` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_tailguard");

/// How long helpers wait for anything before failing the test.
pub const PATIENCE: Duration = Duration::from_secs(10);

// --- temporary directories ---

/// A fresh directory under cargo's per-target temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// --- certificates ---

/// A test CA and a serving certificate for `localhost`, `127.0.0.1` and `::1`.
pub struct Pki {
    pub ca: CaPem,
    pub serving: CertPem,
}

impl Pki {
    pub fn new(ca_name: &str) -> Pki {
        let ca = certs::generate_ca(ca_name, Duration::from_secs(3600 * 24 * 7)).expect("generate CA");
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")];
        let serving =
            certs::issue_serving_cert(&ca, &["localhost"], &ips, Duration::from_secs(3600 * 48)).expect("issue cert");
        Pki { ca, serving }
    }

    /// Writes `ca.crt`, `tls.crt`, `tls.key` into `dir`; returns (cert, key) paths.
    pub fn write_to(&self, dir: &Path) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).expect("create cert dir");
        std::fs::write(dir.join("ca.crt"), &self.ca.cert_pem).expect("write ca.crt");
        std::fs::write(dir.join("tls.crt"), &self.serving.cert_pem).expect("write tls.crt");
        std::fs::write(dir.join("tls.key"), &self.serving.key_pem).expect("write tls.key");
        (dir.join("tls.crt"), dir.join("tls.key"))
    }
}

// --- the binary ---

/// A running `tailguard serve`, killed on drop.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    pub health_addr: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// From spawn to the "listening" log line.
    pub startup: Duration,
}

impl Serve {
    /// Starts `tailguard serve ARGS --listen 127.0.0.1:0 --health-listen 127.0.0.1:0`
    /// with JSON logs, and waits until it logs that it is listening.
    pub fn start(args: &[&str]) -> Serve {
        let started = Instant::now();
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"])
            .env("TAILGUARD_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,tailguard=debug")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tailguard");
        let stdout = collect_lines(child.stdout.take().expect("stdout"), None);
        let (tx, rx) = mpsc::channel();
        let stderr = collect_lines(child.stderr.take().expect("stderr"), Some(tx));
        let deadline = Instant::now() + PATIENCE;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(remaining) {
                Ok(line) => {
                    let Some(fields) = log_fields(&line) else { continue };
                    if fields["message"] == "listening" {
                        let addr = fields["addr"].as_str().and_then(|a| a.parse().ok()).expect("addr");
                        let health_addr = fields["health_addr"]
                            .as_str()
                            .and_then(|a| a.parse().ok())
                            .expect("health_addr");
                        return Serve {
                            child,
                            addr,
                            health_addr,
                            stdout,
                            stderr,
                            startup: started.elapsed(),
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    std::thread::sleep(Duration::from_millis(50));
                    panic!(
                        "tailguard serve did not start listening:\n{}",
                        stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
                    );
                }
            }
        }
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The `fields` of every JSON log line whose message is `message`.
    pub fn logs(&self, message: &str) -> Vec<serde_json::Value> {
        self.stderr()
            .iter()
            .filter_map(|line| log_fields(line))
            .filter(|fields| fields["message"] == message)
            .collect()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (without blocking the async runtime) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `GET path` on the health listener: (status, body).
    pub fn health_get(&self, path: &str) -> (u16, String) {
        http_get(self.health_addr, path)
    }

    /// Polls `path` on the health listener until it answers 200 or `timeout` passes.
    pub fn wait_health_ok(&self, path: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.health_get(path).0 == 200 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// One sample of the OpenMetrics text from `/metrics`, e.g.
    /// `metric("tailguard_reviews_total{endpoint=\"validate\",result=\"error\"}")`:
    /// the line is `series value` (an integer or a float such as `3.0`), labels
    /// in the order the server writes them.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.health_get("/metrics");
        text.lines().find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tailguard ARGS` with `stdin` written to it (or closed), as a CLI user would.
pub fn run_cli(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tailguard");
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait for tailguard")
}

/// Runs `tailguard ARGS` to completion (killed after `timeout`): (status, stdout, stderr).
pub fn run_to_exit(args: &[&str], timeout: Duration) -> (Option<ExitStatus>, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tailguard");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (status, out, err)
}

fn collect_lines(
    reader: impl std::io::Read + Send + 'static,
    notify: Option<mpsc::Sender<String>>,
) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &notify {
                let _ = tx.send(line.clone());
            }
            if let Ok(mut lines) = sink.lock() {
                lines.push(line);
            }
        }
    });
    lines
}

/// The fields of a JSON log line (tracing-subscriber's JSON format).
pub fn log_fields(line: &str) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    match value.get("fields") {
        Some(fields) => Some(fields.clone()),
        None => Some(value),
    }
}

// --- plain HTTP ---

/// A minimal blocking `GET` over plain HTTP/1.1: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

// --- TLS and HTTPS clients ---

/// A rustls client configuration that trusts only `ca_pem`, offering `alpn`.
pub fn tls_client(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    tls_client_versions(ca_pem, alpn, rustls::DEFAULT_VERSIONS)
}

pub fn tls_client_versions(
    ca_pem: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `addr` as `localhost`.
pub async fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    // As the apiserver's Go client does; without it HTTP/2 requests stall on Nagle + delayed ACK.
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(PATIENCE, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One HTTPS connection (HTTP/1.1 keep-alive or HTTP/2), trusting only one CA.
pub struct Https {
    sender: Sender,
    /// The connection driver; finished once the connection is closed.
    pub driver: tokio::task::JoinHandle<()>,
    pub alpn: Option<Vec<u8>>,
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Https {
    /// Connects with TLS (ALPN `h2` or `http/1.1` per `proto`) and the HTTP handshake.
    pub async fn connect(addr: SocketAddr, ca_pem: &str, proto: Proto) -> std::io::Result<Https> {
        let alpn: &[u8] = match proto {
            Proto::Http1 => b"http/1.1",
            Proto::Http2 => b"h2",
        };
        let tls = tls_connect(addr, tls_client(ca_pem, &[alpn])).await?;
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        let (sender, driver) = match proto {
            Proto::Http1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(std::io::Error::other)?;
                (
                    Sender::H1(send),
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
            Proto::Http2 => {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(std::io::Error::other)?;
                (
                    Sender::H2(send),
                    tokio::spawn(async move {
                        let _ = conn.await;
                    }),
                )
            }
        };
        Ok(Https {
            sender,
            driver,
            alpn: negotiated,
        })
    }

    /// Sends one request on this connection.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Result<Reply, hyper::Error> {
        let uri = match self.sender {
            Sender::H1(_) => path.to_string(),
            Sender::H2(_) => format!("https://localhost{path}"),
        };
        let mut builder = Request::builder().method(method).uri(uri);
        if matches!(self.sender, Sender::H1(_)) {
            builder = builder.header("host", "localhost");
        }
        if let Some(ct) = content_type {
            builder = builder.header("content-type", ct);
        }
        let request = builder.body(Full::new(body.into())).expect("request");
        let response = match &mut self.sender {
            Sender::H1(send) => {
                send.ready().await?;
                send.send_request(request).await?
            }
            Sender::H2(send) => {
                send.ready().await?;
                send.send_request(request).await?
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply { status, headers, body })
    }

    /// `POST path` with `Content-Type: application/json`.
    pub async fn post_json(&mut self, path: &str, body: impl Into<Bytes>) -> Reply {
        let reply = tokio::time::timeout(PATIENCE, self.request("POST", path, Some("application/json"), body))
            .await
            .expect("request timed out");
        reply.expect("request failed")
    }

    /// True once the server has closed this connection.
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }
}

/// An AdmissionReview v1 for creating a Tailscale DaemonSet whose auth key is a literal.
pub fn tailscale_daemonset_review(uid: &str) -> String {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
            "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
            "requestKind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
            "requestResource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
            "name": "tailscale",
            "namespace": "tailscale",
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {"name": "tailscale", "namespace": "tailscale", "labels": {"app": "tailscale"}},
                "spec": {
                    "selector": {"matchLabels": {"app": "tailscale"}},
                    "template": {
                        "metadata": {"labels": {"app": "tailscale"}},
                        "spec": {
                            "serviceAccountName": "tailscale",
                            "containers": [{
                                "name": "tailscale",
                                "image": "tailscale/tailscale:v1.96.4",
                                "env": [
                                    {"name": "TS_AUTHKEY", "value": "tskey-auth-abc"},
                                    {"name": "TS_USERSPACE", "value": "true"}
                                ]
                            }]
                        }
                    }
                }
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
    .to_string()
}
