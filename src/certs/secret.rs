//! Self-managed certificates (`serve --cert-secret`): what the one Secret shared
//! by every replica holds, what to do with it, and carrying that out.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;

use super::{
    CA_CERT_FILE, CA_KEY_FILE, CaPem, CertError, CertPem, TLS_CERT_FILE, TLS_KEY_FILE, generate_ca, invalid,
    issue_serving_cert, unix_seconds,
};

/// Common name of the CA `serve --cert-secret` generates.
pub const SELF_CA_NAME: &str = "tailguard webhook CA";
pub const SELF_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const SELF_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A Secret's `data`, as bytes by key (`ca.crt`, `ca.key`, `tls.crt`, `tls.key`).
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// What the certificate Secret holds once it is good: the CA and the serving pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretCerts {
    /// `ca.crt` is the signing CA first, then any older CA that is still trusted
    /// during a CA rotation; it is the caBundle. `ca.key` is the signing CA's key.
    pub ca: CaPem,
    pub serving: CertPem,
}

impl SecretCerts {
    /// The Secret `data` (type `kubernetes.io/tls`).
    pub fn to_data(&self) -> SecretData {
        [
            (CA_CERT_FILE, &self.ca.cert_pem),
            (CA_KEY_FILE, &self.ca.key_pem),
            (TLS_CERT_FILE, &self.serving.cert_pem),
            (TLS_KEY_FILE, &self.serving.key_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
    }
}

/// What to do with the certificate Secret ([`plan_secret`](super::plan_secret)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretPlan {
    /// There is no Secret: generate a CA and a serving certificate and create it
    /// (another replica may win that race; then re-read and plan again).
    Create,
    /// Everything in it is good: serve it as is.
    Reuse(SecretCerts),
    /// The CA is good (and stays: the caBundle does not change); the serving
    /// certificate is replaced by a new one from it, for `names`.
    Reissue {
        ca: CaPem,
        names: Vec<String>,
        reason: Reissue,
    },
    /// The CA is unusable or due for rotation: a new CA. The old CA certificate
    /// stays in the bundle while it is valid (`keep_trusting`), and so does the
    /// current serving certificate if it is still good (`serving`), so that
    /// replicas and an apiserver that have not seen the new CA yet keep working;
    /// the serving certificate moves to the new CA at its next renewal.
    NewCa {
        reason: String,
        keep_trusting: Option<String>,
        serving: Option<CertPem>,
    },
}

/// Why a serving certificate is reissued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reissue {
    /// Missing, unreadable, key not matching, or not signed by the CA.
    Unusable(String),
    /// Less than a third of its validity is left (or it has expired).
    Expiring { not_after: SystemTime },
    /// It does not name these requested names.
    MissingNames(Vec<String>),
}

impl SecretPlan {
    /// One word for logs: `create`, `reuse`, `reissue`, `renew`, `new-ca`.
    pub fn action(&self) -> &'static str {
        match self {
            SecretPlan::Create => "create",
            SecretPlan::Reuse(_) => "reuse",
            SecretPlan::Reissue {
                reason: Reissue::Expiring { .. },
                ..
            } => "renew",
            SecretPlan::Reissue { .. } => "reissue",
            SecretPlan::NewCa { .. } => "new-ca",
        }
    }

    /// Why (empty for `create` and `reuse`).
    pub fn reason(&self) -> String {
        match self {
            SecretPlan::Create | SecretPlan::Reuse(_) => String::new(),
            SecretPlan::Reissue { reason, .. } => match reason {
                Reissue::Unusable(why) => why.clone(),
                Reissue::Expiring { not_after } => format!(
                    "less than a third of its validity is left (expires at unix {})",
                    unix_seconds(*not_after)
                ),
                Reissue::MissingNames(names) => format!("it does not name {}", names.join(", ")),
            },
            SecretPlan::NewCa { reason, .. } => reason.clone(),
        }
    }
}

/// Carries out a plan: generates what it calls for and returns what the Secret
/// should hold afterwards (for `Reuse`, what it holds). Keys are random, so this
/// is not pure, but it does no I/O.
pub fn carry_out(plan: &SecretPlan, wanted: &[String]) -> Result<SecretCerts, CertError> {
    match plan {
        SecretPlan::Reuse(certs) => Ok(certs.clone()),
        SecretPlan::Create => {
            let ca = generate_ca(SELF_CA_NAME, SELF_CA_VALIDITY)?;
            let serving = issue_for_names(&ca, wanted)?;
            Ok(SecretCerts { ca, serving })
        }
        SecretPlan::Reissue { ca, names, .. } => Ok(SecretCerts {
            ca: ca.clone(),
            serving: issue_for_names(ca, names)?,
        }),
        SecretPlan::NewCa {
            keep_trusting, serving, ..
        } => {
            let new = generate_ca(SELF_CA_NAME, SELF_CA_VALIDITY)?;
            let serving = match serving {
                Some(serving) => serving.clone(),
                None => issue_for_names(&new, wanted)?,
            };
            let mut cert_pem = new.cert_pem;
            if let Some(old) = keep_trusting {
                cert_pem.push_str(old);
            }
            Ok(SecretCerts {
                ca: CaPem {
                    cert_pem,
                    key_pem: new.key_pem,
                },
                serving,
            })
        }
    }
}

/// A serving certificate for `names` (DNS names and IP addresses), valid for [`SELF_CERT_VALIDITY`].
pub fn issue_for_names(ca: &CaPem, names: &[String]) -> Result<CertPem, CertError> {
    let (dns, ips) = split_names(names);
    issue_serving_cert(ca, &dns, &ips, SELF_CERT_VALIDITY)
}

/// DNS names and IP addresses, apart.
fn split_names(names: &[String]) -> (Vec<&str>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in names {
        match name.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(name.as_str()),
        }
    }
    (dns, ips)
}

/// Checks that `name` can be a serving certificate's name (DNS name or IP address).
pub fn check_name(name: &str) -> Result<(), CertError> {
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    rcgen::string::Ia5String::try_from(name).map_err(|e| invalid(format!("DNS name {name:?}: {e}")))?;
    ServerName::try_from(name).map_err(|e| invalid(format!("DNS name {name:?}: {e}")))?;
    Ok(())
}
