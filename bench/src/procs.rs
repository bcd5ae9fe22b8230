//! Server processes (tailguard and the comparison servers) and what /proc says about them.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::servers::Kind;

/// A child process killed (by its pid) and reaped when dropped.
pub struct Proc {
    child: Child,
    /// Held so a comparison server notices when we go away.
    _stdin: Option<ChildStdin>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `VmHWM`/`VmRSS`-style field of /proc/PID/status, in KiB.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets the peak RSS (`VmHWM`) to the current RSS (Linux >= 4.0).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// User + system CPU time of a process (all threads), from /proc/PID/stat.
pub fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU time used by everything on the machine (all CPUs, from /proc/stat:
/// user, nice, system, irq, softirq, steal).
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| fields.get(i)).sum();
    Some(Duration::from_secs_f64(busy as f64 / clock_ticks() as f64))
}

/// `/proc/loadavg`'s 1-minute figure.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A free loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Status code of `GET path` over plain HTTP/1.1, or `None` if it cannot connect.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Polls `GET /readyz` every `every` until 200; the time it took.
pub fn wait_ready(health: SocketAddr, started: Instant, limit: Duration, every: Duration) -> anyhow::Result<Duration> {
    loop {
        if http_status(health, "/readyz") == Some(200) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("{health}/readyz not 200 within {limit:?}");
        }
        std::thread::sleep(every);
    }
}

/// The tailguard server, as `tailguard serve` runs in a cluster (JSON logs, at
/// info one line per review, to a file).
pub struct Tailguard {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub certs: PathBuf,
    log: File,
}

impl Tailguard {
    /// Starts `tailguard serve --dev` on free loopback ports and waits until
    /// `/readyz` answers 200 (listening, and the namespace cache synced from
    /// the fake apiserver). The ports are passed, not read from the log, so any
    /// `log_filter` works.
    pub fn start(bin: &Path, dir: &Path, kubeconfig: &Path, log_filter: &str) -> anyhow::Result<Tailguard> {
        let certs = dir.join("certs");
        let log_path = dir.join("tailguard.log");
        let log = OpenOptions::new().create(true).append(true).open(&log_path)?;
        let (addr, health) = (free_port()?, free_port()?);
        let child = Command::new(bin)
            .args(["serve", "--dev"])
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--health-listen")
            .arg(health.to_string())
            .arg("--certs-dir")
            .arg(&certs)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env("TAILGUARD_LOG_FORMAT", "json")
            .env("RUST_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.try_clone()?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut proc = Proc { child, _stdin: None };
        let started = Instant::now();
        while http_status(health, "/readyz") != Some(200) {
            if let Ok(Some(status)) = proc.child.try_wait() {
                bail!("tailguard serve exited ({status}); log: {}", log_path.display());
            }
            if started.elapsed() > Duration::from_secs(30) {
                proc.stop();
                bail!(
                    "tailguard serve was not ready within 30 s (namespace cache from the fake apiserver?); log: {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Tailguard { proc, addr, certs, log })
    }

    /// Empties the log file (the server appends), so long runs do not fill the disk.
    pub fn truncate_log(&self) {
        let _ = self.log.set_len(0);
    }
}

/// A comparison server: this binary re-executed with `--serve KIND`.
pub struct Comparison {
    pub kind: Kind,
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Comparison {
    pub fn start(kind: Kind, cert: &Path, key: &Path) -> anyhow::Result<Comparison> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("--serve")
            .arg(kind.name())
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("comparison server's stdout")?;
        let mut proc = Proc { child, _stdin: stdin };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening ").and_then(|a| a.parse().ok()) else {
            proc.stop();
            bail!("{} server did not start: {line:?}", kind.name());
        };
        Ok(Comparison { kind, proc, addr })
    }
}

/// Start-up to ready of `tailguard serve --dev --certs-dir DIR`: spawn to the
/// first `/readyz` 200 (polled every 1 ms).
pub fn startup(bin: &Path, certs: &Path) -> anyhow::Result<Duration> {
    let listen = free_port()?;
    let health = free_port()?;
    let started = Instant::now();
    let child = Command::new(bin)
        .args(["serve", "--dev"])
        .arg("--certs-dir")
        .arg(certs)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--health-listen")
        .arg(health.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut proc = Proc { child, _stdin: None };
    let took = wait_ready(health, started, Duration::from_secs(20), Duration::from_millis(1));
    proc.stop();
    took
}

/// The tailguard binary to benchmark: `explicit`, or `tailguard` next to this
/// binary. Run through cargo (`cargo run -p tailguard-bench`), it is first
/// built by `cargo build -p tailguard --bin tailguard` in the same profile and
/// target directory, so it is built from the same sources, with the features
/// the tailguard crate alone asks for (as users build it).
pub fn server_bin(explicit: Option<&Path>, exe_dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        let (profile, dir) = if cfg!(debug_assertions) {
            ("dev", "debug")
        } else {
            ("release", "release")
        };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("Cargo.toml");
        let mut build = Command::new(cargo);
        build
            .args([
                "build",
                "--quiet",
                "--profile",
                profile,
                "-p",
                "tailguard",
                "--bin",
                "tailguard",
            ])
            .arg("--manifest-path")
            .arg(manifest);
        // Into the directory this binary runs from (`--target-dir` given to cargo run).
        if exe_dir.file_name() == Some(dir.as_ref())
            && let Some(target_dir) = exe_dir.parent()
        {
            build.arg("--target-dir").arg(target_dir);
        }
        let status = build.status().context("cargo build -p tailguard --bin tailguard")?;
        if !status.success() {
            bail!("cargo build -p tailguard --bin tailguard failed");
        }
    }
    let bin = exe_dir.join("tailguard");
    if !bin.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p tailguard) or pass --server-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// How an ELF binary is linked: "static" (no program interpreter, like the
/// image's musl build) or "dynamic" (glibc, the default build); "unknown" if
/// it cannot be read as a 64-bit little-endian ELF file.
pub fn linkage(bin: &Path) -> &'static str {
    const PT_INTERP: u32 = 3;
    // The ELF header and the program headers that follow it.
    let mut elf = Vec::new();
    let read =
        std::fs::File::open(bin).and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 4096), &mut elf));
    if read.is_err() {
        return "unknown";
    }
    let at = |offset: usize, len: usize| elf.get(offset..offset + len);
    let le = |bytes: &[u8]| bytes.iter().rev().fold(0u64, |n, b| (n << 8) | u64::from(*b));
    if at(0, 6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return "unknown";
    }
    let (Some(phoff), Some(entsize), Some(count)) = (at(0x20, 8), at(0x36, 2), at(0x38, 2)) else {
        return "unknown";
    };
    let (phoff, entsize) = (le(phoff) as usize, le(entsize) as usize);
    let interp = (0..le(count) as usize)
        .filter_map(|i| at(phoff + i * entsize, 4))
        .any(|p_type| le(p_type) == u64::from(PT_INTERP));
    if interp { "dynamic" } else { "static" }
}

/// A scratch directory removed at the end.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> anyhow::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("tailguard-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
