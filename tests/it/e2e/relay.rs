//! A TCP relay on 127.0.0.1 in front of the apiserver, for one client
//! (tailguard): the test closes it to cut that client off (open connections
//! dropped, new ones closed at once) while everyone else still reaches the
//! apiserver, and opens it again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Bumped on every close: relayed connections end when it changes.
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays to `upstream` (`https://127.0.0.1:PORT`), open.
    pub async fn start(upstream: &str) -> Relay {
        let target: SocketAddr = upstream
            .trim_start_matches("https://")
            .parse()
            .unwrap_or_else(|e| panic!("apiserver address {upstream}: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let open = Arc::new(AtomicBool::new(true));
        let (cut, _) = watch::channel(0u64);
        let task = tokio::spawn(accept(listener, target, open.clone(), cut.clone()));
        Relay { addr, open, cut, task }
    }

    /// `https://127.0.0.1:PORT` for a kubeconfig.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Drops every relayed connection and refuses new ones until [`Relay::open`].
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, open: Arc<AtomicBool>, cut: watch::Sender<u64>) {
    while let Ok((mut client, _)) = listener.accept().await {
        if !open.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let mut cut = cut.subscribe();
        tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                _ = cut.changed() => {}
            }
        });
    }
}
