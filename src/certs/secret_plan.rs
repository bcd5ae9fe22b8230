//! Planning the self-managed certificate Secret: whether its CA and serving
//! certificate are still good, and what to do about them if not.

use std::net::IpAddr;
use std::time::SystemTime;

use base64::Engine as _;
use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use super::x509::ca_issuer;
use super::{
    CA_CERT_FILE, CA_KEY_FILE, CaPem, CertInfo, CertPem, Reissue, SecretCerts, SecretData, SecretPlan, TLS_CERT_FILE,
    TLS_KEY_FILE, certified_key, first_cert, unix_seconds, verify_serving_cert,
};

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
    let key = KeyPair::from_pem(key_pem).map_err(|e| format!("ca.key: {e}"))?;
    ca_issuer(&der, key).map_err(|e| format!("ca.crt: {e}"))?;
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
/// The certificates of `first`, then those of `also` that `first` lacks (PEM):
/// the caBundle that trusts both while serving moves from one CA to the other.
/// Unreadable blocks are dropped.
pub fn bundle_union(first: &str, also: &str) -> String {
    let mut seen: Vec<CertificateDer<'static>> = Vec::new();
    for pem in [first, also] {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok) {
            if !seen.contains(&der) {
                seen.push(der);
            }
        }
    }
    seen.iter().map(|der| pem_encode(der)).collect()
}

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::certs::{
        SELF_CA_VALIDITY, SELF_CERT_VALIDITY, carry_out, generate_ca, issue_for_names, issue_serving_cert,
    };

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

    /// A new CA that keeps neither the old CA's trust nor the serving pair.
    fn keeps_nothing(plan: &SecretPlan) -> bool {
        matches!(
            plan,
            SecretPlan::NewCa {
                keep_trusting: None,
                serving: None,
                ..
            }
        )
    }

    #[test]
    fn plan_replaces_an_unusable_ca() {
        let certs = fresh();
        let now = SystemTime::now();
        // An existing but empty Secret: a new CA through an update (a create would conflict).
        let plan = plan_secret(Some(&SecretData::new()), &wanted(), now);
        assert!(keeps_nothing(&plan), "{plan:?}");
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
        assert!(keeps_nothing(&plan), "{plan:?}");
        let fresh = carry_out(&plan, &wanted()).unwrap();
        assert_eq!(first_cert(fresh.ca.cert_pem.as_bytes()).unwrap(), {
            let only: Vec<_> = CertificateDer::pem_slice_iter(fresh.ca.cert_pem.as_bytes()).collect();
            assert_eq!(only.len(), 1);
            only.into_iter().next().unwrap().unwrap()
        });
    }

    #[test]
    fn bundle_union_keeps_order_and_drops_repeats() {
        let (a, b) = (
            generate_ca("a", SELF_CA_VALIDITY).unwrap().cert_pem,
            generate_ca("b", SELF_CA_VALIDITY).unwrap().cert_pem,
        );
        let both = bundle_union(&a, &b);
        let ders: Vec<_> = CertificateDer::pem_slice_iter(both.as_bytes())
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            ders,
            [first_cert(a.as_bytes()).unwrap(), first_cert(b.as_bytes()).unwrap()]
        );
        assert_eq!(bundle_union(&both, &a), both);
        assert_eq!(bundle_union(&a, "garbage"), bundle_union(&a, ""));
    }
}
