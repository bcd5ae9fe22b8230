//! The X.509 facts tailguard reads (validity, subject, subject alternative
//! names): a minimal, hand-written DER walk.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{DistinguishedName, DnType, DnValue};

use super::{CertError, invalid};

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
    pub(super) fn subject_name(&self) -> Result<DistinguishedName, CertError> {
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
    use crate::certs::{check_name, first_cert, generate_ca, issue_serving_cert};

    const HOUR: Duration = Duration::from_secs(3600);

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
