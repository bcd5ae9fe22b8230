//! What tailguard knows about an object's namespace (its labels and
//! annotations, from the cluster cache or from the manifests checked), a leaf
//! that the rules, injection and admission read.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;

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
