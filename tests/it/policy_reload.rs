//! The policy file reloaded while serving (issue 16, "a policy ConfigMap
//! edited to an invalid policy while serving"): the real `tailguard serve`
//! over real TLS, its `--config` laid out as the kubelet lays out a ConfigMap
//! volume and changed as the kubelet changes it (a new timestamped directory,
//! then the `..data` symlink swapped in one rename), under continuous reviews.
//!
//! The two policies give the same review two verdicts no other policy gives
//! it: `enforcement: warn` admits it with "would deny" warnings and the
//! `resources` warning; `resources: "off"` (enforcement deny) refuses it with
//! no `resources` warning (the default policy would refuse it with one).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Https, PATIENCE, Pki, Proto, TempDir, eventually, path_str, tailscale_daemonset_review};

/// Admits the review with warnings.
const WARN: &str = "# tailguard policy: roll out in warn mode\nenforcement: warn\n";
/// Refuses it, without the `resources` warning.
const DENY: &str = "enforcement: deny\nrules:\n  resources: \"off\"\n";
/// Invalid at line 3 (`maybe` is no level).
const INVALID: &str = "enforcement: deny\nrules:\n  resources: maybe\n";

/// The server's default `--config-poll-interval`: what a deployment gets.
const POLL: Duration = Duration::from_secs(2);
/// How much later than one poll interval a change may be served on a loaded
/// two-core machine (the read, the parse and the swap take well under 10 ms).
const SLACK: Duration = Duration::from_millis(1500);

/// A ConfigMap volume as the kubelet writes it: `config.yaml` ->
/// `..data/config.yaml`, `..data` -> `..<timestamp>`, the directory holding
/// the files. An update writes a new timestamped directory, swaps `..data`
/// in one rename, adds the user-visible symlinks of new keys, then removes
/// the old directory and the symlinks of removed keys (kubelet's AtomicWriter).
struct ConfigVolume {
    dir: PathBuf,
    version: u32,
    current: Option<String>,
}

impl ConfigVolume {
    fn create(dir: PathBuf, config: &str) -> ConfigVolume {
        std::fs::create_dir_all(&dir).expect("create the volume directory");
        let mut volume = ConfigVolume {
            dir,
            version: 0,
            current: None,
        };
        volume.update(Some(config));
        volume
    }

