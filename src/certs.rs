//! Certificate material for the webhook: a CA, serving certificates signed by
//! it, development certificates kept in a directory across restarts, and the
//! few X.509 facts the server reads (validity, subject).
//!
//! Generation returns PEM strings and touches no file; [`ensure_dev_certs`] and
//! [`write_pem`] are the only functions here that do I/O.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// File names `tailguard serve --dev` (and `tailguard certs`) use in the certificate directory.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";
pub const TLS_CERT_FILE: &str = "tls.crt";
pub const TLS_KEY_FILE: &str = "tls.key";

/// Common name of the development CA.
pub const DEV_CA_NAME: &str = "tailguard development CA";
/// Names every development serving certificate carries.
pub const DEV_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];
pub const DEV_CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
pub const DEV_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates expiring sooner than this are not reused.
pub const MIN_REMAINING_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Certificates start being valid this long before they were made (clock skew).
const BACKDATE: Duration = Duration::from_secs(3600);

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

/// A new self-signed CA (ECDSA P-256) that can sign serving certificates only
/// (path length 0), valid from an hour ago for `validity`.
pub fn generate_ca(common_name: &str, validity: Duration) -> Result<CaPem, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, validity);
    let cert = params.self_signed(&key)?;
    Ok(CaPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A new serving certificate (ECDSA P-256, `serverAuth`) for `dns_names` and
/// `ips`, signed by `ca`, valid from an hour ago for `validity`.
///
/// The result is checked against `ca` before it is returned, so a CA key that
/// does not belong to the CA certificate is an error, not a useless certificate.
pub fn issue_serving_cert(
    ca: &CaPem,
    dns_names: &[impl AsRef<str>],
    ips: &[IpAddr],
    validity: Duration,
) -> Result<CertPem, CertError> {
    if dns_names.is_empty() && ips.is_empty() {
        return Err(invalid(
            "a serving certificate needs at least one DNS name or IP address",
        ));
    }
    let ca_der = first_cert(ca.cert_pem.as_bytes()).map_err(|e| invalid(format!("CA certificate: {e}")))?;
    let ca_info = CertInfo::parse(&ca_der).map_err(|e| invalid(format!("CA certificate: {e}")))?;
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| invalid(format!("CA key: {e}")))?;
    let mut issuer_params = CertificateParams::default();
    issuer_params.distinguished_name = ca_info.subject_name()?;
    issuer_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let issuer = Issuer::new(issuer_params, ca_key);

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let common_name = dns_names
        .first()
        .map(|n| n.as_ref().to_string())
        .or_else(|| ips.first().map(IpAddr::to_string))
        .unwrap_or_default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    for name in dns_names {
        let name = name.as_ref();
        let san = rcgen::string::Ia5String::try_from(name).map_err(|e| invalid(format!("DNS name {name:?}: {e}")))?;
        params.subject_alt_names.push(SanType::DnsName(san));
    }
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, validity);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let issued = CertPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    let names: Vec<String> = dns_names
        .iter()
        .map(|n| n.as_ref().to_string())
        .chain(ips.iter().map(IpAddr::to_string))
        .collect();
    verify_serving_cert(&ca.cert_pem, &issued.cert_pem, &names, SystemTime::now())
        .map_err(|e| invalid(format!("the CA key does not sign for the CA certificate: {e}")))?;
    Ok(issued)
}

/// Checks that `cert_pem` (leaf first, then any intermediates) chains to
/// `ca_pem`, is a `serverAuth` certificate for every one of `names` (DNS names
/// or IP addresses), and is valid at `at`.
pub fn verify_serving_cert(ca_pem: &str, cert_pem: &str, names: &[String], at: SystemTime) -> Result<(), CertError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| invalid(format!("CA certificate: {e}")))?;
        roots.add(cert).map_err(|e| invalid(format!("CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| invalid(format!("CA certificate: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("certificate: {e}")))?;
    let (leaf, intermediates) = chain.split_first().ok_or_else(|| invalid("no certificate in PEM"))?;
    let now = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
    for name in names {
        let server_name = ServerName::try_from(name.as_str()).map_err(|e| invalid(format!("name {name:?}: {e}")))?;
        verifier
            .verify_server_cert(leaf, intermediates, &server_name, &[], now)
            .map_err(|e| invalid(format!("not valid for {name}: {e}")))?;
    }
    Ok(())
}

/// The value for a webhook configuration's `caBundle`: base64 of the CA PEM.
pub fn ca_bundle(ca_cert_pem: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(ca_cert_pem)
}

/// The first certificate of a PEM text.
pub fn first_cert(pem: &[u8]) -> Result<CertificateDer<'static>, CertError> {
    match CertificateDer::pem_slice_iter(pem).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(invalid(format!("unreadable PEM: {e}"))),
        None => Err(invalid("no CERTIFICATE block in PEM")),
    }
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch.saturating_sub(BACKDATE);
    params.not_after = epoch + since_epoch + validity;
}

// --- development certificates ---

