//! The flags of `tailguard serve` and the parsers of their duration and size values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

/// Flags of `tailguard serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// HTTPS webhook address [default: 0.0.0.0:8443; with --dev 127.0.0.1:8443]. Port 0 picks a free port.
    #[arg(long, env = "TAILGUARD_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Plain-HTTP address of /healthz, /readyz and /metrics [default: 0.0.0.0:8080; with --dev 127.0.0.1:8080].
    #[arg(long, env = "TAILGUARD_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,

    /// Serving certificate (PEM, leaf first); reloaded when it changes.
    #[arg(
        long,
        env = "TAILGUARD_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "dev",
        required_unless_present_any = ["dev", "cert_secret"]
    )]
    pub tls_cert: Option<PathBuf>,

    /// Private key of the serving certificate (PEM).
    #[arg(
        long,
        env = "TAILGUARD_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert",
        conflicts_with = "dev"
    )]
    pub tls_key: Option<PathBuf>,

    /// Development mode: generate (or reuse) a CA and a localhost certificate in --certs-dir,
    /// print the caBundle, listen on 127.0.0.1.
    #[arg(long, env = "TAILGUARD_DEV")]
    pub dev: bool,

    /// Where --dev keeps ca.crt, ca.key, tls.crt and tls.key; with --cert-secret, where the
    /// certificates from the Secret are written (ca.crt, tls.crt, tls.key) and served from.
    #[arg(long, env = "TAILGUARD_CERTS_DIR", value_name = "DIR", default_value = "certs")]
    pub certs_dir: PathBuf,

    /// Extra DNS name or IP address for the --dev serving certificate (repeatable).
    #[arg(long = "dev-san", value_name = "NAME")]
    pub dev_sans: Vec<String>,

    /// Policy file (YAML).
    #[arg(long, env = "TAILGUARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Watch namespaces through the apiserver (in-cluster account or kubeconfig) so that
    /// namespace-aware rules run. Without it they are skipped.
    #[arg(long, env = "TAILGUARD_CLUSTER")]
    pub cluster: bool,

    /// Kubeconfig file to reach the apiserver with (implies --cluster).
    #[arg(long, env = "TAILGUARD_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Self-managed certificates (boxed: keeps the `Command` enum small).
    #[command(flatten)]
    pub self_certs: Box<SelfCertArgs>,

    /// Limits and timeouts (boxed: keeps the `Command` enum small).
    #[command(flatten)]
    pub limits: Box<ServeLimits>,

    /// The background audit of existing workloads (boxed: keeps the `Command` enum small).
    #[command(flatten)]
    pub audit: Box<AuditFlags>,
}

/// Flags of the background audit (the chart's `audit` values).
#[derive(Debug, Clone, clap::Args)]
pub struct AuditFlags {
    /// Re-evaluate the cluster's existing workloads this often (`0s`: never). Needs
    /// cluster access; the results are `tailguard_audit_*` gauges on /metrics.
    #[arg(long, env = "TAILGUARD_AUDIT_INTERVAL", value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub audit_interval: Duration,

    /// Also write the results as wgpolicyk8s.io/v1alpha2 PolicyReports, one per namespace.
    #[arg(long, env = "TAILGUARD_POLICY_REPORTS")]
    pub policy_reports: bool,
}

/// Flags of `tailguard serve --cert-secret` (the chart's `certificates.mode: self`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Self-managed certificates")]
pub struct SelfCertArgs {
    /// Manage the certificates in this Secret (type kubernetes.io/tls: tls.crt, tls.key, ca.crt,
    /// ca.key): created with a new CA if absent, shared by every replica, renewed before expiry.
    /// Needs cluster access (implies --cluster).
    #[arg(
        long,
        env = "TAILGUARD_CERT_SECRET",
        value_name = "NAME",
        conflicts_with_all = ["dev", "tls_cert", "tls_key"]
    )]
    pub cert_secret: Option<String>,

    /// Namespace of the --cert-secret Secret (in a pod: POD_NAMESPACE from the downward API).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NS")]
    pub cert_namespace: Option<String>,

    /// DNS name (or IP address) of the serving certificate (repeatable; at least one with
    /// --cert-secret), e.g. the Service's `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc`.
    #[arg(long = "cert-dns", value_name = "NAME", requires = "cert_secret", conflicts_with_all = ["dev", "tls_cert"])]
    pub cert_dns: Vec<String>,

    /// Validating/MutatingWebhookConfiguration whose webhooks get the CA as caBundle (repeatable;
    /// both kinds are tried by name; a missing one is retried).
    #[arg(
        long = "ca-bundle-webhook",
        value_name = "NAME",
        requires = "cert_secret",
        conflicts_with_all = ["dev", "tls_cert"]
    )]
    pub ca_bundle_webhooks: Vec<String>,

    /// How often the Secret (renewal, rotation by another replica) and the caBundles are checked.
    #[arg(long, env = "TAILGUARD_CERT_CHECK_INTERVAL", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub cert_check_interval: Duration,
}

