//! Helpers shared by the integration tests: the built binary, temporary
//! directories and processes (process.rs), test PKI, TLS/HTTP clients, the
//! AdmissionReview builder (review.rs), fixture headers (fixtures.rs), the
//! throwaway control plane (kube.rs, as `harness`), the runtime oracle
//! (oracle_run.rs), and the slots heavy tests take turns on.

pub mod fixtures;
#[path = "kube.rs"]
pub mod harness;
pub mod oracle_run;
pub mod review;

pub use harness::process::{self, Serve, TempDir, http_get};
pub use review::{Review, tailscale_daemonset_review};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tailguard::certs::{self, CaPem, CertPem};

/// The `tailguard` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_tailguard");

/// How long helpers wait for anything before failing the test.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The repository (fixtures, charts, README).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, as text.
pub fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The documents of a manifest file of the repository.
pub fn documents(rel: &str) -> Vec<Value> {
    let (docs, errors) = tailguard::manifest::parse_stream(rel, &read(rel));
    assert!(errors.is_empty(), "{rel}: {errors:?}");
    docs.into_iter().map(|d| d.object).collect()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Polls `f` every 20 ms until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

// --- heavy tests take turns ---

/// A slot for a heavy test (one that starts a kube-apiserver and etcd, or
/// runs pods in the runtime oracle), held until dropped.
pub struct HeavySlot(());

static HEAVY: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// Waits for one of the heavy slots: at most two heavy tests at a time (more
/// on a machine with more than four cores: half the cores), whatever
/// `--test-threads` says. They run beside the light tests, which are quick;
/// more of them at once would blur the timings the oracle judges hangs by and
/// crowd the control planes' start-up.
pub fn heavy() -> HeavySlot {
    let slots = std::thread::available_parallelism().map_or(2, |n| (n.get() / 2).max(2));
    let (count, freed) = &HEAVY;
    let mut taken = count.lock().unwrap_or_else(|e| e.into_inner());
    while *taken >= slots {
        taken = freed.wait(taken).unwrap_or_else(|e| e.into_inner());
    }
    *taken += 1;
    HeavySlot(())
}

impl Drop for HeavySlot {
    fn drop(&mut self) {
        let (count, freed) = &HEAVY;
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
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
        let ips: Vec<std::net::IpAddr> = vec!["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")];
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

    /// Writes the certificate files into `dir` and serves them, with `extra` flags.
    pub fn serve(&self, dir: &TempDir, extra: &[&str]) -> Serve {
        let (cert, key) = self.write_to(dir.path());
        let mut args = vec!["--tls-cert", path_str(&cert), "--tls-key", path_str(&key)];
        args.extend_from_slice(extra);
        Serve::start(&args)
    }
}

// --- the binary ---

impl Serve {
    /// Starts `tailguard serve ARGS` (JSON logs, debug for tailguard, ports
    /// 127.0.0.1:0) and waits until it logs that it is listening.
    pub fn start(args: &[&str]) -> Serve {
        let mut command = Serve::command(Path::new(BIN), "info,tailguard=debug");
        command.args(args);
        Serve::start_command("tailguard serve", &mut command)
    }
}

/// Runs `tailguard ARGS` with `stdin` written to it (or closed), as a CLI user would.
pub fn run_cli(args: &[&str], stdin: Option<&str>) -> Output {
    process::run(
        Command::new(BIN).args(args),
        Some(stdin.unwrap_or_default().as_bytes()),
        PATIENCE * 6,
    )
    .unwrap_or_else(|| panic!("tailguard {args:?} did not exit"))
}

/// Runs `tailguard ARGS` to completion (killed after `timeout`): (status, stdout, stderr).
pub fn run_to_exit(args: &[&str], timeout: Duration) -> (Option<ExitStatus>, String, String) {
    match process::run(Command::new(BIN).args(args).env_remove("KUBECONFIG"), None, timeout) {
        Some(out) => (
            Some(out.status),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        None => (None, String::new(), String::new()),
    }
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

/// Checks that `reply` is a 200 `application/json` AdmissionReview v1
/// answering `uid`, whose denial (if it is one) explains itself; returns the review.
pub fn assert_review(reply: &Reply, uid: &str) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let review = reply.json();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = &review["response"];
    assert_eq!(response["uid"], uid);
    let allowed = response["allowed"].as_bool().expect("response.allowed is a boolean");
    if !allowed {
        assert!(
            response["status"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{review}"
        );
    }
    review
}