    /// The path the server is given (`--config`).
    fn path(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    /// `Some(text)`: the key `config.yaml` holds `text`; `None`: the key was
    /// removed from the ConfigMap.
    fn update(&mut self, config: Option<&str>) {
        self.version += 1;
        let name = format!("..2026_05_14_10_20_{:02}.{}", self.version, 100_000_000 + self.version);
        let target = self.dir.join(&name);
        std::fs::create_dir(&target).expect("create the timestamped directory");
        if let Some(text) = config {
            std::fs::write(target.join("config.yaml"), text).expect("write config.yaml");
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).expect("symlink ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        let visible = self.path();
        match config {
            Some(_) if std::fs::symlink_metadata(&visible).is_err() => {
                std::os::unix::fs::symlink("..data/config.yaml", &visible).expect("symlink config.yaml")
            }
            Some(_) => {}
            None => std::fs::remove_file(&visible).expect("remove config.yaml"),
        }
        if let Some(old) = self.current.replace(name) {
            std::fs::remove_dir_all(self.dir.join(old)).expect("remove the old directory");
        }
    }
}

/// Which policy a review was answered under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// [`WARN`]'s.
    Warn,
    /// [`DENY`]'s.
    Deny,
}

/// One review sent during the test.
#[derive(Debug)]
struct Sample {
    sent: Instant,
    received: Instant,
    /// The verdict, or why the answer is neither policy's (or no answer at all).
    verdict: Result<Verdict, String>,
}

fn classify(status: u16, body: &[u8], uid: &str) -> Result<Verdict, String> {
    let text = || String::from_utf8_lossy(body).into_owned();
    if status != 200 {
        return Err(format!("HTTP {status}: {}", text()));
    }
    let review: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON ({e}): {}", text()))?;
    let response = &review["response"];
    if response["uid"] != uid {
        return Err(format!("wrong uid: {review}"));
    }
    let warnings: Vec<&str> = response["warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let resources_warning = warnings.iter().any(|w| w.contains("[resources]"));
    let would_deny = warnings
        .iter()
        .any(|w| w.contains("tailguard would deny (enforcement: warn)"));
    let message = response["status"]["message"].as_str().unwrap_or_default();
    match response["allowed"].as_bool() {
        Some(true) if would_deny && resources_warning => Ok(Verdict::Warn),
        Some(false) if !resources_warning && message.contains("literal-auth-key") => Ok(Verdict::Deny),
        _ => Err(format!("neither policy's verdict: {response}")),
    }
}

/// Sends reviews on one connection until `stop`, recording each; reconnects
/// after a failure (which is recorded).
async fn send_reviews(
    addr: std::net::SocketAddr,
    ca: String,
    proto: Proto,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
) {
    let mut conn: Option<Https> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let uid = format!("policy-reload-{proto:?}-{n}");
        let sent = Instant::now();
        let verdict = match conn.as_mut() {
            Some(c) => {
                let body = tailscale_daemonset_review(&uid);
                match tokio::time::timeout(PATIENCE, c.request("POST", "/validate", Some("application/json"), body))
                    .await
                {
                    Ok(Ok(reply)) => classify(reply.status.as_u16(), &reply.body, &uid),
                    Ok(Err(e)) => Err(format!("request failed: {e}")),
                    Err(_) => Err("request timed out".to_owned()),
                }
            }
            None => match Https::connect(addr, &ca, proto).await {
                Ok(c) => {
                    conn = Some(c);
                    n -= 1;
                    continue;
                }
                Err(e) => Err(format!("connect failed: {e}")),
            },
        };
        if verdict.is_err() {
            conn = None;
        }
        samples.lock().unwrap_or_else(|e| e.into_inner()).push(Sample {
            sent,
            received: Instant::now(),
            verdict,
        });
        // About 200 reviews a second per connection: continuous, and gentle on two shared cores.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for the first review answered with `verdict` after `since`: when it was received.
async fn first_verdict_after(samples: &Mutex<Vec<Sample>>, since: Instant, verdict: Verdict) -> Instant {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.sent >= since && s.verdict == Ok(verdict))
            .map(|s| s.received)
            .min();
        if let Some(at) = found {
            return at;
        }
        assert!(Instant::now() < deadline, "no {verdict:?} verdict within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every review sent in `from..to` got `verdict`; returns how many there were.
fn all_between(samples: &[Sample], from: Instant, to: Instant, verdict: Verdict, what: &str) -> usize {
    let window: Vec<&Sample> = samples.iter().filter(|s| s.sent >= from && s.received <= to).collect();
    let wrong: Vec<&&Sample> = window.iter().filter(|s| s.verdict != Ok(verdict)).collect();
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} reviews did not get {verdict:?}, e.g. {:?}",
        wrong.len(),
        window.len(),
        wrong.first()
    );
    assert!(!window.is_empty(), "{what}: no review in the window");
    window.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_under_load_keeps_the_last_good_policy() {
    let dir = TempDir::new("policy-reload");
    let mut volume = ConfigVolume::create(dir.join("config"), WARN);
    let config = volume.path();
    let pki = Pki::new("policy reload CA");
    let mut server = pki.serve(&dir, &["--config", path_str(&config)]);
    server.wait_ready();
    let metric = |series: &str| server.metric(series);
    let hash = |text: &str| tailguard::server::config_reload::content_hash(text.as_bytes()) as f64;
    assert_eq!(metric("tailguard_config_last_reload_successful"), Some(1.0));
    assert_eq!(metric("tailguard_config_hash"), Some(hash(WARN)));
    assert_eq!(metric("tailguard_config_reloads_total{result=\"success\"}"), Some(0.0));

    // Reviews on an HTTP/1.1 and an HTTP/2 connection, without a pause, from here to the end.
    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = [Proto::Http1, Proto::Http2]
        .into_iter()
        .map(|proto| {
            tokio::spawn(send_reviews(
                server.addr,
                pki.ca.cert_pem.clone(),
                proto,
                samples.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let start = Instant::now();
    first_verdict_after(&samples, start, Verdict::Warn).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. A valid edit: served within a poll interval.
    let to_deny = Instant::now();
    volume.update(Some(DENY));
    let deny_seen = first_verdict_after(&samples, to_deny, Verdict::Deny).await;
    let pick_up_deny = deny_seen - to_deny;
    assert!(
        eventually(PATIENCE, || metric(
            "tailguard_config_reloads_total{result=\"success\"}"
        ) == Some(1.0))
        .await
    );
    assert_eq!(metric("tailguard_config_hash"), Some(hash(DENY)));
    let reloaded = server.logs("policy reloaded");
    assert!(
        reloaded.len() == 1 && reloaded[0]["hash"].as_f64() == Some(hash(DENY)),
        "the reload is logged with the hash /metrics shows: {reloaded:?}"
    );

    // 2. An invalid edit: the last good policy stays, the error is on /metrics and in the log.
    let to_invalid = Instant::now();
    volume.update(Some(INVALID));
    assert!(
        eventually(PATIENCE, || metric(
            "tailguard_config_reloads_total{result=\"failure\"}"
        ) == Some(1.0))
        .await,
        "the invalid policy is counted"
    );
    let noticed_invalid = to_invalid.elapsed();
    assert_eq!(metric("tailguard_config_last_reload_successful"), Some(0.0));
    assert_eq!(
        metric("tailguard_config_hash"),
        Some(hash(DENY)),
        "still the DENY policy"
    );
    // Readiness stays: every replica reads the same ConfigMap (see server::health).
    assert_eq!(server.health_get("/readyz").0, 200);
    // Three more polls: reported once, not at every poll.
    tokio::time::sleep(POLL * 3).await;
    let errors = server.logs("policy file changed but does not load; still serving the previous policy");
    assert_eq!(errors.len(), 1, "one error line per bad content: {errors:?}");
    let error = &errors[0];
    assert_eq!(error["file"], path_str(&config), "{error}");
    let text = error["error"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("{}:line 3", config.display())) && text.contains("rules.resources"),
        "the error names the file, the line and the field: {error}"
    );
    assert_eq!(metric("tailguard_config_reloads_total{result=\"failure\"}"), Some(1.0));

    // 3. The key removed from the ConfigMap (config.yaml gone): the same.
    volume.update(None);
    assert!(
        eventually(PATIENCE, || metric(
            "tailguard_config_reloads_total{result=\"failure\"}"
        ) == Some(2.0))
        .await,
        "the vanished file is counted"
    );
    tokio::time::sleep(POLL).await;
    assert_eq!(metric("tailguard_config_last_reload_successful"), Some(0.0));
    assert_eq!(server.health_get("/readyz").0, 200);

    // 4. Valid again: served, and the error is over.
    let to_warn = Instant::now();
    volume.update(Some(WARN));
    let warn_seen = first_verdict_after(&samples, to_warn, Verdict::Warn).await;
    let pick_up_warn = warn_seen - to_warn;
    assert!(
        eventually(PATIENCE, || metric("tailguard_config_last_reload_successful")
            == Some(1.0))
        .await
    );
    assert_eq!(metric("tailguard_config_reloads_total{result=\"success\"}"), Some(2.0));
    assert_eq!(metric("tailguard_config_hash"), Some(hash(WARN)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }

    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.verdict.is_err()).collect();
    eprintln!(
        "{} reviews during the swaps, {} failed or matching neither policy; picked up after {pick_up_deny:?} \
         (warn -> deny) and {pick_up_warn:?} (gone -> warn), the invalid policy noticed after {noticed_invalid:?} \
         (poll interval {POLL:?})",
        samples.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} reviews failed or got neither policy's verdict, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    // Each policy answers every review sent once its first verdict is out, until the next edit;
    // the invalid edit and the removal change nothing.
    all_between(&samples, start, to_deny, Verdict::Warn, "before the first edit");
    let under_deny = all_between(&samples, deny_seen, to_warn, Verdict::Deny, "deny, invalid, gone");
    all_between(&samples, warn_seen, end, Verdict::Warn, "valid again");
    let during_bad = samples
        .iter()
        .filter(|s| s.sent >= to_invalid && s.received <= to_warn)
        .count();
    assert!(during_bad > 0 && under_deny >= during_bad);
    for pick_up in [pick_up_deny, pick_up_warn] {
        assert!(
            pick_up <= POLL + SLACK,
            "a change must be served within a poll interval ({POLL:?}, plus {SLACK:?} for a loaded machine): {pick_up:?}"
        );
    }
    assert!(server.terminate(PATIENCE), "clean exit");
}
