//! A steady load of reviews through the apiserver while a fault is injected:
//! dry-run creates (the apiserver calls the webhooks for dry runs; nothing is
//! stored), each of a [`Probe`] that knows the verdict it must get, judged
//! into right, flagged, wrong, failed and unavailable, per phase between
//! [`Load::mark`]s.
//!
//! The requests go through kube's client untyped (`Client::send`) so the
//! response's `Warning` headers (tailguard's notes, among them "namespace
//! facts unavailable") are read too.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use serde_json::Value;

/// How long one create may take before it counts as unanswered.
const REQUEST_PATIENCE: Duration = Duration::from_secs(40);
/// After an expectation changes, how long the old verdict is still accepted
/// (the change travels to tailguard through its namespace watch).
pub const PROPAGATION_GRACE: Duration = Duration::from_millis(500);

/// The verdict a probe must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Allowed,
    /// Refused by tailguard, naming this rule.
    Denied(&'static str),
    /// Admitted with the Tailscale sidecar injected.
    Injected,
}

/// One kind of object the load creates, over and over.
#[derive(Debug, Clone)]
pub struct Probe {
    pub name: String,
    /// A Pod or apps/v1 workload, with metadata.namespace set.
    pub object: Value,
    pub expect: Expect,
}

impl Probe {
    pub fn new(name: &str, object: Value, expect: Expect) -> Probe {
        Probe {
            name: name.to_string(),
            object,
            expect,
        }
    }
}

/// What the apiserver answered.
#[derive(Debug, Clone)]
pub enum Got {
    Allowed {
        warnings: Vec<String>,
        injected: bool,
    },
    /// Refused by a tailguard webhook (its message).
    Denied(String),
    /// The apiserver could not get an answer from the webhook (failurePolicy Fail).
    CallFailed(String),
    /// Any other error status from the apiserver itself (etcd timeouts, 5xx).
    ApiserverError(u16, String),
    /// No HTTP answer at all (the apiserver is down) or none within the patience.
    Unreachable(String),
}

impl Got {
    /// One line for failure messages and reports.
    pub fn describe(&self) -> String {
        match self {
            Got::Allowed { warnings, injected } => {
                format!(
                    "allowed (injected: {injected}, {} warning(s): {warnings:?})",
                    warnings.len()
                )
            }
            Got::Denied(message) => format!("denied: {message}"),
            Got::CallFailed(message) => format!("webhook call failed: {message}"),
            Got::ApiserverError(status, message) => format!("apiserver error {status}: {message}"),
            Got::Unreachable(why) => format!("no answer: {why}"),
        }
    }
}

/// How a sample is judged against its probe's expectation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// The verdict it must get (or the one before a change, within the grace).
    Right,
    /// Not judged on namespace facts, and said so: admitted with the
    /// "namespace facts unavailable" warning where a namespace rule would
    /// have denied.
    Flagged,
    /// A verdict tailguard must never give: a false positive, a silent false
    /// negative, a pod admitted without its sidecar.
    Wrong,
    /// A failed admission: the webhook call failed, or tailguard refused
    /// because it could not know (an opted-in pod while namespaces are unknown).
    Failed,
    /// The apiserver itself did not answer or failed before/after admission.
    Unavailable,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub probe: usize,
    /// Since the load started.
    pub sent: Duration,
    pub took: Duration,
    pub got: Got,
}

/// A probe's expectation changed: made from `from` (the test started the
/// change) until `until` (the test saw it take effect); either verdict is
/// right for a request sent in between.
#[derive(Debug, Clone)]
struct Change {
    from: Duration,
    until: Duration,
    probe: usize,
    expect: Expect,
}

struct Shared {
    client: kube::Client,
    probes: Vec<Probe>,
    started: Instant,
    stop: AtomicBool,
    next: AtomicUsize,
    samples: Mutex<Vec<Sample>>,
    changes: Mutex<Vec<Change>>,
    marks: Mutex<Vec<(Duration, String)>>,
}

