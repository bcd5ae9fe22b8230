//! The policy the webhook serves, and its reload while serving.
//!
//! `--config FILE` is read at start (an invalid policy is a start-up error)
//! and then polled every `--config-poll-interval`: a ConfigMap edited with
//! `kubectl edit` reaches a running pod without a restart, the kubelet
//! writing a new timestamped directory and swapping the `..data` symlink.
//! Each poll reads the file's bytes (it is small) and compares them with the
//! previous poll's, so the symlink swap, a rename over the file and an
//! in-place write are all seen, whatever their timestamps and inodes say.
//!
//! A changed file is parsed with the same code as at start
//! ([`Config::from_file_text`]). Valid: it replaces the served policy for
//! the reviews that start from then on, while reviews in flight finish with
//! the one they started with; the background audit is woken to judge the
//! cluster again under it. Invalid, unreadable or gone: the last good policy
//! keeps serving, the error is logged once per change (`policy file changed
//! but does not load; still serving the previous policy`, with the file, the
//! line and the message) and shown on `/metrics`
//! (`tailguard_config_reloads_total{result="failure"}`,
//! `tailguard_config_last_reload_successful 0`) until the file is valid again.
//!
//! Readiness is not affected, on purpose: every replica reads the same
//! ConfigMap, so failing readiness on a bad policy would take the whole fleet
//! out of the Service at once and turn a typo in a policy into an admission
//! outage (with `failurePolicy: Fail`, every Tailscale workload refused). The
//! last good policy is a policy that was reviewed and deployed; serving it is
//! the safe choice, and the metric is what an alert should watch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use super::metrics::Metrics;
use crate::config::{Config, ConfigError};

/// The served policy: read lock-free by every review, replaced by the reloader.
pub struct Policy {
    current: ArcSwap<Config>,
    /// The same policy for those who wait for a change (the background audit).
    changes: watch::Sender<Arc<Config>>,
}

impl Policy {
    pub fn new(config: Config) -> Policy {
        let config = Arc::new(config);
        Policy {
            current: ArcSwap::new(config.clone()),
            changes: watch::Sender::new(config),
        }
    }

    /// The policy for one review, held until the review ends (a reload in the
    /// meantime does not change it). Lock-free and, on the fast path, without
    /// touching the policy's reference count; hold it only for synchronous
    /// work (use [`Policy::current`] to move it elsewhere).
    pub fn load(&self) -> Guard<Arc<Config>> {
        self.current.load()
    }

    /// The policy now served, as an owned handle.
    pub fn current(&self) -> Arc<Config> {
        self.current.load_full()
    }

    /// Tells each change of the served policy (the receiver starts at the current one).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.changes.subscribe()
    }

    /// Serves `config` to every review that starts from now on.
    pub fn replace(&self, config: Config) {
        let config = Arc::new(config);
        self.current.store(config.clone());
        self.changes.send_replace(config);
    }
}

/// Which policy text is served (`tailguard_config_hash`, and the `hash` of the
/// reload log line): the top 53 bits of the 64-bit FNV-1a of `bytes`, so that
/// the float a scraper reads holds it exactly.
pub fn content_hash(bytes: &[u8]) -> u64 {
    let fnv1a = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    fnv1a >> 11
}

/// What a poll read: the text, or the read error (kind and message).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Text(String),
    Error(std::io::ErrorKind, String),
}

/// What a poll found.
#[derive(Debug)]
pub enum Step {
    /// The file reads as at the previous poll: nothing to do.
    Unchanged,
    /// The file changed and holds a valid policy: serve it.
    Reloaded { config: Box<Config>, hash: u64 },
    /// The file reads as the served policy again after a change that did not
    /// load: nothing to swap, the error is over.
    Restored,
    /// The file changed and cannot be read or is not a valid policy: the
    /// served policy stays.
    Failed(ConfigError),
}

/// The decision of the reload: compares what each poll reads with what the
/// previous one read and with the policy being served ([`Reloader::observe`]
/// is pure; [`Reloader::poll`] reads the file and calls it).
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    /// The text of the policy being served.
    served: String,
    /// What the last poll read. A poll that reads the same does nothing, so a
    /// bad file is reported once, not at every poll.
    last: Seen,
}

