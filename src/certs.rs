//! Certificates for the webhook's TLS: a CA and a serving certificate signed by it (rcgen).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// File names inside a certificate directory (the keys of a `kubernetes.io/tls` Secret plus
/// the CA).
pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// The in-cluster Service names the serving certificate covers by default.
pub const SERVICE_DNS_NAMES: [&str; 4] = [
    "pod-identity-webhook",
    "pod-identity-webhook.pod-identity-system",
    "pod-identity-webhook.pod-identity-system.svc",
    "pod-identity-webhook.pod-identity-system.svc.cluster.local",
];

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("a certificate needs at least one DNS name or IP address")]
    NoNames,
    #[error(
        "{0:?} is not a DNS name: labels of 1 to 63 letters, digits and '-' (not at either end) separated by '.', a leading '*.' allowed"
    )]
    BadDnsName(String),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// A CA and a serving certificate with its key, PEM encoded.
pub struct Material {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Material {
    /// The CA as the base64 `caBundle` of a webhook configuration.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }
}

/// Generates a fresh CA and a serving certificate (serverAuth) for the given names.
pub fn generate(dns: &[String], ips: &[IpAddr], days: u32) -> Result<Material, CertError> {
    let now = time::OffsetDateTime::now_utc();
    // Backdated an hour so a node whose clock lags slightly still accepts it.
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(i64::from(days.max(1)));
    generate_valid(dns, ips, not_before, not_after)
}

/// The same, valid from `not_before` to `not_after` (both certificates).
pub fn generate_valid(
    dns: &[String],
    ips: &[IpAddr],
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<Material, CertError> {
    if dns.is_empty() && ips.is_empty() {
        return Err(CertError::NoNames);
    }
    if let Some(bad) = dns.iter().find(|n| !is_dns_name(n)) {
        return Err(CertError::BadDnsName(bad.clone()));
    }

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "pod-identity-webhook CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut leaf = CertificateParams::new(dns.to_vec())?;
    leaf.subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let cn = dns.first().cloned().unwrap_or_else(|| ips[0].to_string());
    leaf.distinguished_name.push(DnType::CommonName, cn);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    Ok(Material {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A name a TLS client can match: RFC 1123 labels, at most 253 characters, optionally a
/// wildcard first label.
fn is_dns_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    name.len() <= 253 && rest.split('.').all(label)
}

/// Material for a webhook on this machine: localhost, 127.0.0.1 and ::1.
pub fn generate_local(days: u32) -> Result<Material, CertError> {
    generate(
        &["localhost".into()],
        &[
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        ],
        days,
    )
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`, each atomically so a
/// watching server never reads a half-written file.
pub fn write(dir: &Path, m: &Material) -> Result<(), CertError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // The key first: a watcher that sees the new certificate then finds its key in place.
    for (name, text, mode) in [
        (KEY_FILE, &m.key_pem, 0o600),
        (CERT_FILE, &m.cert_pem, 0o644),
        (CA_FILE, &m.ca_pem, 0o644),
    ] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        write_mode(&tmp, text.as_bytes(), mode).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
    }
    Ok(())
}

/// File name of the kustomize patch that sets the webhook configuration's `caBundle`.
pub const CABUNDLE_PATCH_FILE: &str = "cabundle-patch.yaml";

/// Writes the kustomize patch that puts this CA into the webhook configuration
/// (`manifests/kustomization.yaml` applies it).
pub fn write_cabundle_patch(dir: &Path, m: &Material) -> Result<(), CertError> {
    let patch = format!(
        "# Written by `pod-identity-webhook certs`: trust the CA in ca.crt.\n\
         apiVersion: admissionregistration.k8s.io/v1\n\
         kind: MutatingWebhookConfiguration\n\
         metadata:\n  name: pod-identity-webhook\n\
         webhooks:\n- name: pod-identity.podidentity.io\n  clientConfig:\n    caBundle: {}\n",
        m.ca_bundle()
    );
    let path = dir.join(CABUNDLE_PATCH_FILE);
    write_mode(&path, patch.as_bytes(), 0o644).map_err(|source| CertError::Write { path, source })
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Makes sure `dir` holds a serving pair; generates a localhost one when neither file exists.
/// Returns whether it generated. A directory with only one of the two files is left alone so
/// the load reports it, rather than silently replacing a user's material.
pub fn ensure_local(dir: &Path) -> Result<bool, CertError> {
    if dir.join(CERT_FILE).exists() || dir.join(KEY_FILE).exists() {
        return Ok(false);
    }
    write(dir, &generate_local(365)?)?;
    Ok(true)
}

/// `certs`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory to write ca.crt, tls.crt and tls.key into.
    #[arg(long, default_value = "certs")]
    pub(crate) out: PathBuf,
    /// DNS names of the serving certificate (default: the in-cluster Service names).
    #[arg(long = "dns")]
    pub(crate) dns: Vec<String>,
    /// IP addresses of the serving certificate.
    #[arg(long = "ip")]
    pub(crate) ip: Vec<IpAddr>,
    /// Validity in days (at least 1).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) days: u32,
}

/// `certs`: writes the material, the caBundle patch, and prints the caBundle.
pub fn command(args: Args) -> Result<(), CertError> {
    let dns = if args.dns.is_empty() && args.ip.is_empty() {
        SERVICE_DNS_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        args.dns
    };
    let material = generate(&dns, &args.ip, args.days)?;
    write(&args.out, &material)?;
    write_cabundle_patch(&args.out, &material)?;
    let names: Vec<String> = dns
        .iter()
        .cloned()
        .chain(args.ip.iter().map(IpAddr::to_string))
        .collect();
    eprintln!(
        "wrote {CA_FILE}, {CERT_FILE}, {KEY_FILE} and {CABUNDLE_PATCH_FILE} to {} (names: {})",
        args.out.display(),
        names.join(", ")
    );
    println!("{}", material.ca_bundle());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dns_names_are_accepted() {
        for ok in ["localhost", "hook.ns.svc", "*.ns.svc", "a-1.b2", &"a".repeat(63)] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in [
            "bad name!",
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a.*.b",
            "é.b",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_name(bad), "{bad}");
            let err = generate(&[bad.to_owned()], &[], 1).err().unwrap().to_string();
            assert!(err.contains("is not a DNS name"), "{err}");
        }
    }

    #[test]
    fn writes_a_pair_and_a_ca_with_a_private_key_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_local(dir.path()).unwrap());
        assert!(!ensure_local(dir.path()).unwrap(), "existing material is kept");
        for f in [CA_FILE, CERT_FILE, KEY_FILE] {
            let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(text.starts_with("-----BEGIN"), "{f}");
        }
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn needs_a_name() {
        assert!(matches!(generate(&[], &[], 1), Err(CertError::NoNames)));
    }

    #[test]
    fn ca_bundle_is_base64_of_the_ca_pem() {
        let m = generate(&["x.svc".into()], &[], 1).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(m.ca_bundle())
            .unwrap();
        assert_eq!(decoded, m.ca_pem.as_bytes());
    }
}
