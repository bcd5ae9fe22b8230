//! The one AdmissionReview builder: a v1 review of an object as the apiserver
//! sends it, for the pure review functions (`admission::validate`/`mutate`)
//! and for the server over HTTPS.
//!
//! `Review::new("CREATE", object)` fills the request from the object: `kind`
//! and `resource` (and `requestKind`/`requestResource`) from its `apiVersion`
//! and `kind`, `name` and `namespace` from its metadata, a fixed `uid`, the
//! admin as `userInfo`, no `oldObject`, `dryRun: false`, and the operation's
//! `options`. The setters change one field each.

use serde_json::{Value, json};

/// An AdmissionReview v1 under construction (the `request`).
#[derive(Debug, Clone)]
pub struct Review {
    request: Value,
}

/// The `uid` of a review unless the test sets one.
pub const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

impl Review {
    /// `operation` (`CREATE`, `UPDATE`, `DELETE`) of `object`.
    pub fn new(operation: &str, object: Value) -> Review {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let (group, version) = match object["apiVersion"].as_str().unwrap_or("v1").split_once('/') {
            Some((group, version)) => (group.to_owned(), version.to_owned()),
            None => (String::new(), object["apiVersion"].as_str().unwrap_or("v1").to_owned()),
        };
        let resource = format!("{}s", kind.to_lowercase());
        let options = match operation {
            "CREATE" => json!({"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}),
            "UPDATE" => json!({"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions"}),
            "DELETE" => json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"}),
            _ => Value::Null,
        };
        let gvk = json!({"group": group, "version": version, "kind": kind});
        let gvr = json!({"group": group, "version": version, "resource": resource});
        let mut request = json!({
            "uid": UID,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": options,
        });
        for key in ["name", "namespace"] {
            if let Some(value) = object["metadata"][key].as_str() {
                request[key] = json!(value);
            }
        }
        Review { request }
    }

    /// A CREATE of `object`.
    pub fn create(object: Value) -> Review {
        Review::new("CREATE", object)
    }

    pub fn uid(self, uid: &str) -> Review {
        self.set("uid", json!(uid))
    }

    /// The request's namespace (the object's, unless set here).
    pub fn namespace(self, namespace: &str) -> Review {
        self.set("namespace", json!(namespace))
    }

    pub fn old_object(self, old: Value) -> Review {
        self.set("oldObject", old)
    }

    /// Any other field of the request.
    pub fn set(mut self, key: &str, value: Value) -> Review {
        self.request[key] = value;
        self
    }

    /// The whole review as JSON.
    pub fn json(&self) -> Value {
        envelope(self.request.clone())
    }

    /// The review's bytes, as a request body.
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(&self.json()).expect("review JSON")
    }

    /// The review as text, as a request body.
    pub fn body(&self) -> String {
        self.json().to_string()
    }
}

/// `request` as it is, wrapped in the AdmissionReview envelope (for requests
/// malformed on purpose).
pub fn envelope(request: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// A CREATE of a Tailscale DaemonSet whose auth key is a literal (denied).
pub fn tailscale_daemonset_review(uid: &str) -> String {
    Review::create(json!({
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
    }))
    .uid(uid)
    .body()
}
