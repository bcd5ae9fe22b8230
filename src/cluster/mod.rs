//! Cluster adapters: a kube client, the namespace cache the rules read, the
//! self-managed certificate Secret, and the audit of existing workloads.

use std::path::Path;

use anyhow::Context as _;

pub mod audit;
pub mod ca_bundle;
pub mod certs;
pub mod namespaces;

/// A kube client from `kubeconfig`, or, without one, from the usual inference
/// (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("cannot use kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no cluster configuration found (KUBECONFIG, ~/.kube/config or in-cluster)")?,
    };
    kube::Client::try_from(config).context("cannot create a Kubernetes client")
}

/// The next item of a watch stream (kube's streams implement `Stream`, which
/// this crate does not import: `WatchStreamExt` brings `poll_next` along).
pub(crate) async fn next_event<S>(stream: &mut std::pin::Pin<&mut S>) -> Option<S::Item>
where
    S: kube::runtime::WatchStreamExt + ?Sized,
{
    std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await
}
