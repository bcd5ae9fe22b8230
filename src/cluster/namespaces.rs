//! A watched, in-memory copy of the cluster's namespaces, for the rules that
//! read namespace labels and annotations.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};

use crate::admission::NamespaceSource;
use crate::rules::NamespaceFacts;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Namespaces, listed then watched in the background (reconnecting with
/// kube's default backoff). Until the first full list has arrived it answers
/// [`NamespaceFacts::Unknown`], so namespace-aware rules are skipped rather than
/// judged on an empty cache.
pub struct NamespaceCache {
    store: Store<Namespace>,
    ready: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl NamespaceCache {
    /// Starts listing and watching namespaces (needs `list` and `watch` on
    /// `namespaces`). Must be called within a tokio runtime; never fails: an
    /// unreachable apiserver only keeps the cache from becoming ready.
    pub fn start(client: kube::Client) -> NamespaceCache {
        let (store, writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        let api: Api<Namespace> = Api::all(client);
        let stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(slim)
            .reflect(writer);
        let task = tokio::spawn(drive(stream, ready.clone()));
        NamespaceCache {
            store,
            ready,
            task: Some(task),
        }
    }

    /// True once the first full list of namespaces has been received.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Namespaces in the cache.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

impl Drop for NamespaceCache {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl NamespaceSource for NamespaceCache {
    fn namespace(&self, name: &str) -> NamespaceFacts {
        if !self.is_ready() {
            return NamespaceFacts::Unknown;
        }
        match self.store.get(&ObjectRef::new(name)) {
            Some(ns) => NamespaceFacts::Known(ns),
            None => NamespaceFacts::Missing,
        }
    }

    fn unavailable(&self) -> Option<&'static str> {
        (!self.is_ready()).then_some("tailguard's namespace cache has not synced with the apiserver yet")
    }
}

/// Keeps only what rules may read: no managedFields, no last-applied copy.
fn slim(ns: &mut Namespace) {
    ns.metadata.managed_fields = None;
    if let Some(annotations) = ns.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// Polls the reflector stream forever; the store is updated as a side effect.
async fn drive<S>(stream: S, ready: Arc<AtomicBool>)
where
    S: WatchStreamExt<Item = Result<Event<Namespace>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(event) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        match event {
            Ok(event) => {
                if failing {
                    failing = false;
                    tracing::info!("namespace watch recovered");
                }
                observe(&event, &ready);
            }
            Err(e) => {
                failing = true;
                tracing::warn!(error = %e, ready = ready.load(Ordering::Relaxed), "namespace watch failed; retrying with backoff");
            }
        }
    }
    tracing::warn!("namespace watch ended; the cache is no longer updated");
}

fn observe(event: &Event<Namespace>, ready: &AtomicBool) {
    if matches!(event, Event::InitDone) && !ready.swap(true, Ordering::Relaxed) {
        tracing::info!("namespace cache synced");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn namespace(name: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some([("team".to_string(), "net".to_string())].into()),
                annotations: Some([(LAST_APPLIED.to_string(), "{}".to_string())].into()),
                managed_fields: Some(vec![Default::default()]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn unknown_until_synced_then_known_or_missing() {
        let (store, mut writer) = reflector::store();
        let cache = NamespaceCache {
            store,
            ready: Arc::new(AtomicBool::new(false)),
            task: None,
        };
        let mut ns = namespace("tailscale");
        slim(&mut ns);
        assert!(ns.metadata.managed_fields.is_none());
        assert!(ns.metadata.annotations.as_ref().is_some_and(|a| a.is_empty()));
        for event in [Event::Init, Event::InitApply(ns)] {
            writer.apply_watcher_event(&event);
            observe(&event, &cache.ready);
        }
        assert!(matches!(cache.namespace("tailscale"), NamespaceFacts::Unknown));
        writer.apply_watcher_event(&Event::InitDone);
        observe(&Event::InitDone, &cache.ready);
        assert!(cache.is_ready());
        let facts = cache.namespace("tailscale");
        assert_eq!(facts.label("team"), Some("net"));
        assert!(matches!(cache.namespace("other"), NamespaceFacts::Missing));
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn unreachable_apiserver_keeps_cache_unready() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let Ok(uri) = "http://127.0.0.1:1".parse() else {
            panic!("uri");
        };
        let client = kube::Client::try_from(kube::Config::new(uri)).expect("client");
        let cache = NamespaceCache::start(client);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!cache.is_ready());
        assert!(matches!(cache.namespace("default"), NamespaceFacts::Unknown));
        drop(cache);
    }
}
