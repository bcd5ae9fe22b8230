//! The X.509 facts tailguard reads (validity, subject alternative names), and
//! signing as a stored CA, with `x509-parser` (through rcgen for the latter).

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{Issuer, KeyPair};
use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::{CertError, invalid};

/// Validity and subject alternative names of a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// DNS names and IP addresses (as text) of the subjectAltName extension;
    /// empty when there is none (or it cannot be read).
    pub names: Vec<String>,
}

impl CertInfo {
    /// Reads a DER certificate; never panics on malformed input.
    pub fn parse(der: &[u8]) -> Result<CertInfo, CertError> {
        let cert = parse(der)?;
        let validity = cert.validity();
        let time = |t: i64| system_time(t).ok_or_else(|| invalid("malformed X.509 certificate"));
        Ok(CertInfo {
            not_before: time(validity.not_before.timestamp())?,
            not_after: time(validity.not_after.timestamp())?,
            names: alt_names(&cert).unwrap_or_default(),
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
}

/// What signs as the CA of certificate `der` with `key`: rcgen reads the
/// subject (the issuer name of what it signs), key identifier and key usages
/// from the certificate.
///
/// rcgen keeps one value per attribute type, so a subject that repeats one
/// (`DC=example,DC=com`) would come out as another name, and what it signs
/// would chain to nothing: that is refused here, as is any other subject
/// rcgen cannot write back (multi-valued parts, unusual string types).
pub(super) fn ca_issuer(der: &CertificateDer<'_>, key: KeyPair) -> Result<Issuer<'static, KeyPair>, CertError> {
    let unsupported = || invalid("CA subject name has a form tailguard cannot reproduce");
    let cert = parse(der)?;
    let mut types = Vec::new();
    for attribute in cert.subject().iter_attributes() {
        if types.contains(&attribute.attr_type()) {
            return Err(unsupported());
        }
        types.push(attribute.attr_type());
    }
    Issuer::from_ca_cert_der(der, key).map_err(|_| unsupported())
}

/// Unix time as seconds, for metrics.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A DER certificate (anything after it is ignored).
fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|_| invalid("malformed X.509 certificate"))
}

fn system_time(unix: i64) -> Option<SystemTime> {
    let offset = Duration::from_secs(unix.unsigned_abs());
    if unix >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    }
}

/// The subjectAltName DNS names and IP addresses, in order; `None` when the
/// extension cannot be read (repeated, malformed, an IP address of odd length).
fn alt_names(cert: &X509Certificate<'_>) -> Option<Vec<String>> {
    let Some(san) = cert.subject_alternative_name().ok()? else {
        return Some(Vec::new());
    };
    let mut names = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(dns) => names.push((*dns).to_string()),
            GeneralName::IPAddress(ip) => {
                let ip = match ip.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*ip).ok()?),
                    16 => IpAddr::from(<[u8; 16]>::try_from(*ip).ok()?),
                    _ => return None,
                };
                names.push(ip.to_string());
            }
            _ => {}
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa};

    use super::*;
    use crate::certs::{check_name, first_cert, generate_ca, issue_serving_cert};

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn reads_validity() {
        let ca = generate_ca("Validity CA", Duration::from_secs(86400 * 10)).unwrap();
        let der = first_cert(ca.cert_pem.as_bytes()).unwrap();
        let info = CertInfo::parse(&der).unwrap();
        let now = unix_seconds(SystemTime::now());
        let before = unix_seconds(info.not_before);
        let after = unix_seconds(info.not_after);
        assert!((before - (now - 3600)).abs() <= 2, "{before} vs {now}");
        assert!((after - (now + 86400 * 10)).abs() <= 2, "{after} vs {now}");
        assert!(!info.due_for_renewal(SystemTime::now()));
        assert!(info.due_for_renewal(info.not_after - HOUR));
        assert_eq!(info.remaining(info.not_after + HOUR), Duration::ZERO);
        assert_eq!(system_time(-1), UNIX_EPOCH.checked_sub(Duration::from_secs(1)));
        assert_eq!(unix_seconds(system_time(-86400).unwrap()), -86400);
    }

    #[test]
    fn issued_certificates_name_the_ca_as_issuer() {
        let ca = generate_ca("Issuer CA", HOUR).unwrap();
        let cert = issue_serving_cert(&ca, &["a.example"], &[], HOUR).unwrap();
        let ca_der = first_cert(ca.cert_pem.as_bytes()).unwrap();
        let der = first_cert(cert.cert_pem.as_bytes()).unwrap();
        let ca_cert = parse(&ca_der).unwrap();
        let leaf = parse(&der).unwrap();
        assert_eq!(leaf.issuer().as_raw(), ca_cert.subject().as_raw());
        let common_name = ca_cert.subject().iter_common_name().next().unwrap().as_str().unwrap();
        assert_eq!(common_name, "Issuer CA");
    }

    #[test]
    fn a_subject_rcgen_cannot_write_back_is_refused() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::OrganizationName, "example");
        params.distinguished_name.push(DnType::OrganizationalUnitName, "unit");
        let domain_component = DnType::CustomDnType(vec![0, 9, 2342, 19_200_300, 100, 1, 25]);
        params.distinguished_name.push(domain_component, "com");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let der = params.self_signed(&key).unwrap().der().clone();
        let again = || KeyPair::from_pem(&key.serialize_pem()).unwrap();
        // Read back, it signs with exactly its subject as the issuer name.
        let issuer = ca_issuer(&der, again()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::default().signed_by(&leaf_key, &issuer).unwrap();
        assert_eq!(
            parse(leaf.der()).unwrap().issuer().as_raw(),
            parse(&der).unwrap().subject().as_raw()
        );
        // The same attribute type twice (rcgen cannot make that: patch OU into O).
        let (ou, o) = ([0x06, 0x03, 0x55, 0x04, 0x0b], [0x06, 0x03, 0x55, 0x04, 0x0a]);
        let mut twice = der.to_vec();
        while let Some(at) = twice.windows(5).position(|w| w == ou) {
            twice[at..at + 5].copy_from_slice(&o);
        }
        let error = ca_issuer(&CertificateDer::from(twice), again()).unwrap_err();
        assert!(error.to_string().contains("cannot reproduce"), "{error}");
        // Not a certificate.
        let error = ca_issuer(&CertificateDer::from(vec![0x30, 0x00]), again()).unwrap_err();
        assert!(error.to_string().contains("malformed X.509 certificate"), "{error}");
    }

    #[test]
    fn parse_never_panics() {
        let ca = generate_ca("x", HOUR).unwrap();
        let cert = issue_serving_cert(&ca, &["a.example"], &["10.0.0.1".parse().unwrap()], HOUR).unwrap();
        for pem in [&ca.cert_pem, &cert.cert_pem] {
            let der = first_cert(pem.as_bytes()).unwrap();
            for len in 0..der.len() {
                let _ = CertInfo::parse(&der[..len]);
            }
            for i in 0..der.len() {
                for flip in [0xff, 0x01, 0x80] {
                    let mut bad = der.to_vec();
                    bad[i] ^= flip;
                    let _ = CertInfo::parse(&bad);
                    let key = KeyPair::generate().unwrap();
                    let _ = ca_issuer(&CertificateDer::from(bad), key);
                }
            }
        }
        // Pseudo-random bytes, some of them behind a plausible SEQUENCE header.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let len = round % 300;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()[0]
                })
                .collect();
            if round % 2 == 0 && len >= 4 {
                bytes[..4].copy_from_slice(&[0x30, 0x82, 0x01, 0x00]);
            }
            let _ = CertInfo::parse(&bytes);
        }
        assert!(CertInfo::parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(CertInfo::parse(&[]).is_err());
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