/// What [`ensure_dev_certs`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevCertsOutcome {
    /// The CA and serving certificate on disk were still good.
    Reused,
    /// The CA was kept (so a registered caBundle still works); the serving certificate is new.
    Reissued,
    /// A new CA and serving certificate: the caBundle changed.
    Generated,
}

/// Development certificates in a directory.
#[derive(Debug, Clone)]
pub struct DevCerts {
    pub ca_cert_pem: String,
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub outcome: DevCertsOutcome,
}

/// Makes sure `dir` holds a CA (`ca.crt`, `ca.key`) and a serving certificate
/// (`tls.crt`, `tls.key`) for `localhost`, `127.0.0.1`, `::1` and `extra_names`,
/// signed by that CA and valid for at least another 24 hours. What is there
/// and good is kept, so a caBundle registered with the apiserver keeps working
/// across restarts. Key files are written with mode 0600.
pub fn ensure_dev_certs(dir: &Path, extra_names: &[String]) -> Result<DevCerts, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let cert_path = dir.join(TLS_CERT_FILE);
    let key_path = dir.join(TLS_KEY_FILE);
    let mut names: Vec<String> = DEV_NAMES.iter().map(|n| n.to_string()).collect();
    for name in extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let good_until = SystemTime::now() + MIN_REMAINING_VALIDITY;
    let read = |path: &Path| std::fs::read_to_string(path).ok();

    // A CA that is still good for a day, with its key.
    let existing_ca = match (read(&ca_path), read(&ca_key_path)) {
        (Some(cert_pem), Some(key_pem)) => first_cert(cert_pem.as_bytes())
            .and_then(|der| CertInfo::parse(&der))
            .ok()
            .filter(|info| info.not_after > good_until && info.not_before <= SystemTime::now())
            .map(|_| CaPem { cert_pem, key_pem }),
        _ => None,
    };
    if let Some(ca) = existing_ca {
        // The serving pair: signed by this CA, for every name, for another day, key matching.
        let serving_ok = match (read(&cert_path), read(&key_path)) {
            (Some(cert_pem), Some(key_pem)) => {
                verify_serving_cert(&ca.cert_pem, &cert_pem, &names, good_until).is_ok()
                    && certified_key(cert_pem.as_bytes(), key_pem.as_bytes()).is_ok()
            }
            _ => false,
        };
        if serving_ok {
            return Ok(DevCerts {
                ca_cert_pem: ca.cert_pem,
                ca_path,
                cert_path,
                key_path,
                outcome: DevCertsOutcome::Reused,
            });
        }
        if let Ok(serving) = issue_dev_cert(&ca, &names) {
            write_pem(&key_path, &serving.key_pem, true)?;
            write_pem(&cert_path, &serving.cert_pem, false)?;
            return Ok(DevCerts {
                ca_cert_pem: ca.cert_pem,
                ca_path,
                cert_path,
                key_path,
                outcome: DevCertsOutcome::Reissued,
            });
        }
    }
    let ca = generate_ca(DEV_CA_NAME, DEV_CA_VALIDITY)?;
    let serving = issue_dev_cert(&ca, &names)?;
    write_pem(&ca_key_path, &ca.key_pem, true)?;
    write_pem(&ca_path, &ca.cert_pem, false)?;
    write_pem(&key_path, &serving.key_pem, true)?;
    write_pem(&cert_path, &serving.cert_pem, false)?;
    Ok(DevCerts {
        ca_cert_pem: ca.cert_pem,
        ca_path,
        cert_path,
        key_path,
        outcome: DevCertsOutcome::Generated,
    })
}

fn issue_dev_cert(ca: &CaPem, names: &[String]) -> Result<CertPem, CertError> {
    let (ips, dns): (Vec<&String>, Vec<&String>) = names.iter().partition(|n| n.parse::<IpAddr>().is_ok());
    let ips: Vec<IpAddr> = ips.iter().filter_map(|n| n.parse().ok()).collect();
    issue_serving_cert(ca, &dns, &ips, DEV_CERT_VALIDITY)
}