/// The running load; [`Load::stop`] ends it and judges every sample.
pub struct Load {
    shared: Arc<Shared>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `workers` loops, each sending the probes round-robin, one
    /// request at a time, waiting `pause` between requests.
    pub fn start(client: kube::Client, probes: Vec<Probe>, workers: usize, pause: Duration) -> Load {
        assert!(!probes.is_empty(), "a load needs probes");
        let shared = Arc::new(Shared {
            client,
            probes,
            started: Instant::now(),
            stop: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            samples: Mutex::new(Vec::new()),
            changes: Mutex::new(Vec::new()),
            marks: Mutex::new(vec![(Duration::ZERO, "start".to_string())]),
        });
        let workers = (0..workers)
            .map(|_| {
                let shared = shared.clone();
                tokio::spawn(async move {
                    while !shared.stop.load(Ordering::Relaxed) {
                        let index = shared.next.fetch_add(1, Ordering::Relaxed) % shared.probes.len();
                        let sent = shared.started.elapsed();
                        let got = create(&shared.client, &shared.probes[index].object).await;
                        let took = shared.started.elapsed().saturating_sub(sent);
                        let sample = Sample {
                            probe: index,
                            sent,
                            took,
                            got,
                        };
                        shared.samples.lock().expect("samples").push(sample);
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load { shared, workers }
    }

    /// Starts a new phase named `name` (a fault injected, a fault cleared).
    pub fn mark(&self, name: &str) {
        let at = self.shared.started.elapsed();
        self.shared.marks.lock().expect("marks").push((at, name.to_string()));
    }

    /// From now on probe `name` must get `expect` (after [`PROPAGATION_GRACE`]).
    pub fn expect(&self, name: &str, expect: Expect) {
        let now = self.now();
        self.expect_since(name, expect, now);
    }

    /// Time on the load's clock, to pass to [`Load::expect_since`].
    pub fn now(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Probe `name` must get `expect` from now on; a change the test started at
    /// `since` (from [`Load::now`]) and has now seen take effect: in between,
    /// either verdict is right.
    pub fn expect_since(&self, name: &str, expect: Expect, since: Duration) {
        let change = Change {
            from: since,
            until: self.now(),
            probe: self.probe_index(name),
            expect,
        };
        self.shared.changes.lock().expect("changes").push(change);
    }

    /// Samples answered so far.
    pub fn answered(&self) -> usize {
        self.shared.samples.lock().expect("samples").len()
    }

    /// Waits until `n` more samples have been answered and judged right (or
    /// `timeout` passes): the load is flowing again.
    pub async fn wait_right(&self, n: usize, timeout: Duration) -> bool {
        let from = self.answered();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let right = {
                let samples = self.shared.samples.lock().expect("samples");
                let changes = self.shared.changes.lock().expect("changes");
                samples[from.min(samples.len())..]
                    .iter()
                    .filter(|s| judge(&self.shared.probes, &changes, s) == Judged::Right)
                    .count()
            };
            if right >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    fn probe_index(&self, name: &str) -> usize {
        self.shared
            .probes
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no probe named {name}"))
    }

    /// Stops the load (in-flight requests are awaited) and judges every sample.
    pub async fn stop(self) -> Tally {
        self.shared.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.expect("load worker");
        }
        let samples = std::mem::take(&mut *self.shared.samples.lock().expect("samples"));
        let changes = self.shared.changes.lock().expect("changes").clone();
        let mut marks = self.shared.marks.lock().expect("marks").clone();
        marks.push((self.shared.started.elapsed(), "end".to_string()));
        let judged = samples
            .into_iter()
            .map(|s| {
                let j = judge(&self.shared.probes, &changes, &s);
                (s, j)
            })
            .collect();
        Tally {
            probes: self.shared.probes.iter().map(|p| p.name.clone()).collect(),
            samples: judged,
            marks,
        }
    }
}

/// Dry-run create of `object`; what the apiserver said.
async fn create(client: &kube::Client, object: &Value) -> Got {
    let (Some(api_version), Some(kind), Some(namespace)) = (
        object["apiVersion"].as_str(),
        object["kind"].as_str(),
        object["metadata"]["namespace"].as_str(),
    ) else {
        panic!("a probe needs apiVersion, kind and metadata.namespace: {object}");
    };
    let plural = format!("{}s", kind.to_ascii_lowercase());
    let base = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let url = format!("{base}/namespaces/{namespace}/{plural}?dryRun=All&fieldManager=tailguard-load");
    let body = serde_json::to_vec(object).expect("probe JSON");
    let request = axum::http::Request::post(url)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(body))
        .expect("request");
    let answer = async {
        let response = client.send(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let warnings: Vec<String> = response
            .headers()
            .get_all(axum::http::header::WARNING)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, warnings, bytes))
    };
    let (status, warnings, bytes) = match tokio::time::timeout(REQUEST_PATIENCE, answer).await {
        Err(_) => return Got::Unreachable(format!("no answer in {REQUEST_PATIENCE:?}")),
        Ok(Err(e)) => return Got::Unreachable(e),
        Ok(Ok(answer)) => answer,
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        let injected = body["spec"]["initContainers"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "tailscale"));
        return Got::Allowed { warnings, injected };
    }
    let message = body["message"]
        .as_str()
        .map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), str::to_string);
    if message.contains("failed calling webhook") {
        Got::CallFailed(message)
    } else if message.contains("admission webhook") && message.contains("tailguard.io\" denied the request") {
        Got::Denied(message)
    } else {
        Got::ApiserverError(status, message)
    }
}

/// The expectations a sample of `probe` sent at `sent` and answered `took`
/// later may meet: the one in force when it was sent; the one before it if
/// it was sent while a change was being made or less than
/// [`PROPAGATION_GRACE`] after; and one whose change began while the request
/// was in flight.
fn expectations(probes: &[Probe], changes: &[Change], probe: usize, sent: Duration, took: Duration) -> Vec<Expect> {
    let mut current = probes[probe].expect.clone();
    let mut previous = None;
    let mut racing = None;
    for change in changes.iter().filter(|c| c.probe == probe) {
        if sent < change.from {
            if sent + took >= change.from && racing.is_none() {
                racing = Some(change.expect.clone());
            }
            continue;
        }
        if sent < change.until + PROPAGATION_GRACE {
            previous = Some(current.clone());
        }
        current = change.expect.clone();
    }
    [Some(current), previous, racing].into_iter().flatten().collect()
}

fn judge(probes: &[Probe], changes: &[Change], sample: &Sample) -> Judged {
    let expected = expectations(probes, changes, sample.probe, sample.sent, sample.took);
    // Sent before a change but answered after it started: either side is right.
    let judge_one = |expect: &Expect| judge_against(expect, &sample.got);
    let all: Vec<Judged> = expected.iter().map(judge_one).collect();
    for order in [Judged::Right, Judged::Flagged, Judged::Failed, Judged::Unavailable] {
        if all.contains(&order) {
            return order;
        }
    }
    Judged::Wrong
}

/// The note tailguard adds when namespace-aware rules could not run.
const FACTS_UNAVAILABLE: &str = "were not applied to this object";
/// What tailguard says when it refuses an opted-in pod it cannot place.
const CANNOT_TELL: [&str; 2] = ["cannot read namespace", "is not in tailguard's namespace cache yet"];

fn judge_against(expect: &Expect, got: &Got) -> Judged {
    match (expect, got) {
        (_, Got::CallFailed(_)) => Judged::Failed,
        (_, Got::ApiserverError(..) | Got::Unreachable(_)) => Judged::Unavailable,
        (Expect::Allowed, Got::Allowed { .. }) => Judged::Right,
        (Expect::Injected, Got::Allowed { injected: true, .. }) => Judged::Right,
        (Expect::Injected, Got::Denied(message)) if CANNOT_TELL.iter().any(|c| message.contains(c)) => Judged::Failed,
        (Expect::Denied(rule), Got::Denied(message)) if message.contains(&format!("[{rule}]")) => Judged::Right,
        (Expect::Denied(_), Got::Allowed { warnings, .. })
            if warnings.iter().any(|w| w.contains(FACTS_UNAVAILABLE)) =>
        {
            Judged::Flagged
        }
        _ => Judged::Wrong,
    }
}

/// Every sample, judged, with the phases the test marked.
pub struct Tally {
    pub probes: Vec<String>,
    pub samples: Vec<(Sample, Judged)>,
    /// (since start, name), from "start" to "end".
    pub marks: Vec<(Duration, String)>,
}

/// Counts of one phase.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub sent: usize,
    pub right: usize,
    pub flagged: usize,
    pub wrong: usize,
    pub failed: usize,
    pub unavailable: usize,
}

