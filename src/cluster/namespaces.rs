//! A watched, in-memory copy of the cluster's namespaces, for the rules that
//! read namespace labels and annotations.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event};

use crate::admission::NamespaceSource;
use crate::rules::NamespaceFacts;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Wait before listing again after the watch broke; doubles up to [`RELIST_MAX`].
const RELIST_FIRST: Duration = Duration::from_millis(250);
/// Kept short: every second spent here after the apiserver is back is a
/// second of reviews without namespace facts (namespaces are a cheap list).
const RELIST_MAX: Duration = Duration::from_secs(4);

/// Namespaces, listed then watched in the background. Answers
/// [`NamespaceFacts::Unknown`] (so namespace-aware rules are skipped, and
/// reviews say so) until the first full list has arrived, and again from the
/// moment the watch fails until a new full list has arrived: events may have
/// been missed meanwhile (a label changed while the apiserver restarted), so
/// the cache is never read while it may be stale.
pub struct NamespaceCache {
    store: Store<Namespace>,
    state: Arc<SyncState>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Whether the store can be trusted.
#[derive(Default)]
struct SyncState {
    /// A full list has arrived at least once.
    listed: AtomicBool,
    /// The watch failed since the last full list.
    broken: AtomicBool,
}

impl SyncState {
    fn in_sync(&self) -> bool {
        self.listed.load(Ordering::Relaxed) && !self.broken.load(Ordering::Relaxed)
    }
}

impl NamespaceCache {
    /// Starts listing and watching namespaces (needs `list` and `watch` on
    /// `namespaces`). Must be called within a tokio runtime; never fails: an
    /// unreachable apiserver only keeps the cache from becoming ready.
    pub fn start(client: kube::Client) -> NamespaceCache {
        let (store, writer) = reflector::store();
        let state = Arc::new(SyncState::default());
        let task = tokio::spawn(drive(Api::all(client), writer, state.clone()));
        NamespaceCache {
            store,
            state,
            task: Some(task),
        }
    }

    /// True while the cache holds a full list kept current by an unbroken watch.
    pub fn is_ready(&self) -> bool {
        self.state.in_sync()
    }

    /// Why namespace facts cannot be used right now, if they cannot.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if !self.state.listed.load(Ordering::Relaxed) {
            Some("tailguard's namespace cache has not synced with the apiserver yet")
        } else if self.state.broken.load(Ordering::Relaxed) {
            Some("tailguard's namespace watch broke and it is listing namespaces again (facts may be stale)")
        } else {
            None
        }
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
        self.not_ready_reason()
    }
}

/// Keeps only what rules may read: no managedFields, no last-applied copy.
fn slim(ns: &mut Namespace) {
    ns.metadata.managed_fields = None;
    if let Some(annotations) = ns.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// Lists then watches, forever. Any watch error marks the cache broken and
/// starts over with a full list (after a short backoff); the store keeps
/// its old contents until that list is complete, but they are not read.
async fn drive(api: Api<Namespace>, mut writer: Writer<Namespace>, state: Arc<SyncState>) {
    let mut backoff = RELIST_FIRST;
    let mut broken_since: Option<Instant> = None;
    loop {
        let stream = watcher::watcher(api.clone(), watcher::Config::default()).modify(slim);
        if let Err(e) = follow(stream, &mut writer, &state, &mut broken_since, &mut backoff).await {
            let was_in_sync = state.in_sync();
            state.broken.store(true, Ordering::Relaxed);
            broken_since.get_or_insert_with(Instant::now);
            tracing::warn!(
                error = %e,
                was_in_sync,
                retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                "namespace watch failed; namespace-aware rules are skipped (and reviews say so) until namespaces are listed again"
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RELIST_MAX);
    }
}

/// Applies the stream's events to the store until its first error.
async fn follow<S>(
    stream: S,
    writer: &mut Writer<Namespace>,
    state: &SyncState,
    broken_since: &mut Option<Instant>,
    backoff: &mut Duration,
) -> Result<(), watcher::Error>
where
    S: WatchStreamExt<Item = Result<Event<Namespace>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = super::next_event(&mut stream).await {
        let event = event?;
        writer.apply_watcher_event(&event);
        if matches!(event, Event::InitDone) {
            *backoff = RELIST_FIRST;
            observe_listed(state, broken_since.take());
        }
    }
    Ok(())
}

fn observe_listed(state: &SyncState, broken_since: Option<Instant>) {
    let first = !state.listed.swap(true, Ordering::Relaxed);
    state.broken.store(false, Ordering::Relaxed);
    match broken_since {
        Some(since) => tracing::info!(
            unsynced_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
            "namespace cache listed again after its watch broke; namespace-aware rules apply again"
        ),
        None if first => tracing::info!("namespace cache synced"),
        None => {}
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
            state: Arc::new(SyncState::default()),
            task: None,
        };
        let mut ns = namespace("tailscale");
        slim(&mut ns);
        assert!(ns.metadata.managed_fields.is_none());
        assert!(ns.metadata.annotations.as_ref().is_some_and(|a| a.is_empty()));
        for event in [Event::Init, Event::InitApply(ns.clone())] {
            writer.apply_watcher_event(&event);
        }
        assert!(matches!(cache.namespace("tailscale"), NamespaceFacts::Unknown));
        assert!(cache.unavailable().is_some_and(|why| why.contains("not synced")));
        writer.apply_watcher_event(&Event::InitDone);
        observe_listed(&cache.state, None);
        assert!(cache.is_ready());
        assert_eq!(cache.unavailable(), None);
        let facts = cache.namespace("tailscale");
        assert_eq!(facts.label("team"), Some("net"));
        assert!(matches!(cache.namespace("other"), NamespaceFacts::Missing));
        assert_eq!(cache.len(), 1);

        // The watch broke: the store still holds the namespace, but it is not read.
        cache.state.broken.store(true, Ordering::Relaxed);
        assert!(!cache.is_ready());
        assert!(matches!(cache.namespace("tailscale"), NamespaceFacts::Unknown));
        assert!(cache.unavailable().is_some_and(|why| why.contains("watch broke")));
        // Listed again (the label changed meanwhile): read again, with the new facts.
        let mut relabelled = ns;
        relabelled.metadata.labels = Some([("team".to_string(), "edge".to_string())].into());
        for event in [Event::Init, Event::InitApply(relabelled), Event::InitDone] {
            writer.apply_watcher_event(&event);
        }
        observe_listed(&cache.state, Some(Instant::now()));
        assert_eq!(cache.namespace("tailscale").label("team"), Some("edge"));
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
