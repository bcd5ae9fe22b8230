//! Issuing certificates: a CA and serving certificates signed by it (rcgen),
//! checking them, and the PEM helpers around them.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::x509::ca_issuer;
use super::{CaPem, CertError, CertPem, invalid};

/// Certificates start being valid this long before they were made (clock skew).
const BACKDATE: Duration = Duration::from_secs(3600);

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
/// `ips`, signed by `ca`, valid from its CA's start (or an hour ago, if
/// earlier) until `validity` from now.
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
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| invalid(format!("CA key: {e}")))?;
    let issuer = ca_issuer(&ca_der, ca_key).map_err(|e| invalid(format!("CA certificate: {e}")))?;

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
    // Valid from its CA's start, not only from an hour ago: issued on a clock
    // stepped forward (this node's, not the apiserver's), it would otherwise be
    // "not yet valid" to the apiserver. The key is new, so the earlier start
    // grants nothing; the certificate is valid on any clock its CA is valid on.
    if let Ok(ca_info) = super::CertInfo::parse(&ca_der)
        && let Ok(since_epoch) = ca_info.not_before.duration_since(UNIX_EPOCH)
    {
        let ca_start = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
        if ca_start < params.not_before {
            params.not_before = ca_start;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::MIN_REMAINING_VALIDITY;

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
    fn serving_certificate_starts_with_its_ca() {
        // A CA made long ago (a clock stepped forward since then issues the
        // serving certificate): the certificate is valid from the CA's start.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let ca = CaPem {
            cert_pem: params.self_signed(&key).unwrap().pem(),
            key_pem: key.serialize_pem(),
        };
        let cert = issue_serving_cert(&ca, &["localhost"], &[], Duration::from_secs(3600)).unwrap();
        let info = crate::certs::CertInfo::parse(&first_cert(cert.cert_pem.as_bytes()).unwrap()).unwrap();
        let start = UNIX_EPOCH + Duration::from_secs(1_577_836_800); // 2020-01-01
        assert_eq!(info.not_before, start);
        assert!(info.not_after > SystemTime::now());
        // A fresh CA starts an hour ago, like the certificates it issues.
        let fresh = generate_ca("fresh", Duration::from_secs(3600 * 48)).unwrap();
        let cert = issue_serving_cert(&fresh, &["localhost"], &[], Duration::from_secs(3600)).unwrap();
        let info = crate::certs::CertInfo::parse(&first_cert(cert.cert_pem.as_bytes()).unwrap()).unwrap();
        let age = SystemTime::now().duration_since(info.not_before).unwrap();
        assert!(
            age >= BACKDATE - Duration::from_secs(5) && age <= BACKDATE + Duration::from_secs(120),
            "{age:?}"
        );
    }
}
