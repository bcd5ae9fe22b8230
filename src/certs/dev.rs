//! Development certificates (`serve --dev`): a CA and a serving certificate kept
//! in a directory across restarts.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{
    CA_CERT_FILE, CA_KEY_FILE, CaPem, CertError, CertInfo, CertPem, MIN_REMAINING_VALIDITY, TLS_CERT_FILE,
    TLS_KEY_FILE, certified_key, first_cert, generate_ca, issue_serving_cert, verify_serving_cert, write_pem,
};

/// Common name of the development CA.
pub const DEV_CA_NAME: &str = "tailguard development CA";
/// Names every development serving certificate carries.
pub const DEV_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];
pub const DEV_CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
pub const DEV_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
