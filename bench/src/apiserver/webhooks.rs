//! Which server answers the chart's webhook configurations, switched between
//! rounds, and how many calls the apiserver made to them (its own metrics).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::harness;
use super::pods::OPTED_IN;

/// How long a switch may take to show in the apiserver.
const PATIENCE: Duration = Duration::from_secs(30);

/// What the webhook configurations point at during a series of creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// No webhook configuration at all.
    None,
    /// The null webhook: reads the uid, answers allowed, never patches.
    Null,
    /// `tailguard serve`.
    Tailguard,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::None, Backend::Null, Backend::Tailguard];

    pub fn name(self) -> &'static str {
        match self {
            Backend::None => "no webhook",
            Backend::Null => "null webhook",
            Backend::Tailguard => "tailguard",
        }
    }
}

/// The chart's webhook configurations rendered twice with the same values
/// (same TLS certificate, caBundle, rules, selectors, matchConditions,
/// failure policy, timeout) but for the URL: tailguard's, and the null
/// webhook's. Both render under the same names, so one replaces the other.
pub struct Registrations {
    pub tailguard: Vec<Value>,
    pub null: Vec<Value>,
    /// The configurations' name (the release's full name).
    pub name: String,
}

impl Registrations {
    /// Registers `to` and waits until the apiserver acts on it: tailguard
    /// injects and denies; the null webhook is called (the apiserver's call
    /// counters move) and does neither; with none, nothing is called.
    pub async fn switch(&self, client: &kube::Client, to: Backend) -> anyhow::Result<Duration> {
        let started = Instant::now();
        match to {
            Backend::None => harness::delete_webhook_configurations(client, &self.name).await,
            Backend::Null => {
                harness::apply_webhook_configurations(client, &self.null).await;
            }
            Backend::Tailguard => {
                harness::apply_webhook_configurations(client, &self.tailguard).await;
            }
        }
        let mut last = String::new();
        while started.elapsed() < PATIENCE {
            let before = Calls::read(client).await?;
            let probe = harness::probe_webhooks(client, OPTED_IN).await;
            let after = Calls::read(client).await?;
            let (validating, mutating) = (after.validating - before.validating, after.mutating - before.mutating);
            let effective = match (&probe, to) {
                (Ok((false, false)), Backend::None) => validating == 0.0 && mutating == 0.0,
                (Ok((false, false)), Backend::Null) => validating > 0.0 && mutating > 0.0,
                (Ok((true, true)), Backend::Tailguard) => true,
                _ => false,
            };
            if effective {
                return Ok(started.elapsed());
            }
            last = format!("probe {probe:?}, calls during it: {validating} validating, {mutating} mutating");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the {} configuration not in effect after {PATIENCE:?}: {last}",
            to.name()
        )
    }
}

/// The apiserver's admission webhook calls to tailguard's webhook names so
/// far (`apiserver_admission_webhook_admission_duration_seconds`), whichever
/// server answered them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Calls {
    pub validating: f64,
    pub mutating: f64,
    /// Seconds the apiserver spent in those calls.
    pub validating_s: f64,
    pub mutating_s: f64,
}

impl Calls {
    pub async fn read(client: &kube::Client) -> anyhow::Result<Calls> {
        let request = axum::http::Request::get("/metrics").body(Vec::new())?;
        let text = client.request_text(request).await.context("the apiserver's /metrics")?;
        Ok(Calls::parse(&text))
    }

    fn parse(text: &str) -> Calls {
        let mut calls = Calls::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_admission_webhook_admission_duration_seconds_") else {
                continue;
            };
            let Some((series, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if !series.contains(".tailguard.io\"") {
                continue;
            }
            let validating = series.contains("type=\"validating\"");
            let slot = match (series.split('{').next(), validating) {
                (Some("count"), true) => &mut calls.validating,
                (Some("count"), false) => &mut calls.mutating,
                (Some("sum"), true) => &mut calls.validating_s,
                (Some("sum"), false) => &mut calls.mutating_s,
                _ => continue,
            };
            *slot += value;
        }
        calls
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Calls) -> Calls {
        Calls {
            validating: self.validating - earlier.validating,
            mutating: self.mutating - earlier.mutating,
            validating_s: self.validating_s - earlier.validating_s,
            mutating_s: self.mutating_s - earlier.mutating_s,
        }
    }

    pub fn add(&mut self, other: &Calls) {
        self.validating += other.validating;
        self.mutating += other.mutating;
        self.validating_s += other.validating_s;
        self.mutating_s += other.mutating_s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_tailguards_webhook_names() {
        let text = r#"# HELP apiserver_admission_webhook_admission_duration_seconds ...
apiserver_admission_webhook_admission_duration_seconds_bucket{name="pods.validate.tailguard.io",operation="CREATE",rejected="false",type="validating",le="0.005"} 3
apiserver_admission_webhook_admission_duration_seconds_sum{name="pods.validate.tailguard.io",operation="CREATE",rejected="false",type="validating"} 0.5
apiserver_admission_webhook_admission_duration_seconds_count{name="pods.validate.tailguard.io",operation="CREATE",rejected="false",type="validating"} 4
apiserver_admission_webhook_admission_duration_seconds_count{name="workloads.validate.tailguard.io",operation="CREATE",rejected="true",type="validating"} 2
apiserver_admission_webhook_admission_duration_seconds_sum{name="namespace.inject.tailguard.io",operation="CREATE",rejected="false",type="admit"} 0.25
apiserver_admission_webhook_admission_duration_seconds_count{name="namespace.inject.tailguard.io",operation="CREATE",rejected="false",type="admit"} 5
apiserver_admission_webhook_admission_duration_seconds_count{name="other.example.com",operation="CREATE",rejected="false",type="admit"} 7
"#;
        let calls = Calls::parse(text);
        assert_eq!(
            (calls.validating, calls.mutating, calls.validating_s, calls.mutating_s),
            (6.0, 5.0, 0.5, 0.25)
        );
    }
}
