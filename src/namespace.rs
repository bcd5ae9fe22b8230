//! What tailguard knows about an object's namespace (its labels and
//! annotations, from the cluster cache or from the manifests checked), a leaf
//! that the rules, injection and admission read.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use serde_json::Value;

/// What tailguard knows about the object's namespace.
#[derive(Debug, Clone, Default)]
pub enum NamespaceFacts {
    /// No cluster access, or the cache has not synced: namespace-aware rules are skipped.
    #[default]
    Unknown,
    /// The cache is synced and has no such namespace (yet).
    Missing,
    Known(Arc<Namespace>),
}

impl NamespaceFacts {
    pub fn label(&self, key: &str) -> Option<&str> {
        match self {
            NamespaceFacts::Known(ns) => ns.metadata.labels.as_ref()?.get(key).map(String::as_str),
            _ => None,
        }
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        match self {
            NamespaceFacts::Known(ns) => ns.metadata.annotations.as_ref()?.get(key).map(String::as_str),
            _ => None,
        }
    }

    pub fn is_known(&self) -> bool {
        !matches!(self, NamespaceFacts::Unknown)
    }
}

/// Namespaces declared in the manifests being checked or injected: offline,
/// they stand in for the cluster's (labels and annotations included).
#[derive(Debug, Default)]
pub struct Declared(BTreeMap<String, Arc<Namespace>>);

impl Declared {
    /// Records `object` if it is a Namespace; an error when it is one that
    /// does not decode. Other kinds are ignored.
    pub fn add(&mut self, object: &Value) -> Result<(), serde_json::Error> {
        if object.get("kind").and_then(Value::as_str) != Some("Namespace") {
            return Ok(());
        }
        let ns = serde_json::from_value::<Namespace>(object.clone())?;
        if let Some(name) = ns.metadata.name.clone() {
            self.0.insert(name, Arc::new(ns));
        }
        Ok(())
    }

    /// The declared namespace called `name`, if any.
    pub fn get(&self, name: Option<&str>) -> Option<&Arc<Namespace>> {
        self.0.get(name?)
    }
}
