//! Certificate material for the webhook: a CA, serving certificates signed by
//! it, development certificates kept in a directory across restarts, and the
//! few X.509 facts the server reads (validity, subject).
//!
//! Generation returns PEM strings and touches no file; [`ensure_dev_certs`] and
//! [`write_pem`] are the only functions here that do I/O.
//!
//! - `issue`: CA and serving certificates (rcgen), checking them, PEM helpers.
//! - `dev`: the `--dev` certificate directory.
//! - `secret`: the self-managed certificate Secret (what it holds, carrying out a plan).
//! - `secret_plan`: deciding what to do with that Secret.
//! - `x509`: the X.509 facts tailguard reads, and signing as a stored CA (x509-parser).

use std::path::PathBuf;
use std::time::Duration;

mod dev;
mod issue;
mod secret;
mod secret_plan;
mod x509;

pub use dev::{
    DEV_CA_NAME, DEV_CA_VALIDITY, DEV_CERT_VALIDITY, DEV_NAMES, DevCerts, DevCertsOutcome, ensure_dev_certs,
};
pub use issue::{
    ca_bundle, certified_key, first_cert, generate_ca, issue_serving_cert, verify_serving_cert, write_pem,
};
pub use secret::{
    Reissue, SELF_CA_NAME, SELF_CA_VALIDITY, SELF_CERT_VALIDITY, SecretCerts, SecretData, SecretPlan, carry_out,
    check_name, issue_for_names,
};
pub use secret_plan::{bundle_union, plan_secret};
pub use x509::{CertInfo, unix_seconds};

/// File names `tailguard serve --dev` (and `tailguard certs`) use in the certificate directory.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const TLS_CERT_FILE: &str = "tls.crt";
pub const TLS_KEY_FILE: &str = "tls.key";

/// Certificates expiring sooner than this are not reused.
pub const MIN_REMAINING_VALIDITY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> CertError {
    CertError::Invalid(message.into())
}

/// A certificate authority: its certificate and private key, PEM.
#[derive(Clone)]
pub struct CaPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPem")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A serving certificate and its private key, PEM.
#[derive(Clone)]
pub struct CertPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPem")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl PartialEq for CaPem {
    fn eq(&self, other: &CaPem) -> bool {
        self.cert_pem == other.cert_pem && self.key_pem == other.key_pem
    }
}
impl Eq for CaPem {}

impl PartialEq for CertPem {
    fn eq(&self, other: &CertPem) -> bool {
        self.cert_pem == other.cert_pem && self.key_pem == other.key_pem
    }
}
impl Eq for CertPem {}