impl Counts {
    fn add(&mut self, judged: Judged) {
        self.sent += 1;
        match judged {
            Judged::Right => self.right += 1,
            Judged::Flagged => self.flagged += 1,
            Judged::Wrong => self.wrong += 1,
            Judged::Failed => self.failed += 1,
            Judged::Unavailable => self.unavailable += 1,
        }
    }
}

impl Tally {
    fn mark_at(&self, name: &str) -> Duration {
        self.marks
            .iter()
            .find(|(_, n)| n == name)
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("no mark {name}"))
    }

    /// Counts of samples sent from mark `from` up to the next mark.
    pub fn phase(&self, from: &str) -> Counts {
        let start = self.mark_at(from);
        let end = self
            .marks
            .iter()
            .map(|(at, _)| *at)
            .filter(|at| *at > start)
            .min()
            .unwrap_or(Duration::MAX);
        self.counts(|s| s.sent >= start && s.sent < end)
    }

    /// Counts of every sample.
    pub fn total(&self) -> Counts {
        self.counts(|_| true)
    }

    fn counts(&self, filter: impl Fn(&Sample) -> bool) -> Counts {
        let mut counts = Counts::default();
        for (_, judged) in self.samples.iter().filter(|(s, _)| filter(s)) {
            counts.add(*judged);
        }
        counts
    }

    /// From mark `from` to the answer of the last sample not judged right
    /// (zero if every sample after the mark was right).
    pub fn recovery_after(&self, from: &str) -> Duration {
        let start = self.mark_at(from);
        self.samples
            .iter()
            .filter(|(s, j)| *j != Judged::Right && s.sent + s.took >= start)
            .map(|(s, _)| (s.sent + s.took).saturating_sub(start))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The samples judged `judged`, for failure messages.
    pub fn examples(&self, judged: Judged, n: usize) -> String {
        self.samples
            .iter()
            .filter(|(_, j)| *j == judged)
            .take(n)
            .map(|(s, _)| {
                format!(
                    "  {} at {:?} (took {:?}): {}",
                    self.probes[s.probe],
                    s.sent,
                    s.took,
                    s.got.describe()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One line per phase, printed for the test log and SECURITY.md's figures.
    pub fn report(&self, case: &str) -> String {
        let mut out = format!("{case}: fault suite tally\n");
        for (at, name) in &self.marks {
            if name == "end" {
                continue;
            }
            let c = self.phase(name);
            out.push_str(&format!(
                "  phase {name:<16} from {:>7.2}s: sent {:>4}, right {:>4}, flagged {:>3}, wrong {}, failed {}, apiserver unavailable {}\n",
                at.as_secs_f64(),
                c.sent,
                c.right,
                c.flagged,
                c.wrong,
                c.failed,
                c.unavailable
            ));
        }
        let t = self.total();
        out.push_str(&format!(
            "  total: sent {}, right {}, flagged {}, wrong {}, failed {}, apiserver unavailable {}",
            t.sent, t.right, t.flagged, t.wrong, t.failed, t.unavailable
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent_ms: u64, got: Got) -> Sample {
        Sample {
            probe: 0,
            sent: Duration::from_millis(sent_ms),
            took: Duration::from_millis(5),
            got,
        }
    }

    fn allowed(warnings: &[&str]) -> Got {
        Got::Allowed {
            warnings: warnings.iter().map(|w| w.to_string()).collect(),
            injected: false,
        }
    }

    #[test]
    fn judging() {
        let probes = [Probe::new("ds", Value::Null, Expect::Allowed)];
        let change = [Change {
            from: Duration::from_millis(1000),
            until: Duration::from_millis(1000),
            probe: 0,
            expect: Expect::Denied("pod-security-level"),
        }];
        let denied =
            Got::Denied("admission webhook \"x.tailguard.io\" denied the request: - [pod-security-level] no".into());
        let j = |ms, got| judge(&probes, &change, &sample(ms, got));
        assert_eq!(j(100, allowed(&[])), Judged::Right);
        assert_eq!(j(100, denied.clone()), Judged::Wrong, "a false positive");
        // In flight while the change was made: either verdict.
        assert_eq!(j(997, denied.clone()), Judged::Right);
        assert_eq!(j(900, denied.clone()), Judged::Wrong);
        // Within the grace after it: still either.
        assert_eq!(j(1200, allowed(&[])), Judged::Right);
        // After the grace: the old verdict is wrong unless flagged.
        assert_eq!(j(2000, allowed(&[])), Judged::Wrong);
        assert_eq!(
            j(
                2000,
                allowed(&["299 - \"tailguard: ...: pod-security-level were not applied to this object\""])
            ),
            Judged::Flagged
        );
        assert_eq!(j(2000, denied), Judged::Right);
        assert_eq!(j(2000, Got::CallFailed("x".into())), Judged::Failed);
        assert_eq!(j(2000, Got::Unreachable("refused".into())), Judged::Unavailable);
        // A change that took from 1 s to 1.5 s to take effect: either verdict until the grace after it.
        let window = [Change {
            from: Duration::from_millis(1000),
            until: Duration::from_millis(1500),
            probe: 0,
            expect: Expect::Denied("pod-security-level"),
        }];
        let w = |ms, got| judge(&probes, &window, &sample(ms, got));
        assert_eq!(w(1200, allowed(&[])), Judged::Right);
        assert_eq!(w(1900, allowed(&[])), Judged::Right);
        assert_eq!(w(2100, allowed(&[])), Judged::Wrong);
        let injected = [Probe::new("pod", Value::Null, Expect::Injected)];
        let refused = Got::Denied("tailguard cannot read namespace apps yet".into());
        assert_eq!(judge(&injected, &[], &sample(0, refused)), Judged::Failed);
        assert_eq!(judge(&injected, &[], &sample(0, allowed(&[]))), Judged::Wrong);
    }
}
