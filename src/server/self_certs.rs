//! `--cert-secret` (self-managed certificates): checking its flags and installing the Secret's certificates.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::{Metrics, ServeArgs, tls};
use crate::certs::{self, SecretCerts};
use crate::cluster::certs::SelfCerts;

/// What `serve()` needs to run the self-managed certificate loop.
pub(super) struct SelfCertsTask {
    pub(super) client: kube::Client,
    pub(super) config: SelfCerts,
    pub(super) dir: PathBuf,
}

/// Checks the `--cert-secret` flags: a namespace, at least one valid name.
pub(super) fn self_certs_config(args: &ServeArgs, secret: &str) -> anyhow::Result<SelfCerts> {
    let flags = &args.self_certs;
    let namespace = flags
        .cert_namespace
        .clone()
        .filter(|ns| !ns.trim().is_empty())
        .with_context(|| {
            format!(
                "--cert-secret {secret}: the Secret's namespace is unknown: pass --cert-namespace NS or set \
                 POD_NAMESPACE (in a pod, from the downward API: fieldRef metadata.namespace)"
            )
        })?;
    if flags.cert_dns.is_empty() {
        anyhow::bail!(
            "--cert-secret {secret}: at least one --cert-dns NAME is required (the Service's DNS names, \
             e.g. tailguard, tailguard.{namespace}, tailguard.{namespace}.svc)"
        );
    }
    for name in &flags.cert_dns {
        certs::check_name(name).with_context(|| format!("--cert-dns {name}"))?;
    }
    Ok(SelfCerts {
        namespace,
        secret: secret.to_string(),
        names: flags.cert_dns.clone(),
        webhooks: flags.ca_bundle_webhooks.clone(),
        interval: flags.cert_check_interval.max(Duration::from_millis(100)),
    })
}

/// With `--cert-secret`: writes the Secret's certificates into `dir` (only
/// files whose content changed) and serves them from there.
pub(super) fn installer(
    dir: PathBuf,
    files: tls::CertFiles,
    resolver: Arc<tls::CertResolver>,
    metrics: Arc<Metrics>,
) -> impl FnMut(&SecretCerts) -> anyhow::Result<()> + Send {
    move |secret: &SecretCerts| {
        for (name, contents, private) in [
            (certs::CA_CERT_FILE, &secret.ca.cert_pem, false),
            (certs::TLS_KEY_FILE, &secret.serving.key_pem, true),
            (certs::TLS_CERT_FILE, &secret.serving.cert_pem, false),
        ] {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_ref() != Some(contents) {
                certs::write_pem(&path, contents, private)?;
            }
        }
        let loaded = files
            .load()
            .context("cannot load the certificate written from the Secret")?;
        let not_after = loaded.not_after.map(certs::unix_seconds);
        if resolver.install(loaded, &metrics) {
            tracing::info!(
                cert = %files.cert.display(),
                not_after,
                "serving the certificate from the Secret"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_cert_flags() {
        let args = ServeArgs::try_parse_from([
            "--cert-secret",
            "tg-certs",
            "--cert-namespace",
            "tailguard",
            "--cert-dns",
            "tailguard",
            "--cert-dns",
            "tailguard.tailguard.svc",
            "--ca-bundle-webhook",
            "tailguard",
            "--ca-bundle-webhook",
            "tailguard-mutating",
        ])
        .unwrap();
        let config = self_certs_config(&args, "tg-certs").unwrap();
        assert_eq!(config.namespace, "tailguard");
        assert_eq!(config.names, ["tailguard", "tailguard.tailguard.svc"]);
        assert_eq!(config.webhooks, ["tailguard", "tailguard-mutating"]);
        assert_eq!(config.interval, Duration::from_secs(30));
        for conflicting in [&["--dev"][..], &["--tls-cert", "a", "--tls-key", "b"]] {
            let mut argv = vec!["--cert-secret", "s", "--cert-dns", "x"];
            argv.extend_from_slice(conflicting);
            assert!(ServeArgs::try_parse_from(argv).is_err(), "{conflicting:?}");
        }
        // --cert-dns and --ca-bundle-webhook only with --cert-secret.
        assert!(ServeArgs::try_parse_from(["--dev", "--cert-dns", "x"]).is_err());
        assert!(ServeArgs::try_parse_from(["--dev", "--ca-bundle-webhook", "x"]).is_err());
        assert!(ServeArgs::try_parse_from(["--tls-cert", "a", "--tls-key", "b", "--cert-dns", "x"]).is_err());
        // No names, bad names, no namespace: clear errors.
        let no_dns = ServeArgs::try_parse_from(["--cert-secret", "s", "--cert-namespace", "ns"]).unwrap();
        let e = format!("{:#}", self_certs_config(&no_dns, "s").unwrap_err());
        assert!(e.contains("--cert-dns"), "{e}");
        let bad =
            ServeArgs::try_parse_from(["--cert-secret", "s", "--cert-namespace", "ns", "--cert-dns", "a b"]).unwrap();
        assert!(self_certs_config(&bad, "s").is_err());
        let mut no_ns = ServeArgs::try_parse_from(["--cert-secret", "s", "--cert-dns", "x"]).unwrap();
        no_ns.self_certs.cert_namespace = None;
        let e = format!("{:#}", self_certs_config(&no_ns, "s").unwrap_err());
        assert!(e.contains("--cert-namespace") && e.contains("POD_NAMESPACE"), "{e}");
    }
}
