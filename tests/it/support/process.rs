//! Temporary directories and child processes: the one temporary-directory
//! helper ([`TempDir`], on the tempfile crate), the one process spawner
//! ([`Proc`]: output to a log file, killed on drop), `tailguard serve` on top
//! of it ([`Serve`]: waits for `listening` and `/readyz`), a one-shot
//! [`run`] with a time limit, and the certificate files `serve` reads
//! ([`SecretVolume`]).
//!
//! kube.rs includes this file as its `process` module (re-exported as
//! `support::process`), so that the benchmark's `bench/src/apiserver/mod.rs`
//! gets both with its one `#[path = "../../../tests/it/support/kube.rs"] mod harness;`:
//! nothing here may use `crate::` paths or `env!` variables that only
//! integration tests get (`option_env!` is fine).
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long start-up (listening, ready) may take before the test fails.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(60);

// --- temporary directories ---

/// A fresh directory named after `label`, removed on drop; kept (and named on
/// stderr) with `TAILGUARD_E2E_KEEP=1`.
pub struct TempDir(tempfile::TempDir);

fn keep_temp_dirs() -> bool {
    std::env::var("TAILGUARD_E2E_KEEP").as_deref() == Ok("1")
}

impl TempDir {
    /// Under cargo's per-target temporary directory for integration tests
    /// (the system one elsewhere).
    pub fn new(label: &str) -> TempDir {
        let base = option_env!("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
        std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .disable_cleanup(keep_temp_dirs())
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("create a temporary directory in {}: {e}", base.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.path().join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if keep_temp_dirs() {
            eprintln!("kept {}", self.path().display());
        }
    }
}

// --- processes ---

/// A child process whose stdout and stderr go to one log file; killed (and
/// reaped) on drop, when the last lines of its log are printed if the test
/// is panicking.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// How many log lines to print when dropped during a panic.
    tail_on_panic: usize,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = file.try_clone().expect("clone log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({:?}): {e}", command.get_program()));
        Proc {
            name: name.to_string(),
            child,
            log,
            tail_on_panic: 40,
        }
    }

    /// How many log lines to print if the test panics (default 40).
    pub fn tail_on_panic(mut self, lines: usize) -> Proc {
        self.tail_on_panic = lines;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `Some(status text)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("wait failed: {e}")),
        }
    }

    /// Waits (without blocking an async runtime) up to `timeout` for the exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends a signal by PID (`TERM`, `KILL`, `STOP`, ...); true if `kill` succeeded.
    pub fn signal(&self, name: &str) -> bool {
        Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns whether it exited on its own.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        if self.exited().is_some() {
            return true;
        }
        self.signal("TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() && self.tail_on_panic > 0 {
            eprintln!(
                "----- last {} lines of {} log ({}) -----\n{}\n----- end of {} log -----",
                self.tail_on_panic,
                self.name,
                self.log.display(),
                self.log_tail(self.tail_on_panic),
                self.name
            );
        }
        self.kill();
    }
}

/// Runs `command` to completion with `stdin` written to it (or closed),
/// reading its output as it comes; `None` (after killing it) if it runs
/// longer than `timeout`.
pub fn run(command: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Option<Output> {
    let mut child = command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", command.get_program()));
    let writer = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => {
            let input = input.to_vec();
            // A child that exits without reading all of it is not our error.
            Some(std::thread::spawn(move || drop(pipe.write_all(&input))))
        }
        _ => None,
    };
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    status.map(|status| Output { status, stdout, stderr })
}

// --- plain HTTP ---

/// A minimal blocking plain-HTTP `GET` (health endpoints): (status, body);
/// status 0 when the server cannot be reached.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
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

// --- tailguard serve ---

/// The `fields` of a JSON log line (tracing-subscriber's JSON format); None
/// for other lines.
pub fn log_fields(line: &str) -> Option<Value> {
    let value: Value = serde_json::from_str(line).ok()?;
    match value.get("fields") {
        Some(fields) => Some(fields.clone()),
        None => Some(value),
    }
}

/// The addresses of tailguard's `listening` log line.
pub fn listening(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    log.lines().filter_map(log_fields).find_map(|fields| {
        (fields["message"] == "listening").then_some(())?;
        Some((
            fields["addr"].as_str()?.parse().ok()?,
            fields["health_addr"].as_str()?.parse().ok()?,
        ))
    })
}

/// A running `tailguard serve`, killed on drop.
pub struct Serve {
    pub addr: SocketAddr,
    pub health_addr: SocketAddr,
    /// From spawn to the `listening` log line.
    pub startup: Duration,
    pub spawned: Instant,
    pub proc: Proc,
    /// The directory of its log, when [`Serve`] made one.
    pub dir: Option<TempDir>,
}

/// A `tailguard serve` spawned, not yet known to listen.
pub struct Launching {
    spawned: Instant,
    proc: Proc,
    dir: Option<TempDir>,
}

impl Serve {
    /// `BIN serve` as the tests run it: JSON logs at `log_filter`, both
    /// listeners on 127.0.0.1:0, nothing from the environment (kubeconfig,
    /// `TAILGUARD_*` settings). Add the test's own arguments.
    pub fn command(bin: &Path, log_filter: &str) -> Command {
        Serve::command_on(bin, log_filter, "127.0.0.1:0")
    }

    /// [`Serve::command`] with the webhook listener on `listen` instead.
    pub fn command_on(bin: &Path, log_filter: &str, listen: &str) -> Command {
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .args(["--listen", listen, "--health-listen", "127.0.0.1:0"])
            .env("TAILGUARD_LOG_FORMAT", "json")
            .env("RUST_LOG", log_filter)
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAMESPACE");
        for var in [
            "TAILGUARD_CONFIG",
            "TAILGUARD_CLUSTER",
            "TAILGUARD_KUBECONFIG",
            "TAILGUARD_DEV",
        ] {
            command.env_remove(var);
        }
        command
    }

    /// Spawns `command` (see [`Serve::command`]) with its output in `log`.
    /// Wait with [`Launching::listening`]: spawning several servers before
    /// waiting for any starts them together.
    pub fn launch(name: &str, command: &mut Command, log: PathBuf) -> Launching {
        let spawned = Instant::now();
        Launching {
            spawned,
            proc: Proc::spawn(name, command, log).tail_on_panic(60),
            dir: None,
        }
    }

    /// [`Serve::launch`] with the log in a temporary directory of its own,
    /// then [`Launching::listening`].
    pub fn start_command(name: &str, command: &mut Command) -> Serve {
        let dir = TempDir::new("serve");
        let mut launching = Serve::launch(name, command, dir.join("serve.log"));
        launching.dir = Some(dir);
        launching.listening()
    }

    /// Waits until `/readyz` answers 200; returns the time since spawn.
    pub fn wait_ready(&mut self) -> Duration {
        let deadline = self.spawned + STARTUP_PATIENCE;
        loop {
            let (status, body) = http_get(self.health_addr, "/readyz");
            if status == 200 {
                return self.spawned.elapsed();
            }
            if let Some(status) = self.proc.exited() {
                panic!(
                    "{} exited ({status}) before ready:\n{}",
                    self.proc.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after {STARTUP_PATIENCE:?}: {status} {body}\n{}",
                self.proc.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Every line it has written (stdout and stderr).
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log_text().lines().map(str::to_owned).collect()
    }

    /// The `fields` of every JSON log line.
    pub fn log_fields(&self) -> Vec<Value> {
        self.log_text().lines().filter_map(log_fields).collect()
    }

    /// The `fields` of every JSON log line whose message is `message`.
    pub fn logs(&self, message: &str) -> Vec<Value> {
        self.log_fields()
            .into_iter()
            .filter(|fields| fields["message"] == message)
            .collect()
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

    /// Sends a signal (`TERM`, `STOP`, ...); panics if `kill` fails.
    pub fn signal(&self, name: &str) {
        assert!(self.proc.signal(name), "kill -{name} {} failed", self.pid());
    }

    /// `Some(status)` once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.proc.exit_status()
    }

    /// Waits (without blocking the async runtime) up to `timeout` for the exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_exit(timeout).await
    }

    /// Stops the server abruptly (SIGKILL).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM; true if it exited within `grace` (else SIGKILL).
    pub fn terminate(&mut self, grace: Duration) -> bool {
        self.proc.terminate(grace)
    }
}

impl Launching {
    /// Waits for the `listening` log line.
    pub fn listening(self) -> Serve {
        let Launching { spawned, mut proc, dir } = self;
        let deadline = spawned + STARTUP_PATIENCE;
        loop {
            if let Some((addr, health_addr)) = listening(&proc.log_text()) {
                return Serve {
                    addr,
                    health_addr,
                    startup: spawned.elapsed(),
                    spawned,
                    proc,
                    dir,
                };
            }
            if let Some(status) = proc.exited() {
                panic!("{} exited ({status}) before listening:\n{}", proc.name, proc.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log `listening` within {STARTUP_PATIENCE:?}:\n{}",
                proc.name,
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

// --- certificate files ---

/// Serving certificate files laid out like a Kubernetes Secret volume: `tls.crt`
/// and `tls.key` are symlinks into `..data`, itself a symlink to a versioned
/// directory that is swapped atomically on rotation.
pub struct SecretVolume {
    pub dir: PathBuf,
    version: usize,
}

impl SecretVolume {
    pub fn create(dir: PathBuf, cert_pem: &str, key_pem: &str) -> SecretVolume {
        std::fs::create_dir_all(&dir).expect("create secret volume dir");
        let mut volume = SecretVolume { dir, version: 0 };
        volume.rotate(cert_pem, key_pem);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir.join(name)).expect("symlink");
        }
        volume
    }

    /// Writes a new version and swaps `..data` to it in one rename, as the kubelet does.
    pub fn rotate(&mut self, cert_pem: &str, key_pem: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let target = self.dir.join(&version);
        std::fs::create_dir_all(&target).expect("create version dir");
        std::fs::write(target.join("tls.crt"), cert_pem).expect("write tls.crt");
        std::fs::write(target.join("tls.key"), key_pem).expect("write tls.key");
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        if self.version > 2 {
            let _ = std::fs::remove_dir_all(self.dir.join(format!("..v{}", self.version - 2)));
        }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
}