/// Parses a PEM certificate chain and PEM private key into what rustls serves,
/// checking that the key belongs to the first certificate.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::sign::CertifiedKey, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("certificate: unreadable PEM: {e}")))?;
    if chain.is_empty() {
        return Err(invalid("certificate: no CERTIFICATE block in PEM"));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid(format!("private key: unreadable PEM: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| invalid(format!("certificate and key: {e}")))?;
    Ok(certified)
}

/// Writes a PEM file atomically (temporary file in the same directory, then
/// rename); `private` files get mode 0600.
pub fn write_pem(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| invalid(format!("{}: not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let result = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    });
    if let Err(e) = result.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

// --- self-managed certificates: one Secret shared by every replica ---

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

/// What to do with the certificate Secret ([`plan_secret`]).
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

/// Decides what to do with the certificate Secret, from its `data` (`None`:
/// there is no Secret), the names the serving certificate must have (DNS
/// names or IP addresses), and the time. Pure: reads no clock, makes no key.
///
/// The CA (first certificate of `ca.crt`, with `ca.key`) is kept whenever it
/// is usable and more than a third of its validity is left; the serving
/// certificate is kept when it chains to a CA of `ca.crt`, its key matches, it
/// names every wanted name and more than a third of its validity is left.
pub fn plan_secret(data: Option<&SecretData>, wanted: &[String], now: SystemTime) -> SecretPlan {
    let Some(data) = data else {
        return SecretPlan::Create;
    };
    let text = |key: &str| {
        data.get(key)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
    };
    let (ca_cert, ca_key) = (text(CA_CERT_FILE), text(CA_KEY_FILE));
    let (tls_cert, tls_key) = (text(TLS_CERT_FILE), text(TLS_KEY_FILE));

    // Every CA certificate of ca.crt that is valid now, in order.
    let trusted: Vec<(CertificateDer<'static>, CertInfo)> = ca_cert
        .as_deref()
        .map(|pem| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .filter_map(Result::ok)
                .filter_map(|der| CertInfo::parse(&der).ok().map(|info| (der, info)))
                .filter(|(_, info)| info.not_before <= now && now < info.not_after)
                .collect()
        })
        .unwrap_or_default();
    let trusted_pem: String = trusted.iter().map(|(der, _)| pem_encode(der)).collect();

    let signing = signing_ca(ca_cert.as_deref(), ca_key.as_deref(), now);
    let serving = serving_problem(&trusted_pem, tls_cert.as_deref(), tls_key.as_deref(), wanted, now);
    let ca = match signing {
        Ok(ca) => ca,
        Err(reason) => {
            let good = |p: &Option<Reissue>| p.is_none();
            return SecretPlan::NewCa {
                reason,
                keep_trusting: (!trusted_pem.is_empty()).then_some(trusted_pem),
                serving: match (tls_cert, tls_key) {
                    (Some(cert_pem), Some(key_pem)) if good(&serving) => Some(CertPem { cert_pem, key_pem }),
                    _ => None,
                },
            };
        }
    };
    // ca.crt as it will be written back: the signing CA, then the other still-valid ones.
    let mut bundle = ca.cert_pem.clone();
    let signing_der = first_cert(ca.cert_pem.as_bytes()).ok();
    for (der, _) in &trusted {
        if Some(der) != signing_der.as_ref() {
            bundle.push_str(&pem_encode(der));
        }
    }
    let ca = CaPem {
        cert_pem: bundle,
        key_pem: ca.key_pem,
    };
    match serving {
        None => SecretPlan::Reuse(SecretCerts {
            ca: CaPem {
                cert_pem: ca_cert.unwrap_or_default(),
                key_pem: ca.key_pem,
            },
            serving: CertPem {
                cert_pem: tls_cert.unwrap_or_default(),
                key_pem: tls_key.unwrap_or_default(),
            },
        }),
        Some(reason) => {
            let mut names = unique(wanted);
            if let Reissue::MissingNames(_) = reason {
                // Keep the names it has: a replica still running with the old
                // list (during a rolling update) then has no reason to reissue back.
                let existing = tls_cert
                    .as_deref()
                    .and_then(|pem| first_cert(pem.as_bytes()).ok())
                    .and_then(|der| CertInfo::parse(&der).ok())
                    .map(|info| info.names)
                    .unwrap_or_default();
                for name in existing {
                    if !names.iter().any(|n| same_name(n, &name)) {
                        names.push(name);
                    }
                }
            }
            SecretPlan::Reissue { ca, names, reason }
        }
    }
}

/// The signing CA (first certificate of `ca.crt`, with its key) if it can sign
/// for a while yet; otherwise why not.
fn signing_ca(cert_pem: Option<&str>, key_pem: Option<&str>, now: SystemTime) -> Result<CaPem, String> {
    let cert_pem = cert_pem.ok_or("the Secret has no ca.crt")?;
    let key_pem = key_pem.ok_or("the Secret has no ca.key")?;
    let der = first_cert(cert_pem.as_bytes()).map_err(|e| format!("ca.crt: {e}"))?;
    let info = CertInfo::parse(&der).map_err(|e| format!("ca.crt: {e}"))?;
    if now >= info.not_after {
        return Err("the CA has expired".into());
    }
    if info.due_for_renewal(now) {
        return Err(format!(
            "less than a third of the CA's validity is left (expires at unix {}): rotating it",
            unix_seconds(info.not_after)
        ));
    }
    let first = pem_encode(&der);
    certified_key(first.as_bytes(), key_pem.as_bytes()).map_err(|e| format!("ca.key does not fit ca.crt: {e}"))?;
    info.subject_name().map_err(|e| format!("ca.crt: {e}"))?;
    Ok(CaPem {
        cert_pem: first,
        key_pem: key_pem.to_string(),
    })
}

/// What is wrong with the serving pair under the CAs of `trusted_pem`, if anything.
fn serving_problem(
    trusted_pem: &str,
    cert_pem: Option<&str>,
    key_pem: Option<&str>,
    wanted: &[String],
    now: SystemTime,
) -> Option<Reissue> {
    let unusable = |why: String| Some(Reissue::Unusable(why));
    let (Some(cert_pem), Some(key_pem)) = (cert_pem, key_pem) else {
        return unusable("the Secret has no tls.crt or tls.key".into());
    };
    if let Err(e) = certified_key(cert_pem.as_bytes(), key_pem.as_bytes()) {
        return unusable(format!("tls.crt and tls.key: {e}"));
    }
    let info = match first_cert(cert_pem.as_bytes()).and_then(|der| CertInfo::parse(&der)) {
        Ok(info) => info,
        Err(e) => return unusable(format!("tls.crt: {e}")),
    };
    if info.due_for_renewal(now) {
        return Some(Reissue::Expiring {
            not_after: info.not_after,
        });
    }
    let missing: Vec<String> = unique(wanted)
        .into_iter()
        .filter(|w| !info.names.iter().any(|n| same_name(n, w)))
        .collect();
    // The chain (and names), checked for the names it has of those wanted, or its first.
    let present: Vec<String> = unique(wanted).into_iter().filter(|w| !missing.contains(w)).collect();
    let check = if present.is_empty() {
        info.names.first().cloned().into_iter().collect()
    } else {
        present
    };
    if check.is_empty() {
        return unusable("tls.crt has no subject alternative names".into());
    }
    if trusted_pem.is_empty() {
        return unusable("no valid CA certificate to verify tls.crt with".into());
    }
    if let Err(e) = verify_serving_cert(trusted_pem, cert_pem, &check, now) {
        return unusable(format!("tls.crt: {e}"));
    }
    (!missing.is_empty()).then_some(Reissue::MissingNames(missing))
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

fn same_name(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a.eq_ignore_ascii_case(b),
    }
}

fn unique(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if !out.iter().any(|n| same_name(n, name)) {
            out.push(name.clone());
        }
    }
    out
}

/// A DER certificate as PEM.
fn pem_encode(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

// --- the X.509 facts tailguard reads (a minimal DER walk) ---

/// Validity, subject and subject alternative names of a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// DNS names and IP addresses (as text) of the subjectAltName extension;
    /// empty when there is none (or it cannot be read).
    pub names: Vec<String>,
    subject: Vec<u8>,
}

impl CertInfo {
    /// Reads a DER certificate; never panics on malformed input.
    pub fn parse(der: &[u8]) -> Result<CertInfo, CertError> {
        Self::parse_inner(der).ok_or_else(|| invalid("malformed X.509 certificate"))
    }

    fn parse_inner(der: &[u8]) -> Option<CertInfo> {
        let (cert, _) = tlv(der, 0x30)?;
        let (tbs, _) = tlv(cert, 0x30)?;
        let mut rest = tbs;
        if rest.first() == Some(&0xa0) {
            rest = tlv(rest, 0xa0)?.1; // version
        }
        rest = tlv(rest, 0x02)?.1; // serialNumber
        rest = tlv(rest, 0x30)?.1; // signature
        rest = tlv(rest, 0x30)?.1; // issuer
        let (validity, rest) = tlv(rest, 0x30)?;
        let (not_before, after) = time(validity)?;
        let (not_after, _) = time(after)?;
        let after_subject = tlv(rest, 0x30)?.1;
        let subject_len = rest.len() - after_subject.len();
        Some(CertInfo {
            not_before,
            not_after,
            names: alt_names(after_subject).unwrap_or_default(),
            subject: rest.get(..subject_len)?.to_vec(),
        })
    }

    /// Time left at `now` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }

    /// True when less than a third of the validity period is left at `now`
    /// (or the certificate has expired, or is not valid yet).
    pub fn due_for_renewal(&self, now: SystemTime) -> bool {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or_default();
        now < self.not_before || self.remaining(now) < lifetime / 3
    }

    /// The subject as an rcgen name, attribute for attribute (to sign as this CA).
    fn subject_name(&self) -> Result<DistinguishedName, CertError> {
        let unsupported = || invalid("CA subject name has a form tailguard cannot reproduce");
        let mut name = DistinguishedName::new();
        let (mut rdns, _) = tlv(&self.subject, 0x30).ok_or_else(unsupported)?;
        while !rdns.is_empty() {
            let (set, rest) = tlv(rdns, 0x31).ok_or_else(unsupported)?;
            rdns = rest;
            let (attribute, extra) = tlv(set, 0x30).ok_or_else(unsupported)?;
            if !extra.is_empty() {
                return Err(unsupported()); // multi-valued RDN
            }
            let (oid, value) = tlv(attribute, 0x06).ok_or_else(unsupported)?;
            let arcs = oid_arcs(oid).ok_or_else(unsupported)?;
            let tag = *value.first().ok_or_else(unsupported)?;
            let (text, _) = tlv(value, tag).ok_or_else(unsupported)?;
            let text = std::str::from_utf8(text).map_err(|_| unsupported())?;
            let value = match tag {
                0x0c => DnValue::Utf8String(text.to_string()),
                0x13 => DnValue::PrintableString(text.try_into().map_err(|_| unsupported())?),
                0x16 => DnValue::Ia5String(text.try_into().map_err(|_| unsupported())?),
                _ => return Err(unsupported()),
            };
            let ty = DnType::from_oid(&arcs);
            if name.get(&ty).is_some() {
                return Err(unsupported()); // repeated attribute
            }
            name.push(ty, value);
        }
        Ok(name)
    }
}

/// The subjectAltName DNS names and IP addresses, from what follows the
/// subject in a TBSCertificate (subjectPublicKeyInfo, unique IDs, extensions).
fn alt_names(input: &[u8]) -> Option<Vec<String>> {
    let mut rest = tlv(input, 0x30)?.1; // subjectPublicKeyInfo
    for tag in [0x81, 0x82] {
        if rest.first() == Some(&tag) {
            rest = tlv(rest, tag)?.1; // issuerUniqueID, subjectUniqueID
        }
    }
    let Some((extensions, _)) = tlv(rest, 0xa3) else {
        return Some(Vec::new());
    };
    let (mut extensions, _) = tlv(extensions, 0x30)?;
    while !extensions.is_empty() {
        let (extension, next) = tlv(extensions, 0x30)?;
        extensions = next;
        let (oid, mut body) = tlv(extension, 0x06)?;
        if body.first() == Some(&0x01) {
            body = tlv(body, 0x01)?.1; // critical
        }
        if oid != [0x55, 0x1d, 0x11] {
            continue; // not 2.5.29.17 subjectAltName
        }
        let (value, _) = tlv(body, 0x04)?;
        let (mut general_names, _) = tlv(value, 0x30)?;
        let mut names = Vec::new();
        while !general_names.is_empty() {
            let tag = *general_names.first()?;
            let (content, next) = tlv(general_names, tag)?;
            general_names = next;
            match tag {
                0x82 => names.push(std::str::from_utf8(content).ok()?.to_string()), // dNSName
                0x87 => match content.len() {
                    4 => names.push(IpAddr::from(<[u8; 4]>::try_from(content).ok()?).to_string()),
                    16 => names.push(IpAddr::from(<[u8; 16]>::try_from(content).ok()?).to_string()),
                    _ => return None,
                },
                _ => {}
            }
        }
        return Some(names);
    }
    Some(Vec::new())
}

/// Unix time as seconds, for metrics.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// One DER element with tag `tag`: its contents and what follows it.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), rest)
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

/// A UTCTime or GeneralizedTime (`...Z` forms, as RFC 5280 requires).
fn time(input: &[u8]) -> Option<(SystemTime, &[u8])> {
    let tag = *input.first()?;
    let (text, rest) = tlv(input, tag)?;
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |acc, b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let (year, text) = match tag {
        0x17 if text.len() == 13 => {
            let yy = digits(text.get(..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        0x18 if text.len() == 15 => (digits(text.get(..4)?)?, text.get(4..)?),
        _ => return None,
    };
    if text.get(10) != Some(&b'Z') {
        return None;
    }
    let field = |i: usize| digits(text.get(i..i + 2)?);
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    let t = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    Some((t, rest))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn oid_arcs(oid: &[u8]) -> Option<Vec<u64>> {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        } else if i + 1 == oid.len() {
            return None;
        }
    }
    (!arcs.is_empty()).then_some(arcs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn localhost() -> Vec<String> {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    }

    #[test]
    fn issued_certificate_chains_to_its_ca() {
        let ca = generate_ca("test CA", Duration::from_secs(3600 * 48)).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let cert = issue_serving_cert(&ca, &["localhost"], &[ip], Duration::from_secs(3600 * 30)).unwrap();
        verify_serving_cert(&ca.cert_pem, &cert.cert_pem, &localhost(), SystemTime::now()).unwrap();
        // Valid for 30h: fine in 24h, not in 31h.
        let day = SystemTime::now() + MIN_REMAINING_VALIDITY;
        verify_serving_cert(&ca.cert_pem, &cert.cert_pem, &localhost(), day).unwrap();
        let later = SystemTime::now() + Duration::from_secs(31 * 3600);
        assert!(verify_serving_cert(&ca.cert_pem, &cert.cert_pem, &localhost(), later).is_err());
        // Not for other names, not under another CA.
        assert!(verify_serving_cert(&ca.cert_pem, &cert.cert_pem, &["example.com".into()], SystemTime::now()).is_err());
        let other = generate_ca("other CA", Duration::from_secs(3600 * 48)).unwrap();
        assert!(verify_serving_cert(&other.cert_pem, &cert.cert_pem, &localhost(), SystemTime::now()).is_err());
        certified_key(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap();
    }

    #[test]
    fn mismatched_key_is_refused() {
        let ca = generate_ca("test CA", Duration::from_secs(3600)).unwrap();
        let a = issue_serving_cert(&ca, &["localhost"], &[], Duration::from_secs(3600)).unwrap();
        let b = issue_serving_cert(&ca, &["localhost"], &[], Duration::from_secs(3600)).unwrap();
        assert!(certified_key(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).is_err());
        assert!(certified_key(b"", a.key_pem.as_bytes()).is_err());
        assert!(certified_key(a.cert_pem.as_bytes(), b"garbage").is_err());
        // A CA key that is not the CA certificate's.
        let other = generate_ca("test CA", Duration::from_secs(3600)).unwrap();
        let mixed = CaPem {
            cert_pem: ca.cert_pem.clone(),
            key_pem: other.key_pem,
        };
        assert!(issue_serving_cert(&mixed, &["localhost"], &[], Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn reads_validity_and_subject() {
        let ca = generate_ca("Validity CA", Duration::from_secs(86400 * 10)).unwrap();
        let der = first_cert(ca.cert_pem.as_bytes()).unwrap();
        let info = CertInfo::parse(&der).unwrap();
        let now = unix_seconds(SystemTime::now());
        let before = unix_seconds(info.not_before);
        let after = unix_seconds(info.not_after);
        assert!((before - (now - 3600)).abs() <= 2, "{before} vs {now}");
        assert!((after - (now + 86400 * 10)).abs() <= 2, "{after} vs {now}");
        let name = info.subject_name().unwrap();
        assert_eq!(
            name.get(&DnType::CommonName),
            Some(&DnValue::Utf8String("Validity CA".into()))
        );
    }

    #[test]
    fn der_walk_never_panics() {
        let ca = generate_ca("x", Duration::from_secs(3600)).unwrap();
        let der = first_cert(ca.cert_pem.as_bytes()).unwrap();
        for len in 0..der.len() {
            let _ = CertInfo::parse(&der[..len]);
        }
        for i in 0..der.len() {
            let mut bad = der.to_vec();
            bad[i] ^= 0xff;
            let _ = CertInfo::parse(&bad);
        }
        assert!(CertInfo::parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(oid_arcs(&[0x55, 0x04, 0x03]), Some(vec![2, 5, 4, 3]));
    }

    #[test]
    fn dev_certs_are_reused_then_reissued() {
        let dir = std::env::temp_dir().join(format!("tailguard-certs-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = ensure_dev_certs(&dir, &[]).unwrap();
        assert_eq!(first.outcome, DevCertsOutcome::Generated);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&first.key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = std::fs::metadata(dir.join(CA_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = ensure_dev_certs(&dir, &[]).unwrap();
        assert_eq!(second.outcome, DevCertsOutcome::Reused);
        assert_eq!(second.ca_cert_pem, first.ca_cert_pem);
        // A new name: same CA, new serving certificate.
        let third = ensure_dev_certs(&dir, &["webhook.example".to_string()]).unwrap();
        assert_eq!(third.outcome, DevCertsOutcome::Reissued);
        assert_eq!(third.ca_cert_pem, first.ca_cert_pem);
        // A broken serving key: reissued under the same CA.
        std::fs::write(&first.key_path, "not a key").unwrap();
        let fourth = ensure_dev_certs(&dir, &["webhook.example".to_string()]).unwrap();
        assert_eq!(fourth.outcome, DevCertsOutcome::Reissued);
        // No CA key: everything new.
        std::fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
        std::fs::write(&first.key_path, "not a key").unwrap();
        let fifth = ensure_dev_certs(&dir, &[]).unwrap();
        assert_eq!(fifth.outcome, DevCertsOutcome::Generated);
        assert_ne!(fifth.ca_cert_pem, first.ca_cert_pem);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // --- self-managed Secret ---

    const HOUR: Duration = Duration::from_secs(3600);

    fn wanted() -> Vec<String> {
        vec!["tailguard".into(), "tailguard.tailguard.svc".into()]
    }

    fn data(ca: &CaPem, serving: &CertPem) -> SecretData {
        SecretCerts {
            ca: ca.clone(),
            serving: serving.clone(),
        }
        .to_data()
    }

    fn fresh() -> SecretCerts {
        carry_out(&SecretPlan::Create, &wanted()).unwrap()
    }

    #[test]
    fn plan_create_then_reuse() {
        let now = SystemTime::now();
        assert_eq!(plan_secret(None, &wanted(), now), SecretPlan::Create);
        let certs = fresh();
        let info = CertInfo::parse(&first_cert(certs.ca.cert_pem.as_bytes()).unwrap()).unwrap();
        assert!(info.remaining(now) > SELF_CA_VALIDITY - HOUR);
        let serving = CertInfo::parse(&first_cert(certs.serving.cert_pem.as_bytes()).unwrap()).unwrap();
        assert!(serving.remaining(now) > SELF_CERT_VALIDITY - HOUR);
        assert_eq!(serving.names, wanted());
        assert_eq!(
            plan_secret(Some(&certs.to_data()), &wanted(), now),
            SecretPlan::Reuse(certs.clone())
        );
        // Fewer names, another order, other case: still good.
        let some = vec!["TAILGUARD".to_string()];
        assert_eq!(plan_secret(Some(&certs.to_data()), &some, now).action(), "reuse");
        // Reused until two thirds of the year have passed, renewed after.
        let later = now + SELF_CERT_VALIDITY / 2;
        assert_eq!(plan_secret(Some(&certs.to_data()), &wanted(), later).action(), "reuse");
        let late = now + SELF_CERT_VALIDITY * 2 / 3 + HOUR;
        let plan = plan_secret(Some(&certs.to_data()), &wanted(), late);
        assert!(
            matches!(&plan, SecretPlan::Reissue { ca, reason: Reissue::Expiring { .. }, names }
                if *ca == certs.ca && *names == wanted()),
            "{plan:?}"
        );
        assert_eq!(plan.action(), "renew");
    }

    #[test]
    fn plan_renews_an_expiring_serving_cert_under_the_same_ca() {
        let certs = fresh();
        // Backdated an hour, valid for ten more minutes: less than a third left.
        let short = issue_serving_cert(&certs.ca, &wanted(), &[], Duration::from_secs(600)).unwrap();
        let plan = plan_secret(Some(&data(&certs.ca, &short)), &wanted(), SystemTime::now());
        let SecretPlan::Reissue {
            ca,
            reason: Reissue::Expiring { .. },
            ..
        } = &plan
        else {
            panic!("{plan:?}")
        };
        assert_eq!(*ca, certs.ca);
        let renewed = carry_out(&plan, &wanted()).unwrap();
        assert_eq!(renewed.ca, certs.ca, "the CA (and the caBundle) must not change");
        assert_ne!(renewed.serving, short);
        assert_eq!(
            plan_secret(Some(&renewed.to_data()), &wanted(), SystemTime::now()).action(),
            "reuse"
        );
        // Expired: renewed too.
        let after = SystemTime::now() + 2 * HOUR;
        assert_eq!(
            plan_secret(Some(&data(&certs.ca, &short)), &wanted(), after).action(),
            "renew"
        );
    }

    #[test]
    fn plan_reissues_for_missing_names_keeping_the_old_ones() {
        let certs = fresh();
        let mut more = wanted();
        more.push("tailguard.tailguard.svc.cluster.local".into());
        more.push("10.0.0.7".into());
        let plan = plan_secret(Some(&certs.to_data()), &more, SystemTime::now());
        let SecretPlan::Reissue {
            ca,
            names,
            reason: Reissue::MissingNames(missing),
        } = &plan
        else {
            panic!("{plan:?}")
        };
        assert_eq!(*ca, certs.ca);
        assert_eq!(
            missing,
            &["tailguard.tailguard.svc.cluster.local".to_string(), "10.0.0.7".into()]
        );
        assert_eq!(names, &more);
        let reissued = carry_out(&plan, &more).unwrap();
        assert_eq!(reissued.ca, certs.ca);
        verify_serving_cert(&certs.ca.cert_pem, &reissued.serving.cert_pem, &more, SystemTime::now()).unwrap();
        // A name list that lacks old names: the old names are kept (no ping-pong between replicas).
        let other = vec!["webhook.example".to_string()];
        let plan = plan_secret(Some(&reissued.to_data()), &other, SystemTime::now());
        let SecretPlan::Reissue { names, .. } = &plan else {
            panic!("{plan:?}")
        };
        assert_eq!(names[0], "webhook.example");
        assert!(names.contains(&"tailguard".to_string()) && names.contains(&"10.0.0.7".to_string()));
        let both = carry_out(&plan, &other).unwrap();
        assert_eq!(
            plan_secret(Some(&both.to_data()), &more, SystemTime::now()).action(),
            "reuse"
        );
        assert_eq!(
            plan_secret(Some(&both.to_data()), &other, SystemTime::now()).action(),
            "reuse"
        );
    }

    #[test]
    fn plan_reissues_unusable_serving_pairs() {
        let certs = fresh();
        let other_ca = generate_ca("someone else", SELF_CA_VALIDITY).unwrap();
        let foreign = issue_for_names(&other_ca, &wanted()).unwrap();
        let second = issue_for_names(&certs.ca, &wanted()).unwrap();
        let cases: Vec<(&str, SecretData)> = vec![
            ("signed by another CA", data(&certs.ca, &foreign)),
            (
                "key of another certificate",
                data(
                    &certs.ca,
                    &CertPem {
                        cert_pem: certs.serving.cert_pem.clone(),
                        key_pem: second.key_pem.clone(),
                    },
                ),
            ),
            ("no tls.key", {
                let mut d = certs.to_data();
                d.remove(TLS_KEY_FILE);
                d
            }),
            ("empty tls.crt", {
                let mut d = certs.to_data();
                d.insert(TLS_CERT_FILE.into(), Vec::new());
                d
            }),
            ("garbage tls.crt", {
                let mut d = certs.to_data();
                d.insert(
                    TLS_CERT_FILE.into(),
                    b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
                );
                d
            }),
        ];
        for (case, d) in cases {
            let plan = plan_secret(Some(&d), &wanted(), SystemTime::now());
            assert!(
                matches!(&plan, SecretPlan::Reissue { ca, reason: Reissue::Unusable(_), .. } if *ca == certs.ca),
                "{case}: {plan:?}"
            );
            assert!(!plan.reason().is_empty(), "{case}");
            let fixed = carry_out(&plan, &wanted()).unwrap();
            assert_eq!(fixed.ca, certs.ca, "{case}");
            assert_eq!(
                plan_secret(Some(&fixed.to_data()), &wanted(), SystemTime::now()).action(),
                "reuse",
                "{case}"
            );
        }
    }

    #[test]
    fn plan_replaces_an_unusable_ca() {
        let certs = fresh();
        let now = SystemTime::now();
        // An existing but empty Secret: a new CA through an update (a create would conflict).
        let plan = plan_secret(Some(&SecretData::new()), &wanted(), now);
        assert!(
            matches!(
                &plan,
                SecretPlan::NewCa {
                    keep_trusting: None,
                    serving: None,
                    ..
                }
            ),
            "{plan:?}"
        );
        // No CA key: a new CA; the old certificate is still trusted, the serving pair kept.
        let mut no_key = certs.to_data();
        no_key.remove(CA_KEY_FILE);
        let plan = plan_secret(Some(&no_key), &wanted(), now);
        let SecretPlan::NewCa {
            keep_trusting, serving, ..
        } = &plan
        else {
            panic!("{plan:?}")
        };
        assert_eq!(keep_trusting.as_deref(), Some(certs.ca.cert_pem.as_str()));
        assert_eq!(serving.as_ref(), Some(&certs.serving));
        let rotated = carry_out(&plan, &wanted()).unwrap();
        assert!(rotated.ca.cert_pem.ends_with(&certs.ca.cert_pem));
        assert_ne!(rotated.ca.key_pem, certs.ca.key_pem);
        assert_eq!(rotated.serving, certs.serving);
        // Next time: the new CA signs, the old serving certificate is still good under the bundle.
        assert_eq!(plan_secret(Some(&rotated.to_data()), &wanted(), now).action(), "reuse");
        // Its renewal comes from the new CA, with the old CA still in the bundle.
        let late = now + SELF_CERT_VALIDITY * 3 / 4;
        let plan = plan_secret(Some(&rotated.to_data()), &wanted(), late);
        assert_eq!(plan.action(), "renew");
        let renewed = carry_out(&plan, &wanted()).unwrap();
        let new_ca_only = pem_encode(&first_cert(rotated.ca.cert_pem.as_bytes()).unwrap());
        verify_serving_cert(&new_ca_only, &renewed.serving.cert_pem, &wanted(), now).unwrap();
        assert_eq!(renewed.ca.cert_pem, rotated.ca.cert_pem);

        // A CA key that is not the CA's.
        let mut mixed = certs.to_data();
        mixed.insert(CA_KEY_FILE.into(), generate_ca("x", HOUR).unwrap().key_pem.into_bytes());
        assert_eq!(plan_secret(Some(&mixed), &wanted(), now).action(), "new-ca");
    }

    #[test]
    fn plan_rotates_an_ageing_ca_and_drops_an_expired_one() {
        // A CA with ten minutes left (after an hour of backdating): rotate, keep trusting it meanwhile.
        let old = generate_ca("old", Duration::from_secs(600)).unwrap();
        let serving = issue_for_names(&old, &wanted()).unwrap();
        let d = data(&old, &serving);
        let now = SystemTime::now();
        let plan = plan_secret(Some(&d), &wanted(), now);
        assert!(
            matches!(&plan, SecretPlan::NewCa { keep_trusting: Some(k), .. } if *k == old.cert_pem),
            "{plan:?}"
        );
        // Expired: nothing of it is kept.
        let plan = plan_secret(Some(&d), &wanted(), now + HOUR);
        assert!(
            matches!(
                &plan,
                SecretPlan::NewCa {
                    keep_trusting: None,
                    serving: None,
                    ..
                }
            ),
            "{plan:?}"
        );
        let fresh = carry_out(&plan, &wanted()).unwrap();
        assert_eq!(first_cert(fresh.ca.cert_pem.as_bytes()).unwrap(), {
            let only: Vec<_> = CertificateDer::pem_slice_iter(fresh.ca.cert_pem.as_bytes()).collect();
            assert_eq!(only.len(), 1);
            only.into_iter().next().unwrap().unwrap()
        });
    }

    #[test]
    fn alt_names_are_read() {
        let ca = generate_ca("names", HOUR).unwrap();
        let ip: IpAddr = "::1".parse().unwrap();
        let cert = issue_serving_cert(&ca, &["a.example", "b.example"], &[ip], HOUR).unwrap();
        let info = CertInfo::parse(&first_cert(cert.cert_pem.as_bytes()).unwrap()).unwrap();
        assert_eq!(info.names, ["a.example", "b.example", "::1"]);
        let ca_info = CertInfo::parse(&first_cert(ca.cert_pem.as_bytes()).unwrap()).unwrap();
        assert!(ca_info.names.is_empty());
        assert!(check_name("tailguard.tailguard.svc").is_ok());
        assert!(check_name("10.1.2.3").is_ok());
        assert!(check_name("not a name").is_err());
        assert!(check_name("").is_err());
    }
}
