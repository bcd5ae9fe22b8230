//! The namespaces the reviews live in: handed to the server by a tiny fake
//! apiserver (list + a watch that stays open), and to the in-process loop as a
//! `NamespaceSource` with the same content.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tailguard::admission::NamespaceSource;
use tailguard::rules::NamespaceFacts;
use tokio::net::TcpListener;

use crate::bodies::{NS_APPS, NS_INJECT, NS_TAILSCALE};

pub fn all() -> Vec<Namespace> {
    let ns = |name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]| Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            resource_version: Some("1".to_owned()),
            labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    vec![
        ns(
            NS_TAILSCALE,
            &[("pod-security.kubernetes.io/enforce", "privileged")],
            &[],
        ),
        ns(NS_APPS, &[("pod-security.kubernetes.io/enforce", "baseline")], &[]),
        ns(
            NS_INJECT,
            &[
                ("tailguard.io/inject", "enabled"),
                ("pod-security.kubernetes.io/enforce", "restricted"),
            ],
            &[
                ("tailguard.io/exit-node", "100.64.0.1"),
                ("tailguard.io/tags", "tag:egress"),
                ("tailguard.io/auth-secret", "payments-tailscale"),
            ],
        ),
        ns("default", &[], &[]),
        ns("kube-system", &[], &[]),
    ]
}

/// In-process namespace facts, as a synced cache would answer.
pub struct Known(BTreeMap<String, Arc<Namespace>>);

impl Known {
    pub fn new() -> Known {
        Known(
            all()
                .into_iter()
                .map(|ns| (ns.metadata.name.clone().unwrap_or_default(), Arc::new(ns)))
                .collect(),
        )
    }
}

impl NamespaceSource for Known {
    fn namespace(&self, name: &str) -> NamespaceFacts {
        match self.0.get(name) {
            Some(ns) => NamespaceFacts::Known(ns.clone()),
            None => NamespaceFacts::Missing,
        }
    }
}

/// A response body: a whole JSON document, or a watch that never sends anything.
enum ApiBody {
    Full(Option<Bytes>),
    Watch,
}

impl hyper::body::Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            // Nothing changes: the watch stays open (the server's reflector keeps its list).
            ApiBody::Watch => Poll::Pending,
        }
    }
}

/// Serves `GET /api/v1/namespaces` (list, and `watch=true`) over plain HTTP on
/// loopback; returns its address. Runs until the process exits.
pub async fn fake_apiserver() -> anyhow::Result<SocketAddr> {
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "NamespaceList",
        "metadata": {"resourceVersion": "1"},
        "items": all(),
    });
    let list = Bytes::from(serde_json::to_vec(&list)?);
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let list = list.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let list = list.clone();
                async move { Ok::<_, Infallible>(answer(&req, list)) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn answer(req: &Request<Incoming>, list: Bytes) -> Response<ApiBody> {
    let json = |status: StatusCode, body: ApiBody| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(body)
            .unwrap_or_else(|_| Response::new(ApiBody::Full(None)))
    };
    if req.uri().path() != "/api/v1/namespaces" {
        let status = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
        return json(StatusCode::NOT_FOUND, ApiBody::Full(Some(Bytes::from_static(status))));
    }
    let watch = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    if watch {
        json(StatusCode::OK, ApiBody::Watch)
    } else {
        json(StatusCode::OK, ApiBody::Full(Some(list)))
    }
}

/// A kubeconfig pointing at the fake apiserver.
pub fn kubeconfig(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n"
    )
}
