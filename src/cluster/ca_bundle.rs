//! The CA as `caBundle` of tailguard's webhook configurations
//! (`serve --cert-secret --ca-bundle-webhook`): set with a conditional patch,
//! only where it differs.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::certs::{FIELD_MANAGER, concise};
use crate::certs;

/// A strategic merge patch that sets `caBundle` (base64) on every webhook of a
/// configuration whose value differs, conditional on `resource_version`; `None`
/// when every webhook already has it. `webhooks` is the configuration's
/// `webhooks` array (merged by `name`).
pub fn ca_bundle_patch(webhooks: &Value, resource_version: Option<&str>, ca_bundle: &str) -> Option<Value> {
    let entries: Vec<Value> = webhooks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|webhook| webhook.pointer("/clientConfig/caBundle").and_then(Value::as_str) != Some(ca_bundle))
        .filter_map(|webhook| webhook.get("name").and_then(Value::as_str))
        .map(|name| json!({"name": name, "clientConfig": {"caBundle": ca_bundle}}))
        .collect();
    if entries.is_empty() {
        return None;
    }
    let mut patch = json!({"webhooks": entries});
    if let Some(rv) = resource_version {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    Some(patch)
}

/// What [`set_ca_bundle`] found for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleState {
    /// Patched these kinds (`webhooks` entries changed in total).
    Patched { kinds: Vec<&'static str>, webhooks: usize },
    /// Every webhook already had the CA.
    UpToDate,
    /// Neither a Validating nor a MutatingWebhookConfiguration of that name exists.
    NotFound,
}

/// Sets the caBundle of the Validating and the MutatingWebhookConfiguration
/// named `name` (whichever exist) to `ca_pem`.
pub async fn set_ca_bundle(client: &kube::Client, name: &str, ca_pem: &str) -> anyhow::Result<BundleState> {
    let bundle = certs::ca_bundle(ca_pem);
    let kinds = [
        (
            "ValidatingWebhookConfiguration",
            ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
        ),
        (
            "MutatingWebhookConfiguration",
            ApiResource::erase::<MutatingWebhookConfiguration>(&()),
        ),
    ];
    let mut found = false;
    let mut patched = Vec::new();
    let mut entries = 0;
    for (kind, resource) in kinds {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let Some(object) = api
            .get_opt(name)
            .await
            .map_err(|e| concise(e, &format!("cannot read {kind} {name}")))?
        else {
            continue;
        };
        found = true;
        let webhooks = object.data.get("webhooks").cloned().unwrap_or(Value::Null);
        let Some(patch) = ca_bundle_patch(&webhooks, object.metadata.resource_version.as_deref(), &bundle) else {
            continue;
        };
        let count = patch["webhooks"].as_array().map_or(0, Vec::len);
        api.patch(
            name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Strategic(patch),
        )
        .await
        .map_err(|e| concise(e, &format!("cannot patch the caBundle of {kind} {name}")))?;
        patched.push(kind);
        entries += count;
    }
    Ok(match (found, patched.is_empty()) {
        (false, _) => BundleState::NotFound,
        (true, true) => BundleState::UpToDate,
        (true, false) => BundleState::Patched {
            kinds: patched,
            webhooks: entries,
        },
    })
}

/// Where a webhook configuration's caBundle stands after a sync; a change is
/// logged, a repeat is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Bundle {
    Set,
    Missing,
    Failed(String),
}

impl Bundle {
    pub(super) fn log(&self, name: &str, interval: Duration) {
        match self {
            Bundle::Set => {}
            Bundle::Missing => tracing::warn!(
                webhook_configuration = %name,
                retry_in = ?interval,
                "no Validating or MutatingWebhookConfiguration of this name yet; will retry"
            ),
            Bundle::Failed(error) => tracing::warn!(
                webhook_configuration = %name,
                error = %error,
                retry_in = ?interval,
                "cannot set the caBundle; will retry"
            ),
        }
    }
}

/// Sets the CA as caBundle of one webhook configuration (logging each patch).
pub(super) async fn sync_ca_bundle(client: &kube::Client, name: &str, ca_pem: &str) -> Bundle {
    match set_ca_bundle(client, name, ca_pem).await {
        Ok(BundleState::Patched { kinds, webhooks }) => {
            tracing::info!(
                webhook_configuration = %name,
                kinds = kinds.join(","),
                webhooks,
                "set the caBundle of the webhook configuration"
            );
            Bundle::Set
        }
        Ok(BundleState::UpToDate) => Bundle::Set,
        Ok(BundleState::NotFound) => Bundle::Missing,
        Err(e) => Bundle::Failed(format!("{e:#}")),
    }
}

/// Wait after a failed watch before watching again (the periodic check goes
/// on meanwhile).
const REWATCH: Duration = Duration::from_secs(30);

/// Watches the Validating and MutatingWebhookConfiguration named `name` (a
/// field-selected watch, which RBAC authorizes by `resourceNames`) and
/// `notify`s at every change, so a caBundle edited by hand is set back at
/// once rather than at the next periodic check. Runs until dropped; a watch
/// that cannot run (no `list`/`watch` permission: a chart older than this
/// binary) is logged once and retried every 30 s, leaving the periodic check.
pub(super) async fn watch_configurations(client: kube::Client, name: String, notify: Arc<Notify>) {
    let kinds = [
        ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
        ApiResource::erase::<MutatingWebhookConfiguration>(&()),
    ];
    let watches = kinds.map(|resource| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        follow(api, resource.kind, name.clone(), notify.clone())
    });
    let [validating, mutating] = watches;
    tokio::join!(validating, mutating);
}

async fn follow(api: Api<DynamicObject>, kind: String, name: String, notify: Arc<Notify>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut warned = false;
    loop {
        let stream = watcher::watcher(api.clone(), config.clone());
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = super::next_event(&mut stream).await {
            match event {
                // A change after the initial list, or the list itself (there may be a
                // configuration to fix that appeared while the watch was down).
                Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => {
                    warned = false;
                    notify.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    if !warned {
                        warned = true;
                        tracing::warn!(
                            webhook_configuration = %name,
                            %kind,
                            error = %e,
                            "cannot watch the webhook configuration (needs list and watch on it); \
                             a hand-edited caBundle is set back at the periodic check only"
                        );
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(REWATCH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_bundle_patch_sets_only_what_differs() {
        let webhooks = json!([
            {"name": "a.tailguard.io", "clientConfig": {"url": "https://x"}},
            {"name": "b.tailguard.io", "clientConfig": {"caBundle": "QUJD"}},
            {"name": "c.tailguard.io", "clientConfig": {"caBundle": "old"}},
        ]);
        let patch = ca_bundle_patch(&webhooks, Some("42"), "QUJD").unwrap();
        assert_eq!(
            patch,
            json!({
                "metadata": {"resourceVersion": "42"},
                "webhooks": [
                    {"name": "a.tailguard.io", "clientConfig": {"caBundle": "QUJD"}},
                    {"name": "c.tailguard.io", "clientConfig": {"caBundle": "QUJD"}},
                ]
            })
        );
        let done = json!([{"name": "a", "clientConfig": {"caBundle": "QUJD"}}]);
        assert_eq!(ca_bundle_patch(&done, Some("1"), "QUJD"), None);
        assert_eq!(ca_bundle_patch(&Value::Null, None, "QUJD"), None);
        assert_eq!(ca_bundle_patch(&json!([]), None, "QUJD"), None);
    }
}
