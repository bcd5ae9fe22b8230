//! Idle connections: each connection records when it last had a request in
//! flight, so the accept loop can close idle ones. An HTTP/2 connection that
//! never opens a stream answers keep-alive pings forever; without this, a few
//! of them would hold every `--max-connections` slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use axum::http;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One connection's activity.
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when the connection last went idle (or opened).
    idle_since_ms: AtomicU64,
    evict: Notify,
}

impl Activity {
    pub fn new(epoch: Instant) -> Arc<Activity> {
        let a = Arc::new(Activity {
            epoch,
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            evict: Notify::new(),
        });
        a.touch();
        a
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.idle_since_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long the connection has been idle (`None` while a request is in flight).
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.idle_since_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(self.now_ms().saturating_sub(since)))
    }

    /// Asks the connection to close if it is (still) idle.
    pub fn evict(&self) {
        self.evict.notify_one();
    }

    /// Completes when the connection should close: idle for `timeout`, or
    /// evicted while idle.
    pub async fn wind_down(&self, timeout: Duration) {
        loop {
            let wait = match self.idle_for() {
                Some(idle) if idle >= timeout => return,
                Some(idle) => timeout - idle,
                None => timeout,
            };
            tokio::select! {
                () = self.evict.notified() => {
                    if self.idle_for().is_some() {
                        return;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Marks a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A hyper service that records its connection's activity and, on an
/// HTTP/1 connection once shutdown has begun, answers with `Connection:
/// close` so the client closes after reading the response.
#[derive(Clone)]
pub struct Tracked<S> {
    pub inner: S,
    pub activity: Arc<Activity>,
    /// Set when draining starts; `None` where `Connection: close` does not
    /// apply (HTTP/2, which winds down with GOAWAY).
    pub close_when: Option<Arc<AtomicBool>>,
}

impl<S, R, B> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, request: R) -> Self::Future {
        let guard = InFlight::start(&self.activity);
        let future = self.inner.call(request);
        let close_when = self.close_when.clone();
        Box::pin(async move {
            let mut response = future.await;
            if let (Ok(response), Some(flag)) = (response.as_mut(), close_when)
                && flag.load(Ordering::Relaxed)
            {
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            drop(guard);
            response
        })
    }
}

/// The accept loop's view of its connections.
#[derive(Default)]
pub struct Connections {
    open: Vec<Weak<Activity>>,
}

impl Connections {
    pub fn add(&mut self, activity: &Arc<Activity>) {
        self.open.retain(|w| w.strong_count() > 0);
        self.open.push(Arc::downgrade(activity));
    }

    /// The connection idle the longest, if any is idle.
    pub fn most_idle(&mut self) -> Option<Arc<Activity>> {
        self.open.retain(|w| w.strong_count() > 0);
        self.open
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|a| a.idle_for().map(|idle| (idle, a)))
            .max_by_key(|(idle, _)| *idle)
            .map(|(_, a)| a)
    }
}