impl Reloader {
    /// Watching `path`, whose text `served` is the policy loaded at start.
    pub fn new(path: PathBuf, served: String) -> Reloader {
        Reloader {
            path,
            last: Seen::Text(served.clone()),
            served,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file (blocking; small) and decides.
    pub fn poll(&mut self) -> Step {
        let read = std::fs::read_to_string(&self.path);
        self.observe(read)
    }

    /// Decides from what a poll read.
    pub fn observe(&mut self, read: std::io::Result<String>) -> Step {
        let seen = match &read {
            Ok(text) => Seen::Text(text.clone()),
            Err(e) => Seen::Error(e.kind(), e.to_string()),
        };
        if seen == self.last {
            return Step::Unchanged;
        }
        self.last = seen;
        match read {
            Err(source) => Step::Failed(ConfigError::Read {
                path: self.path.display().to_string(),
                source,
            }),
            Ok(text) if text == self.served => Step::Restored,
            Ok(text) => match Config::from_file_text(&self.path, &text) {
                Ok(config) => {
                    let hash = content_hash(text.as_bytes());
                    self.served = text;
                    Step::Reloaded {
                        config: Box::new(config),
                        hash,
                    }
                }
                Err(e) => Step::Failed(e),
            },
        }
    }
}

/// Polls the policy file every `interval` and swaps the served policy when it
/// changes to a valid one; see the module documentation for the rest.
pub async fn watch(mut reloader: Reloader, policy: Arc<Policy>, metrics: Arc<Metrics>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        // The read and the parse run on the blocking pool, off the reviews' threads.
        let Ok((back, step)) = tokio::task::spawn_blocking(move || {
            let step = reloader.poll();
            (reloader, step)
        })
        .await
        else {
            // The poll panicked (it does not): stop watching, keep serving.
            tracing::error!("the policy file watcher failed; the policy is no longer reloaded");
            return;
        };
        reloader = back;
        let file = reloader.path().display().to_string();
        match step {
            Step::Unchanged => {}
            Step::Reloaded { config, hash } => {
                let enforcement = config.enforcement;
                policy.replace(*config);
                metrics.config_reloaded(true);
                metrics.set_config_loaded(hash, crate::certs::unix_seconds(SystemTime::now()));
                tracing::info!(%file, hash, %enforcement, "policy reloaded");
            }
            Step::Restored => {
                metrics.config_reloaded(true);
                tracing::info!(%file, "policy file is valid again: it is the policy being served");
            }
            Step::Failed(e) => {
                metrics.config_reloaded(false);
                tracing::error!(
                    %file,
                    error = %e,
                    "policy file changed but does not load; still serving the previous policy"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Level, RuleId};
    use std::io::{Error, ErrorKind};

    const GOOD: &str = "rules:\n  resources: deny\n";
    const OTHER: &str = "rules:\n  resources: \"off\"\n";
    const BAD: &str = "rules:\n  resources: maybe\n";

    fn reloader() -> Reloader {
        Reloader::new(PathBuf::from("/etc/tailguard/config/config.yaml"), GOOD.to_owned())
    }

    fn text(s: &str) -> std::io::Result<String> {
        Ok(s.to_owned())
    }

    #[test]
    fn config_reload_swaps_only_on_a_valid_change() {
        let mut r = reloader();
        assert!(matches!(r.observe(text(GOOD)), Step::Unchanged));
        match r.observe(text(OTHER)) {
            Step::Reloaded { config, hash } => {
                assert_eq!(config.level(RuleId::Resources), Level::Off);
                assert_eq!(hash, content_hash(OTHER.as_bytes()));
            }
            other => panic!("expected a reload, got {other:?}"),
        }
        // Polled again, the same text: nothing.
        assert!(matches!(r.observe(text(OTHER)), Step::Unchanged));
    }

    #[test]
    fn config_reload_reports_an_invalid_change_once_with_file_and_line() {
        let mut r = reloader();
        let Step::Failed(e) = r.observe(text(BAD)) else {
            panic!("an invalid policy must fail");
        };
        let e = e.to_string();
        assert!(
            e.contains("/etc/tailguard/config/config.yaml:line 2") && e.contains("rules.resources"),
            "{e}"
        );
        // Once per distinct content, not at every poll.
        for _ in 0..3 {
            assert!(matches!(r.observe(text(BAD)), Step::Unchanged));
        }
        // Another bad content is another report.
        assert!(matches!(r.observe(text("imagez: []\n")), Step::Failed(_)));
        // Back to the policy being served: nothing to swap, the error is over.
        assert!(matches!(r.observe(text(GOOD)), Step::Restored));
        assert!(matches!(r.observe(text(GOOD)), Step::Unchanged));
    }

    #[test]
    fn config_reload_keeps_the_policy_when_the_file_is_gone_or_unreadable() {
        let mut r = reloader();
        let gone = || {
            Err(Error::new(
                ErrorKind::NotFound,
                "No such file or directory (os error 2)",
            ))
        };
        let Step::Failed(e) = r.observe(gone()) else {
            panic!("a vanished file must fail");
        };
        assert!(
            e.to_string()
                .starts_with("cannot read config /etc/tailguard/config/config.yaml"),
            "{e}"
        );
        assert!(matches!(r.observe(gone()), Step::Unchanged));
        assert!(matches!(
            r.observe(Err(Error::new(
                ErrorKind::InvalidData,
                "stream did not contain valid UTF-8"
            ))),
            Step::Failed(_)
        ));
        // It comes back with a new valid policy: loaded.
        assert!(matches!(r.observe(text(OTHER)), Step::Reloaded { .. }));
        // A bad change after a reload, then the reloaded text again: restored, not reloaded.
        assert!(matches!(r.observe(text(BAD)), Step::Failed(_)));
        assert!(matches!(r.observe(text(OTHER)), Step::Restored));
    }

    #[test]
    fn config_reload_reads_a_kubelet_style_symlink_swap() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path();
        let version = |name: &str, body: &str| {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("config.yaml"), body).expect("write");
        };
        let swap = |name: &str| {
            let tmp = dir.join("..data_tmp");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(name, &tmp).expect("symlink");
            std::fs::rename(&tmp, dir.join("..data")).expect("rename");
        };
        version("..2026_01_01_00_00_00.1", GOOD);
        swap("..2026_01_01_00_00_00.1");
        std::os::unix::fs::symlink("..data/config.yaml", dir.join("config.yaml")).expect("symlink");
        // What the server reads: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>.
        let mut r = Reloader::new(dir.join("config.yaml"), GOOD.to_owned());
        assert!(matches!(r.poll(), Step::Unchanged));
        version("..2026_01_01_00_01_00.2", OTHER);
        swap("..2026_01_01_00_01_00.2");
        assert!(matches!(r.poll(), Step::Reloaded { .. }));
        std::fs::remove_dir_all(dir.join("..2026_01_01_00_01_00.2")).expect("rm");
        assert!(matches!(r.poll(), Step::Failed(ConfigError::Read { .. })));
    }

    #[test]
    fn config_policy_swap_leaves_held_policies_alone() {
        let policy = Policy::new(Config::from_yaml(GOOD).expect("valid"));
        let mut changes = policy.subscribe();
        let held = policy.load();
        let owned = policy.current();
        policy.replace(Config::from_yaml(OTHER).expect("valid"));
        // A review in flight keeps the policy it started with.
        assert_eq!(held.level(RuleId::Resources), Level::Deny);
        assert_eq!(owned.level(RuleId::Resources), Level::Deny);
        // New reviews and subscribers see the new one.
        assert_eq!(policy.load().level(RuleId::Resources), Level::Off);
        assert!(changes.has_changed().unwrap_or(false));
        assert_eq!(changes.borrow_and_update().level(RuleId::Resources), Level::Off);
    }

    #[test]
    fn config_hash_is_fnv1a_in_53_bits() {
        assert_eq!(content_hash(b""), 0xcbf2_9ce4_8422_2325 >> 11);
        assert_eq!(content_hash(b"a"), 0xaf63_dc4c_8601_ec8c >> 11);
        assert!(content_hash(&[0xff; 64]) < 1 << 53);
        assert_ne!(content_hash(GOOD.as_bytes()), content_hash(OTHER.as_bytes()));
    }
}