/// Limits and timeouts of `tailguard serve`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits and timeouts")]
pub struct ServeLimits {
    /// Largest request body accepted (bytes; Ki/Mi suffixes allowed); larger gets 413.
    #[arg(long, env = "TAILGUARD_MAX_BODY_BYTES", value_name = "BYTES", default_value = "8Mi", value_parser = parse_size)]
    pub max_body_bytes: usize,

    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "TAILGUARD_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How long to keep accepting new connections after SIGTERM (while /readyz fails and
    /// endpoints are updated). HTTP/2 connections get GOAWAY at once; HTTP/1.1 connections
    /// stay until the delay ends, each response then carrying `Connection: close`.
    #[arg(long, env = "TAILGUARD_SHUTDOWN_DELAY", value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Time allowed for a TLS handshake.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// Time allowed for HTTP/1 request headers (hyper also counts idle keep-alive time
    /// against it). Longer than the apiserver's 90 s idle timeout, so the apiserver closes
    /// an idle connection first: a close from this side races with a review being written
    /// onto it, which the apiserver does not retry. Slow-header connections hold no
    /// request, so at --max-connections they are the idle ones closed to make room.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Time allowed to receive a request body.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Most concurrent webhook connections. At the limit, the connection idle the
    /// longest is closed to make room; with none idle, clients wait in the listen backlog.
    #[arg(long, env = "TAILGUARD_MAX_CONNECTIONS", value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,

    /// Close a connection (HTTP/2 included) with no request for this long (longer than the
    /// apiserver's 90 s, for the reason given at --header-read-timeout).
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How often the certificate files are checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub cert_poll_interval: Duration,

    /// How often the --config policy file is checked for changes (`0s`: read only at start).
    /// A valid change is served to new reviews; an invalid one is logged and counted
    /// (`tailguard_config_reloads_total{result="failure"}`) and the last good policy stays.
    #[arg(long, env = "TAILGUARD_CONFIG_POLL_INTERVAL", value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub config_poll_interval: Duration,
}

#[derive(Parser)]
struct ServeOnly {
    #[command(flatten)]
    args: ServeArgs,
}

impl ServeArgs {
    /// Parses `serve` flags (without the program and subcommand names), e.g. for in-process tests.
    pub fn try_parse_from<I, T>(args: I) -> Result<ServeArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("serve")).chain(args.into_iter().map(Into::into));
        ServeOnly::try_parse_from(argv).map(|s| s.args)
    }
}

/// `15s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration {text:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("invalid duration {text:?}"))
}

/// `8388608`, `512Ki`, `8Mi`, `1Gi` (also `k`, `M`, `G` as powers of 1000).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number.parse().map_err(|_| format!("invalid size {text:?}"))?;
    let factor: usize = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" | "K" => 1000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return Err(format!("invalid size {text:?} (use Ki, Mi or Gi)")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_size("8Mi"), Ok(8 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("8 MB").is_err());
        assert!(parse_size("99999999999999999999Gi").is_err());
    }

    #[test]
    fn flags() {
        let args = ServeArgs::try_parse_from(["--dev", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(args.dev);
        assert_eq!(args.limits.max_body_bytes, 8 << 20);
        assert_eq!(args.limits.shutdown_grace, Duration::from_secs(15));
        assert_eq!(args.limits.config_poll_interval, Duration::from_secs(2));
        assert!(ServeArgs::try_parse_from(["--dev", "--tls-cert", "a", "--tls-key", "b"]).is_err());
        assert!(ServeArgs::try_parse_from(["--tls-cert", "a"]).is_err());
    }
}
