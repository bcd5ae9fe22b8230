//! `tailguard certs`: a CA and a serving certificate for local development and
//! for the chart's `secret` certificate mode.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::certs::{self, CertError};

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, ca.key, tls.crt, tls.key and ca-bundle.txt into.
    #[arg(long, default_value = "certs")]
    pub out: PathBuf,
    /// DNS names of the serving certificate (repeatable), e.g. tailguard.tailguard.svc.
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// IP addresses of the serving certificate (repeatable).
    #[arg(long = "ip", value_name = "IP")]
    pub ips: Vec<IpAddr>,
    /// Validity of the serving certificate in days (the CA gets ten times as long).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub days: u64,
}

pub fn run(args: CertsArgs) -> ExitCode {
    match write(&args) {
        Ok(bundle) => {
            println!(
                "wrote {}/{{ca.crt,ca.key,tls.crt,tls.key,ca-bundle.txt}}",
                args.out.display()
            );
            println!("caBundle: {bundle}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tailguard certs: {e}");
            ExitCode::from(2)
        }
    }
}

fn write(args: &CertsArgs) -> Result<String, CertError> {
    if args.dns.is_empty() && args.ips.is_empty() {
        return Err(CertError::Invalid("give at least one --dns NAME or --ip IP".into()));
    }
    let day = Duration::from_secs(24 * 3600);
    let ca = certs::generate_ca("tailguard CA", day * (args.days as u32).saturating_mul(10))?;
    let cert = certs::issue_serving_cert(&ca, &args.dns, &args.ips, day * args.days as u32)?;
    std::fs::create_dir_all(&args.out).map_err(|source| CertError::Io {
        path: args.out.clone(),
        source,
    })?;
    let bundle = certs::ca_bundle(&ca.cert_pem);
    certs::write_pem(&args.out.join("ca.crt"), &ca.cert_pem, false)?;
    certs::write_pem(&args.out.join("ca.key"), &ca.key_pem, true)?;
    certs::write_pem(&args.out.join("tls.crt"), &cert.cert_pem, false)?;
    certs::write_pem(&args.out.join("tls.key"), &cert.key_pem, true)?;
    certs::write_pem(&args.out.join("ca-bundle.txt"), &format!("{bundle}\n"), false)?;
    Ok(bundle)
}
